//! Reading the outbox table for the initial snapshot (`outbox.snapshot`).
//!
//! The rows to publish are exactly those visible in the snapshot Postgres exported when it
//! created the slot: everything committed before the slot's consistent point, while everything
//! committed after it comes through the slot. That exported snapshot lives only until the
//! replication connection runs its next command, but a snapshot can be written down:
//! `pg_current_snapshot()` in a transaction that imported it prints `xmin:xmax:xip,...`, and for
//! a snapshot exported at slot creation the `xip` list holds every xid in `[xmin, xmax)` that had
//! not committed, subtransactions included (snapbuild.c builds it that way). So whether a row
//! belongs to the snapshot can be told later, from its `xmin`, by [`PgSnapshot::holds`], in any
//! transaction: after a crash the relay resumes the snapshot with a new cursor and the same
//! answer for every row.
//!
//! The table is read in one REPEATABLE READ, READ ONLY transaction through a cursor ordered by
//! the snapshot's order column and the id (keyset: it resumes after the last published row), in
//! text format with the replication session's settings (DateStyle ISO, TimeZone UTC, hex bytea),
//! so each row becomes the same [`Tuple`] pgoutput would have sent and goes through the same
//! decoder.

use std::str::FromStr;

use bytes::Bytes;
use tokio_postgres::SimpleQueryMessage;

use super::control::Control;
use crate::decode::{Column, ColumnMap, Datum, Relation, Tuple};
use crate::error::{Error, Result};

/// A snapshot as `pg_current_snapshot()` prints it: 64-bit xids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSnapshot {
    xmin: u64,
    xmax: u64,
    /// Sorted.
    xip: Vec<u64>,
}

impl FromStr for PgSnapshot {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{text:?} is not a snapshot (xmin:xmax:xip,...)");
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let mut xip = Vec::new();
        for x in parts
            .next()
            .ok_or_else(bad)?
            .split(',')
            .filter(|x| !x.is_empty())
        {
            xip.push(x.parse().map_err(|_| bad())?);
        }
        xip.sort_unstable();
        Ok(Self { xmin, xmax, xip })
    }
}

impl PgSnapshot {
    /// Whether a row inserted by the 32-bit xid `xid` is visible in this snapshot. `next` is the
    /// next 64-bit xid of the transaction reading the row (every xid it can see is below it),
    /// which places `xid` in its epoch. Valid for rows inserted within 2^32 transactions of now.
    pub fn holds(&self, xid: u32, next: u64) -> bool {
        let Some(x) = widen(xid, next) else {
            return false;
        };
        x < self.xmin || (x < self.xmax && self.xip.binary_search(&x).is_err())
    }
}

/// The 64-bit xid of `xid`, the latest one below `next` with these low 32 bits.
fn widen(xid: u32, next: u64) -> Option<u64> {
    let x = (next & !0xFFFF_FFFF) | u64::from(xid);
    if x < next {
        Some(x)
    } else {
        x.checked_sub(1 << 32)
    }
}

/// The snapshot's view of the table: which columns it reads and how it orders them.
#[derive(Debug, Clone)]
pub struct Shape {
    /// `"schema"."table"`.
    table: String,
    /// The order column and the id column, quoted, with their types (`format_type`).
    order: (String, String),
    id: (String, String),
    /// The mapped columns read, as a Relation for the decoder (relation id 0).
    relation: Relation,
}

impl Shape {
    /// The Relation the rows of [`Control::fetch_snapshot`] decode against.
    pub fn relation(&self) -> Relation {
        self.relation.clone()
    }
}

/// One row of the table read by the snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    /// The inserting transaction (32 bits, as `xmin` shows it).
    pub xmin: u32,
    /// The order column's text.
    pub order: String,
    /// The id column's text.
    pub id: String,
    /// The mapped columns, in the Relation's order.
    pub tuple: Tuple,
}

/// A double-quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted SQL literal (standard_conforming_strings is on in the cursor's transaction).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const CURSOR: &str = "outbox_relay_snapshot";

