//! `outbox-relay reset-checkpoint` against the real servers: it shows and refuses before it writes
//! (no --yes: 64; --dry-run: 0; a relay running: 75; --to-lsn below the slot: 65), and after a
//! reset the relay publishes exactly what the reset says, counted by a read_committed consumer.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::current_wal_lsn;
use outbox_relay_dev::{
    run_cli, shared_servers, verify, write_txn, Kafka, Lsn, NewEvent, RelayConfig, TestDb, Written,
};
use serde_json::Value;

use crate::support::{bin, setup, start};

/// Runs `outbox-relay <args> --config <cfg>`: (exit code, stdout + stderr).
fn cli(cfg: &RelayConfig, args: &[&str]) -> Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, cfg.to_toml())?;
    let mut all: Vec<&str> = args.to_vec();
    let p = path.to_str().context("path")?.to_string();
    all.push("--config");
    all.push(&p);
    let (status, out, err) = run_cli(&bin(), &all, &[])?;
    Ok((status.code(), format!("{out}{err}")))
}

/// The checkpoint as `status --json` shows it.
fn checkpoint(cfg: &RelayConfig) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, cfg.to_toml())?;
    let p = path.to_str().context("path")?;
    let (_, out, err) = run_cli(&bin(), &["status", "--json", "--config", p], &[])?;
    let json: Value =
        serde_json::from_str(&out).with_context(|| format!("status --json:\n{out}\n{err}"))?;
    Ok(json["checkpoint"].clone())
}

/// `n` events in transactions of `per_txn`, aggregate type `booking`.
async fn write(db: &TestDb, n: usize, per_txn: usize, tag: &str) -> Result<Vec<Written>> {
    let mut client = db.client().await?;
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_txn) {
        let rows: Vec<NewEvent> = chunk
            .iter()
            .map(|i| NewEvent::new("booking", &format!("{tag}-{}", i % 7), "Created", "{}"))
            .collect();
        out.extend(write_txn(&mut client, &rows).await?);
    }
    Ok(out)
}

/// Produces one record under `key` to partition 0 of `topic`, outside any transaction.
fn produce(topic: &str, key: &[u8], value: &[u8]) -> Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = Kafka::shared().client_config().create()?;
    let rec = BaseRecord::<[u8], [u8]>::to(topic)
        .partition(0)
        .key(key)
        .payload(value);
    p.send(rec).map_err(|(e, _)| e)?;
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

