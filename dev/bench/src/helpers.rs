//! Small helpers every section uses: time, the progress log, percentiles, and one benchmark
//! environment (a database with the relay's config, topics and checkpoint topic) with starting,
//! stopping and dropping it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use outbox_relay_dev::{Kafka, Postgres, RelayConfig, RelayProcess, TestDb};

use crate::opts::Opts;
use crate::{PARTITIONS, READY, TYPES};

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[bench {:>7.1}s] {}",
        started().elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

pub fn started() -> &'static Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T.get_or_init(Instant::now)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One database with the relay's config, topics and checkpoint topic.
pub struct Env {
    pub db: TestDb,
    pub cfg: RelayConfig,
}

pub async fn new_env() -> Result<Env> {
    let db = Postgres::shared().new_database().await?;
    let cfg = relay_cfg(&db).await?;
    Ok(Env { db, cfg })
}

/// A relay config on `db` with a slot, topics and checkpoint topic of its own (a second relay on
/// the same database and backlog, independent of the first).
pub async fn relay_cfg(db: &TestDb) -> Result<RelayConfig> {
    let kafka = Kafka::shared();
    let mut cfg = RelayConfig::new(Postgres::shared(), db, kafka);
    cfg.set("admin.listen", "");
    cfg.set("log.level", "warn");
    cfg.create_topics(kafka, &TYPES, PARTITIONS).await?;
    cfg.create_checkpoint_topic(kafka).await?;
    Ok(cfg)
}

pub fn relay_topics(cfg: &RelayConfig) -> Vec<String> {
    TYPES.iter().map(|t| cfg.topic_for(t)).collect()
}

pub async fn start_relay(opts: &Opts, cfg: &RelayConfig) -> Result<RelayProcess> {
    RelayProcess::spawn(&opts.relay_bin, &cfg.to_toml(), &[])
}

pub async fn stop_relay(mut relay: RelayProcess) -> Result<()> {
    relay.sigterm()?;
    if relay.wait_exit(Duration::from_secs(60)).await.is_none() {
        relay.kill9().await?;
        bail!("relay did not stop within 60 s after SIGTERM");
    }
    Ok(())
}

/// Waits until `slot` exists and is active (some walsender streams it).
pub async fn wait_slot_active(db: &TestDb, slot: &str, deadline: Duration) -> Result<()> {
    let client = db.client().await?;
    outbox_relay_dev::postgres::wait_for_slot(&client, slot, deadline, "slot active", |s| s.active)
        .await?;
    Ok(())
}

/// Starts the relay once so it creates its slot and writes its first checkpoint, then stops it.
pub async fn create_relay_slot(opts: &Opts, env: &Env) -> Result<()> {
    create_slot_for(opts, &env.cfg).await
}

/// [`create_relay_slot`] for any relay config.
pub async fn create_slot_for(opts: &Opts, cfg: &RelayConfig) -> Result<()> {
    let mut cfg = cfg.clone();
    cfg.set("log.level", "info");
    let mut relay = RelayProcess::spawn(&opts.relay_bin, &cfg.to_toml(), &[])?;
    relay
        .wait_for_log(READY, Duration::from_secs(60))
        .await
        .context("relay did not become ready")?;
    stop_relay(relay).await
}

pub async fn drop_env(env: Env) -> Result<()> {
    let admin = Postgres::shared().admin("postgres").await?;
    // Slots of this database first (DROP DATABASE refuses while they exist).
    for _ in 0..100 {
        let rows = admin
            .query(
                "SELECT slot_name::text, active FROM pg_replication_slots WHERE database = $1",
                &[&env.db.name],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let name: String = r.get(0);
            let active: bool = r.get(1);
            if !active {
                let _ = admin
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            env.db.name
        ))
        .await
        .context("drop the benchmark database")?;
    Ok(())
}
