//! The verdict every exactly-once test ends with: compare what was committed in Postgres (the writers'
//! ground truth) with what a read_committed consumer received, by event id: nothing missing, nothing
//! duplicated, and per key the same order as written.

use std::collections::{HashMap, HashSet};
use std::fmt;

use uuid::Uuid;

use crate::kafka::Record;
use crate::postgres::Written;

/// What arrived compared with what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Events written (committed) in Postgres.
    pub expected: usize,
    /// Records received (duplicates included).
    pub received: usize,
    /// Written but never received.
    pub missing: Vec<Uuid>,
    /// Received more than once (each id listed once).
    pub duplicated: Vec<Uuid>,
    /// Human-readable descriptions of per-key order breaks and key mismatches.
    pub order_violations: Vec<String>,
    /// Records whose `event_id` header is absent, not a UUID, or not a written event.
    pub unexpected: usize,
}

impl Verdict {
    pub fn is_exactly_once(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.order_violations.is_empty()
            && self.unexpected == 0
    }

    /// Panics with a short summary (counts, the first few ids) unless every written event arrived
    /// exactly once, in order per key.
    #[track_caller]
    pub fn assert_exactly_once(&self) {
        if self.is_exactly_once() {
            return;
        }
        let first = |v: &[Uuid]| {
            v.iter()
                .take(5)
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut msg = format!("not exactly once: {self}");
        if !self.missing.is_empty() {
            msg.push_str(&format!("\n  first missing: {}", first(&self.missing)));
        }
        if !self.duplicated.is_empty() {
            msg.push_str(&format!(
                "\n  first duplicated: {}",
                first(&self.duplicated)
            ));
        }
        for v in self.order_violations.iter().take(5) {
            msg.push_str(&format!("\n  order: {v}"));
        }
        panic!("{msg}");
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected={} received={} missing={} duplicated={} order_violations={} unexpected={}",
            self.expected,
            self.received,
            self.missing.len(),
            self.duplicated.len(),
            self.order_violations.len(),
            self.unexpected
        )
    }
}

/// Compares by the `event_id` header. Order: for each (topic, partition, key), the first occurrences of
/// the received events must follow the write order of that key (the record key is the aggregate id).
pub fn verify(written: &[Written], received: &[Record]) -> Verdict {
    // Position of each event in its key's write order.
    let mut per_key_seq: HashMap<&str, usize> = HashMap::new();
    let mut by_id: HashMap<Uuid, (&Written, usize)> = HashMap::with_capacity(written.len());
    for w in written {
        let n = per_key_seq.entry(w.aggregate_id.as_str()).or_insert(0);
        by_id.insert(w.id, (w, *n));
        *n += 1;
    }

    let mut seen: HashSet<Uuid> = HashSet::with_capacity(written.len());
    let mut duplicated: Vec<Uuid> = Vec::new();
    let mut dup_set: HashSet<Uuid> = HashSet::new();
    let mut unexpected = 0usize;
    let mut order_violations = Vec::new();
    // (topic, partition, key) -> last write position seen.
    let mut last_pos: HashMap<(&str, i32, &str), (usize, Uuid)> = HashMap::new();

    for r in received {
        let Some(id) = r.header("event_id").and_then(|s| Uuid::parse_str(s).ok()) else {
            unexpected += 1;
            continue;
        };
        let Some(&(w, pos)) = by_id.get(&id) else {
            unexpected += 1;
            continue;
        };
        if !seen.insert(id) {
            if dup_set.insert(id) {
                duplicated.push(id);
            }
            continue;
        }
        let key = r.key_str().unwrap_or("");
        if key != w.aggregate_id {
            order_violations.push(format!(
                "event {id} has key {key:?}, written with aggregate_id {:?}",
                w.aggregate_id
            ));
            continue;
        }
        let slot = (r.topic.as_str(), r.partition, w.aggregate_id.as_str());
        if let Some(&(prev, prev_id)) = last_pos.get(&slot) {
            if pos <= prev {
                order_violations.push(format!(
                    "key {:?} in {}[{}] offset {}: event {id} (write #{pos}) after {prev_id} (write #{prev})",
                    w.aggregate_id, r.topic, r.partition, r.offset
                ));
            }
        }
        last_pos.insert(slot, (pos.max(last_pos.get(&slot).map_or(0, |p| p.0)), id));
    }

    let missing: Vec<Uuid> = written
        .iter()
        .filter(|w| !seen.contains(&w.id))
        .map(|w| w.id)
        .collect();
    Verdict {
        expected: written.len(),
        received: received.len(),
        missing,
        duplicated,
        order_violations,
        unexpected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str) -> Written {
        Written {
            id: Uuid::new_v4(),
            aggregate_type: "a".into(),
            aggregate_id: key.into(),
            event_type: "e".into(),
            payload: "{}".into(),
        }
    }

    fn rec(w: &Written, offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: Some(w.aggregate_id.clone().into_bytes()),
            value: Some(w.payload.clone().into_bytes()),
            headers: vec![("event_id".into(), w.id.to_string().into_bytes())],
        }
    }

    #[test]
    fn perfect_delivery_passes() {
        let ws = vec![w("k1"), w("k2"), w("k1")];
        let rs: Vec<Record> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| rec(w, i as i64))
            .collect();
        let v = verify(&ws, &rs);
        assert!(v.is_exactly_once(), "{v}");
        v.assert_exactly_once();
    }

    #[test]
    fn finds_missing_duplicates_order_and_strangers() {
        let ws = vec![w("k1"), w("k1"), w("k2")];
        let stranger = w("k9");
        let rs = vec![
            rec(&ws[1], 0),
            rec(&ws[0], 1),
            rec(&ws[0], 2),
            rec(&stranger, 3),
        ];
        let v = verify(&ws, &rs);
        assert_eq!(v.missing, vec![ws[2].id]);
        assert_eq!(v.duplicated, vec![ws[0].id]);
        assert_eq!(v.order_violations.len(), 1, "{:?}", v.order_violations);
        assert_eq!(v.unexpected, 1);
        assert_eq!(
            v.to_string(),
            "expected=3 received=4 missing=1 duplicated=1 order_violations=1 unexpected=1"
        );
    }

    #[test]
    #[should_panic(expected = "not exactly once")]
    fn assert_panics_on_loss() {
        let ws = vec![w("k1")];
        verify(&ws, &[]).assert_exactly_once();
    }
}
