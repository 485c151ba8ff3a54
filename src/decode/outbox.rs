//! outbox: the relation cache and the mapping of an insert tuple onto the outbox columns.
//!
//! Postgres sends a Relation message before the first change of a relation in a session and again
//! after DDL on it; inserts refer to it by id only. [`OutboxDecoder`] keeps the latest Relation per
//! id, resolves the configured columns ([`ColumnMap`]) to tuple indexes once per Relation, and then
//! maps each insert to an [`OutboxRow`] without re-reading names: a handful of small `String`s per
//! row, the payload and headers as `Bytes` slices of the replication buffer (no copy, except a
//! `bytea` column, which is un-hexed).
//!
//! Errors say what the relay must do ([`InsertError`]):
//! * `Protocol`: the stream contradicts itself (unknown relation id, column count mismatch): stop.
//! * `Schema`: the publication or the table does not match the configuration (another table, a
//!   mapped column missing): stop, with the fix in the message.
//! * `Row`: this row cannot be published (NULL or empty key, bad encoding): dead-letter it,
//!   [`RowError::raw`] keeps every column's original bytes.

use std::collections::HashMap;

use bytes::Bytes;
use bytestring::ByteString;

use super::pgoutput::{Datum, DecodeError, Relation, Tuple};
use crate::reason::Reason;

/// Type OIDs of the built-in types an outbox column is likely to have.
pub mod type_oid {
    pub const BYTEA: u32 = 17;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const VARCHAR: u32 = 1043;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Which columns of the outbox table hold what. Names are matched exactly (Postgres folds unquoted
/// identifiers to lower case).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnMap {
    /// Event id (uuid): header `event_id`.
    pub id: String,
    /// Routes to the topic.
    pub aggregate_type: String,
    /// Kafka message key.
    pub aggregate_id: String,
    /// Header `event_type`.
    pub event_type: String,
    /// Kafka value.
    pub payload: String,
    /// Extra headers (a JSON object). Optional: a column absent from the table reads as NULL.
    pub headers: Option<String>,
    /// Header `created_at`. Optional: a column absent from the table reads as NULL.
    pub created_at: Option<String>,
}

impl Default for ColumnMap {
    /// The layout of our own `sql/` outbox table.
    fn default() -> Self {
        ColumnMap {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            event_type: "event_type".into(),
            payload: "payload".into(),
            headers: Some("headers".into()),
            created_at: Some("created_at".into()),
        }
    }
}

impl ColumnMap {
    /// The layout Debezium's outbox event router expects: `id`, `aggregatetype`, `aggregateid`,
    /// `type`, `payload`; no headers, no timestamp.
    pub fn debezium() -> Self {
        ColumnMap {
            id: "id".into(),
            aggregate_type: "aggregatetype".into(),
            aggregate_id: "aggregateid".into(),
            event_type: "type".into(),
            payload: "payload".into(),
            headers: None,
            created_at: None,
        }
    }

    /// The required columns, as (role, column name).
    fn required(&self) -> [(&'static str, &str); 5] {
        [
            ("id", &self.id),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
            ("payload", &self.payload),
        ]
    }
}

/// One outbox row, ready for routing.
///
/// Decoded from a table's insert, the text and byte fields are slices of the received pgoutput
/// message, validated in place and not copied (those copies were about a fifth of the relay's
/// allocations per event, issue 16); decoded from a message's JSON envelope, they own their text.
/// A slice keeps its whole receive buffer alive, so nothing may hold one past the row's
/// production: whatever outlives it (the producer's event ids, a refusal's memory) copies the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxRow {
    /// Event id, as Postgres prints it (a uuid's canonical text).
    pub id: ByteString,
    pub aggregate_type: ByteString,
    pub aggregate_id: ByteString,
    pub event_type: ByteString,
    /// The payload column's bytes as sent (jsonb/json/text: its text, unchanged; bytea: the raw
    /// bytes, un-hexed). Not validated as JSON: that is the router's job.
    pub payload: Bytes,
    /// Type OID of the payload column (see [`type_oid`]): tells the router how to read `payload`.
    pub payload_type_oid: u32,
    /// The headers column's bytes (a JSON object's text; bytea un-hexed), `None` when NULL, not
    /// mapped, or absent from the table. Not parsed.
    pub headers: Option<Bytes>,
    /// `created_at` as Postgres prints it (depends on the replication session's DateStyle/TimeZone).
    pub created_at: Option<ByteString>,
}

/// A row that cannot be published: dead-letter it (or stop, by configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox row {}: {reason}: {detail}", event_id.as_deref().unwrap_or("(no id)"))]
pub struct RowError {
    pub reason: Reason,
    /// The table column at fault.
    pub column: String,
    /// Human-readable explanation.
    pub detail: String,
    /// The row's event id, when its id column is readable text.
    pub event_id: Option<String>,
    /// Every column's original bytes.
    pub raw: RawRow,
}

/// The raw column values of a row, in table order, for a dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawRow {
    pub columns: Vec<RawColumn>,
}

