//! Our face over the composefs repository.
