//! `outbox-relay audit`: proves, on the operator's own data, what reached Kafka.
//!
//! It compares the outbox table with the routed topics and the dead-letter topic and reports
//! missing events, duplicated event ids, records with no row (cleaned up or never existed),
//! per-key order violations, records on the wrong partition and dead-lettered counts by reason.
//! It runs beside a live relay and changes nothing: one read-only SQL transaction, a Kafka
//! consumer that assigns partitions and commits nothing, no slot or topic touched.
//!
//! ```text
//!  Postgres: BEGIN REPEATABLE READ READ ONLY ─ cut (insert LSN L + snapshot S) ─ rows ─ COMMIT
//!                                                                   │ (sorted by id, spills to disk)
//!  Kafka:   checkpoint ≥ L? (wait, deadline) ─ LSO per partition ─ records from the window's start
//!                                                                   │ (by id; by key)
//!  compare: join by id ─ order per key ─ report (text | JSON) ─ exit 0 clean / 3 found / 4 cannot judge
//! ```
//!
//! The modules, one concern each: [`window`] (window and cut, why the cut is sound), [`table`]
//! (the SQL side), [`pg`] (its connection), [`kafka`] (the Kafka side), [`sort`] (bounded memory),
//! [`entries`] (compact forms), [`compare`] (the pure comparison), [`report`] (output, exit codes),
//! [`murmur2`] (Java's partitioner), [`time`] (timestamps).

pub mod compare;
pub mod entries;
pub mod kafka;
pub mod murmur2;
pub mod pg;
pub mod report;
pub mod sort;
pub mod table;
pub mod time;
pub mod window;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::lsn::Lsn;

use entries::{Names, RowEntry};
use report::{
    CutReport, Findings, KafkaReport, Report, Resources, RowsReport, TopicReport, WindowReport,
    EXIT_CANNOT_JUDGE,
};
use sort::Sorter;
use window::{Judge, Requested, Window};

/// Memory for sorting rows in RAM before runs go to disk (32 bytes a row).
const ROWS_BUDGET: usize = 32 << 20;
/// Memory for sorting records (32 bytes by id + 48 by key a record).
const RECORDS_BUDGET: usize = 56 << 20;

/// `outbox-relay audit` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Configuration file (TOML), as for `run`.
    #[arg(
        long,
        short,
        env = "OUTBOX_RELAY_CONFIG",
        default_value = "/etc/outbox-relay/outbox-relay.toml"
    )]
    pub config: PathBuf,
    /// Judge rows created at or after this time (RFC 3339, e.g. 2026-11-26T05:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_since, conflicts_with_all = ["from_lsn", "to_lsn"])]
    pub since: Option<i64>,
    /// Judge records whose pg_lsn is at or after this LSN (and rows from the time it was published).
    #[arg(long, value_name = "X/Y", value_parser = parse_lsn)]
    pub from_lsn: Option<Lsn>,
    /// With --from-lsn: judge records whose pg_lsn is before this LSN.
    #[arg(long, value_name = "X/Y", value_parser = parse_lsn, requires = "from_lsn")]
    pub to_lsn: Option<Lsn>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the relay's checkpoint to reach the cut before giving up (exit 4).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub wait: u64,
    /// Seconds of margin for clock skew between hosts and long transactions (see README, "Audit").
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub margin: u64,
    /// Instances listed per finding (counts are always exact).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub examples: usize,
}

fn parse_since(s: &str) -> Result<i64, String> {
    time::parse(s, true).ok_or_else(|| {
        format!("{s:?} is not an RFC 3339 time with an offset (e.g. 2026-11-26T05:00:00Z)")
    })
}

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|e| e.to_string())
}

/// Why audit stopped without a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The configuration or the table does not fit (exit 78).
    Config(String),
    /// Audit cannot judge: the cut was not reached, Kafka lacks the window, a server is
    /// unreachable (exit 4).
    CannotJudge(String),
    /// A bug or an unexpected state (exit 1).
    Internal(String),
}

impl Failure {
    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 78,
            Failure::CannotJudge(_) => EXIT_CANNOT_JUDGE,
            Failure::Internal(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Config(m) | Failure::CannotJudge(m) | Failure::Internal(m) => m,
        }
    }
}

