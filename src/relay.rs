//! The relay: builds the stages and runs the exactly-once loop (DESIGN.md section 4).
//!
//! ```text
//!  Stream (source) ──event──> decode ──row──> Router ──record──> Sink (Kafka txn)
//!       ^                                                            │ commit_transaction Ok
//!       └──────────────────── ack(resume_lsn) ───────────────────────┘
//! ```
//!
//! A *session* is one replication connection plus one producer. Start-up order matters:
//! 1. acquire the slot (`START_REPLICATION`): a standby waits here without disturbing anyone;
//! 2. `init_transactions`: fences any zombie with our `transactional.id`;
//! 3. read the checkpoint to the end (`read_committed`): nobody else can write it now;
//! 4. check `confirmed_flush_lsn <= resume_lsn`, else someone moved the slot: stop (exit 70);
//! 5. stream; skip client-side what the checkpoint covers (whole transactions whose commit is
//!    before `resume_lsn`, and the first `next_index` changes of a partial one).
//!
//! Two positions are never confused: what was *received* lives in this loop only; what was
//! *committed* in Kafka (`resume_lsn`) is the only one ever acknowledged to Postgres.
//!
//! Any error ends the session; [`run`] decides by its [`Kind`] whether to reconnect (transient,
//! standby) or stop. A new session re-reads the checkpoint, so an aborted Kafka transaction is
//! simply replayed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::decode::{self, ColumnMap, InsertError, OutboxDecoder, PgOutput};
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;
use crate::route::{Position, Record, RouteError, Router, RouterSettings};
use crate::shutdown::Shutdown;
use crate::sink::{self, Checkpoint, Partial, SendError, Sink, SinkSettings};
use crate::source::control::Control;
use crate::source::{SourceEvent, SourceSettings, Stream};
use crate::telemetry::{Status, TxnStats};
use tokio::sync::watch;

/// What to do with a row that cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnError {
    /// Publish it to this topic with the reason in headers, in the same Kafka transaction.
    DeadLetter(String),
    /// Stop the relay, acknowledging nothing past it.
    Stop,
}

/// When to cut a Kafka transaction.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Commit once this many records are in the open transaction (at a Postgres commit).
    pub max_events: u64,
    /// Commit once this many bytes are in the open transaction (at a Postgres commit).
    pub max_bytes: u64,
    /// Commit once the open transaction is this old (at a Postgres commit).
    pub max_delay: Duration,
    /// Split a Postgres transaction once the open Kafka transaction holds this many records.
    pub split_events: u64,
    /// Least time between two checkpoint-only commits while the outbox is idle.
    pub idle_checkpoint: Duration,
}

/// Reconnect policy.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// First pause after a failure.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
    /// A server unavailable this long ends the relay (exit 69).
    pub max_elapsed: Duration,
}

/// Everything the relay needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Postgres side.
    pub source: SourceSettings,
    /// Kafka side (`checkpoint_key` is filled in per session from the system identifier).
    pub sink: SinkSettings,
    /// Routing rules.
    pub router: RouterSettings,
    /// Outbox column mapping.
    pub columns: ColumnMap,
    /// Transaction cutting.
    pub batch: BatchSettings,
    /// Bad rows.
    pub on_error: OnError,
    /// Reconnects.
    pub retry: RetrySettings,
}

/// The settings a SIGHUP reload may change while the relay runs: they touch neither positions nor
/// identities, so applying them between two events cannot lose or duplicate one.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Transaction cutting, from the next commit decision on.
    pub batch: BatchSettings,
    /// Routing, for events not yet routed.
    pub router: RouterSettings,
}

impl RelaySettings {
    /// The reloadable part of these settings.
    pub fn live(&self) -> LiveSettings {
        LiveSettings {
            batch: self.batch,
            router: self.router.clone(),
        }
    }
}

