//! The relay: the exactly-once loop and what runs it (docs/ARCHITECTURE.md).
//!
//! ```text
//!  supervisor ── reconnects, backoff, exit decisions
//!     └─ session ── start-up in order (slot, fencing, checkpoint, invariant); preflight
//!          └─ pipeline ── the loop: one biased select!, the stages wired one way
//!               ├─ tracker   positions, skips, cuts, acknowledgements (no I/O)
//!               └─ committer (crate::sink) Kafka transactions, overlapped with reading
//! ```
//!
//! Two positions are never confused: what was *received* lives in the tracker only; what was
//! *committed* in Kafka (`resume_lsn`) is the only one ever acknowledged to Postgres.

pub mod pipeline;
pub mod publish;
pub mod session;
pub mod settings;
pub mod snapshot;
pub mod supervisor;
pub mod tracker;
#[cfg(test)]
mod tracker_model;

pub use session::preflight;
pub use settings::{BatchSettings, LiveSettings, OnError, RelaySettings, RetrySettings};
pub use supervisor::run;
