//! One typed configuration tree for the relay: a TOML file, overridden by environment variables.
//!
//! ```text
//!  /etc/outbox-relay.toml ──┐
//!                           ├─ config crate ─> serde (deny_unknown_fields) ─> validate() ─> *_file secrets ─> Loaded
//!  OUTBOX_RELAY__A__B=... ──┘   (env wins)        errors name file + key                      + warnings
//! ```
//!
//! Every key has a default (an empty file is a valid config), units are in the key names, unknown keys are
//! errors, and secrets are [`Secret`]s that print as `***`. Environment variables are
//! `OUTBOX_RELAY__<SECTION>__<KEY>` (`__` nests; names are case-insensitive and folded to lowercase, so a
//! `[routing.topics]` key with capitals or dots, and `[kafka.properties]` (dotted names), can only be set in
//! the file). Values from the environment are strings, converted to the field's type when deserialized, so a
//! password `0123` or `1e5` stays exactly that.
//!
//! The doc comments of the fields are the README's configuration reference.

mod client_props;
mod error;
pub mod reload;
mod secret;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use client_props::{is_sensitive, ClientProps};
pub use error::ConfigError;
pub use secret::Secret;

/// Prefix of the environment variables that override the file (`OUTBOX_RELAY__BATCH__MAX_EVENTS`).
pub const ENV_PREFIX: &str = "OUTBOX_RELAY";

/// An enum read from a string, with `as_str`, `VALUES`, `Default`, and an error for an unknown value that
/// lists the valid ones (the `config` crate's own enum support only says "enum X does not have variant
/// constructor y").
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, default $default:ident {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every valid spelling, in declaration order.
            pub const VALUES: &'static [&'static str] = &[$($text),+];

            /// The spelling in the config file (libpq's or librdkafka's where the value is theirs).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(value: String) -> Result<Self, String> {
                match value.as_str() {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(format!(
                        "unknown value {value:?}; valid values: {}",
                        Self::VALUES.join(", ")
                    )),
                }
            }
        }
    };
}

/// The whole configuration; one section per table of the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[postgres]`: the database holding the outbox, and the replication slot.
    pub postgres: PostgresConfig,
    /// `[outbox]`: the outbox table and its column names.
    pub outbox: OutboxConfig,
    /// `[kafka]`: the cluster, the transactional producer and the checkpoint topic.
    pub kafka: KafkaConfig,
    /// `[routing]`: which topic each event goes to.
    pub routing: RoutingConfig,
    /// `[errors]`: what happens to a row that cannot be published.
    pub errors: ErrorsConfig,
    /// `[batch]`: how many events go into one Kafka transaction.
    pub batch: BatchConfig,
    /// `[catchup]`: draining a backlog through the SQL decoding interface.
    pub catchup: CatchupConfig,
    /// `[shutdown]`: draining on SIGTERM.
    pub shutdown: ShutdownConfig,
    /// `[retry]`: backoff while Postgres or Kafka is unavailable.
    pub retry: RetryConfig,
    /// `[admin]`: the HTTP server for `/live`, `/ready` and `/metrics`.
    pub admin: AdminConfig,
    /// `[log]`: log format and filter.
    pub log: LogConfig,
}

/// The result of [`Config::load`]: the config, plus warnings the caller should log.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated config; secrets from `*_file` keys are already read into the secret fields.
    pub config: Config,
    /// Things that work but should be fixed (e.g. a config file holding a password is world-readable).
    pub warnings: Vec<String>,
    /// The config file it was loaded from.
    pub path: PathBuf,
}