/// Runs sessions until shutdown or a non-retriable error. Each new value of `live` (a SIGHUP
/// reload) applies to the running pipeline (checked in its loop) and to every later session.
pub async fn run_with_reload(
    settings: RelaySettings,
    shutdown: Shutdown,
    status: Arc<Status>,
    mut live: watch::Receiver<LiveSettings>,
) -> Result<()> {
    let mut backoff = settings.retry.initial_backoff;
    let mut failing_since: Option<Instant> = None;
    let mut standing_by = false;
    // Rows whose records the broker refused (found out only at commit): dead-lettered on replay.
    let mut poisoned = Poisoned::default();
    loop {
        if shutdown.is_requested() {
            return Ok(());
        }
        // Connecting, standing by and backing off are healthy states: keep the watchdog fed.
        status.tick();
        let mut made_progress = false;
        let outcome = session(
            &settings,
            &shutdown,
            &status,
            &mut made_progress,
            &mut poisoned,
            &mut live,
        )
        .await;
        status.set_ready(false);
        let err = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        status.session_error(&err);
        if made_progress {
            failing_since = None;
            backoff = settings.retry.initial_backoff;
        }
        match err.kind() {
            Kind::Standby => {
                status.set_standby(&settings.source.slot);
                if !standing_by {
                    tracing::info!(slot = %settings.source.slot, "{}", err.report());
                    standing_by = true;
                }
                failing_since = None;
                backoff = settings.retry.initial_backoff.min(Duration::from_secs(1));
            }
            Kind::Transient => {
                standing_by = false;
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > settings.retry.max_elapsed {
                    return Err(Error::transient(format!(
                        "giving up after {:?} of failures: {}",
                        since.elapsed(),
                        err.report()
                    )));
                }
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "session ended: {}",
                    err.report()
                );
                status.errors_transient.fetch_add(1, Ordering::Relaxed);
            }
            _ => return Err(err),
        }
        tokio::select! {
            _ = shutdown.requested() => return Ok(()),
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        if err.kind() == Kind::Transient {
            backoff = (backoff * 2).min(settings.retry.max_backoff);
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // 75% .. 125% of the pause.
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(factor)
}

/// Runs a blocking Kafka call without stalling the executor.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// One session: connect, start up in order, stream until shutdown or error.
async fn session(
    settings: &RelaySettings,
    shutdown: &Shutdown,
    status: &Arc<Status>,
    made_progress: &mut bool,
    poisoned: &mut Poisoned,
    live: &mut watch::Receiver<LiveSettings>,
) -> Result<()> {
    let src = &settings.source;
    // Checks that need no slot first, so a misconfiguration is reported before standing by.
    let control = Control::connect(src).await?;
    control.check_server().await?;
    control.ensure_slot().await?;

    // (1) Acquire the slot.
    let mut stream = Stream::open(src).await?;
    status.tick();
    let mut sink_settings = settings.sink.clone();
    sink_settings.checkpoint_key = format!("{}/{}/{}", stream.system_id, src.dbname, src.slot);

    // (2) Fence zombies, (3) read the checkpoint.
    let call = sink_settings.call_timeout;
    let sink = blocking(|| -> Result<Sink> {
        Sink::ensure_checkpoint_topic(&sink_settings)?;
        Sink::connect(sink_settings.clone(), call.max(Duration::from_secs(30)))
    })?;
    let checkpoint = blocking(|| {
        sink::checkpoint::read(
            &sink_settings.client_props,
            &sink_settings.checkpoint_topic,
            &sink_settings.checkpoint_key,
            call.max(Duration::from_secs(30)),
        )
    })?;

    // (4) The slot never moves past what Kafka holds, unless someone else moved it.
    let slot = control.slot().await?.ok_or_else(|| {
        Error::invariant(format!(
            "postgres {}: slot {:?} disappeared while the relay held it",
            src.address(),
            src.slot
        ))
    })?;
    let confirmed = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    let (resume_lsn, partial) = match &checkpoint {
        Some(cp) => {
            if confirmed > cp.resume_lsn {
                return Err(Error::invariant(format!(
                    "slot {:?} has confirmed_flush_lsn {} but the checkpoint in {:?} (key {:?}) says only up to {} is published: something advanced the slot behind the relay's back, and events in between may be lost. Investigate, then either reset the checkpoint (see README) or recreate the slot",
                    src.slot,
                    confirmed,
                    sink_settings.checkpoint_topic,
                    sink_settings.checkpoint_key,
                    cp.resume_lsn,
                )));
            }
            (cp.resume_lsn, cp.partial)
        }
        None => {
            tracing::info!(
                slot = %src.slot,
                confirmed_flush_lsn = %confirmed,
                "no checkpoint yet for this slot: publishing from the slot's position"
            );
            (confirmed, None)
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        slot = %src.slot,
        transactional_id = %sink_settings.transactional_id,
        resume_lsn = %resume_lsn,
        partial = ?partial,
        system_id = %stream.system_id,
        "outbox-relay started: slot acquired, producer initialised, checkpoint read"
    );
    stream.ack(resume_lsn);
    status
        .checkpoint_lsn
        .store(resume_lsn.as_u64(), Ordering::Relaxed);
    status.set_ready(true);
    *made_progress = true;
    let current = live.borrow_and_update().clone();

    let meta = blocking(|| sink::MetadataClient::new(&sink_settings))?;
    let max_record_bytes = sink_settings.max_record_bytes();
    let mut pipe = Pipeline {
        settings,
        control,
        poisoned,
        topics: HashMap::new(),
        stream,
        sink: Some(sink),
        meta,
        in_flight: None,
        backlog: VecDeque::new(),
        backlog_bytes: 0,
        txn_records: 0,
        stop_after: None,
        max_record_bytes,
        decoder: OutboxDecoder::new(&src.table_schema, &src.table_name, settings.columns.clone()),
        router: Router::new(current.router),
        batch: current.batch,
        live,
        stats: TxnStats::default(),
        status: status.clone(),
        resume_lsn,
        partial_at_start: partial,
        pending_resume: resume_lsn,
        cur: None,
        txn_opened_at: None,
        txn_bytes: 0,
        last_commit_at: Instant::now(),
        wal_end: Lsn::ZERO,
    };
    let result = pipe.run(shutdown).await;
    if result.is_err() {
        if let Some(sink) = pipe.sink.as_mut() {
            if sink.in_transaction() {
                status.metrics.aborted();
            }
            blocking(|| sink.abort());
        }
        // A commit still in flight finishes (or fails) on its own thread; the next session's
        // init_transactions fences it either way.
    }
    let Pipeline { stream, .. } = pipe;
    stream.close().await;
    result
}

/// The Postgres transaction being received.
#[derive(Debug, Clone, Copy)]
struct CurTxn {
    final_lsn: Lsn,
    xid: u32,
    commit_ts_micros: i64,
    /// Outbox changes seen so far in this transaction.
    index: u64,
    /// Changes to skip: already published (partial checkpoint), or all of them.
    skip_through: u64,
}

/// Event ids the broker refused at commit time, with why: on replay they go to the dead-letter
/// topic instead (or stop the relay), in the new transaction, so they are still published once.
#[derive(Debug, Default)]
struct Poisoned {
    ids: HashMap<String, (&'static str, String)>,
}

/// How long a "topic does not exist" answer is trusted before asking the brokers again.
const TOPIC_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How often the SQL connection checks the slot while streaming; a check that does not answer in
/// this time ends the session (a connection that hangs without an error, e.g. a network partition).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Longest an idle pipeline loop goes without a turn (each turn ticks the watchdog).
const TURN: Duration = Duration::from_millis(500);

/// A Kafka commit running on a blocking thread, and what it will make true once it returns Ok.
struct InFlight {
    handle: tokio::task::JoinHandle<(Sink, Result<()>)>,
    checkpoint: Checkpoint,
    stats: TxnStats,
    events: u64,
    started: Instant,
}

/// A step decided while a commit was running.
enum Item {
    /// A record for the next transaction.
    Record(Record),
    /// A commit decided after the records before it.
    Commit(Checkpoint, TxnStats, u64),
}

/// Most records held back while a commit runs (memory bound).
const BACKLOG_RECORDS: usize = 10_000;
const BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

struct Pipeline<'a> {
    settings: &'a RelaySettings,
    control: Control,
    poisoned: &'a mut Poisoned,
    /// Topics checked against cluster metadata: Ok, or why records cannot go there (and when).
    topics: HashMap<Arc<str>, (Result<(), sink::Refusal>, Instant)>,
    stream: Stream,
    /// The producer; `None` while a commit runs on a blocking thread.
    sink: Option<Sink>,
    /// Cluster metadata (topic checks), usable while the producer commits.
    meta: sink::MetadataClient,
    /// The Kafka commit running now, if any.
    in_flight: Option<InFlight>,
    /// What was decided while a commit ran: records of the next Kafka transaction, and commits,
    /// in order. Bounded: the stream is not read while it is full.
    backlog: VecDeque<Item>,
    backlog_bytes: u64,
    /// Records in the Kafka transaction being assembled (in the producer or the backlog).
    txn_records: u64,
    /// A bad row with `on_error = "stop"`: finish what is decided, then end with this error.
    stop_after: Option<Error>,
    /// Records larger than this are refused by the producer (`message.max.bytes`).
    max_record_bytes: u64,
    decoder: OutboxDecoder,
    router: Router,
    /// Batch limits in force (reloadable).
    batch: BatchSettings,
    /// Reloaded settings (SIGHUP), checked in the loop.
    live: &'a mut watch::Receiver<LiveSettings>,
    /// What the open Kafka transaction holds, for the metrics at commit.
    stats: TxnStats,
    status: Arc<Status>,
    /// Committed in Kafka and acknowledged: the end LSN of the last fully published transaction.
    resume_lsn: Lsn,
    /// The checkpoint's partial transaction, consulted at the first Begin of the session.
    partial_at_start: Option<Partial>,
    /// What the next commit may checkpoint: the end of the last transaction fully received
    /// (and queued in the open Kafka transaction), or a keepalive's WAL end while idle.
    pending_resume: Lsn,
    cur: Option<CurTxn>,
    txn_opened_at: Option<Instant>,
    txn_bytes: u64,
    last_commit_at: Instant,
    wal_end: Lsn,
}

impl Pipeline<'_> {
    async fn run(&mut self, shutdown: &Shutdown) -> Result<()> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        // Wakes an idle loop so it still ticks (the systemd watchdog is fed from those ticks).
        let mut turn = tokio::time::interval(TURN);
        turn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stall_at = crate::telemetry::test_stall_deadline();
        let mut live_open = true;
        loop {
            let batch = self.batch;
            self.status.tick();
            if stall_at.is_some_and(|at| Instant::now() >= at) {
                tracing::warn!("test hook OUTBOX_RELAY_TEST_STALL_AFTER_READY: the pipeline loop stops turning");
                std::future::pending::<()>().await;
            }
            if self.stop_after.is_some() && self.in_flight.is_none() && self.backlog.is_empty() {
                return Err(self
                    .stop_after
                    .take()
                    .unwrap_or_else(|| Error::internal("stop")));
            }
            // While a commit runs, the next transaction keeps growing and is decided only once
            // it returned: slow commits then mean bigger transactions, not a queue of commits.
            let commit_due = self
                .txn_opened_at
                .filter(|_| {
                    self.cur.is_none() && self.stop_after.is_none() && self.in_flight.is_none()
                })
                .map(|t| t + batch.max_delay);
            let idle_due = (self.cur.is_none()
                && self.txn_records == 0
                && self.in_flight.is_none()
                && self.backlog.is_empty()
                && self.stop_after.is_none()
                && self.pending_resume > self.resume_lsn)
                .then(|| self.last_commit_at + batch.idle_checkpoint);
            let reading = self.stop_after.is_none()
                && self.backlog.len() < BACKLOG_RECORDS
                && self.backlog_bytes < BACKLOG_BYTES
                && !(self.in_flight.is_some() && self.txn_records >= batch.max_events);
            // Priority order: shutdown, then a due commit (latency), then the stream, then idle
            // checkpoints.
            tokio::select! {
                biased;
                _ = shutdown.requested() => {
                    return self.drain().await;
                }
                // A SIGHUP reload: rare and cheap, so before the stream, which may always be ready.
                changed = self.live.changed(), if live_open => {
                    match changed {
                        Ok(()) => self.apply_live(),
                        Err(_) => live_open = false,
                    }
                }
                // A commit returned: acknowledge, then produce what waited for it.
                done = wait_in_flight(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.commit_done(done)?;
                }
                _ = sleep_until(commit_due), if commit_due.is_some() => {
                    self.commit(None)?;
                }
                ev = self.stream.recv(&self.settings.source), if reading => {
                    self.handle(ev?)?;
                    // Take what is already buffered without yielding to the timers each time.
                    for _ in 0..256 {
                        if self.stop_after.is_some() {
                            break;
                        }
                        match futures::FutureExt::now_or_never(self.stream.recv(&self.settings.source)) {
                            Some(ev) => self.handle(ev?)?,
                            None => break,
                        }
                    }
                }
                _ = sleep_until(idle_due), if idle_due.is_some() => {
                    self.commit(None)?;
                }
                _ = heartbeat.tick() => {
                    self.heartbeat().await?;
                }
                _ = turn.tick() => {}
            }
        }
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
        self.router.set_settings(live.router);
        tracing::info!(
            max_events = self.batch.max_events,
            max_bytes = self.batch.max_bytes,
            max_delay_ms = self.batch.max_delay.as_millis() as u64,
            "reloaded settings applied to the running pipeline"
        );
    }

    /// Shutdown: commit what is open (as a partial checkpoint when inside a Postgres
    /// transaction), acknowledge, return.
    async fn drain(&mut self) -> Result<()> {
        if self.txn_records > 0 && self.stop_after.is_none() {
            let partial = self.cur.and_then(partial_of);
            self.commit(partial)?;
        }
        self.settle().await?;
        if let Some(e) = self.stop_after.take() {
            return Err(e);
        }
        tracing::info!(
            resume_lsn = %self.resume_lsn,
            "drained: everything received is committed in Kafka and acknowledged"
        );
        Ok(())
    }

    /// Waits until every decided commit returned and nothing waits in the backlog.
    async fn settle(&mut self) -> Result<()> {
        while self.in_flight.is_some() {
            let done = wait_in_flight(&mut self.in_flight).await;
            self.commit_done(done)?;
        }
        Ok(())
    }

    fn handle(&mut self, ev: SourceEvent) -> Result<()> {
        match ev {
            SourceEvent::Begin {
                final_lsn,
                xid,
                commit_ts_micros,
            } => {
                if self.cur.is_some() {
                    return Err(Error::transient(format!(
                        "postgres: Begin of xid {xid} inside an open transaction (protocol error)"
                    )));
                }
                let mut skip_through = 0;
                if final_lsn < self.resume_lsn {
                    // Whole transaction already published.
                    skip_through = u64::MAX;
                } else if let Some(p) = self.partial_at_start.take() {
                    if p.final_lsn != final_lsn || p.xid != xid {
                        return Err(Error::invariant(format!(
                            "the checkpoint says transaction xid {} (commit {}) was partly published, but the stream resumed with xid {xid} (commit {}): the slot does not match the checkpoint",
                            p.xid,
                            p.final_lsn,
                            final_lsn
                        )));
                    }
                    skip_through = p.next_index;
                }
                self.cur = Some(CurTxn {
                    final_lsn,
                    xid,
                    commit_ts_micros,
                    index: 0,
                    skip_through,
                });
            }
            SourceEvent::Change { lsn, data } => self.change(lsn, data)?,
            SourceEvent::Commit { end_lsn, .. } => {
                let Some(cur) = self.cur.take() else {
                    return Err(Error::transient(
                        "postgres: Commit without Begin (protocol error)",
                    ));
                };
                self.stats.pg_commit(cur.commit_ts_micros);
                if end_lsn > self.pending_resume {
                    self.pending_resume = end_lsn;
                }
                // Checked here too, not only by the timer, so a steady stream of small
                // transactions still commits every max_delay.
                if self.commit_due_at_boundary() {
                    self.commit(None)?;
                }
            }
            SourceEvent::Message { .. } => {}
            SourceEvent::KeepAlive { wal_end } => {
                self.wal_end = self.wal_end.max(wal_end);
                self.status
                    .server_wal_end
                    .store(self.wal_end.as_u64(), Ordering::Relaxed);
                // Between transactions, everything before the server's sent position has been
                // received: while nothing is open, that position may be checkpointed (as
                // Postgres' own apply worker reports it), so an idle outbox never pins WAL.
                if self.cur.is_none() && self.txn_records == 0 && wal_end > self.pending_resume {
                    self.pending_resume = wal_end;
                }
            }
        }
        Ok(())
    }

    fn change(&mut self, change_lsn: Lsn, data: Bytes) -> Result<()> {
        // Retrying would re-read the same bytes: an undecodable message stops the relay.
        let msg = decode::decode(data).map_err(|e| {
            Error::internal(format!(
                "postgres: undecodable pgoutput message at {}",
                change_lsn
            ))
            .with_source(e)
        })?;
        match msg {
            // A schema problem (wrong table, missing mapped column) surfaces at the first row that
            // is not skipped: Relation messages also precede rows the checkpoint already covers,
            // which were published under the old mapping.
            PgOutput::Relation(rel) => self.decoder.relation(rel),
            PgOutput::Insert { relation_id, tuple } => {
                let Some(cur) = self.cur.as_mut() else {
                    return Err(Error::transient(
                        "postgres: Insert outside a transaction (protocol error)",
                    ));
                };
                cur.index += 1;
                if cur.index <= cur.skip_through {
                    return Ok(());
                }
                let cur = *cur;
                let pos = Position {
                    lsn: change_lsn,
                    xid: cur.xid,
                    commit_ts_micros: cur.commit_ts_micros,
                };
                match self.decoder.insert(relation_id, tuple) {
                    Ok(row) => {
                        // Nothing is copied per row: a refused row comes back whole.
                        let refused = match self.poisoned.ids.get(row.id.as_str()) {
                            Some((reason, detail)) => Some((*reason, detail.clone(), row)),
                            None => match self.router.route(row, &pos) {
                                Ok(rec) => {
                                    self.send(rec, &pos)?;
                                    None
                                }
                                Err(failed) => {
                                    let (RouteError { reason, detail }, row) = *failed;
                                    Some((reason, detail, row))
                                }
                            },
                        };
                        if let Some((reason, detail, row)) = refused {
                            self.bad_row(
                                reason,
                                detail,
                                &pos,
                                Some(&row.id),
                                Some(Bytes::from(row.aggregate_id)),
                                row.payload,
                            )?;
                        }
                    }
                    Err(InsertError::Row(e)) => {
                        let key = e
                            .raw
                            .get(&self.settings.columns.aggregate_id)
                            .flatten()
                            .cloned();
                        let value = e
                            .raw
                            .get(&self.settings.columns.payload)
                            .flatten()
                            .cloned()
                            .unwrap_or_default();
                        let event_id = e.event_id.clone();
                        self.bad_row(
                            e.reason.code(),
                            e.to_string(),
                            &pos,
                            event_id.as_deref(),
                            key,
                            value,
                        )?;
                    }
                    Err(e) => {
                        return Err(Error::config(format!(
                            "postgres: the outbox stream does not match the configuration at {}",
                            change_lsn
                        ))
                        .with_source(e))
                    }
                }
                // Split a big Postgres transaction: commit what is queued, with a partial
                // checkpoint that says how many of its changes are published.
                if self.txn_records >= self.batch.split_events && self.stop_after.is_none() {
                    self.commit(Some(Partial {
                        final_lsn: cur.final_lsn,
                        xid: cur.xid,
                        next_index: cur.index,
                    }))?;
                }
            }
            PgOutput::Update { .. } | PgOutput::Delete { .. } | PgOutput::Truncate { .. } => {
                // The publication should be insert-only; other changes are not events.
            }
            PgOutput::Type { .. } | PgOutput::Origin { .. } | PgOutput::Message { .. } => {}
            PgOutput::Begin { .. } | PgOutput::Commit { .. } => {
                return Err(Error::internal(
                    "postgres: Begin/Commit arrived as raw data: the transport changed behaviour",
                ))
            }
        }
        Ok(())
    }

    fn send(&mut self, rec: Record, pos: &Position) -> Result<()> {
        let size = record_size(&rec);
        let refusal = match self.check_topic(&rec.topic)? {
            Err(refusal) => Some(refusal),
            Ok(()) if size > self.max_record_bytes => Some((
                "record_too_large",
                format!(
                    "record of {size} bytes is larger than the producer's message.max.bytes ({})",
                    self.max_record_bytes
                ),
            )),
            Ok(()) => None,
        };
        if let Some((reason, detail)) = refusal {
            let event_id = event_id_of(&rec);
            return self.bad_row(reason, detail, pos, event_id.as_deref(), rec.key, rec.value);
        }
        self.stats.published(&rec.topic);
        self.status.events_published.fetch_add(1, Ordering::Relaxed);
        self.enqueue(rec, size)
    }

    /// Queues a record in the Kafka transaction being assembled: straight into the producer, or
    /// into the backlog while a commit runs (records must never join a transaction whose
    /// checkpoint was already decided).
    fn enqueue(&mut self, rec: Record, size: u64) -> Result<()> {
        self.opened();
        self.txn_records += 1;
        self.txn_bytes += size;
        if self.in_flight.is_some() || !self.backlog.is_empty() {
            self.backlog_bytes += size;
            self.backlog.push_back(Item::Record(rec));
            return Ok(());
        }
        self.produce(&rec)
    }

    fn produce(&mut self, rec: &Record) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else {
            return Err(Error::internal("producer missing outside a commit"));
        };
        match sink.send(rec) {
            Ok(()) => Ok(()),
            // Refused by the producer although it passed the size check: replay the transaction
            // and dead-letter the row then (or stop), as for a record the broker refuses.
            Err(SendError::Rejected { reason, detail }) => {
                self.poison(
                    event_id_of(rec),
                    reason,
                    format!("topic {}: {detail}", rec.topic),
                )?;
                Err(Error::transient(format!(
                    "kafka: the producer refused a record for {} ({reason}); replaying to dead-letter it",
                    rec.topic
                )))
            }
            Err(SendError::Session(e)) => Err(e),
        }
    }

    /// A row that cannot be published: dead-letter it in the open transaction, or stop.
    fn bad_row(
        &mut self,
        reason: &'static str,
        detail: String,
        pos: &Position,
        event_id: Option<&str>,
        key: Option<Bytes>,
        value: Bytes,
    ) -> Result<()> {
        let id = event_id.unwrap_or("(unknown)");
        match &self.settings.on_error {
            OnError::Stop => {
                // Publish everything before the bad row (a split at this row), acknowledge up to
                // the end of the last whole transaction, and stop: a restart begins at this row.
                if self.txn_records > 0 {
                    let partial = self.cur.and_then(|mut c| {
                        c.index -= 1;
                        (c.index > 0).then_some(c).and_then(partial_of)
                    });
                    self.commit(partial)?;
                }
                // Stop reading; the loop ends with this error once the commit returned.
                self.stop_after = Some(Error::new(
                Kind::BadRow,
                format!(
                    "outbox row {id} at {} (xid {}) cannot be published: {reason}: {detail} (errors.on_error = \"stop\"; fix the row or the configuration, then start again: nothing past it was acknowledged)",
                    pos.lsn,
                    pos.xid
                ),
            ));
                Ok(())
            }
            OnError::DeadLetter(topic) => {
                tracing::warn!(
                    event_id = id,
                    pg_lsn = %pos.lsn,
                    reason,
                    "dead-lettering outbox row: {detail}"
                );
                let mut headers = vec![
                    ("dlq_reason".into(), Bytes::from_static(reason.as_bytes())),
                    ("dlq_detail".into(), Bytes::from(detail)),
                    ("pg_lsn".into(), Bytes::from(pos.lsn.to_string())),
                    ("pg_xid".into(), Bytes::from(pos.xid.to_string())),
                ];
                if let Some(id) = event_id {
                    headers.push(("event_id".into(), Bytes::from(id.to_string())));
                }
                // A record the broker refuses for its size cannot be dead-lettered whole either:
                // keep its headers and say how big it was.
                let value = if reason == "record_too_large" {
                    headers.push((
                        "dlq_original_bytes".into(),
                        Bytes::from(value.len().to_string()),
                    ));
                    Bytes::new()
                } else {
                    value
                };
                let rec = Record {
                    topic: Arc::from(topic.as_str()),
                    key,
                    value,
                    headers,
                };
                let size = record_size(&rec);
                if size > self.max_record_bytes {
                    return Err(Error::new(
                        Kind::BadRow,
                        format!(
                            "outbox row {id} at {} could not be dead-lettered either: {size} bytes of headers",
                            pos.lsn
                        ),
                    ));
                }
                self.stats.dead_lettered();
                self.status
                    .events_dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                self.enqueue(rec, size)
            }
        }
    }

    /// Whether records can go to `topic`: it exists and we may write it. Asked once per topic (a
    /// "missing" answer is re-asked after a while), so a missing topic costs a metadata request,
    /// not a stalled transaction.
    fn check_topic(&mut self, topic: &Arc<str>) -> Result<Result<(), sink::Refusal>> {
        if let Some((verdict, at)) = self.topics.get(topic) {
            if verdict.is_ok() || at.elapsed() < TOPIC_NEGATIVE_TTL {
                return Ok(verdict.clone());
            }
        }
        let meta = &self.meta;
        let verdict = blocking(|| meta.topic_status(topic))?;
        self.topics
            .insert(topic.clone(), (verdict.clone(), Instant::now()));
        Ok(verdict)
    }

    fn opened(&mut self) {
        if self.txn_opened_at.is_none() {
            self.txn_opened_at = Some(Instant::now());
        }
    }

    /// Decides a commit of everything assembled so far, with this checkpoint: starts it now on a
    /// blocking thread, or queues it behind the running one. Reading goes on meanwhile; records
    /// from now on belong to the next Kafka transaction. Postgres is acknowledged only when the
    /// commit returned Ok ([`Pipeline::commit_done`]).
    fn commit(&mut self, partial: Option<Partial>) -> Result<()> {
        let checkpoint = Checkpoint {
            resume_lsn: self.pending_resume.max(self.resume_lsn),
            partial,
        };
        // A split Postgres transaction: what of it this commit holds counts from now.
        if let Some(cur) = self.cur {
            self.stats.pg_commit(cur.commit_ts_micros);
        }
        let stats = std::mem::take(&mut self.stats);
        let events = self.txn_records;
        self.txn_records = 0;
        self.txn_bytes = 0;
        self.txn_opened_at = None;
        if self.in_flight.is_some() || !self.backlog.is_empty() {
            self.backlog
                .push_back(Item::Commit(checkpoint, stats, events));
            return Ok(());
        }
        self.start_commit(checkpoint, stats, events)
    }

    fn start_commit(&mut self, checkpoint: Checkpoint, stats: TxnStats, events: u64) -> Result<()> {
        let Some(mut sink) = self.sink.take() else {
            return Err(Error::internal("producer missing when a commit starts"));
        };
        let cp = checkpoint.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let result = sink.commit(&cp);
            (sink, result)
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

    /// A commit returned: on Ok acknowledge its checkpoint and produce what waited in the
    /// backlog (up to the next decided commit, which then starts).
    fn commit_done(&mut self, done: Result<(Sink, Result<()>, InFlight)>) -> Result<()> {
        let (sink, result, mut flight) = done?;
        self.sink = Some(sink);
        if let Err(e) = result {
            if let Some(failure) = self.sink.as_ref().and_then(|s| s.delivery_failure()) {
                self.remember_refused_record(failure)?;
            }
            return Err(e);
        }
        let resume = flight.checkpoint.resume_lsn;
        self.resume_lsn = resume;
        self.stream.ack(resume);
        self.last_commit_at = Instant::now();
        self.status.committed(&mut flight.stats, resume.as_u64());
        tracing::debug!(
            events = flight.events,
            commit_ms = flight.started.elapsed().as_millis() as u64,
            resume_lsn = %resume,
            partial = ?flight.checkpoint.partial,
            "committed"
        );
        while let Some(item) = self.backlog.pop_front() {
            match item {
                Item::Record(rec) => {
                    self.backlog_bytes = self.backlog_bytes.saturating_sub(record_size(&rec));
                    self.produce(&rec)?;
                }
                Item::Commit(checkpoint, stats, events) => {
                    return self.start_commit(checkpoint, stats, events);
                }
            }
        }
        self.backlog_bytes = 0;
        // What grew while the commit ran may be due already.
        if self.commit_due_at_boundary() {
            self.commit(None)?;
        }
        Ok(())
    }

    /// At a Postgres commit boundary, with no commit running: whether the open Kafka transaction
    /// is full or old enough to cut now.
    fn commit_due_at_boundary(&self) -> bool {
        self.cur.is_none()
            && self.in_flight.is_none()
            && self.stop_after.is_none()
            && self.txn_records > 0
            && (self.txn_records >= self.batch.max_events
                || self.txn_bytes >= self.batch.max_bytes
                || self
                    .txn_opened_at
                    .is_some_and(|t| t.elapsed() >= self.batch.max_delay))
    }
}

/// Waits for the running commit (cancel-safe: the handle stays in place until it completed).
async fn wait_in_flight(in_flight: &mut Option<InFlight>) -> Result<(Sink, Result<()>, InFlight)> {
    let Some(flight) = in_flight.as_mut() else {
        return std::future::pending().await;
    };
    let joined = (&mut flight.handle).await;
    let flight = in_flight
        .take()
        .ok_or_else(|| Error::internal("commit vanished"))?;
    match joined {
        Ok((sink, result)) => Ok((sink, result, flight)),
        Err(e) => Err(Error::internal("the Kafka commit thread panicked").with_source(e)),
    }
}

impl Pipeline<'_> {
    /// A record the producer refused: remember it for the replay.
    fn poison(
        &mut self,
        event_id: Option<String>,
        reason: &'static str,
        detail: String,
    ) -> Result<()> {
        let Some(event_id) = event_id else {
            return Err(Error::new(
                Kind::BadRow,
                format!("kafka: a record without an event id was refused: {detail}"),
            ));
        };
        if self.poisoned.ids.contains_key(&event_id) {
            return Err(Error::new(
                Kind::BadRow,
                format!("outbox row {event_id}: its dead-letter record was refused too ({detail})"),
            ));
        }
        self.poisoned.ids.insert(event_id, (reason, detail));
        Ok(())
    }

    /// After a failed commit: if the broker refused one record for a reason that retrying cannot
    /// fix, remember its event id so the replay dead-letters it. A record refused again after that
    /// (its dead-letter record too) stops the relay.
    fn remember_refused_record(&mut self, failure: sink::DeliveryFailure) -> Result<()> {
        let Some(reason) = sink::permanent_reason(failure.code) else {
            return Ok(());
        };
        let Some(event_id) = failure.event_id.clone() else {
            return Ok(());
        };
        if self.poisoned.ids.contains_key(&event_id) {
            return Err(Error::new(
                Kind::BadRow,
                format!(
                    "outbox row {event_id}: the broker refused its dead-letter record too ({}: {}); fix the topic or the row, then start again",
                    failure.topic, failure.error
                ),
            ));
        }
        tracing::warn!(
            event_id = %event_id,
            topic = %failure.topic,
            reason,
            "the broker refused a record ({}); replaying the transaction to dead-letter it",
            failure.error
        );
        self.poisoned.ids.insert(
            event_id,
            (
                reason,
                format!("topic {}: {}", failure.topic, failure.error),
            ),
        );
        Ok(())
    }
}

