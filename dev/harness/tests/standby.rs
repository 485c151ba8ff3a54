//! Self-test of the harness's primary + streaming standby (dev/harness/src/standby.rs), on whatever
//! version `OUTBOX_RELAY_TEST_PG` selects: the failover tests build on it, so it must prove that the
//! standby really streams, that its link can hold it behind, that kill -9 + promote gives a writable
//! server on a new timeline reached through the same front address, and (17+) that a failover slot is
//! synchronized to the standby before the promotion.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::current_wal_lsn;
use outbox_relay_dev::standby::{checkpoint_timeline, current_timeline, timeline_history};
use outbox_relay_dev::{write_txn, HaPair, NewEvent, StandbyOptions, TestDb};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

async fn has_row(db: &TestDb, id: Uuid) -> Result<bool> {
    let c = db.client().await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM public.outbox WHERE id = $1", &[&id])
        .await?
        .get(0);
    Ok(n == 1)
}

async fn write_one(db: &TestDb, key: &str) -> Result<Uuid> {
    let mut c = db.client().await?;
    let w = write_txn(&mut c, &[NewEvent::new("booking", key, "Created", "{}")]).await?;
    Ok(w[0].id)
}

async fn wait_row(db: &TestDb, id: Uuid, what: &str) -> Result<()> {
    outbox_relay_dev::wait_until(DEADLINE, what, || async {
        Ok(has_row(db, id).await?.then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_standby_streams_lags_and_takes_over_after_kill9_on_a_new_timeline() -> Result<()>
{
    let pair = HaPair::start(&StandbyOptions {
        synchronized_standby_slots: true,
        ..StandbyOptions::default()
    })
    .await?;
    let major = pair.primary.major();
    let db = pair.primary.new_database().await?;
    let on_standby = db.on(pair.standby.postgres());
    let front = pair.via_front(&db);

    // A row written on the primary (through the front) appears on the standby.
    let first = write_one(&front, "before").await?;
    wait_row(&on_standby, first, "the row on the standby").await?;
    let standby_admin = pair.standby.postgres().admin("postgres").await?;
    let in_recovery: bool = standby_admin
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(in_recovery, "the standby is not in recovery");
    let old_tli = current_timeline(&pair.primary.admin("postgres").await?).await?;

    // The link held: the standby falls behind; released: it catches up.
    pair.standby.link().set_blackhole(true);
    let held = write_one(&db, "held").await?;
    let primary_lsn = current_wal_lsn(&pair.primary.admin("postgres").await?).await?;
    let caught_up = pair
        .standby
        .wait_replayed(primary_lsn, Duration::from_secs(2))
        .await;
    ensure!(
        caught_up.is_err() && !has_row(&on_standby, held).await?,
        "the standby replayed past {primary_lsn} with its link held"
    );
    pair.standby.link().set_blackhole(false);
    wait_row(&on_standby, held, "the held row after the link came back").await?;

    // 17+: a failover slot on the primary is synchronized to the standby, and the primary waits for
    // the standby's physical slot before a logical walsender sends anything.
    if major >= 17 {
        let admin = db.client().await?;
        admin
            .execute(
                "SELECT pg_create_logical_replication_slot('failover_probe', 'pgoutput', false, false, true)",
                &[],
            )
            .await?;
        let sss: String = admin
            .query_one("SHOW synchronized_standby_slots", &[])
            .await?
            .get(0);
        ensure!(
            sss == pair.standby.slot_name(),
            "synchronized_standby_slots = {sss:?}"
        );
        // A new slot is not synchronized while it needs older WAL or catalog rows than the standby has
        // ("could lead to data loss"): it must move on first, as a consumer confirming its position
        // after a running-xacts record does. Each round does what a relay's heartbeat would.
        pair.standby
            .wait_slot_synced(DEADLINE, "failover_probe", || async {
                write_one(&db, "for the slot").await?;
                admin.execute("SELECT pg_log_standby_snapshot()", &[]).await?;
                admin
                    .execute(
                        "SELECT pg_replication_slot_advance('failover_probe', pg_current_wal_lsn())",
                        &[],
                    )
                    .await?;
                Ok(())
            })
            .await?;
    }

    // kill -9 of the primary, promotion; the front now reaches the new primary.
    let last = write_one(&front, "last").await?;
    wait_row(&on_standby, last, "the last row on the standby").await?;
    let replayed_before = pair.standby.replay_lsn().await?.context("no replay LSN")?;
    let took = pair.fail_over().await?;
    eprintln!("Postgres {major}: kill -9 to a writable standby in {took:.1?}");
    let after = write_one(&front, "after")
        .await
        .context("write through the front")?;
    ensure!(has_row(&on_standby, after).await? && has_row(&on_standby, last).await?);
    let new_admin = pair.standby.postgres().admin("postgres").await?;
    let new_tli = current_timeline(&new_admin).await?;
    ensure!(new_tli == old_tli + 1, "timeline {old_tli} -> {new_tli}");
    // The new timeline's history names the fork: timeline 1 ended where the standby stopped replaying.
    let history = timeline_history(&new_admin, new_tli).await?;
    let fork = history.last().context("no fork in the history")?;
    ensure!(fork.parent == old_tli, "{history:?}");
    let now = current_wal_lsn(&new_admin).await?;
    ensure!(
        replayed_before <= fork.switchpoint && fork.switchpoint <= now,
        "fork {fork:?}; replayed {replayed_before} before the kill, now at {now}"
    );
    new_admin.batch_execute("CHECKPOINT").await?;
    let checkpoint_tli = checkpoint_timeline(&new_admin).await?;
    ensure!(
        checkpoint_tli == new_tli,
        "pg_control_checkpoint() timeline {checkpoint_tli}, WAL on {new_tli}"
    );
    if major >= 17 {
        // The synchronized slot survived the promotion as a failover slot of the new primary.
        let failover: Option<bool> = new_admin
            .query_opt(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = 'failover_probe'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        ensure!(
            failover == Some(true),
            "failover slot after promotion: {failover:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_standby_switchover_keeps_every_committed_row() -> Result<()> {
    let pair = HaPair::start(&StandbyOptions::default()).await?;
    let db = pair.primary.new_database().await?;
    let front = pair.via_front(&db);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(write_one(&front, &format!("k{i}")).await?);
    }
    pair.switch_over().await?;
    let c = pair.via_front(&db).client().await?;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM public.outbox WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
        .get(0);
    ensure!(n == 20, "{n} of 20 rows after the switchover");
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
    ensure!(!in_recovery, "the front does not reach the new primary");
    write_one(&front, "after").await?;
    Ok(())
}
