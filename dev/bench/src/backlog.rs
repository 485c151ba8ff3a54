//! One backlog run: the same backlog drained by the decoding limit, the relay and Debezium (each
//! from its own copy of the slot), with the relay's time, CPU and memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use outbox_relay_dev::Kafka;

use crate::debezium::Connect;
use crate::helpers::{
    create_relay_slot, drop_env, log, new_env, relay_topics, start_relay, stop_relay, Env,
};
use crate::limit::pg_recvlogical;
use crate::observers::{count_all, watch_checkpoint};
use crate::opts::Opts;
use crate::procstat::ProcStat;
use crate::report::Report;
use crate::writers::{write_backlog, Backlog};
use crate::{PARTITIONS, TYPES};

pub struct DrainResult {
    pub relay_secs: f64,
    /// Spawn to streaming (the relay's start-up line), inside `relay_secs`.
    pub startup_secs: Option<f64>,
    pub relay: ProcStat,
}

/// Relay drain of a backlog already written: time from spawn until the covering checkpoint is
/// visible to a read_committed consumer; the relay's /proc figures at that moment.
pub async fn relay_drain(
    opts: &Opts,
    env: &Env,
    backlog: Backlog,
    rows: i64,
) -> Result<DrainResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let topic = env.cfg.checkpoint_topic.clone();
    let past = backlog.last_txn_lsn;
    let stop2 = stop.clone();
    let deadline = Duration::from_secs(1800);
    let watcher = std::thread::spawn(move || watch_checkpoint(topic, past, deadline, stop2));
    // Let the watcher read the old checkpoints first (they are before `past` anyway).
    let mut cfg = env.cfg.clone();
    cfg.set("log.level", crate::startup::LOG_FILTER);
    let t0 = Instant::now();
    let mut relay = start_relay(opts, &cfg).await?;
    let pid = relay.pid();
    let mut last = ProcStat::read(pid).unwrap_or_default();
    let mut startup_secs = None;
    let done = loop {
        if startup_secs.is_none() && crate::startup::parse(&relay.logs()).is_some() {
            startup_secs = Some(t0.elapsed().as_secs_f64());
        }
        if !relay.is_running() {
            stop.store(true, Ordering::Relaxed);
            bail!("the relay exited during the drain; logs:\n{}", relay.logs());
        }
        if watcher.is_finished() {
            break watcher
                .join()
                .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
        }
        if let Ok(s) = ProcStat::read(pid) {
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            bail!("relay drain: {e:#}; relay logs:\n{}", relay.logs());
        }
    };
    if let Ok(s) = ProcStat::read(pid) {
        last = s;
    }
    let relay_secs = done.duration_since(t0).as_secs_f64();
    stop_relay(relay).await?;
    // Exactly-once count (not timed).
    let n = tokio::task::spawn_blocking({
        let topics = relay_topics(&env.cfg);
        move || count_all(topics, rows as u64)
    })
    .await??;
    if n != rows as u64 {
        log(format!(
            "WARNING: relay topics hold {n} records for {rows} rows (read_committed)"
        ));
    }
    Ok(DrainResult {
        relay_secs,
        startup_secs,
        relay: last,
    })
}

