//! The compact forms audit keeps of rows and records, and the tables their small indexes point to.
//!
//! Ten million events must fit 200 MB together with the Kafka client, so nothing variable-sized
//! is kept per event: an event id is a `u128` (a UUID's 16 bytes, big-endian, which orders as
//! Postgres orders `uuid`), a topic is a `u16` index into [`Names`], a (topic, partition) a `u32`,
//! a key a 128-bit hash. Each entry has a fixed binary form, so [`super::sort::Sorter`] can spill
//! it to disk.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::sort::Fixed;

/// `flags`: the record is inside the window (time or LSN range).
pub const IN_WINDOW: u8 = 1;
/// `flags`: its Postgres transaction is visible in the audit's snapshot (inside the cut).
pub const IN_CUT: u8 = 2;
/// `flags`: it is older than the oldest row left in the table (or the table is empty).
pub const OLDER_THAN_TABLE: u8 = 4;
/// `flags`: it is on the dead-letter topic.
pub const DEAD_LETTER: u8 = 8;

/// One row of the outbox table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowEntry {
    /// Event id (the row's `id`).
    pub id: u128,
    /// `created_at`, microseconds since the Unix epoch (`i64::MIN` without the column).
    pub created_at: i64,
    /// Index of the topic the row routes to in [`Names`] (the dead-letter topic if unroutable).
    pub topic: u16,
    /// Whether it is judged (inside the window); other rows only match records.
    pub judged: bool,
}

impl Fixed for RowEntry {
    const SIZE: usize = 27;
    fn put(&self, o: &mut [u8]) {
        o[..16].copy_from_slice(&self.id.to_be_bytes());
        o[16..24].copy_from_slice(&self.created_at.to_le_bytes());
        o[24..26].copy_from_slice(&self.topic.to_le_bytes());
        o[26] = u8::from(self.judged);
    }
    fn get(b: &[u8]) -> Self {
        Self {
            id: u128::from_be_bytes(arr(&b[..16])),
            created_at: i64::from_le_bytes(arr(&b[16..24])),
            topic: u16::from_le_bytes(arr(&b[24..26])),
            judged: b[26] != 0,
        }
    }
}

/// One Kafka record, for the join by event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdEntry {
    /// Event id (the `event_id` header).
    pub id: u128,
    /// Index of its (topic, partition) in [`Names`].
    pub tp: u32,
    /// Its offset.
    pub offset: i64,
    /// [`IN_WINDOW`], [`IN_CUT`], [`OLDER_THAN_TABLE`], [`DEAD_LETTER`].
    pub flags: u8,
}

impl Fixed for IdEntry {
    const SIZE: usize = 29;
    fn put(&self, o: &mut [u8]) {
        o[..16].copy_from_slice(&self.id.to_be_bytes());
        o[16..20].copy_from_slice(&self.tp.to_le_bytes());
        o[20..28].copy_from_slice(&self.offset.to_le_bytes());
        o[28] = self.flags;
    }
    fn get(b: &[u8]) -> Self {
        Self {
            id: u128::from_be_bytes(arr(&b[..16])),
            tp: u32::from_le_bytes(arr(&b[16..20])),
            offset: i64::from_le_bytes(arr(&b[20..28])),
            flags: b[28],
        }
    }
}

/// One Kafka record of a routed topic, for the order check per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyEntry {
    /// Index of its (topic, partition).
    pub tp: u32,
    /// 128-bit hash of the key ([`key_hash`]).
    pub key: u128,
    /// Its offset: the order Kafka delivers.
    pub offset: i64,
    /// `pg_lsn`: the change's position in the WAL.
    pub lsn: u64,
    /// `pg_commit_ts`, microseconds since the Unix epoch.
    pub commit_ts: i64,
    /// `pg_xid`.
    pub xid: u32,
}

