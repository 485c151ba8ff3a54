//! The replication slot as `pg_replication_slots` shows it, on every supported version, and
//! what the primary can see of its failover readiness.
//!
//! Columns appear by version: `wal_status` and `safe_wal_size` (13), `two_phase` (14),
//! `conflicting` (16), `failover`, `synced`, `invalidation_reason`, `inactive_since` (17). The
//! query asks only for what the server has; a column the server lacks reads as `None`.
//!
//! Failover (17+): a logical slot with `failover = true` is copied to physical standbys that run
//! `sync_replication_slots = on`. For exactly-once across a promotion the primary must also name
//! those standbys' physical slots in `synchronized_standby_slots`: then the walsender never sends
//! the relay a change the standbys have not received, and a promoted standby holds every
//! transaction the relay published (docs/ARCHITECTURE.md, "Failover").

use serde::Serialize;

use crate::lsn::Lsn;

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SlotInfo {
    /// Output plugin (must be pgoutput).
    pub plugin: Option<String>,
    /// Database the slot decodes.
    pub database: Option<String>,
    /// Position up to which the consumer confirmed.
    #[serde(serialize_with = "opt_lsn")]
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot retains.
    #[serde(serialize_with = "opt_lsn")]
    pub restart_lsn: Option<Lsn>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is in danger of invalidation
    /// (`max_slot_wal_keep_size`); `None` when unbounded.
    pub safe_wal_size: Option<i64>,
    /// Whether a session streams from it.
    pub active: bool,
    /// That session's backend pid.
    pub active_pid: Option<i32>,
    /// 14+.
    pub two_phase: Option<bool>,
    /// 16+: invalidated by a recovery conflict (on a standby).
    pub conflicting: Option<bool>,
    /// 17+: synchronized to physical standbys.
    pub failover: Option<bool>,
    /// 17+: this copy was synchronized from a primary (true on a standby, and after promotion).
    pub synced: Option<bool>,
    /// 17+: why it was invalidated.
    pub invalidation_reason: Option<String>,
    /// 17+: when it last stopped being used.
    pub inactive_since: Option<String>,
}

fn opt_lsn<S: serde::Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.collect_str(l),
        None => s.serialize_none(),
    }
}

/// The first key of the relay's advisory lock (`"orel"`); the second is `hashtext(slot)`.
pub const LOCK_CLASS: i32 = 0x6f72_656c;

/// The `pg_replication_slots` query for a server of `version` (`server_version_num`).
///
/// `active` and `active_pid` say whether a relay runs on the slot: a walsender streams from it,
/// or another session holds the relay's advisory lock for it (a relay catching up through the SQL
/// interface holds the slot only while a call runs).
pub fn query(version: u32) -> String {
    let mut cols = vec![
        "plugin::text",
        "database::text",
        "confirmed_flush_lsn::text",
        "restart_lsn::text",
        "wal_status",
        "safe_wal_size",
        "(active OR h.pid IS NOT NULL)",
        "coalesce(active_pid, h.pid)",
    ];
    if version >= 140_000 {
        cols.push("two_phase");
    }
    if version >= 160_000 {
        cols.push("conflicting");
    }
    if version >= 170_000 {
        cols.extend([
            "failover",
            "synced",
            "invalidation_reason",
            "inactive_since::text",
        ]);
    }
    format!(
        "SELECT {} FROM pg_replication_slots s LEFT JOIN LATERAL (SELECT l.pid FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = s.datoid \
         AND l.classid = {LOCK_CLASS}::oid AND l.objid = hashtext(s.slot_name::text)::oid \
         AND l.objsubid = 2 AND l.pid <> pg_backend_pid() LIMIT 1) h ON true \
         WHERE slot_name = $1",
        cols.join(", ")
    )
}

/// Reads a row of [`query`] for a server of `version`.
pub fn from_row(r: &tokio_postgres::Row, version: u32) -> SlotInfo {
    let lsn = |i: usize| r.get::<_, Option<String>>(i).and_then(|t| t.parse().ok());
    let mut info = SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        confirmed_flush_lsn: lsn(2),
        restart_lsn: lsn(3),
        wal_status: r.get(4),
        safe_wal_size: r.get(5),
        active: r.get(6),
        active_pid: r.get(7),
        ..SlotInfo::default()
    };
    let mut i = 8;
    if version >= 140_000 {
        info.two_phase = r.get(i);
        i += 1;
    }
    if version >= 160_000 {
        info.conflicting = r.get(i);
        i += 1;
    }
    if version >= 170_000 {
        info.failover = r.get(i);
        info.synced = r.get(i + 1);
        info.invalidation_reason = r.get(i + 2);
        info.inactive_since = r.get(i + 3);
    }
    info
}

