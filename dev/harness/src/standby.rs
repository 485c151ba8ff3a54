//! A primary with a streaming physical standby, for failover tests: what users run behind Patroni,
//! CloudNativePG or RDS Multi-AZ, built from the same binaries as the primary (any version 14 to 18).
//!
//! - [`Standby::start`] makes a standby of a running harness [`Postgres`]: a physical slot on the
//!   primary, a file-level base backup taken between `pg_backup_start()`/`pg_backup_stop()`
//!   (`pg_start_backup`/`pg_stop_backup` on 14; `pg_basebackup` is not used because the machine's 15
//!   refuses newer servers), `standby.signal`, `primary_conninfo` with a `dbname` (slot sync needs one),
//!   `primary_slot_name`, `hot_standby_feedback`, and on 17+ `sync_replication_slots` and optionally the
//!   primary's `synchronized_standby_slots`.
//! - The standby's replication link goes through a [`Proxy`] ([`Standby::link`]): cut it, or hold it
//!   (blackhole) to make the standby lag behind the primary.
//! - [`HaPair`] adds "a name that moves": a front proxy whose target follows the promotion, plus both
//!   servers' own addresses for libpq-style host lists; and the failover itself (kill -9, promote).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use outbox_relay::Lsn;
use tokio_postgres::Client;

use crate::postgres::{Postgres, TestDb};
use crate::process;
use crate::proxy::Proxy;
use crate::util::{random_suffix, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// How [`Standby::start`] sets the pair up.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// On 17+: the primary's `synchronized_standby_slots` names the standby's physical slot, so no
    /// logical walsender sends a change the standby has not received. Ignored before 17.
    pub synchronized_standby_slots: bool,
    /// On 17+: `sync_replication_slots = on` on the standby (failover slots are copied to it).
    /// Ignored before 17.
    pub sync_replication_slots: bool,
}

impl Default for StandbyOptions {
    fn default() -> Self {
        StandbyOptions {
            synchronized_standby_slots: false,
            sync_replication_slots: true,
        }
    }
}

/// A streaming physical standby of a harness primary. Its server is a [`Postgres`] of its own (port,
/// data dir, log); after [`Standby::promote`] it is an ordinary primary.
#[derive(Debug)]
pub struct Standby {
    server: Postgres,
    link: Proxy,
    slot: String,
    application_name: String,
}

impl Standby {
    /// Makes and starts a standby of `primary`, and waits until it streams.
    pub async fn start(primary: &Postgres, opts: &StandbyOptions) -> Result<Standby> {
        let t = Instant::now();
        let suffix = random_suffix();
        let slot = format!("standby_{suffix}");
        let application_name = format!("standby_{suffix}");
        let admin = primary.admin("postgres").await?;
        admin
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await
            .with_context(|| format!("create the physical slot {slot} on the primary"))?;
        let link = Proxy::start(SocketAddr::from(([127, 0, 0, 1], primary.port())))?;

        let dir = process::new_process_dir("pg-standby")?;
        let data_dir = dir.join("data");
        base_backup(primary, &admin, &data_dir).await?;

        // Settings in postgresql.auto.conf: read last, so they override whatever the copy carries there
        // (ALTER SYSTEM on the primary, e.g. its synchronized_standby_slots).
        let major = primary.major();
        let conninfo = format!(
            "host=127.0.0.1 port={} user={} password={} dbname=postgres application_name={application_name}",
            link.port(),
            primary.superuser(),
            primary.superuser_password()
        );
        let mut settings = vec![
            ("primary_conninfo", quote(&conninfo)),
            ("primary_slot_name", quote(&slot)),
            ("hot_standby", "on".to_string()),
            ("hot_standby_feedback", "on".to_string()),
            // Reconnect soon after the link is cut or the primary is gone.
            ("wal_retrieve_retry_interval", quote("1s")),
        ];
        if major >= 17 {
            settings.push(("synchronized_standby_slots", quote("")));
            let sync = if opts.sync_replication_slots {
                "on"
            } else {
                "off"
            };
            settings.push(("sync_replication_slots", sync.to_string()));
        }
        rewrite_auto_conf(&data_dir, &settings)?;
        std::fs::write(data_dir.join("standby.signal"), "")?;

        let server = Postgres::node(
            dir,
            data_dir,
            primary.bin_dir().to_path_buf(),
            major,
            primary.superuser_password().to_string(),
            primary.run_as(),
        )?;
        server.start().await.context("start the standby")?;
        let standby = Standby {
            server,
            link,
            slot,
            application_name,
        };
        standby.wait_streaming(DEADLINE).await?;
        if opts.synchronized_standby_slots && major >= 17 {
            set_synchronized_standby_slots(primary, &standby.slot).await?;
        }
        eprintln!(
            "[harness] Postgres {major} standby of 127.0.0.1:{} streaming on 127.0.0.1:{} in {:.1?}",
            primary.port(),
            standby.server.port(),
            t.elapsed()
        );
        Ok(standby)
    }

