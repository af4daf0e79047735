//! fs-verity ("secure") mode of a host: `bootc internals seal-store`, the
//! automatic seal when a booted host stages an update, and what `status`
//! reports per deployment.
//!
//! A store created where the kernel lacks fs-verity is insecure; sealing
//! ([`bootc_store::seal`]) enables verity on its objects and then marks it
//! secure, after which the initramfs and `bootc image mount` mount every
//! deployment with fs-verity required. A deployment that is already running
//! keeps the mount it booted with until the next boot.

use std::path::Path;

use anyhow::{Context, Result};
use bootc_store::{SealError, SealReport, Store, VerityMode};

use crate::deployments::HostState;
use crate::steps::seal as steps;
use crate::target::Target;

/// `bootc internals seal-store`: seal the store of the host (or of
/// `--sysroot`). Fails where fs-verity is unavailable or an object is
/// corrupt. Returns what it did, as a sentence.
pub fn seal_store(t: &Target) -> Result<String> {
    let store = t.open_store()?;
    let _lock = crate::target::lock(&store, &*t.report)?;
    let report = store.seal()?;
    t.step(steps::STORE_SEALED);
    Ok(describe(&Store::repo_path(&t.sysroot), &report))
}

/// Called by a booted host staging an update, with the writer lock held:
/// seal an insecure store when fs-verity works now, and return the store to
/// stage into (re-opened in secure mode after sealing).
///
/// Where fs-verity is unavailable nothing happens. A corrupt object is
/// reported and the store stays insecure: the update goes on as before.
pub fn seal_if_possible(t: &Target, store: Store) -> Result<Store> {
    if t.booted.is_none() || store.verity_mode() == VerityMode::Verified {
        return Ok(store);
    }
    match store.seal() {
        Ok(report) => {
            t.step(steps::STORE_SEALED);
            t.report
                .notice(&describe(&Store::repo_path(&t.sysroot), &report));
            drop(store);
            Store::open(&t.sysroot)?
                .with_context(|| format!("Re-opening the store in {}", t.sysroot.display()))
        }
        Err(e) => {
            match e.downcast_ref::<SealError>() {
                Some(SealError::Unsupported(_)) => tracing::debug!("not sealing: {e:#}"),
                _ => t
                    .report
                    .warn(&format!("warning: the store stays insecure: {e:#}")),
            }
            Ok(store)
        }
    }
}

fn describe(repo: &Path, r: &SealReport) -> String {
    if r.already_sealed {
        return format!(
            "Store {} is already sealed: deployments mount with fs-verity required",
            repo.display()
        );
    }
    let mut s = format!(
        "Sealed store {}: fs-verity enabled on {} objects ({} already had it); deployments mount with fs-verity required from the next boot",
        repo.display(),
        r.objects_enabled,
        r.objects_already
    );
    if !r.skipped.is_empty() {
        s.push_str(&format!(
            "\n  skipped {} entries that are not objects: {}",
            r.skipped.len(),
            r.skipped.join(", ")
        ));
    }
    s
}

/// Set, for `status`, whether each deployment may run without fs-verity:
/// the booted one as its root is mounted now (overlayfs `verity=require`),
/// the others as the initramfs will mount them (the store's mode).
pub fn apply_verity_modes(state: &mut HostState, root: &Path, booted: Option<&str>) -> Result<()> {
    let Some(store) = Store::open(root)? else {
        return Ok(());
    };
    let store_insecure = store.verity_mode() == VerityMode::Insecure;
    drop(store);
    let running = booted.and_then(|_| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| root_requires_verity(&m))
    });
    for v in state
        .order
        .iter_mut()
        .chain(state.staged.iter_mut())
        .chain(state.others.iter_mut())
    {
        v.insecure = match running {
            Some(required) if Some(v.id.as_str()) == booted => !required,
            _ => store_insecure,
        };
    }
    Ok(())
}

/// Whether the root filesystem in `mountinfo` (`/proc/self/mountinfo`) is
/// an overlay that requires fs-verity; `None` when `/` is no overlay.
pub fn root_requires_verity(mountinfo: &str) -> Option<bool> {
    let line = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))?;
    let (_, after) = line.split_once(" - ")?;
    let mut fields = after.split(' ');
    let fstype = fields.next()?;
    let _source = fields.next()?;
    let options = fields.next().unwrap_or("");
    (fstype == "overlay").then(|| options.split(',').any(|o| o == "verity=require"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_verity_from_mountinfo() {
        let base = "22 1 253:1 / /sysroot rw,relatime shared:1 - ext4 /dev/vda3 rw\n";
        let cases: &[(String, Option<bool>)] = &[
            (base.to_owned(), None),
            (
                format!(
                    "{base}30 22 0:31 / / ro,relatime shared:2 - overlay composefs ro,lowerdir+=/proc/self/fd/3,datadir+=/proc/self/fd/4,verity=require\n"
                ),
                Some(true),
            ),
            (
                format!(
                    "{base}30 22 0:31 / / ro,relatime shared:2 - overlay composefs ro,lowerdir+=/proc/self/fd/3,datadir+=/proc/self/fd/4,redirect_dir=on\n"
                ),
                Some(false),
            ),
            // The last mount on / is the one in effect.
            (
                "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:5 / / ro - overlay composefs ro,verity=require\n3 2 8:2 / / rw - xfs /dev/sdb rw\n".to_owned(),
                None,
            ),
            ("".to_owned(), None),
        ];
        for (text, expect) in cases {
            assert_eq!(root_requires_verity(text), *expect, "{text}");
        }
    }

    #[test]
    fn report_text() {
        let r = SealReport {
            objects_enabled: 3,
            objects_already: 1,
            skipped: vec!["objects/ab/.tmp1".into()],
            ..Default::default()
        };
        assert_eq!(
            describe(Path::new("/sysroot/composefs"), &r),
            "Sealed store /sysroot/composefs: fs-verity enabled on 3 objects (1 already had it); deployments mount with fs-verity required from the next boot\n  skipped 1 entries that are not objects: objects/ab/.tmp1"
        );
        let done = SealReport {
            already_sealed: true,
            ..Default::default()
        };
        assert!(describe(Path::new("/s"), &done).contains("already sealed"));
    }
}