/// `[postgres]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host name or IP address of the Postgres server, or a comma-separated list of them (libpq's
    /// convention, e.g. the nodes of a Patroni cluster): the relay uses the one that accepts
    /// writes (the primary: logical slots live there), for both of its connections. An entry may
    /// carry its own port (`db1:5432,db2:5433`, `[::1]:5432`).
    pub host: String,
    /// TCP port of the Postgres server (of every `host` entry without a port of its own).
    pub port: u16,
    /// Database that holds the outbox table (a logical slot belongs to one database).
    pub dbname: String,
    /// Role to connect as; needs the REPLICATION attribute and SELECT on the outbox table.
    pub user: String,
    /// Password of `user`; empty for none. Prefer `OUTBOX_RELAY__POSTGRES__PASSWORD` or `password_file`.
    /// Set at most one of `password` and `password_file` (the environment overrides the file's value).
    pub password: Secret,
    /// File holding the password (e.g. a systemd credential); one trailing newline is trimmed. A relative
    /// path is relative to the config file's directory.
    pub password_file: Option<PathBuf>,
    /// TLS: `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (as libpq's `sslmode`).
    pub sslmode: SslMode,
    /// CA certificate (PEM) to verify the server with; required for `verify-ca` and `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Logical replication slot to read (`[a-z0-9_]`, at most 63 characters). One relay per slot.
    pub slot: String,
    /// Publication the slot streams (must include the outbox table, inserts only).
    pub publication: String,
    /// Create the slot when it is missing and no checkpoint exists for it; when false, a missing slot
    /// stops the relay. A missing slot with a checkpoint is a lost slot and always stops the relay.
    pub create_slot: bool,
    /// Make the slot a failover slot (Postgres 17+: synchronized to physical standbys with
    /// `sync_replication_slots = on`, usable after a promotion): created so, or turned on at start for
    /// an existing slot. Ignored before 17. See the README, "High availability".
    pub failover_slot: bool,
    /// Timeout for establishing a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Interval between standby status updates (feedback) to the server, in milliseconds; keep it well
    /// below the server's `wal_sender_timeout` (default 60 s).
    pub status_interval_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "postgres".into(),
            user: "outbox_relay".into(),
            password: Secret::default(),
            password_file: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            slot: "outbox_relay".into(),
            publication: "outbox_pub".into(),
            create_slot: true,
            failover_slot: true,
            connect_timeout_ms: 10_000,
            status_interval_ms: 1_000,
        }
    }
}

impl PostgresConfig {
    /// The entries of `host`, in order, each with its port (its own, or `port`).
    pub fn hosts(&self) -> Result<Vec<(String, u16)>, String> {
        parse_hosts(&self.host, self.port)
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `status_interval_ms` as a duration.
    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }
}

/// `postgres.host` as (host, port) pairs: `a,b:5433,[::1]:5434,::1` with `port` for entries that
/// name none (an IPv6 address takes its own port only in brackets). Errors say which entry is wrong.
pub fn parse_hosts(list: &str, port: u16) -> Result<Vec<(String, u16)>, String> {
    let parse_port = |entry: &str, p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{entry:?}: the port after ':' must be 1 to 65535"))
    };
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(
                "must be a host, or a comma-separated list of hosts, without empty entries".into(),
            );
        }
        if let Some(rest) = entry.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{entry:?}: an IPv6 address in '[' lacks its ']'"))?;
            let p = match after {
                "" => port,
                _ => parse_port(
                    entry,
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{entry:?}: only ':<port>' may follow the ']'"))?,
                )?,
            };
            out.push((addr.to_string(), p));
        } else if entry.matches(':').count() == 1 {
            let (h, p) = entry.split_once(':').expect("one ':'");
            if h.is_empty() {
                return Err(format!("{entry:?}: no host before ':'"));
            }
            out.push((h.to_string(), parse_port(entry, p)?));
        } else {
            out.push((entry.to_string(), port));
        }
    }
    Ok(out)
}

