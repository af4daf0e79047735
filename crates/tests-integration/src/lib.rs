//! Root-only integration tests: a real registry, podman-built images, loop devices.
