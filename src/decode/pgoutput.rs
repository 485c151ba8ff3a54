//! pgoutput: decodes one logical replication message (protocol version 1) from raw bytes.
//!
//! Wire format: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//! Integers are big-endian, strings are NUL-terminated and must be UTF-8 (the walsender converts them
//! to the client encoding, which the source sets to UTF8). Tuples are decoded in text format; a
//! binary datum (`'b'`) is decoded too, but left to the caller to reject.
//!
//! The decoder never panics and never reads past the input: every read is bounds-checked and each
//! error names the message, the field and the byte offset. Datum and logical-message contents are
//! `Bytes` slices of the input buffer (a reference count, not a copy); only names are copied
//! into `String`s, and those come from rare messages (Relation, Type, Origin, Message prefix).
//!
//! Messages of protocol versions 2+ (streaming, two-phase) are reported as
//! [`DecodeError::Unsupported`]: they can only appear if the slot was started with options we never
//! send, so they mean a broken invariant, not data to skip.

use bytes::Bytes;

/// A WAL position (`pg_lsn`) as a plain integer.
pub type Lsn = u64;

/// One decoded pgoutput message (protocol version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    /// Start of a transaction: `final_lsn` is the LSN of its commit record.
    Begin {
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC (the Postgres epoch).
        commit_ts_micros: i64,
        xid: u32,
    },
    /// End of a transaction: restart from `end_lsn` (the end of the commit record).
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts_micros: i64,
    },
    /// The transaction came from another node (replication origin).
    Origin { lsn: Lsn, name: String },
    /// The layout of a relation; precedes the first change of it in a session and follows DDL.
    Relation(Relation),
    /// A user-defined type referenced by a later Relation.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    /// A new row.
    Insert { relation_id: u32, tuple: Tuple },
    /// A changed row; its tuples are validated but not kept (the publication is insert-only).
    Update { relation_id: u32 },
    /// A deleted row; its key tuple is validated but not kept.
    Delete { relation_id: u32 },
    /// `TRUNCATE` of these relations (the cascade / restart-identity options are not kept).
    Truncate { relation_ids: Vec<u32> },
    /// A `pg_logical_emit_message` message.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

impl PgOutput {
    /// The message's name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PgOutput::Begin { .. } => "begin",
            PgOutput::Commit { .. } => "commit",
            PgOutput::Origin { .. } => "origin",
            PgOutput::Relation(_) => "relation",
            PgOutput::Type { .. } => "type",
            PgOutput::Insert { .. } => "insert",
            PgOutput::Update { .. } => "update",
            PgOutput::Delete { .. } => "delete",
            PgOutput::Truncate { .. } => "truncate",
            PgOutput::Message { .. } => "message",
        }
    }
}

/// A Relation message: a table's identity and the columns its tuples carry, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Relation {
    /// The table's OID: what Insert/Update/Delete refer to.
    pub id: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `REPLICA IDENTITY`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Column {
    /// 1 when the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod` (-1 when none).
    pub type_modifier: i32,
}

/// The column values of one row, in the order of the relation's columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Datum>);

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL (`'n'`).
    Null,
    /// A TOASTed value that did not change (`'u'`): only in updates.
    UnchangedToast,
    /// The value in text format (`'t'`), as the type's output function printed it.
    Text(Bytes),
    /// The value in binary format (`'b'`): never requested by us.
    Binary(Bytes),
}

/// Why a pgoutput message could not be decoded. Always a protocol-level problem: stop, don't skip.
///
/// `message` names the message type being decoded (`"Insert"`, ...), `what` the field, `offset`
/// the byte offset of that field in the message (the tag is byte 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ends (or a string lacks its NUL terminator) before a field is complete.
    #[error("pgoutput {message}: truncated at byte {offset} reading {what}")]
    Truncated {
        message: &'static str,
        what: &'static str,
        offset: usize,
    },
    /// A message tag that protocol version 1 does not define.
    #[error("pgoutput: unknown message tag {tag:#04x} ({})", printable(*tag))]
    UnknownMessage { tag: u8 },
    /// A message of a later protocol version (streaming or two-phase), which we never ask for.
    #[error("pgoutput: unsupported {what} message (tag {}); the slot must be started with proto_version 1, without streaming or two_phase", printable(*tag))]
    Unsupported { tag: u8, what: &'static str },
    /// A name that is not UTF-8.
    #[error("pgoutput {message}: {what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        what: &'static str,
        offset: usize,
    },
    /// Bytes left over after a complete message.
    #[error("pgoutput {message}: {count} trailing byte(s) at byte {offset}")]
    Trailing {
        message: &'static str,
        offset: usize,
        count: usize,
    },
    /// A negative length where a length is expected.
    #[error("pgoutput {message}: negative {what} {len} at byte {offset}")]
    NegativeLength {
        message: &'static str,
        what: &'static str,
        len: i32,
        offset: usize,
    },
    /// An unexpected marker byte: a tuple datum kind other than `n`/`u`/`t`/`b`, or a tuple
    /// marker other than `N`/`K`/`O`.
    #[error("pgoutput {message}: invalid {what} {} at byte {offset}", printable(*value))]
    InvalidMarker {
        message: &'static str,
        what: &'static str,
        value: u8,
        offset: usize,
    },
    /// A change refers to a relation id whose Relation message was never received.
    #[error("pgoutput: change for relation id {relation_id} before any Relation message for it")]
    UnknownRelation { relation_id: u32 },
    /// A tuple does not have as many columns as its Relation message announced.
    #[error("pgoutput: tuple for relation {relation} (id {relation_id}) has {actual} column(s), its Relation message announced {expected}")]
    ColumnCount {
        relation_id: u32,
        relation: String,
        expected: usize,
        actual: usize,
    },
}

