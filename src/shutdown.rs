//! shutdown (stub)
