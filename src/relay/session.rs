//! A session: one replication connection and one producer, started in the order exactly-once
//! depends on (docs/ARCHITECTURE.md, "Start-up"), then handed to the loop.
//!
//! ```text
//!  0. preflight (SQL): wal_level, the table, the publication, the mapped columns, the slot
//!  1. the relay's advisory lock for the slot (a standby waits here, disturbing nobody); then a
//!     missing slot: a checkpoint in Kafka means it was lost (stop, 70); none: create it
//!  2. acquire the slot: START_REPLICATION; or, to catch up a backlog (`[catchup]`), a
//!     temporary copy of it read through the SQL interface, made after step 5
//!  3. init_transactions: fences any zombie with our transactional.id
//!  4. read the checkpoint to the end, read_committed: nobody else can write it now
//!  5. check confirmed_flush_lsn <= resume_lsn, else someone moved the slot (stop, 70); on a
//!     newer timeline than the checkpoint's, check resume_lsn <= the fork point (else stop, 70)
//!  6. acknowledge resume_lsn, ready; the loop skips client-side what the checkpoint covers
//! ```
//!
//! A start that fails after creating the slot drops it again, so a first start that cannot go
//! on (Kafka unreachable, a wrong password) leaves nothing behind that holds WAL.
//! [`preflight`] is also what `validate --connect` runs: the checks that change nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::pipeline::Pipeline;
use super::settings::{LiveSettings, OnError, RelaySettings};
use super::snapshot;
use super::tracker::Tracker;
use crate::config::CatchupMode;
use crate::error::Kind;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::shutdown::Shutdown;
use crate::sink::{
    self, checkpoint, Checkpoint, CheckpointKey, Committer, MetadataClient, Producer, Refusals,
    SinkSettings, SnapshotProgress, SnapshotState, TopicChecker,
};
use crate::source::catchup::{self, AtEnd, CatchUp};
use crate::source::stream::{Gated, OpenOptions};
use crate::source::{Control, Reader, SlotInfo, SourceSettings, Stream};
use crate::telemetry::Status;

/// How a session ended.
#[derive(Debug)]
pub struct SessionEnd {
    /// `Ok` after a drain (shutdown), else why it ended.
    pub result: Result<()>,
    /// The session got as far as streaming (the supervisor resets its backoff).
    pub streamed: bool,
    /// The refused-record memory, for the next session.
    pub refusals: Refusals,
}

/// Runs one session: start-up, then the loop until shutdown or an error. `bound` limits each
/// blocking Kafka call (the supervisor's remaining retry budget).
pub async fn run(
    settings: &RelaySettings,
    shutdown: &Shutdown,
    status: &Arc<Status>,
    refusals: Refusals,
    live: &mut watch::Receiver<LiveSettings>,
    bound: Duration,
) -> SessionEnd {
    let sink = settings.sink.bounded(bound);
    let mut phases = Phases::new();
    let started = match start(settings, &sink, status, bound, &mut phases).await {
        Ok(s) => s,
        Err(e) => {
            return SessionEnd {
                result: Err(e),
                streamed: false,
                refusals,
            }
        }
    };
    let Started {
        control,
        stream,
        reopen,
        timeline,
        producer,
        mut checkpoint,
    } = started;
    let meta = match tokio::task::block_in_place(|| MetadataClient::new(&sink)) {
        Ok(m) => m,
        Err(e) => {
            stream.close().await;
            return SessionEnd {
                result: Err(e),
                streamed: true,
                refusals,
            };
        }
    };
    phases.mark("metadata_client");
    let mut committer = Committer::new(
        producer,
        TopicChecker::new(meta),
        refusals,
        sink.max_record_bytes(),
    );
    status.set_ready(true);
    status.metrics.catching_up(stream.catching_up());
    tracing::info!(
        start_ms = phases.total().as_millis() as u64,
        phases = %phases,
        "start-up done: {}",
        if stream.catching_up() { "catching up" } else { "streaming" }
    );
    if checkpoint.snapshot.is_some() {
        // The snapshot runs while a stream holds the slot (its events are read and dropped).
        let stream = match stream {
            Reader::Stream(s) => s,
            Reader::CatchUp(c) => {
                c.close().await;
                match Stream::open(control.settings(), reopen).await {
                    Ok(s) => s,
                    Err(e) => {
                        return SessionEnd {
                            result: Err(e),
                            streamed: true,
                            refusals: committer.into_refusals(),
                        }
                    }
                }
            }
        };
        // The initial snapshot first; then the stream again from the slot's creation point.
        let router = live.borrow().router.clone();
        let src = control.settings().clone();
        let snapshotting = snapshot::run(
            settings,
            &src,
            stream,
            &mut committer,
            checkpoint,
            router,
            status,
            shutdown,
        );
        // The snapshot reads on a connection of its own; the one holding the relay's lock must
        // not sit idle past its idle_session_timeout meanwhile.
        let outcome = tokio::select! {
            outcome = snapshotting => outcome,
            () = control.keep_alive() => unreachable_outcome(),
        };
        let reopened = match outcome {
            Ok(snapshot::Finished::Done(cp)) => Stream::open(&src, OpenOptions::default())
                .await
                .map(|s| (s, cp)),
            Ok(snapshot::Finished::Drained) => {
                return SessionEnd {
                    result: Ok(()),
                    streamed: true,
                    refusals: committer.into_refusals(),
                }
            }
            Err(e) => Err(e),
        };
        match reopened {
            Ok((mut s, cp)) => {
                s.ack(cp.resume_lsn);
                checkpoint = cp;
                run_pipeline(
                    settings,
                    control,
                    Reader::Stream(s),
                    reopen,
                    timeline,
                    committer,
                    checkpoint,
                    shutdown,
                    status,
                    live,
                )
                .await
            }
            Err(e) => {
                if committer.abort() {
                    status.metrics.aborted();
                }
                SessionEnd {
                    result: Err(e),
                    streamed: true,
                    refusals: committer.into_refusals(),
                }
            }
        }
    } else {
        run_pipeline(
            settings, control, stream, reopen, timeline, committer, checkpoint, shutdown, status,
            live,
        )
        .await
    }
}

