//! The loop: one task, one biased `select!`, data flowing one way.
//!
//! ```text
//!  Stream ──event──> Tracker ──Publish(pos)──> decode ──row──> Router ──record──> Committer
//!    ^   (skip what the checkpoint covers)       │ bad row ──> DeadLetters ──────────┘ │
//!    │                                                                                 │
//!    └───────────── ack(tracker.committed(checkpoint)) <── Committed { checkpoint } ───┘
//! ```
//!
//! The tracker decides positions and cuts, the committer does the Kafka side; this file only
//! wires them and holds no position of its own. No channels: the stages are cheap synchronous
//! calls except the Kafka commit, which already runs on a blocking thread inside the committer,
//! so one task keeps ordering obvious (docs/ARCHITECTURE.md, "One task").
//!
//! Branches, in priority order (`biased`):
//! 1. shutdown: drain (commit what is assembled, wait for every decided commit, acknowledge);
//! 2. a SIGHUP reload: rare and cheap, before the stream, which may always be ready;
//! 3. a commit returned: acknowledge, then what waited for it is produced;
//! 4. the open Kafka transaction is old enough (`batch.max_delay_ms`, 0 by default: at once when
//!    no commit runs): cut it;
//! 5. the stream, when the committer has room (bounded memory);
//! 6. an idle checkpoint is due (the outbox is idle but WAL moves);
//! 7. the heartbeat: the SQL connection checks the slot;
//! 8. a turn of at most [`TURN`], so the watchdog is fed while idle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::publish::{Published, Publisher};
use super::settings::{BatchSettings, LiveSettings, RelaySettings};
use super::tracker::{Change, TrackError, Tracker};
use crate::decode::{self, MessageDecoder, MessageEvent, OutboxDecoder, PgOutput};
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;
use crate::shutdown::Shutdown;
use crate::sink::{Committer, Outcome, Partial, Refusals};
use crate::source::stream::OpenOptions;
use crate::source::{Control, Reader, SourceEvent, Stream};
use crate::telemetry::Status;

/// How often the SQL connection checks the slot while streaming; a check that does not answer in
/// this time ends the session (a connection that hangs without an error, e.g. a network partition).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Longest an idle loop goes without a turn (each turn ticks the watchdog).
const TURN: Duration = Duration::from_millis(500);
/// How long a session that failed waits for the outcome of a commit still running.
const FINISH_COMMIT: Duration = Duration::from_secs(10);
/// Buffered stream events handled per turn before the timers get a look.
const BURST: usize = 256;

/// The loop's state: the stages, and nothing else.
#[allow(missing_debug_implementations)]
pub struct Pipeline<'a> {
    settings: &'a RelaySettings,
    control: Control,
    stream: Reader,
    /// How to open the stream when a catch-up read reaches the WAL end.
    reopen: OpenOptions,
    /// The catch-up read reached the WAL end: switch to streaming at the next turn.
    caught_up: bool,
    tracker: Tracker,
    committer: Committer,
    decoder: OutboxDecoder,
    /// Rows into records (or dead letters) into the committer.
    publisher: Publisher,
    /// Messages of the relay's prefix, when `outbox.events_from` includes them.
    messages: Option<MessageDecoder>,
    /// Batch limits in force (reloadable).
    batch: BatchSettings,
    live: &'a mut watch::Receiver<LiveSettings>,
    status: Arc<Status>,
    /// A bad row with `on_error = "stop"`: finish what is decided, then end with this error.
    stop_after: Option<Error>,
    last_commit_at: Instant,
    wal_end: Lsn,
}

