//! One backlog run: the same backlog drained by the decoding limit, the relay streaming it, the
//! relay catching up through the SQL interface, and Debezium (each from its own slot or copy of
//! one), with the relay's time, CPU and memory and the Postgres cluster's CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use outbox_relay_dev::{Kafka, RelayConfig};

use crate::debezium::Connect;
use crate::helpers::{
    create_relay_slot, create_slot_for, drop_env, log, new_env, relay_cfg, relay_topics,
    start_relay, stop_relay,
};
use crate::limit::pg_recvlogical;
use crate::observers::{count_all, watch_checkpoint};
use crate::opts::Opts;
use crate::procstat::{broker_cpu_secs, postgres_cpu_secs, ProcStat};
use crate::report::Report;
use crate::startup::{CATCHING_UP, STREAMING};
use crate::writers::{write_backlog, Backlog};
use crate::{PARTITIONS, TYPES};

/// What the relay logs when it opens the catch-up reader (and, in its session, when it decides to).
pub const CATCHUP_STARTED: &str = "catching up through the SQL interface";
/// What it logs when the catch-up reader could not open and it streams instead.
const CATCHUP_FAILED: &str = "cannot catch up through the SQL interface";
/// What it logs when the catch-up read reached the WAL end and it streams again.
pub const CAUGHT_UP: &str = "caught up: streaming from the slot again";

/// How the relay reads a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// `catchup.mode = "off"`: the walsender streams the whole backlog.
    Streaming,
    /// `catchup.mode = "auto"` with `catchup.min_lag_mb = 1`: the backlog through
    /// `pg_logical_slot_get_binary_changes` on a temporary copy of the slot, then streaming (what
    /// a user's relay does after an outage).
    CatchUp,
}

impl Reading {
    pub fn configure(self, cfg: &mut RelayConfig) {
        match self {
            Reading::Streaming => {
                cfg.set("catchup.mode", "off");
            }
            Reading::CatchUp => {
                cfg.set("catchup.mode", "auto");
                cfg.set("catchup.min_lag_mb", 1i64);
            }
        }
    }

    /// The start-up line this reading logs.
    fn startup_line(self) -> &'static str {
        match self {
            Reading::Streaming => STREAMING,
            Reading::CatchUp => CATCHING_UP,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reading::Streaming => "relay (streaming)",
            Reading::CatchUp => "relay (catch-up)",
        }
    }
}

/// Which readers drain the backlog of one run (Debezium: when a Connect worker is passed).
#[derive(Debug, Clone, Copy)]
pub struct Drains {
    /// pg_recvlogical on a copy of the streaming relay's slot.
    pub limit: bool,
    /// The relay with `catchup.mode = "off"`.
    pub streaming: bool,
    /// A second relay (own slot, topics, checkpoint topic) with catch-up on.
    pub catch_up: bool,
}

pub struct DrainResult {
    pub relay_secs: f64,
    /// Spawn to the start-up line (streaming or catching up), inside `relay_secs`.
    pub startup_secs: Option<f64>,
    pub relay: ProcStat,
    /// CPU seconds of the whole Postgres cluster from spawn to the end of the drain.
    pub postgres_cpu: Option<f64>,
    /// CPU seconds of the Kafka broker in the same window.
    pub broker_cpu: Option<f64>,
    /// Catch-up: the relay's own time to switch to streaming (`switch_ms` of its caught-up line).
    pub switch_ms: Option<f64>,
}