/// One raw column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawColumn {
    pub name: String,
    pub type_oid: u32,
    /// The bytes as received (text format, or binary for a binary datum); `None` for NULL and
    /// unchanged TOAST.
    pub value: Option<Bytes>,
}

impl RawRow {
    /// The value of the column `name`: `None` if there is no such column, `Some(None)` if NULL.
    pub fn get(&self, name: &str) -> Option<Option<&Bytes>> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.as_ref())
    }
}

/// The publication or the table does not match the configuration: stop and tell the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("relation {namespace}.{name} (id {relation_id}) is published but is not the outbox table {expected}: the publication must contain the outbox table only")]
    WrongTable {
        relation_id: u32,
        namespace: String,
        name: String,
        /// `schema.table` configured.
        expected: String,
    },
    #[error("outbox table {relation} (id {relation_id}) has no column {column:?} (mapped as {role}): fix the column mapping or the table (a publication column list must include it)")]
    MissingColumn {
        relation_id: u32,
        /// `schema.table`.
        relation: String,
        /// The mapping field: `id`, `aggregate_type`, ...
        role: &'static str,
        column: String,
    },
}

/// Why an insert could not become an [`OutboxRow`], sorted by what the relay must do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The stream contradicts itself (unknown relation, column count mismatch): stop.
    #[error(transparent)]
    Protocol(#[from] DecodeError),
    /// The publication or table does not match the configuration: stop.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// This row cannot be published: dead-letter it (raw bytes included) or stop, by policy.
    #[error(transparent)]
    Row(#[from] RowError),
}

impl InsertError {
    /// True for a problem of this row only (dead-letter candidates).
    pub fn is_row_level(&self) -> bool {
        matches!(self, InsertError::Row(_))
    }
}

/// Tuple indexes of the mapped columns in one Relation.
#[derive(Debug, Clone, Copy)]
struct Indexes {
    id: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    event_type: usize,
    payload: usize,
    headers: Option<usize>,
    created_at: Option<usize>,
}

#[derive(Debug)]
struct Entry {
    rel: Relation,
    resolved: Result<Indexes, SchemaError>,
}

/// The relation cache and insert -> [`OutboxRow`] mapping. One per replication session (relation
/// ids are only meaningful with the Relation messages of the same session).
#[derive(Debug)]
pub struct OutboxDecoder {
    schema: String,
    table: String,
    columns: ColumnMap,
    relations: HashMap<u32, Entry>,
}

impl OutboxDecoder {
    /// A decoder for the outbox table `table_schema.table_name` (matched exactly, as Postgres
    /// stores the names), with this column mapping.
    pub fn new(table_schema: &str, table_name: &str, columns: ColumnMap) -> Self {
        OutboxDecoder {
            schema: table_schema.to_owned(),
            table: table_name.to_owned(),
            columns,
            relations: HashMap::new(),
        }
    }

    /// Remember a relation (replaces an older one with the same id), resolving the column indexes.
    /// Problems (another table, a missing column) are reported by [`Self::insert`] and
    /// [`Self::check_relation`].
    pub fn relation(&mut self, rel: Relation) {
        let resolved = self.resolve(&rel);
        self.relations.insert(rel.id, Entry { rel, resolved });
    }

    /// The latest Relation received for `id`.
    pub fn get_relation(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id).map(|e| &e.rel)
    }

    /// `(namespace, name)` of the relation `id`, for logs.
    pub fn relation_name(&self, id: u32) -> Option<(&str, &str)> {
        self.relations
            .get(&id)
            .map(|e| (e.rel.namespace.as_str(), e.rel.name.as_str()))
    }

    /// Whether inserts into relation `id` can be mapped: the error [`Self::insert`] would return
    /// for any row, if any. Lets the relay stop at the Relation message rather than the first row.
    pub fn check_relation(&self, id: u32) -> Result<(), InsertError> {
        let entry = self
            .relations
            .get(&id)
            .ok_or(DecodeError::UnknownRelation { relation_id: id })?;
        entry.resolved.as_ref().map_err(|e| e.clone())?;
        Ok(())
    }

    /// The configured column mapping.
    pub fn column_map(&self) -> &ColumnMap {
        &self.columns
    }

    fn resolve(&self, rel: &Relation) -> Result<Indexes, SchemaError> {
        if rel.namespace != self.schema || rel.name != self.table {
            return Err(SchemaError::WrongTable {
                relation_id: rel.id,
                namespace: rel.namespace.clone(),
                name: rel.name.clone(),
                expected: format!("{}.{}", self.schema, self.table),
            });
        }
        let find = |name: &str| rel.columns.iter().position(|c| c.name == name);
        let mut idx = [0usize; 5];
        for (slot, (role, column)) in idx.iter_mut().zip(self.columns.required()) {
            *slot = find(column).ok_or_else(|| SchemaError::MissingColumn {
                relation_id: rel.id,
                relation: format!("{}.{}", rel.namespace, rel.name),
                role,
                column: column.to_owned(),
            })?;
        }
        let optional = |role: &str, column: &Option<String>| {
            let column = column.as_deref()?;
            let found = find(column);
            if found.is_none() {
                tracing::warn!(
                    table = %format!("{}.{}", rel.namespace, rel.name),
                    column,
                    role,
                    "mapped optional outbox column is absent from the table: read as NULL"
                );
            }
            found
        };
        let [id, aggregate_type, aggregate_id, event_type, payload] = idx;
        Ok(Indexes {
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            headers: optional("headers", &self.columns.headers),
            created_at: optional("created_at", &self.columns.created_at),
        })
    }

    /// Map an insert to an outbox row. See [`InsertError`] for what each error means.
    pub fn insert(&self, relation_id: u32, tuple: Tuple) -> Result<OutboxRow, InsertError> {
        let entry = self
            .relations
            .get(&relation_id)
            .ok_or(DecodeError::UnknownRelation { relation_id })?;
        let rel = &entry.rel;
        if tuple.0.len() != rel.columns.len() {
            return Err(DecodeError::ColumnCount {
                relation_id,
                relation: format!("{}.{}", rel.namespace, rel.name),
                expected: rel.columns.len(),
                actual: tuple.0.len(),
            }
            .into());
        }
        let ix = entry.resolved.as_ref().map_err(|e| e.clone())?;
        map_row(rel, ix, &tuple).map_err(|f| row_error(rel, ix, tuple, f).into())
    }
}