string_enum! {
    /// `postgres.sslmode`, with libpq's meanings.
    SslMode, default Prefer {
        /// No TLS.
        Disable = "disable",
        /// TLS when the server offers it, unverified.
        Prefer = "prefer",
        /// TLS, certificate not verified (verified against `sslrootcert` if given).
        Require = "require",
        /// TLS, certificate verified against `sslrootcert`.
        VerifyCa = "verify-ca",
        /// TLS, certificate and host name verified against `sslrootcert`.
        VerifyFull = "verify-full",
    }
}

/// `[outbox]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// The outbox table as `schema.table` (no schema means `public`). Unquoted names fold to lowercase as in
    /// SQL; double-quote a part to keep its case: `"Sales"."Outbox"`.
    pub table: String,
    /// Where events come from: `table` (rows inserted into `outbox.table`), `messages` (transactional
    /// logical decoding messages with `message_prefix`, written by `outbox_emit`; Postgres 14+), or
    /// `both` (one stream in commit order; the rows and messages of one transaction keep their order).
    pub events_from: EventsFrom,
    /// The prefix of the relay's messages (`outbox_emit`'s last argument). Messages with another
    /// prefix are someone else's and are ignored (counted). Not empty.
    pub message_prefix: String,
    /// When the relay creates its slot, first publish the rows already in the table (the snapshot
    /// Postgres exports at the slot's creation, so "in the snapshot" and "in the stream" never overlap
    /// or leave a gap), then stream. Off by default: an outbox is normally empty.
    pub snapshot: bool,
    /// Column that orders the initial snapshot: events of one key are published in this order (ties
    /// by id), then everything after the slot's creation in commit order. Empty: the `created_at`
    /// column.
    pub snapshot_order_by: String,
    /// `[outbox.columns]`: which column holds what (e.g. Debezium's layout `aggregatetype`, `type`).
    pub columns: ColumnsConfig,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            table: "public.outbox".into(),
            events_from: EventsFrom::Table,
            message_prefix: "outbox".into(),
            snapshot: false,
            snapshot_order_by: String::new(),
            columns: ColumnsConfig::default(),
        }
    }
}

string_enum! {
    /// `outbox.events_from`
    EventsFrom, default Table {
        /// Rows inserted into `outbox.table` (the publication must publish it).
        Table = "table",
        /// Transactional messages with `outbox.message_prefix` (`outbox_emit`), Postgres 14+.
        Messages = "messages",
        /// Both, as they were committed.
        Both = "both",
    }
}

impl EventsFrom {
    /// Rows of the table are events.
    pub fn rows(self) -> bool {
        matches!(self, Self::Table | Self::Both)
    }

    /// Messages with the prefix are events.
    pub fn messages(self) -> bool {
        matches!(self, Self::Messages | Self::Both)
    }
}

impl OutboxConfig {
    /// The column ordering the initial snapshot (`snapshot_order_by`, else `created_at`'s).
    pub fn snapshot_order_column(&self) -> Option<&str> {
        Some(self.snapshot_order_by.as_str())
            .filter(|c| !c.is_empty())
            .or_else(|| self.columns.created_at())
    }
}

/// `[outbox.columns]`: column names exactly as in the catalog (case-sensitive, not quoted).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnsConfig {
    /// Event id (uuid): Kafka header `event_id`; consumers dedupe on it.
    pub id: String,
    /// Aggregate type: chooses the topic.
    pub aggregate_type: String,
    /// Aggregate id: the Kafka message key (order per aggregate).
    pub aggregate_id: String,
    /// Event type: Kafka header `event_type`.
    pub event_type: String,
    /// Payload (jsonb): the Kafka message value.
    pub payload: String,
    /// Extra Kafka headers (jsonb object); `""` when the table has no such column.
    pub headers: String,
    /// Creation time: Kafka header `created_at`; `""` when the table has no such column.
    pub created_at: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        Self {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            event_type: "event_type".into(),
            payload: "payload".into(),
            headers: "headers".into(),
            created_at: "created_at".into(),
        }
    }
}