/// Relay drain of a backlog already written: time from spawn until the covering checkpoint is
/// visible to a read_committed consumer; the relay's /proc figures at that moment. The relay's
/// log must show it read the way `reading` says (a catch-up that fell back to streaming, or a
/// streaming relay that caught up, fails the run); a catch-up must switch to streaming after it.
pub async fn relay_drain(
    opts: &Opts,
    cfg: &RelayConfig,
    backlog: Backlog,
    rows: i64,
    reading: Reading,
) -> Result<DrainResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let topic = cfg.checkpoint_topic.clone();
    let past = backlog.last_txn_lsn;
    let stop2 = stop.clone();
    let deadline = Duration::from_secs(1800);
    let watcher = std::thread::spawn(move || watch_checkpoint(topic, past, deadline, stop2));
    // Let the watcher read the old checkpoints first (they are before `past` anyway).
    let mut cfg = cfg.clone();
    reading.configure(&mut cfg);
    cfg.set(
        "log.level",
        format!(
            "{},outbox_relay::source::catchup=info,outbox_relay::relay::pipeline=info",
            crate::startup::LOG_FILTER
        ),
    );
    let pg0 = postgres_cpu_secs();
    let broker0 = broker_cpu_secs();
    let t0 = Instant::now();
    let mut relay = start_relay(opts, &cfg).await?;
    let pid = relay.pid();
    let mut last = ProcStat::read(pid).unwrap_or_default();
    let mut startup_secs = None;
    let done = loop {
        if startup_secs.is_none()
            && crate::startup::parse_line(&relay.logs(), reading.startup_line()).is_some()
        {
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
    let postgres_cpu = pg0.zip(postgres_cpu_secs()).map(|(a, b)| b - a);
    let broker_cpu = broker0.zip(broker_cpu_secs()).map(|(a, b)| b - a);
    let relay_secs = done.duration_since(t0).as_secs_f64();
    let logs = relay.logs();
    let startup_line = logs.lines().find(|l| l.contains("start-up done:"));
    let read_as_asked = match reading {
        Reading::Streaming => {
            startup_line.is_some_and(|l| l.contains(STREAMING)) && !logs.contains(CATCHUP_STARTED)
        }
        Reading::CatchUp => {
            startup_line.is_some_and(|l| l.contains(CATCHING_UP))
                && logs.contains(CATCHUP_STARTED)
                && !logs.contains(CATCHUP_FAILED)
        }
    };
    if !read_as_asked {
        let _ = stop_relay(relay).await;
        bail!(
            "{} drain: the relay did not read the backlog that way (start-up line {:?}; \"{CATCHUP_STARTED}\" {}in its log); logs:\n{logs}",
            reading.label(),
            startup_line.unwrap_or("missing"),
            if logs.contains(CATCHUP_STARTED) { "" } else { "not " }
        );
    }
    // A catch-up ends by streaming again (not timed: the drain is done when Kafka holds it all).
    let mut switch_ms = None;
    if reading == Reading::CatchUp {
        let t = Instant::now();
        loop {
            let logs = relay.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(CAUGHT_UP)) {
                switch_ms = line
                    .split_once("switch_ms=")
                    .and_then(|(_, v)| v.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|v| v.parse().ok());
                break;
            }
            if !relay.is_running() || t.elapsed() > Duration::from_secs(60) {
                let _ = stop_relay(relay).await;
                bail!("relay (catch-up) drain: the relay did not log \"{CAUGHT_UP}\" within 60 s of the drain; logs:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_relay(relay).await?;
    // Exactly-once count (not timed).
    let n = tokio::task::spawn_blocking({
        let topics = relay_topics(&cfg);
        move || count_all(topics, rows as u64)
    })
    .await??;
    if n != rows as u64 {
        log(format!(
            "WARNING: {} topics hold {n} records for {rows} rows (read_committed)",
            reading.label()
        ));
    }
    Ok(DrainResult {
        relay_secs,
        startup_secs,
        relay: last,
        postgres_cpu,
        broker_cpu,
        switch_ms,
    })
}

/// The figures of one relay drain, named after `p` ("relay" streaming, "relay catch-up").
fn record(
    report: &mut Report,
    section: &str,
    reading: Reading,
    rows: i64,
    d: &DrainResult,
    limit_eps: Option<f64>,
    limit_cpu_per_m: Option<f64>,
) -> f64 {
    let p = match reading {
        Reading::Streaming => "relay",
        Reading::CatchUp => "relay catch-up",
    };
    let m = rows as f64 / 1e6;
    let eps = rows as f64 / d.relay_secs;
    let per_m = d.relay.cpu_secs() / m;
    let cpu = |c: Option<f64>| {
        c.map(|c| format!("{c:.2} CPU s ({:.2} per M)", c / m))
            .unwrap_or_else(|| "CPU n/a".into())
    };
    log(format!(
        "{section}: {} drained in {:.2} s ({eps:.0} events/s), peak RSS {:.1} MB, {:.2} CPU s ({per_m:.2} per M); Postgres {}; broker {}",
        reading.label(),
        d.relay_secs,
        d.relay.hwm_mb(),
        d.relay.cpu_secs(),
        cpu(d.postgres_cpu),
        cpu(d.broker_cpu)
    ));
    report.add(section, &format!("{p} drain"), "events/s", eps);
    report.add(section, &format!("{p} drain time"), "s", d.relay_secs);
    if let Some(st) = d.startup_secs {
        let past = rows as f64 / (d.relay_secs - st).max(1e-3);
        log(format!(
            "{section}: {} start-up {:.0} ms; past start-up {past:.0} events/s",
            reading.label(),
            st * 1e3
        ));
        let startup = match reading {
            Reading::Streaming => "relay start-up (spawn to streaming)",
            Reading::CatchUp => "relay catch-up start-up (spawn to catching up)",
        };
        report.add(section, startup, "ms", st * 1e3);
        report.add(
            section,
            &format!("{p} drain past start-up"),
            "events/s",
            past,
        );
        if let Some(l) = limit_eps {
            report.add(
                section,
                &format!("{p} past start-up / limit"),
                "ratio",
                past / l,
            );
        }
    }
    report.add(section, &format!("{p} peak RSS"), "MB", d.relay.hwm_mb());
    report.add(section, &format!("{p} CPU per 1M events"), "CPU s", per_m);
    // Issue 16's CPU target: the relay's own CPU per event beside pg_recvlogical's own (the
    // client process alone, not the walsender) for the same stream, in the same run.
    if let Some(l) = limit_cpu_per_m.filter(|l| *l > 0.0) {
        report.add(
            section,
            &format!("{p} CPU / pg_recvlogical CPU"),
            "ratio",
            per_m / l,
        );
    }
    let who = match reading {
        Reading::Streaming => "relay streaming",
        Reading::CatchUp => "relay catch-up",
    };
    for (server, c) in [("Postgres", d.postgres_cpu), ("broker", d.broker_cpu)] {
        if let Some(c) = c {
            report.add(
                section,
                &format!("{server} CPU per 1M events ({who})"),
                "CPU s",
                c / m,
            );
        }
    }
    if let Some(ms) = d.switch_ms {
        log(format!(
            "{section}: relay (catch-up) switched to streaming in {ms:.0} ms"
        ));
        report.add(section, "relay catch-up switch to streaming", "ms", ms);
    }
    if let Some(l) = limit_eps {
        report.add(section, &format!("{p} / limit"), "ratio", eps / l);
    }
    eps
}

pub async fn backlog_run(
    opts: &Opts,
    connect: Option<&Connect>,
    report: &mut Report,
    section: &str,
    rows: i64,
    txn: i64,
    drains: Drains,
) -> Result<()> {
    let env = new_env().await?;
    create_relay_slot(opts, &env).await?;
    // The catch-up relay: its own slot (created before the backlog, like the streaming relay's),
    // topics and checkpoint topic on the same database, so both drain the same backlog.
    let catch_up_cfg = if drains.catch_up {
        let cfg = relay_cfg(&env.db).await?;
        create_slot_for(opts, &cfg).await?;
        Some(cfg)
    } else {
        None
    };
    let admin = env.db.client().await?;
    let limit_slot = format!("lim_{}", env.cfg.suffix);
    let dbz_slot = format!("dbz_{}", env.cfg.suffix);
    if drains.limit {
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

    let m = rows as f64 / 1e6;
    let mut limit_eps = None;
    let mut limit_cpu_per_m = None;
    if drains.limit {
        let pg0 = postgres_cpu_secs();
        let (secs, st) = pg_recvlogical(&env.db, &limit_slot, backlog.end_lsn).await?;
        let pg_cpu = pg0.zip(postgres_cpu_secs()).map(|(a, b)| b - a);
        let eps = rows as f64 / secs;
        log(format!(
            "{section}: pg_recvlogical drained in {secs:.2} s ({eps:.0} rows/s, {:.2} CPU s); Postgres {}",
            st.cpu_secs(),
            pg_cpu
                .map(|c| format!("{c:.2} CPU s ({:.2} per M)", c / m))
                .unwrap_or_else(|| "CPU n/a".into())
        ));
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&limit_slot])
            .await?;
        report.add(section, "decoding limit (pg_recvlogical)", "events/s", eps);
        if let Some(c) = pg_cpu {
            report.add(
                section,
                "Postgres CPU per 1M events (pg_recvlogical)",
                "CPU s",
                c / m,
            );
        }
        report.add(
            section,
            "pg_recvlogical CPU per 1M events",
            "CPU s",
            st.cpu_secs() / m,
        );
        limit_eps = Some(eps);
        limit_cpu_per_m = Some(st.cpu_secs() / m);
    }

    let mut stream_eps = None;
    if drains.streaming {
        let d = relay_drain(opts, &env.cfg, backlog, rows, Reading::Streaming).await?;
        stream_eps = Some(record(
            report,
            section,
            Reading::Streaming,
            rows,
            &d,
            limit_eps,
            limit_cpu_per_m,
        ));
    }
    let mut catch_up_eps = None;
    if let Some(cfg) = &catch_up_cfg {
        let d = relay_drain(opts, cfg, backlog, rows, Reading::CatchUp).await?;
        let eps = record(
            report,
            section,
            Reading::CatchUp,
            rows,
            &d,
            limit_eps,
            limit_cpu_per_m,
        );
        if let Some(s) = stream_eps {
            report.add(section, "relay catch-up / streaming", "ratio", eps / s);
        }
        catch_up_eps = Some(eps);
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
                    dr.cpu_secs / m,
                );
                if let Some(eps) = stream_eps {
                    report.add(section, "relay / Debezium", "ratio", eps / deps);
                }
                if let Some(eps) = catch_up_eps {
                    report.add(section, "relay catch-up / Debezium", "ratio", eps / deps);
                }
            }
            Err(e) => report.note(format!("{section}: Debezium run failed: {e:#}")),
        }
    }
    drop(admin);
    drop_env(env).await?;
    Ok(())
}