/// [`Control::keep_alive`] never returns.
fn unreachable_outcome() -> Result<snapshot::Finished> {
    Err(Error::internal("the lock connection's keep-alive ended"))
}

/// Hands a started session to the loop and runs it to its end.
#[allow(clippy::too_many_arguments)]
async fn run_pipeline(
    settings: &RelaySettings,
    control: Control,
    stream: Reader,
    reopen: OpenOptions,
    timeline: u32,
    committer: Committer,
    checkpoint: Checkpoint,
    shutdown: &Shutdown,
    status: &Arc<Status>,
    live: &mut watch::Receiver<LiveSettings>,
) -> SessionEnd {
    let tracker = Tracker::new(checkpoint.resume_lsn, checkpoint.partial).on_timeline(timeline);
    let current = live.borrow_and_update().clone();
    let mut pipe = Pipeline::new(
        settings, control, stream, reopen, tracker, committer, current, live, status,
    );
    let result = pipe.run(shutdown).await;
    let (result, refusals) = pipe.finish(result).await;
    SessionEnd {
        result,
        streamed: true,
        refusals,
    }
}

/// What start-up hands to the loop.
struct Started {
    control: Control,
    stream: Reader,
    /// How to open the stream later (after a catch-up).
    reopen: OpenOptions,
    /// The server's timeline.
    timeline: u32,
    producer: Producer,
    checkpoint: Checkpoint,
}