impl<'a> Pipeline<'a> {
    /// Wires the stages of a started session.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &'a RelaySettings,
        control: Control,
        stream: Reader,
        reopen: OpenOptions,
        tracker: Tracker,
        committer: Committer,
        live_now: LiveSettings,
        live: &'a mut watch::Receiver<LiveSettings>,
        status: &Arc<Status>,
    ) -> Self {
        let src = &settings.source;
        status
            .checkpoint_lsn
            .store(tracker.resume_lsn().as_u64(), Ordering::Relaxed);
        Self {
            settings,
            control,
            stream,
            reopen,
            caught_up: false,
            tracker,
            committer,
            decoder: OutboxDecoder::new(
                &src.table_schema,
                &src.table_name,
                settings.columns.clone(),
            ),
            publisher: Publisher::new(settings, live_now.router, status),
            messages: settings
                .events_from
                .messages()
                .then(|| MessageDecoder::new(settings.message_prefix.clone())),
            batch: live_now.batch,
            live,
            status: status.clone(),
            stop_after: None,
            last_commit_at: Instant::now(),
            wal_end: Lsn::ZERO,
        }
    }

    /// Runs until shutdown (drained: `Ok`) or an error.
    pub async fn run(&mut self, shutdown: &Shutdown) -> Result<()> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut turn = tokio::time::interval(TURN);
        turn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stall_at = crate::telemetry::test_stall_deadline();
        let mut live_open = true;
        loop {
            self.status.tick();
            if stall_at.is_some_and(|at| Instant::now() >= at) {
                tracing::warn!("test hook OUTBOX_RELAY_TEST_STALL_AFTER_READY: the pipeline loop stops turning");
                std::future::pending::<()>().await;
            }
            if self.caught_up && self.stop_after.is_none() {
                self.caught_up = false;
                self.switch_to_streaming().await?;
            }
            if self.stop_after.is_some() && !self.committer.committing() {
                return Err(self
                    .stop_after
                    .take()
                    .unwrap_or_else(|| Error::internal("stop")));
            }
            let stopping = self.stop_after.is_some();
            let fill = *self.committer.fill();
            let committing = self.committer.committing();
            let commit_at = self
                .tracker
                .commit_deadline(&fill, committing, &self.batch)
                .filter(|_| !stopping);
            let idle_at = self
                .tracker
                .idle_checkpoint_at(self.committer.idle(), self.last_commit_at, &self.batch)
                .filter(|_| !stopping);
            let reading = !stopping && self.committer.has_room(self.batch.max_events);
            tokio::select! {
                biased;
                _ = shutdown.requested() => return self.drain().await,
                changed = self.live.changed(), if live_open => match changed {
                    Ok(()) => self.apply_live(),
                    Err(_) => live_open = false,
                },
                outcome = self.committer.finished(), if committing => self.on_commit(outcome?)?,
                _ = sleep_until(commit_at), if commit_at.is_some() => self.decide(None)?,
                ev = self.stream.recv(&self.settings.source), if reading => {
                    self.handle(ev?)?;
                    // Take what is already buffered without yielding to the timers each time.
                    for _ in 0..BURST {
                        if self.stop_after.is_some() || self.caught_up {
                            break;
                        }
                        match futures::FutureExt::now_or_never(self.stream.recv(&self.settings.source)) {
                            Some(ev) => self.handle(ev?)?,
                            None => break,
                        }
                    }
                }
                _ = sleep_until(idle_at), if idle_at.is_some() => self.decide(None)?,
                _ = heartbeat.tick() => self.heartbeat().await?,
                _ = turn.tick() => {}
            }
        }
    }

    /// Ends the session: after an error, learn how a commit still running ended (a fenced commit
    /// says more than the broken connection that may have ended the loop first) and abort the open
    /// Kafka transaction; close the stream once the last acknowledgement reached the server.
    /// Returns the session's result and the refused-record memory.
    pub async fn finish(self, result: Result<()>) -> (Result<()>, Refusals) {
        let Pipeline {
            mut committer,
            stream,
            status,
            ..
        } = self;
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut e = e;
                if committer.committing() && e.kind() != Kind::Fenced {
                    let waited = tokio::time::timeout(FINISH_COMMIT, committer.finished()).await;
                    if let Ok(Err(commit)) = waited {
                        if commit.kind() == Kind::Fenced {
                            tracing::warn!(
                                "session ended: {} (and its running commit was fenced)",
                                e.report()
                            );
                            e = commit;
                        }
                    }
                }
                if committer.abort() {
                    status.metrics.aborted();
                }
                Err(e)
            }
        };
        stream.close().await;
        (result, committer.into_refusals())
    }

    /// The catch-up read reached the WAL end (always at a Postgres commit boundary: a SQL call
    /// returns whole transactions): commit everything read, then stream from the slot. The
    /// stream starts at the slot's position, at or before what Kafka now holds, and the tracker
    /// resumes from the last committed checkpoint and skips what it covers, as at any start
    /// ([`Tracker::restart`]: its partial transaction too).
    async fn switch_to_streaming(&mut self) -> Result<()> {
        let started = Instant::now();
        if !self.committer.fill().is_empty() {
            self.decide(None)?;
        }
        while self.committer.committing() {
            let outcome = self.committer.finished().await?;
            self.on_commit(outcome)?;
            if !self.committer.committing() && !self.committer.fill().is_empty() {
                self.decide(None)?;
            }
        }
        // The last acknowledgement reaches the slot, and no SQL call holds it, before the
        // walsender may take it.
        if let Reader::CatchUp(c) = &mut self.stream {
            c.stop().await;
        }
        self.tracker.restart();
        let src = self.control.settings().clone();
        let stream = Stream::open(&src, self.reopen).await?;
        self.stream = Reader::Stream(stream);
        self.stream.ack(self.tracker.resume_lsn());
        self.status.metrics.catching_up(false);
        tracing::info!(
            resume_lsn = %self.tracker.resume_lsn(),
            switch_ms = started.elapsed().as_millis() as u64,
            "caught up: streaming from the slot again"
        );
        Ok(())
    }

    /// Cuts the assembling Kafka transaction here (with `partial` inside a Postgres transaction).
    fn decide(&mut self, partial: Option<Partial>) -> Result<()> {
        let checkpoint = self.tracker.checkpoint(partial);
        // A split Postgres transaction: what of it this commit holds counts from now.
        if let Some(ts) = self.tracker.current_commit_ts() {
            self.publisher.stats().pg_commit(ts);
        }
        self.committer
            .decide(checkpoint, self.publisher.take_stats())
    }

    /// A commit returned.
    fn on_commit(&mut self, outcome: Outcome) -> Result<()> {
        let mut c = match outcome {
            Outcome::Committed(c) => c,
            Outcome::Refused { event_id, refusal } => {
                return Err(Error::transient(format!(
                    "kafka: the broker refused the record of outbox row {event_id} ({refusal}); replaying to dead-letter it"
                )))
            }
        };
        let ack = self.tracker.committed(&c.checkpoint);
        self.stream.ack(ack);
        self.last_commit_at = Instant::now();
        self.status.committed(&mut c.stats, ack.as_u64());
        tracing::debug!(
            events = c.events,
            commit_ms = c.took.as_millis() as u64,
            resume_lsn = %ack,
            partial = ?c.checkpoint.partial,
            "committed"
        );
        // What grew while the commit ran may be due already.
        if self.stop_after.is_none()
            && self.tracker.commit_due(
                self.committer.fill(),
                self.committer.committing(),
                &self.batch,
                Instant::now(),
            )
        {
            self.decide(None)?;
        }
        Ok(())
    }

    /// Shutdown: commit what is assembled (as a partial checkpoint inside a Postgres
    /// transaction), wait for every decided commit, acknowledge.
    async fn drain(&mut self) -> Result<()> {
        if !self.committer.fill().is_empty() && self.stop_after.is_none() {
            self.decide(self.tracker.drain_partial())?;
        }
        while self.committer.committing() {
            let outcome = self.committer.finished().await?;
            self.on_commit(outcome)?;
        }
        if let Some(e) = self.stop_after.take() {
            return Err(e);
        }
        tracing::info!(
            resume_lsn = %self.tracker.resume_lsn(),
            "drained: everything received is committed in Kafka and acknowledged"
        );
        Ok(())
    }

    fn handle(&mut self, ev: SourceEvent) -> Result<()> {
        match ev {
            SourceEvent::Begin {
                final_lsn,
                xid,
                commit_ts_micros,
            } => self
                .tracker
                .begin(final_lsn, xid, commit_ts_micros)
                .map_err(track_error),
            SourceEvent::Change { lsn, data } => self.change(lsn, data),
            SourceEvent::Commit { end_lsn, .. } => {
                let ts = self.tracker.commit(end_lsn).map_err(track_error)?;
                self.publisher.stats().pg_commit(ts);
                // Checked here too, not only by the timer, so a steady stream of small
                // transactions still commits every max_delay.
                if self.stop_after.is_none()
                    && self.tracker.commit_due(
                        self.committer.fill(),
                        self.committer.committing(),
                        &self.batch,
                        Instant::now(),
                    )
                {
                    self.decide(None)?;
                }
                Ok(())
            }
            SourceEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => self.message(transactional, lsn, &prefix, content),
            SourceEvent::CaughtUp => {
                self.caught_up = true;
                Ok(())
            }
            SourceEvent::KeepAlive { wal_end } => {
                self.wal_end = self.wal_end.max(wal_end);
                self.status
                    .server_wal_end
                    .store(self.wal_end.as_u64(), Ordering::Relaxed);
                self.tracker.keepalive(wal_end, self.committer.fill());
                Ok(())
            }
        }
    }

    fn change(&mut self, lsn: Lsn, data: Bytes) -> Result<()> {
        // Retrying would re-read the same bytes: an undecodable message stops the relay.
        let msg = decode::decode(data).map_err(|e| {
            Error::internal(format!("postgres: undecodable pgoutput message at {lsn}"))
                .with_source(e)
        })?;
        match msg {
            // A schema problem (wrong table, missing mapped column) surfaces at the first row that
            // is not skipped: Relation messages also precede rows the checkpoint already covers,
            // which were published under the old mapping.
            PgOutput::Relation(rel) => self.decoder.relation(rel),
            PgOutput::Insert { relation_id, tuple } => {
                if !self.settings.events_from.rows() {
                    return Err(Error::config(format!(
                        "postgres: publication {:?} sends rows, but outbox.events_from = \"messages\": remove the table from the publication, or set events_from = \"both\"",
                        self.settings.source.publication
                    )));
                }
                let pos = match self.tracker.change(lsn).map_err(track_error)? {
                    Change::Skip => return Ok(()),
                    Change::Publish(pos) => pos,
                };
                let row = self.decoder.insert(relation_id, tuple);
                let published = self.publisher.row(&mut self.committer, row, &pos)?;
                self.after_change(published)?;
            }
            // The publication is insert-only; other changes are not events.
            PgOutput::Update { .. } | PgOutput::Delete { .. } | PgOutput::Truncate { .. } => {}
            PgOutput::Type { .. } | PgOutput::Origin { .. } | PgOutput::Message { .. } => {}
            PgOutput::Begin { .. } | PgOutput::Commit { .. } => {
                return Err(Error::internal(
                    "postgres: Begin/Commit arrived as raw data: the transport changed behaviour",
                ))
            }
        }
        Ok(())
    }

    /// A logical decoding message. With messages enabled, a transactional one with the relay's
    /// prefix is one change of its transaction, published like a row; others are counted, never
    /// published (a non-transactional one is outside any commit: it cannot be exactly-once).
    fn message(
        &mut self,
        transactional: bool,
        lsn: Lsn,
        prefix: &str,
        content: Bytes,
    ) -> Result<()> {
        let Some(decoder) = &self.messages else {
            return Ok(());
        };
        match decoder.decode(transactional, prefix, content) {
            MessageEvent::OtherPrefix => {
                self.status.metrics.message_ignored("other_prefix");
                Ok(())
            }
            MessageEvent::NonTransactional { event_id } => {
                self.status.metrics.message_ignored("non_transactional");
                tracing::warn!(
                    pg_lsn = %lsn,
                    event_id = event_id.as_deref().unwrap_or("-"),
                    "a non-transactional message with the relay's prefix was not published: it belongs to no commit, so it cannot be published exactly once (write events with outbox_emit, which is transactional)"
                );
                Ok(())
            }
            event => {
                let pos = match self.tracker.change(lsn).map_err(track_error)? {
                    Change::Skip => return Ok(()),
                    Change::Publish(pos) => pos,
                };
                let published = match event {
                    MessageEvent::Event(row) => {
                        self.publisher.row(&mut self.committer, Ok(row), &pos)?
                    }
                    MessageEvent::Malformed(e) => {
                        self.publisher.malformed(&mut self.committer, e, &pos)?
                    }
                    _ => return Ok(()),
                };
                self.after_change(published)
            }
        }
    }

    /// After a published change: stop before a bad row (`on_error = "stop"`), or split a big
    /// Postgres transaction (commit what is assembled with a partial checkpoint).
    fn after_change(&mut self, published: Published) -> Result<()> {
        if let Published::Stop(e) = published {
            // Publish everything before the bad row (a cut at this row), acknowledge up to the
            // end of the last whole transaction, and stop: a restart begins at this row.
            if !self.committer.fill().is_empty() {
                self.decide(self.tracker.partial_before_current())?;
            }
            self.stop_after = Some(e);
            return Ok(());
        }
        if self.stop_after.is_none() {
            if let Some(partial) = self.tracker.split_due(self.committer.fill(), &self.batch) {
                self.decide(Some(partial))?;
            }
        }
        Ok(())
    }

    /// Checks the slot over the SQL connection: proves Postgres still answers (a partitioned
    /// network can leave the replication connection silent but open) and refreshes slot metrics.
    async fn heartbeat(&mut self) -> Result<()> {
        let src = &self.settings.source;
        let slot = match tokio::time::timeout(HEARTBEAT, self.control.slot()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::transient(format!(
                    "postgres {}: no answer to the slot check within {HEARTBEAT:?}: reconnecting",
                    src.address()
                )))
            }
        };
        let Some(slot) = slot else {
            return Err(Error::invariant(format!(
                "postgres {}: slot {:?} was dropped while the relay streamed from it",
                src.address(),
                src.slot
            )));
        };
        if slot.wal_status.as_deref() == Some("lost") {
            return Err(Error::invariant(format!(
                "postgres {}: slot {:?} was invalidated (wal_status = lost); see the README, \"Recovering from an invalidated slot\"",
                src.address(),
                src.slot
            )));
        }
        self.status
            .metrics
            .slot_state(slot.wal_status.as_deref(), slot.safe_wal_size);
        if let Some(restart) = slot.restart_lsn {
            self.status
                .slot_restart_lsn
                .store(restart.as_u64(), Ordering::Relaxed);
        }
        // For the lag and retained-WAL gauges only: a failure here is not the session's.
        if let Ok(Ok(current)) =
            tokio::time::timeout(HEARTBEAT, self.control.current_wal_lsn()).await
        {
            self.status
                .server_current_lsn
                .store(current.as_u64(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// A SIGHUP reload: new batch limits from the next commit decision, new routing from the next
    /// event. Positions and the open Kafka transaction are untouched.
    fn apply_live(&mut self) {
        let live = self.live.borrow_and_update().clone();
        self.batch = live.batch;
        self.publisher.set_router(live.router);
        tracing::info!(
            max_events = self.batch.max_events,
            max_bytes = self.batch.max_bytes,
            max_delay_ms = self.batch.max_delay.as_millis() as u64,
            "reloaded settings applied to the running pipeline"
        );
    }
}

fn track_error(e: TrackError) -> Error {
    match e {
        TrackError::Protocol(_) => Error::transient(e.to_string()),
        TrackError::PartialMismatch { .. } => Error::invariant(e.to_string()),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
