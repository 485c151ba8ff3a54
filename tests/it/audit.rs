//! `outbox-relay audit` against the real servers: a clean run after kill -9s reports nothing and
//! exits 0, while writers keep writing; every injected fault is found and named (exit 3); a
//! stopped relay makes audit say it cannot judge (exit 4) rather than report false "missing".
//!
//! Faults are injected the way they happen: a record produced twice, a record nobody wrote a
//! row for, a record on another partition than its key's, a record of a key after one Postgres
//! committed later, and events lost because the slot and the checkpoint were moved past their
//! rows (what the README's recovery steps do after an invalidated slot: the relay then starts
//! normally, and those rows are in the table but in no topic).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay::audit::murmur2::partition_for;
use outbox_relay::sink::checkpoint::Checkpoint;
use outbox_relay::Lsn;
use outbox_relay_dev::{
    run_cli, shared_servers, wait_until, write_concurrently, write_txn, Kafka, NewEvent, Record,
    RelayConfig, RelayProcess, Written,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::support::{bin, setup, spec, start, topics, wait_published};

/// Runs `outbox-relay audit --config <relay's config> --json <extra>`; returns the exit code,
/// the parsed JSON report and stderr.
async fn audit(relay: &RelayProcess, extra: &[&str]) -> Result<(i32, Value, String)> {
    let config = relay.config_path().to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["audit".into(), "--config".into(), config, "--json".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&bin(), &args, &[])
    })
    .await??;
    let code = status.code().context("audit killed by a signal")?;
    let json: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("audit printed no JSON (exit {code}):\n{stdout}\n{stderr}"))?;
    Ok((code, json, stderr))
}

fn count(report: &Value, finding: &str) -> u64 {
    report["findings"][finding]["count"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn assert_clean(code: i32, report: &Value, stderr: &str) -> Result<()> {
    for f in [
        "missing",
        "duplicated",
        "no_row_never_existed",
        "order_violations",
        "wrong_partition",
        "unreadable",
    ] {
        ensure!(
            count(report, f) == 0,
            "{f}: {}\n{stderr}",
            serde_json::to_string_pretty(&report["findings"])?
        );
    }
    ensure!(
        code == 0 && report["verdict"] == "clean",
        "exit {code}\n{report:#}\n{stderr}"
    );
    Ok(())
}

/// A per-test dead-letter topic, so dead-lettered counts are this test's own.
async fn dead_letter_topic(cfg: &mut RelayConfig) -> Result<String> {
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    Kafka::shared().create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    Ok(dlq)
}

/// Rows the relay dead-letters: they set a header the relay owns.
async fn write_poisoned(db: &outbox_relay_dev::TestDb, n: usize) -> Result<Vec<Written>> {
    let mut client = db.client().await?;
    let rows: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            headers: Some(r#"{"event_id": "mine"}"#.into()),
            ..NewEvent::new("booking", &format!("poison-{i}"), "Bad", "{}")
        })
        .collect();
    write_txn(&mut client, &rows).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_is_clean_after_kill9s_and_while_writers_write() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, mut cfg) = setup(&types).await?;
    dead_letter_topic(&mut cfg).await?;
    let before_any_row = chrono_now_rfc3339();
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(40_000, &types, &[1, 5, 50, 200], 3);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    let mut seed: u64 = u64::from(std::process::id()) * 7919;
    for _ in 0..5 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(200 + (seed >> 33) % 1000)).await;
        relay.kill9().await?;
        relay = relay.respawn(&bin(), &[])?;
    }
    let mut written = writer.await??;
    let poisoned = write_poisoned(&db, 3).await?;
    wait_published(&topics(&cfg, &types), &written, Duration::from_secs(180)).await?;

    // Audit while writers keep writing: the cut leaves their newest transactions out.
    let more = {
        let spec = spec(20_000, &types, &[1, 10, 100], 2);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    let (code, report, stderr) = audit(&relay, &[]).await?;
    eprintln!("{stderr}");
    assert_clean(code, &report, &stderr)?;
    ensure!(
        report["rows"]["judged"].as_u64() >= Some((written.len() + poisoned.len()) as u64),
        "{report:#}"
    );
    ensure!(
        report["findings"]["dead_lettered"]["reserved_header"] == 3,
        "{report:#}"
    );
    written.extend(more.await??);

    // The same with a time window and with an LSN window (both start before the first row).
    let (code, report, stderr) = audit(&relay, &["--since", &before_any_row]).await?;
    assert_clean(code, &report, &stderr)?;
    ensure!(report["window"]["kind"] == "since", "{report:#}");
    ensure!(
        report["rows"]["judged"].as_u64() == Some((written.len() + poisoned.len()) as u64),
        "every row was written after --since: {report:#}"
    );
    let (code, report, stderr) = audit(&relay, &["--from-lsn", "0/1"]).await?;
    assert_clean(code, &report, &stderr)?;
    ensure!(report["window"]["kind"] == "lsn", "{report:#}");
    Ok(())
}

