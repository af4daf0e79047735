//! Host state types that `bootc status` serialises: the
//! `org.containers.bootc/v1` `BootcHost` object, drop-in compatible with
//! upstream bootc's schema.
//!
//! # Modules
//!
//! - [`host`] — the [`Host`] object with its [`HostSpec`] (what should run)
//!   and [`HostStatus`] (staged, booted, rollback and pinned deployments,
//!   `/usr` overlay, read-only root), plus [`Slot`] and the constants
//!   [`API_VERSION`], [`KIND`] and [`OBJECT_NAME`].
//! - [`entry`] — one deployment, [`BootEntry`], with the [`ImageStatus`] it
//!   came from and its backend state: [`BootEntryComposefs`] for ours,
//!   [`BootEntryOstree`] for status written by upstream's ostree backend.
//! - [`imgref`] — [`ImageReference`] (image, transport, [`ImageSignature`])
//!   and how human output prints it.
//! - [`exit_codes`] — the CLI's process exit codes.
//!
//! # Compatibility
//!
//! Field names, enum strings, and which unset fields are omitted rather than
//! written as `null` follow the upstream schema (`src/fixtures/host-v1.schema.json`).
//! Unknown fields in input are ignored, as upstream does, so status written
//! by other versions parses. This crate does no I/O and renders no human
//! status; it only defines and (de)serialises the types.

pub mod entry;
pub mod exit_codes;
pub mod host;
pub mod imgref;

pub use entry::{
    AssessmentState, BootAssessment, BootEntry, BootEntryComposefs, BootEntryOstree, BootType,
    Bootloader, ImageStatus, Store, UnknownBootloader,
};
pub use host::{
    API_VERSION, BootOrder, FilesystemOverlay, FilesystemOverlayAccessMode,
    FilesystemOverlayPersistence, Host, HostSpec, HostStatus, HostType, KIND, OBJECT_NAME,
    ObjectMeta, Slot,
};
pub use imgref::{ImageReference, ImageSignature, TRANSPORT_REGISTRY};

#[cfg(test)]
mod fixture_tests;
