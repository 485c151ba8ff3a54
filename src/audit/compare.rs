//! The comparison itself: pure functions over sorted streams, tested on small synthetic inputs.
//!
//! ```text
//!  rows (by id) ──┐
//!                 ├─ merge by event id ─> missing, duplicated, no row (never existed | cleaned up)
//!  records (by id)┘
//!  records (by topic, partition, key, offset) ─> order violations
//! ```
//!
//! Order rule. The relay promises commit order per key. Records carry the change's LSN, the xid
//! and the commit time, not the commit LSN, so a record is out of order when it comes after one it
//! was committed before: same transaction and a smaller `pg_lsn`; or another transaction with both
//! an earlier `pg_commit_ts` and a smaller `pg_lsn`. Requiring both keeps two legitimate cases
//! quiet: concurrent transactions on one key, where the one whose change came first may commit
//! second (a smaller `pg_lsn` later in Kafka is then correct); and commit timestamps, which are
//! taken before the commit record is written and so may tie or invert by microseconds between
//! backends. Each record is compared with the newest record of its key so far (the one the
//! others must not precede), so a late record is counted once.

use std::io;

use super::entries::{
    format_uuid, IdEntry, KeyEntry, Names, RowEntry, DEAD_LETTER, IN_CUT, IN_WINDOW,
    OLDER_THAN_TABLE,
};
use super::report::{Duplicate, Findings, MissingRow, NoRow, OrderViolation, StreamPosition};
use crate::lsn::Lsn;

/// At most this many records of one event id are kept while its group is judged; more are counted.
const GROUP_KEEP: usize = 64;

/// Merges rows and records by event id into `findings`. Both streams ascend by id (records by
/// id, then topic-partition, then offset).
pub fn join(
    rows: impl Iterator<Item = io::Result<RowEntry>>,
    records: impl Iterator<Item = io::Result<IdEntry>>,
    names: &Names,
    examples: usize,
    findings: &mut Findings,
) -> io::Result<()> {
    let mut rows = Heads::new(rows)?;
    let mut recs = Heads::new(records)?;
    let mut group: Vec<IdEntry> = Vec::new();
    loop {
        let id = match (rows.peek().map(|r| r.id), recs.peek().map(|r| r.id)) {
            (None, None) => return Ok(()),
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
        };
        let mut row = None;
        while rows.peek().is_some_and(|r| r.id == id) {
            // A table without a unique id may hold one id twice: judge it once.
            let r = rows.advance()?;
            row = row.or(r);
        }
        group.clear();
        let mut copies = 0u64;
        while recs.peek().is_some_and(|r| r.id == id) {
            if let Some(r) = recs.advance()? {
                copies += 1;
                if group.len() < GROUP_KEEP {
                    group.push(r);
                }
            }
        }
        judge(id, row, &group, copies, names, examples, findings);
    }
}

fn judge(
    id: u128,
    row: Option<RowEntry>,
    recs: &[IdEntry],
    copies: u64,
    names: &Names,
    examples: usize,
    f: &mut Findings,
) {
    let in_window = recs.iter().any(|r| r.flags & IN_WINDOW != 0);
    let judged_row = row.is_some_and(|r| r.judged);
    let at = |keep: &dyn Fn(&IdEntry) -> bool| {
        recs.iter()
            .filter(|r| keep(r))
            .take(examples.max(1))
            .map(|r| names.location(r.tp, r.offset))
            .collect::<Vec<_>>()
    };
    if copies > 1 && (in_window || judged_row) {
        f.duplicated.add(examples, || Duplicate {
            event_id: format_uuid(id),
            copies,
            at: at(&|_| true),
        });
    }
    match row {
        Some(row) => {
            if !row.judged {
                return;
            }
            let found = recs
                .iter()
                .any(|r| r.flags & DEAD_LETTER != 0 || names.tp_parts(r.tp).0 == row.topic);
            if !found {
                if let Some(ids) = f.missing_ids.as_mut() {
                    ids.push(id);
                }
                f.missing.add(examples, || MissingRow {
                    event_id: format_uuid(id),
                    topic: names.topic_name(row.topic).to_string(),
                    created_at: (row.created_at != i64::MIN)
                        .then(|| super::time::format(row.created_at)),
                    found_elsewhere: at(&|_| true),
                });
            }
        }
        None => {
            let judged: Vec<&IdEntry> = recs.iter().filter(|r| r.flags & IN_WINDOW != 0).collect();
            if judged.is_empty() {
                return;
            }
            let in_cut: Vec<&IdEntry> = judged
                .iter()
                .copied()
                .filter(|r| r.flags & IN_CUT != 0)
                .collect();
            if in_cut.is_empty() {
                f.after_cut += judged.len() as u64;
                return;
            }
            let no_row = || NoRow {
                event_id: format_uuid(id),
                at: at(&|r| r.flags & IN_WINDOW != 0 && r.flags & IN_CUT != 0),
            };
            if in_cut.iter().all(|r| r.flags & OLDER_THAN_TABLE != 0) {
                f.no_row_cleaned_up.add(examples, no_row);
            } else {
                f.no_row_never_existed.add(examples, no_row);
            }
        }
    }
}

