//! The exactly-once core (issue: relay core), against the real servers: mapping, atomic visibility
//! of a Postgres transaction, graceful stop and restart, kill -9 storms, split transactions, idle
//! WAL release, hot standby, the slot-advanced invariant, and configuration errors.
//!
//! Every verdict comes from a `read_committed` consumer that counts every event id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::{current_wal_lsn, slot_info};
use outbox_relay_dev::{
    run_cli, shared_servers, verify, wait_until, write_batched, write_concurrently, write_txn,
    Kafka, NewEvent, Postgres, RelayConfig, RelayProcess, Written,
};

use crate::common::{bin, peak_rss_kib, setup, spec, start, topics, READY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_10k_events_with_topics_keys_headers_and_order() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, cfg) = setup(&types).await?;
    let relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(10_000, &types, &[1, 7, 100, 500], 3)).await?;
    let received = Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    let verdict = verify(&written, &received);
    verdict.assert_exactly_once();

    let by_id: HashMap<String, &Written> = written.iter().map(|w| (w.id.to_string(), w)).collect();
    for r in &received {
        let id = r.header("event_id").context("event_id header")?;
        let w = by_id.get(id).context("unknown event id")?;
        ensure!(
            r.topic == cfg.topic_for(&w.aggregate_type),
            "topic of {id}: {}",
            r.topic
        );
        ensure!(r.key_str() == Some(w.aggregate_id.as_str()), "key of {id}");
        ensure!(
            r.value_str() == Some(w.payload.as_str()),
            "value of {id} differs from the payload text"
        );
        ensure!(
            r.header("event_type") == Some(w.event_type.as_str()),
            "event_type of {id}"
        );
        ensure!(
            r.header("aggregate_type") == Some(w.aggregate_type.as_str()),
            "aggregate_type of {id}"
        );
        for h in ["pg_lsn", "pg_xid", "pg_commit_ts", "created_at"] {
            ensure!(
                r.header(h).is_some_and(|v| !v.is_empty()),
                "header {h} of {id}"
            );
        }
    }
    drop(relay);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_postgres_transaction_is_visible_all_at_once() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, mut cfg) = setup(&types).await?;
    // One Kafka transaction per Postgres transaction here, so partial visibility would show.
    cfg.set("batch.max_events", 1i64);
    let _relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let mut written = Vec::new();
    for round in 0..20 {
        let rows: Vec<NewEvent> = (0..30)
            .map(|i| {
                NewEvent::new(
                    types[i % 3],
                    &format!("agg-{round}-{}", i % 5),
                    "Changed",
                    &format!("{{\"round\":{round},\"i\":{i}}}"),
                )
            })
            .collect();
        written.extend(write_txn(&mut client, &rows).await?);
    }
    // Read continuously: at every moment the events seen of a Postgres transaction are all or none.
    let kafka = Kafka::shared();
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
    // Atomic visibility: every Kafka commit leaves a marker offset in each partition it wrote,
    // so within a partition a run of consecutive offsets is (part of) one Kafka transaction. The
    // rows of one Postgres transaction must never span two runs of a partition.
    let mut by_partition: HashMap<(String, i32), Vec<(i64, String)>> = HashMap::new();
    for r in &received {
        by_partition
            .entry((r.topic.clone(), r.partition))
            .or_default()
            .push((r.offset, r.header("pg_xid").unwrap_or("").to_string()));
    }
    for ((topic, partition), mut rows) in by_partition {
        rows.sort();
        let mut run = 0;
        let mut run_of_xid: HashMap<String, usize> = HashMap::new();
        for (i, (offset, xid)) in rows.iter().enumerate() {
            if i > 0 && *offset != rows[i - 1].0 + 1 {
                run += 1;
            }
            let first = *run_of_xid.entry(xid.clone()).or_insert(run);
            ensure!(
                first == run,
                "xid {xid} is split over two Kafka transactions in {topic}/{partition}"
            );
        }
    }
    let mut per_xid: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *per_xid
            .entry(r.header("pg_xid").unwrap_or("").to_string())
            .or_default() += 1;
    }
    ensure!(
        per_xid.len() == 20,
        "expected 20 transactions, saw {}",
        per_xid.len()
    );
    ensure!(per_xid.values().all(|n| *n == 30), "{per_xid:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_midstream_and_restart_loses_and_duplicates_nothing() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(30_000, &types, &[1, 10, 100], 2);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    // Stop while events are flowing.
    let kafka = Kafka::shared();
    wait_until(Duration::from_secs(60), "first events in kafka", || async {
        let got = kafka
            .collect_for(&topics(&cfg, &types), Duration::from_millis(300), true)
            .await?;
        Ok((got.len() > 100).then_some(()))
    })
    .await?;
    relay.sigterm()?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("relay did not stop on SIGTERM")?;
    ensure!(status.success(), "exit status {status:?}\n{}", relay.logs());
    let mut relay = relay.respawn(&bin(), &[])?;
    let written = writer.await??;
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
    relay.sigterm()?;
    relay.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_20_kill9_during_100k_concurrent_events() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(100_000, &types, &[1, 5, 50, 200], 3);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    let mut kills = 0;
    let mut seed: u64 = std::process::id() as u64 * 7919;
    while kills < 20 {
        // A random moment: 100..1100 ms after the previous start.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pause = Duration::from_millis(100 + (seed >> 33) % 1000);
        tokio::time::sleep(pause).await;
        relay.kill9().await?;
        kills += 1;
        relay = relay.respawn(&bin(), &[])?;
    }
    let written = writer.await??;
    let received = Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(180),
            true,
        )
        .await?;
    let verdict = verify(&written, &received);
    eprintln!("kill -9 x{kills}: {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_transaction_is_split_and_survives_a_kill() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("batch.split_events", 10_000i64);
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let rows: Vec<NewEvent> = (0..200_000)
        .map(|i| {
            NewEvent::new(
                "booking",
                &format!("b-{}", i % 1000),
                "BookingCreated",
                &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(200)),
            )
        })
        .collect();
    let written = write_batched(&mut client, &rows).await?;
    // Kill once part of the transaction is committed in Kafka.
    let kafka = Kafka::shared();
    let topics = topics(&cfg, &types);
    wait_until(
        Duration::from_secs(120),
        "part of the big transaction in kafka",
        || async {
            let got = kafka
                .collect_for(&topics, Duration::from_millis(500), true)
                .await?;
            Ok((got.len() >= 10_000).then_some(()))
        },
    )
    .await?;
    let peak_before = peak_rss_kib(relay.pid());
    relay.kill9().await?;
    let mut relay = relay.respawn(&bin(), &[])?;
    let received = kafka
        .collect(&topics, written.len(), Duration::from_secs(240), true)
        .await?;
    let peak_after = peak_rss_kib(relay.pid());
    verify(&written, &received).assert_exactly_once();
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
    relay.sigterm()?;
    relay.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbox_does_not_pin_wal() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("postgres.status_interval_ms", 1000i64);
    let _relay = start(&cfg).await?;
    let client = db.client().await?;
    client
        .batch_execute("CREATE TABLE busy (id bigserial primary key, pad text)")
        .await?;
    // About 200 MB of WAL in a table that is not published.
    let start_lsn = current_wal_lsn(&client).await?;
    while current_wal_lsn(&client).await?.bytes_since(start_lsn) < 200 * 1024 * 1024 {
        client
            .batch_execute(
                "INSERT INTO busy (pad) SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
            )
            .await?;
    }
    let stopped = Instant::now();
    let slot = cfg.slot.clone();
    let retained = wait_until(
        Duration::from_secs(30),
        "retained WAL under 16 MB",
        || async {
            // Running-xacts records (what moves restart_lsn) are logged about every 15 s; a
            // checkpoint logs one at once, as a busy server does on its own.
            client.batch_execute("CHECKPOINT").await.ok();
            let now = current_wal_lsn(&client).await?;
            let info = slot_info(&client, &slot).await?.context("slot")?;
            let retained = now.bytes_since(info.restart_lsn.unwrap_or_default());
            Ok((retained < 16 * 1024 * 1024).then_some(retained))
        },
    )
    .await?;
    eprintln!(
        "retained WAL {} KiB, {:?} after the writer stopped",
        retained / 1024,
        stopped.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_stands_by_and_takes_over() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, cfg) = setup(&types).await?;
    let mut first = start(&cfg).await?;
    let mut second = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    wait_until(
        Duration::from_secs(30),
        "second relay standing by",
        || async { Ok(second.logs().contains("standing by").then_some(())) },
    )
    .await?;
    let written_a = write_concurrently(&db, &spec(5_000, &types, &[1, 10], 2)).await?;
    let kafka = Kafka::shared();
    let topics = topics(&cfg, &types);
    let received = kafka
        .collect(&topics, written_a.len(), Duration::from_secs(60), true)
        .await?;
    verify(&written_a, &received).assert_exactly_once();
    ensure!(second.is_running(), "standby exited:\n{}", second.logs());
    ensure!(
        !second.logs().contains(READY),
        "standby became active while the first was alive"
    );

    first.kill9().await?;
    let killed = Instant::now();
    let written_b = write_concurrently(&db, &spec(5_000, &types, &[1, 10], 2)).await?;
    let mut all = written_a.clone();
    all.extend(written_b);
    let received = kafka
        .collect(&topics, all.len(), Duration::from_secs(60), true)
        .await?;
    verify(&all, &received).assert_exactly_once();
    eprintln!(
        "standby took over and published the rest {:?} after the kill",
        killed.elapsed()
    );
    ensure!(killed.elapsed() < Duration::from_secs(60));
    ensure!(second.logs().contains(READY));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_the_slot_was_advanced_behind_its_back() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let written = write_txn(
        &mut client,
        &[NewEvent::new("booking", "b1", "Created", "{}")],
    )
    .await?;
    Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    relay.sigterm()?;
    relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("stop")?;
    // Events nobody published, then the slot moved past them by hand.
    write_txn(
        &mut client,
        &[NewEvent::new("booking", "b2", "Created", "{}")],
    )
    .await?;
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&cfg.slot],
        )
        .await?;
    let mut relay = relay.respawn(&bin(), &[])?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay kept running")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(70), "exit {status:?}\n{logs}");
    ensure!(
        logs.contains("confirmed_flush_lsn") && logs.contains("behind the relay's back"),
        "{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_name_the_key_and_hide_secrets() -> Result<()> {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let _guard = shared_servers().await;
    let db = pg.new_database().await?;
    let base = RelayConfig::new(pg, &db, kafka);
    let secret = "s3cr3t-Value-Never-Printed";

    let check =
        |cfg: &RelayConfig, env: Vec<(String, String)>, code: i32, needle: &str| -> Result<()> {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, cfg.to_toml())?;
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (status, out, err) = run_cli(
                &bin(),
                &["validate", "--config", path.to_str().unwrap_or("")],
                &env,
            )?;
            let all = format!("{out}{err}");
            ensure!(
                status.code() == Some(code),
                "expected exit {code}, got {status:?}: {all}"
            );
            ensure!(all.contains(needle), "expected {needle:?} in: {all}");
            ensure!(!all.contains(secret), "secret leaked: {all}");
            Ok(())
        };

    let mut c = base.clone();
    c.set("postgres.unknown_key", 1i64);
    check(&c, vec![], 78, "unknown_key")?;
    let mut c = base.clone();
    c.set("batch.max_events", "lots");
    check(&c, vec![], 78, "batch.max_events")?;
    let mut c = base.clone();
    c.set("postgres.port", "not-a-port");
    check(&c, vec![], 78, "postgres.port")?;
    // A secret of the wrong type is named, its value never echoed.
    let mut c = base.clone();
    c.set("postgres.password", toml::Value::Array(vec![secret.into()]));
    check(&c, vec![], 78, "postgres.password")?;
    let mut c = base.clone();
    c.unset("postgres.slot");
    c.set("kafka.checkpoint_topic", "bad topic!");
    check(&c, vec![], 78, "kafka.checkpoint_topic")?;
    // Password from the environment and from a file: valid, and never echoed.
    let mut c = base.clone();
    c.unset("postgres.password");
    check(
        &c,
        vec![("OUTBOX_RELAY__POSTGRES__PASSWORD".into(), secret.into())],
        0,
        "valid",
    )?;
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{secret}\n"))?;
    let mut c = base.clone();
    c.unset("postgres.password");
    c.set("postgres.password_file", pw.to_string_lossy().to_string());
    check(&c, vec![], 0, "valid")?;
    // A wrong password reaches the server: a clear message, exit 78, no secret.
    let mut c = base.clone();
    c.set("postgres.password", secret);
    let path = dir.path().join("wrong.toml");
    std::fs::write(&path, c.to_toml())?;
    let (status, out, err) = run_cli(
        &bin(),
        &[
            "validate",
            "--connect",
            "--config",
            path.to_str().unwrap_or(""),
        ],
        &[],
    )?;
    let all = format!("{out}{err}");
    ensure!(
        status.code() == Some(78),
        "wrong password: {status:?} {all}"
    );
    ensure!(all.contains("authentication failed"), "{all}");
    ensure!(!all.contains(secret), "secret leaked: {all}");
    Ok(())
}
