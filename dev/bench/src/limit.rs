//! The decoding limit: `pg_recvlogical` draining a copy of the relay's slot to a position, the
//! fastest any logical replication client can read the same WAL.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay_dev::{Lsn, Postgres, TestDb};

use crate::procstat::ProcStat;

pub async fn pg_recvlogical(db: &TestDb, slot: &str, endpos: Lsn) -> Result<(f64, ProcStat)> {
    let pg = Postgres::shared();
    // The machine's client tools: a pinned server build (OUTBOX_RELAY_TEST_PG) has none.
    let bin = pg.client_bin_dir()?.join("pg_recvlogical");
    let t = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .env("PGPASSWORD", pg.superuser_password())
        .args([
            "-h",
            pg.host(),
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-d",
            &db.name,
            "-S",
            slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=outbox_pub",
        ])
        .args(["-E", &endpos.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let pid = child.id().context("pg_recvlogical pid")? as i32;
    // Sample its CPU just before it exits: poll while it runs.
    let mut last = ProcStat::read(pid).unwrap_or_default();
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Ok(s) = ProcStat::read(pid) { last = s; }
                if t.elapsed() > Duration::from_secs(1800) {
                    child.kill().await?;
                    bail!("pg_recvlogical did not reach {endpos} in 30 min");
                }
            }
        }
    };
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut err).await;
        }
        bail!("pg_recvlogical failed ({status}): {err}");
    }
    Ok((secs, last))
}