fn printable(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("{b:#04x}")
    }
}

/// Decodes one pgoutput message (its tag is the first byte). Never panics, on any input.
pub fn decode(data: Bytes) -> Result<PgOutput, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Truncated {
            message: "message",
            what: "tag",
            offset: 0,
        });
    };
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => {
            return Err(match unsupported(other) {
                Some(what) => DecodeError::Unsupported { tag: other, what },
                None => DecodeError::UnknownMessage { tag: other },
            })
        }
    };
    let mut r = Reader {
        buf: data,
        pos: 1,
        message,
    };
    let out = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_ts_micros: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => PgOutput::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_ts_micros: r.i64("commit timestamp")?,
        },
        b'O' => PgOutput::Origin {
            lsn: r.u64("origin commit LSN")?,
            name: r.string("origin name")?,
        },
        b'R' => PgOutput::Relation(r.relation()?),
        b'Y' => PgOutput::Type {
            oid: r.u32("type OID")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation id")?;
            r.marker(b"N", "new tuple marker")?;
            PgOutput::Insert {
                relation_id,
                tuple: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let m = r.marker(b"KON", "tuple marker")?;
            r.tuple()?;
            if m != b'N' {
                r.marker(b"N", "new tuple marker")?;
                r.tuple()?;
            }
            PgOutput::Update { relation_id }
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            r.marker(b"KO", "old tuple marker")?;
            r.tuple()?;
            PgOutput::Delete { relation_id }
        }
        b'T' => {
            let n = r.u32("relation count")? as usize;
            r.u8("options")?;
            // Bound the allocation by what the input can hold (4 bytes per id).
            let mut relation_ids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                relation_ids.push(r.u32("relation id")?);
            }
            PgOutput::Truncate { relation_ids }
        }
        // b'M'
        _ => {
            let flags = r.u8("flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.len("content length")?;
            PgOutput::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            }
        }
    };
    r.finish()?;
    Ok(out)
}

/// Tags of protocol versions 2+ (streaming: v2, two-phase: v3, streamed prepare: v3).
fn unsupported(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return None,
    })
}

/// A bounds-checked cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: &'static str) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            what,
            offset: self.pos,
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self
            .pos
            .checked_add(N)
            .ok_or_else(|| self.truncated(what))?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(what))?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// An Int32 length, rejected when negative.
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let len = self.i32(what)?;
        usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            what,
            len,
            offset,
        })
    }

    /// `n` bytes as a slice of the input (no copy).
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.truncated(what));
        };
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            what,
            offset: self.pos,
        })?;
        let s = s.to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// One byte that must be one of `allowed`.
    fn marker(&mut self, allowed: &[u8], what: &'static str) -> Result<u8, DecodeError> {
        let offset = self.pos;
        let value = self.u8(what)?;
        if allowed.contains(&value) {
            Ok(value)
        } else {
            Err(DecodeError::InvalidMarker {
                message: self.message,
                what,
                value,
                offset,
            })
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = self.u8("replica identity")?;
        let n = usize::from(self.u16("column count")?);
        // Each column takes at least 10 bytes: bound the allocation by the input.
        let mut columns = Vec::with_capacity(n.min(self.remaining() / 10));
        for _ in 0..n {
            columns.push(Column {
                flags: self.u8("column flags")?,
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for `t`/`b`, a length and
    /// the value.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = usize::from(self.u16("tuple column count")?);
        // Each datum takes at least 1 byte: bound the allocation by the input.
        let mut datums = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let offset = self.pos;
            let datum = match self.u8("tuple datum kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.len("tuple datum length")?;
                    Datum::Text(self.bytes(len, "tuple datum value")?)
                }
                b'b' => {
                    let len = self.len("tuple datum length")?;
                    Datum::Binary(self.bytes(len, "tuple datum value")?)
                }
                value => {
                    return Err(DecodeError::InvalidMarker {
                        message: self.message,
                        what: "tuple datum kind",
                        value,
                        offset,
                    })
                }
            };
            datums.push(datum);
        }
        Ok(Tuple(datums))
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing {
                message: self.message,
                offset: self.pos,
                count,
            }),
        }
    }
}
