//! decode (stub)
