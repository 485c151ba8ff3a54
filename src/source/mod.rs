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

pub mod control;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};

use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn as WalPos;

/// How to reach Postgres and what to read, resolved from the configuration.
#[derive(Clone)]
pub struct SourceSettings {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database holding the outbox.
    pub dbname: String,
    /// Role with LOGIN REPLICATION and SELECT on the outbox.
    pub user: String,
    /// The role's password. Never logged: `Debug` hides it.
    pub password: String,
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
            .field("password", &"***")
            .field("sslmode", &self.sslmode)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish_non_exhaustive()
    }
}

impl SourceSettings {
    /// `host:port` for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One event of the replication stream, in stream order.
#[derive(Debug)]
pub enum SourceEvent {
    /// A transaction starts; `final_lsn` is its commit record's LSN.
    Begin {
        /// Commit LSN of the transaction.
        final_lsn: WalPos,
        /// Transaction id.
        xid: u32,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts_micros: i64,
    },
    /// A pgoutput message inside a transaction (Relation, Insert, Type, Origin, ...), undecoded.
    Change {
        /// WAL position of the change.
        lsn: WalPos,
        /// The pgoutput bytes.
        data: Bytes,
    },
    /// The transaction ends.
    Commit {
        /// Commit record LSN.
        commit_lsn: WalPos,
        /// End of the commit record: where the next transaction may start. Checkpoints use it.
        end_lsn: WalPos,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts_micros: i64,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: WalPos,
        /// Its prefix.
        prefix: String,
    },
    /// The server's heartbeat: everything before `wal_end` has been sent.
    KeepAlive {
        /// Server's sent position.
        wal_end: WalPos,
    },
}

/// An open replication stream that holds the slot.
pub struct Stream {
    client: ReplicationClient,
    /// The last position handed to [`Stream::ack`].
    acked: WalPos,
    /// How often the worker sends standby status updates.
    status_interval: Duration,
    /// Postgres system identifier (from IDENTIFY_SYSTEM).
    pub system_id: String,
    /// Server WAL position when the stream opened.
    pub server_lsn: WalPos,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("system_id", &self.system_id)
            .finish_non_exhaustive()
    }
}

fn tls_config(s: &SourceSettings) -> Result<pgwire_replication::TlsConfig> {
    use pgwire_replication::TlsConfig;
    Ok(match s.sslmode.as_str() {
        "disable" => TlsConfig::disabled(),
        "prefer" => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        "require" => TlsConfig::require(),
        "verify-ca" => TlsConfig::verify_ca(s.sslrootcert.clone()),
        "verify-full" => TlsConfig::verify_full(s.sslrootcert.clone()),
        other => {
            return Err(Error::config(format!(
                "postgres.sslmode: unknown mode {other:?} (disable, prefer, require, verify-ca, verify-full)"
            )))
        }
    })
}

impl Stream {
    /// Connects, identifies the system and starts replication on the slot. Fails with
    /// [`Kind::Standby`] when another session holds the slot.
    pub async fn open(s: &SourceSettings) -> Result<Self> {
        let cfg = ReplicationConfig::new(
            s.host.clone(),
            s.user.clone(),
            s.password.clone(),
            s.dbname.clone(),
            s.slot.clone(),
            s.publication.clone(),
        )
        .with_port(s.port)
        .with_tls(tls_config(s)?)
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(s.status_interval)
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(2048)
        .with_application_name("outbox-relay")
        // Fixed text forms for timestamps (created_at), whatever the server's defaults.
        .with_options("-c DateStyle=ISO -c TimeZone=UTC");
        let opening = async {
            let mut client = ReplicationClient::connect_gated(cfg)
                .await
                .map_err(|e| map_pg_error(s, "connecting for replication", e))?;
            let ident = client
                .identify_system()
                .await
                .map_err(|e| map_pg_error(s, "IDENTIFY_SYSTEM", e))?;
            client
                .start()
                .await
                .map_err(|e| map_pg_error(s, "START_REPLICATION", e))?;
            client
                .wait_started()
                .await
                .map_err(|e| map_pg_error(s, "START_REPLICATION", e))?;
            Ok::<_, Error>(Stream {
                client,
                acked: WalPos::ZERO,
                status_interval: s.status_interval,
                system_id: ident.system_id,
                server_lsn: WalPos(ident.xlogpos.as_u64()),
            })
        };
        match tokio::time::timeout(s.connect_timeout + Duration::from_secs(5), opening).await {
            Ok(r) => r,
            Err(_) => Err(Error::transient(format!(
                "postgres {}: replication connection not established within {:?}",
                s.address(),
                s.connect_timeout
            ))),
        }
    }

