//! The checkpoint: how far Postgres' stream has been published, stored in Kafka itself.
//!
//! It lives in a compacted, one-partition topic, keyed by the Postgres system identifier, the
//! database and the slot (two clusters may both have a slot called `outbox_relay`), and is produced
//! inside the same Kafka transaction as the events it covers, so the events and the position they
//! reach become visible together or not at all (the approach of Kafka Connect's KIP-618).
//!
//! `resume_lsn` is the *end LSN* of the last Postgres transaction fully published; `partial`
//! describes a Postgres transaction split over several Kafka transactions (docs/ARCHITECTURE.md,
//! "Exactly once").

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::kafka_error;
use super::producer::SinkContext;
use crate::config::ClientProps;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// The checkpoint record's key: `<system identifier>/<database>/<slot>`. Two clusters may both
/// have a slot called `outbox_relay`; the system identifier tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointKey(String);

impl CheckpointKey {
    /// The key of `slot` in `dbname` on the cluster `system_id`.
    pub fn new(system_id: &str, dbname: &str, slot: &str) -> Self {
        Self(format!("{system_id}/{dbname}/{slot}"))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where publishing stands, as stored in the checkpoint topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// End LSN of the last Postgres transaction fully published.
    pub resume_lsn: Lsn,
    /// A Postgres transaction published in part (split), if any.
    pub partial: Option<Partial>,
    /// The server timeline the stream was on (`None` in checkpoints of older relays): after a
    /// failover, positions of another timeline are compared only up to its fork point.
    pub timeline: Option<u32>,
    /// The initial snapshot (`outbox.snapshot`), while it is not finished.
    pub snapshot: Option<SnapshotState>,
}

/// Where the initial snapshot of the table stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// The relay is creating its slot with an exported snapshot. A slot found while the
    /// checkpoint says this was made by an interrupted start: it is dropped and made again
    /// (nothing was published from it).
    Pending,
    /// Publishing the rows of the snapshot taken at the slot's creation.
    Running(SnapshotProgress),
}

/// How far the initial snapshot got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// The exported snapshot, as `pg_current_snapshot()` printed it in a transaction that imported
    /// it (`xmin:xmax:xip,...`): which rows it holds can be told from their `xmin` long after the
    /// snapshot itself is gone.
    pub snapshot: String,
    /// The last row published: its order column's text and its id's text.
    pub after: Option<(String, String)>,
    /// Rows of the snapshot published so far (events and dead letters).
    pub rows: u64,
}

/// A Postgres transaction of which only the first `next_index` changes are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// The transaction's commit LSN (from its Begin message).
    pub final_lsn: Lsn,
    /// The transaction's id.
    pub xid: u32,
    /// How many of its outbox changes are already published (an ordinal, not an LSN).
    pub next_index: u64,
}

/// The JSON form on the topic: LSNs in Postgres' `X/Y` text so operators can read them. Unknown
/// fields are ignored, so a newer relay may add optional ones without breaking an older reader.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    version: u32,
    resume_lsn: Lsn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<WirePartial>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<WireSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    written_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum WireSnapshot {
    Pending,
    Running {
        snapshot: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<(String, String)>,
        rows: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WirePartial {
    final_lsn: Lsn,
    xid: u32,
    next_index: u64,
}

impl Checkpoint {
    /// JSON bytes for the checkpoint topic.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            version: 1,
            resume_lsn: self.resume_lsn,
            timeline: self.timeline,
            snapshot: self.snapshot.as_ref().map(|s| match s {
                SnapshotState::Pending => WireSnapshot::Pending,
                SnapshotState::Running(p) => WireSnapshot::Running {
                    snapshot: p.snapshot.clone(),
                    after: p.after.clone(),
                    rows: p.rows,
                },
            }),
            partial: self.partial.map(|p| WirePartial {
                final_lsn: p.final_lsn,
                xid: p.xid,
                next_index: p.next_index,
            }),
            written_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses a checkpoint record's value.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if wire.version != 1 {
            return Err(format!("unsupported checkpoint version {}", wire.version));
        }
        Ok(Self {
            resume_lsn: wire.resume_lsn,
            timeline: wire.timeline,
            snapshot: wire.snapshot.map(|s| match s {
                WireSnapshot::Pending => SnapshotState::Pending,
                WireSnapshot::Running {
                    snapshot,
                    after,
                    rows,
                } => SnapshotState::Running(SnapshotProgress {
                    snapshot,
                    after,
                    rows,
                }),
            }),
            partial: wire.partial.map(|p| Partial {
                final_lsn: p.final_lsn,
                xid: p.xid,
                next_index: p.next_index,
            }),
        })
    }
}