impl Control {
    /// Imports the snapshot a slot creation exported and prints it (`pg_current_snapshot()`).
    pub async fn import_snapshot(&self, name: &str) -> Result<String> {
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; SELECT pg_current_snapshot()::text; COMMIT",
            literal(name)
        );
        let messages = self
            .client()
            .simple_query(&sql)
            .await
            .map_err(|e| self.sql_error("importing the slot's exported snapshot", e))?;
        messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| Error::internal("postgres: pg_current_snapshot() returned nothing"))
    }

    /// The columns and types the snapshot reads.
    pub async fn snapshot_shape(&self, order_by: &str, columns: &ColumnMap) -> Result<Shape> {
        let s = self.settings();
        let mut names: Vec<&str> = vec![
            &columns.id,
            &columns.aggregate_type,
            &columns.aggregate_id,
            &columns.event_type,
            &columns.payload,
        ];
        names.extend(columns.headers.as_deref());
        names.extend(columns.created_at.as_deref());
        let rows = self
            .client()
            .query(
                "SELECT a.attname::text, a.atttypid::oid, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&s.table_schema, &s.table_name],
            )
            .await
            .map_err(|e| self.sql_error("reading the outbox columns", e))?;
        let found: Vec<(String, u32, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let find = |name: &str| found.iter().find(|(n, _, _)| n == name);
        let order = find(order_by).ok_or_else(|| {
            Error::config(format!(
                "postgres: table {}.{} has no column {order_by:?} (outbox.snapshot_order_by)",
                s.table_schema, s.table_name
            ))
        })?;
        let id = find(&columns.id).ok_or_else(|| {
            Error::config(format!(
                "postgres: table {}.{} has no column {:?} (outbox.columns.id)",
                s.table_schema, s.table_name, columns.id
            ))
        })?;
        let relation = Relation {
            id: 0,
            namespace: s.table_schema.clone(),
            name: s.table_name.clone(),
            replica_identity: b'd',
            columns: names
                .iter()
                .filter_map(|n| find(n))
                .map(|(name, oid, _)| Column {
                    flags: 0,
                    name: name.clone(),
                    type_oid: *oid,
                    type_modifier: -1,
                })
                .collect(),
        };
        Ok(Shape {
            table: format!("{}.{}", ident(&s.table_schema), ident(&s.table_name)),
            order: (ident(&order.0), order.2.clone()),
            id: (ident(&id.0), id.2.clone()),
            relation,
        })
    }

    /// Opens the snapshot's cursor (after the row `after`, when resuming) in a REPEATABLE READ
    /// READ ONLY transaction. Returns the transaction's next xid (for [`PgSnapshot::holds`]).
    pub async fn open_snapshot(
        &self,
        shape: &Shape,
        after: Option<&(String, String)>,
    ) -> Result<u64> {
        let (order, order_type) = &shape.order;
        let (id, id_type) = &shape.id;
        let cols: Vec<String> = shape
            .relation
            .columns
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        let filter = after.map_or(String::new(), |(o, i)| {
            format!(
                " WHERE ({order}, {id}) > ({}::text::{order_type}, {}::text::{id_type})",
                literal(o),
                literal(i)
            )
        });
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL DateStyle = ISO; SET LOCAL TimeZone = 'UTC'; SET LOCAL bytea_output = hex; \
             SET LOCAL standard_conforming_strings = on; \
             SELECT pg_snapshot_xmax(pg_current_snapshot())::text; \
             DECLARE {CURSOR} NO SCROLL CURSOR FOR \
             SELECT xmin::text, {order}::text, {id}::text, {} FROM {}{filter} ORDER BY {order}, {id}",
            cols.join(", "),
            shape.table
        );
        let messages = self
            .client()
            .simple_query(&sql)
            .await
            .map_err(|e| self.sql_error("opening the snapshot's cursor", e))?;
        messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).and_then(|t| t.parse().ok()),
                _ => None,
            })
            .ok_or_else(|| Error::internal("postgres: no next xid for the snapshot's cursor"))
    }

    /// The next rows of the snapshot's cursor (empty at its end).
    pub async fn fetch_snapshot(&self, n: usize) -> Result<Vec<SnapshotRow>> {
        let messages = self
            .client()
            .simple_query(&format!("FETCH FORWARD {n} FROM {CURSOR}"))
            .await
            .map_err(|e| self.sql_error("reading the snapshot's cursor", e))?;
        let mut out = Vec::new();
        for m in messages {
            let SimpleQueryMessage::Row(r) = m else {
                continue;
            };
            let text = |i: usize| r.get(i).map(str::to_string);
            let xmin = text(0)
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or_else(|| Error::internal("postgres: snapshot row without xmin"))?;
            let values = (3..r.len())
                .map(|i| match r.get(i) {
                    Some(t) => Datum::Text(Bytes::copy_from_slice(t.as_bytes())),
                    None => Datum::Null,
                })
                .collect();
            out.push(SnapshotRow {
                xmin,
                order: text(1).unwrap_or_default(),
                id: text(2).unwrap_or_default(),
                tuple: Tuple(values),
            });
        }
        Ok(out)
    }

    /// The rows with these ids (`backfill`), in the snapshot's order (order column, then id): one
    /// query, text format with the replication session's settings, as [`Self::fetch_snapshot`].
    /// `ids` are the id column's text (e.g. canonical UUIDs).
    pub async fn rows_by_id(&self, shape: &Shape, ids: &[String]) -> Result<Vec<SnapshotRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (order, _) = &shape.order;
        let (id, id_type) = &shape.id;
        let cols: Vec<String> = shape
            .relation
            .columns
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        let list: Vec<String> = ids.iter().map(|i| literal(i)).collect();
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL DateStyle = ISO; SET LOCAL TimeZone = 'UTC'; SET LOCAL bytea_output = hex; \
             SET LOCAL standard_conforming_strings = on; \
             DECLARE {CURSOR} NO SCROLL CURSOR FOR \
             SELECT xmin::text, {order}::text, {id}::text, {} FROM {} \
             WHERE {id} = ANY(ARRAY[{}]::{id_type}[]) ORDER BY {order}, {id}",
            cols.join(", "),
            shape.table,
            list.join(", ")
        );
        self.client()
            .simple_query(&sql)
            .await
            .map_err(|e| self.sql_error("reading the rows to backfill", e))?;
        let mut out = Vec::new();
        loop {
            let batch = self.fetch_snapshot(1_000).await?;
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
        self.close_snapshot().await?;
        Ok(out)
    }

    /// Ends the snapshot's transaction.
    pub async fn close_snapshot(&self) -> Result<()> {
        self.client()
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.sql_error("closing the snapshot's cursor", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_judge_rows_by_xmin() {
        let s: PgSnapshot = "100:110:103,105".parse().expect("parses");
        let next = 200;
        assert!(s.holds(99, next), "before xmin: committed before");
        assert!(s.holds(104, next), "in range, not in progress");
        assert!(
            !s.holds(103, next),
            "in progress (or a subtransaction of one)"
        );
        assert!(!s.holds(110, next), "at or after xmax: after the snapshot");
        assert!(!s.holds(150, next));
        assert!("100:100:"
            .parse::<PgSnapshot>()
            .expect("empty xip")
            .holds(99, next));
        assert!("x:1:".parse::<PgSnapshot>().is_err());
    }

    #[test]
    fn xids_are_placed_in_the_epoch_of_the_reader() {
        // The reader is in epoch 1 (next = 2^32 + 50): xid 40 is 2^32 + 40, xid 60 is from epoch 0.
        let next = (1u64 << 32) + 50;
        assert_eq!(widen(40, next), Some((1 << 32) + 40));
        assert_eq!(widen(60, next), Some(60));
        assert_eq!(widen(60, 50), None, "not visible to the reader at all");
        let s: PgSnapshot = format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 45)
            .parse()
            .expect("parses");
        assert!(s.holds(20, next));
        assert!(!s.holds(48, next));
        assert!(s.holds(4_000_000_000, next), "epoch 0: long before");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
