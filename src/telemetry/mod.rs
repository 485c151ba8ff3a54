//! Telemetry: the tracing subscriber (text for terminals and journald, JSON for machines, level
//! reloadable on SIGHUP), the shared [`Status`] the pipeline updates, metrics, the admin HTTP
//! server and the systemd notifications.
//!
//! ```text
//!  relay (sessions, Pipeline::run) ──> Status (atomics, TxnStats at commit) ──> admin: /live /ready /metrics
//!                                         │ tick() per loop turn
//!                                         └──> systemd::watchdog: WATCHDOG=1 only while ticks are fresh
//! ```

pub mod admin;
pub mod metrics;
pub mod systemd;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use metrics::{Metrics, TxnStats};

use crate::error::{Error, Kind};

/// Live state of the relay, updated by the pipeline with relaxed atomics (cheap on the hot path).
#[derive(Debug, Default)]
pub struct Status {
    /// The pipeline is streaming: slot held, producer initialised, checkpoint read.
    pub ready: AtomicBool,
    /// Another session holds the slot; this relay waits for it.
    pub standing_by: AtomicBool,
    /// A drain was asked for (SIGTERM): `/ready` answers 503 from then on.
    pub draining: AtomicBool,
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
    /// `pg_current_wal_lsn()` from the last heartbeat.
    pub server_current_lsn: AtomicU64,
    /// The slot's restart_lsn from the last heartbeat.
    pub slot_restart_lsn: AtomicU64,
    /// Sessions ended by transient errors.
    pub errors_transient: AtomicU64,
    /// When the pipeline (or the session loop) last proved it turns: ms since [`epoch`].
    last_tick_ms: AtomicU64,
    /// When the last Kafka commit returned: ms since [`epoch`].
    last_commit_ms: AtomicU64,
    /// Counters, gauges and histograms behind `/metrics`.
    pub metrics: Metrics,
}

/// The process's monotonic epoch for the `*_ms` fields.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Status {
    /// A status whose info metric names `slot`.
    pub fn new(slot: &str) -> Self {
        let s = Self {
            metrics: Metrics::new(slot),
            ..Self::default()
        };
        s.tick();
        s.last_commit_ms.store(now_ms(), Ordering::Relaxed);
        s
    }

    /// The loop is alive: called each turn of `Pipeline::run`, and by the session loop while it
    /// connects, stands by or backs off. The systemd watchdog is fed only while this is fresh.
    #[inline]
    pub fn tick(&self) {
        self.last_tick_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Time since the last [`Status::tick`].
    pub fn since_tick(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_tick_ms.load(Ordering::Relaxed)))
    }

    /// The pipeline started streaming (`true`) or its session ended (`false`). Ready tells
    /// systemd `READY=1` (Type=notify) and clears the standby state.
    pub fn set_ready(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::Relaxed);
        self.metrics.ready.set(i64::from(ready));
        if ready {
            self.standing_by.store(false, Ordering::Relaxed);
            self.metrics.standby.set(0);
            if !was {
                systemd::ready();
            }
        }
    }

    /// Another session holds the slot: this relay waits (healthy, not ready).
    pub fn set_standby(&self, slot: &str) {
        if !self.standing_by.swap(true, Ordering::Relaxed) {
            self.metrics.standby.set(1);
            systemd::status(&format!(
                "standing by: slot {slot} is held by another session"
            ));
        }
    }

    /// Whether `/ready` answers 200: streaming and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// A drain started: not ready from now on; tells systemd `STOPPING=1`.
    pub fn set_draining(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            systemd::stopping();
        }
    }

    /// A Kafka transaction committed at `resume_lsn`, holding what `stats` counted.
    pub fn committed(&self, stats: &mut TxnStats, resume_lsn: u64) {
        self.checkpoint_lsn.store(resume_lsn, Ordering::Relaxed);
        self.kafka_commits.fetch_add(1, Ordering::Relaxed);
        self.last_commit_ms.store(now_ms(), Ordering::Relaxed);
        self.metrics.committed(stats);
    }

    /// A session ended with `err`: count it by class, and a fence on its own counter.
    pub fn session_error(&self, err: &Error) {
        let class = match err.kind() {
            Kind::Transient => "transient",
            Kind::Standby => "standby",
            Kind::Fenced => "fenced",
            Kind::Config => "config",
            Kind::Invariant => "invariant",
            Kind::BadRow => "bad_row",
            Kind::Internal => "internal",
        };
        self.metrics.error(class);
        if err.kind() == Kind::Fenced {
            self.metrics.fenced();
        }
    }

    /// Refreshes the gauges derived from the atomics and renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let checkpoint = self.checkpoint_lsn.load(Ordering::Relaxed);
        let server = self
            .server_wal_end
            .load(Ordering::Relaxed)
            .max(self.server_current_lsn.load(Ordering::Relaxed));
        let current = self.server_current_lsn.load(Ordering::Relaxed);
        let restart = self.slot_restart_lsn.load(Ordering::Relaxed);
        m.checkpoint_lsn.set(checkpoint as i64);
        m.server_wal_lsn.set(server as i64);
        if checkpoint > 0 && server > 0 {
            m.lag.set(server.saturating_sub(checkpoint) as i64);
        }
        if current > 0 && restart > 0 {
            m.retained.set(current.saturating_sub(restart) as i64);
        }
        let age = now_ms().saturating_sub(self.last_commit_ms.load(Ordering::Relaxed));
        m.last_commit_age.set(age as f64 / 1000.0);
        m.ready.set(i64::from(self.is_ready()));
        m.encode()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Changes the log filter of the running subscriber (SIGHUP reload of `log.level`).
