//! Benchmark command of outbox-relay (issue 6): backlog drain (streaming, and catching up through
//! the SQL interface) against the decoding limit (`pg_recvlogical`) and Debezium (PostgreSQL
//! connector + Outbox Event Router on Kafka Connect, exactly-once source), steady-state latency,
//! footprint and scaling, all on the dev harness's private Postgres and Kafka, in one run on one
//! machine.
//!
//! Run it through `dev/bench.sh [--quick]`; it prints a Markdown table and writes the same figures
//! as JSON (`target/bench/results.json`, or `--out <file>`). This file is the command line and the
//! order of the sections; each section is a module.

mod backlog;
mod debezium;
mod floor;
mod helpers;
mod limit;
mod messages;
mod observers;
mod opts;
mod output;
mod procstat;
mod report;
mod scaling;
mod startup;
mod steady;
mod writers;

use std::sync::{Arc, Mutex};

use anyhow::Result;
use outbox_relay_dev::{Kafka, Postgres};

use crate::backlog::{backlog_run, Drains};
use crate::debezium::Connect;
use crate::helpers::{log, percentile, started};
use crate::opts::{Only, Opts};
use crate::output::{markdown, to_json};
use crate::report::Report;
use crate::scaling::{human, large_txn_run, scaling_run};
use crate::steady::{steady_debezium, steady_relay};

const READY: &str = "outbox-relay started";
const TYPES: [&str; 3] = ["booking", "car", "customer"];
const AGGREGATES: i64 = 10_000;
const PARTITIONS: i32 = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // The monolith's writer cost, table vs message: Postgres only, no relay (messages.rs).
    if std::env::args().any(|a| a == "--messages-writer") {
        return messages::main().await;
    }
    let opts = Opts::parse()?;
    let t0 = *started();
    let load0 = loadavg();
    log(format!(
        "relay binary {}; {} mode",
        opts.relay_bin.display(),
        if opts.quick { "quick" } else { "full" }
    ));
    tokio::task::spawn_blocking(|| {
        Postgres::shared();
        Kafka::shared();
    })
    .await?;
    let report = Arc::new(Mutex::new(Report::default()));
    let res = run(&opts, &report).await;
    let report = Arc::try_unwrap(report)
        .map_err(|_| anyhow::anyhow!("report still shared"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("report poisoned"))?;
    let mut report = report;
    if let Err(e) = &res {
        report.note(format!("the run stopped early: {e:#}"));
    }
    report.note(format!(
        "load average at start {} / at end {} (other processes on the machine skew every figure)",
        load0,
        loadavg()
    ));
    let total = t0.elapsed();
    let md = markdown(&opts, &report, total);
    println!("{md}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &opts.out,
        serde_json::to_string_pretty(&to_json(&opts, &report, total))?,
    )?;
    let md_path = opts.out.with_extension("md");
    std::fs::write(&md_path, &md)?;
    log(format!(
        "wrote {} and {}",
        opts.out.display(),
        md_path.display()
    ));
    res
}

/// A relay drain that is not recorded, before the measured runs: the broker is a fresh JVM, and
/// its JIT compilers took ~22% of this 2-core machine during the first drain (perf: C2/C1
/// CompilerThreads), which skewed whichever run came first.
async fn warm_up(opts: &Opts, rows: i64) -> Result<()> {
    log(format!(
        "== warm-up (not recorded): a relay drain of {rows} rows"
    ));
    let mut scratch = Report::default();
    let drains = Drains {
        limit: false,
        streaming: true,
        catch_up: false,
    };
    backlog_run(opts, None, &mut scratch, "warm-up", rows, 100, drains).await
}

