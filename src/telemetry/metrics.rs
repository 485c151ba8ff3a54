//! Metric names (one place, Prometheus conventions: `_total`, `_seconds`, `_bytes`) and the
//! registry behind `/metrics`.
//!
//! ```text
//!  Pipeline ── per event: TxnStats (plain fields, no atomics) ──┐
//!           ── at Kafka commit: Metrics::committed(...) ────────┴─> counters, histograms
//!  Status atomics (LSNs, ticks) ── at scrape: Metrics::refresh ───> gauges ──> text exposition
//! ```
//!
//! The per-event path only bumps a counter in [`TxnStats`], owned by the pipeline; shared metrics
//! are touched once per Kafka transaction, so the relay's ~65k events/s on two cores pay nothing
//! measurable for them. Each constant is the *exported* sample name; tests and `ops/` check that
//! alert rules and the dashboard name only these.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Info metric (value 1): labels `version`, `slot`.
pub const INFO: &str = "outbox_relay_info";
/// 1 while the pipeline streams (slot held, producer initialised, checkpoint read), else 0.
pub const READY: &str = "outbox_relay_ready";
/// 1 while another session holds the slot and this relay waits for it.
pub const STANDBY: &str = "outbox_relay_standby";
pub const CATCHING_UP: &str = "outbox_relay_catching_up";
/// Events committed in Kafka, per destination topic (label `topic`).
pub const EVENTS_PUBLISHED: &str = "outbox_relay_events_published_total";
/// Rows committed to the dead-letter topic.
pub const EVENTS_DEAD_LETTERED: &str = "outbox_relay_events_dead_lettered_total";
/// Kafka transactions committed (including checkpoint-only ones).
pub const TRANSACTIONS_COMMITTED: &str = "outbox_relay_kafka_transactions_committed_total";
/// Kafka transactions aborted (the session ended with one open; it is replayed).
pub const TRANSACTIONS_ABORTED: &str = "outbox_relay_kafka_transactions_aborted_total";
/// Events per committed Kafka transaction (histogram; checkpoint-only commits count 0).
pub const TRANSACTION_EVENTS: &str = "outbox_relay_kafka_transaction_events";
/// Postgres commit -> Kafka commit acknowledged, per event (histogram, seconds).
pub const END_TO_END_LATENCY: &str = "outbox_relay_end_to_end_latency_seconds";
/// Checkpointed and acknowledged LSN, as a number.
pub const CHECKPOINT_LSN: &str = "outbox_relay_checkpoint_lsn";
/// Newest server WAL position seen (keepalive WAL end or `pg_current_wal_lsn()`), as a number.
pub const SERVER_WAL_LSN: &str = "outbox_relay_server_wal_lsn";
/// Server WAL position minus the acknowledged (checkpointed) position.
pub const REPLICATION_LAG: &str = "outbox_relay_replication_lag_bytes";
/// WAL the slot makes the server keep: `pg_current_wal_lsn() - restart_lsn`.
pub const SLOT_RETAINED_WAL: &str = "outbox_relay_slot_retained_wal_bytes";
/// Bytes of WAL that may still be written before the slot is in danger of invalidation
/// (`pg_replication_slots.safe_wal_size`); 2^63-1 while `max_slot_wal_keep_size` is unbounded.
pub const SLOT_SAFE_WAL_SIZE: &str = "outbox_relay_slot_safe_wal_size_bytes";
/// The slot's `wal_status` (label `status`: reserved, extended, unreserved, lost): 1 for the
/// current one, 0 for the others.
pub const SLOT_WAL_STATUS: &str = "outbox_relay_slot_wal_status";
/// Seconds since the last Kafka commit (since start when none yet).
pub const LAST_COMMIT_AGE: &str = "outbox_relay_last_commit_age_seconds";
/// Session errors by class (label `class`: transient, standby, fenced, config, invariant, bad_row, internal).
pub const ERRORS: &str = "outbox_relay_errors_total";
/// Times this instance was fenced by another relay with the same `transactional.id`.
pub const FENCED: &str = "outbox_relay_fenced_total";
/// Logical decoding messages not published, by reason (label `reason`: `other_prefix`, messages of
/// another prefix; `non_transactional`, messages of the relay's prefix written outside a transaction,
/// which cannot be exactly-once and are never published).
pub const MESSAGES_IGNORED: &str = "outbox_relay_messages_ignored_total";
/// Configuration reloads (SIGHUP) by result (label `result`: applied, refused, failed).
pub const RELOADS: &str = "outbox_relay_config_reloads_total";

