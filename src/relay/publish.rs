//! One row into the Kafka transaction being assembled: route it, admit it, queue it; or, when it
//! cannot be published, dead-letter it (or report that the relay must stop, `on_error = "stop"`).
//!
//! ```text
//!  decoded row ──> refused before? ──> Router ──> Committer::admit ──> Committer::send
//!      │ unreadable       │ yes           │ refused      │ refused
//!      └──────────────────┴───────────────┴──────────────┴──> DeadLetters ──> admit ──> send
//! ```
//!
//! The streaming loop and the initial snapshot publish rows the same way through this; they
//! differ only in where a cut goes when the relay must stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::settings::{OnError, RelaySettings};
use crate::decode::{EnvelopeError, InsertError, OutboxRow, RowError};
use crate::error::{Error, Kind, Result};
use crate::reason::{Reason, Refusal};
use crate::route::deadletter::DeadLetters;
use crate::route::{Position, Record, Router, RouterSettings};
use crate::sink::Committer;
use crate::telemetry::{Status, TxnStats};

/// A row that cannot be published, in whatever shape it failed.
enum BadRow {
    /// Its columns could not be read.
    Raw(RowError),
    /// A message of the relay's prefix whose envelope cannot be read.
    Envelope(EnvelopeError),
    /// Decoded, not routable (or refused on an earlier attempt).
    Row(OutboxRow, Refusal),
    /// Routed, not publishable (topic, size).
    Record(Record, Refusal),
}

impl BadRow {
    fn refusal(&self) -> Refusal {
        match self {
            BadRow::Raw(e) => Refusal::new(e.reason, e.detail.clone()),
            BadRow::Envelope(e) => Refusal::new(e.reason, e.detail.clone()),
            BadRow::Row(_, r) | BadRow::Record(_, r) => r.clone(),
        }
    }

    fn event_id(&self) -> Option<String> {
        match self {
            BadRow::Raw(e) => e.event_id.clone(),
            BadRow::Envelope(e) => e.event_id.clone(),
            BadRow::Row(row, _) => Some(row.id.to_string()),
            BadRow::Record(rec, _) => rec
                .event_id
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        }
    }
}

/// What became of a row.
#[derive(Debug)]
pub enum Published {
    /// Queued in the transaction being assembled (as an event or a dead letter).
    Queued,
    /// It cannot be published and `on_error = "stop"`: nothing of it was queued; the caller cuts
    /// before it and ends with this error.
    Stop(Error),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Publisher {
    router: Router,
    dead_letters: Option<DeadLetters>,
    /// What the assembling Kafka transaction holds, for the metrics at its commit.
    stats: TxnStats,
    status: Arc<Status>,
}

impl Publisher {
    /// A publisher routing with `router` under the relay's error policy.
    pub fn new(settings: &RelaySettings, router: RouterSettings, status: &Arc<Status>) -> Self {
        Self {
            router: Router::new(router),
            dead_letters: match &settings.on_error {
                OnError::DeadLetter(topic) => {
                    Some(DeadLetters::new(topic, settings.columns.clone()))
                }
                OnError::Stop => None,
            },
            stats: TxnStats::default(),
            status: status.clone(),
        }
    }

    /// New routing rules (SIGHUP), for rows from now on.
    pub fn set_router(&mut self, router: RouterSettings) {
        self.router.set_settings(router);
    }

    /// The counters of the assembling transaction.
    pub fn stats(&mut self) -> &mut TxnStats {
        &mut self.stats
    }

    /// The counters of the assembling transaction, handed over at a cut.
    pub fn take_stats(&mut self) -> TxnStats {
        std::mem::take(&mut self.stats)
    }

    /// Publishes one decoded row at `pos`. A decoding error other than a bad row (the schema or
    /// the protocol) is the caller's: it stops the relay.
    pub fn row(
        &mut self,
        committer: &mut Committer,
        row: std::result::Result<OutboxRow, InsertError>,
        pos: &Position,
    ) -> Result<Published> {
        let row = match row {
            Ok(row) => row,
            Err(InsertError::Row(e)) => return self.bad_row(committer, BadRow::Raw(e), pos),
            Err(e) => {
                return Err(Error::config(format!(
                    "postgres: the outbox stream does not match the configuration at {}",
                    pos.lsn
                ))
                .with_source(e))
            }
        };
        if let Some(refusal) = committer.refused(row.id.as_bytes()) {
            let refusal = refusal.clone();
            return self.bad_row(committer, BadRow::Row(row, refusal), pos);
        }
        let rec = match self.router.route(row, pos) {
            Ok(rec) => rec,
            Err(failed) => {
                let (refusal, row) = *failed;
                return self.bad_row(committer, BadRow::Row(row, refusal), pos);
            }
        };
        if let Some(refusal) = committer.admit(&rec)? {
            return self.bad_row(committer, BadRow::Record(rec, refusal), pos);
        }
        self.stats.published(&rec.topic);
        self.status.events_published.fetch_add(1, Ordering::Relaxed);
        committer.send(rec)?;
        Ok(Published::Queued)
    }

    /// A message of the relay's prefix whose envelope cannot be published: a bad row.
    pub fn malformed(
        &mut self,
        committer: &mut Committer,
        e: EnvelopeError,
        pos: &Position,
    ) -> Result<Published> {
        self.bad_row(committer, BadRow::Envelope(e), pos)
    }

    /// A row that cannot be published: dead-letter it in the open transaction, or report stop.
    fn bad_row(
        &mut self,
        committer: &mut Committer,
        bad: BadRow,
        pos: &Position,
    ) -> Result<Published> {
        let refusal = bad.refusal();
        let id = bad.event_id().unwrap_or_else(|| "(unknown)".into());
        let Some(dead_letters) = &self.dead_letters else {
            return Ok(Published::Stop(Error::new(
                Kind::BadRow,
                format!(
                    "outbox row {id} at {} (xid {}) cannot be published: {refusal} (errors.on_error = \"stop\"; fix the row or the configuration, then start again: nothing past it was acknowledged)",
                    pos.lsn, pos.xid
                ),
            )));
        };
        tracing::warn!(
            event_id = %id,
            pg_lsn = %pos.lsn,
            reason = %refusal.reason,
            "dead-lettering outbox row: {}",
            refusal.detail
        );
        let rec = match bad {
            BadRow::Raw(e) => dead_letters.from_raw(e, pos),
            BadRow::Envelope(e) => dead_letters.from_envelope(e, pos),
            BadRow::Row(row, refusal) => {
                let intended = self.router.topic(&row.aggregate_type).ok();
                dead_letters.from_row(row, intended.as_ref(), pos, &refusal)
            }
            BadRow::Record(rec, refusal) => dead_letters.from_record(rec, &refusal),
        };
        if let Some(refused) = committer.admit(&rec)? {
            return Err(match refused.reason {
                Reason::RecordTooLarge => Error::bad_row(format!(
                    "outbox row {id} at {} could not be dead-lettered either: {refused}",
                    pos.lsn
                )),
                _ => Error::config(format!(
                    "kafka: outbox row {id} cannot be dead-lettered: {refused} (errors.dead_letter_topic {:?}: create the topic, or let the relay write it)",
                    &*rec.topic
                )),
            });
        }
        self.stats.dead_lettered();
        self.status
            .events_dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        committer.send(rec)?;
        Ok(Published::Queued)
    }
}
