//! The committer: the Kafka side of the loop. It owns the producer, the Kafka transaction being
//! assembled (its [`Fill`]), the commit running on a blocking thread, the records that wait for
//! it, and the memory of records the broker refused.
//!
//! ```text
//!  admit(record) ─> Ok | Refusal (topic missing/forbidden, too large)   (checked before queueing)
//!  send(record)  ─> into the producer, or into the backlog while a commit runs
//!  decide(checkpoint) ─> commit now on a blocking thread, or queue behind the running one
//!  finished().await ─> Committed { checkpoint } | Refused { event_id, refusal }
//! ```
//!
//! Commits overlap with reading: while one runs (tens of milliseconds), the next transaction's
//! records wait in a bounded backlog ([`Committer::has_room`]) and are produced once it returned;
//! records must never join a transaction whose checkpoint was already decided. A record the
//! broker refuses for good is remembered by event id ([`Refusals`]); the session then ends and
//! its replay dead-letters that row in the new transaction, so it is still published once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::checkpoint::Checkpoint;
use super::producer::{CommitError, Producer, SendError};
use super::topics::TopicChecker;
use crate::error::{Error, Result};
use crate::reason::{Reason, Refusal};
use crate::relay::tracker::Fill;
use crate::route::Record;
use crate::telemetry::TxnStats;

/// Most records held back while a commit runs (memory bound).
const BACKLOG_RECORDS: usize = 10_000;
/// Most bytes held back while a commit runs (memory bound).
const BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

/// Event ids of records the broker refused for good, with why: on replay they are dead-lettered
/// (or stop the relay). Lives across sessions: the supervisor hands it to each new committer.
#[derive(Debug, Default)]
pub struct Refusals {
    by_event: HashMap<Vec<u8>, Refusal>,
}

impl Refusals {
    /// Why the row with this event id was refused, if it was.
    pub fn get(&self, event_id: &[u8]) -> Option<&Refusal> {
        if self.by_event.is_empty() {
            return None;
        }
        self.by_event.get(event_id)
    }

    /// Remembers a refusal; false when this event id was refused before (its dead letter too).
    fn insert(&mut self, event_id: &[u8], refusal: Refusal) -> bool {
        if self.by_event.contains_key(event_id) {
            return false;
        }
        self.by_event.insert(event_id.to_vec(), refusal);
        true
    }
}

/// A commit that returned Ok.
#[derive(Debug)]
pub struct Committed {
    /// Its checkpoint, now durable in Kafka.
    pub checkpoint: Checkpoint,
    /// What it held, for the metrics.
    pub stats: TxnStats,
    /// Records it held.
    pub events: u64,
    /// How long the commit took.
    pub took: Duration,
}

/// How a commit ended, short of a session failure.
#[derive(Debug)]
pub enum Outcome {
    /// Durable: acknowledge its checkpoint.
    Committed(Committed),
    /// The broker refused one record for good: the session must replay to dead-letter it.
    Refused {
        /// The refused row.
        event_id: String,
        /// Why.
        refusal: Refusal,
    },
}

/// A commit running on a blocking thread.
struct InFlight {
    handle: tokio::task::JoinHandle<(Producer, std::result::Result<(), CommitError>)>,
    checkpoint: Checkpoint,
    stats: TxnStats,
    events: u64,
    started: Instant,
}

/// A step decided while a commit ran.
enum Queued {
    Record(Record),
    Commit(Checkpoint, TxnStats, u64),
}

