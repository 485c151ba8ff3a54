//! The Kafka side: which topics, from which offsets to which, and every record read once.
//!
//! ```text
//!  metadata ─> topics: routed (template matches, [routing.topics], the rows' topics) + dead letter
//!  --from-lsn: per partition, binary search of pg_lsn over offsets ─> the window's start time
//!  after the checkpoint reached the cut:
//!    end   = last stable offset (read_committed watermarks: no open transaction is waited on)
//!    start = offsets_for_times(window start - margin), or the log start without a window
//!  read [start, end) read_committed, topic by topic ─> ids sorter, keys sorter,
//!    and on the fly: partition check (murmur2), dead-letter reasons, unreadable records
//! ```
//!
//! Read-only: partitions are assigned, never subscribed, and nothing is committed, so no consumer
//! group appears on the cluster. Topics are read one after the other:
//! librdkafka's end-of-partition event names only the partition number, which is unambiguous
//! within one topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::entries::{
    format_uuid, key_hash, parse_uuid, IdEntry, KeyEntry, Names, DEAD_LETTER, IN_WINDOW,
};
use super::murmur2::partition_for;
use super::report::{Findings, Location, Unreadable, WrongPartition};
use super::sort::Sorter;
use super::window::Judge;
use super::{time, Failure};
use crate::config::Config;
use crate::lsn::Lsn;
use crate::sink::kafka_error::is_connection_loss;

/// Bound on each metadata, watermark and offset request.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A partition that delivers nothing for this long, before its end, fails the audit.
const STALL: Duration = Duration::from_secs(60);

/// A topic audit reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Name.
    pub name: String,
    /// Index in [`Names`].
    pub index: u16,
    /// Partition count now (the partition check assumes it never changed).
    pub partitions: i32,
    /// Whether it is the dead-letter topic.
    pub dead_letter: bool,
}

/// Prefetched record bytes a consumer may queue, over all its partitions (librdkafka counts per
/// partition, so [`consumer`] divides it). librdkafka counts keys and values only; with headers and
/// its own bookkeeping a queued record costs about three times that.
const QUEUE_BYTES: usize = 16 << 20;
/// Prefetched records a consumer may queue, over all its partitions.
const QUEUE_RECORDS: usize = 60_000;

/// What a consumer is for: its fetch sizes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Metadata, watermarks, offsets by time: no fetching.
    Metadata,
    /// One record at a time (the `--from-lsn` binary search): tiny fetches.
    Probe,
    /// Reading this many partitions at once.
    Read(usize),
}

/// A `read_committed` consumer that joins no group.
///
/// Memory and speed: librdkafka keeps up to `queued.max.messages.kbytes` and `queued.min.messages`
/// of fetched records per partition, so when reading, those limits are [`QUEUE_BYTES`] and
/// [`QUEUE_RECORDS`] divided by the partitions read together; a fetch brings at most 8 MiB.
/// `fetch.queue.backoff.ms` is cut from 1 s to 10 ms: with a small queue, that pause after each
/// full queue, not the broker, set the pace (3x slower). Probes fetch 64 KiB per partition.
pub fn consumer(cfg: &Config, what: Use) -> Result<BaseConsumer, Failure> {
    let (queue_kib, queue_records, partition_fetch) = match what {
        Use::Metadata | Use::Probe => (64, 1, 65_536),
        Use::Read(n) => (
            (QUEUE_BYTES / 1024 / n.max(1)).clamp(256, 4096),
            (QUEUE_RECORDS / n.max(1)).clamp(1000, 100_000),
            2 << 20,
        ),
    };
    let mut cc: ClientConfig = cfg.kafka.client_props().client_config();
    // librdkafka needs a group id to assign partitions; audit never joins that group (no
    // subscribe) and never commits, so the broker keeps no state for it.
    cc.set("group.id", "outbox-relay-audit")
        .set("client.id", "outbox-relay-audit")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", queue_kib.to_string())
        .set("queued.min.messages", queue_records.to_string())
        .set("max.partition.fetch.bytes", partition_fetch.to_string())
        .set("fetch.max.bytes", "8388608")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "100");
    cc.create()
        .map_err(|e| Failure::Config(format!("kafka: cannot create a consumer: {e}")))
}

