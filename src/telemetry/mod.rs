//! Telemetry: the tracing subscriber (text for terminals, JSON for machines) and the shared
//! [`Status`] the pipeline updates and the admin endpoints read.

use std::sync::atomic::{AtomicBool, AtomicU64};

/// Live state of the relay, updated by the pipeline with relaxed atomics (cheap on the hot path).
#[derive(Debug, Default)]
pub struct Status {
    /// The pipeline is streaming: slot held, producer initialised, checkpoint read.
    pub ready: AtomicBool,
    /// Events published (committed or about to be).
    pub events_published: AtomicU64,
    /// Events sent to the dead-letter topic.
    pub events_dead_lettered: AtomicU64,
    /// Kafka transactions committed.
    pub kafka_commits: AtomicU64,
    /// Checkpointed (and acknowledged) LSN.
    pub checkpoint_lsn: AtomicU64,
    /// Server WAL end from the last keepalive.
    pub server_wal_end: AtomicU64,
    /// The slot's restart_lsn from the last heartbeat.
    pub slot_restart_lsn: AtomicU64,
    /// Sessions ended by transient errors.
    pub errors_transient: AtomicU64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber writing to stderr. `level` is an EnvFilter directive;
/// `RUST_LOG` overrides it.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("log.level: invalid filter {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
