//! Catch-up: a backlog read through the SQL decoding interface instead of the walsender.
//!
//! Why: the walsender sends about one message per syscall, which caps every streaming reader
//! (pg_recvlogical, Debezium, this relay's [`Stream`](super::Stream)) at about 100k rows/s on our
//! machines, while `pg_logical_slot_get_binary_changes` decodes the same slot 2.5-3x faster and
//! hands the rows over in bulk. After an outage, the slot's retained WAL is out of danger sooner.
//!
//! How it keeps exactly-once:
//! - The relay's slot is never consumed by a read. The reader copies it into a **temporary slot**
//!   (`pg_copy_logical_replication_slot`, same position, dropped by Postgres when the connection
//!   ends, so a kill leaves nothing behind) and consumes the copy, chunk after chunk, in the
//!   background. Reading goes on while Kafka commits, as when streaming.
//! - The bytes are the same pgoutput messages, with the same positions, decoded by the same
//!   decoder, tracked by the same tracker, and published in the same Kafka transactions with the
//!   same checkpoint.
//! - The relay's slot is moved only by [`CatchUp::ack`]: `pg_replication_slot_advance` to the
//!   position Kafka committed, never beyond (a connection of its own, so a long read does not
//!   delay it).
//! - Who reads: a SQL call holds a slot only while it runs, so "the relay holds the slot" is
//!   replaced by a session advisory lock every relay takes before it touches the slot
//!   ([`Control::hold_slot`](super::Control::hold_slot)); a standby waits on the lock, not between
//!   two calls, so it cannot slip in and flap.
//! - Memory: a call returns whole transactions, past `chunk_changes`; rows are streamed from the
//!   socket (tokio-postgres stops reading while the bounded channel is full) and Postgres
//!   spills the call's result to disk, so a huge transaction costs neither side memory.
//! - Reading ahead: Postgres decodes a call's whole result before it sends the first row (a
//!   quarter to a third of a 1M-row catch-up was spent waiting for first rows). When that first
//!   row arrives, the call has already moved its copy to where its last transaction ends, so a
//!   second session copies that copy and starts the next call while this one's rows are
//!   published: the next call's decoding overlaps this call's publishing, and the two sessions
//!   take turns. Rows of the call read ahead wait in Postgres (its result is materialised, and
//!   the relay reads nothing of it but its first row until it is the current call), so memory
//!   stays bounded. It needs a third replication slot; without one, or after any error of the
//!   second session, calls run one after another as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::PgLsn;

use super::{Control, SourceEvent, SourceSettings};
use crate::decode::{self, DecodeError, PgOutput};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// Events read ahead of the loop (bounded memory: a few MB of pgoutput messages).
const READ_AHEAD: usize = 4096;
/// Temporary slot names made by this process, so two sessions never share one.
static COPIES: AtomicU64 = AtomicU64::new(0);

/// What the reader does when a call comes back short (the copy reached the server's WAL end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Hand [`SourceEvent::CaughtUp`] to the loop and stop: the relay streams from here.
    Stream,
    /// Keep reading through the SQL interface, waiting this long after an empty call.
    Poll(Duration),
}

/// How to read.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Changes asked of each call.
    pub chunk_changes: u64,
    /// After a short call.
    pub at_end: AtEnd,
}

/// A backlog being read through the SQL interface from a temporary copy of the relay's slot.
pub struct CatchUp {
    events: mpsc::Receiver<Result<SourceEvent>>,
    reader: JoinHandle<()>,
    acker: JoinHandle<()>,
    acks: watch::Sender<Lsn>,
    /// Set by [`CatchUp::stop`]: advance to the last acknowledgement now.
    flush: watch::Sender<bool>,
    advanced: watch::Receiver<Lsn>,
    /// Cancels the running calls when the catch-up ends (a call can run long on a huge
    /// transaction): one token per session.
    cancel: Vec<tokio_postgres::CancelToken>,
    settings: SourceSettings,
    /// The temporary copy's name (for messages).
    copy: String,
}

impl std::fmt::Debug for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUp")
            .field("copy", &self.copy)
            .finish_non_exhaustive()
    }
}

