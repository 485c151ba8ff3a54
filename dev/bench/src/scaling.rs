//! Scaling: the relay's drain, CPU and peak memory as the backlog grows, and with one Postgres
//! transaction far past `batch.split_events` (published in several Kafka transactions). Both
//! stream (`catchup.mode = "off"`), as the 1M point taken from the streaming drains does: with the
//! default `auto`, a backlog of 64 MiB of WAL or more would be caught up instead.

use std::time::Instant;

use anyhow::Result;

use crate::backlog::{relay_drain, Reading};
use crate::helpers::{create_relay_slot, drop_env, log, new_env};
use crate::opts::Opts;
use crate::report::Report;
use crate::writers::write_backlog;

pub async fn scaling_run(opts: &Opts, report: &mut Report, rows: i64) -> Result<()> {
    let env = new_env().await?;
    create_relay_slot(opts, &env).await?;
    let t = Instant::now();
    let backlog = write_backlog(&env.db, rows, 100).await?;
    log(format!(
        "scaling: wrote {rows} rows in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let d = relay_drain(opts, &env.cfg, backlog, rows, Reading::Streaming).await?;
    let label = human(rows);
    log(format!(
        "scaling {label}: {:.2} s, RSS {:.1} MB, CPU {:.2} s",
        d.relay_secs,
        d.relay.hwm_mb(),
        d.relay.cpu_secs()
    ));
    let s = "6. scaling (relay, 100-row txns)";
    report.add(s, &format!("peak RSS at {label}"), "MB", d.relay.hwm_mb());
    report.add(s, &format!("CPU at {label}"), "CPU s", d.relay.cpu_secs());
    report.add(
        s,
        &format!("drain at {label}"),
        "events/s",
        rows as f64 / d.relay_secs,
    );
    drop_env(env).await
}

/// One Postgres transaction of `rows` rows, drained by a relay with the default `split_events`:
/// its peak RSS shows whether a huge transaction stays bounded (the relay never holds it whole).
pub async fn large_txn_run(opts: &Opts, report: &mut Report, rows: i64) -> Result<()> {
    let env = new_env().await?;
    create_relay_slot(opts, &env).await?;
    let t = Instant::now();
    let backlog = write_backlog(&env.db, rows, rows).await?;
    log(format!(
        "large transaction: wrote {rows} rows in one transaction in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let d = relay_drain(opts, &env.cfg, backlog, rows, Reading::Streaming).await?;
    let label = human(rows);
    log(format!(
        "large transaction {label}: {:.2} s, RSS {:.1} MB, CPU {:.2} s",
        d.relay_secs,
        d.relay.hwm_mb(),
        d.relay.cpu_secs()
    ));
    let s = "7. one Postgres transaction (split into Kafka transactions)";
    report.add(
        s,
        &format!("peak RSS, {label} rows"),
        "MB",
        d.relay.hwm_mb(),
    );
    report.add(
        s,
        &format!("drain, {label} rows"),
        "events/s",
        rows as f64 / d.relay_secs,
    );
    drop_env(env).await
}

pub fn human(n: i64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