    /// The standby's server (its port, `admin`, `kill9`...).
    pub fn postgres(&self) -> &Postgres {
        &self.server
    }

    /// The proxy the standby's replication connection goes through: `cut_all` drops the link (the
    /// standby reconnects within about a second), `set_blackhole(true)` holds it open with nothing moving
    /// (the standby falls behind), `set_refuse(true)` keeps it from reconnecting.
    pub fn link(&self) -> &Proxy {
        &self.link
    }

    /// The physical slot on the primary the standby streams from.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// The `application_name` the standby's walreceiver uses (`pg_stat_replication` on the primary).
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// Waits until the walreceiver streams from the primary.
    pub async fn wait_streaming(&self, deadline: Duration) -> Result<()> {
        let admin = self.server.admin("postgres").await?;
        wait_until(
            deadline,
            "the standby to stream from the primary",
            || async {
                let row = admin
                    .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                    .await?;
                Ok(row
                    .filter(|r| r.get::<_, Option<&str>>(0) == Some("streaming"))
                    .map(|_| ()))
            },
        )
        .await
    }

    /// The last WAL position the standby replayed (`pg_last_wal_replay_lsn()`).
    pub async fn replay_lsn(&self) -> Result<Option<Lsn>> {
        let admin = self.server.admin("postgres").await?;
        let row = admin
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await?;
        Ok(row.get::<_, Option<&str>>(0).map(str::parse).transpose()?)
    }

    /// Waits until the standby replayed the WAL up to `lsn` (e.g. the primary's `pg_current_wal_lsn()`).
    pub async fn wait_replayed(&self, lsn: Lsn, deadline: Duration) -> Result<()> {
        wait_until(
            deadline,
            &format!("the standby to replay {lsn}"),
            || async { Ok(self.replay_lsn().await?.filter(|r| *r >= lsn).map(|_| ())) },
        )
        .await
    }

