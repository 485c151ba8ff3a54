//! outbox-relay: publishes the rows of a Postgres outbox table to Kafka exactly once.
//!
//! The pipeline, one module per stage, data flowing one way (docs/ARCHITECTURE.md):
//!
//! ```text
//!  source (replication) -> decode (pgoutput) -> route (row -> record) -> sink (Kafka txn) -> ack
//! ```
//!
//! Only the committed LSN flows back, from the sink to the source, after a Kafka commit.

pub mod audit;
pub mod backfill;
pub mod config;
pub mod decode;
pub mod doctor;
pub mod error;
pub mod lsn;
pub mod reason;
pub mod relay;
pub mod reset;
pub mod route;
pub mod shutdown;
pub mod sighup;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;

pub use lsn::Lsn;