/// Steps 0-6 of the module documentation.
async fn start(
    settings: &RelaySettings,
    sink: &SinkSettings,
    status: &Arc<Status>,
    bound: Duration,
    phases: &mut Phases,
) -> Result<Started> {
    let src = &settings.source;
    // (0) Checks that need no slot first, so a misconfiguration is reported before standing by.
    let control = Control::connect(src).await?;
    phases.mark("sql_connect");
    control.check_server().await?;
    let system_id = control.system_identifier().await?;
    phases.mark("sql_checks");
    let key = CheckpointKey::new(&system_id, &src.dbname, &src.slot);
    let kafka_wait = bound.min(Duration::from_secs(30));
    {
        let sink = sink.clone();
        tokio::task::block_in_place(|| sink::topics::ensure_checkpoint_topic(&sink, kafka_wait))?;
    }
    phases.mark("checkpoint_topic");
    // A relay holds this lock for as long as it runs on the slot (streaming or catching up):
    // a standby waits here, before it touches the slot.
    if !control.hold_slot().await? {
        return Err(Error::new(
            Kind::Standby,
            format!(
                "postgres {}: slot {:?} is held by another relay (its advisory lock): standing by",
                src.address(),
                src.slot
            ),
        ));
    }
    phases.mark("relay_lock");

    // (1) A missing slot: lost if a checkpoint says events were published from it.
    let mut enable_failover = false;
    let mut slot = control.slot().await?;
    phases.mark("slot_query");
    if let (Some(info), true) = (&slot, settings.snapshot) {
        // A slot made by a start that was killed before its snapshot was written down: nothing
        // was published from it, and its snapshot is gone. Make it again.
        let peek = read_checkpoint(sink, &key, kafka_wait)?;
        if peek.is_some_and(|cp| cp.snapshot == Some(SnapshotState::Pending)) && !info.active {
            tracing::warn!(slot = %src.slot, "the slot was created by a start that did not finish its snapshot: dropping it and starting over");
            control.drop_slot().await;
            slot = None;
        }
    }
    let mut catch_up = false;
    let created = match slot {
        Some(info) => {
            control.check_slot(&info)?;
            enable_failover = src.failover_slot && info.failover == Some(false);
            catch_up = choose_catch_up(settings, &control, &info).await?;
            false
        }
        None => {
            let peek = read_checkpoint(sink, &key, kafka_wait)?;
            if let Some(cp) = peek
                .as_ref()
                .filter(|cp| cp.snapshot != Some(SnapshotState::Pending))
            {
                return Err(lost_slot(src, sink, &key, cp));
            }
            if !src.create_slot {
                return Err(Error::config(format!(
                    "postgres {}: replication slot {:?} does not exist and postgres.create_slot = false (create it: SELECT pg_create_logical_replication_slot('{}', 'pgoutput'))",
                    src.address(),
                    src.slot,
                    src.slot
                )));
            }
            if settings.snapshot {
                let (stream, producer, checkpoint) =
                    create_with_snapshot(sink, &control, &key, kafka_wait).await?;
                return Ok(Started {
                    control,
                    timeline: stream.timeline,
                    stream: Reader::Stream(stream),
                    reopen: OpenOptions::default(),
                    producer,
                    checkpoint,
                });
            }
            let created = control.create_slot().await?;
            // `always` reads even a new slot through the SQL interface (the tests of that path
            // start from a new slot too).
            if settings.catchup.mode == CatchupMode::Always {
                if let Some(info) = control.slot().await? {
                    catch_up = choose_catch_up(settings, &control, &info).await?;
                }
            }
            created
        }
    };
    let opts = OpenOptions { enable_failover };
    let how = catch_up.then(|| catchup::Options {
        chunk_changes: settings.catchup.chunk_changes,
        at_end: match settings.catchup.mode {
            CatchupMode::Always => AtEnd::Poll(Duration::from_millis(settings.catchup.poll_ms)),
            _ => AtEnd::Stream,
        },
    });
    phases.mark("catchup_check");
    match acquire(sink, &control, &key, status, kafka_wait, opts, how, phases).await {
        Ok((stream, timeline, producer, checkpoint)) => Ok(Started {
            control,
            stream,
            reopen: opts,
            timeline,
            producer,
            checkpoint,
        }),
        Err(e) => {
            if created {
                control.drop_slot().await;
            }
            Err(e)
        }
    }
}

/// Creates the slot with an exported snapshot (`outbox.snapshot`), writing down first that a
/// creation is under way and then the snapshot itself, each in a Kafka transaction, so a kill at
/// any point is recognised at the next start.
async fn create_with_snapshot(
    sink: &SinkSettings,
    control: &Control,
    key: &CheckpointKey,
    kafka_wait: Duration,
) -> Result<(Stream, Producer, Checkpoint)> {
    let src = control.settings();
    let mut producer = {
        let sink = sink.clone();
        let key = key.clone();
        tokio::task::block_in_place(|| Producer::connect(sink, key, kafka_wait))?
    };
    commit_checkpoint(
        &mut producer,
        &Checkpoint {
            snapshot: Some(SnapshotState::Pending),
            ..Checkpoint::default()
        },
    )?;
    let mut gated = Gated::connect(src).await?;
    let (consistent, name) = gated
        .create_slot_exporting(control.version(), src.failover_slot)
        .await?;
    let made = async {
        // The exported snapshot is importable until the replication connection's next command.
        let snapshot = control.import_snapshot(&name).await?;
        let checkpoint = Checkpoint {
            resume_lsn: consistent,
            partial: None,
            timeline: Some(gated.timeline()),
            snapshot: Some(SnapshotState::Running(SnapshotProgress {
                snapshot,
                after: None,
                rows: 0,
            })),
        };
        commit_checkpoint(&mut producer, &checkpoint)?;
        let mut stream = gated.start(OpenOptions::default()).await?;
        stream.ack(consistent);
        Ok::<_, Error>((stream, checkpoint))
    }
    .await;
    match made {
        Ok((stream, checkpoint)) => {
            tracing::info!(
                slot = %src.slot,
                consistent_point = %consistent,
                checkpoint_key = %key,
                "outbox-relay started: slot created with a snapshot, producer initialised; publishing the table's rows first"
            );
            Ok((stream, producer, checkpoint))
        }
        Err(e) => {
            control.drop_slot().await;
            Err(e)
        }
    }
}

