//! encode: builds pgoutput messages (protocol version 1), the inverse of [`super::pgoutput::decode`].
//!
//! For tests and benchmarks (synthetic replication streams); the relay itself never encodes.
//! Strings must not contain NUL (Postgres names cannot); Update and Delete, which [`PgOutput`] keeps
//! no tuples for, are encoded with an empty new / key tuple.

use bytes::{BufMut, Bytes, BytesMut};

use super::pgoutput::{Datum, PgOutput, Relation, Tuple};

/// Encodes one message, tag first, as the walsender sends it in an XLogData payload.
pub fn encode(msg: &PgOutput) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    match msg {
        PgOutput::Begin {
            final_lsn,
            commit_ts_micros,
            xid,
        } => {
            b.put_u8(b'B');
            b.put_u64(*final_lsn);
            b.put_i64(*commit_ts_micros);
            b.put_u32(*xid);
        }
        PgOutput::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_ts_micros,
        } => {
            b.put_u8(b'C');
            b.put_u8(*flags);
            b.put_u64(*commit_lsn);
            b.put_u64(*end_lsn);
            b.put_i64(*commit_ts_micros);
        }
        PgOutput::Origin { lsn, name } => {
            b.put_u8(b'O');
            b.put_u64(*lsn);
            put_str(&mut b, name);
        }
        PgOutput::Relation(rel) => put_relation(&mut b, rel),
        PgOutput::Type {
            oid,
            namespace,
            name,
        } => {
            b.put_u8(b'Y');
            b.put_u32(*oid);
            put_str(&mut b, namespace);
            put_str(&mut b, name);
        }
        PgOutput::Insert { relation_id, tuple } => {
            b.put_u8(b'I');
            b.put_u32(*relation_id);
            b.put_u8(b'N');
            put_tuple(&mut b, tuple);
        }
        PgOutput::Update { relation_id } => {
            b.put_u8(b'U');
            b.put_u32(*relation_id);
            b.put_u8(b'N');
            put_tuple(&mut b, &Tuple::default());
        }
        PgOutput::Delete { relation_id } => {
            b.put_u8(b'D');
            b.put_u32(*relation_id);
            b.put_u8(b'K');
            put_tuple(&mut b, &Tuple::default());
        }
        PgOutput::Truncate { relation_ids } => {
            b.put_u8(b'T');
            b.put_u32(relation_ids.len() as u32);
            b.put_u8(0);
            for id in relation_ids {
                b.put_u32(*id);
            }
        }
        PgOutput::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            b.put_u8(b'M');
            b.put_u8(u8::from(*transactional));
            b.put_u64(*lsn);
            put_str(&mut b, prefix);
            b.put_i32(content.len() as i32);
            b.put_slice(content);
        }
    }
    b.freeze()
}

/// A Relation message.
pub fn put_relation(b: &mut BytesMut, rel: &Relation) {
    b.put_u8(b'R');
    b.put_u32(rel.id);
    put_str(b, &rel.namespace);
    put_str(b, &rel.name);
    b.put_u8(rel.replica_identity);
    b.put_u16(rel.columns.len() as u16);
    for c in &rel.columns {
        b.put_u8(c.flags);
        put_str(b, &c.name);
        b.put_u32(c.type_oid);
        b.put_i32(c.type_modifier);
    }
}

/// TupleData: column count, then each datum.
pub fn put_tuple(b: &mut BytesMut, tuple: &Tuple) {
    b.put_u16(tuple.0.len() as u16);
    for d in &tuple.0 {
        match d {
            Datum::Null => b.put_u8(b'n'),
            Datum::UnchangedToast => b.put_u8(b'u'),
            Datum::Text(v) => {
                b.put_u8(b't');
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            Datum::Binary(v) => {
                b.put_u8(b'b');
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
}

/// A NUL-terminated string.
pub fn put_str(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}
