//! Property tests of the position tracker against a model of Postgres and Kafka, without servers.
//!
//! Each case is a random stream (transaction sizes from empty to past `split_events`, keepalives,
//! idle periods) replayed with random crashes: at a crash, decided commits that did not complete
//! are lost with everything assembled, acknowledgements may not have reached the server, and the
//! next session resumes from the last *committed* checkpoint while the server resumes from the
//! slot's (possibly older) position, as Postgres does. A session may also switch from catching
//! up to streaming between two transactions: everything read is committed, and the stream starts
//! again from the slot with the same tracker. The driver below plays the loop's part:
//! it asks the tracker what to do and does it, exactly as `pipeline.rs` does.
//!
//! Properties:
//! 1. the records in "Kafka" are the stream's committed rows, in order, with no gap and no repeat;
//! 2. the acknowledged LSN never passes the last committed checkpoint;
//! 3. a Postgres transaction is cut only at `split_events` (or by a drain at shutdown);
//! 4. skip decisions are exact at every boundary (follows from 1 across every crash point).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tracker::{BatchSettings, Change, Fill, Tracker};
use crate::lsn::Lsn;
use crate::sink::checkpoint::Checkpoint;

/// One item the server sends.
#[derive(Debug, Clone)]
enum Item {
    Txn(Txn),
    KeepAlive(Lsn),
}

#[derive(Debug, Clone)]
struct Txn {
    xid: u32,
    final_lsn: Lsn,
    end_lsn: Lsn,
    /// (lsn, row id) of each outbox row.
    rows: Vec<(Lsn, u64)>,
}

/// A random stream: transactions of 0..=max rows with keepalives (and other tables' WAL) between.
fn stream(rng: &mut StdRng, txns: usize, big_every: usize, big: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut lsn = 1_000u64;
    let mut next_row = 0u64;
    for i in 0..txns {
        if rng.random_bool(0.3) {
            // Other tables' WAL, then a keepalive at the server's position.
            lsn += rng.random_range(1..500);
            items.push(Item::KeepAlive(Lsn(lsn)));
        }
        let n = if big_every > 0 && i % big_every == big_every - 1 {
            rng.random_range(big / 2..=big)
        } else {
            rng.random_range(0..=6)
        };
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            lsn += rng.random_range(1..40);
            rows.push((Lsn(lsn), next_row));
            next_row += 1;
        }
        let before_rows = rows.first().map_or(lsn, |r| r.0 .0);
        lsn += rng.random_range(1..40);
        let final_lsn = Lsn(lsn);
        lsn += rng.random_range(1..40);
        if rng.random_bool(0.15) {
            // The walsender reports what it has read, which may be inside a transaction that has
            // not committed yet (its rows come with its commit, later).
            items.push(Item::KeepAlive(Lsn(
                rng.random_range(before_rows..final_lsn.0)
            )));
        }
        items.push(Item::Txn(Txn {
            xid: 500 + i as u32,
            final_lsn,
            end_lsn: Lsn(lsn),
            rows,
        }));
    }
    lsn += 10;
    items.push(Item::KeepAlive(Lsn(lsn)));
    items
}

/// Kafka as the relay sees it: committed records and the last committed checkpoint, atomically.
#[derive(Debug, Default)]
struct Kafka {
    records: Vec<u64>,
    checkpoint: Option<Checkpoint>,
}

/// A decided commit: its checkpoint and records; `cut` says how it was decided.
#[derive(Debug)]
struct Decided {
    checkpoint: Checkpoint,
    records: Vec<u64>,
}

/// What the driver checks about every cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Boundary,
    Split,
    Drain,
}

struct Session<'a> {
    rng: &'a mut StdRng,
    batch: BatchSettings,
    tracker: Tracker,
    fill: Fill,
    assembling: Vec<u64>,
    decided: VecDeque<Decided>,
    /// Virtual clock.
    now: Instant,
    last_commit: Instant,
    /// The partial transaction of the checkpoint this session started from.
    start_partial: Option<crate::sink::checkpoint::Partial>,
    /// Row id -> whether it is the last row of its transaction.
    last_of_txn: &'a std::collections::HashMap<u64, bool>,
}