/// Whether `x` was committed before `y` (see the module's order rule).
pub fn committed_before(x: &KeyEntry, y: &KeyEntry) -> bool {
    if x.xid == y.xid {
        x.lsn < y.lsn
    } else {
        x.commit_ts < y.commit_ts && x.lsn < y.lsn
    }
}

/// Checks per-key order over records ascending by (topic-partition, key, offset).
pub fn check_order(
    keys: impl Iterator<Item = io::Result<KeyEntry>>,
    names: &Names,
    examples: usize,
    f: &mut Findings,
) -> io::Result<()> {
    let mut newest: Option<KeyEntry> = None;
    for k in keys {
        let k = k?;
        match newest {
            Some(n) if n.tp == k.tp && n.key == k.key => {
                if committed_before(&k, &n) {
                    let (t, partition) = names.tp_parts(k.tp);
                    f.order_violations.add(examples, || OrderViolation {
                        topic: names.topic_name(t).to_string(),
                        partition,
                        earlier: position(&n),
                        later: position(&k),
                    });
                } else {
                    newest = Some(k);
                }
            }
            _ => newest = Some(k),
        }
    }
    Ok(())
}

fn position(k: &KeyEntry) -> StreamPosition {
    StreamPosition {
        offset: k.offset,
        pg_lsn: Lsn(k.lsn).to_string(),
        pg_xid: k.xid,
        pg_commit_ts: super::time::format(k.commit_ts),
    }
}

/// A stream with its head read ahead, errors surfacing at the next step.
struct Heads<T, I: Iterator<Item = io::Result<T>>> {
    it: I,
    head: Option<T>,
}

impl<T: Copy, I: Iterator<Item = io::Result<T>>> Heads<T, I> {
    fn new(mut it: I) -> io::Result<Self> {
        let head = it.next().transpose()?;
        Ok(Self { it, head })
    }

    fn peek(&self) -> Option<&T> {
        self.head.as_ref()
    }

