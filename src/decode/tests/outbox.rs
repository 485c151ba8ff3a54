//! The outbox mapping: relation + insert -> `OutboxRow`, and its errors by class.

#![allow(clippy::unwrap_used)]

use super::*;

// ---------------------------------------------------------------- outbox: mapping

#[test]
fn relation_and_insert_round_trip_to_an_outbox_row() {
    let mut d = OutboxDecoder::new("public", "outbox", ColumnMap::default());
    let PgOutput::Relation(rel) =
        decode(encode(&PgOutput::Relation(outbox_relation(16384)))).unwrap()
    else {
        panic!()
    };
    d.relation(rel);
    assert_eq!(d.relation_name(16384), Some(("public", "outbox")));
    assert!(d.check_relation(16384).is_ok());

    let buf = encode(&PgOutput::Insert {
        relation_id: 16384,
        tuple: outbox_tuple(),
    });
    let PgOutput::Insert { relation_id, tuple } = decode(buf.clone()).unwrap() else {
        panic!()
    };
    let row = d.insert(relation_id, tuple).unwrap();
    assert_eq!(
        row,
        OutboxRow {
            id: ID.into(),
            aggregate_type: "booking".into(),
            aggregate_id: "B-42".into(),
            event_type: "BookingCreated".into(),
            payload: Bytes::from_static(br#"{"car": "VW Polo", "days": 3}"#),
            payload_type_oid: type_oid::JSONB,
            headers: Some(Bytes::from_static(br#"{"traceparent": "00-abc-def-01"}"#)),
            created_at: Some("2026-11-26 10:00:00.123456+00".into()),
        }
    );
    // The payload is a slice of the replication buffer, not a copy.
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    assert!(range.contains(&(row.payload.as_ptr() as usize)));
}

#[test]
fn debezium_layout() {
    let rel = Relation {
        id: 20001,
        namespace: "inventory".into(),
        name: "outboxevent".into(),
        replica_identity: b'd',
        columns: vec![
            col("id", type_oid::UUID),
            col("aggregatetype", type_oid::VARCHAR),
            col("aggregateid", type_oid::VARCHAR),
            col("type", type_oid::VARCHAR),
            col("timestamp", type_oid::TIMESTAMP),
            col("payload", type_oid::JSONB),
        ],
    };
    let mut d = OutboxDecoder::new("inventory", "outboxevent", ColumnMap::debezium());
    d.relation(rel);
    let row = d
        .insert(
            20001,
            Tuple(vec![
                text(ID),
                text("Order"),
                text("1"),
                text("OrderCreated"),
                text("2026-11-26 10:00:00"),
                text(r#"{"id": 1}"#),
            ]),
        )
        .unwrap();
    assert_eq!(row.aggregate_type, "Order");
    assert_eq!(row.aggregate_id, "1");
    assert_eq!(row.event_type, "OrderCreated");
    assert_eq!(&row.payload[..], br#"{"id": 1}"#);
    assert_eq!(row.headers, None);
    assert_eq!(row.created_at, None);
}

#[test]
fn default_map_tolerates_absent_optional_columns() {
    let mut rel = outbox_relation(5);
    rel.columns.truncate(5); // no headers, no created_at
    let mut d = OutboxDecoder::new("public", "outbox", ColumnMap::default());
    d.relation(rel);
    let mut t = outbox_tuple();
    t.0.truncate(5);
    let row = d.insert(5, t).unwrap();
    assert_eq!((row.headers, row.created_at), (None, None));
}

#[test]
fn null_optional_columns_read_as_none() {
    let mut t = outbox_tuple();
    t.0[5] = Datum::Null;
    t.0[6] = Datum::Null;
    let row = decoder().insert(16384, t).unwrap();
    assert_eq!((row.headers, row.created_at), (None, None));
}

#[test]
fn bytea_payload_is_unhexed_and_text_payload_is_kept() {
    let mut rel = outbox_relation(9);
    rel.columns[4].type_oid = type_oid::BYTEA;
    let mut d = decoder();
    d.relation(rel);
    let mut t = outbox_tuple();
    t.0[4] = text(r"\x7b7D00ff");
    let row = d.insert(9, t).unwrap();
    assert_eq!(&row.payload[..], b"{}\x00\xff");
    assert_eq!(row.payload_type_oid, type_oid::BYTEA);

    let mut t = outbox_tuple();
    t.0[4] = text(r"a\\b\000\377");
    assert_eq!(&d.insert(9, t).unwrap().payload[..], b"a\\b\x00\xff");

    // A text payload that looks like hex is left alone.
    let mut t = outbox_tuple();
    t.0[4] = text(r"\x00");
    let row = decoder().insert(16384, t).unwrap();
    assert_eq!(&row.payload[..], br"\x00");
}

#[test]
fn bytea_decoding() {
    use crate::decode::outbox::decode_bytea;
    assert_eq!(decode_bytea(b"\\x").unwrap(), b"");
    assert_eq!(decode_bytea(b"").unwrap(), b"");
    assert_eq!(decode_bytea(b"\\xDEADbeef").unwrap(), b"\xde\xad\xbe\xef");
    assert!(decode_bytea(b"\\x0").is_err());
    assert!(decode_bytea(b"\\xzz").is_err());
    assert_eq!(decode_bytea(b"ab\\\\\\101").unwrap(), b"ab\\A");
    assert!(decode_bytea(b"\\").is_err());
    assert!(decode_bytea(b"\\4").is_err());
    assert!(decode_bytea(b"\\400").is_err());
    assert!(decode_bytea(b"\\08").is_err());
}

#[test]
fn a_new_relation_message_replaces_the_old_one() {
    let mut d = decoder();
    // ALTER TABLE: a column added in front of payload changes the indexes.
    let mut rel = outbox_relation(16384);
    rel.columns.insert(4, col("tenant", type_oid::TEXT));
    d.relation(rel);
    let mut t = outbox_tuple();
    t.0.insert(4, text("acme"));
    let row = d.insert(16384, t).unwrap();
    assert_eq!(&row.payload[..], br#"{"car": "VW Polo", "days": 3}"#);
    assert_eq!(d.get_relation(16384).unwrap().columns.len(), 8);
    // And the old tuple shape is now a protocol error.
    assert!(matches!(
        d.insert(16384, outbox_tuple()),
        Err(InsertError::Protocol(DecodeError::ColumnCount {
            expected: 8,
            actual: 7,
            ..
        }))
    ));
}

// ---------------------------------------------------------------- outbox: errors by class

#[test]
fn unknown_relation_is_a_protocol_error() {
    let e = decoder().insert(1, outbox_tuple()).unwrap_err();
    assert_eq!(
        e,
        InsertError::Protocol(DecodeError::UnknownRelation { relation_id: 1 })
    );
    assert!(!e.is_row_level());
    assert!(decoder().check_relation(1).is_err());
}

#[test]
fn column_count_mismatch_is_a_protocol_error() {
    let mut t = outbox_tuple();
    t.0.pop();
    let e = decoder().insert(16384, t).unwrap_err();
    assert!(matches!(
        e,
        InsertError::Protocol(DecodeError::ColumnCount {
            relation_id: 16384,
            expected: 7,
            actual: 6,
            ..
        })
    ));
    assert!(e.to_string().contains("public.outbox"), "{e}");
}

#[test]
fn another_table_is_a_schema_error() {
    let mut d = decoder();
    let mut rel = outbox_relation(300);
    rel.name = "bookings".into();
    d.relation(rel);
    let e = d.insert(300, outbox_tuple()).unwrap_err();
    assert!(
        matches!(&e, InsertError::Schema(SchemaError::WrongTable { relation_id: 300, name, .. }) if name == "bookings")
    );
    assert!(e.to_string().contains("public.outbox"), "{e}");
    assert_eq!(d.check_relation(300), Err(e));
    // Same name in another schema is another table.
    let mut rel = outbox_relation(301);
    rel.namespace = "audit".into();
    d.relation(rel);
    assert!(matches!(
        d.insert(301, outbox_tuple()),
        Err(InsertError::Schema(SchemaError::WrongTable { .. }))
    ));
}

#[test]
fn missing_required_column_is_a_schema_error() {
    for (i, role) in [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
    ]
    .iter()
    .enumerate()
    {
        let mut rel = outbox_relation(16384);
        rel.columns.remove(i);
        let mut d = OutboxDecoder::new("public", "outbox", ColumnMap::default());
        d.relation(rel);
        let mut t = outbox_tuple();
        t.0.remove(i);
        let e = d.insert(16384, t).unwrap_err();
        match &e {
            InsertError::Schema(SchemaError::MissingColumn {
                role: r, column, ..
            }) => {
                assert_eq!(r, role);
                assert_eq!(column, role);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(role), "{e}");
        assert!(!e.is_row_level());
    }
}

#[test]
fn null_in_each_required_column_is_a_row_error() {
    for (i, role) in [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
    ]
    .iter()
    .enumerate()
    {
        let mut t = outbox_tuple();
        t.0[i] = Datum::Null;
        let e = decoder().insert(16384, t).unwrap_err();
        assert!(e.is_row_level());
        let r = row_err(e);
        assert_eq!(r.reason, Reason::NullColumn);
        assert_eq!(r.reason.code(), "null_column");
        assert_eq!(&r.column, role);
        assert!(r.detail.contains("NULL"), "{}", r.detail);
        assert_eq!(r.event_id.as_deref(), (i != 0).then_some(ID));
        // The raw row keeps every column, NULL included.
        assert_eq!(r.raw.columns.len(), 7);
        assert_eq!(r.raw.get(role), Some(None));
        assert_eq!(r.raw.get("nope"), None);
    }
}

#[test]
fn empty_aggregate_id_is_a_row_error() {
    let mut t = outbox_tuple();
    t.0[2] = text("");
    let r = row_err(decoder().insert(16384, t).unwrap_err());
    assert_eq!(r.reason, Reason::EmptyAggregateId);
    assert_eq!(r.column, "aggregate_id");
    assert_eq!(r.event_id.as_deref(), Some(ID));
}

#[test]
fn binary_datum_is_a_row_error() {
    let mut t = outbox_tuple();
    t.0[4] = Datum::Binary(Bytes::from_static(b"\x01{}"));
    let r = row_err(decoder().insert(16384, t).unwrap_err());
    assert_eq!(r.reason, Reason::BinaryFormat);
    assert_eq!(r.column, "payload");
    assert_eq!(
        r.raw.get("payload"),
        Some(Some(&Bytes::from_static(b"\x01{}")))
    );
    // Also in an optional column.
    let mut t = outbox_tuple();
    t.0[5] = Datum::Binary(Bytes::from_static(b"\x01{}"));
    assert_eq!(
        row_err(decoder().insert(16384, t).unwrap_err()).column,
        "headers"
    );
}

#[test]
fn unchanged_toast_is_a_row_error() {
    let mut t = outbox_tuple();
    t.0[4] = Datum::UnchangedToast;
    let r = row_err(decoder().insert(16384, t).unwrap_err());
    assert_eq!(r.reason, Reason::UnchangedToast);
    assert_eq!(r.raw.get("payload"), Some(None));
}

#[test]
fn invalid_utf8_is_a_row_error_and_keeps_the_raw_bytes() {
    for i in [0usize, 1, 2, 3, 4, 5, 6] {
        let mut t = outbox_tuple();
        t.0[i] = Datum::Text(Bytes::from_static(b"caf\xe9"));
        let r = row_err(decoder().insert(16384, t).unwrap_err());
        assert_eq!(r.reason, Reason::InvalidUtf8, "column {i}");
        assert_eq!(r.column, outbox_relation(1).columns[i].name);
        assert_eq!(r.raw.columns[i].value, Some(Bytes::from_static(b"caf\xe9")));
        assert_eq!(r.event_id.is_none(), i == 0);
    }
}

#[test]
fn invalid_bytea_is_a_row_error() {
    let mut rel = outbox_relation(9);
    rel.columns[4].type_oid = type_oid::BYTEA;
    let mut d = decoder();
    d.relation(rel);
    let mut t = outbox_tuple();
    t.0[4] = text(r"\x7");
    let r = row_err(d.insert(9, t).unwrap_err());
    assert_eq!(r.reason, Reason::InvalidBytea);
    assert_eq!(r.reason.code(), "invalid_bytea");
    assert_eq!(
        r.raw.get("payload"),
        Some(Some(&Bytes::from_static(br"\x7")))
    );
    assert!(r.to_string().contains(ID), "{r}");
}

#[test]
fn every_row_error_code_is_distinct() {
    let kinds = [
        Reason::NullColumn,
        Reason::EmptyAggregateId,
        Reason::BinaryFormat,
        Reason::InvalidUtf8,
        Reason::InvalidBytea,
        Reason::UnchangedToast,
    ];
    let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
    assert_eq!(codes.len(), kinds.len());
}

// ---------------------------------------------------------------- property tests

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Text(v.into())),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Binary(v.into())),
    ]
}

fn column() -> impl Strategy<Value = Column> {
    (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| Column {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    )
}

fn relation() -> impl Strategy<Value = Relation> {
    (
        any::<u32>(),
        name(),
        name(),
        any::<u8>(),
        prop::collection::vec(column(), 0..12),
    )
        .prop_map(
            |(id, namespace, name, replica_identity, columns)| Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            },
        )
}

fn message() -> impl Strategy<Value = PgOutput> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(
            |(final_lsn, commit_ts_micros, xid)| {
                PgOutput::Begin {
                    final_lsn,
                    commit_ts_micros,
                    xid,
                }
            }
        ),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_ts_micros)| PgOutput::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts_micros
            }
        ),
        (any::<u64>(), name()).prop_map(|(lsn, name)| PgOutput::Origin { lsn, name }),
        relation().prop_map(PgOutput::Relation),
        (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| PgOutput::Type {
            oid,
            namespace,
            name
        }),
        (any::<u32>(), prop::collection::vec(datum(), 0..12)).prop_map(|(relation_id, d)| {
            PgOutput::Insert {
                relation_id,
                tuple: Tuple(d),
            }
        }),
        any::<u32>().prop_map(|relation_id| PgOutput::Update { relation_id }),
        any::<u32>().prop_map(|relation_id| PgOutput::Delete { relation_id }),
        prop::collection::vec(any::<u32>(), 0..8)
            .prop_map(|relation_ids| PgOutput::Truncate { relation_ids }),
        (
            any::<bool>(),
            any::<u64>(),
            name(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(transactional, lsn, prefix, content)| PgOutput::Message {
                transactional,
                lsn,
                prefix,
                content: content.into()
            }),
    ]
}

