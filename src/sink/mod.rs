//! sink (stub)