    /// Waits until the logical slot `slot` is synchronized to this standby (17+: `synced`, `failover`
    /// and no longer `temporary`, i.e. usable after a promotion), calling `nudge` before each look.
    ///
    /// A slot just made on the primary is not synchronized while it needs older WAL or catalog rows
    /// than the standby has ("could lead to data loss" in the standby's log): its consumer must confirm
    /// a newer position first. `nudge` can do that for a test (write, `pg_log_standby_snapshot()`,
    /// `pg_replication_slot_advance`); with a running relay it can do nothing.
    pub async fn wait_slot_synced<F, Fut>(
        &self,
        deadline: Duration,
        slot: &str,
        mut nudge: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if self.server.major() < 17 {
            bail!(
                "slot synchronization needs Postgres 17 or newer (this is {})",
                self.server.major()
            );
        }
        let admin = self.server.admin("postgres").await?;
        let what = format!("slot {slot} synchronized to the standby");
        wait_until(deadline, &what, || {
            let nudged = nudge();
            let admin = &admin;
            async move {
                nudged.await?;
                let row = admin
                    .query_opt(
                        "SELECT synced AND failover AND NOT temporary FROM pg_replication_slots \
                         WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await?;
                Ok(row.filter(|r| r.get::<_, bool>(0)).map(|_| ()))
            }
        })
        .await
        .with_context(|| {
            format!(
                "standby log tail:\n{}",
                crate::postgres::tail(self.server.log_path(), 20)
            )
        })
    }

    /// Promotes the standby (`pg_promote()`) and waits until it accepts writes; returns how long that
    /// took. Its timeline is then the old one + 1.
    pub async fn promote(&self) -> Result<Duration> {
        let t = Instant::now();
        let admin = self.server.admin("postgres").await?;
        let promoted: bool = admin
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .context("pg_promote()")?
            .get(0);
        if !promoted {
            bail!(
                "pg_promote() returned false; log tail:\n{}",
                crate::postgres::tail(self.server.log_path(), 30)
            );
        }
        wait_writable(&self.server, DEADLINE).await?;
        Ok(t.elapsed())
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        // The link first, so the walreceiver does not hang on a proxy that is going away.
        self.link.cut_all();
    }
}

/// Copies the primary's data dir into `data_dir` between `pg_backup_start()` and `pg_backup_stop()`, and
/// writes the `backup_label` (and `tablespace_map`) the stop returns. WAL is not copied: the standby
/// streams it from its slot, which was reserved before the backup began.
async fn base_backup(primary: &Postgres, admin: &Client, data_dir: &Path) -> Result<()> {
    let label = format!("outbox-relay harness standby {}", random_suffix());
    // One session holds the backup open (a non-exclusive backup ends with its session).
    let (start, stop) = if primary.major() >= 15 {
        (
            "SELECT pg_backup_start($1, true)::text",
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
        )
    } else {
        (
            "SELECT pg_start_backup($1, true, false)::text",
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)",
        )
    };
    admin
        .query_one(start, &[&label])
        .await
        .context("start the base backup")?;
    let src = primary.data_dir().to_path_buf();
    let dst = data_dir.to_path_buf();
    let copied = tokio::task::spawn_blocking(move || copy_data_dir(&src, &dst))
        .await
        .context("copy task panicked")?;
    let row = admin
        .query_one(stop, &[])
        .await
        .context("stop the base backup")?;
    copied.context("copy the primary's data dir")?;
    let labelfile: String = row.get(1);
    let spcmapfile: Option<String> = row.get(2);
    std::fs::write(data_dir.join("backup_label"), labelfile)?;
    if let Some(map) = spcmapfile.filter(|m| !m.is_empty()) {
        std::fs::write(data_dir.join("tablespace_map"), map)?;
    }
    Ok(())
}

/// What a base backup leaves out (as `pg_basebackup` does): the contents of these directories...
const SKIP_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
/// ...and these files of the data dir's top level.
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "standby.signal",
    "recovery.signal",
    "current_logfiles",
];

/// Copies a running cluster's data dir, leaving out what a base backup leaves out. Files that vanish
/// meanwhile (a dropped relation, a finished temp file) are skipped; pages written meanwhile are fixed by
/// the WAL replay (a backup forces full-page writes).
fn copy_data_dir(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o700))?;
    copy_dir(src, dst, true)
}

fn copy_dir(src: &Path, dst: &Path, top: bool) -> Result<()> {
    let entries = match std::fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", src.display())),
    };
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let name = e.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with("pgsql_tmp") || name_str == "pg_internal.init" {
            continue;
        }
        if top && SKIP_FILES.contains(&name_str.as_ref()) {
            continue;
        }
        let from = e.path();
        let to = dst.join(&name);
        let ft = match e.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if ft.is_dir() {
            std::fs::create_dir_all(&to)?;
            copy_permissions(&from, &to)?;
            if top && SKIP_CONTENTS.contains(&name_str.as_ref()) {
                // Keep the layout (pg_wal/archive_status, pg_wal/summaries on 17+), not the files.
                if name_str == "pg_wal" {
                    for sub in std::fs::read_dir(&from)?.flatten() {
                        if sub.file_type().is_ok_and(|t| t.is_dir()) {
                            std::fs::create_dir_all(to.join(sub.file_name()))?;
                        }
                    }
                }
                continue;
            }
            copy_dir(&from, &to, false)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from)?;
            std::os::unix::fs::symlink(&target, &to)
                .with_context(|| format!("symlink {}", to.display()))?;
        } else {
            match std::fs::copy(&from, &to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("copy {}", from.display())),
            }
        }
    }
    Ok(())
}

fn copy_permissions(from: &Path, to: &Path) -> Result<()> {
    let perms = std::fs::metadata(from)?.permissions();
    std::fs::set_permissions(to, perms)?;
    Ok(())
}