/// Section 0: the cost of one bare Kafka transaction (see `floor.rs`), with the relay's
/// way of committing and without it.
async fn floor_run(r: &mut Report) -> Result<()> {
    let s = "0. Kafka transaction floor (librdkafka, 1 record + checkpoint, no relay)";
    for (wait, label) in [
        (false, "commit_transaction at once (rust-rdkafka flush)"),
        (true, "deliveries awaited first, as the relay"),
    ] {
        let ms = floor::kafka_txn_cycles(200, wait).await?;
        let (p50, p99) = (percentile(&ms, 50.0), percentile(&ms, 99.0));
        log(format!(
            "floor ({label}): commit cycle p50 {p50:.1} ms, p99 {p99:.1} ms"
        ));
        r.add(s, &format!("commit cycle p50 ({label})"), "ms", p50);
        r.add(s, &format!("commit cycle p99 ({label})"), "ms", p99);
    }
    Ok(())
}

/// One section alone (`--floor-only`, `--steady-only`, `--drain-only`, `--catchup-only`,
/// `--startup-only`, `--large-txn-only`).
async fn probe(opts: &Opts, only: Only, r: &mut Report) -> Result<()> {
    match only {
        Only::Floor => floor_run(r).await,
        Only::Startup => startup::startup_run(opts, r).await,
        Only::LargeTxn => {
            let sizes: &[i64] = if opts.quick {
                &[300_000]
            } else {
                &[300_000, 1_000_000]
            };
            for rows in sizes {
                log(format!("== one transaction of {rows} rows"));
                large_txn_run(opts, r, *rows).await?;
            }
            Ok(())
        }
        Only::Steady => {
            warm_up(opts, 100_000).await?;
            steady_relay(opts, r).await
        }
        Only::Drain | Only::CatchUp => {
            warm_up(opts, 100_000).await?;
            let b = "1. backlog drain, 100-row txns";
            let one = "1. backlog drain, 1-row txns";
            let drains = Drains {
                limit: true,
                streaming: true,
                catch_up: only == Only::CatchUp,
            };
            for i in 0..opts.runs {
                log(format!(
                    "== backlog {} rows, 100-row txns, run {}/{}",
                    opts.rows_batched,
                    i + 1,
                    opts.runs
                ));
                backlog_run(opts, None, r, b, opts.rows_batched, 100, drains).await?;
            }
            for i in 0..opts.runs {
                log(format!(
                    "== backlog {} rows, 1-row txns, run {}/{}",
                    opts.rows_single,
                    i + 1,
                    opts.runs
                ));
                backlog_run(opts, None, r, one, opts.rows_single, 1, drains).await?;
            }
            Ok(())
        }
    }
}