impl Fixed for KeyEntry {
    const SIZE: usize = 48;
    fn put(&self, o: &mut [u8]) {
        o[..4].copy_from_slice(&self.tp.to_le_bytes());
        o[4..20].copy_from_slice(&self.key.to_be_bytes());
        o[20..28].copy_from_slice(&self.offset.to_le_bytes());
        o[28..36].copy_from_slice(&self.lsn.to_le_bytes());
        o[36..44].copy_from_slice(&self.commit_ts.to_le_bytes());
        o[44..48].copy_from_slice(&self.xid.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        Self {
            tp: u32::from_le_bytes(arr(&b[..4])),
            key: u128::from_be_bytes(arr(&b[4..20])),
            offset: i64::from_le_bytes(arr(&b[20..28])),
            lsn: u64::from_le_bytes(arr(&b[28..36])),
            commit_ts: i64::from_le_bytes(arr(&b[36..44])),
            xid: u32::from_le_bytes(arr(&b[44..48])),
        }
    }
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

/// A 128-bit hash of a record key: two SipHash-1-3 passes with distinct prefixes. Keys are only
/// compared for equality within one partition, and at 128 bits two distinct keys colliding in a
/// 10M-record window has a probability near 10^-25.
pub fn key_hash(key: &[u8]) -> u128 {
    let half = |tag: u8| {
        let mut h = std::hash::DefaultHasher::new();
        tag.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// Parses a UUID's text (`8-4-4-4-12` hex digits, either case, or 32 plain hex digits).
pub fn parse_uuid(text: &[u8]) -> Option<u128> {
    let mut v: u128 = 0;
    let mut digits = 0;
    for (i, &c) in text.iter().enumerate() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            b'-' if text.len() == 36 && matches!(i, 8 | 13 | 18 | 23) => continue,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
        digits += 1;
    }
    (digits == 32 && (text.len() == 32 || text.len() == 36)).then_some(v)
}

/// A UUID's canonical text.
pub fn format_uuid(id: u128) -> String {
    let h = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Names behind the indexes: topics (`u16`) and (topic, partition) pairs (`u32`).
#[derive(Debug, Default, Clone)]
pub struct Names {
    topics: Vec<String>,
    topic_index: HashMap<String, u16>,
    tps: Vec<(u16, i32)>,
    tp_index: HashMap<(u16, i32), u32>,
}

impl Names {
    /// The index of `topic`, added if new.
    pub fn topic(&mut self, topic: &str) -> u16 {
        if let Some(i) = self.topic_index.get(topic) {
            return *i;
        }
        let i = self.topics.len() as u16;
        self.topics.push(topic.to_string());
        self.topic_index.insert(topic.to_string(), i);
        i
    }

    /// The index of `topic` if known.
    pub fn find_topic(&self, topic: &str) -> Option<u16> {
        self.topic_index.get(topic).copied()
    }

    /// The name of topic `i`.
    pub fn topic_name(&self, i: u16) -> &str {
        self.topics.get(usize::from(i)).map_or("?", String::as_str)
    }

    /// Number of topics known.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The index of (topic `t`, `partition`), added if new.
    pub fn tp(&mut self, t: u16, partition: i32) -> u32 {
        if let Some(i) = self.tp_index.get(&(t, partition)) {
            return *i;
        }
        let i = self.tps.len() as u32;
        self.tps.push((t, partition));
        self.tp_index.insert((t, partition), i);
        i
    }

    /// Topic index and partition of tp `i`.
    pub fn tp_parts(&self, i: u32) -> (u16, i32) {
        self.tps.get(i as usize).copied().unwrap_or((u16::MAX, -1))
    }

    /// `topic/partition@offset`, for reports.
    pub fn location(&self, tp: u32, offset: i64) -> super::report::Location {
        let (t, p) = self.tp_parts(tp);
        super::report::Location {
            topic: self.topic_name(t).to_string(),
            partition: p,
            offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_and_order_as_postgres() {
        let a = "5f0c6f7e-0000-4000-8000-000000000001";
        let v = parse_uuid(a.as_bytes()).expect("parses");
        assert_eq!(format_uuid(v), a);
        assert_eq!(
            parse_uuid(b"5F0C6F7E00004000800000000000000 1".as_ref()),
            None
        );
        assert_eq!(
            parse_uuid(b"5F0C6F7E000040008000000000000001"),
            Some(v),
            "plain hex, upper case"
        );
        for bad in [
            &b""[..],
            b"xyz",
            b"5f0c6f7e-0000-4000-8000-00000000000",
            b"5f0c6f7e00-00-4000-8000-000000000001",
        ] {
            assert_eq!(parse_uuid(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Postgres orders uuid by its bytes: the big-endian u128 orders the same way.
        let lo = parse_uuid(b"00000000-0000-0000-0000-0000000000ff").expect("lo");
        let hi = parse_uuid(b"00000000-0000-0000-0000-000000000100").expect("hi");
        assert!(lo < hi);
    }

    #[test]
    fn entries_round_trip_through_bytes() {
        let r = RowEntry {
            id: u128::MAX - 5,
            created_at: -7,
            topic: 3,
            judged: true,
        };
        let i = IdEntry {
            id: 42,
            tp: 7,
            offset: 1 << 40,
            flags: IN_CUT | DEAD_LETTER,
        };
        let k = KeyEntry {
            tp: 1,
            key: key_hash(b"booking-42"),
            offset: 9,
            lsn: 0x16_B374_D848,
            commit_ts: 1_795_669_200_000_000,
            xid: 771,
        };
        let mut b = [0u8; 64];
        r.put(&mut b[..RowEntry::SIZE]);
        assert_eq!(RowEntry::get(&b[..RowEntry::SIZE]), r);
        i.put(&mut b[..IdEntry::SIZE]);
        assert_eq!(IdEntry::get(&b[..IdEntry::SIZE]), i);
        k.put(&mut b[..KeyEntry::SIZE]);
        assert_eq!(KeyEntry::get(&b[..KeyEntry::SIZE]), k);
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
    }
}
