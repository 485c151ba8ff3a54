//! Kafka observers (blocking threads): read_committed consumers that follow the relay's checkpoint
//! topic or count the records of its event topics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay_dev::util::random_suffix;
use outbox_relay_dev::{Kafka, Lsn};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::helpers::log;

pub fn consumer(read_committed: bool) -> Result<BaseConsumer> {
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

pub fn assign_all(c: &BaseConsumer, topics: &[String]) -> Result<()> {
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
pub fn watch_checkpoint(
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
pub fn count_records(
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
pub fn count_all(topics: Vec<String>, expected: u64) -> Result<u64> {
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
