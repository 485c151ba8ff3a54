//! Envelopes of `outbox_emit`: captured vectors, every malformed case, property tests.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::lsn::Lsn;
use crate::route::{pg_timestamp_rfc3339, Position, Router, RouterSettings};

/// One `outbox_emit` call captured from a real Postgres 15 (sql/005 applied, a test_decoding
/// slot): the message content as the server wrote it, and what the same transaction printed
/// for the expected fields (`now()::text` with `TimeZone=UTC`, `payload::text`, the returned
/// id). The session's time zone and DateStyle varied, so `created_at` carries other offsets.
struct Vector {
    session_time_zone: &'static str,
    prefix: &'static str,
    content: &'static str,
    id: &'static str,
    aggregate_type: &'static str,
    aggregate_id: &'static str,
    event_type: &'static str,
    created_at: &'static str,
    headers: Option<&'static str>,
    payload: &'static str,
}

const VECTORS: &[Vector] = &[
    Vector {
        session_time_zone: "UTC",
        prefix: "outbox",
        content: "{\"v\":1,\"id\":\"e3ef0b61-f7c4-4870-b438-faf53f8ef57f\",\"aggregate_type\":\"booking\",\"aggregate_id\":\"42\",\"event_type\":\"BookingConfirmed\",\"created_at\":\"2026-11-30T12:23:47.488828+00:00\",\"payload\":{\"id\": 42}}",
        id: "e3ef0b61-f7c4-4870-b438-faf53f8ef57f",
        aggregate_type: "booking",
        aggregate_id: "42",
        event_type: "BookingConfirmed",
        created_at: "2026-11-30 12:23:47.488828+00",
        headers: None,
        payload: "{\"id\": 42}",
    },
    Vector {
        session_time_zone: "UTC",
        prefix: "outbox",
        content: "{\"v\":1,\"id\":\"288d845d-6fff-412b-b6b3-48205597eb07\",\"aggregate_type\":\"booking\",\"aggregate_id\":\"B-7\",\"event_type\":\"BookingCreated\",\"created_at\":\"2026-11-30T12:23:47.529776+00:00\",\"headers\":{\"tenant\": \"acme\", \"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"},\"payload\":{\"car\": \"VW Polo\", \"days\": 3, \"price\": 2.50}}",
        id: "288d845d-6fff-412b-b6b3-48205597eb07",
        aggregate_type: "booking",
        aggregate_id: "B-7",
        event_type: "BookingCreated",
        created_at: "2026-11-30 12:23:47.529776+00",
        headers: Some("{\"tenant\": \"acme\", \"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"}"),
        payload: "{\"car\": \"VW Polo\", \"days\": 3, \"price\": 2.50}",
    },
    Vector {
        session_time_zone: "Asia/Kathmandu",
        prefix: "outbox",
        content: "{\"v\":1,\"id\":\"06557d9e-50d2-4310-865e-bdf5d4471f64\",\"aggregate_type\":\"car\",\"aggregate_id\":\"k\\\"\\\\\\u0001é😀\",\"event_type\":\"Événement/Ä\",\"created_at\":\"2026-11-30T18:08:47.585761+05:45\",\"headers\":{},\"payload\":[1, \"two\", {\"3\": null}]}",
        id: "06557d9e-50d2-4310-865e-bdf5d4471f64",
        aggregate_type: "car",
        aggregate_id: "k\"\\\u{1}é😀",
        event_type: "Événement/Ä",
        created_at: "2026-11-30 12:23:47.585761+00",
        headers: Some("{}"),
        payload: "[1, \"two\", {\"3\": null}]",
    },
    Vector {
        session_time_zone: "America/St_Johns",
        prefix: "outbox",
        content: "{\"v\":1,\"id\":\"00691bbf-a490-477a-905e-cff21c286cae\",\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\",\"event_type\":\"Deleted\",\"created_at\":\"2026-11-30T08:53:47.631304-03:30\",\"payload\":null}",
        id: "00691bbf-a490-477a-905e-cff21c286cae",
        aggregate_type: "customer",
        aggregate_id: "c-1",
        event_type: "Deleted",
        created_at: "2026-11-30 12:23:47.631304+00",
        headers: None,
        payload: "null",
    },
    Vector {
        session_time_zone: "Pacific/Kiritimati",
        prefix: "outbox",
        content: "{\"v\":1,\"id\":\"3276ab7c-f74f-47c0-ba15-689a4ad41dfc\",\"aggregate_type\":\"booking\",\"aggregate_id\":\"\",\"event_type\":\"Empty\",\"created_at\":\"2026-12-01T02:23:47.662494+14:00\",\"payload\":{}}",
        id: "3276ab7c-f74f-47c0-ba15-689a4ad41dfc",
        aggregate_type: "booking",
        aggregate_id: "",
        event_type: "Empty",
        created_at: "2026-11-30 12:23:47.662494+00",
        headers: None,
        payload: "{}",
    },
    Vector {
        session_time_zone: "UTC",
        prefix: "billing.events",
        content: "{\"v\":1,\"id\":\"0a4a1887-dd19-4c25-b572-e22bd0e8a8a3\",\"aggregate_type\":\"invoice\",\"aggregate_id\":\"inv-9\",\"event_type\":\"Issued\",\"created_at\":\"2026-11-30T12:23:47.718105+00:00\",\"headers\":{\"b\": true, \"n\": 1},\"payload\":\"just a string\"}",
        id: "0a4a1887-dd19-4c25-b572-e22bd0e8a8a3",
        aggregate_type: "invoice",
        aggregate_id: "inv-9",
        event_type: "Issued",
        created_at: "2026-11-30 12:23:47.718105+00",
        headers: Some("{\"b\": true, \"n\": 1}"),
        payload: "\"just a string\"",
    },
];

