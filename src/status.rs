//! `outbox-relay status --config <file> [--json]`: where the relay stands, from the servers
//! themselves, for an operator (or a script) that cannot or does not want to scrape `/metrics`.
//!
//! ```text
//!  SQL connection ── pg_replication_slots, pg_current_wal_lsn(), pg_control_system(), pg_stat_activity
//!  Kafka         ── read_committed read of the checkpoint topic, key <system id>/<dbname>/<slot>
//!                       └──> slot state, checkpoint, lag = server WAL - checkpoint, who holds the slot
//! ```
//!
//! Read-only: it creates neither the slot nor topics, joins no consumer group (it assigns the
//! partition and commits nothing), and never prints secrets (only names, addresses, positions).
//!
//! Its exit code is a health verdict scripts and monitors can use (Nagios' convention):
//! 0 a relay holds a healthy slot; 1 (warning) no relay holds it, or it is held by another client,
//! or its WAL is `unreserved` (past `max_slot_wal_keep_size`: about to be invalidated); 2
//! (critical) the slot is missing or invalidated. 78 and 69 as for `run`: it could not ask.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::error::{Kind, Result};
use crate::sink::checkpoint::{self, CheckpointKey};
use crate::sink::SinkSettings;
use crate::source::{Control, SourceSettings};

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `host:port` of Postgres.
    pub postgres: String,
    /// Database of the outbox.
    pub database: String,
    /// Postgres system identifier.
    pub system_identifier: String,
    /// The server's current WAL position.
    pub server_wal_lsn: String,
    /// The replication slot.
    pub slot: SlotReport,
    /// The checkpoint in Kafka.
    pub checkpoint: CheckpointReport,
    /// Server WAL position minus the checkpoint's `resume_lsn` (bytes); null without a checkpoint.
    pub lag_bytes: Option<u64>,
    /// Whether a session streams from the slot (a relay, or something else: see `slot.holder_application`).
    pub slot_held: bool,
    /// Whether that session says it is an outbox-relay (its application_name), when visible.
    pub held_by_relay: Option<bool>,
    /// `server_version_num`.
    pub server_version: u32,
    /// Failover readiness as far as the primary can see it (Postgres 17+).
    pub failover: crate::source::Failover,
    /// `ok`, `warning` or `critical`, and why.
    pub health: Health,
}

/// The verdict behind the exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `ok`, `warning` or `critical`.
    pub state: &'static str,
    /// Why, one line each (empty when ok).
    pub reasons: Vec<String>,
}

impl Health {
    /// The exit code: 0 ok, 1 warning, 2 critical.
    pub fn exit_code(&self) -> u8 {
        match self.state {
            "ok" => 0,
            "warning" => 1,
            _ => 2,
        }
    }
}

