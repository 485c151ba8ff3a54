//! Tests of the pgoutput decoder and the outbox mapping: hand-built messages, every error kind,
//! truncation at every length, and property tests (no panic on any input, encode -> decode round trip).
//!
//! Shared builders live here; the cases are split by layer: [`pgoutput`] (bytes per the protocol
//! docs, and every error), [`outbox`] (the column mapping and its errors by class), and
//! [`postgres_bytes`] (messages captured from a real Postgres).

#![allow(clippy::unwrap_used)]

mod outbox;
mod pgoutput;
mod postgres_bytes;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::encode::{encode, put_relation, put_tuple};
use super::*;
use crate::reason::Reason;

// ---------------------------------------------------------------- helpers

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn col(name: &str, type_oid: u32) -> Column {
    Column {
        flags: 0,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    }
}

/// Our own outbox table, as `sql/` creates it.
fn outbox_relation(id: u32) -> Relation {
    Relation {
        id,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: vec![
            Column {
                flags: 1,
                ..col("id", type_oid::UUID)
            },
            col("aggregate_type", type_oid::TEXT),
            col("aggregate_id", type_oid::TEXT),
            col("event_type", type_oid::TEXT),
            col("payload", type_oid::JSONB),
            col("headers", type_oid::JSONB),
            col("created_at", type_oid::TIMESTAMPTZ),
        ],
    }
}

const ID: &str = "4f6c2a9e-3b1d-4c55-9a0e-7d2f1b8c6e01";

fn outbox_tuple() -> Tuple {
    Tuple(vec![
        text(ID),
        text("booking"),
        text("B-42"),
        text("BookingCreated"),
        text(r#"{"car": "VW Polo", "days": 3}"#),
        text(r#"{"traceparent": "00-abc-def-01"}"#),
        text("2026-11-26 10:00:00.123456+00"),
    ])
}

fn decoder() -> OutboxDecoder {
    let mut d = OutboxDecoder::new("public", "outbox", ColumnMap::default());
    d.relation(outbox_relation(16384));
    d
}

fn row_err(e: InsertError) -> RowError {
    match e {
        InsertError::Row(r) => r,
        other => panic!("expected a row error, got {other:?}"),
    }
}

/// One valid message of every type.
fn samples() -> Vec<PgOutput> {
    vec![
        PgOutput::Begin {
            final_lsn: 0x0000_0001_0000_1000,
            commit_ts_micros: 817_000_000_000_000,
            xid: 742,
        },
        PgOutput::Commit {
            flags: 0,
            commit_lsn: 0x1_0000_1000,
            end_lsn: 0x1_0000_1030,
            commit_ts_micros: 817_000_000_000_000,
        },
        PgOutput::Origin {
            lsn: 77,
            name: "node_a".into(),
        },
        PgOutput::Relation(outbox_relation(16384)),
        PgOutput::Type {
            oid: 90001,
            namespace: "public".into(),
            name: "mood".into(),
        },
        PgOutput::Insert {
            relation_id: 16384,
            tuple: outbox_tuple(),
        },
        PgOutput::Insert {
            relation_id: 16384,
            tuple: Tuple(vec![
                Datum::Null,
                Datum::UnchangedToast,
                text(""),
                Datum::Binary(Bytes::from_static(&[0, 1, 2])),
            ]),
        },
        PgOutput::Update { relation_id: 16384 },
        PgOutput::Delete { relation_id: 16384 },
        PgOutput::Truncate {
            relation_ids: vec![16384, 16390],
        },
        PgOutput::Message {
            transactional: true,
            lsn: 0x1_0000_2000,
            prefix: "outbox".into(),
            content: Bytes::from_static(br#"{"a":1}"#),
        },
        PgOutput::Message {
            transactional: false,
            lsn: 5,
            prefix: String::new(),
            content: Bytes::new(),
        },
    ]
}

/// Update/Delete with old tuples, which `encode` does not produce.
fn update_delete_variants() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for markers in [&b"N"[..], b"KN", b"ON"] {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(7);
        for m in markers {
            b.put_u8(*m);
            put_tuple(&mut b, &outbox_tuple());
        }
        out.push(b.to_vec());
    }
    for m in [b'K', b'O'] {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_u32(7);
        b.put_u8(m);
        put_tuple(&mut b, &Tuple(vec![text(ID), Datum::Null]));
        out.push(b.to_vec());
    }
    out
}

fn all_valid_messages() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = samples().iter().map(|m| encode(m).to_vec()).collect();
    v.extend(update_delete_variants());
    v
}