impl CatchUp {
    /// Copies the slot `control` checked into a temporary slot and starts reading it in the
    /// background. The caller holds the slot's advisory lock and has checked that no walsender
    /// streams from the slot.
    pub async fn open(control: &Control, opts: Options) -> Result<Self> {
        let s = control.settings().clone();
        let reader = Control::connect_to(&s).await?;
        let acker = Control::connect_to(&s).await?;
        let copy = next_copy_name(&s.slot);
        reader
            .client()
            .execute(
                "SELECT pg_copy_logical_replication_slot($1::text::name, $2::text::name, true)",
                &[&s.slot, &copy],
            )
            .await
            .map_err(|e| reader.sql_error("copying the slot into a temporary one for catch-up (pg_copy_logical_replication_slot)", e))?;
        let mut cancel = vec![reader.client().cancel_token()];
        let first = Lane::new(reader, Some(copy.clone())).await?;
        // The second session is only for reading ahead: without it, calls run one by one.
        let spare = match Control::connect_to(&s).await {
            Ok(c) => {
                cancel.push(c.client().cancel_token());
                Lane::new(c, None).await.ok()
            }
            Err(e) => {
                tracing::info!(error = %e.report(), "catch-up: no second session, so no call is read ahead");
                None
            }
        };
        let (tx, events) = mpsc::channel(READ_AHEAD);
        let (acks, ack_rx) = watch::channel(Lsn::ZERO);
        let (advanced_tx, advanced) = watch::channel(Lsn::ZERO);
        let (flush, flush_rx) = watch::channel(false);
        let acker = tokio::spawn(advance_loop(
            acker,
            ack_rx,
            flush_rx,
            advanced_tx,
            tx.clone(),
        ));
        let reader = tokio::spawn(read_loop(first, spare, opts, tx));
        tracing::info!(slot = %s.slot, copy = %copy, chunk_changes = opts.chunk_changes, "catching up through the SQL interface (pg_logical_slot_get_binary_changes on a temporary copy of the slot)");
        Ok(Self {
            events,
            reader,
            acker,
            acks,
            flush,
            advanced,
            cancel,
            settings: s,
            copy,
        })
    }

    /// The next event, in the order Postgres decoded them.
    pub async fn recv(&mut self, s: &SourceSettings) -> Result<SourceEvent> {
        match self.events.recv().await {
            Some(r) => r,
            None => Err(Error::transient(format!(
                "postgres {}: the catch-up reader ended",
                s.address()
            ))),
        }
    }

    /// Acknowledges `lsn` as durably published: the relay's slot is advanced to it (in the
    /// background). Call only after the Kafka commit that covers it returned Ok.
    pub fn ack(&mut self, lsn: Lsn) {
        self.acks.send_if_modified(|a| {
            let newer = lsn > *a;
            if newer {
                *a = lsn;
            }
            newer
        });
    }

    /// Stops reading once the last acknowledgement reached the slot (within a few seconds), and
    /// cancels a call still running; the temporary copy goes with its connection.
    pub async fn close(mut self) {
        self.stop().await;
    }

    /// [`CatchUp::close`], keeping the value (nothing is read after it).
    pub async fn stop(&mut self) {
        self.flush.send_replace(true);
        let want = *self.acks.borrow();
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.advanced.wait_for(|a| *a >= want),
        )
        .await;
        self.reader.abort();
        self.acker.abort();
        for token in std::mem::take(&mut self.cancel) {
            Control::cancel(&self.settings, token).await;
        }
    }
}

/// A name for a new temporary copy of `slot`, unique in this process.
fn next_copy_name(slot: &str) -> String {
    copy_name(
        slot,
        std::process::id(),
        COPIES.fetch_add(1, Ordering::Relaxed),
    )
}

/// `<slot>_cu<pid>_<n>`, cut to Postgres' 63 bytes (slot names are ASCII).
fn copy_name(slot: &str, pid: u32, n: u64) -> String {
    let suffix = format!("_cu{pid}_{n}");
    let keep = 63usize.saturating_sub(suffix.len()).min(slot.len());
    format!("{}{suffix}", &slot[..keep])
}