/// An error and its causes, one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// Runs the subcommand: prints the report (stdout) and progress (stderr); returns the exit code.
pub async fn run(cfg: &Config, args: &Args) -> ExitCode {
    match audit(cfg, args).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", report.text());
            }
            ExitCode::from(report.exit_code)
        }
        Err(f) => {
            let what = match f {
                Failure::CannotJudge(_) => "audit could not judge",
                _ => "error",
            };
            eprintln!("{what}: {}", f.message());
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "verdict": "cannot_judge",
                        "exit_code": f.exit_code(),
                        "error": f.message(),
                    })
                );
            }
            ExitCode::from(f.exit_code())
        }
    }
}

fn say(line: String) {
    eprintln!(
        "audit: {line} [{:.1} CPU s, RSS {} MiB]",
        cpu_seconds(),
        rss_kib("VmRSS:") / 1024
    );
}

/// A memory figure of this process from /proc/self/status (`VmRSS:`, `VmHWM:`), in KiB; 0 where
/// /proc is not available.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The whole audit; the report, or why there is none.
pub async fn audit(cfg: &Config, args: &Args) -> Result<Report, Failure> {
    audit_with(cfg, args, false).await
}

/// The audit, collecting every missing event id into `findings.missing_ids` when `collect_missing`.
pub async fn audit_with(
    cfg: &Config,
    args: &Args,
    collect_missing: bool,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let margin = Duration::from_secs(args.margin);
    let requested = match (args.since, args.from_lsn) {
        (Some(t), _) => Requested::Since(t),
        (None, Some(from)) => Requested::Lsn {
            from,
            to: args.to_lsn,
        },
        (None, None) => Requested::All,
    };
    let has_created_at = cfg.outbox.columns.created_at().is_some();
    if requested != Requested::All && !has_created_at {
        return Err(Failure::Config(
            "a window (--since, --from-lsn) needs the created_at column, and outbox.columns.created_at is empty".into(),
        ));
    }
    let (_, table_name) = table::table_names(cfg);

    // The cut, in the read-only transaction.
    let client = pg::connect(cfg).await?;
    let cut = table::begin_cut(&client, cfg).await?;
    say(format!(
        "cut at WAL {} (snapshot {}); {} rows",
        cut.insert_lsn,
        cut.snapshot_text,
        if cut.table_empty {
            "the table holds no"
        } else {
            "reading"
        }
    ));

    // The window, as times.
    let consumer = kafka::consumer(cfg, kafka::Use::Metadata)?;
    let mut names = Names::default();
    let mut routes = table::Routes::new(cfg, &mut names);
    let judged_since = match requested {
        Requested::All => None,
        Requested::Since(t) => Some(t),
        Requested::Lsn { from, .. } => {
            let (topics, _) =
                tokio::task::block_in_place(|| kafka::select_topics(&consumer, cfg, &mut names))?;
            let at =
                tokio::task::block_in_place(|| kafka::locate_lsn(cfg, &topics, from, &mut say))?;
            at.map(|t| t.saturating_sub(margin.as_micros() as i64))
        }
    };
    let window = Window::new(requested, judged_since, margin);

    // Rows, sorted by id, then the transaction ends.
    let mut rows = Sorter::<RowEntry>::with_budget(ROWS_BUDGET);
    let mut last = Instant::now();
    let counts = table::read_rows(
        &client,
        cfg,
        &window,
        &mut routes,
        &mut names,
        &mut rows,
        &mut |n| {
            if last.elapsed() >= Duration::from_secs(5) {
                say(format!("read {n} rows"));
                last = Instant::now();
            }
        },
    )
    .await?;
    table::commit(&client).await?;
    drop(client);
    // finish_on_disk writes the buffer as one more run when nothing spilled yet.
    let row_runs = rows.runs_on_disk().max(usize::from(!rows.is_empty()));
    // On disk while Kafka is read: the rows' buffer is not held beside the records'.
    let rows = rows
        .finish_on_disk()
        .map_err(|e| Failure::Internal(format!("sorting rows: {e}")))?;
    say(format!(
        "{} rows judged, {} context",
        counts.judged, counts.context
    ));

    // Wait for the relay to publish up to the cut.
    let key =
        crate::sink::CheckpointKey::new(&cut.system_id, &cfg.postgres.dbname, &cfg.postgres.slot);
    let waited = Instant::now();
    let props = cfg.kafka.client_props();
    let checkpoint = tokio::task::block_in_place(|| {
        window::wait_for_checkpoint(
            &props,
            &cfg.kafka.checkpoint_topic,
            &key,
            cut.target,
            Duration::from_secs(args.wait),
            &mut say,
        )
    })?;
    let waited = waited.elapsed();

    // Kafka, from the window's start to the last stable offsets now.
    let judge = Judge {
        window,
        snapshot: cut.snapshot.clone(),
        oldest_row: cut.oldest_row,
        has_created_at,
        table_empty: cut.table_empty,
    };
    let mut findings = Findings {
        missing_ids: collect_missing.then(Vec::new),
        ..Findings::default()
    };
    let (topics, absent) =
        tokio::task::block_in_place(|| kafka::select_topics(&consumer, cfg, &mut names))?;
    let plan =
        tokio::task::block_in_place(|| kafka::plan(&consumer, &topics, window.kafka_from()))?;
    let read = tokio::task::block_in_place(|| {
        kafka::read(
            cfg,
            &topics,
            &plan,
            &judge,
            &mut names,
            args.examples,
            RECORDS_BUDGET,
            &mut findings,
            &mut say,
        )
    })?;
    say(format!("{} records read; comparing", read.records));

    // Compare.
    let runs = row_runs + read.ids.runs_on_disk() + read.keys.runs_on_disk();
    let ids = read
        .ids
        .finish()
        .map_err(|e| Failure::Internal(format!("sorting records: {e}")))?;
    compare::join(rows, ids, &names, args.examples, &mut findings)
        .map_err(|e| Failure::Internal(format!("reading sorted runs: {e}")))?;
    let keys = read
        .keys
        .finish()
        .map_err(|e| Failure::Internal(format!("sorting records by key: {e}")))?;
    compare::check_order(keys, &names, args.examples, &mut findings)
        .map_err(|e| Failure::Internal(format!("reading sorted runs: {e}")))?;

    let seconds = started.elapsed().as_secs_f64();
    let events = counts.judged + counts.context + read.records;
    let mut report = Report {
        verdict: "",
        exit_code: 0,
        window: WindowReport {
            kind: match requested {
                Requested::All => "all",
                Requested::Since(_) => "since",
                Requested::Lsn { .. } => "lsn",
            },
            rows_judged_from: window.judged_since.map(time::format),
            from_lsn: match requested {
                Requested::Lsn { from, .. } => Some(from.to_string()),
                _ => None,
            },
            to_lsn: match requested {
                Requested::Lsn { to, .. } => to.map(|t| t.to_string()),
                _ => None,
            },
            margin_seconds: margin.as_secs_f64(),
        },
        cut: CutReport {
            wal_insert_lsn: cut.insert_lsn.to_string(),
            target_lsn: cut.target.to_string(),
            snapshot: cut.snapshot_text.clone(),
            checkpoint_resume_lsn: checkpoint.resume_lsn.to_string(),
            waited_seconds: waited.as_secs_f64(),
        },
        rows: RowsReport {
            table: table_name,
            judged: counts.judged,
            context: counts.context,
            oldest_created_at: cut.oldest_row.map(time::format),
        },
        kafka: KafkaReport {
            topics: topics
                .iter()
                .zip(&read.per_topic)
                .map(|(t, n)| TopicReport {
                    name: t.name.clone(),
                    partitions: t.partitions,
                    records: *n,
                })
                .collect(),
            records: read.records,
            absent_topics: absent,
        },
        findings,
        resources: Resources {
            seconds,
            events_per_second: events as f64 / seconds.max(1e-9),
            peak_rss_mib: rss_kib("VmHWM:") as f64 / 1024.0,
            cpu_seconds: cpu_seconds(),
            sort_runs_on_disk: runs,
        },
    };
    report.decide();
    Ok(report)
}

/// User + system CPU time of this process, from /proc (Linux clock ticks are 1/100 s).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}
