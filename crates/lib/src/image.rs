//! `bootc image pull|list`.
