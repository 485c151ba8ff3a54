//! pgoutput: messages built from the protocol documentation's bytes, and every decoding error.

#![allow(clippy::unwrap_used)]

use super::*;

// ---------------------------------------------------------------- pgoutput: bytes per the docs

#[test]
fn begin_from_literal_bytes() {
    let mut m = vec![b'B'];
    m.extend_from_slice(&0x0000_0001_0000_1000u64.to_be_bytes());
    m.extend_from_slice(&(-5i64).to_be_bytes());
    m.extend_from_slice(&742u32.to_be_bytes());
    assert_eq!(
        decode(Bytes::from(m)).unwrap(),
        PgOutput::Begin {
            final_lsn: 0x1_0000_1000,
            commit_ts_micros: -5,
            xid: 742
        }
    );
}

#[test]
fn commit_from_literal_bytes() {
    let mut m = vec![b'C', 0];
    m.extend_from_slice(&10u64.to_be_bytes());
    m.extend_from_slice(&20u64.to_be_bytes());
    m.extend_from_slice(&30i64.to_be_bytes());
    assert_eq!(
        decode(Bytes::from(m)).unwrap(),
        PgOutput::Commit {
            flags: 0,
            commit_lsn: 10,
            end_lsn: 20,
            commit_ts_micros: 30
        }
    );
}

#[test]
fn relation_and_insert_from_literal_bytes() {
    // R, oid 16384, "public\0", "outbox\0", 'd', 2 columns: (1, "id\0", 2950, -1), (0, "payload\0", 3802, -1)
    let mut r = vec![b'R', 0, 0, 0x40, 0];
    r.extend_from_slice(b"public\0outbox\0d\0\x02");
    r.extend_from_slice(b"\x01id\0\0\0\x0b\x86\xff\xff\xff\xff");
    r.extend_from_slice(b"\0payload\0\0\0\x0e\xda\xff\xff\xff\xff");
    let PgOutput::Relation(rel) = decode(Bytes::from(r)).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(rel.id, 16384);
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "outbox")
    );
    assert_eq!(rel.replica_identity, b'd');
    assert_eq!(
        rel.columns,
        vec![
            Column {
                flags: 1,
                ..col("id", type_oid::UUID)
            },
            col("payload", type_oid::JSONB)
        ]
    );

    // I, oid 16384, 'N', 2 columns: 't' len 3 "abc", 'n'
    let i = b"I\0\0\x40\0N\0\x02t\0\0\0\x03abcn".to_vec();
    assert_eq!(
        decode(Bytes::from(i)).unwrap(),
        PgOutput::Insert {
            relation_id: 16384,
            tuple: Tuple(vec![text("abc"), Datum::Null])
        }
    );
}

#[test]
fn message_from_literal_bytes() {
    let mut m = vec![b'M', 1];
    m.extend_from_slice(&99u64.to_be_bytes());
    m.extend_from_slice(b"pfx\0\0\0\0\x02hi");
    assert_eq!(
        decode(Bytes::from(m)).unwrap(),
        PgOutput::Message {
            transactional: true,
            lsn: 99,
            prefix: "pfx".into(),
            content: Bytes::from_static(b"hi")
        }
    );
}

#[test]
fn truncate_from_literal_bytes() {
    let m = b"T\0\0\0\x02\x01\0\0\0\x07\0\0\0\x08".to_vec();
    assert_eq!(
        decode(Bytes::from(m)).unwrap(),
        PgOutput::Truncate {
            relation_ids: vec![7, 8]
        }
    );
}

#[test]
fn origin_and_type_from_literal_bytes() {
    let mut o = vec![b'O'];
    o.extend_from_slice(&3u64.to_be_bytes());
    o.extend_from_slice(b"n1\0");
    assert_eq!(
        decode(Bytes::from(o)).unwrap(),
        PgOutput::Origin {
            lsn: 3,
            name: "n1".into()
        }
    );
    let y = b"Y\0\0\0\x2a\0mood\0".to_vec();
    assert_eq!(
        decode(Bytes::from(y)).unwrap(),
        PgOutput::Type {
            oid: 42,
            namespace: String::new(),
            name: "mood".into()
        }
    );
}

#[test]
fn update_and_delete_with_old_tuples() {
    let v = update_delete_variants();
    for m in &v[..3] {
        assert_eq!(
            decode(Bytes::from(m.clone())).unwrap(),
            PgOutput::Update { relation_id: 7 }
        );
    }
    for m in &v[3..] {
        assert_eq!(
            decode(Bytes::from(m.clone())).unwrap(),
            PgOutput::Delete { relation_id: 7 }
        );
    }
}

#[test]
fn every_sample_round_trips() {
    for msg in samples() {
        assert_eq!(decode(encode(&msg)).unwrap(), msg, "{}", msg.kind());
    }
}

#[test]
fn datums_are_slices_of_the_input() {
    let buf = encode(&PgOutput::Insert {
        relation_id: 1,
        tuple: outbox_tuple(),
    });
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let PgOutput::Insert { tuple, .. } = decode(buf.clone()).unwrap() else {
        panic!()
    };
    for d in tuple.0 {
        let Datum::Text(b) = d else { panic!() };
        assert!(range.contains(&(b.as_ptr() as usize)), "datum was copied");
    }
}

