//! Messages as a real Postgres sent them.

#![allow(clippy::unwrap_used)]

use super::*;

// ---------------------------------------------------------------- real Postgres 15 bytes

fn unhex(s: &str) -> Bytes {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

/// Captured from Postgres 15.x with `pg_logical_slot_peek_binary_changes(.., 'proto_version', '1',
/// 'publication_names', 'p', 'messages', 'true')`: one transaction inserting into `outbox` (jsonb
/// payload, NULL headers) and `outbox_b` (bytea payload `\x00ff7b`), plus a transactional message.
#[test]
fn decodes_a_real_postgres_15_transaction() {
    const WIRE: [&str; 7] = [
        "420000000001530e2800030425bcd88404000002d7",
        "52000040007075626c6963006f7574626f78006400070169640000000b86ffffffff006167677265676174655f747970650000000019ffffffff006167677265676174655f69640000000019ffffffff006576656e745f747970650000000019ffffffff007061796c6f61640000000edaffffffff00686561646572730000000edaffffffff00637265617465645f617400000004a0ffffffff",
        "49000040004e0007740000002434663663326139652d336231642d346335352d396130652d3764326631623863366530317400000007626f6f6b696e677400000004422d3432740000000e426f6f6b696e6743726561746564740000001d7b22636172223a2022565720506f6c6f222c202264617973223a20337d6e740000001d323032362d31312d32362031303a30303a30302e3132333435362b3030",
        "52000040087075626c6963006f7574626f785f62006400050169640000000b86ffffffff006167677265676174655f747970650000000019ffffffff006167677265676174655f69640000000019ffffffff006576656e745f747970650000000019ffffffff007061796c6f61640000000011ffffffff",
        "49000040084e0005740000002434663663326139652d336231642d346335352d396130652d3764326631623863366530327400000007626f6f6b696e677400000004422d3433740000000352617774000000085c78303066663762",
        "4d010000000001530e286f7574626f7800000000077b2278223a317d",
        "43000000000001530e280000000001530e5800030425bcd88404",
    ];
    let msgs: Vec<PgOutput> = WIRE.iter().map(|h| decode(unhex(h)).unwrap()).collect();
    let PgOutput::Begin { final_lsn, xid, .. } = msgs[0] else {
        panic!("{:?}", msgs[0])
    };
    assert_eq!((final_lsn, xid), (0x1530E28, 727));
    let PgOutput::Commit {
        commit_lsn,
        end_lsn,
        ..
    } = msgs[6]
    else {
        panic!("{:?}", msgs[6])
    };
    assert_eq!((commit_lsn, end_lsn), (0x1530E28, 0x1530E58));
    assert_eq!(
        msgs[5],
        PgOutput::Message {
            transactional: true,
            lsn: 0x1530E28,
            prefix: "outbox".into(),
            content: Bytes::from_static(br#"{"x":1}"#)
        }
    );

    let mut d = OutboxDecoder::new("public", "outbox", ColumnMap::default());
    let mut d_b = OutboxDecoder::new("public", "outbox_b", ColumnMap::default());
    for m in &msgs {
        if let PgOutput::Relation(r) = m {
            d.relation(r.clone());
            d_b.relation(r.clone());
        }
    }
    let PgOutput::Insert { relation_id, tuple } = msgs[2].clone() else {
        panic!()
    };
    assert_eq!(
        d.insert(relation_id, tuple.clone()).unwrap(),
        OutboxRow {
            id: ID.into(),
            aggregate_type: "booking".into(),
            aggregate_id: "B-42".into(),
            event_type: "BookingCreated".into(),
            payload: Bytes::from_static(br#"{"car": "VW Polo", "days": 3}"#),
            payload_type_oid: type_oid::JSONB,
            headers: None,
            created_at: Some("2026-11-26 10:00:00.123456+00".into()),
        }
    );
    assert!(matches!(
        d_b.insert(relation_id, tuple),
        Err(InsertError::Schema(SchemaError::WrongTable { .. }))
    ));
    let PgOutput::Insert { relation_id, tuple } = msgs[4].clone() else {
        panic!()
    };
    let row = d_b.insert(relation_id, tuple).unwrap();
    assert_eq!(&row.payload[..], b"\x00\xff\x7b");
    assert_eq!(row.payload_type_oid, type_oid::BYTEA);
    assert_eq!((row.headers, row.created_at), (None, None));
}