pub async fn backlog_run(
    opts: &Opts,
    connect: Option<&Connect>,
    report: &mut Report,
    section: &str,
    rows: i64,
    txn: i64,
    with_limit: bool,
) -> Result<()> {
    let env = new_env().await?;
    create_relay_slot(opts, &env).await?;
    let admin = env.db.client().await?;
    let limit_slot = format!("lim_{}", env.cfg.suffix);
    let dbz_slot = format!("dbz_{}", env.cfg.suffix);
    if with_limit {
        admin
            .execute(
                "SELECT pg_copy_logical_replication_slot($1, $2)",
                &[&env.cfg.slot, &limit_slot],
            )
            .await?;
    }
    if connect.is_some() {
        admin
            .execute(
                "SELECT pg_copy_logical_replication_slot($1, $2)",
                &[&env.cfg.slot, &dbz_slot],
            )
            .await?;
    }
    let t = Instant::now();
    let backlog = write_backlog(&env.db, rows, txn).await?;
    let write_secs = t.elapsed().as_secs_f64();
    log(format!(
        "{section}: wrote {rows} rows in {txn}-row transactions in {write_secs:.1} s ({:.0} rows/s)",
        rows as f64 / write_secs
    ));
    admin.batch_execute("CHECKPOINT").await?;

    let mut limit_eps = None;
    if with_limit {
        let (secs, st) = pg_recvlogical(&env.db, &limit_slot, backlog.end_lsn).await?;
        let eps = rows as f64 / secs;
        log(format!(
            "{section}: pg_recvlogical drained in {secs:.2} s ({eps:.0} rows/s, {:.2} CPU s)",
            st.cpu_secs()
        ));
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&limit_slot])
            .await?;
        report.add(section, "decoding limit (pg_recvlogical)", "events/s", eps);
        limit_eps = Some(eps);
    }

    let d = relay_drain(opts, &env, backlog, rows).await?;
    let eps = rows as f64 / d.relay_secs;
    let per_m = d.relay.cpu_secs() / (rows as f64 / 1e6);
    log(format!(
        "{section}: relay drained in {:.2} s ({eps:.0} events/s), peak RSS {:.1} MB, {:.2} CPU s ({per_m:.2} per M)",
        d.relay_secs,
        d.relay.hwm_mb(),
        d.relay.cpu_secs()
    ));
    report.add(section, "relay drain", "events/s", eps);
    report.add(section, "relay drain time", "s", d.relay_secs);
    if let Some(st) = d.startup_secs {
        let past = rows as f64 / (d.relay_secs - st).max(1e-3);
        log(format!(
            "{section}: relay start-up {:.0} ms; past start-up {past:.0} events/s",
            st * 1e3
        ));
        report.add(
            section,
            "relay start-up (spawn to streaming)",
            "ms",
            st * 1e3,
        );
        report.add(section, "relay drain past start-up", "events/s", past);
        if let Some(l) = limit_eps {
            report.add(section, "relay past start-up / limit", "ratio", past / l);
        }
    }
    report.add(section, "relay peak RSS", "MB", d.relay.hwm_mb());
    report.add(section, "relay CPU per 1M events", "CPU s", per_m);
    if let Some(l) = limit_eps {
        report.add(section, "relay / limit", "ratio", eps / l);
    }

    if let Some(connect) = connect {
        let topic_prefix = format!("d_{}", env.cfg.suffix);
        let topics: Vec<String> = TYPES
            .iter()
            .map(|t| format!("{topic_prefix}.{t}"))
            .collect();
        for t in &topics {
            Kafka::shared().create_topic(t, PARTITIONS, &[]).await?;
        }
        let r = connect
            .drain(&env.db, &dbz_slot, &topic_prefix, topics, rows as u64)
            .await;
        match r {
            Ok(dr) => {
                let deps = rows as f64 / dr.secs;
                log(format!(
                    "{section}: Debezium drained in {:.2} s ({deps:.0} events/s), JVM peak RSS {:.0} MB, {:.1} CPU s",
                    dr.secs,
                    dr.hwm_mb,
                    dr.cpu_secs
                ));
                report.add(section, "Debezium drain", "events/s", deps);
                report.add(section, "Debezium JVM peak RSS", "MB", dr.hwm_mb);
                report.add(
                    section,
                    "Debezium CPU per 1M events",
                    "CPU s",
                    dr.cpu_secs / (rows as f64 / 1e6),
                );
                report.add(section, "relay / Debezium", "ratio", eps / deps);
            }
            Err(e) => report.note(format!("{section}: Debezium run failed: {e:#}")),
        }
    }
    drop(admin);
    drop_env(env).await?;
    Ok(())
}