fn kafka_err(what: String) -> impl FnOnce(KafkaError) -> Failure {
    move |e| Failure::CannotJudge(format!("kafka: {what}: {e}"))
}

/// Whether `topic` is what `template` gives for some aggregate type.
pub fn matches_template(template: &str, topic: &str) -> bool {
    const P: &str = "{aggregate_type}";
    let Some((prefix, rest)) = template.split_once(P) else {
        return template == topic;
    };
    let Some(tail) = topic.strip_prefix(prefix) else {
        return false;
    };
    // The aggregate type ends where the template's next literal part starts; try every place.
    let next = rest.split(P).next().unwrap_or("");
    (1..=tail.len()).any(|end| {
        tail.is_char_boundary(end)
            && tail[end..].starts_with(next)
            && template.replace(P, &tail[..end]) == topic
    })
}

/// The topics to read: every existing topic the routing can produce (template matches, explicit
/// `[routing.topics]`, the topics of the rows read), and the dead-letter topic. Returns them and
/// the rows' topics that do not exist.
pub fn select_topics(
    consumer: &BaseConsumer,
    cfg: &Config,
    names: &mut Names,
) -> Result<(Vec<Topic>, Vec<String>), Failure> {
    let md = consumer
        .fetch_metadata(None, CALL_TIMEOUT)
        .map_err(kafka_err("reading cluster metadata".into()))?;
    let existing: HashMap<&str, i32> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    let r = &cfg.routing;
    let dlq = cfg.errors.dead_letter_topic.as_str();
    let checkpoint = cfg.kafka.checkpoint_topic.as_str();
    let mut wanted: Vec<String> = Vec::new();
    for name in existing.keys() {
        if *name == checkpoint || *name == dlq || name.starts_with("__") {
            continue;
        }
        if (!r.strict && matches_template(&r.topic_template, name))
            || r.topics.values().any(|t| t == name)
        {
            wanted.push((*name).to_string());
        }
    }
    // The rows' topics (known to `names` already) must be read even if nothing else matches.
    let mut absent = Vec::new();
    for i in 0..names.topic_count() {
        let name = names.topic_name(i as u16).to_string();
        if name == dlq {
            continue;
        }
        if existing.contains_key(name.as_str()) {
            if !wanted.contains(&name) {
                wanted.push(name);
            }
        } else {
            absent.push(name);
        }
    }
    wanted.sort();
    let mut topics: Vec<Topic> = wanted
        .into_iter()
        .map(|name| Topic {
            index: names.topic(&name),
            partitions: existing.get(name.as_str()).copied().unwrap_or(0),
            name,
            dead_letter: false,
        })
        .collect();
    if let Some(p) = existing.get(dlq) {
        topics.push(Topic {
            name: dlq.to_string(),
            index: names.topic(dlq),
            partitions: *p,
            dead_letter: true,
        });
    }
    Ok((topics, absent))
}

/// What a record's headers say, as far as audit needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `event_id`.
    pub id: Option<u128>,
    /// Whether an `event_id` header was present (even if unreadable).
    pub has_id: bool,
    /// `pg_lsn`.
    pub lsn: Option<u64>,
    /// `pg_xid`.
    pub xid: Option<u32>,
    /// `pg_commit_ts`, µs since the Unix epoch.
    pub commit_ts: Option<i64>,
    /// `created_at`, µs since the Unix epoch.
    pub created_at: Option<i64>,
    /// `dlq_reason`.
    pub dlq_reason: Option<String>,
}

