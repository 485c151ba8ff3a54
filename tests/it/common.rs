//! Helpers shared by the relay test modules: the relay binary, a per-test database + config +
//! topics, starting a relay and waiting for readiness, writer specs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::{Kafka, Postgres, RelayConfig, RelayProcess, TestDb, WriteSpec};

pub const READY: &str = "outbox-relay started";

pub fn bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_outbox-relay")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_outbox-relay").map(PathBuf::from))
        .unwrap_or_else(|| find_relay_bin().expect("relay binary"))
}

/// A database, a config with its own slot and topics, and the topics created.
pub async fn setup(types: &[&str]) -> Result<(TestDb, RelayConfig)> {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    let cfg = RelayConfig::new(pg, &db, kafka);
    cfg.create_topics(kafka, types, 3).await?;
    Ok((db, cfg))
}

pub fn topics(cfg: &RelayConfig, types: &[&str]) -> Vec<String> {
    types.iter().map(|t| cfg.topic_for(t)).collect()
}

pub async fn start(cfg: &RelayConfig) -> Result<RelayProcess> {
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    relay
        .wait_for_log(READY, Duration::from_secs(60))
        .await
        .context("relay did not become ready")?;
    Ok(relay)
}

pub fn spec(total: usize, types: &[&str], sizes: &[usize], writers: usize) -> WriteSpec {
    WriteSpec {
        writers,
        total,
        txn_sizes: sizes.to_vec(),
        keys_per_writer: 50,
        aggregate_types: types.iter().map(|s| s.to_string()).collect(),
        payload_bytes: 300,
        batched: true,
    }
}

/// VmHWM of a process, in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