/// Every exported sample-name family, for tests and docs.
pub const ALL: &[&str] = &[
    INFO,
    READY,
    STANDBY,
    EVENTS_PUBLISHED,
    EVENTS_DEAD_LETTERED,
    TRANSACTIONS_COMMITTED,
    TRANSACTIONS_ABORTED,
    TRANSACTION_EVENTS,
    END_TO_END_LATENCY,
    CHECKPOINT_LSN,
    SERVER_WAL_LSN,
    REPLICATION_LAG,
    SLOT_RETAINED_WAL,
    SLOT_SAFE_WAL_SIZE,
    SLOT_WAL_STATUS,
    LAST_COMMIT_AGE,
    ERRORS,
    FENCED,
    MESSAGES_IGNORED,
    RELOADS,
];

/// Seconds between the Unix epoch and Postgres' epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WalStatusLabel {
    status: &'static str,
}

/// The values of `pg_replication_slots.wal_status`, in order of danger.
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The registry and the handles the relay updates.
pub struct Metrics {
    registry: Registry,
    pub(crate) ready: Gauge,
    pub(crate) standby: Gauge,
    catching_up: Gauge,
    events_published: Family<TopicLabel, Counter>,
    events_dead_lettered: Counter,
    committed: Counter,
    aborted: Counter,
    txn_events: Histogram,
    latency: Histogram,
    pub(crate) checkpoint_lsn: Gauge,
    pub(crate) server_wal_lsn: Gauge,
    pub(crate) lag: Gauge,
    pub(crate) retained: Gauge,
    safe_wal_size: Gauge,
    wal_status: Family<WalStatusLabel, Gauge>,
    pub(crate) last_commit_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    errors: Family<ClassLabel, Counter>,
    fenced: Counter,
    messages_ignored: Family<ReasonLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("")
    }
}