impl ColumnsConfig {
    /// The headers column, `None` when disabled.
    pub fn headers(&self) -> Option<&str> {
        Some(self.headers.as_str()).filter(|c| !c.is_empty())
    }

    /// The created-at column, `None` when disabled.
    pub fn created_at(&self) -> Option<&str> {
        Some(self.created_at.as_str()).filter(|c| !c.is_empty())
    }
}

/// `[kafka]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Compacted, one-partition topic holding the relay's checkpoints (written in the same transactions as
    /// the events).
    pub checkpoint_topic: String,
    /// Create the checkpoint topic when missing; when false, a missing topic stops the relay.
    pub create_checkpoint_topic: bool,
    /// Kafka `transactional.id`; default `outbox-relay.<postgres.slot>`. Must be stable across restarts and
    /// shared by the standby of the same slot (that is what fences a zombie).
    pub transactional_id: Option<String>,
    /// Kafka transaction timeout, in milliseconds (the broker caps it at `transaction.max.timeout.ms`,
    /// default 900000).
    pub transaction_timeout_ms: u64,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism for the `sasl_*` protocols: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: SaslMechanism,
    /// SASL user name; required for the `sasl_*` protocols, refused otherwise.
    pub sasl_username: Option<String>,
    /// SASL password; set at most one of `sasl_password` and `sasl_password_file`.
    pub sasl_password: Secret,
    /// File holding the SASL password; one trailing newline is trimmed; relative to the config file's
    /// directory.
    pub sasl_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify the brokers with, for `ssl` and `sasl_ssl`; default: the system's.
    pub ssl_ca_location: Option<PathBuf>,
    /// `[kafka.properties]`: further librdkafka properties, passed through as strings to the producer and
    /// consumers (e.g. `"linger.ms" = "5"`). Properties the relay sets itself are refused.
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            checkpoint_topic: "outbox_relay.checkpoints".into(),
            create_checkpoint_topic: true,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: Secret::default(),
            sasl_password_file: None,
            ssl_ca_location: None,
            properties: KafkaProperties::default(),
        }
    }
}

impl KafkaConfig {
    /// `transaction_timeout_ms` as a duration.
    pub fn transaction_timeout(&self) -> Duration {
        Duration::from_millis(self.transaction_timeout_ms)
    }

    /// librdkafka properties common to the producer and the consumers (secrets as [`Secret`]s).
    pub fn client_props(&self) -> ClientProps {
        ClientProps::from_config(self)
    }
}

/// `[kafka.properties]`: passthrough librdkafka properties. `Debug` hides the values librdkafka
/// itself treats as secrets ([`client_props::is_sensitive`]).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k.as_str(),
                    if client_props::is_sensitive(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

string_enum! {
    /// `kafka.security_protocol`, as librdkafka's `security.protocol`.
    SecurityProtocol, default Plaintext {
        /// No TLS, no authentication.
        Plaintext = "plaintext",
        /// TLS.
        Ssl = "ssl",
        /// SASL authentication without TLS.
        SaslPlaintext = "sasl_plaintext",
        /// SASL authentication over TLS.
        SaslSsl = "sasl_ssl",
    }
}

impl SecurityProtocol {
    /// True for `sasl_plaintext` and `sasl_ssl`.
    pub fn is_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// True for `ssl` and `sasl_ssl`.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

string_enum! {
    /// `kafka.sasl_mechanism`, as librdkafka's `sasl.mechanism`.
    SaslMechanism, default ScramSha512 {
        /// `PLAIN`: the password travels as is (use with `sasl_ssl`).
        Plain = "PLAIN",
        /// `SCRAM-SHA-256`.
        ScramSha256 = "SCRAM-SHA-256",
        /// `SCRAM-SHA-512`.
        ScramSha512 = "SCRAM-SHA-512",
    }
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Topic of an event whose aggregate type has no entry in `[routing.topics]`; the only placeholder is
    /// `{aggregate_type}`.
    pub topic_template: String,
    /// When true, an aggregate type absent from `[routing.topics]` is unroutable (dead letter or stop)
    /// instead of going to `topic_template`.
    pub strict: bool,
    /// `[routing.topics]`: aggregate type -> topic, overriding `topic_template`.
    pub topics: BTreeMap<String, String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            topic_template: "outbox.{aggregate_type}".into(),
            strict: false,
            topics: BTreeMap::new(),
        }
    }
}