/// How far a call may grow: [`next_chunk`] doubles up to this many times `chunk_changes`.
const MAX_GROWTH: u64 = 64;

/// Changes to ask of the next call, `read` having been read from the copy so far.
///
/// Each call decodes again from the copy's `restart_lsn`, which moves only at the server's
/// running-transactions records (every 15 s of writing): a backlog written faster than that is
/// decoded again by every call, and equal calls cost the square of the backlog (measured: 52
/// calls of 20k over a 1M-row backlog took 8.8 CPU s, one call 1.7 s). Asking for as much as was
/// already read keeps the total to about twice one call; the cap bounds what one call
/// materialises on the server (it spills to disk past `work_mem`).
fn next_chunk(chunk_changes: u64, read: u64) -> u64 {
    read.clamp(chunk_changes, chunk_changes.saturating_mul(MAX_GROWTH))
}

/// A session the reader calls through: its temporary copy (which only this session may use)
/// and the call prepared on it.
struct Lane {
    control: Control,
    stmt: tokio_postgres::Statement,
    /// `None` until the session made its first copy.
    copy: Option<String>,
}

impl Lane {
    async fn new(control: Control, copy: Option<String>) -> Result<Self> {
        let stmt = control
            .client()
            .prepare(
                "SELECT lsn, data FROM pg_logical_slot_get_binary_changes($1::text::name, NULL, $2::int4, \
                 'proto_version', '1', 'publication_names', $3::text, 'messages', 'true')",
            )
            .await
            .map_err(|e| control.sql_error("preparing the catch-up read", e))?;
        Ok(Self {
            control,
            stmt,
            copy,
        })
    }

    fn copy(&self) -> &str {
        self.copy.as_deref().unwrap_or_default()
    }

    /// Replaces this session's copy by a copy of `from` (another session's copy, whose last call
    /// has ended decoding: it stands where that call's last transaction ends).
    async fn copy_from(&mut self, from: &str) -> Result<()> {
        if let Some(old) = self.copy.take() {
            self.control
                .client()
                .execute("SELECT pg_drop_replication_slot($1::text::name)", &[&old])
                .await
                .map_err(|e| {
                    self.control
                        .sql_error("dropping a temporary slot of the catch-up", e)
                })?;
        }
        let copy = next_copy_name(&self.control.settings().slot);
        self.control
            .client()
            .execute(
                "SELECT pg_copy_logical_replication_slot($1::text::name, $2::text::name, true)",
                &[&from, &copy],
            )
            .await
            .map_err(|e| {
                self.control.sql_error(
                    "copying the catch-up's slot to read ahead (pg_copy_logical_replication_slot)",
                    e,
                )
            })?;
        self.copy = Some(copy);
        Ok(())
    }

    /// Starts a call asking for `ask` changes and waits for its first row: Postgres has decoded
    /// the whole call by then, and the copy stands where the call's last transaction ends.
    async fn call(self, ask: u64) -> Result<Call> {
        let s = self.control.settings();
        let publication = publication_option(&s.publication);
        let chunk = i32::try_from(ask).unwrap_or(i32::MAX);
        let copy = self.copy().to_owned();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&copy, &chunk, &publication];
        let started = Instant::now();
        let mut rows = Box::pin(
            self.control
                .client()
                .query_raw(&self.stmt, params)
                .await
                .map_err(|e| self.control.sql_error(READING, e))?,
        );
        let first = rows
            .try_next()
            .await
            .map_err(|e| self.control.sql_error(READING, e))?;
        Ok(Call {
            lane: self,
            rows,
            first,
            asked: chunk,
            started,
            ready: Instant::now(),
        })
    }
}

const READING: &str = "reading changes (pg_logical_slot_get_binary_changes)";

/// A call whose result Postgres has decoded: its first row is in (`None`: it had none).
struct Call {
    lane: Lane,
    rows: std::pin::Pin<Box<tokio_postgres::RowStream>>,
    first: Option<tokio_postgres::Row>,
    asked: i32,
    started: Instant,
    /// When the first row came in (or the call ended).
    ready: Instant,
}

