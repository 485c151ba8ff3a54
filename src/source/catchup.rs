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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{pin_mut, TryStreamExt};
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
    /// Cancels the running call when the catch-up ends (a call can run long on a huge transaction).
    cancel: Option<(tokio_postgres::CancelToken, SourceSettings)>,
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
        let copy = copy_name(
            &s.slot,
            std::process::id(),
            COPIES.fetch_add(1, Ordering::Relaxed),
        );
        reader
            .client()
            .execute(
                "SELECT pg_copy_logical_replication_slot($1::text::name, $2::text::name, true)",
                &[&s.slot, &copy],
            )
            .await
            .map_err(|e| reader.sql_error("copying the slot into a temporary one for catch-up (pg_copy_logical_replication_slot)", e))?;
        let stmt = reader
            .client()
            .prepare(
                "SELECT lsn, data FROM pg_logical_slot_get_binary_changes($1::text::name, NULL, $2::int4, \
                 'proto_version', '1', 'publication_names', $3::text, 'messages', 'true')",
            )
            .await
            .map_err(|e| reader.sql_error("preparing the catch-up read", e))?;
        let (tx, events) = mpsc::channel(READ_AHEAD);
        let cancel = Some((reader.client().cancel_token(), s.clone()));
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
        let reader = tokio::spawn(read_loop(reader, stmt, copy.clone(), opts, tx));
        tracing::info!(slot = %s.slot, copy = %copy, chunk_changes = opts.chunk_changes, "catching up through the SQL interface (pg_logical_slot_get_binary_changes on a temporary copy of the slot)");
        Ok(Self {
            events,
            reader,
            acker,
            acks,
            flush,
            advanced,
            cancel,
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
        if let Some((token, s)) = self.cancel.take() {
            Control::cancel(&s, token).await;
        }
    }
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

/// Reads the copy chunk by chunk into `tx` until the loop goes away.
async fn read_loop(
    control: Control,
    stmt: tokio_postgres::Statement,
    copy: String,
    opts: Options,
    tx: mpsc::Sender<Result<SourceEvent>>,
) {
    let s = control.settings().clone();
    let mut read = 0u64;
    loop {
        let ask = next_chunk(opts.chunk_changes, read);
        let chunk = i32::try_from(ask).unwrap_or(i32::MAX);
        let rows = match read_chunk(&control, &stmt, &copy, chunk, &tx).await {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        read += rows;
        if rows >= ask {
            continue;
        }
        match opts.at_end {
            AtEnd::Stream => {
                let _ = tx.send(Ok(SourceEvent::CaughtUp)).await;
                return;
            }
            AtEnd::Poll(wait) => {
                // Everything committed before the copy's position was handed over: that is what
                // a walsender's keepalive says (the loop may checkpoint an idle outbox with it).
                match confirmed(&control, &copy).await {
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
                                "postgres {}: the temporary slot {copy:?} of the catch-up is gone",
                                s.address()
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if rows == 0 {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// One call: its rows into `tx`. `None` when the loop went away.
async fn read_chunk(
    control: &Control,
    stmt: &tokio_postgres::Statement,
    copy: &str,
    chunk: i32,
    tx: &mpsc::Sender<Result<SourceEvent>>,
) -> Result<Option<u64>> {
    let s = control.settings();
    let publication = publication_option(&s.publication);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&copy, &chunk, &publication];
    let started = Instant::now();
    let mut first_row = None;
    let rows = control
        .client()
        .query_raw(stmt, params)
        .await
        .map_err(|e| {
            control.sql_error("reading changes (pg_logical_slot_get_binary_changes)", e)
        })?;
    pin_mut!(rows);
    let mut n = 0u64;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| control.sql_error("reading changes (pg_logical_slot_get_binary_changes)", e))?
    {
        let lsn: PgLsn = row.get(0);
        let data: &[u8] = row.get(1);
        let ev = event(Lsn(u64::from(lsn)), data).map_err(|e| {
            Error::internal(format!(
                "postgres {}: undecodable pgoutput message at {} in the catch-up read",
                s.address(),
                Lsn(u64::from(lsn))
            ))
            .with_source(e)
        })?;
        n += 1;
        first_row.get_or_insert_with(|| started.elapsed());
        if tx.send(Ok(ev)).await.is_err() {
            return Ok(None);
        }
    }
    // Postgres decodes a call's whole result before it sends the first row: `first_row_ms` is
    // the time the loop may wait for this call (what read-ahead does not cover).
    tracing::debug!(
        asked = chunk,
        rows = n,
        first_row_ms = first_row.unwrap_or_else(|| started.elapsed()).as_millis() as u64,
        call_ms = started.elapsed().as_millis() as u64,
        "catch-up: one SQL call read"
    );
    Ok(Some(n))
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
