//! Catch-up: a backlog read through the SQL decoding interface (`[catchup]`) is published exactly
//! once, in order per key, like a streamed one, with each next call read ahead on a second
//! session; the relay then streams (a transaction split on its last row is not sent twice by the
//! hand-over); a kill -9 during the read loses and repeats nothing; a standby
//! waits on the relay's lock and never fences the relay that catches up; a huge transaction is
//! read in bounded memory; with no free slot for the temporary copy, `doctor` warns and the
//! backlog is streamed instead; with room for one copy only, nothing is read ahead. The whole
//! fault suite also runs with `OUTBOX_RELAY__CATCHUP__MODE=always` (`.ci/run`), so every kill,
//! restart and cut is proved on this path too.

use std::time::Duration;

use anyhow::{ensure, Result};
use outbox_relay_dev::{
    shared_servers, wait_until, write_batched, write_concurrently, Kafka, Postgres, RelayConfig,
    TestDb,
};

use crate::support::{
    bin, cli_with, large_transaction, peak_rss_kib, random_pause, scalar_i64, scrape, setup, spawn,
    spec, start, stop, topics, verdict, wait_published, wait_records, wait_standing_by,
    READY_WITHIN,
};

const READING: &str = "catching up through the SQL interface";
const CAUGHT_UP: &str = "caught up: streaming from the slot again";
const READ_AHEAD: &str = "catch-up: reading each next call ahead on a second session";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_read_through_the_sql_interface_then_the_relay_streams() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("catchup.mode", "auto");
    cfg.set("catchup.min_lag_mb", 1i64);
    cfg.set("catchup.chunk_changes", 2_000i64);
    let topics = topics(&cfg, &types);
    // The first start creates the slot; the backlog is written while no relay runs.
    let mut relay = start(&cfg).await?;
    stop(&mut relay).await?;
    ensure!(!relay.logs().contains(READING), "{}", relay.logs());
    let mut written = write_concurrently(&db, &spec(30_000, &types, &[1, 100], 2)).await?;

    let mut relay = start(&cfg).await?;
    wait_until(Duration::from_secs(120), "the relay to catch up", || {
        let logs = relay.logs();
        async move { Ok(logs.contains(CAUGHT_UP).then_some(())) }
    })
    .await?;
    ensure!(relay.logs().contains(READING), "{}", relay.logs());
    // 30k rows in calls of 2000, 2000, 4000, ...: the calls after the first are read ahead.
    ensure!(relay.logs().contains(READ_AHEAD), "{}", relay.logs());
    ensure!(
        scrape(&relay).await?.value("outbox_relay_catching_up") == 0.0,
        "still reporting a catch-up after it ended"
    );
    // Streaming now: these come through the walsender.
    written.extend(write_concurrently(&db, &spec(3_000, &types, &[1, 10], 2)).await?);
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    // The temporary copy went with its connection; the slot holds only what is not published.
    let client = db.client().await?;
    let copies = scalar_i64(
        &client,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '{}\\_cu%'",
            cfg.slot
        ),
    )
    .await?;
    ensure!(copies == 0, "{copies} temporary catch-up slots left behind");
    Ok(())
}