fn decode_str(s: &str) -> Result<OutboxRow, Box<EnvelopeError>> {
    decode_envelope(Bytes::copy_from_slice(s.as_bytes()))
}

/// A valid envelope as `outbox_emit` writes it, with `edit` applied to its text.
fn envelope() -> String {
    VECTORS[1].content.to_string()
}

fn points_into(part: &Bytes, whole: &Bytes) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

#[test]
fn postgres_vectors_decode_to_the_rows_postgres_wrote() {
    for v in VECTORS {
        let content = Bytes::from_static(v.content.as_bytes());
        let decoder = MessageDecoder::new(v.prefix);
        let got = decoder.decode(true, v.prefix, content.clone());
        if v.aggregate_id.is_empty() {
            let MessageEvent::Malformed(e) = got else {
                panic!("{}: empty aggregate id must be refused: {got:?}", v.content)
            };
            assert_eq!(e.reason, Reason::EmptyAggregateId);
            assert_eq!(e.event_id.as_deref(), Some(v.id));
            assert_eq!(e.key, None);
            assert_eq!(e.content, content);
            continue;
        }
        let MessageEvent::Event(row) = got else {
            panic!("{}: {got:?}", v.content)
        };
        assert_eq!(row.id, v.id);
        assert_eq!(row.aggregate_type, v.aggregate_type);
        assert_eq!(row.aggregate_id, v.aggregate_id);
        assert_eq!(row.event_type, v.event_type);
        assert_eq!(
            row.created_at.as_deref(),
            Some(v.created_at),
            "created_at written in time zone {}",
            v.session_time_zone
        );
        assert_eq!(row.headers.as_deref(), v.headers.map(str::as_bytes));
        assert_eq!(&row.payload[..], v.payload.as_bytes());
        assert_eq!(row.payload_type_oid, type_oid::JSON);
        // Passed through: slices of the message, not copies.
        assert!(points_into(&row.payload, &content));
        if let Some(h) = &row.headers {
            assert!(points_into(h, &content));
        }
    }
}