// ---------------------------------------------------------------- pgoutput: errors

#[test]
fn empty_message_is_truncated() {
    assert!(matches!(
        decode(Bytes::new()),
        Err(DecodeError::Truncated { what: "tag", .. })
    ));
}

#[test]
fn unknown_tag_is_an_error() {
    for tag in [b'X', b'Z', b'w', b'k', 0, 0xff] {
        assert_eq!(
            decode(Bytes::from(vec![tag, 0, 0, 0, 0])),
            Err(DecodeError::UnknownMessage { tag })
        );
    }
    let e = decode(Bytes::from_static(b"X")).unwrap_err();
    assert!(e.to_string().contains("'X'"), "{e}");
}

#[test]
fn streaming_and_two_phase_tags_are_unsupported() {
    for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p'] {
        assert!(matches!(
            decode(Bytes::from(vec![tag, 0, 0, 0, 0])),
            Err(DecodeError::Unsupported { tag: t, .. }) if t == tag
        ));
    }
}

#[test]
fn every_strict_prefix_is_truncated() {
    for msg in all_valid_messages() {
        for len in 0..msg.len() {
            match decode(Bytes::copy_from_slice(&msg[..len])) {
                Err(DecodeError::Truncated { offset, .. }) => assert!(offset <= len),
                other => panic!(
                    "prefix {len}/{} of {:?}: expected Truncated, got {other:?}",
                    msg.len(),
                    msg[0] as char
                ),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for msg in all_valid_messages() {
        let len = msg.len();
        let mut m = msg.clone();
        m.extend_from_slice(b"zz");
        assert_eq!(
            decode(Bytes::from(m)),
            Err(DecodeError::Trailing {
                message: match msg[0] {
                    b'B' => "Begin",
                    b'C' => "Commit",
                    b'O' => "Origin",
                    b'R' => "Relation",
                    b'Y' => "Type",
                    b'I' => "Insert",
                    b'U' => "Update",
                    b'D' => "Delete",
                    b'T' => "Truncate",
                    _ => "Message",
                },
                offset: len,
                count: 2
            })
        );
    }
}

#[test]
fn negative_lengths_are_errors() {
    let i = b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xffabc".to_vec();
    assert_eq!(
        decode(Bytes::from(i)),
        Err(DecodeError::NegativeLength {
            message: "Insert",
            what: "tuple datum length",
            len: -1,
            offset: 9
        })
    );
    let mut m = vec![b'M', 0];
    m.extend_from_slice(&1u64.to_be_bytes());
    m.extend_from_slice(b"p\0\x80\0\0\0");
    assert!(matches!(
        decode(Bytes::from(m)),
        Err(DecodeError::NegativeLength {
            what: "content length",
            ..
        })
    ));
}

#[test]
fn oversized_lengths_and_counts_are_truncated() {
    let i = b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xffabc".to_vec();
    assert!(matches!(
        decode(Bytes::from(i)),
        Err(DecodeError::Truncated {
            what: "tuple datum value",
            ..
        })
    ));
    let i = b"I\0\0\0\x01N\xff\xffn".to_vec();
    assert!(matches!(
        decode(Bytes::from(i)),
        Err(DecodeError::Truncated {
            what: "tuple datum kind",
            ..
        })
    ));
    let t = b"T\xff\xff\xff\xff\0\0\0\0\x01".to_vec();
    assert!(matches!(
        decode(Bytes::from(t)),
        Err(DecodeError::Truncated {
            what: "relation id",
            ..
        })
    ));
}

#[test]
fn invalid_markers_are_errors() {
    let bad_kind = b"I\0\0\0\x01N\0\x01x".to_vec();
    assert_eq!(
        decode(Bytes::from(bad_kind)),
        Err(DecodeError::InvalidMarker {
            message: "Insert",
            what: "tuple datum kind",
            value: b'x',
            offset: 8
        })
    );
    let insert_with_old = b"I\0\0\0\x01K\0\0".to_vec();
    assert!(matches!(
        decode(Bytes::from(insert_with_old)),
        Err(DecodeError::InvalidMarker { value: b'K', .. })
    ));
    let update_two_old = b"U\0\0\0\x01K\0\0K\0\0".to_vec();
    assert!(matches!(
        decode(Bytes::from(update_two_old)),
        Err(DecodeError::InvalidMarker { value: b'K', .. })
    ));
    let delete_new = b"D\0\0\0\x01N\0\0".to_vec();
    assert!(matches!(
        decode(Bytes::from(delete_new)),
        Err(DecodeError::InvalidMarker { value: b'N', .. })
    ));
}

#[test]
fn invalid_utf8_names_are_errors() {
    let r = b"R\0\0\0\x01public\0out\xffbox\0d\0\0".to_vec();
    let e = decode(Bytes::from(r)).unwrap_err();
    assert_eq!(
        e,
        DecodeError::InvalidUtf8 {
            message: "Relation",
            what: "relation name",
            offset: 12
        }
    );
    assert!(e.to_string().contains("Relation"), "{e}");
}