async fn stop(relay: &mut outbox_relay_dev::RelayProcess) -> Result<()> {
    relay.sigterm()?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("relay did not stop")?;
    ensure!(status.success(), "relay exit {status:?}\n{}", relay.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_checkpoint_shows_refuses_and_then_the_relay_publishes_from_the_slot() -> Result<()> {
    let _guard = shared_servers().await;
    let (db, cfg) = setup(&["booking"]).await?;
    let kafka = Kafka::shared();
    let topic = [cfg.topic_for("booking")];
    let mut relay = start(&cfg).await?;
    let first = write(&db, 40, 4, "a").await?;
    crate::support::wait_published(&topic, &first, Duration::from_secs(60)).await?;

    // A relay holds the slot: refused, nothing written.
    let (code, out) = cli(&cfg, &["reset-checkpoint", "--yes"])?;
    ensure!(code == Some(75), "exit {code:?}: {out}");
    eprintln!("reset-checkpoint --yes (relay running):\n{out}");
    ensure!(out.contains("stop the relay first"), "{out}");
    stop(&mut relay).await?;
    let before = checkpoint(&cfg)?;
    ensure!(before["found"] == true, "{before}");
    let resume = before["resume_lsn"]
        .as_str()
        .context("resume_lsn")?
        .to_string();

    // Without --yes: shown, 64, nothing written.
    let (code, out) = cli(&cfg, &["reset-checkpoint"])?;
    ensure!(code == Some(64), "exit {code:?}: {out}");
    eprintln!("reset-checkpoint:\n{out}");
    for needle in [
        format!("key {}", before["key"].as_str().unwrap_or("?")),
        format!("resume_lsn {resume}"),
        format!("confirmed_flush_lsn {resume}"),
        "a tombstone".to_string(),
        "add --yes".to_string(),
    ] {
        ensure!(out.contains(&needle), "{needle:?} not in:\n{out}");
    }
    ensure!(checkpoint(&cfg)? == before, "changed without --yes");

    // --dry-run: 0, nothing written.
    let (code, out) = cli(&cfg, &["reset-checkpoint", "--dry-run", "--yes"])?;
    ensure!(
        code == Some(0) && out.contains("dry run: nothing written"),
        "{out}"
    );
    ensure!(checkpoint(&cfg)? == before, "changed by --dry-run");

    // Below the slot's confirmed_flush_lsn: refused, 65.
    let (code, out) = cli(&cfg, &["reset-checkpoint", "--to-lsn", "0/1", "--yes"])?;
    ensure!(code == Some(65), "exit {code:?}: {out}");
    eprintln!("reset-checkpoint --to-lsn 0/1 --yes:\n{out}");
    ensure!(
        out.contains("below slot") && out.contains(&format!("confirmed_flush_lsn {resume}")),
        "{out}"
    );
    ensure!(checkpoint(&cfg)? == before, "changed by a refused --to-lsn");

    // Events written while the relay is down; then something else writes an unreadable record
    // under the relay's key (README runbook "Unreadable checkpoint": the relay would stop, 70).
    let second = write(&db, 30, 3, "b").await?;
    let key = before["key"].as_str().context("key")?;
    produce(&cfg.checkpoint_topic, key.as_bytes(), b"not a checkpoint")?;
    let (code, out) = cli(&cfg, &["reset-checkpoint", "--dry-run"])?;
    ensure!(code == Some(0), "exit {code:?}: {out}");
    ensure!(out.contains("current checkpoint:  unreadable"), "{out}");
    eprintln!("reset-checkpoint --dry-run:\n{out}");
    let (code, out) = cli(&cfg, &["reset-checkpoint", "--yes"])?;
    ensure!(code == Some(0), "exit {code:?}: {out}");
    ensure!(out.contains("written: a tombstone"), "{out}");
    eprintln!("reset-checkpoint --yes:\n{out}");
    let after = checkpoint(&cfg)?;
    ensure!(after["found"] == false, "{after}");

    // The relay publishes from the slot: the second batch, and new events, each exactly once.
    let mut relay = start(&cfg).await?;
    let third = write(&db, 20, 5, "c").await?;
    let all: Vec<Written> = [first, second, third].concat();
    crate::support::wait_published(&topic, &all, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let received = kafka.collect(&topic).await?;
    let verdict = verify(&all, &received);
    ensure!(verdict.is_exactly_once(), "{verdict}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_checkpoint_to_lsn_resumes_there() -> Result<()> {
    let _guard = shared_servers().await;
    let (db, cfg) = setup(&["booking"]).await?;
    let kafka = Kafka::shared();
    let topic = [cfg.topic_for("booking")];
    let mut relay = start(&cfg).await?;
    let published = write(&db, 30, 3, "a").await?;
    crate::support::wait_published(&topic, &published, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;

    // Skipped on purpose: everything committed before `at`.
    let _skipped = write(&db, 20, 4, "s").await?;
    let at: Lsn = current_wal_lsn(&db.client().await?).await?;
    let after = write(&db, 25, 5, "n").await?;

    let (code, out) = cli(
        &cfg,
        &["reset-checkpoint", "--to-lsn", &at.to_string(), "--dry-run"],
    )?;
    ensure!(code == Some(0), "exit {code:?}: {out}");
    ensure!(
        out.contains(&format!("a checkpoint: resume_lsn {at}, timeline 1")),
        "{out}"
    );
    let (code, out) = cli(
        &cfg,
        &["reset-checkpoint", "--to-lsn", &at.to_string(), "--yes"],
    )?;
    ensure!(code == Some(0), "exit {code:?}: {out}");
    eprintln!("reset-checkpoint --to-lsn {at} --yes:\n{out}");
    let cp = checkpoint(&cfg)?;
    ensure!(
        cp["resume_lsn"] == at.to_string().as_str() && cp["timeline"] == 1,
        "{cp}"
    );

    // The relay resumes at `at`: the transactions after it, none before, nothing twice.
    let mut relay = start(&cfg).await?;
    let expected: Vec<Written> = [published, after].concat();
    crate::support::wait_published(&topic, &expected, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let received = kafka.collect(&topic).await?;
    let verdict = verify(&expected, &received);
    ensure!(verdict.is_exactly_once(), "{verdict}");
    Ok(())
}
