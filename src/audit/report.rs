//! What audit found, as text for people or JSON for scripts, and the verdict as an exit code.
//!
//! Counts are exact; each finding lists at most `--examples` instances (the first in event-id or
//! partition order), so a window with a million problems still prints a bounded report.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

/// Exit code: nothing wrong in the window, within the cut.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: at least one discrepancy (missing, duplicated, never-existed, order, partition).
pub const EXIT_DISCREPANCY: u8 = 3;
/// Exit code: audit could not judge (the relay has not reached the cut, Kafka no longer holds the
/// window, a server refused or was unreachable).
pub const EXIT_CANNOT_JUDGE: u8 = 4;

/// Where a record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// A count and the first few instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed<T> {
    /// How many.
    pub count: u64,
    /// The first few.
    pub examples: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Self {
            count: 0,
            examples: Vec::new(),
        }
    }
}

impl<T> Listed<T> {
    /// Counts one; keeps it (built by `make`) while fewer than `cap` are kept.
    pub fn add(&mut self, cap: usize, make: impl FnOnce() -> T) {
        self.count += 1;
        if self.examples.len() < cap {
            self.examples.push(make());
        }
    }
}

/// A judged row found neither on its topic nor on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingRow {
    /// Event id.
    pub event_id: String,
    /// The topic it routes to.
    pub topic: String,
    /// The row's `created_at`.
    pub created_at: Option<String>,
    /// Copies found on other topics audit read (routing changed?).
    pub found_elsewhere: Vec<Location>,
}

/// An event id carried by more than one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// Event id.
    pub event_id: String,
    /// Number of records.
    pub copies: u64,
    /// Where (the first few).
    pub at: Vec<Location>,
}

/// Records of an event id with no row in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoRow {
    /// Event id.
    pub event_id: String,
    /// Where.
    pub at: Vec<Location>,
}

/// A record's position in Postgres' stream, as its headers say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPosition {
    /// Offset in the partition.
    pub offset: i64,
    /// `pg_lsn`.
    pub pg_lsn: String,
    /// `pg_xid`.
    pub pg_xid: u32,
    /// `pg_commit_ts`.
    pub pg_commit_ts: String,
}

/// Two records of one key on one partition in the wrong order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderViolation {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The record Kafka delivers first.
    pub earlier: StreamPosition,
    /// The one after it, which Postgres committed before it.
    pub later: StreamPosition,
}

/// A record on another partition than the key's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrongPartition {
    /// Event id, when it has one.
    pub event_id: Option<String>,
    /// The key (lossy UTF-8).
    pub key: String,
    /// Where it is.
    pub at: Location,
    /// Where murmur2 puts it.
    pub expected_partition: i32,
}

/// A record audit cannot read (no or bad `event_id`, `pg_lsn`, `pg_xid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// Where.
    pub at: Location,
    /// What is wrong.
    pub why: String,
}

/// Everything found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Judged rows in neither their topic nor the dead-letter topic.
    pub missing: Listed<MissingRow>,
    /// Event ids on more than one record.
    pub duplicated: Listed<Duplicate>,
    /// Records with no row, newer than the oldest row: the row never existed (or was deleted
    /// out of age order).
    pub no_row_never_existed: Listed<NoRow>,
    /// Records with no row, older than the oldest row (or the table is empty): cleaned up.
    pub no_row_cleaned_up: Listed<NoRow>,
    /// Per-key order violations.
    pub order_violations: Listed<OrderViolation>,
    /// Records on the wrong partition.
    pub wrong_partition: Listed<WrongPartition>,
    /// Dead-lettered records in the window, by `dlq_reason`.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Records in the window whose transaction is after the cut (not judged).
    pub after_cut: u64,
    /// Records read for context, outside the window (not judged).
    pub outside_window: u64,
    /// Records audit cannot read.
    pub unreadable: Listed<Unreadable>,
    /// Every missing event id, when asked for (`backfill --missing` publishes them).
    #[serde(skip)]
    pub missing_ids: Option<Vec<u128>>,
}

impl Findings {
    /// Number of discrepancies (what makes the exit code 3).
    pub fn discrepancies(&self) -> u64 {
        self.missing.count
            + self.duplicated.count
            + self.no_row_never_existed.count
            + self.order_violations.count
            + self.wrong_partition.count
    }
}

