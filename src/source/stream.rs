//! The replication connection: `START_REPLICATION` on the slot, pgoutput events in stream order,
//! and acknowledgements (standby status updates) of what Kafka committed.
//!
//! Kept behind [`Stream`] so the transport (pgwire-replication today) can be replaced. The
//! stream starts at `0/0`: the server then starts at the slot's `confirmed_flush_lsn`, which is
//! never past our checkpoint because nothing is acknowledged before its Kafka commit.

use std::time::Duration;

use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationConfig, ReplicationEvent};

use super::errors::map_pg_error;
use super::{SourceEvent, SourceSettings};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// An open replication stream that holds the slot.
pub struct Stream {
    client: ReplicationClient,
    /// The last position handed to [`Stream::ack`].
    acked: Lsn,
    /// How often the worker sends standby status updates.
    status_interval: Duration,
    /// Postgres system identifier (from IDENTIFY_SYSTEM).
    pub system_id: String,
    /// Server WAL position when the stream opened.
    pub server_lsn: Lsn,
    /// The server's timeline (from IDENTIFY_SYSTEM).
    pub timeline: u32,
    /// The timeline history (`TIMELINE_HISTORY`): for each earlier timeline, where it ended and
    /// the next began (the fork point). Empty on timeline 1.
    pub history: Vec<(u32, Lsn)>,
}

/// What to do on the replication connection before streaming.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Turn `failover` on for the existing slot (`ALTER_REPLICATION_SLOT`, Postgres 17+).
    pub enable_failover: bool,
}

/// A replication connection that has identified the system but not started streaming: commands
/// that must run before `START_REPLICATION` (creating the slot with an exported snapshot, turning
/// failover on) run here.
pub struct Gated {
    client: ReplicationClient,
    settings: SourceSettings,
    system_id: String,
    server_lsn: Lsn,
    timeline: u32,
    history: Vec<(u32, Lsn)>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated")
            .field("system_id", &self.system_id)
            .field("timeline", &self.timeline)
            .finish_non_exhaustive()
    }
}

impl Gated {
    /// Connects for replication, runs IDENTIFY_SYSTEM and, past timeline 1, TIMELINE_HISTORY.
    pub async fn connect(s: &SourceSettings) -> Result<Self> {
        let cfg = replication_config(s)?;
        let connecting = async {
            let mut client = ReplicationClient::connect_gated(cfg)
                .await
                .map_err(|e| map_pg_error(s, "connecting for replication", e))?;
            let ident = client
                .identify_system()
                .await
                .map_err(|e| map_pg_error(s, "IDENTIFY_SYSTEM", e))?;
            let history = if ident.timeline > 1 {
                let h = client
                    .timeline_history(ident.timeline)
                    .await
                    .map_err(|e| map_pg_error(s, "TIMELINE_HISTORY", e))?;
                parse_history(&String::from_utf8_lossy(&h.content))
            } else {
                Vec::new()
            };
            Ok::<_, Error>(Gated {
                client,
                settings: s.clone(),
                system_id: ident.system_id,
                server_lsn: Lsn(ident.xlogpos.as_u64()),
                timeline: ident.timeline,
                history,
            })
        };
        match tokio::time::timeout(s.connect_timeout + Duration::from_secs(5), connecting).await {
            Ok(r) => r,
            Err(_) => Err(Error::transient(format!(
                "postgres {}: replication connection not established within {:?}",
                s.address(),
                s.connect_timeout
            ))),
        }
    }

    /// The server's timeline.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// Creates the slot and exports the snapshot of its consistent point: returns that point and
    /// the snapshot's name, importable (`SET TRANSACTION SNAPSHOT`) until this connection runs its
    /// next command. `version` is the server's `server_version_num`.
    pub async fn create_slot_exporting(
        &mut self,
        version: u32,
        failover: bool,
    ) -> Result<(Lsn, String)> {
        let s = &self.settings;
        let slot = &s.slot;
        let sql = if version >= 150_000 {
            let failover = if failover && version >= 170_000 {
                ", FAILOVER true"
            } else {
                ""
            };
            format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export'{failover})")
        } else {
            format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT")
        };
        let rows = self
            .client
            .simple_query(&sql)
            .await
            .map_err(|e| map_pg_error(s, "CREATE_REPLICATION_SLOT", e))?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("postgres: CREATE_REPLICATION_SLOT returned no row"))?;
        let text = |i: usize| {
            row.get(i)
                .cloned()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let consistent: Lsn = text(1).and_then(|t| t.parse().ok()).ok_or_else(|| {
            Error::internal("postgres: CREATE_REPLICATION_SLOT: no consistent point")
        })?;
        let snapshot = text(2).ok_or_else(|| {
            Error::internal("postgres: CREATE_REPLICATION_SLOT: no exported snapshot")
        })?;
        tracing::info!(slot = %slot, consistent_point = %consistent, snapshot = %snapshot, "created the replication slot with an exported snapshot");
        Ok((consistent, snapshot))
    }