/// See the module documentation.
pub struct Committer {
    /// `None` while a commit runs on a blocking thread.
    producer: Option<Producer>,
    in_flight: Option<InFlight>,
    /// Records of the next transactions and the commits decided after them, in order.
    backlog: VecDeque<Queued>,
    backlog_bytes: u64,
    /// The transaction being assembled (in the producer or the backlog).
    fill: Fill,
    refusals: Refusals,
    topics: TopicChecker,
    /// The producer refuses records larger than this (`message.max.bytes`).
    max_record_bytes: u64,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("fill", &self.fill)
            .field("committing", &self.in_flight.is_some())
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl Committer {
    /// A committer over an initialised producer.
    pub fn new(
        producer: Producer,
        topics: TopicChecker,
        refusals: Refusals,
        max_record_bytes: u64,
    ) -> Self {
        Self {
            producer: Some(producer),
            in_flight: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            fill: Fill::default(),
            refusals,
            topics,
            max_record_bytes,
        }
    }

    /// The memory of refused records, for the next session.
    pub fn into_refusals(self) -> Refusals {
        self.refusals
    }

    /// Why the row with this event id was refused on an earlier attempt, if it was.
    pub fn refused(&self, event_id: &[u8]) -> Option<&Refusal> {
        self.refusals.get(event_id)
    }

    /// The transaction being assembled.
    pub fn fill(&self) -> &Fill {
        &self.fill
    }

    /// A commit is running.
    pub fn committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Nothing assembled, nothing waiting, nothing committing.
    pub fn idle(&self) -> bool {
        self.fill.is_empty() && self.in_flight.is_none() && self.backlog.is_empty()
    }

    /// Whether the loop may read more: the backlog is within its bounds, and while a commit
    /// runs the next transaction is not yet full (`max_events`).
    pub fn has_room(&self, max_events: u64) -> bool {
        self.backlog.len() < BACKLOG_RECORDS
            && self.backlog_bytes < BACKLOG_BYTES
            && !(self.in_flight.is_some() && self.fill.events >= max_events)
    }

    /// Whether `rec` can be published: its topic exists and may be written, and it is not larger
    /// than the producer accepts. Asks the brokers once per topic (blocking, briefly).
    pub fn admit(&mut self, rec: &Record) -> Result<Option<Refusal>> {
        let topics = &mut self.topics;
        if let Err(refusal) = tokio::task::block_in_place(|| topics.check(&rec.topic))? {
            return Ok(Some(refusal));
        }
        let size = rec.size();
        if size > self.max_record_bytes {
            return Ok(Some(Refusal::new(
                Reason::RecordTooLarge,
                format!(
                    "record of {size} bytes is larger than the producer's message.max.bytes ({})",
                    self.max_record_bytes
                ),
            )));
        }
        Ok(None)
    }

    /// The size bound a dead letter must fit in too.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes
    }

    /// Queues `rec` in the transaction being assembled: into the producer, or into the backlog
    /// while a commit runs.
    pub fn send(&mut self, rec: Record) -> Result<()> {
        let size = rec.size();
        self.fill.events += 1;
        self.fill.bytes += size;
        self.fill.opened_at.get_or_insert_with(Instant::now);
        if self.in_flight.is_some() || !self.backlog.is_empty() {
            self.backlog_bytes += size;
            self.backlog.push_back(Queued::Record(rec));
            return Ok(());
        }
        self.produce(rec)
    }

    fn produce(&mut self, rec: Record) -> Result<()> {
        let producer = self
            .producer
            .as_mut()
            .ok_or_else(|| Error::internal("producer missing outside a commit"))?;
        match tokio::task::block_in_place(|| producer.send(&rec)) {
            Ok(()) => Ok(()),
            Err(SendError::Session(e)) => Err(e),
            // Refused by the producer although it passed admit(): remember it and replay the
            // transaction, which dead-letters it then (or stops), as for a broker refusal.
            Err(SendError::Refused(refusal)) => {
                let event_id = rec.event_id.clone();
                let outcome = self.remember(event_id.as_deref(), refusal)?;
                Err(Error::transient(format!(
                    "kafka: the producer refused a record for {} ({outcome}); replaying to dead-letter it",
                    rec.topic
                )))
            }
        }
    }