    /// The next event. A closed stream is a transient error: the session must reconnect.
    pub async fn recv(&mut self, s: &SourceSettings) -> Result<SourceEvent> {
        loop {
            let ev = match self.client.recv().await {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    return Err(Error::transient(format!(
                        "postgres {}: replication stream ended",
                        s.address()
                    )))
                }
                Err(e) => return Err(map_pg_error(s, "replication stream", e)),
            };
            return Ok(match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => SourceEvent::Begin {
                    final_lsn: WalPos(final_lsn.as_u64()),
                    xid,
                    commit_ts_micros: commit_time_micros,
                },
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => SourceEvent::Commit {
                    commit_lsn: WalPos(lsn.as_u64()),
                    end_lsn: WalPos(end_lsn.as_u64()),
                    commit_ts_micros: commit_time_micros,
                },
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => SourceEvent::Change {
                    lsn: WalPos(wal_start.as_u64()),
                    data,
                },
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    ..
                } => SourceEvent::Message {
                    transactional,
                    lsn: WalPos(lsn.as_u64()),
                    prefix,
                },
                ReplicationEvent::KeepAlive { wal_end, .. } => SourceEvent::KeepAlive {
                    wal_end: WalPos(wal_end.as_u64()),
                },
                ReplicationEvent::StoppedAt { .. } => continue,
                #[allow(unreachable_patterns)]
                _ => continue,
            });
        }
    }

    /// Acknowledges `lsn` as durably published: the slot may release WAL before it. Call only
    /// after the Kafka commit that covers it returned Ok.
    pub fn ack(&mut self, lsn: WalPos) {
        self.acked = self.acked.max(lsn);
        self.client.update_applied_lsn(Lsn::from_u64(lsn.as_u64()));
    }

    /// Stops the stream once the last acknowledgement reached the server (the worker sends it
    /// within one status interval; it does not flush on stop), so a clean stop leaves the slot
    /// at the checkpoint instead of holding WAL until the next start.
    pub async fn close(mut self) {
        let metrics = self.client.metrics();
        let wait = (self.status_interval + Duration::from_millis(500)).min(Duration::from_secs(3));
        let deadline = tokio::time::Instant::now() + wait;
        while WalPos(metrics.last_applied_lsn().as_u64()) < self.acked
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.shutdown()).await;
    }
}

/// Sorts a replication-protocol error by what the relay must do.
pub fn map_pg_error(s: &SourceSettings, what: &str, e: PgWireError) -> Error {
    let text = e.to_string();
    let at = s.address();
    let kind = match &e {
        PgWireError::Auth(_) => Kind::Config,
        PgWireError::Tls(_) => Kind::Config,
        PgWireError::Server(msg) => {
            if msg.contains("55006") {
                Kind::Standby
            } else if ["28P01", "28000", "42704", "3D000", "42501"]
                .iter()
                .any(|code| msg.contains(code))
            {
                // Authentication, missing slot/publication/database, privileges: a person must act.
                Kind::Config
            } else if msg.contains("can no longer get changes") || msg.contains("invalidated") {
                Kind::Invariant
            } else if msg.contains("22021") || msg.contains("22P05") {
                // The walsender cannot convert a row to UTF-8: it will fail the same way forever.
                Kind::BadRow
            } else {
                Kind::Transient
            }
        }
        _ => Kind::Transient,
    };
    let message = match kind {
        Kind::Standby => format!(
            "postgres {at}: slot {:?} is held by another session (another relay?): standing by",
            s.slot
        ),
        Kind::Config if text.contains("28P01") || matches!(e, PgWireError::Auth(_)) => format!(
            "postgres {at}: authentication failed for user {:?} (check postgres.password / postgres.password_file)",
            s.user
        ),
        Kind::BadRow => format!(
            "postgres {at}: the server cannot send a row of the outbox as UTF-8 (the database encoding is not UTF-8 and a row holds bytes that are not valid in it); no client can read past it. Store events as UTF-8 (or the payload as bytea), then skip the transaction by advancing slot {:?} past it and resetting the checkpoint (see the README)",
            s.slot
        ),
        Kind::Invariant => format!(
            "postgres {at}: slot {:?} was invalidated (WAL it needed was removed, e.g. max_slot_wal_keep_size): events may be lost; see the README's recovery steps",
            s.slot
        ),
        _ => format!("postgres {at}: {what}"),
    };
    Error::new(kind, message).with_source(e)
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
            password: "pw-never-printed".into(),
            sslmode: sslmode.into(),
            sslrootcert,
            slot: "outbox_relay".into(),
            publication: "outbox_pub".into(),
            create_slot: true,
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

    #[test]
    fn tls_modes_map_to_the_replication_client_and_unknown_ones_are_named() {
        use pgwire_replication::SslMode;
        for (mode, want) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let tls = tls_config(&settings(mode, Some("/ca.pem".into()))).expect(mode);
            assert_eq!(tls.mode, want, "{mode}");
        }
        let err = tls_config(&settings("sometimes", None)).expect_err("unknown mode");
        assert!(err.message().contains("postgres.sslmode") && err.message().contains("sometimes"));
        assert_eq!(err.exit_code(), 78);
    }
}