/// Reads the newest committed checkpoint for `key` from partition 0 of `topic`, to the end,
/// with a `read_committed` consumer. Call it after `init_transactions`: from then on nobody
/// else can write our key, and our own earlier open transaction has been aborted.
pub fn read(
    client: &ClientProps,
    topic: &str,
    key: &CheckpointKey,
    deadline: Duration,
) -> Result<Option<Checkpoint>> {
    let mut cc: ClientConfig = super::client_config(client);
    cc.set("group.id", format!("outbox-relay-checkpoint-reader.{key}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        // The end of the partition is known only from a fetch that comes back empty, which the
        // broker holds for fetch.wait.max.ms (500 ms by default): every start would wait that long.
        .set("fetch.wait.max.ms", "10");
    // The relay's own context: librdkafka's logs through tracing, and reaching the end of the
    // partition (what this reader waits for) is not logged as an error.
    let consumer: BaseConsumer<SinkContext> = cc
        .create_with_context(SinkContext::default())
        .map_err(|e| {
            Error::config(format!("kafka: cannot create the checkpoint reader: {e}")).with_source(e)
        })?;
    let latest = read_to_end(&consumer, topic, key, deadline);
    // Closing a consumer waits about 100 ms for its threads: not on the start-up path.
    std::thread::spawn(move || drop(consumer));
    latest
}

fn read_to_end(
    consumer: &BaseConsumer<SinkContext>,
    topic: &str,
    key: &CheckpointKey,
    deadline: Duration,
) -> Result<Option<Checkpoint>> {
    let started = Instant::now();
    // Learn the partition's leader before assigning it: assigned without one, librdkafka queries
    // the start offset only after a fixed 500 ms backoff. A failure here shows in the read below.
    let learned = super::await_learned_broker(
        consumer.client(),
        topic,
        deadline.min(Duration::from_secs(5)),
    );
    // A missing topic is answered by the metadata at once; a consumer assigned to it would only
    // say so after librdkafka's topic.metadata.propagation.max.ms (30 s), racing `deadline`.
    let metadata = match learned {
        Some(md) => md,
        None => consumer
            .fetch_metadata(Some(topic), deadline)
            .map_err(|e| {
                Error::transient(format!(
                    "kafka: cannot read the metadata of checkpoint topic {topic:?}"
                ))
                .with_source(e)
            })?,
    };
    if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
        if matches!(
            t.error().map(RDKafkaErrorCode::from),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic)
        ) {
            return Err(Error::config(format!(
                "kafka: checkpoint topic {topic:?} does not exist (kafka.checkpoint_topic)"
            )));
        }
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| Error::internal("kafka: checkpoint partition list").with_source(e))?;
    consumer.assign(&tpl).map_err(|e| {
        Error::transient("kafka: cannot assign the checkpoint topic").with_source(e)
    })?;

    // The newest record for the key decides, read to the end: an unreadable record only fails the
    // read when nothing newer (a good checkpoint, or the operator's tombstone) follows it.
    let mut latest: Result<Option<Checkpoint>> = Ok(None);
    loop {
        if started.elapsed() > deadline {
            return Err(Error::transient(format!(
                "kafka: reading checkpoint topic {topic:?} did not reach its end within {deadline:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return latest,
            // librdkafka reconnects; the deadline above bounds an outage.
            Some(Err(e)) if kafka_error::is_connection_loss(&e) => continue,
            Some(Err(e)) => {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                        | Some(RDKafkaErrorCode::UnknownTopic)
                ) {
                    return Err(Error::config(format!(
                        "kafka: checkpoint topic {topic:?} does not exist (kafka.checkpoint_topic)"
                    )));
                }
                return Err(
                    Error::transient(format!("kafka: reading checkpoint topic {topic:?}"))
                        .with_source(e),
                );
            }
            Some(Ok(msg)) => {
                if msg.key() != Some(key.as_str().as_bytes()) {
                    continue;
                }
                match msg.payload() {
                    // A tombstone resets the position (an operator's deliberate reset).
                    None => latest = Ok(None),
                    Some(value) => {
                        latest = Checkpoint::decode(value).map(Some).map_err(|why| {
                            Error::invariant(format!(
                                "kafka: checkpoint record at {topic}/0@{} for key {key:?} is unreadable: {why}; see the README's runbook, \"Unreadable checkpoint\"",
                                msg.offset()
                            ))
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cp = Checkpoint {
            resume_lsn: Lsn(0x16_B374_D848),
            partial: Some(Partial {
                final_lsn: Lsn(0x17_0000_0010),
                xid: 771,
                next_index: 10_000,
            }),
            timeline: Some(3),
            snapshot: None,
        };
        let bytes = cp.encode();
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.contains("\"resume_lsn\":\"16/B374D848\""), "{text}");
        assert_eq!(Checkpoint::decode(&bytes), Ok(cp));
        assert!(Checkpoint::decode(b"{\"version\":2,\"resume_lsn\":\"0/0\"}").is_err());
        assert!(Checkpoint::decode(b"nope").is_err());
        let snap = Checkpoint {
            resume_lsn: Lsn(5),
            partial: None,
            timeline: Some(1),
            snapshot: Some(SnapshotState::Running(SnapshotProgress {
                snapshot: "10:20:12,15".into(),
                after: Some(("2026-11-30 12:00:00+00".into(), "e1".into())),
                rows: 7,
            })),
        };
        let text = String::from_utf8(snap.encode()).expect("utf8");
        assert!(text.contains("\"state\":\"running\""), "{text}");
        assert_eq!(Checkpoint::decode(text.as_bytes()), Ok(snap));
        let pending = Checkpoint {
            snapshot: Some(SnapshotState::Pending),
            ..Checkpoint::default()
        };
        assert_eq!(Checkpoint::decode(&pending.encode()), Ok(pending));
    }
}
