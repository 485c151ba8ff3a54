//! The Postgres side: the replication stream of the outbox publication, and the SQL checks around it.
//!
//! Two connections, as Materialize does it: a replication connection that streams `pgoutput`
//! (through `pgwire-replication`, kept behind [`Stream`] so it can be replaced), and a plain SQL
//! connection ([`control::Control`], tokio-postgres) for `wal_level`, publication, slot and
//! `confirmed_flush_lsn` checks.
//!
//! The stream starts at `0/0`: the server then starts at the slot's `confirmed_flush_lsn`, which is
//! never past our checkpoint because we acknowledge nothing before its Kafka commit. Only the
//! committed position ever flows back ([`Stream::ack`]); the received one stays in the relay.

pub mod catchup;
pub mod control;
pub mod errors;
pub mod slot;
pub mod snapshot;
pub mod stream;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

pub use catchup::CatchUp;
pub use control::Control;
pub use slot::{Failover, SlotInfo};
pub use stream::Stream;

use crate::config::{Config, Secret};
use crate::lsn::Lsn;

/// How to reach Postgres and what to read, resolved from the configuration.
#[derive(Clone)]
pub struct SourceSettings {
    /// Host name or address; a comma-separated list (libpq's convention) names the servers of a
    /// cluster, and the relay uses the one that accepts writes.
    pub host: String,
    /// Server port (every host's).
    pub port: u16,
    /// Database holding the outbox.
    pub dbname: String,
    /// Role with LOGIN REPLICATION and SELECT on the outbox.
    pub user: String,
    /// The role's password, a [`Secret`] until handed to the client library.
    pub password: Secret,
    /// TLS mode: disable, prefer, require, verify-ca, verify-full.
    pub sslmode: String,
    /// CA bundle for verify-ca / verify-full.
    pub sslrootcert: Option<PathBuf>,
    /// Logical replication slot.
    pub slot: String,
    /// Publication of the outbox table.
    pub publication: String,
    /// Create the slot when missing.
    pub create_slot: bool,
    /// Make the slot a failover slot (Postgres 17+).
    pub failover_slot: bool,
    /// Rows of the outbox table are events (`outbox.events_from`: table or both).
    pub table_events: bool,
    /// Messages of the relay's prefix are events (messages or both): Postgres 14+.
    pub message_events: bool,
    /// Outbox table schema.
    pub table_schema: String,
    /// Outbox table name.
    pub table_name: String,
    /// Columns the mapping needs, with the config key naming each (for messages).
    pub required_columns: Vec<(String, String)>,
    /// How often the standby status update repeats the acknowledged position.
    pub status_interval: Duration,
    /// Bound on connecting and authenticating.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for SourceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("sslmode", &self.sslmode)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish_non_exhaustive()
    }
}

impl SourceSettings {
    /// `host:port` for messages (`h1,h2:port` before a host was chosen).
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The entries of `host`, in order, each with its port (validated with the configuration).
    pub fn hosts(&self) -> Vec<(String, u16)> {
        crate::config::parse_hosts(&self.host, self.port)
            .unwrap_or_else(|_| vec![(self.host.clone(), self.port)])
    }