/// Judges a report.
fn health(r: &Report) -> Health {
    let s = &r.slot;
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    if !s.exists {
        if r.checkpoint.found {
            critical.push(format!(
                "slot {} is missing but a checkpoint exists: the slot was lost (README runbook \"Lost slot\")",
                s.name
            ));
        } else {
            critical.push(format!(
                "slot {} does not exist (a relay creates it at its first start)",
                s.name
            ));
        }
    } else if s.invalidated {
        critical.push(format!(
            "slot {} is invalidated (wal_status lost): events may be lost (README runbook \"Recovering from an invalidated slot\")",
            s.name
        ));
    } else {
        if s.wal_status.as_deref() == Some("unreserved") {
            warning.push(format!(
                "slot {} is unreserved: its WAL is past max_slot_wal_keep_size and will be removed at the next checkpoint unless a relay catches up",
                s.name
            ));
        }
        match (r.slot_held, r.held_by_relay) {
            (false, _) => warning.push(format!("no relay holds slot {}", s.name)),
            (true, Some(false)) => warning.push(format!(
                "slot {} is held by another client ({}), not an outbox-relay",
                s.name,
                s.holder_application.as_deref().unwrap_or("?")
            )),
            _ => {}
        }
    }
    let (state, reasons) = if !critical.is_empty() {
        critical.extend(warning);
        ("critical", critical)
    } else if !warning.is_empty() {
        ("warning", warning)
    } else {
        ("ok", Vec::new())
    };
    Health { state, reasons }
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Serialize)]
pub struct SlotReport {
    /// Slot name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// Whether a session streams from it.
    pub active: bool,
    /// That session's backend pid.
    pub active_pid: Option<i32>,
    /// That session's application_name (outbox-relay for a relay), when visible to this role.
    pub holder_application: Option<String>,
    /// That session's client address, when visible.
    pub holder_client_addr: Option<String>,
    /// Acknowledged position.
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL it retains.
    pub restart_lsn: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`.
    pub retained_wal_bytes: Option<u64>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// `wal_status = lost`: WAL it needed is gone (see the README's recovery steps).
    pub invalidated: bool,
    /// Bytes of WAL that may still be written before the slot is in danger (null: unbounded).
    pub safe_wal_size: Option<i64>,
    /// 16+: invalidated by a recovery conflict.
    pub conflicting: Option<bool>,
    /// 17+: a failover slot.
    pub failover: Option<bool>,
    /// 17+: synchronized from a primary.
    pub synced: Option<bool>,
    /// 17+: why it was invalidated.
    pub invalidation_reason: Option<String>,
    /// 17+: when it last stopped being used.
    pub inactive_since: Option<String>,
}

/// The newest committed checkpoint.
#[derive(Debug, Serialize)]
pub struct CheckpointReport {
    /// Checkpoint topic.
    pub topic: String,
    /// Record key: `<system id>/<dbname>/<slot>`.
    pub key: String,
    /// Whether one was found.
    pub found: bool,
    /// End LSN of the last Postgres transaction fully published.
    pub resume_lsn: Option<String>,
    /// A Postgres transaction published in part.
    pub partial: Option<PartialReport>,
    /// Why there is none, when not simply "nothing published yet".
    pub note: Option<String>,
    /// The server timeline it was written on (newer relays record it).
    pub timeline: Option<u32>,
    /// The initial snapshot, while it runs: `pending` (the slot is being created) or the rows
    /// published so far.
    pub snapshot: Option<String>,
}

/// A split transaction's progress.
#[derive(Debug, Serialize)]
pub struct PartialReport {
    /// Commit LSN of the transaction.
    pub final_lsn: String,
    /// Its xid.
    pub xid: u32,
    /// How many of its changes are published.
    pub next_index: u64,
}

/// Runs the subcommand: prints the report, exits 0, or prints the error and exits with its code.
pub async fn run(cfg: &Config, json: bool) -> ExitCode {
    let source = SourceSettings::from_config(cfg);
    let sink = SinkSettings::from_config(cfg);
    match collect(&source, &sink).await {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", text(&report));
            }
            ExitCode::from(report.health.exit_code())
        }
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Gathers the report from both servers. Changes nothing on either.
pub async fn collect(src: &SourceSettings, sink: &SinkSettings) -> Result<Report> {
    let control = Control::connect(src).await?;
    let system_id = control.system_identifier().await?;
    let current = control.current_wal_lsn().await?;
    let slot = control.slot().await?;
    let (holder_app, holder_addr) = match slot.as_ref().and_then(|s| s.active_pid) {
        Some(pid) => control.backend(pid).await?.unwrap_or((None, None)),
        None => (None, None),
    };
    let slot_report = SlotReport {
        name: src.slot.clone(),
        exists: slot.is_some(),
        active: slot.as_ref().is_some_and(|s| s.active),
        active_pid: slot.as_ref().and_then(|s| s.active_pid),
        holder_application: holder_app.clone(),
        holder_client_addr: holder_addr,
        confirmed_flush_lsn: slot
            .as_ref()
            .and_then(|s| s.confirmed_flush_lsn)
            .map(|l| l.to_string()),
        restart_lsn: slot
            .as_ref()
            .and_then(|s| s.restart_lsn)
            .map(|l| l.to_string()),
        retained_wal_bytes: slot
            .as_ref()
            .and_then(|s| s.restart_lsn)
            .map(|r| current.bytes_since(r)),
        wal_status: slot.as_ref().and_then(|s| s.wal_status.clone()),
        invalidated: slot
            .as_ref()
            .is_some_and(|s| s.wal_status.as_deref() == Some("lost")),
        safe_wal_size: slot.as_ref().and_then(|s| s.safe_wal_size),
        conflicting: slot.as_ref().and_then(|s| s.conflicting),
        failover: slot.as_ref().and_then(|s| s.failover),
        synced: slot.as_ref().and_then(|s| s.synced),
        invalidation_reason: slot.as_ref().and_then(|s| s.invalidation_reason.clone()),
        inactive_since: slot.as_ref().and_then(|s| s.inactive_since.clone()),
    };
    let failover = control.failover(slot.as_ref()).await?;

    let key = CheckpointKey::new(&system_id, &src.dbname, &src.slot);
    let sink = sink.clone();
    let topic = sink.checkpoint_topic.clone();
    let read_key = key.clone();
    let read = tokio::task::spawn_blocking(move || {
        checkpoint::read(
            &sink.client,
            &sink.checkpoint_topic,
            &read_key,
            sink.call_timeout.max(Duration::from_secs(10)),
        )
    })
    .await
    .map_err(|e| crate::error::Error::internal("checkpoint reader task").with_source(e))?;
    let (cp, note) = match read {
        Ok(cp) => (cp, None),
        // A missing checkpoint topic is a state worth reporting, not a failure of `status`.
        Err(e) if e.kind() == Kind::Config && e.message().contains("does not exist") => {
            (None, Some(e.message().to_string()))
        }
        Err(e) => return Err(e),
    };
    let checkpoint = CheckpointReport {
        topic,
        key: key.to_string(),
        found: cp.is_some(),
        resume_lsn: cp.as_ref().map(|c| c.resume_lsn.to_string()),
        partial: cp.as_ref().and_then(|c| c.partial).map(|p| PartialReport {
            final_lsn: p.final_lsn.to_string(),
            xid: p.xid,
            next_index: p.next_index,
        }),
        note,
        timeline: cp.as_ref().and_then(|c| c.timeline),
        snapshot: cp
            .as_ref()
            .and_then(|c| c.snapshot.as_ref())
            .map(|s| match s {
                crate::sink::SnapshotState::Pending => {
                    "pending (the slot is being created)".to_string()
                }
                crate::sink::SnapshotState::Running(p) => {
                    format!("running: {} rows of the table published", p.rows)
                }
            }),
    };
    let slot_held = slot_report.active;
    let mut report = Report {
        postgres: src.address(),
        database: src.dbname.clone(),
        system_identifier: system_id,
        server_wal_lsn: current.to_string(),
        lag_bytes: cp.as_ref().map(|c| current.bytes_since(c.resume_lsn)),
        slot: slot_report,
        checkpoint,
        slot_held,
        held_by_relay: if slot_held {
            holder_app.map(|a| a == "outbox-relay")
        } else {
            Some(false)
        },
        server_version: control.version(),
        failover,
        health: Health {
            state: "ok",
            reasons: Vec::new(),
        },
    };
    report.health = health(&report);
    Ok(report)
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human-readable form.
pub fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let s = &r.slot;
    let _ = writeln!(
        o,
        "postgres {} database {:?} (system identifier {})",
        r.postgres, r.database, r.system_identifier
    );
    let _ = writeln!(o, "  server WAL position:   {}", r.server_wal_lsn);
    let _ = writeln!(o, "slot {}", s.name);
    if !s.exists {
        let _ = writeln!(o, "  exists:                no");
    } else {
        let _ = writeln!(o, "  exists:                yes");
        let holder = match (s.active, s.active_pid) {
            (true, Some(pid)) => format!(
                "yes (pid {pid}, application {}, client {})",
                opt(&s.holder_application),
                opt(&s.holder_client_addr)
            ),
            (true, None) => "yes".to_string(),
            (false, _) => "no (no session streams from it)".to_string(),
        };
        let _ = writeln!(o, "  active:                {holder}");
        let _ = writeln!(
            o,
            "  confirmed_flush_lsn:   {}",
            opt(&s.confirmed_flush_lsn)
        );
        let _ = writeln!(o, "  restart_lsn:           {}", opt(&s.restart_lsn));
        let _ = writeln!(
            o,
            "  safe_wal_size:         {}",
            s.safe_wal_size.map_or_else(
                || "unbounded (max_slot_wal_keep_size = -1)".to_string(),
                |b| format!("{b} bytes")
            )
        );
        if let Some(failover) = s.failover {
            let _ = writeln!(
                o,
                "  failover:              {failover}{}",
                if s.synced == Some(true) {
                    " (synced)"
                } else {
                    ""
                }
            );
        }
        if let Some(reason) = &s.invalidation_reason {
            let _ = writeln!(o, "  invalidation_reason:   {reason}");
        }
        if s.conflicting == Some(true) {
            let _ = writeln!(o, "  conflicting:           true");
        }
        let _ = writeln!(
            o,
            "  retained WAL:          {}",
            s.retained_wal_bytes
                .map_or("-".to_string(), |b| format!("{b} bytes"))
        );
        let _ = writeln!(
            o,
            "  wal_status:            {}{}",
            opt(&s.wal_status),
            if s.invalidated {
                " (INVALIDATED: events may be lost; see the README's recovery steps)"
            } else {
                ""
            }
        );
    }
    let c = &r.checkpoint;
    let _ = writeln!(o, "checkpoint topic {:?} key {:?}", c.topic, c.key);
    if c.found {
        let _ = writeln!(o, "  resume_lsn:            {}", opt(&c.resume_lsn));
        if let Some(snapshot) = &c.snapshot {
            let _ = writeln!(o, "  initial snapshot:      {snapshot}");
        }
        match &c.partial {
            Some(p) => {
                let _ = writeln!(
                    o,
                    "  partial:               xid {} (commit {}), {} changes published",
                    p.xid, p.final_lsn, p.next_index
                );
            }
            None => {
                let _ = writeln!(o, "  partial:               none");
            }
        }
    } else {
        let _ = writeln!(
            o,
            "  none{}",
            c.note
                .as_ref()
                .map_or(" (nothing published yet)".to_string(), |n| format!(
                    " ({n})"
                ))
        );
    }
    let _ = writeln!(
        o,
        "lag:                     {}",
        r.lag_bytes
            .map_or("-".to_string(), |b| format!("{b} bytes"))
    );
    let held = match (r.slot_held, r.held_by_relay) {
        (false, _) => "no".to_string(),
        (true, Some(true)) => "yes (outbox-relay)".to_string(),
        (true, Some(false)) => format!(
            "held by another client ({}), not an outbox-relay",
            opt(&s.holder_application)
        ),
        (true, None) => "held (the holder's application is not visible to this role)".to_string(),
    };
    let _ = writeln!(o, "relay holding the slot:  {held}");
    let f = &r.failover;
    if f.supported {
        if f.ready() {
            let _ = writeln!(
                o,
                "failover:                ready (failover slot, synchronized_standby_slots {} streaming)",
                f.standbys_streaming.join(", ")
            );
        } else {
            let _ = writeln!(o, "failover:                NOT READY");
            for m in &f.missing {
                let _ = writeln!(o, "  - {m}");
            }
        }
    } else {
        let _ = writeln!(
            o,
            "failover:                not supported before Postgres 17 (server {})",
            r.server_version
        );
    }
    let _ = writeln!(
        o,
        "health:                  {}{}",
        r.health.state,
        if r.health.reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", r.health.reasons.join("; "))
        }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            postgres: "db:5432".into(),
            database: "app".into(),
            system_identifier: "7".into(),
            server_wal_lsn: "0/3000000".into(),
            slot: SlotReport {
                name: "outbox_relay".into(),
                exists: true,
                active: true,
                active_pid: Some(42),
                holder_application: Some("outbox-relay".into()),
                holder_client_addr: Some("10.0.0.5".into()),
                confirmed_flush_lsn: Some("0/2000000".into()),
                restart_lsn: Some("0/1000000".into()),
                retained_wal_bytes: Some(33_554_432),
                wal_status: Some("reserved".into()),
                invalidated: false,
                safe_wal_size: Some(1 << 30),
                conflicting: Some(false),
                failover: Some(true),
                synced: Some(false),
                invalidation_reason: None,
                inactive_since: None,
            },
            checkpoint: CheckpointReport {
                topic: "ckpt".into(),
                key: "7/app/outbox_relay".into(),
                found: true,
                resume_lsn: Some("0/2000000".into()),
                partial: Some(PartialReport {
                    final_lsn: "0/2100000".into(),
                    xid: 731,
                    next_index: 10_000,
                }),
                note: None,
                timeline: Some(1),
                snapshot: None,
            },
            lag_bytes: Some(16_777_216),
            slot_held: true,
            held_by_relay: Some(true),
            server_version: 170_010,
            failover: crate::source::slot::judge(170_010, "outbox_relay", Some(true), &[]),
            health: Health {
                state: "ok",
                reasons: vec![],
            },
        }
    }

    #[test]
    fn health_follows_the_slot_state() {
        let mut r = report();
        assert_eq!(health(&r).exit_code(), 0);
        r.slot.wal_status = Some("unreserved".into());
        assert_eq!(health(&r).exit_code(), 1);
        r.slot.wal_status = Some("reserved".into());
        r.slot_held = false;
        let h = health(&r);
        assert_eq!((h.state, h.exit_code()), ("warning", 1));
        assert!(h.reasons[0].contains("no relay holds"), "{h:?}");
        r.slot.invalidated = true;
        assert_eq!(health(&r).exit_code(), 2);
        r.slot.exists = false;
        let h = health(&r);
        assert_eq!(h.exit_code(), 2);
        assert!(h.reasons[0].contains("lost"), "{h:?}");
    }

    #[test]
    fn text_shows_the_holder_the_partial_transaction_and_the_lag() {
        let t = text(&report());
        for want in [
            "yes (pid 42, application outbox-relay, client 10.0.0.5)",
            "xid 731 (commit 0/2100000), 10000 changes published",
            "16777216 bytes",
            "relay holding the slot:  yes (outbox-relay)",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
    }

    #[test]
    fn text_warns_about_an_invalidated_slot_a_foreign_holder_and_no_checkpoint() {
        let mut r = report();
        r.slot.wal_status = Some("lost".into());
        r.slot.invalidated = true;
        r.slot.active_pid = None;
        r.held_by_relay = Some(false);
        r.slot.holder_application = Some("pg_recvlogical".into());
        r.checkpoint.found = false;
        r.checkpoint.note = Some("topic missing".into());
        r.lag_bytes = None;
        let t = text(&r);
        for want in [
            "INVALIDATED",
            "held by another client (pg_recvlogical), not an outbox-relay",
            "none (topic missing)",
            "lag:                     -",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
        r.slot.exists = false;
        r.slot.active = false;
        r.slot_held = false;
        r.held_by_relay = None;
        r.checkpoint.note = None;
        let t = text(&r);
        assert!(t.contains("exists:                no"), "{t}");
        assert!(t.contains("none (nothing published yet)"), "{t}");
        assert!(t.contains("relay holding the slot:  no"), "{t}");
        r.slot_held = true;
        assert!(text(&r).contains("not visible to this role"));
    }
}
