//! The table side: the cut's snapshot and the rows, read in one read-only transaction.
//!
//! ```text
//!  BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY
//!    SELECT pg_current_wal_insert_lsn(), pg_current_snapshot()   -- first statement: the cut
//!    SELECT system identifier, WAL page sizes, oldest created_at
//!    COPY (SELECT id, aggregate_type, created_at FROM outbox WHERE created_at >= ...) TO STDOUT binary
//!  COMMIT
//! ```
//!
//! Rows arrive in heap order through binary COPY (a sequential scan: no sort or index scan on the
//! server) and go straight into an external sorter by id; per row audit keeps 27 bytes. The
//! transaction is closed before Kafka is read, so audit does not hold back vacuum for the whole run.

use std::collections::HashMap;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use tokio_postgres::Client;

use super::entries::{Names, RowEntry};
use super::sort::Sorter;
use super::window::{cut_target, Snapshot, Window};
use super::{time, Failure};
use crate::config::Config;
use crate::lsn::Lsn;
use crate::route::{Router, RouterSettings};

/// What the first statements of the transaction found.
#[derive(Debug, Clone)]
pub struct CutInfo {
    /// `pg_current_wal_insert_lsn()`.
    pub insert_lsn: Lsn,
    /// The LSN the checkpoint must reach.
    pub target: Lsn,
    /// `pg_current_snapshot()` as text.
    pub snapshot_text: String,
    /// Parsed.
    pub snapshot: Snapshot,
    /// `pg_control_system().system_identifier`: part of the checkpoint key.
    pub system_id: String,
    /// `created_at` of the oldest row (None: table empty or no such column).
    pub oldest_row: Option<i64>,
    /// Whether the table has no row at all.
    pub table_empty: bool,
}

/// Counts of the rows read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowCounts {
    /// Rows judged.
    pub judged: u64,
    /// Rows read as context only.
    pub context: u64,
}

/// A double-quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The outbox table as `"schema"."name"` and as people write it.
pub fn table_names(cfg: &Config) -> (String, String) {
    let (schema, name) = cfg.table();
    (
        format!("{}.{}", ident(&schema), ident(&name)),
        format!("{schema}.{name}"),
    )
}

fn sql_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
    move |e| {
        let detail = super::chain(&e);
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
            || e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
            || e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN)
        {
            Failure::Config(format!("postgres: {what}: {detail}"))
        } else {
            Failure::CannotJudge(format!("postgres: {what}: {detail}"))
        }
    }
}

/// Opens the transaction and takes the cut. The transaction stays open for [`read_rows`].
pub async fn begin_cut(client: &Client, cfg: &Config) -> Result<CutInfo, Failure> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(sql_err("BEGIN"))?;
    // The first statement: the snapshot is taken as it starts, the insert LSN while it runs.
    let row = client
        .query_one(
            "SELECT pg_current_wal_insert_lsn()::text, pg_current_snapshot()::text",
            &[],
        )
        .await
        .map_err(sql_err("reading the WAL position and the snapshot"))?;
    let lsn_text: String = row.get(0);
    let snapshot_text: String = row.get(1);
    let insert_lsn: Lsn = lsn_text
        .parse()
        .map_err(|e| Failure::Internal(format!("postgres: pg_current_wal_insert_lsn: {e}")))?;
    let snapshot = Snapshot::parse(&snapshot_text).ok_or_else(|| {
        Failure::Internal(format!("postgres: unreadable snapshot {snapshot_text:?}"))
    })?;
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    current_setting('wal_block_size')::int8, \
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await
        .map_err(sql_err("reading the system identifier"))?;
    let system_id: String = row.get(0);
    let block: i64 = row.get(1);
    let segment: Option<i64> = row.get(2);
    let (table, _) = table_names(cfg);
    let (oldest_row, table_empty) = match cfg.outbox.columns.created_at() {
        Some(col) => {
            let row = client
                .query_one(
                    &format!(
                        "SELECT (extract(epoch FROM min({c}::timestamptz)) * 1000000)::int8, \
                                NOT EXISTS (SELECT 1 FROM {table}) FROM {table}",
                        c = ident(col)
                    ),
                    &[],
                )
                .await
                .map_err(sql_err("reading the oldest row"))?;
            (row.get::<_, Option<i64>>(0), row.get::<_, bool>(1))
        }
        None => {
            let row = client
                .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"), &[])
                .await
                .map_err(sql_err("reading the table"))?;
            (None, row.get::<_, bool>(0))
        }
    };
    Ok(CutInfo {
        insert_lsn,
        target: cut_target(insert_lsn, block as u64, segment.unwrap_or(0) as u64),
        snapshot_text,
        snapshot,
        system_id,
        oldest_row,
        table_empty,
    })
}