/// What the primary can see of failover readiness (Postgres 17+).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Failover {
    /// The server supports failover slots (17+).
    pub supported: bool,
    /// `synchronized_standby_slots`, as set.
    pub synchronized_standby_slots: Vec<String>,
    /// The relay's slot has `failover = true`.
    pub slot_failover: Option<bool>,
    /// Of the named standby slots: the ones that exist, are physical and have a standby streaming.
    pub standbys_streaming: Vec<String>,
    /// What is missing, each with its fix; empty when ready.
    pub missing: Vec<String>,
}

impl Failover {
    /// Ready for a failover with nothing lost or repeated.
    pub fn ready(&self) -> bool {
        self.supported && self.missing.is_empty()
    }
}

/// One named standby slot as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySlot {
    /// Its name.
    pub name: String,
    /// `None` when it does not exist; `Some(physical, active)` else.
    pub state: Option<(bool, bool)>,
}

/// Judges failover readiness from what the primary shows.
pub fn judge(
    version: u32,
    slot: &str,
    slot_failover: Option<bool>,
    standby_slots: &[StandbySlot],
) -> Failover {
    let mut f = Failover {
        supported: version >= 170_000,
        synchronized_standby_slots: standby_slots.iter().map(|s| s.name.clone()).collect(),
        slot_failover,
        ..Failover::default()
    };
    if !f.supported {
        f.missing.push(
            "failover slots need Postgres 17 or later: after a failover on this version the slot is lost (see the README runbook \"Lost slot\")".into(),
        );
        return f;
    }
    match slot_failover {
        Some(true) => {}
        Some(false) => f.missing.push(format!(
            "slot {slot:?} has failover = false: set postgres.failover_slot = true (the relay then enables it at its next start), or run ALTER_REPLICATION_SLOT {slot} (FAILOVER true) on a replication connection"
        )),
        None => f.missing.push(format!(
            "slot {slot:?} does not exist yet: the relay creates it with failover = true (postgres.failover_slot)"
        )),
    }
    if standby_slots.is_empty() {
        f.missing.push(
            "synchronized_standby_slots is empty: a change the standby has not received may be published and then lost in a failover. On the primary set synchronized_standby_slots = '<the standby's physical slot>' (and on the standby: sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name, dbname in primary_conninfo)".into(),
        );
    }
    for s in standby_slots {
        match s.state {
            None => f.missing.push(format!(
                "synchronized_standby_slots names {:?}, which does not exist: create the standby's physical slot (pg_create_physical_replication_slot) and set primary_slot_name on the standby",
                s.name
            )),
            Some((false, _)) => f.missing.push(format!(
                "synchronized_standby_slots names {:?}, which is not a physical slot",
                s.name
            )),
            Some((true, false)) => f.missing.push(format!(
                "no standby streams from physical slot {:?} (is the standby down, or is its primary_slot_name different?); while it is inactive the relay receives nothing new",
                s.name
            )),
            Some((true, true)) => f.standbys_streaming.push(s.name.clone()),
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_asks_only_for_columns_the_version_has() {
        assert!(!query(130_000).contains("two_phase"));
        assert!(query(140_000).contains("two_phase") && !query(140_000).contains("conflicting"));
        assert!(query(160_000).contains("conflicting") && !query(160_000).contains("failover"));
        for col in [
            "failover",
            "synced",
            "invalidation_reason",
            "inactive_since",
        ] {
            assert!(query(170_000).contains(col), "{col}");
        }
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let standby = |name: &str, state| StandbySlot {
            name: name.into(),
            state,
        };
        let ready = judge(
            170_000,
            "s",
            Some(true),
            &[standby("sb", Some((true, true)))],
        );
        assert!(ready.ready(), "{ready:?}");
        assert_eq!(ready.standbys_streaming, ["sb"]);
        let old = judge(160_000, "s", None, &[]);
        assert!(!old.ready() && old.missing[0].contains("17"));
        let f = judge(
            180_000,
            "s",
            Some(false),
            &[standby("gone", None), standby("idle", Some((true, false)))],
        );
        assert_eq!(f.missing.len(), 3, "{f:?}");
        assert!(f.missing[0].contains("failover = false"));
        assert!(f.missing[1].contains("does not exist"));
        assert!(f.missing[2].contains("no standby streams"));
        let none = judge(170_000, "s", Some(true), &[]);
        assert!(none.missing[0].contains("synchronized_standby_slots is empty"));
    }
}