#[test]
fn a_message_routes_to_the_record_a_row_becomes() {
    let v = &VECTORS[1];
    let row = decode_str(v.content).unwrap();
    let table_row = OutboxRow {
        id: v.id.into(),
        aggregate_type: v.aggregate_type.into(),
        aggregate_id: v.aggregate_id.into(),
        event_type: v.event_type.into(),
        payload: Bytes::from_static(v.payload.as_bytes()),
        payload_type_oid: type_oid::JSONB,
        headers: v.headers.map(|h| Bytes::from_static(h.as_bytes())),
        created_at: Some(v.created_at.into()),
    };
    let pos = Position {
        lsn: Lsn(0x16_B374_D848),
        xid: 771,
        commit_ts_micros: 849_356_627_000_000,
    };
    let mut router = Router::new(RouterSettings {
        topic_template: "outbox.{aggregate_type}".into(),
        topics: HashMap::new(),
        strict: false,
    });
    let from_message = router.route(row, &pos).unwrap();
    let from_table = router.route(table_row, &pos).unwrap();
    assert_eq!(from_message, from_table);
    assert!(from_message
        .headers
        .iter()
        .any(|(k, v)| k == "tenant" && &v[..] == b"acme"));
}

#[test]
fn prefixes_and_transactionality_are_told_apart() {
    let d = MessageDecoder::default();
    assert_eq!(d.prefix(), DEFAULT_PREFIX);
    let content = Bytes::from_static(VECTORS[0].content.as_bytes());
    for other in [
        "",
        "outbox2",
        "outbo",
        "Outbox",
        "outbox ",
        "billing.events",
    ] {
        assert_eq!(
            d.decode(true, other, content.clone()),
            MessageEvent::OtherPrefix,
            "prefix {other:?}"
        );
        assert_eq!(
            d.decode(false, other, content.clone()),
            MessageEvent::OtherPrefix
        );
    }
    assert_eq!(
        d.decode(false, "outbox", content.clone()),
        MessageEvent::NonTransactional {
            event_id: Some(VECTORS[0].id.into())
        }
    );
    assert_eq!(
        d.decode(false, "outbox", Bytes::from_static(b"\xff")),
        MessageEvent::NonTransactional { event_id: None }
    );
    // A malformed non-transactional envelope still names its id when it can.
    let bad = format!(r#"{{"v":7,"id":"{}"}}"#, VECTORS[0].id);
    assert_eq!(
        d.decode(false, "outbox", Bytes::from(bad)),
        MessageEvent::NonTransactional {
            event_id: Some(VECTORS[0].id.into())
        }
    );
    assert!(matches!(
        d.decode(true, "outbox", content),
        MessageEvent::Event(_)
    ));
}

#[test]
fn tolerated_variations() {
    let id = VECTORS[0].id;
    // Any key order, whitespace, unknown keys (any value), escaped key names, null headers and
    // created_at, a null payload.
    let text = format!(
        " {{ \"payload\" : null , \"future\" : {{\"x\": [1, {{\"y\": null}}]}}, \"h\\u0065aders\": null,\n\
         \"created_at\": null, \"event_type\": \"E\", \"aggregate_id\": \"k\", \"aggregate_type\": \"t\",\n\
         \"id\": \"{}\", \"\\u0076\": 1 }} ",
        id.to_uppercase()
    );
    let row = decode_str(&text).unwrap();
    assert_eq!(row.id, id.to_uppercase());
    assert_eq!(&row.payload[..], b"null");
    assert_eq!(row.headers, None);
    assert_eq!(row.created_at, None);
    // Escaped strings are unescaped.
    let row = decode_str(&format!(
        r#"{{"v":1,"id":"{id}","aggregate_type":"a\/b","aggregate_id":"\u00e9\n\"x\"","event_type":"\ud83d\ude00","payload":{{}}}}"#
    ))
    .unwrap();
    assert_eq!(row.aggregate_type, "a/b");
    assert_eq!(row.aggregate_id, "é\n\"x\"");
    assert_eq!(row.event_type, "😀");
    // A headers value that is not an object passes through: the router refuses it exactly as
    // it refuses a row's headers column.
    let row = decode_str(&format!(
        r#"{{"v":1,"id":"{id}","aggregate_type":"a","aggregate_id":"k","event_type":"e","headers":[1],"payload":1}}"#
    ))
    .unwrap();
    assert_eq!(row.headers.as_deref(), Some(&b"[1]"[..]));
}

/// Each malformed envelope, its reason and the key at fault.
#[test]
fn malformed_envelopes_have_reasons() {
    let good = envelope();
    let id = "288d845d-6fff-412b-b6b3-48205597eb07";
    let replace = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replacen(from, to, 1)
    };
    use Reason::*;
    let cases: Vec<(String, Reason, Option<&str>)> = vec![
        ("".into(), EnvelopeNotJson, None),
        ("{nope".into(), EnvelopeNotJson, None),
        ("[1]".into(), EnvelopeNotJson, None),
        ("\"text\"".into(), EnvelopeNotJson, None),
        ("null".into(), EnvelopeNotJson, None),
        (format!("{good} x"), EnvelopeNotJson, None),
        (good[..good.len() - 1].to_string(), EnvelopeNotJson, None),
        (
            replace("\"v\":1", "\"v\":1,\"v\":1"),
            EnvelopeDuplicateField,
            Some("v"),
        ),
        (
            replace("\"payload\":", "\"id\":\"x\",\"payload\":"),
            EnvelopeDuplicateField,
            Some("id"),
        ),
        (
            replace("\"v\":1", "\"v\":2"),
            EnvelopeUnknownVersion,
            Some("v"),
        ),
        (
            replace("\"v\":1", "\"v\":0"),
            EnvelopeUnknownVersion,
            Some("v"),
        ),
        (
            replace("\"v\":1", "\"v\":-1"),
            EnvelopeUnknownVersion,
            Some("v"),
        ),
        (replace("\"v\":1,", ""), EnvelopeMissingField, Some("v")),
        (
            replace("\"v\":1", "\"v\":null"),
            EnvelopeMissingField,
            Some("v"),
        ),
        (
            replace("\"v\":1", "\"v\":\"1\""),
            EnvelopeWrongType,
            Some("v"),
        ),
        (
            replace("\"v\":1", "\"v\":1.0"),
            EnvelopeWrongType,
            Some("v"),
        ),
        (
            replace("\"v\":1", "\"v\":true"),
            EnvelopeWrongType,
            Some("v"),
        ),
        (
            replace(&format!("\"id\":\"{id}\","), ""),
            EnvelopeMissingField,
            Some("id"),
        ),
        (
            replace(&format!("\"id\":\"{id}\""), "\"id\":null"),
            EnvelopeMissingField,
            Some("id"),
        ),
        (
            replace(&format!("\"id\":\"{id}\""), "\"id\":5"),
            EnvelopeWrongType,
            Some("id"),
        ),
        (replace(id, "not-a-uuid"), EnvelopeInvalidId, Some("id")),
        (
            replace(id, &id.replace('-', "")),
            EnvelopeInvalidId,
            Some("id"),
        ),
        (
            replace(id, &format!("{id}0")),
            EnvelopeInvalidId,
            Some("id"),
        ),
        (
            replace(id, &id.replacen('8', "g", 1)),
            EnvelopeInvalidId,
            Some("id"),
        ),
        (
            replace("\"aggregate_type\":\"booking\",", ""),
            EnvelopeMissingField,
            Some("aggregate_type"),
        ),
        (
            replace(
                "\"aggregate_type\":\"booking\"",
                "\"aggregate_type\":[\"booking\"]",
            ),
            EnvelopeWrongType,
            Some("aggregate_type"),
        ),
        (
            replace("\"aggregate_id\":\"B-7\",", ""),
            EnvelopeMissingField,
            Some("aggregate_id"),
        ),
        (
            replace("\"aggregate_id\":\"B-7\"", "\"aggregate_id\":null"),
            EnvelopeMissingField,
            Some("aggregate_id"),
        ),
        (
            replace("\"aggregate_id\":\"B-7\"", "\"aggregate_id\":42"),
            EnvelopeWrongType,
            Some("aggregate_id"),
        ),
        (
            replace("\"aggregate_id\":\"B-7\"", "\"aggregate_id\":\"\""),
            EmptyAggregateId,
            Some("aggregate_id"),
        ),
        (
            replace("\"event_type\":\"BookingCreated\",", ""),
            EnvelopeMissingField,
            Some("event_type"),
        ),
        (
            replace("\"event_type\":\"BookingCreated\"", "\"event_type\":{}"),
            EnvelopeWrongType,
            Some("event_type"),
        ),
        (
            replace("\"2026-11-30T12:23:47.529776+00:00\"", "1796300627"),
            EnvelopeWrongType,
            Some("created_at"),
        ),
        (
            replace("2026-11-30T12:23:47.529776+00:00", "yesterday"),
            EnvelopeInvalidCreatedAt,
            Some("created_at"),
        ),
        (
            replace(
                "2026-11-30T12:23:47.529776+00:00",
                "2026-11-30T12:23:47.529776",
            ),
            EnvelopeInvalidCreatedAt,
            Some("created_at"),
        ),
        (
            replace(
                "2026-11-30T12:23:47.529776+00:00",
                "2026-02-30T12:23:47+00:00",
            ),
            EnvelopeInvalidCreatedAt,
            Some("created_at"),
        ),
        (
            replace(
                ",\"payload\":{\"car\": \"VW Polo\", \"days\": 3, \"price\": 2.50}",
                "",
            ),
            EnvelopeMissingField,
            Some("payload"),
        ),
    ];
    for (text, reason, field) in cases {
        let e = decode_str(&text).expect_err(&text);
        assert_eq!((e.reason, e.field), (reason, field), "{text}: {e}");
        assert_eq!(
            &e.content[..],
            text.as_bytes(),
            "the dead letter keeps it all"
        );
        let shown = e.to_string();
        assert!(shown.contains(reason.code()), "{shown}");
        if reason != EnvelopeNotJson {
            // The id is named whenever it is a string (even a bad or duplicated one).
            let expect_id =
                field != Some("id") || matches!(reason, EnvelopeInvalidId | EnvelopeDuplicateField);
            assert_eq!(e.event_id.is_some(), expect_id, "{text}: {e:?}");
        }
    }
    // Bytes that are not UTF-8.
    let mut bytes = envelope().into_bytes();
    bytes[30] = 0xff;
    let e = decode_envelope(Bytes::from(bytes)).unwrap_err();
    assert_eq!(e.reason, EnvelopeNotJson);
    assert!(e.detail.contains("not UTF-8"), "{}", e.detail);
}