    /// Remembers a refused record; a record refused again (its dead letter) stops the relay.
    fn remember(&mut self, event_id: Option<&[u8]>, refusal: Refusal) -> Result<String> {
        let Some(id) = event_id else {
            return Err(Error::bad_row(format!(
                "kafka: a record without a readable event id was refused ({refusal}); fix the row or the topic, then start again"
            )));
        };
        let shown = String::from_utf8_lossy(id).into_owned();
        if !self.refusals.insert(id, refusal.clone()) {
            return Err(Error::bad_row(format!(
                "outbox row {shown}: its dead-letter record was refused too ({refusal}); fix the dead-letter topic or the row, then start again"
            )));
        }
        Ok(refusal.to_string())
    }

    /// Cuts the transaction being assembled here, with `checkpoint`: starts its commit on a
    /// blocking thread, or queues it behind the running one. Records from now on belong to the
    /// next transaction.
    pub fn decide(&mut self, checkpoint: Checkpoint, stats: TxnStats) -> Result<()> {
        let events = self.fill.events;
        self.fill = Fill::default();
        if self.in_flight.is_some() || !self.backlog.is_empty() {
            self.backlog
                .push_back(Queued::Commit(checkpoint, stats, events));
            return Ok(());
        }
        self.start(checkpoint, stats, events)
    }

    fn start(&mut self, checkpoint: Checkpoint, stats: TxnStats, events: u64) -> Result<()> {
        let mut producer = self
            .producer
            .take()
            .ok_or_else(|| Error::internal("producer missing when a commit starts"))?;
        let cp = checkpoint.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let result = producer.commit(&cp);
            (producer, result)
        });
        self.in_flight = Some(InFlight {
            handle,
            checkpoint,
            stats,
            events,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Waits for the running commit (pending forever when none runs; cancel-safe: the commit
    /// stays in place until it completed). On Ok, produces what waited for it, up to the next
    /// decided commit, which then starts.
    pub async fn finished(&mut self) -> Result<Outcome> {
        let Some(flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let joined = (&mut flight.handle).await;
        let flight = self
            .in_flight
            .take()
            .ok_or_else(|| Error::internal("commit vanished"))?;
        let (producer, result) = joined
            .map_err(|e| Error::internal("the Kafka commit thread panicked").with_source(e))?;
        self.producer = Some(producer);
        match result {
            Ok(()) => {}
            Err(CommitError::Session(e)) => return Err(e),
            Err(CommitError::Refused {
                event_id,
                refusal,
                error,
            }) => {
                self.remember(event_id.as_deref(), refusal.clone())?;
                tracing::warn!(
                    event_id = %String::from_utf8_lossy(event_id.as_deref().unwrap_or_default()),
                    reason = %refusal.reason,
                    "the broker refused a record ({}); replaying the transaction to dead-letter it",
                    error.report()
                );
                return Ok(Outcome::Refused {
                    event_id: String::from_utf8_lossy(event_id.as_deref().unwrap_or_default())
                        .into_owned(),
                    refusal,
                });
            }
        }
        while let Some(q) = self.backlog.pop_front() {
            match q {
                Queued::Record(rec) => {
                    self.backlog_bytes = self.backlog_bytes.saturating_sub(rec.size());
                    self.produce(rec)?;
                }
                Queued::Commit(cp, stats, events) => {
                    self.start(cp, stats, events)?;
                    break;
                }
            }
        }
        if self.backlog.is_empty() {
            self.backlog_bytes = 0;
        }
        Ok(Outcome::Committed(Committed {
            checkpoint: flight.checkpoint,
            stats: flight.stats,
            events: flight.events,
            took: flight.started.elapsed(),
        }))
    }

    /// A session ended with an error: abort the open transaction (best effort; the next
    /// session's `init_transactions` aborts it anyway). A commit still running finishes or fails
    /// on its own thread; the next `init_transactions` fences it either way. Returns whether a
    /// transaction was aborted.
    pub fn abort(&mut self) -> bool {
        match self.producer.as_mut() {
            Some(p) => tokio::task::block_in_place(|| p.abort()),
            None => false,
        }
    }
}
