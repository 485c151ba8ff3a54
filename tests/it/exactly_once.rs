//! Every committed outbox row is published exactly once, whatever happens to the relay or the
//! servers: a graceful stop midstream, relay kill -9 storms (the long soak behind `dev/soak`), a
//! 200k-row transaction split and killed midway, broker kill -9 and pause past the transaction
//! timeout, Postgres immediate shutdowns, Postgres and Kafka connections cut and blackholed.
//!
//! Each test writes concurrently, waits until the events arrived, stops every relay, then reads
//! each partition to its end with `read_committed` (see `support`): 0 lost, 0 duplicated, order
//! per key. Tests that restart the shared servers hold `exclusive_servers()`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use outbox_relay_dev::{
    exclusive_servers, shared_servers, write_batched, write_concurrently, Kafka, Postgres, Proxy,
    RelayProcess, Written,
};

use crate::support::{
    bin, large_transaction, peak_rss_kib, random_pause, restart, scrape, setup, spec, start, stop,
    topics, verdict, wait_published, wait_records, READY_WITHIN,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_midstream_and_a_restart_lose_and_repeat_nothing() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(30_000, &types, &[1, 10, 100], 2);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    // Stop while events are flowing.
    wait_records(&topics, 100, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let mut relay = restart(&relay).await?;
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    Ok(())
}

/// In the compatibility set: the kill -9 exactly-once test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_relay_kill9_during_100k_concurrent_events_lose_and_repeat_nothing() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(100_000, &types, &[1, 5, 50, 200], 3);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    let mut kills = 0;
    while kills < 20 {
        // A random moment after the previous start (the kill is the fault, not a wait).
        tokio::time::sleep(random_pause(100..1100)).await;
        relay.kill9().await?;
        kills += 1;
        relay = relay.respawn(&bin(), &[])?;
    }
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("kill -9 x{kills}: {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

/// In the compatibility set: the split large transaction. A 200k-row Postgres transaction is
/// published in Kafka transactions of `split_events` rows; a kill -9 once part of it is committed
/// neither loses nor repeats a row, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_transaction_is_split_and_a_kill_midway_loses_and_repeats_nothing() -> Result<()>
{
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("batch.split_events", 10_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let rows = large_transaction(200_000);
    let written = write_batched(&mut client, &rows).await?;
    // Kill once part of the transaction is committed in Kafka.
    wait_records(&topics, 10_000, Duration::from_secs(120)).await?;
    let peak_before = peak_rss_kib(relay.pid());
    relay.kill9().await?;
    let mut relay = relay.respawn(&bin(), &[])?;
    wait_published(&topics, &written, Duration::from_secs(240)).await?;
    let peak_after = peak_rss_kib(relay.pid());
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    eprintln!(
        "200k-row transaction, split_events=10000: peak RSS before kill {} MiB, after restart {} MiB",
        peak_before / 1024,
        peak_after / 1024
    );
    ensure!(
        peak_after < 300 * 1024,
        "peak RSS {} KiB is not bounded",
        peak_after
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_broker_kill9_under_load_lose_and_repeat_nothing() -> Result<()> {
    let _guard = exclusive_servers().await;
    let types = ["booking", "car"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let kafka = Kafka::shared();
    let mut written: Vec<Written> = Vec::new();
    for round in 0..5 {
        // Events flow, then the broker dies under the relay while more are written.
        let batch = write_concurrently(&db, &spec(2_000, &types, &[1, 20], 2)).await?;
        written.extend(batch);
        wait_records(&topics, written.len() / 2, Duration::from_secs(60)).await?;
        let writer = {
            let db = db.clone();
            let s = spec(2_000, &types, &[1, 20], 2);
            tokio::spawn(async move { write_concurrently(&db, &s).await })
        };
        kafka.kill9().await?;
        written.extend(writer.await??);
        kafka.restart().await?;
        ensure!(
            relay.is_running(),
            "relay exited in round {round}:\n{}",
            relay.logs()
        );
    }
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("broker kill -9 x5: {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_past_the_transaction_timeout_loses_and_repeats_nothing() -> Result<()> {
    let _guard = exclusive_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("kafka.transaction_timeout_ms", 5_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let kafka = Kafka::shared();
    let mut written = write_concurrently(&db, &spec(3_000, &types, &[1, 50], 2)).await?;
    wait_records(&topics, 1_000, Duration::from_secs(60)).await?;
    let writer = {
        let db = db.clone();
        let s = spec(3_000, &types, &[1, 50], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    kafka.pause()?;
    // The fault itself: frozen longer than the transaction timeout, so the broker aborts what
    // was open once it runs again.
    tokio::time::sleep(Duration::from_secs(12)).await;
    kafka.resume()?;
    written.extend(writer.await??);
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    ensure!(relay.is_running(), "relay exited:\n{}", relay.logs());
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("broker paused 12 s (transaction timeout 5 s): {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_postgres_immediate_shutdowns_lose_and_repeat_nothing() -> Result<()> {
    let _guard = exclusive_servers().await;
    let types = ["booking", "car"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let pg = Postgres::shared();
    let mut written: Vec<Written> = Vec::new();
    for round in 0..5 {
        written.extend(write_concurrently(&db, &spec(3_000, &types, &[1, 10, 100], 2)).await?);
        // Crash while the relay is still catching up (or idle: both must hold).
        if round % 2 == 0 {
            wait_records(&topics, written.len() * 3 / 4, Duration::from_secs(60)).await?;
        }
        pg.stop_immediate().await?;
        pg.start().await?;
        ensure!(
            relay.is_running(),
            "relay exited in round {round}:\n{}",
            relay.logs()
        );
    }
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("postgres immediate shutdown x5: {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

/// Sessions the relay ended on transient errors so far (a cut connection ends one).
async fn transient_errors(relay: &RelayProcess) -> Result<f64> {
    Ok(scrape(relay)
        .await?
        .get("outbox_relay_errors_total", "class=\"transient\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_cut_and_blackholed_lose_and_repeat_nothing() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    let pg = Postgres::shared();
    let proxy = Proxy::start(format!("{}:{}", pg.host(), pg.port()).parse()?)?;
    cfg.set("postgres.port", i64::from(proxy.port()));
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 1_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let db = db.clone();
        let s = spec(20_000, &types, &[1, 10, 50], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    for cut in 1..=3 {
        // Cut only a streaming relay, and see it notice each cut.
        relay.wait_ready(READY_WITHIN).await?;
        let before = transient_errors(&relay).await?;
        proxy.cut_all();
        outbox_relay_dev::wait_until(Duration::from_secs(60), "the cut noticed", || async {
            Ok((transient_errors(&relay).await? > before).then_some(()))
        })
        .await
        .map_err(|e| e.context(format!("cut {cut}; logs:\n{}", relay.logs())))?;
    }
    // A partition: connections stay open, nothing flows, for longer than the heartbeat (the
    // blackhole's length is the fault, not a wait).
    relay.wait_ready(READY_WITHIN).await?;
    let before = transient_errors(&relay).await?;
    proxy.set_blackhole(true);
    tokio::time::sleep(Duration::from_secs(25)).await;
    proxy.set_blackhole(false);
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    let after = transient_errors(&relay).await?;
    ensure!(relay.is_running(), "relay exited:\n{}", relay.logs());
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("postgres connections cut x3 and blackholed 25 s: {verdict}; transient session ends: {after}");
    verdict.assert_exactly_once();
    ensure!(
        after > before,
        "the relay never noticed the blackhole:\n{}",
        relay.logs()
    );
    Ok(())
}

/// The shared Kafka proxy: one test at a time cuts it.
static KAFKA_PROXY_USER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_connections_cut_and_blackholed_lose_and_repeat_nothing() -> Result<()> {
    let _guard = shared_servers().await;
    let _proxy_user = KAFKA_PROXY_USER.lock().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    let kafka = Kafka::shared();
    let proxy = kafka.proxy();
    proxy.set_blackhole(false);
    proxy.set_refuse(false);
    cfg.set("kafka.bootstrap_servers", kafka.proxied_bootstrap());
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 1_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let db = db.clone();
        let s = spec(20_000, &types, &[1, 10, 50], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    // The fault schedule (librdkafka reconnects by itself, so a cut need not end a session):
    // cuts while events flow, a 20 s partition, cuts again while the relay recovers.
    let mut cuts = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.cut_all();
        cuts += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_blackhole(true);
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.set_blackhole(false);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        proxy.cut_all();
        cuts += 1;
    }
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    ensure!(relay.is_running(), "relay exited:\n{}", relay.logs());
    let sessions_ended = transient_errors(&relay).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!(
        "kafka connections cut x{cuts} and blackholed 20 s: {verdict}; transient session ends: {sessions_ended}"
    );
    verdict.assert_exactly_once();
    Ok(())
}

/// The short version of the relay kill -9 soak; `dev/soak` runs the long one (1M events, 100 kills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill9_soak_short_loses_and_repeats_nothing() -> Result<()> {
    soak(60_000, 30).await
}

/// `dev/soak`: 1M events, 100 kills (SOAK_EVENTS, SOAK_KILLS). Not in the test command (long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: run with dev/soak"]
async fn relay_kill9_soak_long_loses_and_repeats_nothing() -> Result<()> {
    let events = std::env::var("SOAK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let kills = std::env::var("SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    soak(events, kills).await
}

async fn soak(events: usize, kills: usize) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let started = Instant::now();
    let mut relay = start(&cfg).await?;
    let writer = {
        let db = db.clone();
        let s = spec(events, &types, &[1, 10, 100], 3);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    // Kills at random moments, while writing and (once the writer is done) while draining.
    for _ in 0..kills {
        tokio::time::sleep(random_pause(200..1500)).await;
        relay.kill9().await?;
        relay = relay.respawn(&bin(), &[])?;
    }
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(900)).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    println!(
        "soak: {} events, {kills} relay kill -9, {:?}: lost {}, duplicated {}, order violations {}",
        written.len(),
        started.elapsed(),
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.order_violations.len()
    );
    verdict.assert_exactly_once();
    Ok(())
}

/// The initial snapshot (`outbox.snapshot = true`): rows already in the table when the relay creates
/// its slot are published once, before the stream, across kill -9 during the snapshot and after,
/// while writers keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_already_in_the_table_are_published_once_by_the_snapshot_across_kills(
) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    cfg.set("outbox.snapshot", true);
    cfg.set("batch.max_events", 2_000i64);
    // One timestamp per row (not per transaction), so the snapshot's order (created_at, then id)
    // is the order the rows were written in.
    db.client()
        .await?
        .batch_execute(
            "ALTER TABLE public.outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp()",
        )
        .await?;
    let old = write_concurrently(&db, &spec(200_000, &types, &[2_000], 2)).await?;
    let started = std::time::Instant::now();
    let mut relay = start(&cfg).await?;
    // New rows while the snapshot runs and after: the stream publishes them, after the old ones.
    let writer = {
        let mut s = spec(20_000, &types, &[1, 10, 100], 2);
        s.keys_per_writer = 30;
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    // Three kills during the snapshot, then two once it is done.
    let (mut during, mut after) = (0, 0);
    while during < 3 {
        tokio::time::sleep(random_pause(300..1_200)).await;
        // This process's log only: whether it finished the snapshot before the kill.
        let done = relay.logs().contains("initial snapshot done");
        relay.kill9().await?;
        if done {
            after += 1;
        } else {
            during += 1;
        }
        relay = relay.respawn(&bin(), &[])?;
    }
    relay
        .wait_for_log("initial snapshot done", Duration::from_secs(120))
        .await?;
    while after < 2 {
        tokio::time::sleep(random_pause(300..1_200)).await;
        relay.kill9().await?;
        after += 1;
        relay = relay.respawn(&bin(), &[])?;
    }
    let mut written = old;
    written.extend(writer.await??);
    wait_published(&topics, &written, Duration::from_secs(300)).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!(
        "snapshot of 200000 rows + 20000 new, kill -9 x{} ({during} during the snapshot), {:?}: {verdict}",
        during + after,
        started.elapsed()
    );
    verdict.assert_exactly_once();
    Ok(())
}