/// A row-level failure before the (cold) construction of its [`RowError`].
struct Failure {
    kind: Reason,
    col: usize,
    role: &'static str,
    why: &'static str,
}

fn map_row(rel: &Relation, ix: &Indexes, tuple: &Tuple) -> Result<OutboxRow, Failure> {
    let type_of = |col: usize| rel.columns.get(col).map_or(0, |c| c.type_oid);
    let id = string(required(tuple, ix.id, "id")?, ix.id, "id")?;
    let aggregate_type = string(
        required(tuple, ix.aggregate_type, "aggregate_type")?,
        ix.aggregate_type,
        "aggregate_type",
    )?;
    let aggregate_id = string(
        required(tuple, ix.aggregate_id, "aggregate_id")?,
        ix.aggregate_id,
        "aggregate_id",
    )?;
    if aggregate_id.is_empty() {
        return Err(Failure {
            kind: Reason::EmptyAggregateId,
            col: ix.aggregate_id,
            role: "aggregate_id",
            why: "is empty: it is the Kafka key",
        });
    }
    let event_type = string(
        required(tuple, ix.event_type, "event_type")?,
        ix.event_type,
        "event_type",
    )?;
    let payload_type_oid = type_of(ix.payload);
    let payload = value(
        required(tuple, ix.payload, "payload")?,
        payload_type_oid,
        ix.payload,
        "payload",
    )?;
    let headers = match ix.headers {
        Some(col) => match optional(tuple, col, "headers")? {
            Some(b) => Some(value(b, type_of(col), col, "headers")?),
            None => None,
        },
        None => None,
    };
    let created_at = match ix.created_at {
        Some(col) => match optional(tuple, col, "created_at")? {
            Some(b) => Some(string(b, col, "created_at")?),
            None => None,
        },
        None => None,
    };
    Ok(OutboxRow {
        id,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        payload_type_oid,
        headers,
        created_at,
    })
}

