//! The initial snapshot (`outbox.snapshot`): the rows already in the table when the relay
//! created its slot, published exactly once before streaming starts.
//!
//! ```text
//!  slot created with an exported snapshot S at consistent point C (session.rs)
//!      │ checkpoint {resume C, snapshot: running S, after: -, rows: 0}
//!      ▼
//!  cursor over the table ordered by (order column, id), after the last published row
//!      │ rows S holds (by xmin) ──> decode ──> Publisher ──> Committer
//!      │ every max_events / max_bytes: commit with {resume C, snapshot: running S, after, rows}
//!      ▼
//!  last commit {resume C, snapshot: none} ──> stream from C (the slot never moved past it)
//! ```
//!
//! Each Kafka transaction carries the snapshot's progress in its checkpoint, so a kill at any
//! point resumes after the last committed row, with a new cursor and the same membership test
//! ([`PgSnapshot::holds`]): exactly once. Rows the snapshot holds go out in the order column's
//! order (ties by id); rows committed after C come through the slot, after them, in commit order.
//! While the snapshot runs the replication connection holds the slot (a standby waits) and its
//! events are read and dropped; nothing is acknowledged past C, so the stream is opened again
//! from C afterwards.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::publish::{Published, Publisher};
use super::settings::RelaySettings;
use crate::decode::OutboxDecoder;
use crate::error::{Error, Result};
use crate::route::{Position, RouterSettings};
use crate::shutdown::Shutdown;
use crate::sink::{Checkpoint, Committer, Outcome, SnapshotProgress, SnapshotState};
use crate::source::snapshot::PgSnapshot;
use crate::source::{Control, SourceSettings, Stream};
use crate::telemetry::Status;

/// Rows fetched from the cursor at a time.
const FETCH: usize = 1_000;

/// How the snapshot phase ended.
#[derive(Debug)]
pub enum Finished {
    /// Every row of the snapshot is published: stream from the checkpoint.
    Done(Checkpoint),
    /// Shutdown: what was read is committed; the next start resumes the snapshot.
    Drained,
}