/// Reads the headers audit uses.
pub fn parse_headers<'a>(headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>) -> Parsed {
    let mut p = Parsed::default();
    fn text(v: Option<&[u8]>) -> Option<&str> {
        v.and_then(|v| std::str::from_utf8(v).ok())
    }
    for (k, v) in headers {
        match k {
            "event_id" => {
                p.has_id = true;
                p.id = v.and_then(parse_uuid);
            }
            "pg_lsn" => p.lsn = text(v).and_then(|s| s.parse::<Lsn>().ok()).map(Lsn::as_u64),
            "pg_xid" => p.xid = text(v).and_then(|s| s.parse().ok()),
            "pg_commit_ts" => p.commit_ts = text(v).and_then(|s| time::parse(s, true)),
            "created_at" => p.created_at = text(v).and_then(|s| time::parse(s, false)),
            "dlq_reason" => p.dlq_reason = Some(text(v).unwrap_or("?").to_string()),
            _ => {}
        }
    }
    p
}

fn headers_of<'a>(m: &'a BorrowedMessage<'a>) -> Parsed {
    match m.headers() {
        Some(h) => parse_headers(h.iter().map(|h| (h.key, h.value))),
        None => Parsed::default(),
    }
}

fn record_time(p: &Parsed, m: &BorrowedMessage<'_>) -> i64 {
    p.created_at
        .or(p.commit_ts)
        .or_else(|| m.timestamp().to_millis().map(|ms| ms * 1000))
        .unwrap_or(i64::MIN)
}

/// The first record at or after `offset` and before `end` in one partition, if any.
fn probe(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    end: i64,
) -> Result<Option<(i64, Option<u64>, i64)>, Failure> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(kafka_err(format!("{topic}/{partition}")))?;
    consumer
        .assign(&tpl)
        .map_err(kafka_err(format!("assigning {topic}/{partition}")))?;
    let started = Instant::now();
    loop {
        if started.elapsed() > STALL {
            return Err(Failure::CannotJudge(format!(
                "kafka: {topic}/{partition} delivered nothing at offset {offset} within {STALL:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(None),
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            // librdkafka reconnects; the stall deadline above bounds an outage.
            Some(Err(e)) if is_connection_loss(&e) => {
                tracing::debug!(error = %e, "audit: a broker connection dropped; reading on");
            }
            Some(Err(e)) => return Err(kafka_err(format!("reading {topic}/{partition}"))(e)),
            Some(Ok(m)) => {
                if m.partition() != partition || m.offset() < offset {
                    continue;
                }
                if m.offset() >= end {
                    return Ok(None);
                }
                let p = headers_of(&m);
                return Ok(Some((m.offset(), p.lsn, record_time(&p, &m))));
            }
        }
    }
}

/// `--from-lsn`: the time the window starts at, from the records. In each partition a binary
/// search over offsets finds where `pg_lsn` reaches `from` (records are in commit order, so
/// `pg_lsn`, the change's LSN, rises but for overlapping transactions; the margin absorbs that),
/// and the record just before that point gives a time every later transaction committed after.
/// The earliest over all partitions is returned; `None` when no partition has a record before
/// `from` (the whole retained log is judged then).
pub fn locate_lsn(
    cfg: &Config,
    topics: &[Topic],
    from: Lsn,
    progress: &mut dyn FnMut(String),
) -> Result<Option<i64>, Failure> {
    let consumer = &consumer(cfg, Use::Probe)?;
    let mut earliest: Option<i64> = None;
    for t in topics {
        for partition in 0..t.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&t.name, partition, CALL_TIMEOUT)
                .map_err(kafka_err(format!("watermarks of {}/{partition}", t.name)))?;
            let (mut lo, mut hi) = (low, high);
            let mut before: Option<(i64, i64)> = None;
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match probe(consumer, &t.name, partition, mid, high)? {
                    None => hi = mid,
                    Some((offset, lsn, time)) => {
                        if lsn.is_some_and(|l| l < from.as_u64()) {
                            if before.is_none_or(|(o, _)| offset > o) {
                                before = Some((offset, time));
                            }
                            lo = offset + 1;
                        } else {
                            hi = mid;
                        }
                    }
                }
            }
            if let Some((_, time)) = before {
                earliest = Some(earliest.map_or(time, |e| e.min(time)));
            }
        }
        progress(format!("located {from} in {}", t.name));
    }
    Ok(earliest)
}