#[derive(Debug, Clone)]
pub struct LogLevelHandle {
    handle: FilterHandle,
    /// `RUST_LOG` was set at start: it wins over `log.level`, also on reload.
    env_override: bool,
}

impl LogLevelHandle {
    /// Applies `level` (an EnvFilter directive). Returns false when `RUST_LOG` overrides it.
    pub fn set(&self, level: &str) -> Result<bool, String> {
        if self.env_override {
            return Ok(false);
        }
        let filter = tracing_subscriber::EnvFilter::try_new(with_quiet_transport(level))
            .map_err(|e| format!("log.level: invalid filter {level:?}: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("log.level: cannot apply: {e}"))?;
        Ok(true)
    }
}

/// Installs the global tracing subscriber writing to stderr. `level` is an EnvFilter directive;
/// `RUST_LOG` overrides it. Text has no ANSI colours; under systemd (`JOURNAL_STREAM` set) it
/// also drops the timestamp, which journald records itself.
pub fn init(format: LogFormat, level: &str) -> Result<LogLevelHandle, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let (filter, env_override) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => (EnvFilter::try_new(v), true),
        _ => (EnvFilter::try_new(with_quiet_transport(level)), false),
    };
    let filter = filter.map_err(|e| format!("log.level: invalid filter {level:?}: {e}"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let (text, text_journald, json) = match (format, journald) {
        (LogFormat::Text, false) => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            ),
            None,
            None,
        ),
        (LogFormat::Text, true) => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .without_time()
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        (LogFormat::Json, _) => (
            None,
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(text_journald)
        .with(json)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogLevelHandle {
        handle,
        env_override,
    })
}

/// `level` with the replication transport's own logs off, unless `level` mentions it: every error
/// it logs also comes back to the relay as a result, which the relay logs once with its context
/// (without this a standing-by relay logs "replication worker terminated with error" at ERROR on
/// every retry, several times a second).
fn with_quiet_transport(level: &str) -> String {
    if level.contains("pgwire_replication") {
        level.to_string()
    } else {
        format!("{level},pgwire_replication=off")
    }
}

/// Test hook (documented in the README, "Test hook"): `OUTBOX_RELAY_TEST_STALL_AFTER_READY=<seconds>`
/// makes `Pipeline::run` stop turning that long after it started, as a deadlocked pipeline would,
/// so tests can see the systemd watchdog go unfed. Never set it in production.
pub fn test_stall_deadline() -> Option<Instant> {
    let secs: f64 = std::env::var("OUTBOX_RELAY_TEST_STALL_AFTER_READY")
        .ok()?
        .parse()
        .ok()?;
    Some(Instant::now() + Duration::from_secs_f64(secs.max(0.0)))
}
