//! Dev environment for outbox-relay: a real Postgres cluster and a real Apache Kafka broker, started from
//! the machine's binaries (no Docker, no mocks), shared by the integration tests, the demo and benchmarks.
//!
//! Servers are started lazily once per process ([`Postgres::shared`], [`Kafka::shared`]) and die with the
//! process, even on panic or `kill -9` of the test binary (see [`process`]). Everything a test needs on top
//! (a fresh database with `sql/` applied, topics, a relay child process, a verdict on what arrived in
//! Kafka, a TCP proxy for network faults, a streaming standby for failovers) lives in the other modules.
//! The Postgres version is the machine's, or any of 14 to 18 (`OUTBOX_RELAY_TEST_PG`, see [`pgdist`]).

pub mod kafka;
pub mod pgdist;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod relay;
pub mod standby;
pub mod tls;
pub mod util;
pub mod verify;

pub use kafka::{Kafka, Record, Watch};
pub use outbox_relay::Lsn;
pub use postgres::{
    write_batched, write_concurrently, write_emitted, write_txn, NewEvent, Postgres, SlotInfo,
    TestDb, Via, WriteSpec, Written,
};
pub use proxy::Proxy;
pub use relay::{http_get, run_cli, RelayConfig, RelayProcess};
pub use standby::{HaPair, Standby, StandbyOptions};
pub use tls::{other_ca, CertificateAuthority, Pki};
pub use util::{
    exclusive_servers, free_port, random_suffix, repo_root, shared_servers, wait_until,
};
pub use verify::{verify, Verdict};