impl Call {
    /// Hands this call's rows to `tx`, in order: how many, and the session back. `None` when the
    /// loop went away. `since` is when the reader began to wait for this call (for the log).
    async fn publish(
        mut self,
        since: Instant,
        tx: &mpsc::Sender<Result<SourceEvent>>,
    ) -> Result<Option<(u64, Lane)>> {
        let mut n = 0u64;
        let mut next = self.first.take();
        while let Some(row) = next {
            let lsn: PgLsn = row.get(0);
            let data: &[u8] = row.get(1);
            let ev = event(Lsn(u64::from(lsn)), data).map_err(|e| {
                Error::internal(format!(
                    "postgres {}: undecodable pgoutput message at {} in the catch-up read",
                    self.lane.control.settings().address(),
                    Lsn(u64::from(lsn))
                ))
                .with_source(e)
            })?;
            n += 1;
            if tx.send(Ok(ev)).await.is_err() {
                return Ok(None);
            }
            next = self
                .rows
                .try_next()
                .await
                .map_err(|e| self.lane.control.sql_error(READING, e))?;
        }
        // `first_row_ms`: how long Postgres decoded before it sent the first row; `waited_ms`:
        // how much of that the reader waited (less when the call was read ahead).
        tracing::debug!(
            asked = self.asked,
            rows = n,
            first_row_ms = (self.ready - self.started).as_millis() as u64,
            waited_ms = self.ready.saturating_duration_since(since).as_millis() as u64,
            call_ms = self.started.elapsed().as_millis() as u64,
            "catch-up: one SQL call read"
        );
        Ok(Some((n, self.lane)))
    }
}

/// The next call, started on the spare session while the current one is published. Dropping it
/// stops it (its session and temporary copy go with it).
struct Ahead(JoinHandle<Result<Call>>);

impl Ahead {
    fn start(mut lane: Lane, from: String, ask: u64) -> Self {
        Self(tokio::spawn(async move {
            lane.copy_from(&from).await?;
            lane.call(ask).await
        }))
    }

