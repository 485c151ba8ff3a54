//! Benchmark command of outbox-relay (issue 6): backlog drain against the decoding limit
//! (`pg_recvlogical`) and Debezium (PostgreSQL connector + Outbox Event Router on Kafka Connect,
//! exactly-once source), steady-state latency, footprint and scaling, all on the dev harness's
//! private Postgres and Kafka, in one run on one machine.
//!
//! Run it through `dev/bench.sh [--quick]`; it prints a Markdown table and writes the same figures
//! as JSON (`target/bench/results.json`, or `--out <file>`).

mod debezium;
mod floor;
mod procstat;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use outbox_relay_dev::util::{random_suffix, repo_root};
use outbox_relay_dev::Lsn;
use outbox_relay_dev::{Kafka, Postgres, RelayConfig, RelayProcess, TestDb};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::debezium::Connect;
use crate::procstat::ProcStat;

const READY: &str = "outbox-relay started";
const TYPES: [&str; 3] = ["booking", "car", "customer"];
const AGGREGATES: i64 = 10_000;
const PARTITIONS: i32 = 3;

// ---------------------------------------------------------------------------------------------
// Options and sizes.

/// The probes: one section without the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    /// The Kafka transaction floor (section 0).
    Floor,
    /// The relay's steady state (section 4), with a per-second latency timeline.
    Steady,
    /// The backlog drains of the relay beside the decoding limit (section 1, no Debezium).
    Drain,
}

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    debezium: bool,
    /// One section alone, for quick before/after checks.
    only: Option<Only>,
    out: PathBuf,
    relay_bin: PathBuf,
    runs: usize,
    rows_batched: i64,
    rows_single: i64,
    steady_rate: u64,
    steady_secs: u64,
    scaling: Vec<(i64, usize)>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut quick = false;
        let mut debezium = true;
        let mut only = None;
        let mut out = None;
        let mut relay_bin = std::env::var_os("OUTBOX_RELAY_BIN").map(PathBuf::from);
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--no-debezium" => debezium = false,
                "--floor-only" => only = Some(Only::Floor),
                "--steady-only" => only = Some(Only::Steady),
                "--drain-only" => only = Some(Only::Drain),
                "--out" => out = Some(PathBuf::from(args.next().context("--out <file>")?)),
                "--relay-bin" => {
                    relay_bin = Some(PathBuf::from(args.next().context("--relay-bin <path>")?))
                }
                "-h" | "--help" => {
                    println!(
                        "usage: outbox-relay-bench [--quick] [--no-debezium] [--floor-only] [--steady-only] [--drain-only] [--out results.json] [--relay-bin path]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        let relay_bin =
            relay_bin.unwrap_or_else(|| repo_root().join("target/release/outbox-relay"));
        if !relay_bin.exists() {
            bail!(
                "relay binary {} not found: cargo build --release --bin outbox-relay (or --relay-bin)",
                relay_bin.display()
            );
        }
        let out = out.unwrap_or_else(|| repo_root().join("target/bench/results.json"));
        Ok(if quick {
            Opts {
                quick,
                debezium,
                only,
                out,
                relay_bin,
                runs: 1,
                rows_batched: 100_000,
                rows_single: 20_000,
                steady_rate: 2_000,
                steady_secs: 30,
                scaling: vec![(20_000, 1), (100_000, 1), (300_000, 1)],
            }
        } else {
            Opts {
                quick,
                debezium,
                only,
                out,
                relay_bin,
                runs: 3,
                rows_batched: 1_000_000,
                rows_single: 200_000,
                steady_rate: 2_000,
                steady_secs: 60,
                // 1M comes from the 100-row drain runs; 3M once (writing it takes a minute).
                scaling: vec![(100_000, 3), (3_000_000, 1)],
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Figures.

#[derive(Debug, Clone)]
struct Figure {
    section: String,
    name: String,
    unit: String,
    runs: Vec<f64>,
}

impl Figure {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.runs.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

#[derive(Debug, Default)]
struct Report {
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    fn add(&mut self, section: &str, name: &str, unit: &str, value: f64) {
        if let Some(f) = self
            .figures
            .iter_mut()
            .find(|f| f.section == section && f.name == name)
        {
            f.runs.push(value);
            return;
        }
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            unit: unit.into(),
            runs: vec![value],
        });
    }

    fn get(&self, section: &str, name: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.section == section && f.name == name)
    }

    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("[bench] note: {s}");
        self.notes.push(s);
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 100.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[bench {:>7.1}s] {}",
        started().elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

fn started() -> &'static Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T.get_or_init(Instant::now)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One database with the relay's config, topics and checkpoint topic.
struct Env {
    db: TestDb,
    cfg: RelayConfig,
}

async fn new_env() -> Result<Env> {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    let mut cfg = RelayConfig::new(pg, &db, kafka);
    cfg.set("admin.listen", "");
    cfg.set("log.level", "warn");
    cfg.create_topics(kafka, &TYPES, PARTITIONS).await?;
    cfg.create_checkpoint_topic(kafka).await?;
    Ok(Env { db, cfg })
}

fn relay_topics(cfg: &RelayConfig) -> Vec<String> {
    TYPES.iter().map(|t| cfg.topic_for(t)).collect()
}

async fn start_relay(opts: &Opts, cfg: &RelayConfig) -> Result<RelayProcess> {
    RelayProcess::spawn(&opts.relay_bin, &cfg.to_toml(), &[])
}

async fn stop_relay(mut relay: RelayProcess) -> Result<()> {
    relay.sigterm()?;
    if relay.wait_exit(Duration::from_secs(60)).await.is_none() {
        relay.kill9().await?;
        bail!("relay did not stop within 60 s after SIGTERM");
    }
    Ok(())
}

/// Waits until `slot` exists and is active (some walsender streams it).
async fn wait_slot_active(db: &TestDb, slot: &str, deadline: Duration) -> Result<()> {
    let client = db.client().await?;
    outbox_relay_dev::postgres::wait_for_slot(&client, slot, deadline, "slot active", |s| s.active)
        .await?;
    Ok(())
}

/// Starts the relay once so it creates its slot and writes its first checkpoint, then stops it.
async fn create_relay_slot(opts: &Opts, env: &Env) -> Result<()> {
    let mut cfg = env.cfg.clone();
    cfg.set("log.level", "info");
    let mut relay = RelayProcess::spawn(&opts.relay_bin, &cfg.to_toml(), &[])?;
    relay
        .wait_for_log(READY, Duration::from_secs(60))
        .await
        .context("relay did not become ready")?;
    stop_relay(relay).await
}

async fn drop_env(env: Env) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Writers.

/// The INSERT of rows `$1..=$2` (one statement, one transaction when autocommitted): 3 aggregate
/// types, 10k aggregates, ~300-byte JSON payloads of incompressible hex.
const INSERT_RANGE: &str = "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) \
     SELECT (ARRAY['booking','car','customer'])[1 + (k % 3)], 'agg-' || k, 'Written', \
            jsonb_build_object('seq', g, 'agg', k, 'pad', \
              md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) || md5((g + 3)::text) || \
              md5((g + 4)::text) || md5((g + 5)::text) || md5((g + 6)::text) || md5((g + 7)::text)) \
     FROM generate_series($1::bigint, $2::bigint) AS g, LATERAL (SELECT (g * 7919) % 10000 AS k) AS x";

/// What a backlog write leaves: the LSN inside the last transaction before its commit (every
/// outbox transaction is published once a checkpoint's resume_lsn passes it) and the WAL end after.
#[derive(Debug, Clone, Copy)]
struct Backlog {
    last_txn_lsn: Lsn,
    end_lsn: Lsn,
}

/// Writes `rows` outbox rows in transactions of `txn` rows over 4 connections, then a last
/// transaction of `txn` rows alone that records its position.
async fn write_backlog(db: &TestDb, rows: i64, txn: i64) -> Result<Backlog> {
    let writers = 4i64;
    let bulk = rows - txn;
    let per = bulk / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let from = w * per;
        let to = if w == writers - 1 { bulk } else { from + per };
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let client = db.client().await?;
            let stmt = client.prepare(INSERT_RANGE).await?;
            if txn == 1 {
                // One-row transactions (autocommit), pipelined 256 deep on the connection.
                let mut g = from;
                while g < to {
                    let end = (g + 256).min(to);
                    let ids: Vec<i64> = (g..end).collect();
                    let (client, stmt) = (&client, &stmt);
                    let futs = ids
                        .iter()
                        .map(|i| async move { client.execute(stmt, &[i, i]).await });
                    futures::future::try_join_all(futs).await?;
                    g = end;
                }
            } else {
                let mut g = from;
                while g < to {
                    let end = (g + txn).min(to);
                    client.execute(&stmt, &[&g, &(end - 1)]).await?;
                    g = end;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(INSERT_RANGE, &[&bulk, &(rows - 1)]).await?;
    let lsn: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    tx.commit().await?;
    let end: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let n: i64 = client
        .query_one("SELECT count(*) FROM public.outbox", &[])
        .await?
        .get(0);
    if n != rows {
        bail!("backlog has {n} rows, expected {rows}");
    }
    Ok(Backlog {
        last_txn_lsn: lsn.parse()?,
        end_lsn: end.parse()?,
    })
}

// ---------------------------------------------------------------------------------------------
// Kafka observers (blocking threads).

fn consumer(read_committed: bool) -> Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", Kafka::shared().bootstrap())
        .set("group.id", format!("bench-{}", random_suffix()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false")
        .create()
        .context("create consumer")?;
    Ok(c)
}

fn assign_all(c: &BaseConsumer, topics: &[String]) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = c.fetch_metadata(Some(t), Duration::from_secs(10))?;
        let topic = md
            .topics()
            .iter()
            .find(|m| m.name() == t)
            .with_context(|| format!("topic {t} not in metadata"))?;
        if topic.partitions().is_empty() {
            bail!("topic {t} has no partitions");
        }
        for p in topic.partitions() {
            tpl.add_partition_offset(t, p.id(), Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    Ok(())
}

/// Follows the relay's checkpoint topic (read_committed) and returns the instant a checkpoint
/// with no partial transaction and `resume_lsn > past` became visible.
fn watch_checkpoint(
    topic: String,
    past: Lsn,
    deadline: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Instant> {
    let c = consumer(true)?;
    assign_all(&c, &[topic])?;
    let start = Instant::now();
    while start.elapsed() < deadline && !stop.load(Ordering::Relaxed) {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let Some(v) = m.payload() else { continue };
                let Ok(j) = serde_json::from_slice::<serde_json::Value>(v) else {
                    continue;
                };
                let resume = j
                    .get("resume_lsn")
                    .and_then(|x| x.as_str())
                    .and_then(|s| s.parse::<Lsn>().ok())
                    .unwrap_or(Lsn::ZERO);
                if resume > past && j.get("partial").is_none_or(|p| p.is_null()) {
                    return Ok(Instant::now());
                }
            }
            Some(Err(e)) => log(format!("checkpoint consumer: {e}")),
            None => {}
        }
    }
    bail!("no checkpoint past {} within {deadline:?}", past)
}

/// Counts records on `topics` (read_committed) until `expected` arrived (returns that instant), or
/// the deadline. `count` is updated live.
fn count_records(
    topics: Vec<String>,
    expected: u64,
    deadline: Duration,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<Option<Instant>> {
    let c = consumer(true)?;
    assign_all(&c, &topics)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < deadline && !stop.load(Ordering::Relaxed) {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(_)) => {
                n += 1;
                count.store(n, Ordering::Relaxed);
                if n >= expected {
                    return Ok(Some(Instant::now()));
                }
            }
            Some(Err(e)) => log(format!("counting consumer: {e}")),
            None => {}
        }
    }
    Ok(None)
}

/// Counts every record on `topics` until `quiet` passes without a new one (after `expected`).
fn count_all(topics: Vec<String>, expected: u64) -> Result<u64> {
    let c = consumer(true)?;
    assign_all(&c, &topics)?;
    let mut n = 0u64;
    let mut last = Instant::now();
    let start = Instant::now();
    loop {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            n += 1;
            last = Instant::now();
        }
        let quiet = if n >= expected { 1 } else { 10 };
        if last.elapsed() > Duration::from_secs(quiet) || start.elapsed() > Duration::from_secs(600)
        {
            return Ok(n);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The decoding limit.

async fn pg_recvlogical(db: &TestDb, slot: &str, endpos: Lsn) -> Result<(f64, ProcStat)> {
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

// ---------------------------------------------------------------------------------------------
// One backlog run: limit, relay, Debezium on the same backlog.

struct DrainResult {
    relay_secs: f64,
    relay: ProcStat,
}

/// Relay drain of a backlog already written: time from spawn until the covering checkpoint is
/// visible to a read_committed consumer; the relay's /proc figures at that moment.
async fn relay_drain(opts: &Opts, env: &Env, backlog: Backlog, rows: i64) -> Result<DrainResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let topic = env.cfg.checkpoint_topic.clone();
    let past = backlog.last_txn_lsn;
    let stop2 = stop.clone();
    let deadline = Duration::from_secs(1800);
    let watcher = std::thread::spawn(move || watch_checkpoint(topic, past, deadline, stop2));
    // Let the watcher read the old checkpoints first (they are before `past` anyway).
    let t0 = Instant::now();
    let mut relay = start_relay(opts, &env.cfg).await?;
    let pid = relay.pid();
    let mut last = ProcStat::read(pid).unwrap_or_default();
    let done = loop {
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
        relay: last,
    })
}

async fn backlog_run(
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

// ---------------------------------------------------------------------------------------------
// Steady state.

/// Writes `rate` one-row transactions per second for `secs`, with client-side ids; returns
/// id -> wall-clock micros when COMMIT returned.
async fn paced_writer(db: &TestDb, rate: u64, secs: u64) -> Result<HashMap<String, i64>> {
    let tasks_n = 4u64;
    let per_task = rate / tasks_n;
    let interval = Duration::from_nanos(1_000_000_000 / per_task);
    let total = per_task * secs;
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for w in 0..tasks_n {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let client = db.client().await?;
            let stmt = client
                .prepare(
                    "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ($1, $2, $3, 'Written', $4::text::jsonb)",
                )
                .await?;
            let mut acks = HashMap::with_capacity(total as usize);
            let start = t0 + interval.mul_f64(w as f64 / tasks_n as f64);
            for i in 0..total {
                tokio::time::sleep_until(start + interval * i as u32).await;
                let id = uuid::Uuid::new_v4();
                let k = (i * tasks_n + w) as i64 * 7919 % AGGREGATES;
                let ty = TYPES[(k % 3) as usize];
                let payload = format!(
                    "{{\"seq\": {i}, \"agg\": {k}, \"pad\": \"{}\"}}",
                    pad_hex(i * tasks_n + w)
                );
                client
                    .execute(&stmt, &[&id, &ty, &format!("agg-{k}"), &payload])
                    .await?;
                acks.insert(id.to_string(), now_micros());
            }
            anyhow::Ok(acks)
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

fn pad_hex(seed: u64) -> String {
    // 256 pseudo-random hex chars (splitmix64), like the backlog's md5 pads.
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut s = String::with_capacity(256);
    for _ in 0..16 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        s.push_str(&format!("{z:016x}"));
    }
    s
}

/// A received record: event id, receipt micros, pg_commit_ts micros if present.
/// (event id, receipt time, pg_commit_ts, Kafka CreateTime: when the relay produced it), in µs.
type Receipt = (String, i64, Option<i64>, i64);

/// Receives records on `topics` (read_committed) until `stop`; id from `id_header`.
fn receive(
    topics: Vec<String>,
    id_header: &'static str,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    warmed: Arc<AtomicBool>,
) -> Result<Vec<Receipt>> {
    let c = consumer(true)?;
    assign_all(&c, &topics)?;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let at = now_micros();
            let mut id = None;
            let mut commit = None;
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    if h.key == id_header {
                        id = v.map(|s| s.trim_matches('"').to_string());
                    } else if h.key == "pg_commit_ts" {
                        commit = v.and_then(parse_rfc3339_micros);
                    }
                }
            }
            if m.key() == Some(b"warmup".as_slice()) {
                warmed.store(true, Ordering::Relaxed);
                continue;
            }
            let produced = m.timestamp().to_millis().unwrap_or(0) * 1000;
            out.push((id.unwrap_or_default(), at, commit, produced));
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(out)
}

/// `2026-11-26T05:00:00.123456Z` -> micros since the epoch (the relay's `pg_commit_ts` form; the
/// same as `outbox_relay::route::parse_rfc3339_micros`, kept here so the bench builds without the
/// relay's library).
fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[19] != b'.'
        || b[26] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000) + us)
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    received: usize,
    sent: usize,
}

fn latencies(mut ms: Vec<f64>, sent: usize) -> Latency {
    ms.sort_by(|a, b| a.total_cmp(b));
    Latency {
        p50: percentile(&ms, 50.0),
        p99: percentile(&ms, 99.0),
        p999: percentile(&ms, 99.9),
        received: ms.len(),
        sent,
    }
}

/// Writes a warm-up row and waits until it is received (the pipeline is streaming), then runs the
/// paced writer and collects receipts until every row arrived (or 30 s after the writer ends).
async fn steady_measure(
    db: &TestDb,
    topics: Vec<String>,
    id_header: &'static str,
    rate: u64,
    secs: u64,
) -> Result<(HashMap<String, i64>, Vec<Receipt>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(AtomicBool::new(false));
    let rx = std::thread::spawn({
        let stop = stop.clone();
        let count = count.clone();
        let warmed = warmed.clone();
        move || receive(topics, id_header, stop, count, warmed)
    });
    // Warm-up rows (key "warmup", not counted) until one arrives: the pipeline streams.
    let client = db.client().await?;
    let t = Instant::now();
    let mut last_insert: Option<Instant> = None;
    while !warmed.load(Ordering::Relaxed) {
        if last_insert.is_none_or(|i| i.elapsed() > Duration::from_secs(2)) {
            client
                .execute(
                    "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('booking', 'warmup', 'Warmup', '{}')",
                    &[],
                )
                .await?;
            last_insert = Some(Instant::now());
        }
        if t.elapsed() > Duration::from_secs(180) || rx.is_finished() {
            stop.store(true, Ordering::Relaxed);
            bail!("no warm-up event arrived within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the last warm-up rows drain before the clock matters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = paced_writer(db, rate, secs).await?;
    let want = acks.len() as u64;
    let t = Instant::now();
    while count.load(Ordering::Relaxed) < want && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok((acks, got))
}

async fn steady_relay(opts: &Opts, report: &mut Report) -> Result<()> {
    let env = new_env().await?;
    let relay = start_relay(opts, &env.cfg).await?;
    wait_slot_active(&env.db, &env.cfg.slot, Duration::from_secs(60)).await?;
    let pid = relay.pid();
    let cpu0 = ProcStat::read(pid)?.cpu_secs();
    let (acks, got) = steady_measure(
        &env.db,
        relay_topics(&env.cfg),
        "event_id",
        opts.steady_rate,
        opts.steady_secs,
    )
    .await?;
    let st = ProcStat::read(pid)?;
    stop_relay(relay).await?;
    let commit_lat: Vec<f64> = got
        .iter()
        .filter(|(id, _, _, _)| acks.contains_key(id))
        .filter_map(|(_, at, c, _)| c.map(|c| (at - c) as f64 / 1000.0))
        .collect();
    let ack_lat: Vec<f64> = got
        .iter()
        .filter_map(|(id, at, _, _)| acks.get(id).map(|a| (at - a) as f64 / 1000.0))
        .collect();
    if opts.only == Some(Only::Steady) {
        // Worst latency per second of the run (by Postgres commit time): start-up or periodic?
        let mut per_sec: std::collections::BTreeMap<i64, (f64, usize)> = Default::default();
        // Split: Postgres commit -> produced by the relay, produced -> received (commit + fetch).
        let mut to_produce: Vec<f64> = Vec::new();
        let mut to_receive: Vec<f64> = Vec::new();
        for (_, at, c, p) in got.iter() {
            if let Some(c) = c {
                to_produce.push((p - c) as f64 / 1000.0);
                to_receive.push((at - p) as f64 / 1000.0);
            }
        }
        to_produce.sort_by(|a, b| a.total_cmp(b));
        to_receive.sort_by(|a, b| a.total_cmp(b));
        log(format!(
            "steady split: commit->produced p50 {:.0} p99 {:.0} ms; produced->received p50 {:.0} p99 {:.0} ms",
            percentile(&to_produce, 50.0),
            percentile(&to_produce, 99.0),
            percentile(&to_receive, 50.0),
            percentile(&to_receive, 99.0)
        ));
        for (at, c) in got.iter().filter_map(|(_, at, c, _)| c.map(|c| (*at, c))) {
            let e = per_sec.entry(c / 1_000_000).or_default();
            e.0 = e.0.max((at - c) as f64 / 1000.0);
            e.1 += 1;
        }
        let first = per_sec.keys().next().copied().unwrap_or(0);
        let line: Vec<String> = per_sec
            .iter()
            .map(|(s, (max, n))| format!("{}s:{max:.0}ms/{n}", s - first))
            .collect();
        log(format!(
            "steady timeline (worst latency per second): {}",
            line.join(" ")
        ));
    }
    let l = latencies(commit_lat, acks.len());
    let la = latencies(ack_lat, acks.len());
    log(format!(
        "steady: relay p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms ({} of {} received); from COMMIT return: p50 {:.1} p99 {:.1}; CPU {:.2} s, RSS {:.1} MB",
        l.p50, l.p99, l.p999, l.received, l.sent, la.p50, la.p99, st.cpu_secs() - cpu0, st.hwm_mb()
    ));
    if l.received != l.sent {
        report.note(format!(
            "steady relay run: {} of {} events received",
            l.received, l.sent
        ));
    }
    let s = "4. steady state (2k events/s, 1-row txns)";
    report.add(s, "relay latency p50 (pg_commit_ts)", "ms", l.p50);
    report.add(s, "relay latency p99 (pg_commit_ts)", "ms", l.p99);
    report.add(s, "relay latency p99.9 (pg_commit_ts)", "ms", l.p999);
    report.add(s, "relay latency p50 (writer COMMIT return)", "ms", la.p50);
    report.add(s, "relay latency p99 (writer COMMIT return)", "ms", la.p99);
    report.add(
        s,
        "relay latency p99.9 (writer COMMIT return)",
        "ms",
        la.p999,
    );
    report.add(s, "relay peak RSS", "MB", st.hwm_mb());
    report.add(
        s,
        "relay CPU per 1M events",
        "CPU s",
        (st.cpu_secs() - cpu0) / (acks.len() as f64 / 1e6),
    );
    drop_env(env).await
}

async fn steady_debezium(opts: &Opts, connect: &Connect, report: &mut Report) -> Result<()> {
    let env = new_env().await?;
    let slot = format!("dbz_{}", env.cfg.suffix);
    let prefix = format!("d_{}", env.cfg.suffix);
    let topics: Vec<String> = TYPES.iter().map(|t| format!("{prefix}.{t}")).collect();
    for t in &topics {
        Kafka::shared().create_topic(t, PARTITIONS, &[]).await?;
    }
    let name = connect.create(&env.db, &slot, &prefix).await?;
    let cpu0 = connect.cpu_secs()?;
    let r = steady_measure(&env.db, topics, "id", opts.steady_rate, opts.steady_secs).await;
    let cpu = connect.cpu_secs()? - cpu0;
    connect.delete(&name).await?;
    let (acks, got) = r?;
    let ack_lat: Vec<f64> = got
        .iter()
        .filter_map(|(id, at, _, _)| acks.get(id).map(|a| (at - a) as f64 / 1000.0))
        .collect();
    let la = latencies(ack_lat, acks.len());
    log(format!(
        "steady: Debezium p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms ({} of {} received), JVM CPU {:.1} s",
        la.p50, la.p99, la.p999, la.received, la.sent, cpu
    ));
    if la.received != la.sent {
        report.note(format!(
            "steady Debezium run: {} of {} events received",
            la.received, la.sent
        ));
    }
    let s = "4. steady state (2k events/s, 1-row txns)";
    report.add(
        s,
        "Debezium latency p50 (writer COMMIT return)",
        "ms",
        la.p50,
    );
    report.add(
        s,
        "Debezium latency p99 (writer COMMIT return)",
        "ms",
        la.p99,
    );
    report.add(
        s,
        "Debezium latency p99.9 (writer COMMIT return)",
        "ms",
        la.p999,
    );
    report.add(
        s,
        "Debezium JVM CPU per 1M events",
        "CPU s",
        cpu / (acks.len() as f64 / 1e6),
    );
    drop_env(env).await
}

// ---------------------------------------------------------------------------------------------
// Scaling.

async fn scaling_run(opts: &Opts, report: &mut Report, rows: i64) -> Result<()> {
    let env = new_env().await?;
    create_relay_slot(opts, &env).await?;
    let t = Instant::now();
    let backlog = write_backlog(&env.db, rows, 100).await?;
    log(format!(
        "scaling: wrote {rows} rows in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let d = relay_drain(opts, &env, backlog, rows).await?;
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

fn human(n: i64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

fn target_check(report: &Report) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let b = "1. backlog drain, 100-row txns";
    let one = "1. backlog drain, 1-row txns";
    let max_rss = report
        .figures
        .iter()
        .filter(|f| f.name.starts_with("relay peak RSS") || f.name.starts_with("peak RSS at"))
        .map(|f| f.max())
        .fold(f64::NAN, f64::max);
    let mut check = |what: &str, fig: Option<&Figure>, ok: &dyn Fn(f64) -> bool, unit: &str| {
        if let Some(f) = fig {
            let m = f.median();
            out.push((what.to_string(), format!("{} {unit}", fmt_num(m)), ok(m)));
        }
    };
    check(
        "drain >= 85% of decoding limit (100-row txns)",
        report.get(b, "relay / limit"),
        &|v| v >= 0.85,
        "",
    );
    check(
        "drain >= 85% of decoding limit (1-row txns)",
        report.get(one, "relay / limit"),
        &|v| v >= 0.85,
        "",
    );
    check(
        "drain >= 3x Debezium (100-row txns)",
        report.get(b, "relay / Debezium"),
        &|v| v >= 3.0,
        "x",
    );
    check(
        "drain >= 3x Debezium (1-row txns)",
        report.get(one, "relay / Debezium"),
        &|v| v >= 3.0,
        "x",
    );
    check(
        "p99 < 50 ms at 2k events/s",
        report.get(
            "4. steady state (2k events/s, 1-row txns)",
            "relay latency p99 (pg_commit_ts)",
        ),
        &|v| v < 50.0,
        "ms",
    );
    check(
        "<= 5 CPU s per 1M events (1M backlog, 100-row txns)",
        report.get(b, "relay CPU per 1M events"),
        &|v| v <= 5.0,
        "CPU s",
    );
    check(
        "<= 5 CPU s per 1M events (1-row txns)",
        report.get(one, "relay CPU per 1M events"),
        &|v| v <= 5.0,
        "CPU s",
    );
    if !max_rss.is_nan() {
        out.push((
            "relay RSS < 40 MB (max over all runs)".into(),
            format!("{} MB", fmt_num(max_rss)),
            max_rss < 40.0,
        ));
    }
    out
}

fn markdown(opts: &Opts, report: &Report, total: Duration) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# outbox-relay benchmark ({} mode, {} run(s) per figure unless noted, {} cores, total {:.1} min)\n\n",
        if opts.quick { "quick" } else { "full" },
        opts.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        total.as_secs_f64() / 60.0
    ));
    s.push_str("| section | figure | median | min | max | unit | runs |\n|---|---|---:|---:|---:|---|---:|\n");
    for f in &report.figures {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.section,
            f.name,
            fmt_num(f.median()),
            fmt_num(f.min()),
            fmt_num(f.max()),
            f.unit,
            f.runs.len()
        ));
    }
    s.push_str("\n| target | measured (median) | met |\n|---|---:|---|\n");
    for (what, v, ok) in target_check(report) {
        s.push_str(&format!(
            "| {what} | {v} | {} |\n",
            if ok { "yes" } else { "**no**" }
        ));
    }
    if !report.notes.is_empty() {
        s.push_str("\nNotes:\n");
        for n in &report.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

fn to_json(opts: &Opts, report: &Report, total: Duration) -> serde_json::Value {
    json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "runs_per_figure": opts.runs,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "total_seconds": total.as_secs_f64(),
        "sizes": {
            "backlog_100_row_txns": opts.rows_batched,
            "backlog_1_row_txns": opts.rows_single,
            "steady_rate_per_s": opts.steady_rate,
            "steady_seconds": opts.steady_secs,
            "scaling": opts.scaling.iter().map(|(n, r)| json!({"rows": n, "runs": r})).collect::<Vec<_>>(),
        },
        "figures": report.figures.iter().map(|f| json!({
            "section": f.section,
            "name": f.name,
            "unit": f.unit,
            "median": f.median(),
            "min": f.min(),
            "max": f.max(),
            "runs": f.runs,
        })).collect::<Vec<_>>(),
        "targets": target_check(report).into_iter().map(|(w, v, ok)| json!({"target": w, "measured": v, "met": ok})).collect::<Vec<_>>(),
        "notes": report.notes,
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
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
    backlog_run(opts, None, &mut scratch, "warm-up", rows, 100, false).await
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

/// One section alone (`--floor-only`, `--steady-only`, `--drain-only`).
async fn probe(opts: &Opts, only: Only, r: &mut Report) -> Result<()> {
    match only {
        Only::Floor => floor_run(r).await,
        Only::Steady => {
            warm_up(opts, 100_000).await?;
            steady_relay(opts, r).await
        }
        Only::Drain => {
            warm_up(opts, 100_000).await?;
            let b = "1. backlog drain, 100-row txns";
            let one = "1. backlog drain, 1-row txns";
            for _ in 0..opts.runs {
                backlog_run(opts, None, r, b, opts.rows_batched, 100, true).await?;
            }
            for _ in 0..opts.runs {
                backlog_run(opts, None, r, one, opts.rows_single, 1, true).await?;
            }
            Ok(())
        }
    }
}

async fn run(opts: &Opts, report: &Mutex<Report>) -> Result<()> {
    if let Some(only) = opts.only {
        let mut r = Report::default();
        let res = probe(opts, only, &mut r).await;
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
                true,
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
                true,
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
    rep.notes.push("latency: pg_commit_ts header (Postgres commit time) to read_committed consumer receipt for the relay; Debezium's records carry no commit timestamp, so both are also measured from the writer's COMMIT return (same clock) for a like-for-like comparison.".into());
    result
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn lock(m: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_micros() {
        assert_eq!(
            super::parse_rfc3339_micros("1970-01-01T00:00:01.000002Z"),
            Some(1_000_002)
        );
        assert_eq!(
            super::parse_rfc3339_micros("2026-11-26T05:00:00.123456Z"),
            Some(1_795_669_200_123_456)
        );
        assert_eq!(super::parse_rfc3339_micros("2026-11-26 05:00:00"), None);
    }
}