/// Ends the read-only transaction.
pub async fn commit(client: &Client) -> Result<(), Failure> {
    client
        .batch_execute("COMMIT")
        .await
        .map_err(sql_err("COMMIT"))
}

/// The router and the topic index of each aggregate type: rows route as the relay routes them.
#[derive(Debug)]
pub struct Routes {
    router: Router,
    cache: HashMap<String, u16>,
    dead_letter: u16,
}

impl Routes {
    /// From `[routing]`; unroutable rows are expected on the dead-letter topic.
    pub fn new(cfg: &Config, names: &mut Names) -> Self {
        let r = &cfg.routing;
        Self {
            router: Router::new(RouterSettings {
                topic_template: r.topic_template.clone(),
                topics: r
                    .topics
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                strict: r.strict,
            }),
            cache: HashMap::new(),
            dead_letter: names.topic(&cfg.errors.dead_letter_topic),
        }
    }

    /// The topic index for an aggregate type.
    pub fn topic(&mut self, aggregate_type: &str, names: &mut Names) -> u16 {
        if let Some(t) = self.cache.get(aggregate_type) {
            return *t;
        }
        let t = match self.router.topic(aggregate_type) {
            Ok(topic) => names.topic(&topic),
            Err(_) => self.dead_letter,
        };
        self.cache.insert(aggregate_type.to_string(), t);
        t
    }
}

/// Streams the rows the window reads into `sorter`: judged ones, and the context before them.
pub async fn read_rows(
    client: &Client,
    cfg: &Config,
    window: &Window,
    routes: &mut Routes,
    names: &mut Names,
    sorter: &mut Sorter<RowEntry>,
    progress: &mut dyn FnMut(u64),
) -> Result<RowCounts, Failure> {
    let (from, judged_since) = (window.rows_from(), window.judged_since);
    let c = &cfg.outbox.columns;
    let (table, _) = table_names(cfg);
    let created = c.created_at().map(ident);
    let sql = format!(
        "COPY (SELECT {id}::uuid, {at}::text, {created} FROM {table}{filter}) TO STDOUT (FORMAT binary)",
        id = ident(&c.id),
        at = ident(&c.aggregate_type),
        created = created
            .as_ref()
            .map_or("NULL::timestamptz".to_string(), |c| format!("{c}::timestamptz")),
        filter = match (&created, from) {
            (Some(col), Some(t)) => format!(" WHERE {col} >= '{}'::timestamptz", time::format(t)),
            _ => String::new(),
        }
    );
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(sql_err("reading the outbox table"))?;
    futures::pin_mut!(stream);
    let mut parser = CopyParser::default();
    let mut counts = RowCounts::default();
    let mut failure: Option<Failure> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(sql_err("reading the outbox table"))?;
        parser.buf.extend_from_slice(&chunk);
        parser
            .parse(|id, aggregate_type, created_at| {
                let judged = judged_since.is_none_or(|t| created_at.is_some_and(|c| c >= t));
                let entry = RowEntry {
                    id,
                    created_at: created_at.unwrap_or(i64::MIN),
                    topic: routes.topic(aggregate_type, names),
                    judged,
                };
                if judged {
                    counts.judged += 1;
                } else {
                    counts.context += 1;
                }
                if let Err(e) = sorter.push(entry) {
                    failure.get_or_insert(Failure::Internal(format!(
                        "writing sorted rows to a temporary file: {e}"
                    )));
                }
            })
            .map_err(|why| {
                Failure::Internal(format!("postgres: binary COPY of the outbox: {why}"))
            })?;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        progress(counts.judged + counts.context);
    }
    if !parser.finished {
        return Err(Failure::CannotJudge(
            "postgres: the COPY of the outbox table ended early".into(),
        ));
    }
    Ok(counts)
}