/// One partition to read: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Partition.
    pub partition: i32,
    /// First offset.
    pub start: i64,
    /// Last stable offset when the cut was reached.
    pub end: i64,
}

/// The offsets to read per topic. Fails with "could not judge" when the window reaches before
/// what Kafka still retains.
pub fn plan(
    consumer: &BaseConsumer,
    topics: &[Topic],
    from: Option<i64>,
) -> Result<Vec<Vec<Range>>, Failure> {
    let mut out = Vec::with_capacity(topics.len());
    for t in topics {
        let mut ranges = Vec::new();
        let mut marks = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for partition in 0..t.partitions {
            let (low, end) = consumer
                .fetch_watermarks(&t.name, partition, CALL_TIMEOUT)
                .map_err(kafka_err(format!("watermarks of {}/{partition}", t.name)))?;
            marks.push((partition, low, end));
            if let Some(from) = from {
                tpl.add_partition_offset(&t.name, partition, Offset::Offset(from.div_euclid(1000)))
                    .map_err(kafka_err(format!("{}/{partition}", t.name)))?;
            }
        }
        let starts: HashMap<i32, Offset> = if from.is_some() && t.partitions > 0 {
            consumer
                .offsets_for_times(tpl, CALL_TIMEOUT)
                .map_err(kafka_err(format!(
                    "offsets for the window's start in {}",
                    t.name
                )))?
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect()
        } else {
            HashMap::new()
        };
        for (partition, low, end) in marks {
            let start = match starts.get(&partition) {
                Some(Offset::Offset(o)) => (*o).max(low),
                Some(Offset::End) => end,
                None if from.is_none() => low,
                other => {
                    return Err(Failure::CannotJudge(format!(
                        "kafka: no offset for the window's start in {}/{partition} ({other:?})",
                        t.name
                    )))
                }
            };
            if start >= end {
                continue;
            }
            if start == low && low > 0 {
                return Err(Failure::CannotJudge(format!(
                    "kafka: {}/{partition} no longer holds the start of the window: its log starts at offset {low} (retention or deleted records) and the window reaches back to it. Pass a later --since",
                    t.name
                )));
            }
            ranges.push(Range {
                partition,
                start,
                end,
            });
        }
        out.push(ranges);
    }
    Ok(out)
}

/// What reading produced.
#[derive(Debug)]
pub struct Read {
    /// Every record with an event id, for the join.
    pub ids: Sorter<IdEntry>,
    /// Routed records in the window with a key, for the order check.
    pub keys: Sorter<KeyEntry>,
    /// Records read per topic (same order as the topics).
    pub per_topic: Vec<u64>,
    /// Records read in all.
    pub records: u64,
}