#[test]
fn the_dead_letter_key_is_the_aggregate_id_when_readable() {
    let text = envelope().replace("\"v\":1", "\"v\":9");
    let e = decode_str(&text).unwrap_err();
    assert_eq!(e.reason, Reason::EnvelopeUnknownVersion);
    assert_eq!(e.key.as_deref(), Some(&b"B-7"[..]));
    assert_eq!(
        e.event_id.as_deref(),
        Some("288d845d-6fff-412b-b6b3-48205597eb07")
    );
}

#[test]
fn reason_codes_are_unique_short_snake_case() {
    let codes: Vec<&str> = ENVELOPE_REASONS.iter().map(|k| k.code()).collect();
    let mut unique = codes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), codes.len());
    for c in codes {
        assert!(
            c.len() <= 32 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{c}"
        );
    }
}

#[test]
fn created_at_in_the_outbox_table_form() {
    for (input, expected) in [
        (
            "2026-11-30T12:14:55.79319+00:00",
            "2026-11-30 12:14:55.79319+00",
        ),
        (
            "2026-11-30T12:14:55.790000+00:00",
            "2026-11-30 12:14:55.79+00",
        ),
        ("2026-11-30T12:14:55.000000+00:00", "2026-11-30 12:14:55+00"),
        ("2026-11-30T12:14:55+00:00", "2026-11-30 12:14:55+00"),
        ("2026-11-30T12:14:55Z", "2026-11-30 12:14:55+00"),
        ("2026-11-30 12:14:55.5+01", "2026-11-30 11:14:55.5+00"),
        (
            "2026-12-01T02:23:47.662494+14:00",
            "2026-11-30 12:23:47.662494+00",
        ),
        (
            "2026-11-30T08:53:47.631304-03:30",
            "2026-11-30 12:23:47.631304+00",
        ),
        ("1900-01-01T05:21:10+05:21:10", "1900-01-01 00:00:00+00"),
        ("2024-02-29T23:30:00-01:00", "2024-03-01 00:30:00+00"),
        ("2000-01-01T00:30:00+01:00", "1999-12-31 23:30:00+00"),
    ] {
        assert_eq!(
            pg_utc_timestamp(input).as_deref(),
            Some(expected),
            "{input}"
        );
    }
    for bad in [
        "",
        "2026-11-30",
        "2026-11-30T12:14:55",
        "2026-11-30T12:14:55.+00",
        "2026-11-30T12:14:55.1234567+00",
        "2026-11-30T24:00:00+00",
        "2026-13-01T00:00:00+00",
        "2023-02-29T00:00:00+00",
        "2026-11-30T12:14:55+0",
        "2026-11-30T12:14:55+00:0",
        "2026-11-30T12:14:55+00:00:00:00",
        "2026-11-30T12:14:55+16:00",
        "2026-11-30T12:14:55Zjunk",
        "2026-11-30T12:14:55 +00",
        "0000-01-01T00:00:00+00",
        "0001-01-01T00:30:00+01:00",
        "infinity",
        "10000-01-01T00:00:00+00:00",
        "2026-11-3aT12:14:55+00",
        "2026-11-30T12:14:55+0a",
        "2026-11-30T12:1é:55+00",
    ] {
        assert_eq!(pg_utc_timestamp(bad), None, "{bad:?}");
    }
}