/// An incremental parser of `COPY ... (FORMAT binary)` with columns (uuid, text, timestamptz).
#[derive(Debug, Default)]
pub struct CopyParser {
    /// Bytes received and not yet parsed.
    pub buf: BytesMut,
    header_done: bool,
    /// Whether the trailer was seen.
    pub finished: bool,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl CopyParser {
    /// Calls `row(id, aggregate_type, created_at)` for every complete tuple in the buffer.
    pub fn parse(&mut self, mut row: impl FnMut(u128, &str, Option<i64>)) -> Result<(), String> {
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err("bad signature".into());
            }
            let ext = be_i32(&self.buf[SIGNATURE.len() + 4..]) as usize;
            if self.buf.len() < SIGNATURE.len() + 8 + ext {
                return Ok(());
            }
            self.buf.advance(SIGNATURE.len() + 8 + ext);
            self.header_done = true;
        }
        loop {
            let b = &self.buf[..];
            if b.len() < 2 {
                return Ok(());
            }
            let fields = i16::from_be_bytes([b[0], b[1]]);
            if fields == -1 {
                self.finished = true;
                self.buf.advance(2);
                return Ok(());
            }
            if fields != 3 {
                return Err(format!("expected 3 columns, got {fields}"));
            }
            // Field extents: (start, len) with len -1 for NULL.
            let mut pos = 2;
            let mut f = [(0usize, -1i32); 3];
            for slot in &mut f {
                if b.len() < pos + 4 {
                    return Ok(());
                }
                let len = be_i32(&b[pos..]);
                pos += 4;
                let take = len.max(0) as usize;
                if b.len() < pos + take {
                    return Ok(());
                }
                *slot = (pos, len);
                pos += take;
            }
            let (id_at, id_len) = f[0];
            if id_len != 16 {
                return Err("event id is not a 16-byte uuid".into());
            }
            let id = u128::from_be_bytes(b[id_at..id_at + 16].try_into().map_err(|_| "uuid")?);
            let (at_at, at_len) = f[1];
            let aggregate_type = if at_len < 0 {
                ""
            } else {
                std::str::from_utf8(&b[at_at..at_at + at_len as usize])
                    .map_err(|_| "aggregate_type is not UTF-8")?
            };
            let (ts_at, ts_len) = f[2];
            let created_at = match ts_len {
                8 => Some(
                    i64::from_be_bytes(b[ts_at..ts_at + 8].try_into().map_err(|_| "timestamp")?)
                        .saturating_add(time::PG_EPOCH_MICROS),
                ),
                -1 => None,
                _ => return Err("created_at is not a timestamptz".into()),
            };
            row(id, aggregate_type, created_at);
            self.buf.advance(pos);
        }
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(out: &mut Vec<u8>, id: u128, at: Option<&str>, ts: Option<i64>) {
        out.extend_from_slice(&3i16.to_be_bytes());
        out.extend_from_slice(&16i32.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        match at {
            Some(s) => {
                out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        match ts {
            Some(t) => {
                out.extend_from_slice(&8i32.to_be_bytes());
                out.extend_from_slice(&t.to_be_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    #[test]
    fn parses_binary_copy_split_at_every_byte() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&0i32.to_be_bytes());
        tuple(&mut data, 7, Some("booking"), Some(0));
        tuple(&mut data, u128::MAX, None, None);
        data.extend_from_slice(&(-1i16).to_be_bytes());
        for split in 0..data.len() {
            let mut p = CopyParser::default();
            let mut got = Vec::new();
            for part in [&data[..split], &data[split..]] {
                p.buf.extend_from_slice(part);
                p.parse(|id, at, ts| got.push((id, at.to_string(), ts)))
                    .expect("parses");
            }
            assert!(p.finished, "split {split}");
            assert_eq!(
                got,
                [
                    (7, "booking".to_string(), Some(time::PG_EPOCH_MICROS)),
                    (u128::MAX, String::new(), None)
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_the_expected_copy() {
        let mut p = CopyParser::default();
        p.buf
            .extend_from_slice(b"PGCOPY\n\xff\r\n\x01\0\0\0\0\0\0\0\0");
        assert!(p.parse(|_, _, _| {}).is_err());
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&2i16.to_be_bytes());
        let mut p = CopyParser::default();
        p.buf.extend_from_slice(&data);
        assert!(p.parse(|_, _, _| {}).is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }
}