/// Reads every planned range; fills the sorters and the findings decided per record (partition,
/// dead-letter reasons, unreadable, outside the window).
#[allow(clippy::too_many_arguments)]
pub fn read(
    cfg: &Config,
    topics: &[Topic],
    plan: &[Vec<Range>],
    judge: &Judge,
    names: &mut Names,
    examples: usize,
    budget_bytes: usize,
    findings: &mut Findings,
    progress: &mut dyn FnMut(String),
) -> Result<Read, Failure> {
    // The two sorters share the budget by entry size.
    let mut out = Read {
        ids: Sorter::with_budget(budget_bytes * 2 / 5),
        keys: Sorter::with_budget(budget_bytes * 3 / 5),
        per_topic: vec![0; topics.len()],
        records: 0,
    };
    let started = Instant::now();
    let mut last_said = Instant::now();
    // One consumer for every topic (threads and their allocator arenas are reused), its queue
    // divided by the most partitions read at once.
    let widest = plan.iter().map(Vec::len).max().unwrap_or(1);
    let consumer = &consumer(cfg, Use::Read(widest))?;
    let spill = |e: std::io::Error| {
        Failure::Internal(format!("writing sorted records to a temporary file: {e}"))
    };
    for (ti, (t, ranges)) in topics.iter().zip(plan).enumerate() {
        if ranges.is_empty() {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let mut tps: HashMap<i32, u32> = HashMap::new();
        for r in ranges {
            tpl.add_partition_offset(&t.name, r.partition, Offset::Offset(r.start))
                .map_err(kafka_err(format!("{}/{}", t.name, r.partition)))?;
            ends.insert(r.partition, r.end);
            tps.insert(r.partition, names.tp(t.index, r.partition));
        }
        consumer
            .assign(&tpl)
            .map_err(kafka_err(format!("assigning {}", t.name)))?;
        let mut last_delivery = Instant::now();
        while !ends.is_empty() {
            let msg = match consumer.poll(Duration::from_millis(500)) {
                // A dropped connection is waited out like silence: librdkafka reconnects.
                None => None,
                Some(Err(e)) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, "audit: a broker connection dropped; reading on");
                    None
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    done(consumer, &t.name, p, &mut ends);
                    continue;
                }
                Some(Err(e)) => return Err(kafka_err(format!("reading {}", t.name))(e)),
                Some(Ok(m)) => Some(m),
            };
            let msg = match msg {
                None => {
                    if last_delivery.elapsed() > STALL {
                        return Err(Failure::CannotJudge(format!(
                            "kafka: {} stopped delivering before its end ({} partitions left) for {STALL:?}",
                            t.name,
                            ends.len()
                        )));
                    }
                    continue;
                }
                Some(m) => m,
            };
            last_delivery = Instant::now();
            let partition = msg.partition();
            let Some(&end) = ends.get(&partition) else {
                continue;
            };
            if msg.offset() >= end {
                done(consumer, &t.name, partition, &mut ends);
                continue;
            }
            let tp = tps.get(&partition).copied().unwrap_or(u32::MAX);
            one(&msg, t, tp, judge, examples, findings, &mut out).map_err(spill)?;
            out.per_topic[ti] += 1;
            out.records += 1;
            if msg.offset() + 1 >= end {
                done(consumer, &t.name, partition, &mut ends);
            }
            if last_said.elapsed() >= Duration::from_secs(5) {
                progress(format!(
                    "read {} records ({:.0}/s), now in {}",
                    out.records,
                    out.records as f64 / started.elapsed().as_secs_f64(),
                    t.name
                ));
                last_said = Instant::now();
            }
        }
    }
    Ok(out)
}

fn done(consumer: &BaseConsumer, topic: &str, partition: i32, ends: &mut HashMap<i32, i64>) {
    if ends.remove(&partition).is_some() {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        // Stop fetching past the end; failing to pause only costs some reading.
        let _ = consumer.pause(&tpl);
    }
}