/// A checkpoint-only Kafka transaction.
fn commit_checkpoint(producer: &mut Producer, cp: &Checkpoint) -> Result<()> {
    tokio::task::block_in_place(|| producer.commit(cp)).map_err(|e| match e {
        crate::sink::producer::CommitError::Session(e) => e,
        crate::sink::producer::CommitError::Refused { error, .. } => error,
    })
}

/// Whether this session reads the backlog through the SQL interface (`catchup.mode`; in `auto`,
/// when the slot is `catchup.min_lag_mb` or more behind the server).
async fn choose_catch_up(
    settings: &RelaySettings,
    control: &Control,
    slot: &SlotInfo,
) -> Result<bool> {
    let cfg = &settings.catchup;
    if cfg.mode == CatchupMode::Off || slot.active {
        // A walsender streams without the relay's lock (a relay of an earlier version):
        // START_REPLICATION stands by.
        return Ok(false);
    }
    // A failover slot with synchronized_standby_slots: the walsender (and a SQL read of the slot
    // itself) waits for the standbys before it hands a change over; a temporary copy cannot be a
    // failover slot and would not wait, so a change could be published that the standby lacks.
    if slot.failover == Some(true) {
        let failover = control.failover(Some(slot)).await?;
        if !failover.synchronized_standby_slots.is_empty() {
            if cfg.mode == CatchupMode::Always {
                tracing::warn!(slot = %settings.source.slot, "catchup.mode = \"always\" is not used for a failover slot with synchronized_standby_slots set: a catch-up read would not wait for the standbys; streaming");
            }
            return Ok(false);
        }
    }
    if cfg.mode == CatchupMode::Always {
        return Ok(true);
    }
    let Some(confirmed) = slot.confirmed_flush_lsn else {
        return Ok(false);
    };
    let current = control.current_wal_lsn().await?;
    let lag = current.as_u64().saturating_sub(confirmed.as_u64());
    let want = lag >= cfg.min_lag_mb.saturating_mul(1 << 20);
    if want {
        tracing::info!(
            lag_mb = lag >> 20,
            min_lag_mb = cfg.min_lag_mb,
            "the slot is far behind: catching up through the SQL interface before streaming"
        );
    }
    Ok(want)
}

