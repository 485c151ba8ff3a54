//! The server and the role: the Postgres version, `wal_level`, room for the relay's slot and
//! walsender, and whether the relay's role may replicate (and is not more than it needs).

use super::connection::ident;
use crate::doctor::check::{Check, Server};
use crate::error::Result;
use crate::source::{Control, SlotInfo, SourceSettings};

const PG: Server = Server::Postgres;

/// The `server_version` line; returns the version as text (`15.4`).
pub(super) fn version(control: &Control, out: &mut Vec<Check>) -> String {
    let v = control.version();
    let version = format!("{}.{}", v / 10_000, v % 10_000);
    out.push(if (140_000..190_000).contains(&v) {
        Check::ok(
            PG,
            "server_version",
            format!("Postgres {version} (supported: 14 to 18)"),
        )
    } else {
        Check::warn(
            PG,
            "server_version",
            format!("Postgres {version}: the relay is tested on 14 to 18"),
            "use a Postgres version from 14 to 18",
        )
    });
    version
}

/// The `wal_level` line.
pub(super) async fn wal_level(control: &Control, out: &mut Vec<Check>) -> Result<()> {
    let wal_level = control.show("wal_level").await?;
    out.push(if wal_level == "logical" {
        Check::ok(PG, "wal_level", "logical")
    } else {
        Check::fail(
            PG,
            "wal_level",
            format!("{wal_level:?}: logical replication needs \"logical\""),
            "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart Postgres",
        )
    });
    Ok(())
}

/// The `max_replication_slots` and `max_wal_senders` lines: room for the relay's slot and
/// walsender, unless `slot` exists (and is held) already.
pub(super) async fn capacity(
    control: &Control,
    slot: Option<&SlotInfo>,
    out: &mut Vec<Check>,
) -> Result<()> {
    let db = control.client();
    let count = |sql: &'static str| async move {
        db.query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| control.err(sql, e))
    };

    // Free replication slots.
    let max_slots: i64 = control
        .show("max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots = count("SELECT count(*) FROM pg_replication_slots").await?;
    out.push(if slot.is_some() && used_slots >= max_slots {
        Check::warn(
            PG,
            "max_replication_slots",
            format!("all {max_slots} slots are used, the relay's among them: no room for the temporary copy a catch-up reads a backlog from, so backlogs are streamed (slower; README, \"Catching up a backlog\")"),
            "raise max_replication_slots by one (restart), or drop an unused slot (SELECT pg_drop_replication_slot(name))",
        )
    } else if slot.is_some() && used_slots + 1 == max_slots {
        Check::ok(
            PG,
            "max_replication_slots",
            format!("{used_slots} of {max_slots} used, the relay's slot among them: room for the temporary copy a catch-up reads from, not for a second one to read ahead with (one more slot makes a catch-up faster)"),
        )
    } else if slot.is_some() {
        Check::ok(
            PG,
            "max_replication_slots",
            format!("{used_slots} of {max_slots} used, the relay's slot among them"),
        )
    } else if used_slots < max_slots {
        Check::ok(
            PG,
            "max_replication_slots",
            format!(
                "{used_slots} of {max_slots} used: room for the relay's slot"
            ),
        )
    } else {
        Check::fail(
            PG,
            "max_replication_slots",
            format!("all {max_slots} slots are used: the relay cannot create its slot"),
            "drop unused slots (SELECT pg_drop_replication_slot(name)) or raise max_replication_slots (restart)",
        )
    });

    // Free walsenders.
    let max_senders: i64 = control.show("max_wal_senders").await?.parse().unwrap_or(0);
    let used_senders = count("SELECT count(*) FROM pg_stat_replication").await?;
    let held = slot.as_ref().is_some_and(|s| s.active);
    out.push(if held {
        Check::ok(
            PG,
            "max_wal_senders",
            format!("{used_senders} of {max_senders} used, the relay's walsender among them"),
        )
    } else if used_senders < max_senders {
        Check::ok(
            PG,
            "max_wal_senders",
            format!("{used_senders} of {max_senders} used: room for the relay's walsender"),
        )
    } else {
        Check::fail(
            PG,
            "max_wal_senders",
            format!("all {max_senders} walsenders are busy: the relay cannot stream"),
            "raise max_wal_senders (restart), or stop an unused replication client",
        )
    });
    Ok(())
}

/// The `role` line: LOGIN REPLICATION, and no superuser.
pub(super) async fn role(
    control: &Control,
    s: &SourceSettings,
    out: &mut Vec<Check>,
) -> Result<()> {
    let db = control.client();
    let role = db
        .query_opt(
            "SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| control.err("reading pg_roles", e))?;
    let (login, replication, superuser) =
        role.map_or((true, false, false), |r| (r.get(0), r.get(1), r.get(2)));
    out.push(if !(replication || superuser) || !login {
        Check::fail(
            PG,
            "role",
            format!(
                "role {:?} lacks {}: logical replication needs LOGIN REPLICATION",
                s.user,
                [(!login).then_some("LOGIN"), (!replication).then_some("REPLICATION")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            format!(
                "ALTER ROLE {} LOGIN REPLICATION (as a superuser; sql/003_relay_role.sql)",
                ident(&s.user)
            ),
        )
    } else if superuser {
        Check::warn(
            PG,
            "role",
            format!("role {:?} is a superuser", s.user),
            "use a role with only LOGIN REPLICATION and SELECT on the outbox (sql/003_relay_role.sql)",
        )
    } else {
        Check::ok(
            PG,
            "role",
            format!("role {:?}: LOGIN REPLICATION, not a superuser", s.user),
        )
    });
    Ok(())
}
