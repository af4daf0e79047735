//! The pull flow.