/// Steps 2-6. With `catch_up`, the backlog is read through the SQL interface from a temporary
/// copy of the slot, made once the checkpoint was read (the identity comes from a replication
/// connection that does not start streaming).
#[allow(clippy::too_many_arguments)]
async fn acquire(
    sink: &SinkSettings,
    control: &Control,
    key: &CheckpointKey,
    status: &Arc<Status>,
    kafka_wait: Duration,
    opts: OpenOptions,
    catch_up: Option<catchup::Options>,
    phases: &mut Phases,
) -> Result<(Reader, u32, Producer, Checkpoint)> {
    // The primary the SQL connection found (a host list names several servers).
    let src = control.settings();
    // (2) Acquire the slot (a catch-up holds it through the relay's lock, taken already).
    let (mut stream, timeline, history) = match catch_up {
        None => {
            let stream = Stream::open(src, opts).await?;
            let (t, h) = (stream.timeline, stream.history.clone());
            (Some(stream), t, h)
        }
        Some(_) => {
            let id = crate::source::stream::identify(src).await?;
            (None, id.timeline, id.history)
        }
    };
    phases.mark("replication_connect");
    status.tick();
    let result = async {
        // (3) Fence zombies, (4) read the checkpoint.
        let producer = {
            let sink = sink.clone();
            let key = key.clone();
            tokio::task::block_in_place(|| Producer::connect(sink, key, kafka_wait))?
        };
        phases.mark("init_transactions");
        let checkpoint = read_checkpoint(sink, key, kafka_wait)?;
        phases.mark("checkpoint_read");
        // (5) The slot never moves past what Kafka holds, unless someone else moved it.
        let slot = control.slot().await?.ok_or_else(|| {
            Error::invariant(format!(
                "postgres {}: slot {:?} disappeared while the relay held it",
                src.address(),
                src.slot
            ))
        })?;
        let checkpoint = resume_point(src, sink, key, &slot, checkpoint)?;
        check_timeline(src, sink, key, timeline, &history, &checkpoint)?;
        phases.mark("slot_check");
        Ok::<_, Error>((producer, checkpoint))
    }
    .await;
    let (producer, checkpoint) = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(stream) = stream {
                stream.close().await;
            }
            return Err(e);
        }
    };
    let mut reader = match (stream.take(), catch_up) {
        (Some(stream), _) => Reader::Stream(stream),
        (None, Some(how)) => match CatchUp::open(control, how).await {
            Ok(c) => Reader::CatchUp(Box::new(c)),
            // E.g. no free replication slot for the copy (max_replication_slots): streaming
            // publishes the same events, only slower.
            Err(e) => {
                tracing::warn!(error = %e.report(), "cannot catch up through the SQL interface: streaming instead");
                Reader::Stream(Stream::open(src, opts).await?)
            }
        },
        (None, None) => return Err(Error::internal("no reader")),
    };
    phases.mark("reader_open");
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        slot = %src.slot,
        transactional_id = %sink.transactional_id,
        resume_lsn = %checkpoint.resume_lsn,
        partial = ?checkpoint.partial,
        timeline,
        postgres = %src.address(),
        checkpoint_key = %key,
        catching_up = reader.catching_up(),
        "outbox-relay started: slot acquired, producer initialised, checkpoint read"
    );
    // (6) Acknowledge what Kafka holds; the loop starts from here.
    reader.ack(checkpoint.resume_lsn);
    Ok((reader, timeline, producer, checkpoint))
}

/// How long each start-up phase took, logged once streaming begins (spawn to streaming is paid
/// by every start, restart and takeover).
struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            done: Vec::with_capacity(10),
        }
    }

    /// The phase `name` ended now.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    fn total(&self) -> Duration {
        self.last - self.started
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.done.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={}ms", took.as_millis())?;
        }
        Ok(())
    }
}

fn read_checkpoint(
    sink: &SinkSettings,
    key: &CheckpointKey,
    within: Duration,
) -> Result<Option<Checkpoint>> {
    tokio::task::block_in_place(|| {
        checkpoint::read(&sink.client, &sink.checkpoint_topic, key, within)
    })
}

/// Step 5: where to resume, checking that the slot never passed the checkpoint.
pub(crate) fn resume_point(
    src: &SourceSettings,
    sink: &SinkSettings,
    key: &CheckpointKey,
    slot: &SlotInfo,
    checkpoint: Option<Checkpoint>,
) -> Result<Checkpoint> {
    let confirmed = slot.confirmed_flush_lsn.unwrap_or_default();
    match checkpoint {
        Some(cp) => {
            if confirmed > cp.resume_lsn {
                return Err(Error::invariant(format!(
                    "slot {:?} has confirmed_flush_lsn {confirmed} but the checkpoint in {:?} (key {key}) says only up to {} is published: something advanced the slot behind the relay's back, and events in between may be lost. Investigate, then either reset the checkpoint (see README) or recreate the slot",
                    src.slot, sink.checkpoint_topic, cp.resume_lsn,
                )));
            }
            Ok(cp)
        }
        None => {
            tracing::info!(
                slot = %src.slot,
                confirmed_flush_lsn = %confirmed,
                "no checkpoint yet for this slot: publishing from the slot's position"
            );
            Ok(Checkpoint {
                resume_lsn: confirmed,
                partial: None,
                timeline: None,
                snapshot: None,
            })
        }
    }
}

