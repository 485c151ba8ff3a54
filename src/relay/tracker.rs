//! The position tracker: where the stream is, what the checkpoint covers, and when to cut a
//! Kafka transaction. No I/O, no clocks of its own: the loop feeds it the stream's events and the
//! commit results, and it answers. That is what makes exactly-once testable in milliseconds
//! (`tracker_model.rs` replays random streams with random crashes against a model).
//!
//! ```text
//!  Begin ─> begin()   ──────────────── is this transaction already published (skip), or partly?
//!  Insert ─> change() ─> Skip | Publish(position)
//!            split_due(fill) ─> Some(partial) ── cut inside a big transaction (batch.split_events)
//!  Commit ─> commit() ─> commit_due(fill) ─> cut at this boundary (batch.max_*)
//!  KeepAlive ─> keepalive() ── an idle stream may checkpoint the server's WAL end
//!  checkpoint(partial) ─> the Checkpoint the cut commits with
//!  committed(checkpoint) ─> the LSN to acknowledge to Postgres (never past a committed checkpoint)
//!  restart() ── the stream starts again from the slot in this session: resume from the last
//!               committed checkpoint (catch-up -> streaming)
//! ```
//!
//! Two positions are never confused (docs/ARCHITECTURE.md, "Two positions"): `resume` is
//! committed in Kafka and the only one acknowledged; `pending` is what the next commit may
//! checkpoint (the end of the last transaction fully received and queued, or, while nothing is
//! open, a keepalive's WAL end).
//!
//! The checkpoint's partial transaction stays in every checkpoint until the stream brings it
//! back (an idle checkpoint while waiting for it must not drop it), and a keepalive never moves
//! `pending` past its start: the walsender reports positions inside a transaction it is still
//! decoding. (The property tests found both: a crash after such an idle checkpoint published the
//! transaction's first rows twice.)
//!
//! Skip rules (the slot may resume earlier than the checkpoint, never later):
//! * a transaction whose commit LSN (`final_lsn`) is before `resume` is published whole: skip it;
//! * the checkpoint's partial transaction (matched by `final_lsn` and xid) has its first
//!   `next_index` changes published: skip those, publish the rest;
//! * anything else is new.

use std::time::{Duration, Instant};

use crate::lsn::Lsn;
use crate::route::Position;
use crate::sink::checkpoint::{Checkpoint, Partial};

/// When to cut a Kafka transaction (`[batch]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Cut at a Postgres commit once the open Kafka transaction holds this many events.
    pub max_events: u64,
    /// Cut at a Postgres commit once it holds this many bytes.
    pub max_bytes: u64,
    /// Cut at a Postgres commit once it is this old.
    pub max_delay: Duration,
    /// Cut inside a Postgres transaction once the Kafka transaction holds this many events.
    pub split_events: u64,
    /// Least time between two checkpoint-only commits while the outbox is idle.
    pub idle_checkpoint: Duration,
}

/// What the Kafka transaction being assembled holds (the committer keeps it; the tracker reads it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fill {
    /// Records queued in it (events and dead letters).
    pub events: u64,
    /// Their bytes (key, value, headers).
    pub bytes: u64,
    /// When its first record was queued.
    pub opened_at: Option<Instant>,
}

impl Fill {
    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }
}

/// What to do with one change of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Already published (the checkpoint covers it): drop it.
    Skip,
    /// New: publish it at this position.
    Publish(Position),
}

/// The stream contradicts itself or the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// A protocol violation (Begin inside a transaction, a change or Commit outside one): the
    /// connection is broken; a new session replays from the checkpoint.
    #[error("postgres: {0} (protocol error)")]
    Protocol(&'static str),
    /// The checkpoint names a partly published transaction the stream does not resume with: the
    /// slot does not match the checkpoint.
    #[error("the checkpoint says transaction xid {want_xid} (commit {want_lsn}) was partly published, but the stream resumed with xid {got_xid} (commit {got_lsn}): the slot does not match the checkpoint")]
    PartialMismatch {
        want_xid: u32,
        want_lsn: Lsn,
        got_xid: u32,
        got_lsn: Lsn,
    },
}