impl Session<'_> {
    fn decide(&mut self, partial: Option<crate::sink::checkpoint::Partial>, cut: Cut) {
        let checkpoint = self.tracker.checkpoint(partial);
        let records = std::mem::take(&mut self.assembling);
        match cut {
            Cut::Boundary => {
                if let Some(last) = records.last() {
                    assert!(
                        self.last_of_txn[last],
                        "a commit at a boundary cut a transaction: {records:?}"
                    );
                }
                // Only the checkpoint's own partial transaction, not back yet, may ride along.
                assert!(
                    checkpoint.partial.is_none() || checkpoint.partial == self.start_partial,
                    "a boundary cut with a new partial: {checkpoint:?}"
                );
            }
            Cut::Split => assert!(
                records.len() as u64 >= self.batch.split_events,
                "split before split_events: {} records",
                records.len()
            ),
            Cut::Drain => {}
        }
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("  decide {cut:?} {checkpoint:?} records {records:?}");
        }
        self.fill = Fill::default();
        self.decided.push_back(Decided {
            checkpoint,
            records,
        });
    }

    /// The first decided commit completes: Kafka takes it whole, the tracker acknowledges.
    fn complete_one(&mut self, kafka: &mut Kafka, acks: &mut Vec<Lsn>) {
        let Some(d) = self.decided.pop_front() else {
            return;
        };
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("  complete {:?} {:?}", d.checkpoint, d.records);
        }
        kafka.records.extend(&d.records);
        kafka.checkpoint = Some(d.checkpoint.clone());
        let ack = self.tracker.committed(&d.checkpoint);
        assert!(
            ack <= d.checkpoint.resume_lsn,
            "acknowledged {ack} past the committed checkpoint {:?}",
            d.checkpoint
        );
        acks.push(ack);
        self.last_commit = self.now;
        // What grew while the commit ran may be due already.
        if self.decided.is_empty()
            && self
                .tracker
                .commit_due(&self.fill, false, &self.batch, self.now)
        {
            self.decide(None, Cut::Boundary);
        }
    }

    fn assemble(&mut self, id: u64) {
        self.assembling.push(id);
        self.fill.events += 1;
        self.fill.bytes += 100;
        self.fill.opened_at.get_or_insert(self.now);
    }

    fn committing(&self) -> bool {
        !self.decided.is_empty()
    }

    /// Time passes; the loop's timers fire.
    fn tick(&mut self, kafka: &mut Kafka, acks: &mut Vec<Lsn>) {
        self.now += Duration::from_millis(self.rng.random_range(0..60));
        if self.committing() && self.rng.random_bool(0.5) {
            self.complete_one(kafka, acks);
        }
        if let Some(at) = self
            .tracker
            .commit_deadline(&self.fill, self.committing(), &self.batch)
        {
            if self.now >= at && !self.fill.is_empty() {
                self.decide(None, Cut::Boundary);
            }
        }
        let idle = self.fill.is_empty() && !self.committing();
        if let Some(at) = self
            .tracker
            .idle_checkpoint_at(idle, self.last_commit, &self.batch)
        {
            if self.now >= at {
                self.decide(None, Cut::Boundary);
            }
        }
    }
}

