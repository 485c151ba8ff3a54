//! The replication slot and what keeps it safe: how much WAL a stopped relay may hold back
//! (`max_slot_wal_keep_size`), the slot itself (missing and to be created, ours and usable,
//! invalidated, or held by someone else), and whether it survives a failover (Postgres 17+).

use crate::doctor::check::{Check, Server};
use crate::error::{Kind, Result};
use crate::source::{Control, SlotInfo, SourceSettings};

const PG: Server = Server::Postgres;

/// The `max_slot_wal_keep_size` line.
pub(super) async fn retention(control: &Control) -> Result<Check> {
    let keep = control.show("max_slot_wal_keep_size").await?;
    Ok(if keep.trim() == "-1" {
        Check::warn(
            PG,
            "max_slot_wal_keep_size",
            "-1 (unbounded): while the relay is down its slot keeps WAL until the disk is full",
            "set a bound the disk can hold while the relay is down (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf()); past it Postgres invalidates the slot instead of filling the disk (README runbook \"Recovering from an invalidated slot\")",
        )
    } else {
        Check::ok(
            PG,
            "max_slot_wal_keep_size",
            format!("{keep}: a relay may be down for that much WAL before its slot is invalidated"),
        )
    })
}

/// The slot: missing (created at the first start?), or ours, usable, and who holds it.
pub(super) async fn check(
    control: &Control,
    s: &SourceSettings,
    slot: Option<&SlotInfo>,
) -> crate::error::Result<Check> {
    let Some(info) = slot else {
        return Ok(if s.create_slot {
            Check::ok(
                PG,
                "slot",
                format!(
                    "{:?} does not exist yet: the relay creates it at its first start (postgres.create_slot)",
                    s.slot
                ),
            )
        } else {
            Check::fail(
                PG,
                "slot",
                format!(
                    "{:?} does not exist and postgres.create_slot = false",
                    s.slot
                ),
                format!(
                    "SELECT pg_create_logical_replication_slot('{}', 'pgoutput'), or set postgres.create_slot = true",
                    s.slot
                ),
            )
        });
    };
    if let Err(e) = control.check_slot(info) {
        return Ok(Check::fail(
            PG,
            "slot",
            e.message().to_string(),
            if e.kind() == Kind::Invariant {
                "follow the README runbook \"Recovering from an invalidated slot\"".to_string()
            } else {
                "set postgres.slot to a pgoutput slot of this database, or a new name (the relay creates it)".to_string()
            },
        ));
    }
    if info.conflicting == Some(true) || info.invalidation_reason.is_some() {
        return Ok(Check::fail(
            PG,
            "slot",
            format!(
                "{:?} is invalidated ({})",
                s.slot,
                info.invalidation_reason.as_deref().unwrap_or("conflicting")
            ),
            "follow the README runbook \"Recovering from an invalidated slot\"",
        ));
    }
    let at = format!(
        "{:?}: pgoutput, confirmed_flush_lsn {}, wal_status {}",
        s.slot,
        info.confirmed_flush_lsn
            .map_or_else(|| "-".into(), |l| l.to_string()),
        info.wal_status.as_deref().unwrap_or("-")
    );
    if info.wal_status.as_deref() == Some("unreserved") {
        return Ok(Check::warn(
            PG,
            "slot",
            format!("{at}: its WAL is past max_slot_wal_keep_size and goes at the next checkpoint unless a relay catches up"),
            "start the relay now (or raise max_slot_wal_keep_size)",
        ));
    }
    let Some(pid) = info.active_pid.filter(|_| info.active) else {
        return Ok(Check::ok(PG, "slot", format!("{at}; not held")));
    };
    let (app, addr) = control.backend(pid).await?.unwrap_or((None, None));
    let client = addr.map_or_else(String::new, |a| format!(", client {a}"));
    Ok(match app.as_deref() {
        Some("outbox-relay") => Check::ok(
            PG,
            "slot",
            format!("{at}; held by an outbox-relay (pid {pid}{client})"),
        ),
        Some(other) => Check::fail(
            PG,
            "slot",
            format!("{at}; held by pid {pid} (application {other:?}{client}), not an outbox-relay: the relay waits until it lets go"),
            format!("stop that client (SELECT pg_terminate_backend({pid}) ends its session), or give the relay its own slot (postgres.slot)"),
        ),
        None => Check::ok(
            PG,
            "slot",
            format!("{at}; held by pid {pid} (its application is not visible to this role)"),
        ),
    })
}

/// The `failover` line (Postgres 17+, with `postgres.failover_slot`); `version` is the server's
/// as text.
pub(super) async fn failover(
    control: &Control,
    s: &SourceSettings,
    slot: Option<&SlotInfo>,
    version: &str,
) -> Result<Check> {
    let v = control.version();
    Ok(if !s.failover_slot {
        Check::skip(PG, "failover", "postgres.failover_slot = false")
    } else if v < 170_000 {
        Check::skip(
            PG,
            "failover",
            format!("failover slots need Postgres 17 or later (server {version}): after a failover the slot is lost (README runbook \"Lost slot\")"),
        )
    } else {
        let f = control.failover(slot).await?;
        if !f.ready()
            && f.synchronized_standby_slots.is_empty()
            && control.physical_standbys().await? == 0
        {
            // A single server: nothing to fail over to, so nothing to warn about yet.
            Check::skip(
                PG,
                "failover",
                "no standby replicates from this server (no physical slot or walsender): nothing to fail over to; with a standby, see README \"Postgres versions and high availability\"",
            )
        } else if f.ready() {
            Check::ok(
                PG,
                "failover",
                format!(
                    "ready: failover slot, synchronized_standby_slots {} streaming",
                    f.standbys_streaming.join(", ")
                ),
            )
        } else {
            Check::warn(
                PG,
                "failover",
                "not ready: a failover may lose the slot or events",
                f.missing.join("; "),
            )
        }
    })
}