/// `[errors]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorsConfig {
    /// What to do with a row that cannot be published (bad payload, missing key, oversized, unroutable):
    /// `dead_letter` (publish it to `dead_letter_topic` with the reason in headers) or `stop`.
    pub on_error: OnError,
    /// Topic for rows that cannot be published, when `on_error = "dead_letter"`.
    pub dead_letter_topic: String,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            on_error: OnError::DeadLetter,
            dead_letter_topic: "outbox_relay.dead_letter".into(),
        }
    }
}

string_enum! {
    /// `errors.on_error`
    OnError, default DeadLetter {
        /// Publish the row to the dead-letter topic, with the reason in headers, and go on.
        DeadLetter = "dead_letter",
        /// Stop the relay (nothing after the row is published until it is fixed).
        Stop = "stop",
    }
}

/// `[batch]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Events per Kafka transaction, at least 1. Whole Postgres transactions are batched together up to
    /// this count; one Postgres transaction is never split below `split_events`, even past this count.
    pub max_events: usize,
    /// Payload bytes per Kafka transaction (same rule as `max_events`).
    pub max_bytes: usize,
    /// How long an open Kafka transaction may wait for more events before it commits, in milliseconds.
    /// 0 (the default) commits at the first Postgres commit boundary when no other commit is running
    /// (group commit: at low load latency is one Kafka transaction; under load the next transaction
    /// grows while the previous one commits). A larger value trades latency for fewer, bigger Kafka
    /// transactions at low load.
    pub max_delay_ms: u64,
    /// A Postgres transaction with more events than this is published in consecutive Kafka transactions of
    /// this many events (in order, still exactly once, but not atomically visible). At least 1. Bounds memory.
    pub split_events: usize,
    /// While the outbox is idle but the server's WAL moves (other tables are busy), the least time between
    /// two checkpoint-only Kafka transactions that let the slot release WAL, in milliseconds.
    pub idle_checkpoint_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 5_000,
            max_bytes: 4_194_304,
            max_delay_ms: 0,
            split_events: 50_000,
            idle_checkpoint_ms: 1_000,
        }
    }
}

impl BatchConfig {
    /// `max_delay_ms` as a duration.
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }

    /// `idle_checkpoint_ms` as a duration.
    pub fn idle_checkpoint(&self) -> Duration {
        Duration::from_millis(self.idle_checkpoint_ms)
    }
}

string_enum! {
    /// `catchup.mode`
    CatchupMode, default Auto {
        /// Catch up through the SQL interface when a session starts `catchup.min_lag_mb` or more
        /// behind, then stream.
        Auto = "auto",
        /// Always stream (`START_REPLICATION`).
        Off = "off",
        /// Never stream: read every change through the SQL interface, polling when caught up
        /// (for tests and benchmarks of the catch-up path).
        Always = "always",
    }
}

/// `[catchup]`: a backlog is read through `pg_logical_slot_get_binary_changes` (2.5-3x what the
/// walsender streams), then the relay streams again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatchupConfig {
    /// `auto`, `off` or `always`.
    pub mode: CatchupMode,
    /// `auto`: catch up when a session starts with the slot at least this many MiB of WAL behind
    /// the server's current position.
    pub min_lag_mb: u64,
    /// Changes asked of each SQL call (a call returns whole transactions, so it may return more).
    pub chunk_changes: u64,
    /// `always`: how long to wait before asking again when a call returned nothing, in milliseconds.
    pub poll_ms: u64,
}