/// A text value that is valid for the given role.
fn utf8_text(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), min..20).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(Bytes::from(data));
    }

    #[test]
    fn decode_never_panics_with_a_valid_tag(tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
                                             rest in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut data = vec![tag];
        data.extend(rest);
        let _ = decode(Bytes::from(data));
    }

    #[test]
    fn encode_then_decode_is_identity(msg in message()) {
        prop_assert_eq!(decode(encode(&msg)).unwrap(), msg);
    }

    #[test]
    fn mutated_valid_messages_never_panic(msg in message(),
                                          edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6)) {
        let mut data = encode(&msg).to_vec();
        for (at, byte, op) in edits {
            let i = at.index(data.len() + 1);
            match op {
                0 if i < data.len() => data[i] = byte,
                1 => data.insert(i, byte),
                2 if i < data.len() => { data.remove(i); }
                _ => data.truncate(i),
            }
        }
        let _ = decode(Bytes::from(data.clone()));
        // And through the outbox mapping, whatever decodes.
        let mut d = decoder();
        if let Ok(PgOutput::Relation(rel)) = decode(encode(&msg)) {
            d.relation(rel);
        }
        if let Ok(PgOutput::Insert { relation_id, tuple }) = decode(Bytes::from(data)) {
            let _ = d.insert(relation_id, tuple);
            let _ = d.insert(16384, Tuple(vec![]));
        }
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_an_error(msg in message()) {
        let data = encode(&msg);
        for len in 0..data.len() {
            prop_assert!(decode(data.slice(..len)).is_err());
        }
    }

    /// Arbitrary extra columns in arbitrary order around the outbox columns, through bytes, into a row.
    #[test]
    fn relation_and_insert_round_trip(
        extra in prop::collection::vec((name(), prop::option::of(utf8_text(0))), 0..6),
        order in any::<u64>(),
        id in utf8_text(0),
        aggregate_type in utf8_text(0),
        aggregate_id in utf8_text(1),
        event_type in utf8_text(0),
        payload in utf8_text(0),
        headers in prop::option::of(utf8_text(0)),
        created_at in prop::option::of(utf8_text(0)),
        payload_bytea in any::<bool>(),
        payload_raw in prop::collection::vec(any::<u8>(), 0..30),
    ) {
        let payload_oid = if payload_bytea { type_oid::BYTEA } else { type_oid::JSONB };
        let payload_text = if payload_bytea {
            let mut s = String::from("\\x");
            for b in &payload_raw { s.push_str(&format!("{b:02x}")); }
            s
        } else {
            payload.clone()
        };
        let mut cols: Vec<(Column, Option<String>)> = vec![
            (col("id", type_oid::UUID), Some(id.clone())),
            (col("aggregate_type", type_oid::TEXT), Some(aggregate_type.clone())),
            (col("aggregate_id", type_oid::TEXT), Some(aggregate_id.clone())),
            (col("event_type", type_oid::TEXT), Some(event_type.clone())),
            (col("payload", payload_oid), Some(payload_text)),
            (col("headers", type_oid::JSONB), headers.clone()),
            (col("created_at", type_oid::TIMESTAMPTZ), created_at.clone()),
        ];
        for (i, (n, v)) in extra.into_iter().enumerate() {
            cols.push((col(&format!("x{i}_{n}"), type_oid::TEXT), v));
        }
        // A deterministic shuffle from the drawn seed.
        let mut seed = order;
        for i in (1..cols.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            cols.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let rel = Relation {
            id: 77,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: cols.iter().map(|(c, _)| c.clone()).collect(),
        };
        let tuple = Tuple(cols.iter().map(|(_, v)| match v {
            Some(s) => text(s),
            None => Datum::Null,
        }).collect());

        let mut buf = BytesMut::new();
        put_relation(&mut buf, &rel);
        let PgOutput::Relation(rel) = decode(buf.freeze()).unwrap() else { panic!() };
        let mut d = OutboxDecoder::new("public", "outbox", ColumnMap::default());
        d.relation(rel);
        let PgOutput::Insert { relation_id, tuple } =
            decode(encode(&PgOutput::Insert { relation_id: 77, tuple })).unwrap() else { panic!() };
        let row = d.insert(relation_id, tuple).unwrap();
        prop_assert_eq!(row, OutboxRow {
            id: id.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload: if payload_bytea { Bytes::from(payload_raw) } else { Bytes::from(payload) },
            payload_type_oid: payload_oid,
            headers: headers.map(Bytes::from),
            created_at: created_at.map(Into::into),
        });
    }
}