/// The name to register: prometheus-client appends `_total` to counters and `_info` to info.
fn base(name: &'static str) -> &'static str {
    name.strip_suffix("_total")
        .or_else(|| name.strip_suffix("_info"))
        .unwrap_or(name)
}

impl Metrics {
    /// A registry with every metric, the info metric labelled with this version and `slot`.
    pub fn new(slot: &str) -> Self {
        let mut registry = Registry::default();
        let info = Info::new(vec![
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("slot".to_string(), slot.to_string()),
        ]);
        registry.register(
            base(INFO),
            "Version and replication slot of this relay",
            info,
        );
        let m = Metrics {
            ready: Gauge::default(),
            standby: Gauge::default(),
            catching_up: Gauge::default(),
            events_published: Family::default(),
            events_dead_lettered: Counter::default(),
            committed: Counter::default(),
            aborted: Counter::default(),
            // 1 .. ~1M events.
            txn_events: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
            // 1 ms .. ~65 s.
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            checkpoint_lsn: Gauge::default(),
            server_wal_lsn: Gauge::default(),
            lag: Gauge::default(),
            retained: Gauge::default(),
            safe_wal_size: Gauge::default(),
            wal_status: Family::default(),
            last_commit_age: Gauge::default(),
            errors: Family::default(),
            fenced: Counter::default(),
            messages_ignored: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            READY,
            "1 while the pipeline streams (slot held, producer initialised, checkpoint read)",
            m.ready.clone(),
        );
        registry.register(
            STANDBY,
            "1 while another session holds the slot and this relay waits for it",
            m.standby.clone(),
        );
        registry.register(
            CATCHING_UP,
            "1 while the relay reads a backlog through the SQL interface (catch-up) instead of streaming",
            m.catching_up.clone(),
        );
        registry.register(
            base(EVENTS_PUBLISHED),
            "Events committed in Kafka, per topic",
            m.events_published.clone(),
        );
        registry.register(
            base(EVENTS_DEAD_LETTERED),
            "Rows committed to the dead-letter topic",
            m.events_dead_lettered.clone(),
        );
        registry.register(
            base(TRANSACTIONS_COMMITTED),
            "Kafka transactions committed",
            m.committed.clone(),
        );
        registry.register(
            base(TRANSACTIONS_ABORTED),
            "Kafka transactions aborted (replayed by the next session)",
            m.aborted.clone(),
        );
        registry.register(
            TRANSACTION_EVENTS,
            "Events per committed Kafka transaction",
            m.txn_events.clone(),
        );
        registry.register(
            END_TO_END_LATENCY,
            "Postgres commit to Kafka commit acknowledged, per event, in seconds",
            m.latency.clone(),
        );
        registry.register(
            CHECKPOINT_LSN,
            "Checkpointed and acknowledged LSN",
            m.checkpoint_lsn.clone(),
        );
        registry.register(
            SERVER_WAL_LSN,
            "Newest server WAL position seen",
            m.server_wal_lsn.clone(),
        );
        registry.register(
            REPLICATION_LAG,
            "Server WAL position minus the acknowledged position, in bytes",
            m.lag.clone(),
        );
        registry.register(
            SLOT_RETAINED_WAL,
            "WAL retained by the slot (pg_current_wal_lsn - restart_lsn), in bytes",
            m.retained.clone(),
        );
        registry.register(
            SLOT_SAFE_WAL_SIZE,
            "WAL that may still be written before the slot is in danger of invalidation, in bytes",
            m.safe_wal_size.clone(),
        );
        registry.register(
            SLOT_WAL_STATUS,
            "The slot's wal_status: 1 for the current one (reserved, extended, unreserved, lost)",
            m.wal_status.clone(),
        );
        registry.register(
            LAST_COMMIT_AGE,
            "Seconds since the last Kafka commit",
            m.last_commit_age.clone(),
        );
        registry.register(base(ERRORS), "Session errors by class", m.errors.clone());
        registry.register(
            base(FENCED),
            "Times this instance was fenced by another relay with the same transactional.id",
            m.fenced.clone(),
        );
        registry.register(
            base(MESSAGES_IGNORED),
            "Logical decoding messages not published, by reason",
            m.messages_ignored.clone(),
        );
        registry.register(
            base(RELOADS),
            "Configuration reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A Kafka transaction committed: what it held, and when each Postgres transaction in it
    /// committed (for the end-to-end latency).
    pub fn committed(&self, stats: &mut TxnStats) {
        self.committed.inc();
        let mut total = stats.dead_lettered;
        for (topic, n) in stats.topics.drain(..) {
            total += n;
            self.events_published
                .get_or_create(&TopicLabel {
                    topic: topic.to_string(),
                })
                .inc_by(n);
        }
        if stats.dead_lettered > 0 {
            self.events_dead_lettered.inc_by(stats.dead_lettered);
            stats.dead_lettered = 0;
        }
        self.txn_events.observe(total as f64);
        if !stats.pg_txns.is_empty() {
            let now_micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0)
                - PG_EPOCH_UNIX_SECS * 1_000_000;
            for (commit_ts, n) in stats.pg_txns.drain(..) {
                let secs = (now_micros - commit_ts).max(0) as f64 / 1e6;
                for _ in 0..n {
                    self.latency.observe(secs);
                }
            }
        }
    }

    /// The slot as the last heartbeat saw it: `wal_status` and `safe_wal_size` (`None`: unbounded).
    pub fn slot_state(&self, wal_status: Option<&str>, safe_wal_size: Option<i64>) {
        for status in WAL_STATUSES {
            self.wal_status
                .get_or_create(&WalStatusLabel { status })
                .set(i64::from(wal_status == Some(status)));
        }
        match safe_wal_size {
            Some(bytes) => {
                self.safe_wal_size.set(bytes);
            }
            None => {
                // Unbounded: no danger of invalidation; report as "very large".
                self.safe_wal_size.set(i64::MAX);
            }
        }
    }

    /// The relay reads through the SQL interface (`true`) or streams.
    pub fn catching_up(&self, on: bool) {
        self.catching_up.set(i64::from(on));
    }

    /// A Kafka transaction was aborted.
    pub fn aborted(&self) {
        self.aborted.inc();
    }

    /// A session ended with an error of this class.
    pub fn error(&self, class: &'static str) {
        self.errors.get_or_create(&ClassLabel { class }).inc();
    }

    /// This instance was fenced.
    pub fn fenced(&self) {
        self.fenced.inc();
    }

    /// A logical decoding message was not published (`other_prefix`, `non_transactional`).
    pub fn message_ignored(&self, reason: &'static str) {
        self.messages_ignored
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A SIGHUP reload ended with `result` (applied, refused, failed).
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the open Kafka transaction holds, counted by the pipeline with plain fields (no atomics,
/// no locks) and handed to [`Metrics::committed`] at the commit.
#[derive(Debug, Default)]
pub struct TxnStats {
    /// Events per topic; topics are interned by the router, so the pointer check hits first.
    topics: Vec<(Arc<str>, u64)>,
    dead_lettered: u64,
    /// Events of the Postgres transaction being received, not yet in `pg_txns`.
    in_pg_txn: u64,
    /// (commit timestamp in microseconds since 2000-01-01, events) per Postgres transaction.
    pg_txns: Vec<(i64, u64)>,
}

impl TxnStats {
    /// One record queued for `topic`.
    #[inline]
    pub fn published(&mut self, topic: &Arc<str>) {
        self.in_pg_txn += 1;
        if let Some(entry) = self
            .topics
            .iter_mut()
            .find(|(t, _)| Arc::ptr_eq(t, topic) || **t == **topic)
        {
            entry.1 += 1;
        } else {
            self.topics.push((topic.clone(), 1));
        }
    }

    /// One row queued for the dead-letter topic.
    #[inline]
    pub fn dead_lettered(&mut self) {
        self.in_pg_txn += 1;
        self.dead_lettered += 1;
    }

    /// The events counted since the last call belong to a Postgres transaction committed at
    /// `commit_ts_micros` (call at its Commit, and before a Kafka commit that splits it).
    pub fn pg_commit(&mut self, commit_ts_micros: i64) {
        if self.in_pg_txn > 0 {
            self.pg_txns.push((commit_ts_micros, self.in_pg_txn));
            self.in_pg_txn = 0;
        }
    }
}