/// Step 5, after a failover: the checkpoint was written on an older timeline. Everything up to
/// the fork point is shared history; past it, the old timeline's transactions (published, in
/// Kafka) may be missing on this server, and new ones reuse those LSNs, so the client-side skip
/// would drop them silently. Stop instead, naming the fork.
pub(crate) fn check_timeline(
    src: &SourceSettings,
    sink: &SinkSettings,
    key: &CheckpointKey,
    now: u32,
    history: &[(u32, Lsn)],
    cp: &Checkpoint,
) -> Result<()> {
    let Some(was) = cp.timeline else {
        return Ok(());
    };
    if was == now {
        return Ok(());
    }
    if was > now {
        return Err(Error::invariant(format!(
            "postgres {}: the server is on timeline {now} but the checkpoint in {:?} (key {key}) was written on timeline {was}: this server's history is older than what the relay published (a restore from backup?). See the README runbook \"Timeline diverged\"",
            src.address(),
            sink.checkpoint_topic
        )));
    }
    let fork = history
        .iter()
        .find(|(tli, _)| *tli == was)
        .map(|(_, at)| *at);
    let Some(fork) = fork else {
        return Err(Error::invariant(format!(
            "postgres {}: the server is on timeline {now}, whose history does not include the checkpoint's timeline {was} (key {key}): not a failover of the server the relay published from. See the README runbook \"Timeline diverged\"",
            src.address()
        )));
    };
    let partial_past_fork = cp.partial.is_some_and(|p| p.final_lsn >= fork);
    if cp.resume_lsn > fork || partial_past_fork {
        return Err(Error::invariant(format!(
            "postgres {}: timeline diverged: the checkpoint (key {key}) says events up to {} were published on timeline {was}{}, but timeline {was} forked into timeline {now} at {fork}: events published past {fork} may be missing on this server (phantoms), and new transactions reuse those positions, so the relay stops instead of skipping them. Events in Kafka whose pg_lsn header is above {fork} came from the lost part of timeline {was}. Recover: see the README runbook \"Timeline diverged\" (outbox-relay reset-checkpoint --to-lsn {fork})",
            src.address(),
            cp.resume_lsn,
            cp.partial
                .map(|p| format!(" (and part of the transaction committed at {})", p.final_lsn))
                .unwrap_or_default(),
        )));
    }
    tracing::info!(
        checkpoint_timeline = was,
        timeline = now,
        fork = %fork,
        resume_lsn = %cp.resume_lsn,
        "resuming on a newer timeline after a failover: the checkpoint is before the fork point, nothing published is missing"
    );
    Ok(())
}

/// The slot is missing but a checkpoint says events were published from it: a new slot would
/// start at the server's current position and silently skip everything in between.
pub(crate) fn lost_slot(
    src: &SourceSettings,
    sink: &SinkSettings,
    key: &CheckpointKey,
    cp: &Checkpoint,
) -> Error {
    Error::invariant(format!(
        "postgres {}: replication slot {:?} does not exist, but the checkpoint in {:?} (key {key}) says events up to {} were published from it: the slot was lost (dropped, invalidated and removed, or a failover to a server that does not have it). A new slot would start at the server's current position and skip every event in between, so the relay does not create one. Recover: see the README runbook \"Lost slot\" (recreate the slot, publish what is missing with `outbox-relay backfill --missing`, then reset the checkpoint), or start fresh from here on purpose with `outbox-relay reset-checkpoint`",
        src.address(),
        src.slot,
        sink.checkpoint_topic,
        cp.resume_lsn
    ))
}

/// How long `max_slot_wal_keep_size` lasts at the server's current WAL rate (sampled over a
/// second), with a warning when retention is unbounded (a stopped relay fills the disk) or lasts
/// less than an hour (a relay down for longer loses events).
async fn wal_retention(control: &Control) -> Result<Vec<String>> {
    let keep = control.show("max_slot_wal_keep_size").await?;
    if keep.trim() == "-1" {
        return Ok(vec![
            "postgres: warning: max_slot_wal_keep_size = -1 (unbounded): while the relay is down its slot keeps WAL until the disk is full; set a bound the disk can hold (README, \"Operations\")".to_string(),
        ]);
    }
    let bytes = parse_size(&keep);
    let a = control.current_wal_lsn().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = control.current_wal_lsn().await?;
    let rate = b.bytes_since(a);
    Ok(vec![match (bytes, rate) {
        (Some(bytes), rate) if rate > 0 && bytes / rate < 3600 => format!(
            "postgres: warning: max_slot_wal_keep_size = {keep} lasts about {} s at the current WAL rate ({rate} bytes/s): a relay down for longer loses its slot (events); raise it",
            bytes / rate
        ),
        (Some(bytes), rate) if rate > 0 => format!(
            "postgres: max_slot_wal_keep_size = {keep}: about {:.1} h of WAL at the current rate ({rate} bytes/s)",
            bytes as f64 / rate as f64 / 3600.0
        ),
        _ => format!("postgres: max_slot_wal_keep_size = {keep}"),
    }])
}