/// A transaction split on its last row (its rows a multiple of `batch.split_events`) is covered
/// whole by a partial checkpoint. When the catch-up hands over to the walsender, which sends it
/// again (the slot is at or before the checkpoint), it is skipped, not published a second time.
/// CI found this when the restart of `exactly_once::a_200k_row_transaction_is_split_...` caught
/// up: the rows streamed before the test stopped the relay were duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_split_on_its_last_row_is_not_published_again_once_the_relay_streams(
) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("catchup.mode", "auto");
    cfg.set("catchup.min_lag_mb", 1i64);
    cfg.set("batch.split_events", 5_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    stop(&mut relay).await?;
    let mut client = db.client().await?;
    let mut written = write_batched(&mut client, &large_transaction(20_000)).await?;

    let mut relay = start(&cfg).await?;
    wait_until(Duration::from_secs(120), "the relay to catch up", || {
        let logs = relay.logs();
        async move { Ok(logs.contains(CAUGHT_UP).then_some(())) }
    })
    .await?;
    ensure!(relay.logs().contains(READING), "{}", relay.logs());
    // The walsender sends the split transaction again before this one: once this one is
    // published, the other was either skipped or published twice.
    written.extend(write_batched(&mut client, &large_transaction(10)).await?);
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_catching_up_loses_and_repeats_nothing() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("catchup.mode", "always");
    cfg.set("catchup.chunk_changes", 1_000i64);
    // Transactions of 3000 rows are split: kills land inside them too.
    cfg.set("batch.split_events", 1_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(60_000, &types, &[1, 10, 100, 3_000], 3);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    for _ in 0..8 {
        tokio::time::sleep(random_pause(200..1500)).await;
        relay.kill9().await?;
        relay = relay.respawn(&bin(), &[])?;
    }
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    relay.wait_ready(READY_WITHIN).await?;
    ensure!(relay.logs().contains(READING), "{}", relay.logs());
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("catch-up, kill -9 x8: {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_waits_on_the_lock_and_never_fences_a_relay_catching_up() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("catchup.mode", "always");
    cfg.set("retry.initial_backoff_ms", 50i64);
    cfg.set("retry.max_backoff_ms", 200i64);
    let topics = topics(&cfg, &types);
    let mut first = start(&cfg).await?;
    ensure!(first.logs().contains(READING), "{}", first.logs());
    let mut second_cfg = cfg.clone();
    second_cfg.new_admin_port();
    let mut second = spawn(&second_cfg, &[])?;
    wait_standing_by(&mut second).await?;
    // Between two SQL calls nobody holds the slot itself: the standby retries every 50-200 ms
    // for the whole write, and must never get in.
    let mut written = write_concurrently(&db, &spec(10_000, &types, &[1, 10], 2)).await?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    let (code, body) = second.get("/ready").await?;
    ensure!(
        code == 503 && body.contains("standing by"),
        "the standby became active while the first was alive: {code} {body}"
    );
    // status, doctor and reset-checkpoint see the relay's lock as the slot being held, though no
    // walsender holds it between two calls: a reset is refused.
    let reset = cli_with(&cfg, &["reset-checkpoint", "--yes"], &[])?;
    ensure!(
        reset.code() == Some(75),
        "reset-checkpoint beside a relay catching up: exit {:?}\n{}",
        reset.code(),
        reset.text()
    );
    let logs = first.logs();
    ensure!(
        !logs.to_lowercase().contains("fenced") && !second.logs().contains("outbox-relay started"),
        "the standby got in between two calls:\nfirst:\n{logs}\nsecond:\n{}",
        second.logs()
    );
    first.kill9().await?;
    second.wait_ready(READY_WITHIN).await?;
    written.extend(write_concurrently(&db, &spec(3_000, &types, &[1, 10], 2)).await?);
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut second).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_transaction_is_read_through_the_sql_interface_in_bounded_memory() -> Result<()>
{
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("catchup.mode", "always");
    cfg.set("batch.split_events", 10_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let rows = large_transaction(200_000);
    let written = write_batched(&mut client, &rows).await?;
    // Kill once part of the transaction is committed in Kafka: the next read returns it whole
    // again, and the checkpoint's partial skips what was published.
    wait_records(&topics, 10_000, Duration::from_secs(120)).await?;
    relay.kill9().await?;
    let mut relay = relay.respawn(&bin(), &[])?;
    wait_published(&topics, &written, Duration::from_secs(240)).await?;
    let peak = peak_rss_kib(relay.pid());
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    eprintln!(
        "200k-row transaction read through the SQL interface: peak RSS {} MiB",
        peak / 1024
    );
    ensure!(peak < 150 * 1024, "peak RSS {peak} KiB is not bounded");
    Ok(())
}

/// With every replication slot in use (the relay's own among them) there is no room for the
/// temporary copy a catch-up reads from: `doctor` warns, and the relay streams the
/// backlog instead, exactly once. A private cluster, restarted with max_replication_slots = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_free_slot_for_the_copy_the_backlog_is_streamed() -> Result<()> {
    let _guard = shared_servers().await;
    let (pg, db, cfg) = with_max_replication_slots(1).await?;
    let types = ["booking"];
    let topics = topics(&cfg, &types);
    // The first start creates the slot: 1 of 1 used. A warning, not a failure.
    let doctor = doctor_after_the_first_start(&cfg).await?;
    ensure!(
        doctor.contains("[warn] max_replication_slots: all 1 slots are used")
            && doctor.contains("no room for the temporary copy"),
        "{doctor}"
    );

    let written = write_concurrently(&db, &spec(30_000, &types, &[1, 100], 2)).await?;
    let mut relay = start(&cfg).await?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    let logs = relay.logs();
    ensure!(
        logs.contains("the slot is far behind")
            && logs.contains("cannot catch up through the SQL interface: streaming instead")
            && logs.contains("all replication slots are in use")
            && !logs.contains("on a temporary copy of the slot"),
        "{logs}"
    );
    ensure!(
        scrape(&relay).await?.value("outbox_relay_catching_up") == 0.0,
        "reporting a catch-up that could not start"
    );
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    drop(pg);
    Ok(())
}

/// With room for the copy but not for a second one, `doctor` says so and the relay catches up
/// with its calls one after another: the second session's copy fails, nothing is read ahead, and
/// the backlog is published exactly once. A private cluster, restarted with max_replication_slots = 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_room_for_one_copy_the_calls_run_one_after_another() -> Result<()> {
    let _guard = shared_servers().await;
    let (pg, db, mut cfg) = with_max_replication_slots(2).await?;
    cfg.set("catchup.chunk_changes", 2_000i64);
    let types = ["booking"];
    let topics = topics(&cfg, &types);
    // The first start creates the slot: 1 of 2 used.
    let doctor = doctor_after_the_first_start(&cfg).await?;
    ensure!(
        doctor
            .lines()
            .any(|l| l.contains("[ok]") && l.contains("max_replication_slots: 1 of 2 used"))
            && doctor.contains("not for a second one to read ahead"),
        "{doctor}"
    );

    let written = write_concurrently(&db, &spec(30_000, &types, &[1, 100], 2)).await?;
    let mut relay = start(&cfg).await?;
    wait_until(Duration::from_secs(120), "the relay to catch up", || {
        let logs = relay.logs();
        async move { Ok(logs.contains(CAUGHT_UP).then_some(())) }
    })
    .await?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    let logs = relay.logs();
    ensure!(
        logs.contains(READING)
            && logs.contains("reading ahead failed; calls run one after another from here")
            && logs.contains("all replication slots are in use")
            && !logs.contains(READ_AHEAD),
        "{logs}"
    );
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    drop(pg);
    Ok(())
}

/// Starts and stops the relay once (it creates its slot), then returns what `doctor` printed.
/// Its exit code says nothing here (the config has no dead-letter topic); tests/it/doctor.rs
/// proves the codes.
async fn doctor_after_the_first_start(cfg: &RelayConfig) -> Result<String> {
    let mut relay = start(cfg).await?;
    stop(&mut relay).await?;
    Ok(cli_with(cfg, &["doctor"], &[])?.text())
}

/// A private cluster restarted with `max_replication_slots = n`, a database on it, and a relay
/// configuration that catches up any backlog of 1 MiB or more (topics made for `booking`).
async fn with_max_replication_slots(n: u32) -> Result<(Postgres, TestDb, RelayConfig)> {
    let pg = tokio::task::spawn_blocking(Postgres::start_new).await??;
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute(&format!("ALTER SYSTEM SET max_replication_slots = {n}"))
        .await?;
    drop(admin);
    pg.restart().await?;
    let db = pg.new_database().await?;
    let kafka = Kafka::shared();
    let mut cfg = RelayConfig::new(&pg, &db, kafka);
    cfg.create_topics(kafka, &["booking"], 3).await?;
    cfg.set("catchup.mode", "auto");
    cfg.set("catchup.min_lag_mb", 1i64);
    Ok((pg, db, cfg))
}