/// The partial checkpoint for a transaction interrupted after its `index`-th change.
fn partial_of(cur: CurTxn) -> Option<Partial> {
    if cur.skip_through == u64::MAX {
        // Already published whole: its commit is before resume_lsn, a replay skips it.
        return None;
    }
    Some(Partial {
        final_lsn: cur.final_lsn,
        xid: cur.xid,
        next_index: cur.index.max(cur.skip_through),
    })
}

/// The record's `event_id` header (routed and dead-letter records both carry one when known).
fn event_id_of(rec: &Record) -> Option<String> {
    rec.headers
        .iter()
        .find(|(k, _)| k == "event_id")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn record_size(rec: &Record) -> u64 {
    let headers: usize = rec.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (rec.value.len() + rec.key.as_ref().map_or(0, |k| k.len()) + headers) as u64
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl RelaySettings {
    /// Resolves the relay's settings from a validated configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let (table_schema, table_name) = cfg.table();
        let c = &cfg.outbox.columns;
        let mut required = vec![
            ("outbox.columns.id".to_string(), c.id.clone()),
            (
                "outbox.columns.aggregate_type".to_string(),
                c.aggregate_type.clone(),
            ),
            (
                "outbox.columns.aggregate_id".to_string(),
                c.aggregate_id.clone(),
            ),
            (
                "outbox.columns.event_type".to_string(),
                c.event_type.clone(),
            ),
            ("outbox.columns.payload".to_string(), c.payload.clone()),
        ];
        if let Some(h) = c.headers() {
            required.push(("outbox.columns.headers".to_string(), h.to_string()));
        }
        if let Some(h) = c.created_at() {
            required.push(("outbox.columns.created_at".to_string(), h.to_string()));
        }
        let columns = ColumnMap {
            id: c.id.clone(),
            aggregate_type: c.aggregate_type.clone(),
            aggregate_id: c.aggregate_id.clone(),
            event_type: c.event_type.clone(),
            payload: c.payload.clone(),
            headers: c.headers().map(str::to_string),
            created_at: c.created_at().map(str::to_string),
        };
        let pg = &cfg.postgres;
        RelaySettings {
            source: SourceSettings {
                host: pg.host.clone(),
                port: pg.port,
                dbname: pg.dbname.clone(),
                user: pg.user.clone(),
                password: pg.password.expose().to_string(),
                sslmode: pg.sslmode.as_str().to_string(),
                sslrootcert: pg.sslrootcert.clone(),
                slot: pg.slot.clone(),
                publication: pg.publication.clone(),
                create_slot: pg.create_slot,
                table_schema,
                table_name,
                required_columns: required,
                status_interval: pg.status_interval(),
                connect_timeout: pg.connect_timeout(),
            },
            sink: SinkSettings {
                client_props: cfg.kafka.rdkafka_client_properties(),
                transactional_id: cfg.transactional_id(),
                transaction_timeout: cfg.kafka.transaction_timeout(),
                checkpoint_topic: cfg.kafka.checkpoint_topic.clone(),
                checkpoint_key: String::new(),
                create_checkpoint_topic: cfg.kafka.create_checkpoint_topic,
                call_timeout: Duration::from_secs(30).min(cfg.kafka.transaction_timeout()),
            },
            router: RouterSettings {
                topic_template: cfg.routing.topic_template.clone(),
                topics: cfg
                    .routing
                    .topics
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                strict: cfg.routing.strict,
            },
            columns,
            batch: BatchSettings {
                max_events: cfg.batch.max_events as u64,
                max_bytes: cfg.batch.max_bytes as u64,
                max_delay: cfg.batch.max_delay(),
                split_events: cfg.batch.split_events as u64,
                idle_checkpoint: cfg.batch.idle_checkpoint(),
            },
            on_error: match cfg.errors.on_error {
                crate::config::OnError::DeadLetter => {
                    OnError::DeadLetter(cfg.errors.dead_letter_topic.clone())
                }
                crate::config::OnError::Stop => OnError::Stop,
            },
            retry: RetrySettings {
                initial_backoff: cfg.retry.initial_backoff(),
                max_backoff: cfg.retry.max_backoff(),
                max_elapsed: cfg.retry.max_elapsed(),
            },
        }
    }
}

/// `validate --connect`: every check the relay makes at start-up that changes nothing, and the
/// slot's state. Creates nothing (a missing slot is reported, not created).
pub async fn check_servers(settings: &RelaySettings) -> Result<Vec<String>> {
    let src = &settings.source;
    let mut report = Vec::new();
    let control = Control::connect(src).await?;
    control.check_server().await?;
    report.push(format!(
        "postgres {}: wal_level logical, publication {:?} covers {}.{}, columns present",
        src.address(),
        src.publication,
        src.table_schema,
        src.table_name
    ));
    match control.slot().await? {
        Some(slot) => report.push(format!(
            "postgres: slot {:?} exists (confirmed_flush_lsn {}, wal_status {}, active {})",
            src.slot,
            slot.confirmed_flush_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            slot.wal_status.as_deref().unwrap_or("-"),
            slot.active
        )),
        None if src.create_slot => report.push(format!(
            "postgres: slot {:?} does not exist yet; the relay will create it",
            src.slot
        )),
        None => {
            return Err(Error::config(format!(
            "postgres {}: replication slot {:?} does not exist and postgres.create_slot = false",
            src.address(),
            src.slot
        )))
        }
    }
    let sink = settings.sink.clone();
    let exists = blocking(|| sink::topic_exists(&sink, &sink.checkpoint_topic))?;
    if exists {
        report.push(format!(
            "kafka: checkpoint topic {:?} exists",
            sink.checkpoint_topic
        ));
    } else if sink.create_checkpoint_topic {
        report.push(format!(
            "kafka: checkpoint topic {:?} does not exist yet; the relay will create it",
            sink.checkpoint_topic
        ));
    } else {
        return Err(Error::config(format!(
            "kafka: checkpoint topic {:?} does not exist and kafka.create_checkpoint_topic = false",
            sink.checkpoint_topic
        )));
    }
    if let OnError::DeadLetter(topic) = &settings.on_error {
        let exists = blocking(|| sink::topic_exists(&sink, topic))?;
        if !exists {
            report.push(format!(
                "kafka: warning: dead-letter topic {topic:?} does not exist (errors.dead_letter_topic)"
            ));
        }
    }
    Ok(report)
}