/// Rewrites `postgresql.auto.conf`: the copied lines except those for `settings`' keys, then `settings`.
fn rewrite_auto_conf(data_dir: &Path, settings: &[(&str, String)]) -> Result<()> {
    let path = data_dir.join("postgresql.auto.conf");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !settings.iter().any(|(k, _)| *k == key)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str("# outbox-relay harness: a streaming standby\n");
    for (k, v) in settings {
        text.push_str(&format!("{k} = {v}\n"));
    }
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

/// A postgresql.conf string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `ALTER SYSTEM SET synchronized_standby_slots` (17+) on `primary`, reloaded, and waits until a new
/// session sees it.
pub async fn set_synchronized_standby_slots(primary: &Postgres, slots: &str) -> Result<()> {
    if primary.major() < 17 {
        bail!(
            "synchronized_standby_slots needs Postgres 17 or newer (this is {})",
            primary.major()
        );
    }
    let admin = primary.admin("postgres").await?;
    // Two statements: ALTER SYSTEM refuses the implicit transaction of a multi-statement query.
    admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET synchronized_standby_slots = {}",
            quote(slots)
        ))
        .await
        .context("set synchronized_standby_slots")?;
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .context("pg_reload_conf()")?;
    wait_until(
        Duration::from_secs(10),
        "synchronized_standby_slots to be reloaded",
        || async {
            let c = primary.admin("postgres").await?;
            let v: String = c
                .query_one("SHOW synchronized_standby_slots", &[])
                .await?
                .get(0);
            Ok((v == slots).then_some(()))
        },
    )
    .await
}

/// Waits until `pg` is out of recovery and commits a transaction with an xid.
pub async fn wait_writable(pg: &Postgres, deadline: Duration) -> Result<()> {
    wait_until(deadline, "the server to accept writes", || async {
        let c = pg.admin("postgres").await?;
        let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
        if in_recovery {
            return Ok(None);
        }
        // An xid is only assigned by a server that accepts writes.
        c.query_one("SELECT txid_current()", &[]).await?;
        Ok(Some(()))
    })
    .await
}

/// The timeline of the server's last checkpoint (`pg_control_checkpoint()`), which a promotion moves
/// to a new one once its end-of-recovery checkpoint is written.
pub async fn checkpoint_timeline(client: &Client) -> Result<u32> {
    let row = client
        .query_one(
            "SELECT timeline_id::bigint FROM pg_control_checkpoint()",
            &[],
        )
        .await?;
    u32::try_from(row.get::<_, i64>(0)).map_err(|e| anyhow!("timeline_id: {e}"))
}

/// The timeline the server writes WAL on now: the first 8 hex digits of the current WAL file's name
/// (a primary), or the timeline it replays (a standby: `pg_control_checkpoint()`'s until it streams).
pub async fn current_timeline(client: &Client) -> Result<u32> {
    let row = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() \
                 THEN (SELECT COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
                                       (SELECT timeline_id FROM pg_control_checkpoint())))::text \
                 ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
            &[],
        )
        .await?;
    let text: String = row.get(0);
    if text.len() == 8 {
        u32::from_str_radix(&text, 16).map_err(|e| anyhow!("timeline {text:?}: {e}"))
    } else {
        text.parse().map_err(|e| anyhow!("timeline {text:?}: {e}"))
    }
}

/// One line of a timeline history file: timeline `parent` ended (the server forked to the next
/// one) at `switchpoint`; WAL of the child timeline from there on differs from the parent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineFork {
    pub parent: u32,
    pub switchpoint: Lsn,
}

/// The history of timeline `tli` on `server` (`pg_wal/<tli>.history`, read as superuser with
/// `pg_read_file`): every fork that led to it, oldest first. Timeline 1 has none.
///
/// A relay reads the same file with the replication command `TIMELINE_HISTORY <tli>` (a REPLICATION
/// role is enough, on a `replication=database` connection too); this is the tests' independent view.
pub async fn timeline_history(client: &Client, tli: u32) -> Result<Vec<TimelineFork>> {
    if tli <= 1 {
        return Ok(Vec::new());
    }
    let file = format!("pg_wal/{tli:08X}.history");
    let text: String = client
        .query_one("SELECT pg_read_file($1)", &[&file])
        .await
        .with_context(|| format!("read {file}"))?
        .get(0);
    parse_timeline_history(&text).with_context(|| format!("parse {file}"))
}

