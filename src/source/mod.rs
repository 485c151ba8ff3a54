//! source (stub)