/// A text datum of a column that may be NULL.
fn optional<'t>(
    tuple: &'t Tuple,
    col: usize,
    role: &'static str,
) -> Result<Option<&'t Bytes>, Failure> {
    let fail = |kind, why| Failure {
        kind,
        col,
        role,
        why,
    };
    match tuple.0.get(col) {
        Some(Datum::Text(b)) => Ok(Some(b)),
        Some(Datum::Null) | None => Ok(None),
        Some(Datum::Binary(_)) => Err(fail(
            Reason::BinaryFormat,
            "arrived in binary format; the relay reads text format only",
        )),
        Some(Datum::UnchangedToast) => Err(fail(
            Reason::UnchangedToast,
            "arrived as an unchanged TOAST value, which an insert cannot carry",
        )),
    }
}

/// A text datum of a column that must not be NULL.
fn required<'t>(tuple: &'t Tuple, col: usize, role: &'static str) -> Result<&'t Bytes, Failure> {
    optional(tuple, col, role)?.ok_or(Failure {
        kind: Reason::NullColumn,
        col,
        role,
        why: "is NULL",
    })
}

fn string(b: &Bytes, col: usize, role: &'static str) -> Result<ByteString, Failure> {
    match ByteString::try_from(b.clone()) {
        Ok(s) => Ok(s),
        Err(_) => Err(Failure {
            kind: Reason::InvalidUtf8,
            col,
            role,
            why: "is not valid UTF-8",
        }),
    }
}

/// The bytes of a payload-like column: bytea un-hexed, anything else kept as its (UTF-8) text.
fn value(b: &Bytes, type_oid: u32, col: usize, role: &'static str) -> Result<Bytes, Failure> {
    if type_oid == type_oid::BYTEA {
        return decode_bytea(b).map(Bytes::from).map_err(|why| Failure {
            kind: Reason::InvalidBytea,
            col,
            role,
            why,
        });
    }
    match std::str::from_utf8(b) {
        Ok(_) => Ok(b.clone()),
        Err(_) => Err(Failure {
            kind: Reason::InvalidUtf8,
            col,
            role,
            why: "is not valid UTF-8",
        }),
    }
}

/// The bytes of a bytea in text format: hex (`\x0a0b`, the default `bytea_output`) or escape
/// (`a\000\\`, `bytea_output = escape`).
pub(crate) fn decode_bytea(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err("is bytea hex text with an odd number of digits");
        }
        let digit = |c: u8| -> Result<u8, &'static str> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err("is bytea hex text with a non-hex digit"),
            }
        };
        return hex
            .chunks_exact(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match text.get(i + 1..i + 4) {
            _ if text.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(&[a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                i += 4;
            }
            _ => return Err("is bytea escape text with an invalid backslash sequence"),
        }
    }
    Ok(out)
}

/// Builds the dead-letter error for a failed row (cold path: allocates freely).
fn row_error(rel: &Relation, ix: &Indexes, tuple: Tuple, f: Failure) -> RowError {
    let column = rel
        .columns
        .get(f.col)
        .map_or_else(String::new, |c| c.name.clone());
    let event_id = match tuple.0.get(ix.id) {
        Some(Datum::Text(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
        _ => None,
    };
    let raw = RawRow {
        columns: rel
            .columns
            .iter()
            .zip(tuple.0)
            .map(|(c, d)| RawColumn {
                name: c.name.clone(),
                type_oid: c.type_oid,
                value: match d {
                    Datum::Text(b) | Datum::Binary(b) => Some(b),
                    Datum::Null | Datum::UnchangedToast => None,
                },
            })
            .collect(),
    };
    RowError {
        reason: f.kind,
        detail: format!(
            "column {column:?} of {}.{} (mapped as {}) {}",
            rel.namespace, rel.name, f.role, f.why
        ),
        column,
        event_id,
        raw,
    }
}
