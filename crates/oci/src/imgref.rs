//! TODO(helper): imgref