/// Postgres' size text (`1024MB`, `10GB`, `512kB`, plain number = MB) in bytes.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "MB" => 1 << 20,
        "B" => 1,
        "kB" => 1 << 10,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    Some(n * mult)
}

/// `validate --connect`: every check the relay makes at start-up that changes nothing, and the
/// slot's state. Creates nothing (a missing slot is reported, not created).
pub async fn preflight(settings: &RelaySettings) -> Result<Vec<String>> {
    let src = &settings.source;
    let mut report = Vec::new();
    let control = Control::connect(src).await?;
    let src = control.settings();
    control.check_server().await?;
    if src.table_events {
        report.push(format!(
            "postgres {}: wal_level logical, publication {:?} covers {}.{}, columns present",
            src.address(),
            src.publication,
            src.table_schema,
            src.table_name
        ));
    } else {
        report.push(format!(
            "postgres {}: wal_level logical, publication {:?} exists (events come from messages only)",
            src.address(),
            src.publication
        ));
    }
    if src.message_events {
        let function = control
            .client()
            .query_opt("SELECT 1 FROM pg_proc WHERE proname = 'outbox_emit'", &[])
            .await
            .map_err(|e| control.sql_error("reading pg_proc", e))?;
        report.push(match function {
            Some(_) => format!(
                "postgres: messages with prefix {:?} are events; outbox_emit() is installed",
                settings.message_prefix
            ),
            None => format!(
                "postgres: warning: messages with prefix {:?} are events, but outbox_emit() is not installed in database {:?} (apply sql/005_emit_event.sql)",
                settings.message_prefix, src.dbname
            ),
        });
    }
    let version = control.version();
    report.push(format!(
        "postgres: server version {}.{}{}",
        version / 10_000,
        version % 10_000,
        if (140_000..190_000).contains(&version) {
            String::new()
        } else {
            " (warning: supported versions are 14 to 18)".to_string()
        }
    ));
    report.extend(wal_retention(&control).await?);
    let slot_info = control.slot().await?;
    let failover = control.failover(slot_info.as_ref()).await?;
    if failover.supported {
        if failover.ready() {
            report.push(format!(
                "postgres: failover ready (failover slot; synchronized_standby_slots {} streaming)",
                failover.standbys_streaming.join(", ")
            ));
        } else {
            for m in &failover.missing {
                report.push(format!("postgres: warning: failover not ready: {m}"));
            }
        }
    }
    match slot_info {
        Some(slot) => {
            control.check_slot(&slot)?;
            report.push(format!(
                "postgres: slot {:?} exists (confirmed_flush_lsn {}, wal_status {}, active {})",
                src.slot,
                slot.confirmed_flush_lsn
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                slot.wal_status.as_deref().unwrap_or("-"),
                slot.active
            ))
        }
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
    let sink = &settings.sink;
    let within = sink.call_timeout.min(Duration::from_secs(10));
    let meta = tokio::task::block_in_place(|| MetadataClient::new(sink))?;
    let exists = tokio::task::block_in_place(|| meta.exists(&sink.checkpoint_topic, within))?;
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
        let exists = tokio::task::block_in_place(|| meta.exists(topic, within))?;
        if !exists {
            report.push(format!(
                "kafka: warning: dead-letter topic {topic:?} does not exist (errors.dead_letter_topic): create it, unless the brokers create topics automatically"
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sizes_parse() {
        assert_eq!(parse_size("1024MB"), Some(1 << 30));
        assert_eq!(parse_size("10GB"), Some(10 << 30));
        assert_eq!(parse_size("512kB"), Some(512 << 10));
        assert_eq!(parse_size("64"), Some(64 << 20));
        assert_eq!(parse_size("-1"), None);
    }
}