#[allow(clippy::too_many_arguments)]
fn one(
    m: &BorrowedMessage<'_>,
    t: &Topic,
    tp: u32,
    judge: &Judge,
    examples: usize,
    f: &mut Findings,
    out: &mut Read,
) -> std::io::Result<()> {
    let p = headers_of(m);
    let time = record_time(&p, m);
    let flags = judge.flags(time, p.lsn, p.xid, t.dead_letter);
    let in_window = flags & IN_WINDOW != 0;
    let at = || Location {
        topic: t.name.clone(),
        partition: m.partition(),
        offset: m.offset(),
    };
    if !in_window {
        f.outside_window += 1;
    } else {
        if t.dead_letter {
            *f.dead_lettered
                .entry(p.dlq_reason.clone().unwrap_or_else(|| "(none)".into()))
                .or_insert(0) += 1;
        }
        if let Some(key) = m.key() {
            let expected = partition_for(key, t.partitions);
            if expected != m.partition() {
                f.wrong_partition.add(examples, || WrongPartition {
                    event_id: p.id.map(format_uuid),
                    key: String::from_utf8_lossy(key).into_owned(),
                    at: at(),
                    expected_partition: expected,
                });
            }
        }
        let why = match (&p, t.dead_letter) {
            (Parsed { has_id: false, .. }, false) => Some("no event_id header"),
            (
                Parsed {
                    has_id: true,
                    id: None,
                    ..
                },
                _,
            ) => Some("event_id is not a UUID"),
            (Parsed { lsn: None, .. }, _) => Some("no readable pg_lsn header"),
            (Parsed { xid: None, .. }, _) => Some("no readable pg_xid header"),
            (
                Parsed {
                    commit_ts: None, ..
                },
                false,
            ) => Some("no readable pg_commit_ts header"),
            _ => None,
        };
        if let Some(why) = why {
            f.unreadable.add(examples, || Unreadable {
                at: at(),
                why: why.to_string(),
            });
        }
        if let (false, Some(key), Some(lsn), Some(xid), Some(ts)) =
            (t.dead_letter, m.key(), p.lsn, p.xid, p.commit_ts)
        {
            out.keys.push(KeyEntry {
                tp,
                key: key_hash(key),
                offset: m.offset(),
                lsn,
                commit_ts: ts,
                xid,
            })?;
        }
    }
    if let Some(id) = p.id {
        let flags = if t.dead_letter {
            flags | DEAD_LETTER
        } else {
            flags
        };
        out.ids.push(IdEntry {
            id,
            tp,
            offset: m.offset(),
            flags,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matching() {
        assert!(matches_template(
            "outbox.{aggregate_type}",
            "outbox.booking"
        ));
        assert!(!matches_template("outbox.{aggregate_type}", "outbox."));
        assert!(!matches_template(
            "outbox.{aggregate_type}",
            "other.booking"
        ));
        assert!(matches_template("t_x.{aggregate_type}.v1", "t_x.car.v1"));
        assert!(!matches_template("t_x.{aggregate_type}.v1", "t_x.car.v2"));
        assert!(matches_template(
            "{aggregate_type}-{aggregate_type}",
            "a.b-a.b"
        ));
        assert!(!matches_template(
            "{aggregate_type}-{aggregate_type}",
            "a-b"
        ));
        assert!(matches_template("fixed", "fixed"));
    }

    #[test]
    fn headers_the_relay_writes_are_read() {
        let h: Vec<(&str, Option<&[u8]>)> = vec![
            ("event_id", Some(b"5f0c6f7e-0000-4000-8000-000000000001")),
            ("event_type", Some(b"BookingCreated")),
            ("created_at", Some(b"2026-11-26 05:00:00.123+00")),
            ("pg_lsn", Some(b"16/B374D848")),
            ("pg_xid", Some(b"771")),
            ("pg_commit_ts", Some(b"2026-11-26T05:00:00.200000Z")),
            ("traceparent", Some(b"00-abc")),
        ];
        let p = parse_headers(h.into_iter());
        assert_eq!(p.id, parse_uuid(b"5f0c6f7e-0000-4000-8000-000000000001"));
        assert_eq!(p.lsn, Some(0x16_B374_D848));
        assert_eq!(p.xid, Some(771));
        assert_eq!(p.created_at, Some(1_795_669_200_123_000));
        assert_eq!(p.commit_ts, Some(1_795_669_200_200_000));
        assert_eq!(p.dlq_reason, None);
        let bad = parse_headers(
            vec![
                ("event_id", Some(&b"nope"[..])),
                ("pg_lsn", None),
                ("dlq_reason", Some(&b"reserved_header"[..])),
            ]
            .into_iter(),
        );
        assert!(bad.has_id && bad.id.is_none() && bad.lsn.is_none());
        assert_eq!(bad.dlq_reason.as_deref(), Some("reserved_header"));
    }
}