/// The Postgres transaction being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current {
    final_lsn: Lsn,
    xid: u32,
    commit_ts_micros: i64,
    /// Changes seen so far in this transaction (its ordinal of the last one).
    index: u64,
    /// Changes already published: skip through this ordinal (`u64::MAX`: all of them).
    skip_through: u64,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// The server timeline the stream is on, written into every checkpoint.
    timeline: Option<u32>,
    resume: Lsn,
    pending: Lsn,
    partial_at_start: Option<Partial>,
    /// The partial transaction of the last committed checkpoint (what [`Tracker::restart`]
    /// resumes from with `resume`).
    committed_partial: Option<Partial>,
    cur: Option<Current>,
}

impl Tracker {
    /// A tracker resuming from a checkpoint (`resume_lsn` and its partial transaction).
    pub fn new(resume: Lsn, partial: Option<Partial>) -> Self {
        Self {
            timeline: None,
            resume,
            pending: resume,
            partial_at_start: partial,
            committed_partial: partial,
            cur: None,
        }
    }

    /// The stream is on this server timeline: every checkpoint records it.
    pub fn on_timeline(mut self, timeline: u32) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// Committed in Kafka and acknowledged: the end LSN of the last fully published transaction.
    pub fn resume_lsn(&self) -> Lsn {
        self.resume
    }