/// JSON string text as Postgres' `to_json(text)` prints it (serde_json escapes the same set).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Envelopes built the way `outbox_emit` builds them, from any strings and any JSON,
    /// decode to exactly what went in.
    #[test]
    fn envelopes_round_trip(
        id in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        aggregate_type in any::<String>(),
        aggregate_id in any::<String>().prop_filter("not empty", |s| !s.is_empty()),
        event_type in any::<String>(),
        micros in -3_000_000_000_000_000i64..8_000_000_000_000_000i64,
        offset_minutes in -15 * 60 + 1..15 * 60i64,
        headers in prop::option::of(prop::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..4)),
        payload in json_value(),
    ) {
        // The writer's wall clock in its time zone, as to_json(timestamptz) prints it.
        let local = pg_timestamp_rfc3339(micros + offset_minutes * 60_000_000);
        let frac = local[19..26].trim_end_matches('0').trim_end_matches('.');
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let created = format!(
            "{}{frac}{sign}{:02}:{:02}",
            &local[..19],
            offset_minutes.abs() / 60,
            offset_minutes.abs() % 60
        );
        let utc = pg_timestamp_rfc3339(micros);
        let utc_frac = utc[19..26].trim_end_matches('0').trim_end_matches('.');
        let expected_created = format!("{} {}{utc_frac}+00", &utc[..10], &utc[11..19]);
        let headers_text = headers.as_ref().map(|h| serde_json::to_string(h).unwrap());
        let payload_text = payload.to_string();
        let envelope = format!(
            r#"{{"v":1,"id":"{id}","aggregate_type":{},"aggregate_id":{},"event_type":{},"created_at":"{created}"{},"payload":{payload_text}}}"#,
            json_str(&aggregate_type),
            json_str(&aggregate_id),
            json_str(&event_type),
            headers_text.as_ref().map(|h| format!(r#","headers":{h}"#)).unwrap_or_default(),
        );
        let row = decode_str(&envelope).unwrap();
        prop_assert_eq!(row.id, id);
        prop_assert_eq!(row.aggregate_type, aggregate_type);
        prop_assert_eq!(row.aggregate_id, aggregate_id);
        prop_assert_eq!(row.event_type, event_type);
        prop_assert_eq!(row.created_at, Some(expected_created.into()));
        prop_assert_eq!(row.headers.as_deref(), headers_text.as_deref().map(str::as_bytes));
        prop_assert_eq!(&row.payload[..], payload_text.as_bytes());
    }

    /// Any bytes: an answer, never a panic.
    #[test]
    fn any_content_never_panics(content in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = MessageDecoder::default().decode(true, "outbox", Bytes::from(content));
    }

    /// Damaged envelopes (a cut, a byte replaced): a reason, never a panic.
    #[test]
    fn damaged_envelopes_never_panic(cut in 0usize..400, at in 0usize..400, byte in any::<u8>()) {
        let mut b = envelope().into_bytes();
        let at = at % b.len();
        b[at] = byte;
        b.truncate(cut.min(b.len()));
        let _ = decode_envelope(Bytes::from(b));
    }
}