    fn advance(&mut self) -> io::Result<Option<T>> {
        let current = self.head.take();
        self.head = self.it.next().transpose()?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entries::key_hash;

    struct World {
        names: Names,
        booking: u16,
        car: u16,
        dlq: u16,
    }

    fn world() -> World {
        let mut names = Names::default();
        let booking = names.topic("outbox.booking");
        let car = names.topic("outbox.car");
        let dlq = names.topic("outbox_relay.dead_letter");
        for t in [booking, car, dlq] {
            for p in 0..3 {
                names.tp(t, p);
            }
        }
        World {
            names,
            booking,
            car,
            dlq,
        }
    }

    fn row(id: u128, topic: u16, judged: bool) -> RowEntry {
        RowEntry {
            id,
            created_at: 1_000,
            topic,
            judged,
        }
    }

    fn rec(w: &World, id: u128, topic: u16, offset: i64, flags: u8) -> IdEntry {
        let mut names = w.names.clone();
        let flags = if topic == w.dlq {
            flags | DEAD_LETTER
        } else {
            flags
        };
        IdEntry {
            id,
            tp: names.tp(topic, 0),
            offset,
            flags,
        }
    }

    fn run(w: &World, mut rows: Vec<RowEntry>, mut recs: Vec<IdEntry>) -> Findings {
        rows.sort();
        recs.sort();
        let mut f = Findings::default();
        join(
            rows.into_iter().map(Ok),
            recs.into_iter().map(Ok),
            &w.names,
            10,
            &mut f,
        )
        .expect("join");
        f
    }

    const OK: u8 = IN_WINDOW | IN_CUT;

    #[test]
    fn every_row_once_on_its_topic_or_the_dead_letter_topic_is_clean() {
        let w = world();
        let f = run(
            &w,
            vec![
                row(1, w.booking, true),
                row(2, w.car, true),
                row(3, w.car, true),
            ],
            vec![
                rec(&w, 1, w.booking, 10, OK),
                rec(&w, 2, w.car, 11, OK),
                rec(&w, 3, w.dlq, 12, OK),
            ],
        );
        assert_eq!(f, Findings::default());
    }

    #[test]
    fn a_row_without_its_record_is_missing_even_when_on_another_topic() {
        let w = world();
        let f = run(
            &w,
            vec![
                row(1, w.booking, true),
                row(2, w.booking, true),
                row(3, w.booking, false),
            ],
            vec![rec(&w, 2, w.car, 5, OK)],
        );
        assert_eq!(f.missing.count, 2);
        let two = &f.missing.examples[1];
        assert_eq!(two.event_id, format_uuid(2));
        assert_eq!(two.found_elsewhere[0].topic, "outbox.car");
        assert_eq!(f.discrepancies(), 2, "row 3 is context, not judged");
    }

    #[test]
    fn duplicates_count_every_copy() {
        let w = world();
        let f = run(
            &w,
            vec![row(1, w.booking, true)],
            vec![
                rec(&w, 1, w.booking, 10, OK),
                rec(&w, 1, w.booking, 20, OK),
                rec(&w, 1, w.dlq, 3, OK),
                // Outside the window and without a row: not judged.
                rec(&w, 9, w.booking, 1, IN_CUT),
                rec(&w, 9, w.booking, 2, IN_CUT),
            ],
        );
        assert_eq!(f.duplicated.count, 1);
        assert_eq!(f.duplicated.examples[0].copies, 3);
        assert_eq!(f.missing.count, 0);
        assert_eq!(f.no_row_never_existed.count, 0);
    }

    #[test]
    fn records_without_rows_are_sorted_by_cut_and_age() {
        let w = world();
        let f = run(
            &w,
            vec![],
            vec![
                rec(&w, 1, w.booking, 1, OK),
                rec(&w, 2, w.booking, 2, OK | OLDER_THAN_TABLE),
                rec(&w, 3, w.booking, 3, IN_WINDOW),
                rec(&w, 4, w.booking, 4, IN_CUT),
            ],
        );
        assert_eq!(f.no_row_never_existed.count, 1);
        assert_eq!(f.no_row_never_existed.examples[0].event_id, format_uuid(1));
        assert_eq!(f.no_row_cleaned_up.count, 1);
        assert_eq!(f.after_cut, 1);
        assert_eq!(f.discrepancies(), 1);
    }

    fn key(tp: u32, k: &str, offset: i64, lsn: u64, ts: i64, xid: u32) -> KeyEntry {
        KeyEntry {
            tp,
            key: key_hash(k.as_bytes()),
            offset,
            lsn,
            commit_ts: ts,
            xid,
        }
    }

    fn order(mut keys: Vec<KeyEntry>) -> Findings {
        keys.sort();
        let mut f = Findings::default();
        check_order(keys.into_iter().map(Ok), &world().names, 10, &mut f).expect("order");
        f
    }

    #[test]
    fn commit_order_per_key_is_clean() {
        let f = order(vec![
            key(0, "a", 1, 100, 10, 7),
            key(0, "a", 2, 110, 10, 7),
            key(0, "b", 3, 90, 9, 6),
            key(0, "a", 4, 200, 20, 8),
            // Concurrent transactions: the change of xid 10 came first, but it committed second.
            key(0, "a", 5, 300, 30, 9),
            key(0, "a", 6, 290, 31, 10),
            // A commit timestamp inverted by microseconds, with the change LSN in order.
            key(0, "a", 7, 400, 29, 11),
            // Another partition starts afresh.
            key(1, "a", 1, 1, 1, 1),
        ]);
        assert_eq!(f.order_violations.count, 0, "{:?}", f.order_violations);
    }

    #[test]
    fn a_record_committed_before_an_earlier_one_is_a_violation() {
        let f = order(vec![
            key(0, "a", 1, 100, 10, 7),
            key(0, "a", 2, 200, 20, 8),
            // Same transaction, an earlier change after a later one.
            key(0, "b", 3, 500, 50, 9),
            key(0, "b", 4, 400, 50, 9),
            // xid 6 committed (10 < 20, 50 < 200) before xid 8 but comes after it.
            key(0, "a", 5, 50, 5, 6),
            // Compared with the newest (offset 2), not with the late one: in order.
            key(0, "a", 6, 300, 30, 12),
        ]);
        assert_eq!(f.order_violations.count, 2, "{:?}", f.order_violations);
        let v: Vec<(i64, i64)> = f
            .order_violations
            .examples
            .iter()
            .map(|v| (v.earlier.offset, v.later.offset))
            .collect();
        assert_eq!(v, [(2, 5), (3, 4)]);
    }
}