impl Default for CatchupConfig {
    fn default() -> Self {
        Self {
            mode: CatchupMode::Auto,
            min_lag_mb: 64,
            chunk_changes: 20_000,
            poll_ms: 100,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long to finish the open Kafka transaction before aborting it, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

impl ShutdownConfig {
    /// `drain_timeout_ms` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// `[retry]`: exponential backoff while a server is unavailable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff, in milliseconds; doubles on each attempt.
    pub initial_backoff_ms: u64,
    /// Largest backoff, in milliseconds.
    pub max_backoff_ms: u64,
    /// A server unavailable for longer than this (milliseconds) stops the relay with exit code 69.
    pub max_elapsed_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
            max_elapsed_ms: 300_000,
        }
    }
}

impl RetryConfig {
    /// `initial_backoff_ms` as a duration.
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    /// `max_backoff_ms` as a duration.
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    /// `max_elapsed_ms` as a duration.
    pub fn max_elapsed(&self) -> Duration {
        Duration::from_millis(self.max_elapsed_ms)
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` of the HTTP server for `/live`, `/ready` and `/metrics`; `""` disables it.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl AdminConfig {
    /// The address to listen on, `None` when disabled (or invalid: `validate` refuses that).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for a terminal or journald) or `json` (one object per line).
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info` or `info,outbox_relay=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

string_enum! {
    /// `log.format`
    LogFormat, default Text {
        /// Human-readable lines.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
}

impl Config {
    /// Loads `path`, overridden by the process environment (`OUTBOX_RELAY__*`), validates it and reads the
    /// `*_file` secrets.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let wanted = format!("{ENV_PREFIX}__").to_lowercase();
        let mut env = HashMap::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.to_lowercase().starts_with(&wanted) {
                continue;
            }
            let key = name[wanted.len()..].replace("__", ".").to_lowercase();
            let value = value.into_string().map_err(|_| {
                ConfigError::invalid(
                    key,
                    format!("environment variable {name} is not valid UTF-8"),
                )
                .with_path(path)
            })?;
            env.insert(name.to_string(), value);
        }
        Self::load_with_env(path, &env)
    }

    /// As [`Config::load`], with `env` in place of the process environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let crate_err = |e| error::from_config_crate(e, path, env);
        let file = config::File::from_str(&text, config::FileFormat::Toml);
        // The file alone: syntax errors, and which secrets the file itself holds.
        let file_only = config::Config::builder()
            .add_source(file.clone())
            .build()
            .map_err(crate_err)?;
        // No try_parsing: env values stay strings and the config crate converts them to the field's type
        // when deserializing ("500" -> 500, "true" -> true). With try_parsing, a String field would get
        // the re-printed number instead ("0123" -> "123", "1e3" -> "1000").
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(false)
            .source(Some(
                env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ));
        let mut config: Config = config::Config::builder()
            .add_source(file)
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(crate_err)?;
        config.normalize();
        config.validate().map_err(|e| e.with_path(path))?;

        let mut warnings = Vec::new();
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(file) = &config.postgres.password_file {
            config.postgres.password =
                read_secret_file(dir, "postgres.password_file", file, &mut warnings)
                    .map_err(|e| e.with_path(path))?;
        }
        if let Some(file) = &config.kafka.sasl_password_file {
            config.kafka.sasl_password =
                read_secret_file(dir, "kafka.sasl_password_file", file, &mut warnings)
                    .map_err(|e| e.with_path(path))?;
        }
        config.postgres.password_file = None;
        config.kafka.sasl_password_file = None;

        let secrets_in_file = secret_keys_in(&file_only);
        if !secrets_in_file.is_empty() {
            if let Some(mode) = group_or_other_readable(path) {
                warnings.push(format!(
                    "{} holds {} and is readable by group or others (mode {mode:o}): chmod 600 it, or move \
                     the secret to an environment variable or a *_file",
                    path.display(),
                    secrets_in_file.join(", ")
                ));
            }
        }
        if config.kafka.security_protocol == SecurityProtocol::SaslPlaintext
            && config.kafka.sasl_mechanism == SaslMechanism::Plain
        {
            warnings.push(
                "kafka.sasl_mechanism: PLAIN over sasl_plaintext sends the password unencrypted; use sasl_ssl"
                    .to_string(),
            );
        }
        Ok(Loaded {
            config,
            warnings,
            path: path.to_path_buf(),
        })
    }

    /// Checks values (ranges, names, combinations); each error names its key. Called by `load`. On a
    /// loaded config the `*_file` keys are already resolved (`None`), so it passes again.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The Kafka `transactional.id`: `kafka.transactional_id`, default `outbox-relay.<postgres.slot>`.
    pub fn transactional_id(&self) -> String {
        match &self.kafka.transactional_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => format!("outbox-relay.{}", self.postgres.slot),
        }
    }

    /// The outbox table as (schema, name), unquoted, unquoted parts folded to lowercase as Postgres does
    /// (compare them with the names in pgoutput's Relation message). On a table name that `validate`
    /// refuses, returns `("public", <the raw string>)`.
    pub fn table(&self) -> (String, String) {
        validate::parse_table(&self.outbox.table)
            .unwrap_or_else(|_| ("public".to_string(), self.outbox.table.clone()))
    }

    /// An empty string in an optional key (e.g. from `OUTBOX_RELAY__KAFKA__SSL_CA_LOCATION=`) means unset.
    fn normalize(&mut self) {
        fn path(p: &mut Option<PathBuf>) {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *p = None;
            }
        }
        fn string(s: &mut Option<String>) {
            if s.as_ref().is_some_and(|s| s.is_empty()) {
                *s = None;
            }
        }
        path(&mut self.postgres.password_file);
        path(&mut self.postgres.sslrootcert);
        path(&mut self.kafka.sasl_password_file);
        path(&mut self.kafka.ssl_ca_location);
        string(&mut self.kafka.transactional_id);
        string(&mut self.kafka.sasl_username);
    }
}

/// Reads a `*_file` secret: contents with trailing newlines trimmed. Errors name the key and the file, never
/// the contents.
fn read_secret_file(
    config_dir: &Path,
    key: &str,
    file: &Path,
    warnings: &mut Vec<String>,
) -> Result<Secret, ConfigError> {
    let file = config_dir.join(file); // keeps `file` when it is absolute
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::SecretFile {
        path: PathBuf::new(),
        key: key.to_string(),
        file: file.clone(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} is empty", file.display()),
        ));
    }
    if let Some(mode) = group_or_other_readable(&file) {
        warnings.push(format!(
            "{key}: {} is readable by group or others (mode {mode:o}): chmod 600 it",
            file.display()
        ));
    }
    Ok(Secret::new(secret))
}

/// The secret keys set (non-empty) in the file layer alone.
fn secret_keys_in(file_only: &config::Config) -> Vec<String> {
    let mut keys: Vec<String> = ["postgres.password", "kafka.sasl_password"]
        .into_iter()
        .filter(|k| file_only.get_string(k).is_ok_and(|v| !v.is_empty()))
        .map(str::to_string)
        .collect();
    if let Ok(props) = file_only.get_table("kafka.properties") {
        let mut names: Vec<&String> = props
            .keys()
            .filter(|k| k.contains("password") || k.contains("secret"))
            .collect();
        names.sort();
        keys.extend(
            names
                .into_iter()
                .map(|k| format!("kafka.properties.\"{k}\"")),
        );
    }
    keys
}

/// The permission bits when the file is readable by group or others (unix); `None` otherwise.
#[cfg(unix)]
fn group_or_other_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_other_readable(_path: &Path) -> Option<u32> {
    None
}
