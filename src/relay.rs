//! relay (stub)