/// The window as judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    /// `all`, `since` or `lsn`.
    pub kind: &'static str,
    /// Rows created at or after this are judged.
    pub rows_judged_from: Option<String>,
    /// `--from-lsn`.
    pub from_lsn: Option<String>,
    /// `--to-lsn`.
    pub to_lsn: Option<String>,
    /// The margin, in seconds.
    pub margin_seconds: f64,
}

/// The cut.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CutReport {
    /// `pg_current_wal_insert_lsn()` in the audit's transaction.
    pub wal_insert_lsn: String,
    /// The LSN the checkpoint had to reach.
    pub target_lsn: String,
    /// `pg_current_snapshot()` of the audit's transaction.
    pub snapshot: String,
    /// The checkpoint's `resume_lsn` that allowed judging.
    pub checkpoint_resume_lsn: String,
    /// Seconds spent waiting for it.
    pub waited_seconds: f64,
}

/// The table side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowsReport {
    /// The outbox table.
    pub table: String,
    /// Rows judged.
    pub judged: u64,
    /// Rows read only to match records (just before the window).
    pub context: u64,
    /// `created_at` of the oldest row in the table.
    pub oldest_created_at: Option<String>,
}

/// One topic read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicReport {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Records read.
    pub records: u64,
}

/// The Kafka side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KafkaReport {
    /// Topics read (routed topics and the dead-letter topic).
    pub topics: Vec<TopicReport>,
    /// Records read.
    pub records: u64,
    /// Topics rows route to that do not exist.
    pub absent_topics: Vec<String>,
}

/// Time and memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    /// Wall time of the whole audit.
    pub seconds: f64,
    /// Rows + records per second of wall time.
    pub events_per_second: f64,
    /// Peak resident memory (VmHWM).
    pub peak_rss_mib: f64,
    /// CPU time (user + system).
    pub cpu_seconds: f64,
    /// Sorted runs written to temporary files.
    pub sort_runs_on_disk: usize,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `clean` or `discrepancies`.
    pub verdict: &'static str,
    /// The exit code.
    pub exit_code: u8,
    /// The window.
    pub window: WindowReport,
    /// The cut.
    pub cut: CutReport,
    /// The table.
    pub rows: RowsReport,
    /// Kafka.
    pub kafka: KafkaReport,
    /// What was found.
    pub findings: Findings,
    /// Time and memory.
    pub resources: Resources,
}

