//! Deployments in a sysroot: their state directories, /etc and /var, and which one is booted.
