//! route (stub)
