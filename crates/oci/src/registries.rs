//! TODO(helper): registries
