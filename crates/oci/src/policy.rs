//! TODO(helper): policy
