//! What audit judges: the window (which rows and records) and the cut (up to where the relay must
//! have published before a missing row means a lost event).
//!
//! ## The cut
//!
//! Rows carry no LSN, so "committed at or before the checkpoint" cannot be asked of a row. Audit
//! instead opens one `REPEATABLE READ, READ ONLY` transaction whose first statement reads
//! `pg_current_wal_insert_lsn()` (L) and `pg_current_snapshot()` (S). The snapshot is taken when
//! that statement starts, L while it runs, so:
//!
//! 1. every row audit reads was committed before L: a transaction's commit record is inserted into
//!    the WAL before it leaves the proc array, i.e. before any snapshot can see it;
//! 2. once the relay's checkpoint says `resume_lsn >= L`, every such row's transaction has been
//!    published (the relay publishes whole transactions in commit order and checkpoints the end LSN
//!    of the last one) and its records sit below the last stable offset read after that;
//! 3. a record belongs to the cut exactly when its `pg_xid` is visible in S. The LSN of a record is
//!    *not* the test: `pg_lsn` is the LSN of the change, not of the commit, so a transaction with
//!    a change before L may commit after it; and a transaction may commit before L yet be invisible
//!    to S (it committed between the snapshot and the read of L, or waited for a synchronous standby
//!    after writing its commit record). Judging by LSN would call those records "no row".
//!
//! When the relay is stopped, or behind past the deadline, the checkpoint never reaches L: audit
//! then says so and exits 4 instead of reporting the rows it has not published yet as missing.
//! Limits: L may sit just past a WAL page header while the walsender's last position ends at the
//! page boundary; the target is moved back over the header ([`cut_target`]) so an idle server is
//! not waited on forever. A 32-bit `pg_xid` is placed in S's epoch, which is exact within 2^31
//! transactions of the cut.
//!
//! ## The window
//!
//! `--since T` judges rows created at or after T and records whose time (`created_at`, else
//! `pg_commit_ts`, else the Kafka timestamp) is at or after T. To match those, rows from
//! `T - margin` are read as context (a record's `created_at` is its transaction's start, and hosts'
//! clocks differ) and Kafka is read from the offsets of `T - margin` (a record's Kafka timestamp is
//! set by the relay after the commit, so only clock skew between the Postgres and relay hosts can
//! put it before its row's `created_at`). `--from-lsn A [--to-lsn B]` judges records whose `pg_lsn`
//! is in `[A, B)`; rows carry no LSN, so the LSN is turned into a time: the commit time of the last
//! record before A in each partition ([`super::kafka`] finds it by binary search), minus the margin.
//! Rows are judged from that time on, up to the cut (B cannot bound rows).

use std::time::{Duration, Instant};

use crate::lsn::Lsn;
use crate::sink::checkpoint::{self, Checkpoint};

use super::entries::{DEAD_LETTER, IN_CUT, IN_WINDOW, OLDER_THAN_TABLE};
use super::Failure;

/// Size of a WAL page header (64-bit builds): `SizeOfXLogShortPHD`.
const SHORT_PAGE_HEADER: u64 = 24;
/// Size of the first page header of a segment: `SizeOfXLogLongPHD`.
const LONG_PAGE_HEADER: u64 = 40;

/// The window the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Every row and every retained record.
    All,
    /// From this time (microseconds since the Unix epoch).
    Since(i64),
    /// Records whose `pg_lsn` is in `[from, to)`.
    Lsn {
        /// First LSN judged.
        from: Lsn,
        /// First LSN no longer judged.
        to: Option<Lsn>,
    },
}

/// The window resolved to times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// What was asked.
    pub requested: Requested,
    /// Rows created at or after this are judged; `None`: every row.
    pub judged_since: Option<i64>,
    /// The margin, in microseconds.
    pub margin: i64,
}

impl Window {
    /// A time window (or none) with its margin.
    pub fn new(requested: Requested, judged_since: Option<i64>, margin: Duration) -> Self {
        Self {
            requested,
            judged_since,
            margin: margin.as_micros() as i64,
        }
    }

    /// Rows are read from this time on (judged ones and the context before them).
    pub fn rows_from(&self) -> Option<i64> {
        self.judged_since.map(|t| t.saturating_sub(self.margin))
    }

    /// Kafka is read from the offsets of this time.
    pub fn kafka_from(&self) -> Option<i64> {
        self.judged_since.map(|t| t.saturating_sub(self.margin))
    }