/// Runs the whole scenario; panics when a property breaks.
fn scenario(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let batch = BatchSettings {
        max_events: rng.random_range(1..12),
        max_bytes: rng.random_range(100..3_000),
        max_delay: Duration::from_millis(rng.random_range(1..200)),
        split_events: rng.random_range(1..10),
        idle_checkpoint: Duration::from_millis(rng.random_range(1..500)),
    };
    let txns = rng.random_range(1..40);
    let big_every = rng.random_range(0..6);
    let items = stream(&mut rng, txns, big_every, 25);
    let all_rows: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Txn(t) => Some(t.rows.iter().map(|r| r.1)),
            Item::KeepAlive(_) => None,
        })
        .flatten()
        .collect();
    let mut last_of_txn = std::collections::HashMap::new();
    for item in &items {
        if let Item::Txn(t) = item {
            for (i, (_, id)) in t.rows.iter().enumerate() {
                last_of_txn.insert(*id, i + 1 == t.rows.len());
            }
        }
    }
    let crashes = rng.random_range(0..6);
    let mut kafka = Kafka::default();
    // The slot's confirmed_flush_lsn: the last acknowledgement that reached the server.
    let mut confirmed = Lsn(0);
    let mut now = Instant::now();
    for session_no in 0..=crashes {
        let last_session = session_no == crashes;
        let (resume, partial) = match &kafka.checkpoint {
            Some(cp) => (cp.resume_lsn, cp.partial),
            None => (confirmed, None),
        };
        assert!(
            confirmed <= resume,
            "the slot ({confirmed}) passed the checkpoint ({resume})"
        );
        let mut s = Session {
            rng: &mut rng,
            batch,
            tracker: Tracker::new(resume, partial),
            fill: Fill::default(),
            assembling: Vec::new(),
            decided: VecDeque::new(),
            now,
            last_commit: now,
            last_of_txn: &last_of_txn,
            start_partial: partial,
        };
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!(
                "session {session_no}: confirmed {confirmed} resume {resume} partial {partial:?}"
            );
        }
        let mut acks = Vec::new();
        // A crash at a random point of this session's stream (never in the last session).
        let crash_at = (!last_session).then(|| s.rng.random_range(0..items.len() * 3 + 2));
        let mut steps = 0usize;
        // Catch-up sessions switch to streaming within the session (at most twice here).
        let mut switches = 0;
        // START_REPLICATION from the slot: transactions that commit at or after it.
        'reopen: loop {
            'stream: for item in items.iter() {
                match item {
                    Item::KeepAlive(wal_end) => {
                        if *wal_end < confirmed {
                            continue;
                        }
                        s.tracker.keepalive(*wal_end, &s.fill);
                    }
                    Item::Txn(t) => {
                        if t.final_lsn < confirmed {
                            continue;
                        }
                        s.tracker.begin(t.final_lsn, t.xid, 0).expect("begin");
                        for (lsn, id) in &t.rows {
                            if crash_at == Some(steps) {
                                break 'stream;
                            }
                            steps += 1;
                            match s.tracker.change(*lsn).expect("change") {
                                Change::Skip => {}
                                Change::Publish(pos) => {
                                    assert_eq!(pos.lsn, *lsn);
                                    s.assemble(*id);
                                    if let Some(p) = s.tracker.split_due(&s.fill, &s.batch) {
                                        s.decide(Some(p), Cut::Split);
                                    }
                                }
                            }
                            if s.rng.random_bool(0.2) {
                                s.tick(&mut kafka, &mut acks);
                            }
                        }
                        s.tracker.commit(t.end_lsn).expect("commit");
                        if s.tracker
                            .commit_due(&s.fill, s.committing(), &s.batch, s.now)
                        {
                            s.decide(None, Cut::Boundary);
                        }
                    }
                }
                if crash_at == Some(steps) {
                    break 'stream;
                }
                steps += 1;
                if s.rng.random_bool(0.5) {
                    s.tick(&mut kafka, &mut acks);
                }
                if switches < 2 && s.rng.random_bool(0.05) {
                    // The catch-up read reached the WAL end (always between transactions): commit
                    // everything read, then START_REPLICATION from the slot, with the same tracker.
                    switches += 1;
                    if !s.fill.is_empty() {
                        s.decide(None, Cut::Boundary);
                    }
                    while s.committing() {
                        s.complete_one(&mut kafka, &mut acks);
                    }
                    s.tracker.restart();
                    // As at a start: the last committed checkpoint's partial may ride along.
                    s.start_partial = kafka.checkpoint.as_ref().and_then(|c| c.partial);
                    // The last acknowledgements may or may not have reached the slot.
                    if !acks.is_empty() {
                        let reached = s.rng.random_range(0..=acks.len());
                        if reached > 0 {
                            confirmed = confirmed.max(acks[reached - 1]);
                        }
                    }
                    if std::env::var_os("MODEL_TRACE").is_some() {
                        eprintln!("  switch: stream again from {confirmed}");
                    }
                    continue 'reopen;
                }
            }
            break;
        }
        if last_session {
            // Shutdown: commit what is assembled, wait for every decided commit.
            if !s.fill.is_empty() {
                let p = s.tracker.drain_partial();
                s.decide(p, Cut::Drain);
            }
            while s.committing() {
                s.complete_one(&mut kafka, &mut acks);
            }
            // An idle checkpoint may still be due: let time pass until it is not.
            for _ in 0..50 {
                s.now += batch.idle_checkpoint;
                s.tick(&mut kafka, &mut acks);
                while s.committing() {
                    s.complete_one(&mut kafka, &mut acks);
                }
            }
        } else if s.committing() && s.rng.random_bool(0.5) {
            // The crash came while a commit was running; it may still have completed.
            s.complete_one(&mut kafka, &mut acks);
        }
        now = s.now;
        // Which acknowledgements reached the server before the crash: any prefix.
        if !acks.is_empty() {
            let reached = rng.random_range(0..=acks.len());
            if reached > 0 {
                confirmed = confirmed.max(acks[reached - 1]);
            }
        }
        if let Some(cp) = &kafka.checkpoint {
            assert!(confirmed <= cp.resume_lsn);
        }
    }
    if kafka.records != all_rows {
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<_> = kafka.records.iter().filter(|r| !seen.insert(**r)).collect();
        let missing: Vec<_> = all_rows.iter().filter(|r| !seen.contains(r)).collect();
        panic!(
            "seed {seed}: published != committed rows (batch {batch:?}, {crashes} crashes): duplicated {dups:?}, missing {missing:?}\nkafka {:?}\nstream {items:?}",
            kafka.records
        );
    }
    let last = items
        .iter()
        .filter_map(|i| match i {
            Item::Txn(t) => Some(t.end_lsn),
            Item::KeepAlive(_) => None,
        })
        .max()
        .unwrap_or_default();
    let cp = kafka.checkpoint.as_ref().map(|c| c.resume_lsn);
    assert!(
        all_rows.is_empty() || cp >= Some(last),
        "the final checkpoint {cp:?} does not cover the last transaction ({last})"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

    #[test]
    fn published_equals_committed_across_random_crashes(seed in any::<u64>()) {
        scenario(seed);
    }
}

#[test]
fn a_few_fixed_seeds() {
    if let Some(seed) = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return scenario(seed);
    }
    for seed in 0..200 {
        scenario(seed);
    }
}
