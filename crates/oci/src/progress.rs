//! TODO(helper): progress