    /// Whether a record with this time and `pg_lsn` is inside the window.
    pub fn holds_record(&self, time: i64, lsn: Option<u64>) -> bool {
        match self.requested {
            Requested::All => true,
            Requested::Since(_) => self.judged_since.is_none_or(|t| time >= t),
            Requested::Lsn { from, to } => {
                lsn.is_some_and(|l| l >= from.as_u64() && to.is_none_or(|to| l < to.as_u64()))
            }
        }
    }
}

/// A Postgres snapshot as `pg_current_snapshot()` prints it: `xmin:xmax:xip,...` (64-bit xids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every xid below it is finished.
    pub xmin: u64,
    /// Every xid at or above it is invisible.
    pub xmax: u64,
    /// In progress when the snapshot was taken (sorted).
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `pg_current_snapshot()::text`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let list = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let mut xip = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        xip.sort_unstable();
        Some(Self { xmin, xmax, xip })
    }

    /// Whether the committed transaction `xid` (32 bits, as in the `pg_xid` header) is visible.
    pub fn visible(&self, xid: u32) -> bool {
        const HALF: u64 = 1 << 31;
        let mut v = (self.xmax & !0xFFFF_FFFF) | u64::from(xid);
        if v > self.xmax.saturating_add(HALF) && v >= 1 << 32 {
            v -= 1 << 32;
        } else if v.saturating_add(HALF) < self.xmax {
            v += 1 << 32;
        }
        v < self.xmin || (v < self.xmax && self.xip.binary_search(&v).is_err())
    }
}

/// The LSN the checkpoint must reach: the insert position, moved back over a page header it may
/// point just past (the walsender reports the end of the last record, which stops at the page
/// boundary).
pub fn cut_target(insert: Lsn, wal_block_size: u64, wal_segment_size: u64) -> Lsn {
    let l = insert.as_u64();
    if wal_segment_size > 0 && l % wal_segment_size == LONG_PAGE_HEADER {
        Lsn(l - LONG_PAGE_HEADER)
    } else if wal_block_size > 0 && l % wal_block_size == SHORT_PAGE_HEADER {
        Lsn(l - SHORT_PAGE_HEADER)
    } else {
        insert
    }
}

/// Everything needed to sort a record into window / cut / age, decided as it is read.
#[derive(Debug, Clone)]
pub struct Judge {
    /// The window.
    pub window: Window,
    /// The snapshot of the cut.
    pub snapshot: Snapshot,
    /// `created_at` of the oldest row in the table; `None` when the table is empty.
    pub oldest_row: Option<i64>,
    /// Whether the table has a `created_at` column (else age cannot be told).
    pub has_created_at: bool,
    /// Whether the table holds no row at all.
    pub table_empty: bool,
}

impl Judge {
    /// The flags of a record.
    pub fn flags(&self, time: i64, lsn: Option<u64>, xid: Option<u32>, dead_letter: bool) -> u8 {
        let mut f = 0;
        if self.window.holds_record(time, lsn) {
            f |= IN_WINDOW;
        }
        if xid.is_some_and(|x| self.snapshot.visible(x)) {
            f |= IN_CUT;
        }
        if self.table_empty
            || (self.has_created_at && self.oldest_row.is_some_and(|oldest| time < oldest))
        {
            f |= OLDER_THAN_TABLE;
        }
        if dead_letter {
            f |= DEAD_LETTER;
        }
        f
    }
}