async fn run(opts: &Opts, report: &Mutex<Report>) -> Result<()> {
    if let Some(only) = opts.only {
        let mut r = Report::default();
        let res = probe(opts, only, &mut r).await;
        if only == Only::CatchUp {
            r.notes.push(catch_up_note());
        }
        *lock(report) = r;
        return res;
    }
    let connect = if opts.debezium {
        match Connect::start().await {
            Ok(c) => Some(c),
            Err(e) => {
                lock(report).note(format!("Debezium/Kafka Connect could not start: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let mut r = Report::default();
    let b = "1. backlog drain, 100-row txns";
    let one = "1. backlog drain, 1-row txns";
    let drains = Drains {
        limit: true,
        streaming: true,
        catch_up: true,
    };
    let result: Result<()> = async {
        warm_up(opts, opts.rows_batched.min(300_000)).await?;
        for i in 0..opts.runs {
            log(format!(
                "== Kafka transaction floor, run {}/{}",
                i + 1,
                opts.runs
            ));
            floor_run(&mut r).await?;
        }
        log("== start-up (restarts on an existing slot)");
        startup::startup_run(opts, &mut r).await?;
        for i in 0..opts.runs {
            log(format!(
                "== backlog {} rows, 100-row txns, run {}/{}",
                opts.rows_batched,
                i + 1,
                opts.runs
            ));
            backlog_run(
                opts,
                connect.as_ref(),
                &mut r,
                b,
                opts.rows_batched,
                100,
                drains,
            )
            .await?;
        }
        for i in 0..opts.runs {
            log(format!(
                "== backlog {} rows, 1-row txns, run {}/{}",
                opts.rows_single,
                i + 1,
                opts.runs
            ));
            backlog_run(
                opts,
                connect.as_ref(),
                &mut r,
                one,
                opts.rows_single,
                1,
                drains,
            )
            .await?;
        }
        for i in 0..opts.runs {
            log(format!(
                "== steady state, relay, run {}/{}",
                i + 1,
                opts.runs
            ));
            steady_relay(opts, &mut r).await?;
            if let Some(c) = connect.as_ref() {
                log(format!(
                    "== steady state, Debezium, run {}/{}",
                    i + 1,
                    opts.runs
                ));
                if let Err(e) = steady_debezium(opts, c, &mut r).await {
                    r.note(format!("steady Debezium run failed: {e:#}"));
                }
            }
        }
        // Scaling: the 1M point is the 100-row backlog runs above.
        let s = "6. scaling (relay, 100-row txns)";
        let label = human(opts.rows_batched);
        for (name, src) in [
            (format!("peak RSS at {label}"), "relay peak RSS"),
            (format!("CPU at {label}"), "relay CPU per 1M events"),
            (format!("drain at {label}"), "relay drain"),
        ] {
            if let Some(f) = r.get(b, src).cloned() {
                for v in f.runs {
                    let v = if src == "relay CPU per 1M events" {
                        v * opts.rows_batched as f64 / 1e6
                    } else {
                        v
                    };
                    r.add(s, &name, f.unit.replace(" per 1M events", "").as_str(), v);
                }
            }
        }
        for (rows, runs) in &opts.scaling {
            for i in 0..*runs {
                log(format!("== scaling {rows} rows, run {}/{runs}", i + 1));
                scaling_run(opts, &mut r, *rows).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Some(c) = connect {
        c.stop().await;
    }
    let mut rep = lock(report);
    let notes = std::mem::take(&mut rep.notes);
    *rep = r;
    rep.notes.splice(0..0, notes);
    if opts.rows_single < opts.rows_batched {
        rep.notes.push(format!(
            "1-row-transaction backlog: {} rows (not {}) to keep the run short",
            opts.rows_single, opts.rows_batched
        ));
    }
    rep.notes.push("before the recorded runs, one relay drain (not recorded) warms the broker JVM and Postgres; Debezium's Connect JVM gets no separate warm-up beyond its first run (medians of 3 runs).".into());
    rep.notes.push("relay drain time: from spawning the relay (start-up included) until a read_committed consumer of its checkpoint topic sees a checkpoint past the last transaction; the event topics are then counted (read_committed) to check every row arrived once. pg_recvlogical: from spawn until it exits at --endpos. Debezium: from PUT of the connector config until a read_committed consumer counted every record.".into());
    rep.notes.push(catch_up_note());
    rep.notes.push("latency: pg_commit_ts header (Postgres commit time) to read_committed consumer receipt for the relay; Debezium's records carry no commit timestamp, so both are also measured from the writer's COMMIT return (same clock) for a like-for-like comparison.".into());
    result
}

/// What the catch-up rows of section 1 are (the full run and `--catchup-only`).
fn catch_up_note() -> String {
    "backlog drain: \"relay\" streams the whole backlog (catchup.mode = \"off\"); \"relay catch-up\" is a second relay (own slot, made before the backlog, own topics and checkpoint topic) on the same backlog with catchup.mode = \"auto\" and catchup.min_lag_mb = 1: it reads the backlog through pg_logical_slot_get_binary_changes on a temporary copy of its slot, then streams (each run checks its log for the catching-up and caught-up lines and fails without them), timed the same way; its switch to streaming is the relay's own switch_ms. Postgres CPU: every process of the cluster (postmaster, backends, walsenders, background workers, reaped children) from spawn to the end of the drain; broker CPU: the Kafka broker in the same window (both share the 2 cores with the relay).".into()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn lock(m: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