    /// The call, `None` (logged) if it failed: the caller then calls on its own session, which
    /// stands at the same position.
    async fn take(mut self) -> Option<Call> {
        let error = match (&mut self.0).await {
            Ok(Ok(call)) => return Some(call),
            Ok(Err(e)) => e.report(),
            Err(e) => e.to_string(),
        };
        tracing::info!(%error, "catch-up: reading ahead failed; calls run one after another from here");
        None
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the copy chunk by chunk into `tx` until the loop goes away, the next call read ahead on
/// `spare` (see the module's doc) while the reader is in a backlog.
async fn read_loop(
    first: Lane,
    mut spare: Option<Lane>,
    opts: Options,
    tx: mpsc::Sender<Result<SourceEvent>>,
) {
    let s = first.control.settings().clone();
    let mut read = 0u64;
    let mut since = Instant::now();
    let mut call = match first.call(next_chunk(opts.chunk_changes, read)).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    // Read ahead only while the calls come back full: an idle outbox is polled one call at a time.
    let mut in_backlog = true;
    let mut read_ahead = false;
    loop {
        let asked = u64::try_from(call.asked).unwrap_or(0);
        let ahead = if in_backlog { spare.take() } else { None }.map(|lane| {
            Ahead::start(
                lane,
                call.lane.copy().to_owned(),
                next_chunk(opts.chunk_changes, read + asked),
            )
        });
        let (rows, lane) = match call.publish(since, &tx).await {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        read += rows;
        in_backlog = rows >= asked;
        if !in_backlog {
            match opts.at_end {
                AtEnd::Stream => {
                    let _ = tx.send(Ok(SourceEvent::CaughtUp)).await;
                    return;
                }
                AtEnd::Poll(wait) => {
                    // Everything committed before the copy's position was handed over: that is
                    // what a walsender's keepalive says (the loop may checkpoint an idle outbox
                    // with it).
                    match confirmed(&lane.control, lane.copy()).await {
                        Ok(Some(wal_end)) => {
                            if tx
                                .send(Ok(SourceEvent::KeepAlive { wal_end }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = tx
                                .send(Err(Error::transient(format!(
                                    "postgres {}: the temporary slot {:?} of the catch-up is gone",
                                    s.address(),
                                    lane.copy()
                                ))))
                                .await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    if rows == 0 && ahead.is_none() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        since = Instant::now();
        // The call read ahead starts where this one ended; if it failed, this session's copy
        // stands at the same place.
        let next = match ahead {
            Some(a) => a.take().await,
            None => None,
        };
        call = match next {
            Some(c) => {
                if !read_ahead {
                    read_ahead = true;
                    tracing::info!("catch-up: reading each next call ahead on a second session");
                }
                spare = Some(lane);
                c
            }
            None => match lane.call(next_chunk(opts.chunk_changes, read)).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
        };
    }
}

/// The copy's `confirmed_flush_lsn` (`None`: the copy is gone).
async fn confirmed(control: &Control, copy: &str) -> Result<Option<Lsn>> {
    let row = control
        .client()
        .query_opt(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1::text::name",
            &[&copy],
        )
        .await
        .map_err(|e| control.sql_error("reading the catch-up slot's position", e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<PgLsn>>(0))
        .map(|l| Lsn(u64::from(l))))
}

/// Least time between two advances of the relay's slot while catching up.
///
/// `pg_replication_slot_advance` decodes from the slot's `restart_lsn` up to the target, and that
/// position moves only at running-transactions records: advancing after every Kafka commit
/// decoded a 1M-row backlog again and again (measured: 500 advances 52.8 CPU s, 50 advances
/// 5.4 s). The checkpoint in Kafka, not the slot, says where reading resumes, so advancing less
/// often only holds WAL a few seconds longer. [`CatchUp::stop`] advances to the last
/// acknowledgement at once.
const ADVANCE_EVERY: Duration = Duration::from_secs(5);

/// Advances the relay's slot to the acknowledged position, at most every [`ADVANCE_EVERY`]
/// (at once when `flush` is set), never past it.
async fn advance_loop(
    control: Control,
    mut acks: watch::Receiver<Lsn>,
    mut flush: watch::Receiver<bool>,
    advanced: watch::Sender<Lsn>,
    errors: mpsc::Sender<Result<SourceEvent>>,
) {
    let s = control.settings().clone();
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        // Something newer than what the slot holds.
        while *acks.borrow_and_update() <= *advanced.borrow() {
            if acks.changed().await.is_err() {
                return;
            }
        }
        if let Some(at) = last.filter(|_| !*flush.borrow()) {
            tokio::select! {
                _ = tokio::time::sleep_until(at + ADVANCE_EVERY) => {}
                _ = flush.wait_for(|f| *f) => {}
            }
        }
        let to = *acks.borrow_and_update();
        last = Some(tokio::time::Instant::now());
        let result = control
            .client()
            .execute(
                "SELECT pg_replication_slot_advance($1::text::name, $2::pg_lsn)",
                &[&s.slot, &PgLsn::from(to.as_u64())],
            )
            .await;
        match result {
            Ok(_) => {
                advanced.send_replace(to);
            }
            Err(e) => {
                let e = control.sql_error(
                    &format!(
                        "advancing slot {:?} to {to} (pg_replication_slot_advance)",
                        s.slot
                    ),
                    e,
                );
                let _ = errors.send(Err(e)).await;
                return;
            }
        }
    }
}

/// The `publication_names` option: a quoted identifier, as pgoutput parses a name list.
fn publication_option(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One row of `pg_logical_slot_get_binary_changes` (pgoutput, protocol 1) as the event the
/// walsender transport would have given: Begin, Commit and Message are decoded (by the relay's
/// own pgoutput decoder; the transport parses them too), every other message is handed over
/// undecoded, for the loop to decode.
fn event(lsn: Lsn, data: &[u8]) -> std::result::Result<SourceEvent, DecodeError> {
    let data = Bytes::copy_from_slice(data);
    if !matches!(data.first(), Some(b'B' | b'C' | b'M')) {
        return Ok(SourceEvent::Change { lsn, data });
    }
    Ok(match decode::decode(data.clone())? {
        PgOutput::Begin {
            final_lsn,
            commit_ts_micros,
            xid,
        } => SourceEvent::Begin {
            final_lsn: Lsn(final_lsn),
            xid,
            commit_ts_micros,
        },
        PgOutput::Commit {
            commit_lsn,
            end_lsn,
            commit_ts_micros,
            ..
        } => SourceEvent::Commit {
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn(end_lsn),
            commit_ts_micros,
        },
        PgOutput::Message {
            transactional,
            lsn: at,
            prefix,
            content,
        } => SourceEvent::Message {
            transactional,
            lsn: Lsn(at),
            prefix,
            content,
        },
        _ => SourceEvent::Change { lsn, data },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_commit_and_message_rows_parse_like_the_transport_does() {
        let mut b = vec![b'B'];
        b.extend(0x1_0000_0010u64.to_be_bytes());
        b.extend(42i64.to_be_bytes());
        b.extend(7u32.to_be_bytes());
        match event(Lsn(5), &b).expect("parses") {
            SourceEvent::Begin {
                final_lsn,
                xid,
                commit_ts_micros,
            } => assert_eq!(
                (final_lsn, xid, commit_ts_micros),
                (Lsn(0x1_0000_0010), 7, 42)
            ),
            other => panic!("{other:?}"),
        }
        let mut c = vec![b'C', 0];
        c.extend(10u64.to_be_bytes());
        c.extend(20u64.to_be_bytes());
        c.extend(30i64.to_be_bytes());
        match event(Lsn(5), &c).expect("parses") {
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
                commit_ts_micros,
            } => assert_eq!(
                (commit_lsn, end_lsn, commit_ts_micros),
                (Lsn(10), Lsn(20), 30)
            ),
            other => panic!("{other:?}"),
        }
        let mut m = vec![b'M', 1];
        m.extend(99u64.to_be_bytes());
        m.extend(b"outbox\0");
        m.extend(3u32.to_be_bytes());
        m.extend(b"abc");
        match event(Lsn(5), &m).expect("parses") {
            SourceEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                assert!(transactional);
                assert_eq!(
                    (lsn, prefix.as_str(), &content[..]),
                    (Lsn(99), "outbox", &b"abc"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        match event(Lsn(77), b"I\0\0\0\x01N").expect("parses") {
            SourceEvent::Change { lsn, data } => {
                assert_eq!((lsn, &data[..]), (Lsn(77), &b"I\0\0\0\x01N"[..]))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_rows_are_errors_not_misread() {
        for bad in [&b"B\0\0"[..], &b"C\0"[..]] {
            assert!(
                matches!(event(Lsn(1), bad), Err(DecodeError::Truncated { .. })),
                "{bad:?}"
            );
        }
        let mut m = vec![b'M', 1];
        m.extend(99u64.to_be_bytes());
        m.extend(b"outbox\0");
        m.extend(30u32.to_be_bytes());
        assert!(matches!(
            event(Lsn(1), &m),
            Err(DecodeError::Truncated { .. })
        ));
        // Anything else is the loop's to decode (and to refuse).
        assert!(matches!(event(Lsn(1), b""), Ok(SourceEvent::Change { .. })));
    }

    #[test]
    fn calls_grow_with_what_was_read_up_to_a_cap() {
        assert_eq!(next_chunk(20_000, 0), 20_000);
        assert_eq!(next_chunk(20_000, 20_000), 20_000);
        assert_eq!(next_chunk(20_000, 60_000), 60_000);
        assert_eq!(next_chunk(20_000, 10_000_000), 20_000 * MAX_GROWTH);
        assert_eq!(next_chunk(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn copy_names_are_unique_per_session_and_fit_postgres() {
        assert_eq!(copy_name("outbox_relay", 123, 4), "outbox_relay_cu123_4");
        let long = "s".repeat(63);
        let name = copy_name(&long, 4_000_000, 99);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("_cu4000000_99"));
    }

    #[test]
    fn publication_names_are_quoted_identifiers() {
        assert_eq!(publication_option("outbox_pub"), "\"outbox_pub\"");
        assert_eq!(publication_option("we\"ird,pub"), "\"we\"\"ird,pub\"");
    }
}
