//! The host state that `bootc status` serialises (`org.containers.bootc/v1`).