/// Now as RFC 3339 UTC, from the system clock.
fn chrono_now_rfc3339() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    outbox_relay::route::pg_timestamp_rfc3339(micros - 946_684_800_000_000)
}

/// A plain (non-transactional) producer, as a person with a console producer would use.
fn producer() -> Result<FutureProducer> {
    Ok(Kafka::shared().client_config().create()?)
}

/// Produces `value` with `headers` to `topic`/`partition`; returns the offset.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    headers: &[(&str, String)],
) -> Result<i64> {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let rec = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value)
        .headers(h);
    let delivery = p
        .send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    Ok(delivery.offset)
}

/// The relay's headers of `r`, with some replaced.
fn headers_of(r: &Record, replace: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for name in [
        "event_id",
        "event_type",
        "aggregate_type",
        "created_at",
        "pg_lsn",
        "pg_xid",
        "pg_commit_ts",
    ] {
        let v = replace
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| r.header(name).map(str::to_string))
            .unwrap_or_default();
        out.push((name, v));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_and_names_each_injected_fault() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    dead_letter_topic(&mut cfg).await?;
    let mut relay = start(&cfg).await?;
    let mut written = write_concurrently(&db, &spec(2_000, &types, &[1, 10, 100], 2)).await?;
    let kafka = Kafka::shared();
    let topic = cfg.topic_for("booking");
    wait_published(
        std::slice::from_ref(&topic),
        &written,
        Duration::from_secs(60),
    )
    .await?;

    // Lost events: rows written while the relay is stopped...
    relay.sigterm()?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("stop")?;
    ensure!(status.success(), "{status:?}\n{}", relay.logs());
    let mut client = db.client().await?;
    let lost: Vec<Written> = write_txn(
        &mut client,
        &(0..5)
            .map(|i| NewEvent::new("booking", &format!("lost-{i}"), "Lost", "{}"))
            .collect::<Vec<_>>(),
    )
    .await?;
    // ...which audit cannot judge while the relay is stopped: it says so, and does not call them missing.
    let started = Instant::now();
    let (code, report, stderr) = audit(&relay, &["--wait", "3"]).await?;
    ensure!(
        code == 4 && report["verdict"] == "cannot_judge",
        "exit {code}: {report:#}\n{stderr}"
    );
    ensure!(
        stderr.contains("has not published up to the cut"),
        "{stderr}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "the deadline was not kept"
    );

    // ...then the slot and the checkpoint are moved past them (the runbook after a lost slot).
    let advanced: String = db
        .client()
        .await?
        .query_one(
            "SELECT end_lsn::text FROM pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&cfg.slot],
        )
        .await?
        .get(0);
    let advanced: Lsn = advanced.parse()?;
    let checkpoints = kafka
        .collect(std::slice::from_ref(&cfg.checkpoint_topic))
        .await?;
    let key = checkpoints
        .last()
        .and_then(|r| r.key.clone())
        .context("checkpoint key")?;
    let p = producer()?;
    let cp = Checkpoint {
        resume_lsn: advanced,
        ..Checkpoint::default()
    };
    produce(&p, &cfg.checkpoint_topic, 0, &key, &cp.encode(), &[]).await?;
    let relay = relay.respawn(&bin(), &[])?;
    let runs = |logs: &str| logs.matches("outbox-relay started").count();
    wait_until(Duration::from_secs(60), "the relay restarts", || {
        let logs = relay.logs();
        async move { Ok((runs(&logs) >= 2).then_some(())) }
    })
    .await?;
    written.extend(write_concurrently(&db, &spec(500, &types, &[1, 10], 2)).await?);
    crate::support::wait_records(
        std::slice::from_ref(&topic),
        written.len(),
        Duration::from_secs(60),
    )
    .await?;
    let received = kafka.collect(std::slice::from_ref(&topic)).await?;
    ensure!(
        received.len() == written.len(),
        "{} of {}",
        received.len(),
        written.len()
    );

    // A duplicate: the newest record of a key produced again, as it was, on its partition (a copy
    // of an older one would also break the key's order).
    let newest = received.last().context("records")?;
    let other_key = received
        .iter()
        .find(|r| r.key != newest.key)
        .and_then(|r| r.key.clone());
    let dup = received
        .iter()
        .filter(|r| r.key == other_key)
        .max_by_key(|r| r.offset)
        .context("another key")?;
    produce(
        &p,
        &topic,
        dup.partition,
        dup.key.as_deref().unwrap_or_default(),
        dup.value.as_deref().unwrap_or_default(),
        &headers_of(dup, &[]),
    )
    .await?;

    // A record with no row: a new event id on the right partition, as recent as the newest row.
    let ghost = uuid::Uuid::new_v4().to_string();
    let ghost_key = b"ghost-1";
    produce(
        &p,
        &topic,
        partition_for(ghost_key, 3),
        ghost_key,
        b"{}",
        &headers_of(newest, &[("event_id", ghost.clone())]),
    )
    .await?;

    // A record on the wrong partition.
    let stray = uuid::Uuid::new_v4().to_string();
    let stray_key = b"stray-1";
    let right = partition_for(stray_key, 3);
    let wrong = (right + 1) % 3;
    let stray_offset = produce(
        &p,
        &topic,
        wrong,
        stray_key,
        b"{}",
        &headers_of(newest, &[("event_id", stray.clone())]),
    )
    .await?;

    // An order violation: after the newest record of a key, one committed before it (an older
    // transaction's position and commit time).
    let last_of_key = received
        .iter()
        .filter(|r| r.key == newest.key)
        .max_by_key(|r| r.offset)
        .context("newest key")?;
    let oldest = received
        .iter()
        .filter(|r| r.header("pg_xid") != last_of_key.header("pg_xid"))
        .min_by_key(|r| r.header("pg_lsn").and_then(|l| l.parse::<Lsn>().ok()))
        .context("an older record")?;
    let late = uuid::Uuid::new_v4().to_string();
    let late_offset = produce(
        &p,
        &topic,
        last_of_key.partition,
        last_of_key.key.as_deref().unwrap_or_default(),
        b"{}",
        &headers_of(
            last_of_key,
            &[
                ("event_id", late.clone()),
                (
                    "pg_lsn",
                    oldest.header("pg_lsn").unwrap_or_default().to_string(),
                ),
                (
                    "pg_xid",
                    oldest.header("pg_xid").unwrap_or_default().to_string(),
                ),
                (
                    "pg_commit_ts",
                    oldest
                        .header("pg_commit_ts")
                        .unwrap_or_default()
                        .to_string(),
                ),
            ],
        ),
    )
    .await?;

    let (code, report, stderr) = audit(&relay, &[]).await?;
    eprintln!(
        "{stderr}\n{}",
        serde_json::to_string_pretty(&report["findings"])?
    );
    ensure!(
        code == 3 && report["verdict"] == "discrepancies",
        "exit {code}\n{stderr}"
    );
    let f = &report["findings"];
    let ids = |finding: &str| -> HashSet<String> {
        f[finding]["examples"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["event_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let lost_ids: HashSet<String> = lost.iter().map(|w| w.id.to_string()).collect();
    ensure!(
        count(&report, "missing") == 5 && ids("missing") == lost_ids,
        "missing: {f:#}"
    );
    ensure!(
        count(&report, "duplicated") == 1
            && f["duplicated"]["examples"][0]["event_id"]
                == dup.header("event_id").unwrap_or_default()
            && f["duplicated"]["examples"][0]["copies"] == 2,
        "duplicated: {f:#}"
    );
    let never: HashSet<String> = [ghost.clone(), stray.clone(), late.clone()].into();
    ensure!(
        count(&report, "no_row_never_existed") == 3 && ids("no_row_never_existed") == never,
        "no row: {f:#}"
    );
    let wp = &f["wrong_partition"]["examples"][0];
    ensure!(
        count(&report, "wrong_partition") == 1
            && wp["event_id"] == stray.as_str()
            && wp["at"]["partition"] == wrong
            && wp["at"]["offset"] == stray_offset
            && wp["expected_partition"] == right,
        "wrong partition: {f:#}"
    );
    let ov = &f["order_violations"]["examples"][0];
    ensure!(
        count(&report, "order_violations") == 1
            && ov["topic"] == topic.as_str()
            && ov["partition"] == last_of_key.partition
            && ov["later"]["offset"] == late_offset
            && ov["earlier"]["offset"] == last_of_key.offset,
        "order: {f:#}"
    );
    ensure!(count(&report, "unreadable") == 0, "{f:#}");

    // The text form names them too.
    let config = relay.config_path().to_string_lossy().into_owned();
    let (status, text, _) =
        tokio::task::spawn_blocking(move || run_cli(&bin(), &["audit", "--config", &config], &[]))
            .await??;
    ensure!(status.code() == Some(3), "{status:?}\n{text}");
    for needle in [
        "missing                 5".to_string(),
        format!("{} x2", dup.header("event_id").unwrap_or_default()),
        format!("{topic}/{wrong}@{stray_offset} key \"stray-1\""),
        format!("{topic}/{}: @{late_offset}", last_of_key.partition),
        "verdict: discrepancies".to_string(),
    ] {
        ensure!(text.contains(&needle), "{needle:?} not in\n{text}");
    }
    Ok(())
}

/// The README's recovery after an invalidated slot, end to end: the slot is invalidated while the
/// relay is down (events written meanwhile never reach Kafka through it); then, as the runbook says,
/// drop the slot, `reset-checkpoint --yes`, start the relay, `backfill --missing`. The audit then
/// finds 0 missing and 0 duplicated, and a second backfill publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_recovery_after_an_invalidated_slot_publishes_every_row_once() -> Result<()> {
    let _guard = outbox_relay_dev::exclusive_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let mut written = write_concurrently(&db, &spec(500, &types, &[1, 10], 2)).await?;
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    crate::support::stop(&mut relay).await?;

    let pg = outbox_relay_dev::Postgres::shared();
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let invalidated = async {
        // Written while the relay is down: the slot holds them, until it is invalidated.
        let lost = write_concurrently(&db, &spec(300, &types, &[1, 5], 2)).await?;
        let client = db.client().await?;
        client
            .batch_execute("CREATE TABLE filler (pad text)")
            .await?;
        let slot = cfg.slot.clone();
        wait_until(Duration::from_secs(120), "slot invalidated", || async {
            client
                .batch_execute(
                    "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000); \
                     SELECT pg_switch_wal(); CHECKPOINT",
                )
                .await?;
            let info = outbox_relay_dev::postgres::slot_info(&client, &slot)
                .await?
                .context("slot")?;
            Ok((info.wal_status.as_deref() == Some("lost")).then_some(()))
        })
        .await?;
        Ok::<_, anyhow::Error>(lost)
    }
    .await;
    admin
        .batch_execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    written.extend(invalidated?);

    // The relay stops on the invalidated slot.
    let mut stopped = relay.respawn(&bin(), &[])?;
    let status = stopped
        .wait_exit(Duration::from_secs(60))
        .await
        .context("the relay kept running on an invalidated slot")?;
    ensure!(
        status.code() == Some(70),
        "exit {status:?}\n{}",
        stopped.logs()
    );

    // The runbook.
    db.client()
        .await?
        .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
        .await?;
    let reset = crate::support::cli_with(&cfg, &["reset-checkpoint", "--yes"], &[])?;
    ensure!(
        reset.status.code() == Some(0),
        "reset-checkpoint: {reset:?}"
    );
    let mut relay = start(&cfg).await?;
    let after = write_concurrently(&db, &spec(200, &types, &[1, 10], 2)).await?;
    wait_published(&topics, &after, Duration::from_secs(60)).await?;
    written.extend(after);

    let dry = crate::support::cli_with(&cfg, &["backfill", "--missing", "--dry-run"], &[])?;
    ensure!(dry.status.code() == Some(0), "backfill --dry-run: {dry:?}");
    ensure!(
        dry.stdout.contains("300 rows would be published"),
        "backfill --dry-run: {}",
        dry.stdout
    );
    let started = Instant::now();
    let fill = crate::support::cli_with(&cfg, &["backfill", "--missing"], &[])?;
    eprintln!(
        "backfill --missing ({:?}): {}{}",
        started.elapsed(),
        fill.stdout,
        fill.stderr
    );
    ensure!(fill.status.code() == Some(0), "backfill: {fill:?}");
    ensure!(
        fill.stdout.contains("published 300 of 300"),
        "{}",
        fill.stdout
    );

    let (code, report, stderr) = audit(&relay, &[]).await?;
    ensure!(
        code == 0 && count(&report, "missing") == 0 && count(&report, "duplicated") == 0,
        "audit after the backfill (exit {code}):\n{report:#}\n{stderr}"
    );
    let again = crate::support::cli_with(&cfg, &["backfill", "--missing"], &[])?;
    ensure!(
        again.status.code() == Some(0)
            && again.stdout.contains("nothing missing, nothing published"),
        "second backfill: {again:?}"
    );
    crate::support::stop(&mut relay).await?;
    let received = Kafka::shared().collect(&topics).await?;
    let v = outbox_relay_dev::verify(&written, &received);
    eprintln!("after the recovery: {v}");
    ensure!(
        v.missing.is_empty() && v.duplicated.is_empty() && v.unexpected == 0,
        "{v}"
    );
    Ok(())
}