/// Reads the relay's checkpoint until its `resume_lsn` reaches `target`, or fails with "could not
/// judge" at the deadline. `progress` receives a line every few seconds.
pub fn wait_for_checkpoint(
    client_props: &crate::config::ClientProps,
    topic: &str,
    key: &crate::sink::CheckpointKey,
    target: Lsn,
    deadline: Duration,
    progress: &mut dyn FnMut(String),
) -> Result<Checkpoint, Failure> {
    let started = Instant::now();
    let mut last_said = Instant::now();
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        let read = checkpoint::read(
            client_props,
            topic,
            key,
            left.clamp(Duration::from_secs(5), Duration::from_secs(30)),
        );
        let at = match read {
            Ok(Some(cp)) if cp.resume_lsn >= target => return Ok(cp),
            Ok(Some(cp)) => Some(cp.resume_lsn),
            Ok(None) => None,
            Err(e) => {
                return Err(Failure::CannotJudge(format!(
                    "cannot read the relay's checkpoint (kafka.checkpoint_topic {topic:?}, key {key:?}): {}",
                    super::chain(&e)
                )))
            }
        };
        let behind = match at {
            Some(at) => format!(
                "the checkpoint is at {at}, {} bytes behind",
                target.bytes_since(at)
            ),
            None => format!("no checkpoint for key {key:?} in {topic:?} yet"),
        };
        if started.elapsed() >= deadline {
            return Err(Failure::CannotJudge(format!(
                "the relay has not published up to the cut at {target} within {deadline:?} ({behind}): it is stopped, failing or far behind. Missing events cannot be told from events not yet published; start the relay (see `outbox-relay status`) or raise --wait, then run audit again"
            )));
        }
        if last_said.elapsed() >= Duration::from_secs(5) {
            progress(format!(
                "waiting for the relay to publish up to the cut at {target}: {behind} ({:.0?} of {deadline:?})",
                started.elapsed()
            ));
            last_said = Instant::now();
        }
        std::thread::sleep(
            Duration::from_millis(500).min(deadline.saturating_sub(started.elapsed())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility() {
        let s = Snapshot::parse("100:110:102,105").expect("parses");
        assert_eq!(s.xip, [102, 105]);
        assert!(s.visible(99), "below xmin");
        assert!(s.visible(101), "finished between xmin and xmax");
        assert!(!s.visible(102), "in progress at the snapshot");
        assert!(!s.visible(110), "at xmax");
        assert!(!s.visible(200), "after");
        assert!(Snapshot::parse("100:100:").expect("empty xip").visible(99));
        for bad in ["", "1:2", "1:2:x", "1:2:3:4"] {
            assert!(Snapshot::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_visibility_across_the_32_bit_wrap() {
        // Epoch 1: xmax = 2^32 + 10. A 32-bit xid of 5 is 2^32 + 5 (visible), one of
        // 0xFFFF_FFF0 is the previous epoch's (visible), one of 20 is after xmax.
        let base = 1u64 << 32;
        let s = Snapshot {
            xmin: base + 8,
            xmax: base + 10,
            xip: vec![base + 9],
        };
        assert!(s.visible(5));
        assert!(s.visible(0xFFFF_FFF0));
        assert!(!s.visible(9));
        assert!(!s.visible(20));
    }

    #[test]
    fn cut_target_steps_back_over_a_page_header() {
        let seg = 16 << 20;
        assert_eq!(
            cut_target(Lsn(0x1_0000_0040), 8192, seg),
            Lsn(0x1_0000_0040)
        );
        assert_eq!(cut_target(Lsn(8192 * 5 + 24), 8192, seg), Lsn(8192 * 5));
        assert_eq!(cut_target(Lsn(seg * 3 + 40), 8192, seg), Lsn(seg * 3));
        assert_eq!(
            cut_target(Lsn(8192 * 5 + 32), 8192, seg),
            Lsn(8192 * 5 + 32)
        );
    }

    #[test]
    fn windows_hold_records_by_time_or_lsn() {
        let m = Duration::from_secs(60);
        let w = Window::new(Requested::Since(1_000_000_000), Some(1_000_000_000), m);
        assert!(w.holds_record(1_000_000_000, None));
        assert!(!w.holds_record(999_999_999, Some(5)));
        assert_eq!(w.rows_from(), Some(1_000_000_000 - 60_000_000));
        let l = Window::new(
            Requested::Lsn {
                from: Lsn(100),
                to: Some(Lsn(200)),
            },
            Some(5),
            m,
        );
        assert!(l.holds_record(0, Some(100)));
        assert!(l.holds_record(0, Some(199)));
        assert!(!l.holds_record(i64::MAX, Some(200)));
        assert!(!l.holds_record(i64::MAX, None));
        let all = Window::new(Requested::All, None, m);
        assert!(all.holds_record(i64::MIN, None));
        assert_eq!(all.rows_from(), None);
    }

    #[test]
    fn judge_sorts_records_into_window_cut_and_age() {
        let judge = Judge {
            window: Window::new(Requested::Since(1000), Some(1000), Duration::ZERO),
            snapshot: Snapshot::parse("10:20:15").expect("snapshot"),
            oldest_row: Some(2000),
            has_created_at: true,
            table_empty: false,
        };
        assert_eq!(
            judge.flags(1500, None, Some(12), false),
            IN_WINDOW | IN_CUT | OLDER_THAN_TABLE
        );
        assert_eq!(judge.flags(2500, None, Some(15), false), IN_WINDOW);
        assert_eq!(
            judge.flags(500, None, None, true),
            OLDER_THAN_TABLE | DEAD_LETTER
        );
        let empty = Judge {
            oldest_row: None,
            table_empty: true,
            ..judge
        };
        assert_eq!(
            empty.flags(2500, None, Some(25), false),
            IN_WINDOW | OLDER_THAN_TABLE
        );
    }
}