    /// Starts streaming (turning failover on first when asked).
    pub async fn start(mut self, opts: OpenOptions) -> Result<Stream> {
        let s = self.settings.clone();
        let starting = async {
            if opts.enable_failover {
                self.client
                    .simple_query(&format!(
                        "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
                        s.slot
                    ))
                    .await
                    .map_err(|e| map_pg_error(&s, "ALTER_REPLICATION_SLOT (FAILOVER true)", e))?;
                tracing::info!(slot = %s.slot, "turned failover on for the replication slot (postgres.failover_slot)");
            }
            self.client
                .start()
                .await
                .map_err(|e| map_pg_error(&s, "START_REPLICATION", e))?;
            self.client
                .wait_started()
                .await
                .map_err(|e| map_pg_error(&s, "START_REPLICATION", e))?;
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(s.connect_timeout + Duration::from_secs(5), starting).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::transient(format!(
                    "postgres {}: START_REPLICATION not answered within {:?}",
                    s.address(),
                    s.connect_timeout
                )))
            }
        }
        Ok(Stream {
            client: self.client,
            acked: Lsn::ZERO,
            status_interval: s.status_interval,
            system_id: self.system_id,
            server_lsn: self.server_lsn,
            timeline: self.timeline,
            history: self.history,
        })
    }
}

/// Parses a timeline history file: `<parent tli>\t<switchpoint>\t<reason>` per line.
pub fn parse_history(content: &str) -> Vec<(u32, Lsn)> {
    content
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let at = f.next()?.parse().ok()?;
            Some((tli, at))
        })
        .collect()
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

/// The replication client's configuration for `s`, starting at `0/0` (the slot's position).
fn replication_config(s: &SourceSettings) -> Result<ReplicationConfig> {
    Ok(ReplicationConfig::new(
        s.host.clone(),
        s.user.clone(),
        s.password.expose().to_string(),
        s.dbname.clone(),
        s.slot.clone(),
        s.publication.clone(),
    )
    .with_port(s.port)
    .with_tls(tls_config(s)?)
    .with_start_lsn(WireLsn::ZERO)
    .with_status_interval(s.status_interval)
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(2048)
    .with_application_name("outbox-relay")
    // Fixed text forms for timestamps (created_at), whatever the server's defaults.
    .with_options("-c DateStyle=ISO -c TimeZone=UTC"))
}

/// What IDENTIFY_SYSTEM (and TIMELINE_HISTORY) say on a replication connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Postgres system identifier.
    pub system_id: String,
    /// The server's timeline.
    pub timeline: u32,
    /// The server's WAL position.
    pub xlogpos: Lsn,
    /// For each earlier timeline, where it forked into the next (empty on timeline 1).
    pub history: Vec<(u32, Lsn)>,
}

/// Opens a replication connection as the relay does (same role, database, TLS), runs
/// IDENTIFY_SYSTEM (and TIMELINE_HISTORY past timeline 1) and closes it without starting
/// replication: the slot is not touched. Proves that `pg_hba.conf` and the role's REPLICATION
/// attribute allow the relay's connection (`doctor`), and gives the timeline
/// (`reset-checkpoint --to-lsn`).
pub async fn identify(s: &SourceSettings) -> Result<Identity> {
    let Gated {
        client,
        system_id,
        server_lsn,
        timeline,
        history,
        ..
    } = Gated::connect(s).await?;
    // A gated client dropped before `start` closes its gate: the worker sends Terminate and the
    // walsender ends without ever streaming.
    drop(client);
    Ok(Identity {
        system_id,
        timeline,
        xlogpos: server_lsn,
        history,
    })
}

impl Stream {
    /// Connects, identifies the system and starts replication on the slot. Fails with
    /// [`Kind::Standby`](crate::error::Kind) when another session holds the slot.
    pub async fn open(s: &SourceSettings, opts: OpenOptions) -> Result<Self> {
        Gated::connect(s).await?.start(opts).await
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
                    final_lsn: Lsn(final_lsn.as_u64()),
                    xid,
                    commit_ts_micros: commit_time_micros,
                },
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => SourceEvent::Commit {
                    commit_lsn: Lsn(lsn.as_u64()),
                    end_lsn: Lsn(end_lsn.as_u64()),
                    commit_ts_micros: commit_time_micros,
                },
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => SourceEvent::Change {
                    lsn: Lsn(wal_start.as_u64()),
                    data,
                },
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => SourceEvent::Message {
                    transactional,
                    lsn: Lsn(lsn.as_u64()),
                    prefix,
                    content,
                },
                ReplicationEvent::KeepAlive { wal_end, .. } => SourceEvent::KeepAlive {
                    wal_end: Lsn(wal_end.as_u64()),
                },
                ReplicationEvent::StoppedAt { .. } => continue,
                #[allow(unreachable_patterns)]
                _ => continue,
            });
        }
    }

    /// Acknowledges `lsn` as durably published: the slot may release WAL before it. Call only
    /// after the Kafka commit that covers it returned Ok.
    pub fn ack(&mut self, lsn: Lsn) {
        self.acked = self.acked.max(lsn);
        self.client
            .update_applied_lsn(WireLsn::from_u64(lsn.as_u64()));
    }

    /// Stops the stream once the last acknowledgement reached the server (the worker sends it
    /// within one status interval; it does not flush on stop), so a clean stop leaves the slot
    /// at the checkpoint instead of holding WAL until the next start.
    pub async fn close(mut self) {
        let metrics = self.client.metrics();
        let wait = (self.status_interval + Duration::from_millis(500)).min(Duration::from_secs(3));
        let deadline = tokio::time::Instant::now() + wait;
        while Lsn(metrics.last_applied_lsn().as_u64()) < self.acked
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::settings;

    #[test]
    fn timeline_history_files_parse() {
        let h = parse_history(
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000060\tbefore 2000-01-01\n",
        );
        assert_eq!(h, vec![(1, Lsn(0x300_0158)), (2, Lsn(0x500_0060))]);
        assert!(parse_history("garbage").is_empty());
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