/// Publishes the rest of the snapshot `checkpoint` describes. `stream` holds the slot meanwhile
/// and is closed (its events dropped, nothing acknowledged past the checkpoint).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: &RelaySettings,
    src: &SourceSettings,
    stream: Stream,
    committer: &mut Committer,
    checkpoint: Checkpoint,
    router: RouterSettings,
    status: &Arc<Status>,
    shutdown: &Shutdown,
) -> Result<Finished> {
    let Some(SnapshotState::Running(progress)) = checkpoint.snapshot.clone() else {
        return Err(Error::internal(
            "the snapshot phase ran without a running snapshot",
        ));
    };
    let holder = hold_slot(stream, src.clone());
    let result = publish(
        settings,
        src,
        committer,
        &checkpoint,
        progress,
        router,
        status,
        shutdown,
    )
    .await;
    if let Some(stream) = holder.release().await {
        stream.close().await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    settings: &RelaySettings,
    src: &SourceSettings,
    committer: &mut Committer,
    checkpoint: &Checkpoint,
    progress: SnapshotProgress,
    router: RouterSettings,
    status: &Arc<Status>,
    shutdown: &Shutdown,
) -> Result<Finished> {
    let snap: PgSnapshot = progress.snapshot.parse().map_err(|e: String| {
        Error::invariant(format!("the checkpoint's snapshot is unreadable: {e}"))
    })?;
    let order_by = settings
        .snapshot_order
        .as_deref()
        .ok_or_else(|| Error::config("outbox.snapshot_order_by: no column orders the snapshot"))?;
    let reader = Control::connect_to(src).await?;
    let shape = reader.snapshot_shape(order_by, &settings.columns).await?;
    let next = reader
        .open_snapshot(&shape, progress.after.as_ref())
        .await?;
    let mut decoder =
        OutboxDecoder::new(&src.table_schema, &src.table_name, settings.columns.clone());
    decoder.relation(shape.relation());
    let mut publisher = Publisher::new(settings, router, status);
    let batch = settings.batch;
    let mut after = progress.after.clone();
    let mut rows = progress.rows;
    let started = now_pg_micros();
    tracing::info!(
        rows_published = rows,
        after = ?after,
        consistent_point = %checkpoint.resume_lsn,
        "initial snapshot: publishing the rows already in the table"
    );
    let running = |after: &Option<(String, String)>, rows: u64| Checkpoint {
        snapshot: Some(SnapshotState::Running(SnapshotProgress {
            snapshot: progress.snapshot.clone(),
            after: after.clone(),
            rows,
        })),
        ..checkpoint.clone()
    };
    loop {
        if shutdown.is_requested() {
            if !committer.fill().is_empty() {
                committer.decide(running(&after, rows), publisher.take_stats())?;
            }
            settle(committer, status).await?;
            tracing::info!(
                rows_published = rows,
                "initial snapshot paused by shutdown: the next start resumes it"
            );
            return Ok(Finished::Drained);
        }
        status.tick();
        let fetched = reader.fetch_snapshot(FETCH).await?;
        if fetched.is_empty() {
            break;
        }
        for r in fetched {
            if !snap.holds(r.xmin, next) {
                // Committed after the slot's consistent point: the stream publishes it.
                continue;
            }
            let pos = Position {
                lsn: checkpoint.resume_lsn,
                xid: r.xmin,
                commit_ts_micros: started,
            };
            let row = decoder.insert(0, r.tuple);
            match publisher.row(committer, row, &pos)? {
                Published::Queued => {
                    after = Some((r.order, r.id));
                    rows += 1;
                }
                Published::Stop(e) => {
                    // Publish what came before it, then stop: a restart begins at this row.
                    if !committer.fill().is_empty() {
                        committer.decide(running(&after, rows), publisher.take_stats())?;
                    }
                    settle(committer, status).await?;
                    return Err(e);
                }
            }
            let fill = committer.fill();
            if fill.events >= batch.max_events || fill.bytes >= batch.max_bytes {
                committer.decide(running(&after, rows), publisher.take_stats())?;
                settle(committer, status).await?;
            }
        }
    }
    reader.close_snapshot().await?;
    // The last commit clears the snapshot state: from now on the checkpoint is the stream's.
    let done = Checkpoint {
        snapshot: None,
        ..checkpoint.clone()
    };
    committer.decide(done.clone(), publisher.take_stats())?;
    settle(committer, status).await?;
    tracing::info!(
        rows_published = rows,
        "initial snapshot done: streaming from the slot"
    );
    Ok(Finished::Done(done))
}

/// Waits for every decided commit.
async fn settle(committer: &mut Committer, status: &Arc<Status>) -> Result<()> {
    while committer.committing() {
        match committer.finished().await? {
            Outcome::Committed(mut c) => {
                status.committed(&mut c.stats, c.checkpoint.resume_lsn.as_u64());
            }
            Outcome::Refused { event_id, refusal } => {
                return Err(Error::transient(format!(
                    "kafka: the broker refused the record of outbox row {event_id} ({refusal}); replaying to dead-letter it"
                )))
            }
        }
    }
    Ok(())
}

/// The replication stream, kept open (holding the slot) by a task that reads and drops its
/// events until released.
struct SlotHolder {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<Stream>>,
}

fn hold_slot(mut stream: Stream, src: SourceSettings) -> SlotHolder {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return Some(stream),
                ev = stream.recv(&src) => {
                    if let Err(e) = ev {
                        tracing::warn!("replication stream ended during the initial snapshot ({}); it is opened again afterwards", e.report());
                        return None;
                    }
                }
            }
        }
    });
    SlotHolder { stop, task }
}

impl SlotHolder {
    async fn release(self) -> Option<Stream> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

/// Now, in microseconds since 2000-01-01 (Postgres' epoch): the `pg_commit_ts` of snapshot rows,
/// whose commit time is not known.
fn now_pg_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - 946_684_800 * 1_000_000
}