impl Report {
    /// Sets verdict and exit code from the findings.
    pub fn decide(&mut self) {
        if self.findings.discrepancies() > 0 {
            self.verdict = "discrepancies";
            self.exit_code = EXIT_DISCREPANCY;
        } else {
            self.verdict = "clean";
            self.exit_code = EXIT_CLEAN;
        }
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let w = &self.window;
        let window = match w.kind {
            "since" => format!(
                "rows created since {}",
                w.rows_judged_from.as_deref().unwrap_or("-")
            ),
            "lsn" => format!(
                "records with pg_lsn in [{}, {}), rows created since {}",
                w.from_lsn.as_deref().unwrap_or("-"),
                w.to_lsn.as_deref().unwrap_or("the cut"),
                w.rows_judged_from.as_deref().unwrap_or("the start")
            ),
            _ => "everything retained".to_string(),
        };
        let _ = writeln!(o, "audit of {} against Kafka", self.rows.table);
        let _ = writeln!(o, "  window:      {window} (margin {}s)", w.margin_seconds);
        let _ = writeln!(
            o,
            "  cut:         transactions visible at WAL {} (snapshot {}); checkpoint at {} (waited {:.1}s)",
            self.cut.wal_insert_lsn, self.cut.snapshot, self.cut.checkpoint_resume_lsn, self.cut.waited_seconds
        );
        let _ = writeln!(
            o,
            "  rows:        {} judged, {} read as context; oldest row created {}",
            self.rows.judged,
            self.rows.context,
            self.rows
                .oldest_created_at
                .as_deref()
                .unwrap_or("- (table empty)")
        );
        let topics: Vec<String> = self
            .kafka
            .topics
            .iter()
            .map(|t| {
                format!(
                    "{} ({} partitions, {} records)",
                    t.name, t.partitions, t.records
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "  records:     {} read from {}",
            self.kafka.records,
            if topics.is_empty() {
                "no topic".to_string()
            } else {
                topics.join(", ")
            }
        );
        if !self.kafka.absent_topics.is_empty() {
            let _ = writeln!(
                o,
                "  absent:      rows route to topics that do not exist: {}",
                self.kafka.absent_topics.join(", ")
            );
        }
        let f = &self.findings;
        let _ = writeln!(o, "findings");
        line(
            &mut o,
            "missing",
            f.missing.count,
            "rows in neither their topic nor the dead-letter topic",
        );
        for m in &f.missing.examples {
            let elsewhere = if m.found_elsewhere.is_empty() {
                String::new()
            } else {
                format!(", but found on {}", join(&m.found_elsewhere))
            };
            let _ = writeln!(
                o,
                "      {} -> {} (created {}){elsewhere}",
                m.event_id,
                m.topic,
                m.created_at.as_deref().unwrap_or("-")
            );
        }
        line(
            &mut o,
            "duplicated",
            f.duplicated.count,
            "event ids on more than one record",
        );
        for d in &f.duplicated.examples {
            let _ = writeln!(o, "      {} x{}: {}", d.event_id, d.copies, join(&d.at));
        }
        line(
            &mut o,
            "no row, never existed",
            f.no_row_never_existed.count,
            "records newer than the oldest row, with no row",
        );
        for n in &f.no_row_never_existed.examples {
            let _ = writeln!(o, "      {}: {}", n.event_id, join(&n.at));
        }
        line(
            &mut o,
            "order violations",
            f.order_violations.count,
            "a key's record after one Postgres committed later",
        );
        for v in &f.order_violations.examples {
            let _ = writeln!(
                o,
                "      {}/{}: @{} (pg_lsn {}, xid {}, committed {}) after @{} (pg_lsn {}, xid {}, committed {})",
                v.topic,
                v.partition,
                v.later.offset,
                v.later.pg_lsn,
                v.later.pg_xid,
                v.later.pg_commit_ts,
                v.earlier.offset,
                v.earlier.pg_lsn,
                v.earlier.pg_xid,
                v.earlier.pg_commit_ts
            );
        }
        line(
            &mut o,
            "wrong partition",
            f.wrong_partition.count,
            "records not where murmur2(key) puts them",
        );
        for p in &f.wrong_partition.examples {
            let _ = writeln!(
                o,
                "      {} key {:?} event {}: expected partition {}",
                p.at,
                p.key,
                p.event_id.as_deref().unwrap_or("-"),
                p.expected_partition
            );
        }
        let _ = writeln!(o, "information");
        line(
            &mut o,
            "no row, cleaned up",
            f.no_row_cleaned_up.count,
            "records older than the oldest row (or the table is empty)",
        );
        for n in &f.no_row_cleaned_up.examples {
            let _ = writeln!(o, "      {}: {}", n.event_id, join(&n.at));
        }
        let dl: u64 = f.dead_lettered.values().sum();
        let reasons: Vec<String> = f
            .dead_lettered
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        let _ = writeln!(
            o,
            "  {:<24}{dl}{}",
            "dead-lettered",
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            }
        );
        line(
            &mut o,
            "after the cut",
            f.after_cut,
            "records of transactions the snapshot does not see (not judged)",
        );
        line(
            &mut o,
            "outside the window",
            f.outside_window,
            "records read for context (not judged)",
        );
        line(
            &mut o,
            "unreadable",
            f.unreadable.count,
            "records without a readable event_id / pg_lsn / pg_xid",
        );
        for u in &f.unreadable.examples {
            let _ = writeln!(o, "      {}: {}", u.at, u.why);
        }
        let r = &self.resources;
        let _ = writeln!(
            o,
            "{:.1}s, {:.0} events/s, {:.1} CPU s, peak RSS {:.0} MiB{}",
            r.seconds,
            r.events_per_second,
            r.cpu_seconds,
            r.peak_rss_mib,
            if r.sort_runs_on_disk > 0 {
                format!(", {} sorted runs on disk", r.sort_runs_on_disk)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "verdict: {} ({} discrepancies; exit {})",
            self.verdict,
            f.discrepancies(),
            self.exit_code
        );
        o
    }
}

fn line(o: &mut String, name: &str, count: u64, what: &str) {
    let _ = writeln!(o, "  {name:<24}{count:<10} {what}");
}

fn join(l: &[Location]) -> String {
    l.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// The tests live in their own file; they reach the report's private helpers as a child.
#[cfg(test)]
#[path = "tests/report.rs"]
mod tests;