    /// The Postgres side of a validated configuration.
    pub fn from_config(cfg: &Config) -> Self {
        let (table_schema, table_name) = cfg.table();
        let c = &cfg.outbox.columns;
        let mut required: Vec<(String, String)> = [
            ("outbox.columns.id", &c.id),
            ("outbox.columns.aggregate_type", &c.aggregate_type),
            ("outbox.columns.aggregate_id", &c.aggregate_id),
            ("outbox.columns.event_type", &c.event_type),
            ("outbox.columns.payload", &c.payload),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        if let Some(h) = c.headers() {
            required.push(("outbox.columns.headers".into(), h.to_string()));
        }
        if let Some(h) = c.created_at() {
            required.push(("outbox.columns.created_at".into(), h.to_string()));
        }
        let pg = &cfg.postgres;
        SourceSettings {
            host: pg.host.clone(),
            port: pg.port,
            dbname: pg.dbname.clone(),
            user: pg.user.clone(),
            password: pg.password.clone(),
            sslmode: pg.sslmode.as_str().to_string(),
            sslrootcert: pg.sslrootcert.clone(),
            slot: pg.slot.clone(),
            publication: pg.publication.clone(),
            create_slot: pg.create_slot,
            failover_slot: pg.failover_slot,
            table_events: cfg.outbox.events_from.rows(),
            message_events: cfg.outbox.events_from.messages(),
            table_schema,
            table_name,
            required_columns: required,
            status_interval: pg.status_interval(),
            connect_timeout: pg.connect_timeout(),
        }
    }
}

/// One event of the replication stream, in stream order.
#[derive(Debug)]
pub enum SourceEvent {
    /// A transaction starts; `final_lsn` is its commit record's LSN.
    Begin {
        /// Commit LSN of the transaction.
        final_lsn: Lsn,
        /// Transaction id.
        xid: u32,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts_micros: i64,
    },
    /// A pgoutput message inside a transaction (Relation, Insert, Type, Origin, ...), undecoded.
    Change {
        /// WAL position of the change.
        lsn: Lsn,
        /// The pgoutput bytes.
        data: Bytes,
    },
    /// The transaction ends.
    Commit {
        /// Commit record LSN.
        commit_lsn: Lsn,
        /// End of the commit record: where the next transaction may start. Checkpoints use it.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts_micros: i64,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content (for the relay's prefix: an `outbox_emit` envelope).
        content: Bytes,
    },
    /// The server's heartbeat: everything before `wal_end` has been sent.
    KeepAlive {
        /// Server's sent position.
        wal_end: Lsn,
    },
    /// The catch-up read reached the server's WAL end: the relay streams from here.
    CaughtUp,
}

/// Where the loop reads events from: the walsender ([`Stream`]) or, for a backlog, the SQL
/// decoding interface ([`CatchUp`]). Same events, same positions, same acknowledgements.
#[derive(Debug)]
pub enum Reader {
    /// `START_REPLICATION` on the slot.
    Stream(Stream),
    /// `pg_logical_slot_get_binary_changes` on a temporary copy of the slot.
    CatchUp(Box<CatchUp>),
}

impl Reader {
    /// The next event.
    pub async fn recv(&mut self, s: &SourceSettings) -> crate::error::Result<SourceEvent> {
        match self {
            Reader::Stream(st) => st.recv(s).await,
            Reader::CatchUp(c) => c.recv(s).await,
        }
    }

    /// Acknowledges what Kafka committed.
    pub fn ack(&mut self, lsn: Lsn) {
        match self {
            Reader::Stream(st) => st.ack(lsn),
            Reader::CatchUp(c) => c.ack(lsn),
        }
    }

    /// Closes it once the last acknowledgement reached the server.
    pub async fn close(self) {
        match self {
            Reader::Stream(st) => st.close().await,
            Reader::CatchUp(c) => c.close().await,
        }
    }

    /// Reading through the SQL interface.
    pub fn catching_up(&self) -> bool {
        matches!(self, Reader::CatchUp(_))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings for unit tests: nothing here connects anywhere.
    pub(crate) fn settings(sslmode: &str, sslrootcert: Option<PathBuf>) -> SourceSettings {
        SourceSettings {
            host: "db.example".into(),
            port: 5432,
            dbname: "app".into(),
            user: "outbox_relay".into(),
            password: Secret::new("pw-never-printed"),
            sslmode: sslmode.into(),
            sslrootcert,
            slot: "outbox_relay".into(),
            publication: "outbox_pub".into(),
            create_slot: true,
            failover_slot: true,
            table_events: true,
            message_events: false,
            table_schema: "public".into(),
            table_name: "outbox".into(),
            required_columns: vec![],
            status_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", settings("disable", None));
        assert!(!text.contains("pw-never-printed"), "{text}");
        assert!(
            text.contains("db.example") && text.contains("***"),
            "{text}"
        );
    }
}