/// Parses a history file: `<parent tli>\t<switchpoint>\t<reason>` lines, `#` comments.
pub fn parse_timeline_history(text: &str) -> Result<Vec<TimelineFork>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            let parent = f
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| anyhow!("no timeline in {l:?}"))?;
            let switchpoint = f
                .next()
                .ok_or_else(|| anyhow!("no switchpoint in {l:?}"))?
                .parse()
                .map_err(|e| anyhow!("switchpoint in {l:?}: {e}"))?;
            Ok(TimelineFork {
                parent,
                switchpoint,
            })
        })
        .collect()
}

/// A primary, its streaming standby, and a front proxy whose target is whichever is primary ("a name
/// that moves": a relay given the front's address follows a promotion). Both servers are private to
/// the test (never the shared cluster: a failover kills the primary).
#[derive(Debug)]
pub struct HaPair {
    pub primary: Postgres,
    pub standby: Standby,
    front: Proxy,
}

impl HaPair {
    /// Starts a new private primary and a standby of it; the front points at the primary.
    pub async fn start(opts: &StandbyOptions) -> Result<HaPair> {
        let primary = tokio::task::spawn_blocking(Postgres::start_new)
            .await
            .context("primary start task panicked")??;
        let standby = Standby::start(&primary, opts).await?;
        let front = Proxy::start(SocketAddr::from(([127, 0, 0, 1], primary.port())))?;
        Ok(HaPair {
            primary,
            standby,
            front,
        })
    }

    /// The front proxy (the name that moves): `retarget`, `cut_all`, `set_blackhole`...
    pub fn front(&self) -> &Proxy {
        &self.front
    }

    /// The front's address (the one a relay with a single host is given).
    pub fn front_addr(&self) -> SocketAddr {
        self.front.addr()
    }

    /// Both servers' own addresses, the primary first: a libpq-style host list.
    pub fn hosts(&self) -> [SocketAddr; 2] {
        [
            SocketAddr::from(([127, 0, 0, 1], self.primary.port())),
            SocketAddr::from(([127, 0, 0, 1], self.standby.postgres().port())),
        ]
    }

    /// `db` (made on the primary) reached through the front.
    pub fn via_front(&self, db: &TestDb) -> TestDb {
        let mut db = db.clone();
        db.port = self.front.port();
        db
    }

    /// Points the front at the standby and ends every connection through it (sessions with the old
    /// primary end in a failover, as they do when a virtual IP moves).
    pub fn move_front_to_standby(&self) {
        self.front.retarget(SocketAddr::from((
            [127, 0, 0, 1],
            self.standby.postgres().port(),
        )));
        self.front.cut_all();
    }

    /// The unplanned failover: kill -9 the primary (postmaster and backends), promote the standby, move
    /// the front to it. Returns the time from the kill until the new primary accepted writes.
    pub async fn fail_over(&self) -> Result<Duration> {
        let t = Instant::now();
        self.primary.kill9().await?;
        self.standby.promote().await?;
        self.move_front_to_standby();
        Ok(t.elapsed())
    }

    /// The planned switchover: stop the primary cleanly (its shutdown checkpoint is the last WAL it
    /// sends), wait until the standby replayed it, promote, move the front. Nothing committed is lost.
    pub async fn switch_over(&self) -> Result<Duration> {
        let t = Instant::now();
        let admin = self.primary.admin("postgres").await?;
        let end = crate::postgres::current_wal_lsn(&admin).await?;
        drop(admin);
        self.primary.stop_graceful().await?;
        self.standby.wait_replayed(end, DEADLINE).await?;
        self.standby.promote().await?;
        self.move_front_to_standby();
        Ok(t.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_parse() {
        let text =
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-11-30\n";
        let h = parse_timeline_history(text).expect("parse");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].parent, 1);
        assert_eq!(h[0].switchpoint, "0/3000158".parse::<Lsn>().expect("lsn"));
        assert!(parse_timeline_history("x\t0/1\n").is_err());
    }
}