    /// Inside a Postgres transaction (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.cur.is_some()
    }

    /// A transaction starts.
    pub fn begin(
        &mut self,
        final_lsn: Lsn,
        xid: u32,
        commit_ts_micros: i64,
    ) -> Result<(), TrackError> {
        if self.cur.is_some() {
            return Err(TrackError::Protocol("Begin inside an open transaction"));
        }
        let skip_through = if final_lsn < self.resume {
            u64::MAX
        } else if let Some(p) = self.partial_at_start.take() {
            if p.final_lsn != final_lsn || p.xid != xid {
                return Err(TrackError::PartialMismatch {
                    want_xid: p.xid,
                    want_lsn: p.final_lsn,
                    got_xid: xid,
                    got_lsn: final_lsn,
                });
            }
            p.next_index
        } else {
            0
        };
        self.cur = Some(Current {
            final_lsn,
            xid,
            commit_ts_micros,
            index: 0,
            skip_through,
        });
        Ok(())
    }

    /// One change (an outbox row) of the open transaction, at `lsn`.
    pub fn change(&mut self, lsn: Lsn) -> Result<Change, TrackError> {
        let cur = self
            .cur
            .as_mut()
            .ok_or(TrackError::Protocol("a change outside a transaction"))?;
        cur.index += 1;
        if cur.index <= cur.skip_through {
            return Ok(Change::Skip);
        }
        Ok(Change::Publish(Position {
            lsn,
            xid: cur.xid,
            commit_ts_micros: cur.commit_ts_micros,
        }))
    }

    /// After a published change: the partial checkpoint to cut with when the Kafka transaction is
    /// full (`split_events`), so a huge Postgres transaction never holds unbounded memory.
    pub fn split_due(&self, fill: &Fill, batch: &BatchSettings) -> Option<Partial> {
        let cur = self.cur?;
        (fill.events >= batch.split_events && cur.index > cur.skip_through).then_some(Partial {
            final_lsn: cur.final_lsn,
            xid: cur.xid,
            next_index: cur.index,
        })
    }

    /// The transaction ends at `end_lsn` (the end of its commit record): the next commit may
    /// checkpoint it. Returns its commit timestamp (for latency metrics).
    pub fn commit(&mut self, end_lsn: Lsn) -> Result<i64, TrackError> {
        let cur = self
            .cur
            .take()
            .ok_or(TrackError::Protocol("Commit without Begin"))?;
        self.pending = self.pending.max(end_lsn);
        Ok(cur.commit_ts_micros)
    }

    /// The server's keepalive: everything before `wal_end` was sent. Between transactions and
    /// with nothing assembled, that position may be checkpointed (as Postgres' own apply worker
    /// reports it), so an idle outbox never pins WAL.
    pub fn keepalive(&mut self, wal_end: Lsn, fill: &Fill) {
        if self.cur.is_none() && fill.is_empty() {
            // While the checkpoint's partial transaction has not come back yet, the walsender
            // may report a position inside it (it decodes a transaction before sending it at
            // its commit): never checkpoint past its start as if it were published.
            let limit = self
                .partial_at_start
                .map_or(wal_end, |p| wal_end.min(p.final_lsn));
            self.pending = self.pending.max(limit);
        }
    }

    /// At a commit boundary: whether the assembled Kafka transaction is full or old enough to
    /// cut now. Only when no commit runs: while one does, the next transaction keeps growing and
    /// is decided when it returned (slow commits make bigger transactions, not a queue of them).
    pub fn commit_due(
        &self,
        fill: &Fill,
        committing: bool,
        batch: &BatchSettings,
        now: Instant,
    ) -> bool {
        self.cur.is_none()
            && !committing
            && !fill.is_empty()
            && (fill.events >= batch.max_events
                || fill.bytes >= batch.max_bytes
                || fill.opened_at.is_some_and(|t| now >= t + batch.max_delay))
    }

    /// When the assembled transaction becomes old enough to cut (for the loop's timer), if it
    /// could be cut then.
    pub fn commit_deadline(
        &self,
        fill: &Fill,
        committing: bool,
        batch: &BatchSettings,
    ) -> Option<Instant> {
        if self.cur.is_some() || committing {
            return None;
        }
        fill.opened_at.map(|t| t + batch.max_delay)
    }

    /// While idle (no transaction open, nothing assembled, queued or committing), when a
    /// checkpoint-only commit should move the checkpoint to `pending` (a keepalive's WAL end).
    pub fn idle_checkpoint_at(
        &self,
        idle: bool,
        last_commit: Instant,
        batch: &BatchSettings,
    ) -> Option<Instant> {
        (idle && self.cur.is_none() && self.pending > self.resume)
            .then(|| last_commit + batch.idle_checkpoint)
    }

    /// The checkpoint a commit decided now carries: everything fully received, plus `partial`
    /// when the cut is inside a transaction.
    pub fn checkpoint(&self, partial: Option<Partial>) -> Checkpoint {
        Checkpoint {
            resume_lsn: self.pending.max(self.resume),
            // A partial transaction the stream has not resumed yet stays in every checkpoint
            // until it comes back: an idle checkpoint must not forget it.
            partial: partial.or(self.partial_at_start),
            timeline: self.timeline,
            snapshot: None,
        }
    }

    /// A commit returned Ok: its checkpoint is durable. Returns the position to acknowledge.
    pub fn committed(&mut self, checkpoint: &Checkpoint) -> Lsn {
        if checkpoint.resume_lsn >= self.resume {
            self.committed_partial = checkpoint.partial;
        }
        self.resume = self.resume.max(checkpoint.resume_lsn);
        self.resume
    }

    /// The stream starts again from the slot within this session (the catch-up read reached the
    /// WAL end and the relay streams from here), with nothing assembled and no commit running:
    /// everything received is committed. The slot resends what follows its position, which may
    /// be before the checkpoint, so the tracker resumes from the last committed checkpoint, as a
    /// new session would. Without this, a transaction whose last change ended a split was
    /// published again: its partial checkpoint was known only to Kafka (a restart that caught
    /// up a split 200k-row transaction repeated its last rows).
    pub fn restart(&mut self) {
        self.cur = None;
        self.pending = self.resume;
        self.partial_at_start = self.committed_partial;
    }

    /// Shutdown inside a transaction: the partial checkpoint covering the changes received so far
    /// (`None` between transactions, or inside one the checkpoint already covers whole).
    pub fn drain_partial(&self) -> Option<Partial> {
        let cur = self.cur?;
        (cur.skip_through != u64::MAX).then(|| Partial {
            final_lsn: cur.final_lsn,
            xid: cur.xid,
            next_index: cur.index.max(cur.skip_through),
        })
    }

    /// A bad row with `on_error = "stop"`: the partial checkpoint covering the changes *before*
    /// the current one, so a restart begins at that row (`None` when it is the transaction's first).
    pub fn partial_before_current(&self) -> Option<Partial> {
        let cur = self.cur?;
        if cur.skip_through == u64::MAX {
            return None;
        }
        let before = cur.index.saturating_sub(1).max(cur.skip_through);
        (before > 0).then_some(Partial {
            final_lsn: cur.final_lsn,
            xid: cur.xid,
            next_index: before,
        })
    }

    /// The commit timestamp of the open transaction (for latency metrics at a split).
    pub fn current_commit_ts(&self) -> Option<i64> {
        self.cur.map(|c| c.commit_ts_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: BatchSettings = BatchSettings {
        max_events: 3,
        max_bytes: 1 << 20,
        max_delay: Duration::from_millis(100),
        split_events: 5,
        idle_checkpoint: Duration::from_secs(1),
    };

    fn fill(events: u64) -> Fill {
        Fill {
            events,
            bytes: events * 10,
            opened_at: (events > 0).then(Instant::now),
        }
    }

    #[test]
    fn skips_what_the_checkpoint_covers_and_publishes_the_rest() {
        let mut t = Tracker::new(Lsn(100), None);
        t.begin(Lsn(90), 7, 0).expect("begin");
        assert_eq!(t.change(Lsn(85)), Ok(Change::Skip));
        assert_eq!(t.commit(Lsn(100)), Ok(0));
        t.begin(Lsn(120), 8, 0).expect("begin");
        assert!(
            matches!(t.change(Lsn(110)), Ok(Change::Publish(p)) if p.xid == 8 && p.lsn == Lsn(110))
        );
        t.commit(Lsn(130)).expect("commit");
        assert_eq!(t.checkpoint(None).resume_lsn, Lsn(130));
    }

    #[test]
    fn a_partial_transaction_resumes_after_its_published_changes() {
        let partial = Partial {
            final_lsn: Lsn(200),
            xid: 9,
            next_index: 2,
        };
        let mut t = Tracker::new(Lsn(100), Some(partial));
        t.begin(Lsn(200), 9, 0).expect("begin");
        assert_eq!(t.change(Lsn(150)), Ok(Change::Skip));
        assert_eq!(t.change(Lsn(151)), Ok(Change::Skip));
        assert!(matches!(t.change(Lsn(152)), Ok(Change::Publish(_))));
        // Another transaction where the partial one was expected: the slot does not match.
        let mut t = Tracker::new(Lsn(100), Some(partial));
        assert!(matches!(
            t.begin(Lsn(300), 10, 0),
            Err(TrackError::PartialMismatch { want_xid: 9, .. })
        ));
    }

    #[test]
    fn an_idle_checkpoint_keeps_a_partial_transaction_that_is_not_back_yet() {
        let partial = Partial {
            final_lsn: Lsn(200),
            xid: 9,
            next_index: 2,
        };
        let mut t = Tracker::new(Lsn(100), Some(partial));
        // The walsender reports a position inside the partial transaction (still decoding it).
        t.keepalive(Lsn(150), &fill(0));
        let cp = t.checkpoint(None);
        assert_eq!(cp.partial, Some(partial), "the partial must ride along");
        assert_eq!(cp.resume_lsn, Lsn(150));
        // Never past its commit, whatever the keepalive says.
        t.keepalive(Lsn(900), &fill(0));
        assert_eq!(t.checkpoint(None).resume_lsn, Lsn(200));
        // Once it is back, it is the stream's business again.
        t.begin(Lsn(200), 9, 0).expect("begin");
        assert_eq!(t.change(Lsn(160)), Ok(Change::Skip));
        assert_eq!(t.change(Lsn(161)), Ok(Change::Skip));
        assert!(matches!(t.change(Lsn(162)), Ok(Change::Publish(_))));
        t.commit(Lsn(210)).expect("commit");
        assert_eq!(t.checkpoint(None).partial, None);
    }

    #[test]
    fn a_restarted_stream_skips_a_transaction_whose_last_change_ended_a_split() {
        let mut t = Tracker::new(Lsn(100), None);
        t.begin(Lsn(200), 9, 0).expect("begin");
        for lsn in [150, 151] {
            assert!(matches!(t.change(Lsn(lsn)), Ok(Change::Publish(_))));
        }
        // The split falls on the transaction's last change: its checkpoint is partial.
        let split = t.split_due(&fill(5), &BATCH).expect("split");
        assert_eq!(split.next_index, 2);
        let cp = t.checkpoint(Some(split));
        t.commit(Lsn(210)).expect("commit");
        assert_eq!(t.committed(&cp), Lsn(100));
        // The stream starts again from the slot (at or before 100): the transaction comes back.
        t.restart();
        t.begin(Lsn(200), 9, 0).expect("begin");
        assert_eq!(t.change(Lsn(150)), Ok(Change::Skip));
        assert_eq!(t.change(Lsn(151)), Ok(Change::Skip));
        t.commit(Lsn(210)).expect("commit");
        assert_eq!(t.checkpoint(None).resume_lsn, Lsn(210));
        assert_eq!(t.checkpoint(None).partial, None);
    }

    #[test]
    fn protocol_errors_are_named() {
        let mut t = Tracker::new(Lsn(0), None);
        assert!(matches!(t.change(Lsn(1)), Err(TrackError::Protocol(_))));
        assert!(matches!(t.commit(Lsn(1)), Err(TrackError::Protocol(_))));
        t.begin(Lsn(5), 1, 0).expect("begin");
        assert!(matches!(
            t.begin(Lsn(6), 2, 0),
            Err(TrackError::Protocol(_))
        ));
    }

    #[test]
    fn commits_are_due_only_at_boundaries_and_splits_inside() {
        let now = Instant::now();
        let mut t = Tracker::new(Lsn(0), None);
        t.begin(Lsn(50), 1, 0).expect("begin");
        t.change(Lsn(10)).expect("change");
        assert!(
            !t.commit_due(&fill(10), false, &BATCH, now),
            "inside a transaction"
        );
        assert_eq!(t.split_due(&fill(4), &BATCH), None);
        assert_eq!(
            t.split_due(&fill(5), &BATCH),
            Some(Partial {
                final_lsn: Lsn(50),
                xid: 1,
                next_index: 1
            })
        );
        t.commit(Lsn(60)).expect("commit");
        assert!(t.commit_due(&fill(3), false, &BATCH, now), "full");
        assert!(!t.commit_due(&fill(3), true, &BATCH, now), "a commit runs");
        assert!(
            !t.commit_due(&fill(2), false, &BATCH, now),
            "not full, not old"
        );
        assert!(t.commit_due(&fill(2), false, &BATCH, now + Duration::from_millis(150)));
        assert!(!t.commit_due(&fill(0), false, &BATCH, now + Duration::from_secs(9)));
    }

    #[test]
    fn an_idle_stream_checkpoints_the_keepalive_position() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Lsn(100), None);
        assert_eq!(t.idle_checkpoint_at(true, t0, &BATCH), None, "nothing new");
        t.keepalive(Lsn(500), &fill(1));
        assert_eq!(t.checkpoint(None).resume_lsn, Lsn(100), "records assembled");
        t.keepalive(Lsn(500), &fill(0));
        assert_eq!(
            t.idle_checkpoint_at(true, t0, &BATCH),
            Some(t0 + BATCH.idle_checkpoint)
        );
        assert_eq!(t.idle_checkpoint_at(false, t0, &BATCH), None, "not idle");
        let cp = t.checkpoint(None);
        assert_eq!(cp.resume_lsn, Lsn(500));
        assert_eq!(t.committed(&cp), Lsn(500));
        // Inside a transaction the keepalive does not move the checkpoint.
        t.begin(Lsn(600), 3, 0).expect("begin");
        t.keepalive(Lsn(700), &fill(0));
        assert_eq!(t.checkpoint(None).resume_lsn, Lsn(500));
    }

    #[test]
    fn drain_and_stop_partials() {
        let mut t = Tracker::new(Lsn(0), None);
        assert_eq!(t.drain_partial(), None);
        t.begin(Lsn(50), 1, 0).expect("begin");
        t.change(Lsn(10)).expect("1");
        assert_eq!(t.partial_before_current(), None, "the first row");
        t.change(Lsn(11)).expect("2");
        assert_eq!(t.partial_before_current().map(|p| p.next_index), Some(1));
        assert_eq!(t.drain_partial().map(|p| p.next_index), Some(2));
        // A transaction the checkpoint covers whole needs no partial.
        let mut t = Tracker::new(Lsn(100), None);
        t.begin(Lsn(50), 1, 0).expect("begin");
        t.change(Lsn(10)).expect("skip");
        assert_eq!(t.drain_partial(), None);
        assert_eq!(t.partial_before_current(), None);
    }
}
