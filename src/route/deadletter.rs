//! Dead-letter records: built here, in one place, for every way a row can fail.
//!
//! A dead-lettered record carries what a replay needs, or points exactly at the row:
//!
//! | part | value |
//! |---|---|
//! | topic | `errors.dead_letter_topic` |
//! | key | the row's `aggregate_id`, when readable |
//! | value | the row's payload bytes as Postgres sent them; empty for `record_too_large` |
//! | headers | the same `event_id`, `event_type`, `aggregate_type`, `created_at`, `pg_lsn`, `pg_xid`, `pg_commit_ts` a routed record has (as far as the row is readable) |
//! | `dlq_reason` | a [`Reason`] code |
//! | `dlq_detail` | what exactly (column, topic, limit) |
//! | `dlq_topic` | the topic the record was meant for, when routing got that far |
//! | `dlq_row_headers` | the row's `headers` column text, as stored (not applied: it may be the problem) |
//! | `dlq_original_bytes` | for `record_too_large`: the size of the value left out |
//!
//! With `event_id` and `pg_lsn` a too-large event can be re-published from the table once the
//! limit is raised (`outbox-relay backfill`), and every other one from the dead-letter record.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use super::{standard_headers, txn_header_values, Header, Position, Record};
use crate::decode::{ColumnMap, EnvelopeError, OutboxRow, RowError};
use crate::reason::{Reason, Refusal};

/// Builds dead-letter records for one dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    topic: Arc<str>,
    columns: ColumnMap,
}

impl DeadLetters {
    /// Records go to `topic`; raw rows are read with the `columns` mapping.
    pub fn new(topic: &str, columns: ColumnMap) -> Self {
        Self {
            topic: Arc::from(topic),
            columns,
        }
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// A routed record that cannot be published (too large, topic missing or forbidden, or
    /// refused by the broker on an earlier attempt): its own headers, plus the reason.
    pub fn from_record(&self, rec: Record, refusal: &Refusal) -> Record {
        let mut headers = rec.headers;
        let extra = dlq_headers(refusal, Some(&rec.topic), None);
        headers.extend(extra);
        self.finish(rec.event_id, rec.key, rec.value, headers, refusal.reason)
    }

    /// A decoded row that cannot be routed (or was refused before).
    pub fn from_row(
        &self,
        row: OutboxRow,
        intended_topic: Option<&Arc<str>>,
        pos: &Position,
        refusal: &Refusal,
    ) -> Record {
        let event_id = row.id.into_bytes();
        let mut headers = standard_headers(
            event_id.clone(),
            row.event_type.into_bytes(),
            row.aggregate_type.into_bytes(),
            row.created_at.map(ByteString::into_bytes),
            pos,
            txn_header_values(pos),
            5,
        );
        headers.extend(dlq_headers(refusal, intended_topic, row.headers));
        self.finish(
            Some(event_id),
            Some(row.aggregate_id.into_bytes()),
            row.payload,
            headers,
            refusal.reason,
        )
    }

    /// A row whose columns could not be read (NULL key, bad encoding): whatever is readable.
    pub fn from_raw(&self, err: RowError, pos: &Position) -> Record {
        let c = &self.columns;
        let text = |name: &str| -> Option<Bytes> {
            err.raw
                .get(name)
                .flatten()
                .filter(|b| std::str::from_utf8(b).is_ok())
                .cloned()
        };
        let event_id = err.event_id.map(Bytes::from);
        let empty = Bytes::new;
        let mut headers = standard_headers(
            event_id.clone().unwrap_or_else(empty),
            text(&c.event_type).unwrap_or_else(empty),
            text(&c.aggregate_type).unwrap_or_else(empty),
            c.created_at.as_deref().and_then(text),
            pos,
            txn_header_values(pos),
            5,
        );
        if event_id.is_none() {
            // No readable id: no event_id header at all, rather than an empty one.
            headers.retain(|(k, _)| k != "event_id");
        }
        let refusal = Refusal::new(err.reason, err.detail);
        let row_headers = c
            .headers
            .as_deref()
            .and_then(|h| err.raw.get(h).flatten().cloned());
        headers.extend(dlq_headers(&refusal, None, row_headers));
        let key = err.raw.get(&c.aggregate_id).flatten().cloned();
        let value = err
            .raw
            .get(&c.payload)
            .flatten()
            .cloned()
            .unwrap_or_default();
        self.finish(event_id, key, value, headers, refusal.reason)
    }

    /// A message of the relay's prefix whose envelope cannot be published: its whole content as
    /// the value, its `aggregate_id` as the key when readable.
    pub fn from_envelope(&self, err: EnvelopeError, pos: &Position) -> Record {
        let (xid, ts) = txn_header_values(pos);
        let mut headers: Vec<Header> = Vec::with_capacity(6);
        let event_id = err.event_id.map(Bytes::from);
        if let Some(id) = &event_id {
            headers.push((Cow::Borrowed("event_id"), id.clone()));
        }
        headers.push((Cow::Borrowed("pg_lsn"), Bytes::from(pos.lsn.to_string())));
        headers.push((Cow::Borrowed("pg_xid"), xid));
        headers.push((Cow::Borrowed("pg_commit_ts"), ts));
        let refusal = Refusal::new(err.reason, err.detail);
        headers.extend(dlq_headers(&refusal, None, None));
        self.finish(event_id, err.key, err.content, headers, refusal.reason)
    }

    fn finish(
        &self,
        event_id: Option<Bytes>,
        key: Option<Bytes>,
        value: Bytes,
        mut headers: Vec<Header>,
        reason: Reason,
    ) -> Record {
        // A record the broker refuses for its size cannot be dead-lettered whole either: keep its
        // headers and say how big it was.
        let value = if reason == Reason::RecordTooLarge {
            headers.push((
                Cow::Borrowed("dlq_original_bytes"),
                Bytes::from(value.len().to_string()),
            ));
            Bytes::new()
        } else {
            value
        };
        Record {
            topic: self.topic.clone(),
            key,
            value,
            headers,
            event_id,
        }
    }
}

fn dlq_headers(
    refusal: &Refusal,
    intended_topic: Option<&Arc<str>>,
    row_headers: Option<Bytes>,
) -> Vec<Header> {
    let mut h: Vec<Header> = vec![
        (
            Cow::Borrowed("dlq_reason"),
            Bytes::from_static(refusal.reason.code().as_bytes()),
        ),
        (
            Cow::Borrowed("dlq_detail"),
            Bytes::from(refusal.detail.clone()),
        ),
    ];
    if let Some(t) = intended_topic {
        h.push((Cow::Borrowed("dlq_topic"), Bytes::from(t.to_string())));
    }
    if let Some(raw) = row_headers {
        h.push((Cow::Borrowed("dlq_row_headers"), raw));
    }
    h
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::decode::{RawColumn, RawRow};
    use crate::lsn::Lsn;

    const POS: Position = Position {
        lsn: Lsn(0x16_B374_D848),
        xid: 771,
        commit_ts_micros: 0,
    };

    fn headers(rec: &Record) -> HashMap<String, String> {
        rec.headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    fn row() -> OutboxRow {
        OutboxRow {
            id: "5f0c6f7e-0000-4000-8000-000000000001".into(),
            aggregate_type: "booking".into(),
            aggregate_id: "booking-42".into(),
            event_type: "BookingCreated".into(),
            payload: Bytes::from_static(b"{nope"),
            payload_type_oid: 25,
            headers: Some(Bytes::from_static(br#"{"traceparent":"00-abc"}"#)),
            created_at: Some("2026-11-26 05:00:00+00".into()),
        }
    }

    #[test]
    fn a_dead_letter_carries_what_a_replay_needs() {
        let dl = DeadLetters::new("dlq", ColumnMap::default());
        let rec = dl.from_row(
            row(),
            Some(&Arc::from("outbox.booking")),
            &POS,
            &Refusal::new(Reason::PayloadNotJson, "payload is not valid JSON"),
        );
        assert_eq!(&*rec.topic, "dlq");
        assert_eq!(rec.key.as_deref(), Some(&b"booking-42"[..]));
        assert_eq!(&rec.value[..], b"{nope");
        assert_eq!(rec.event_id.as_deref(), Some(row().id.as_bytes().as_ref()));
        let h = headers(&rec);
        for (k, v) in [
            ("event_id", "5f0c6f7e-0000-4000-8000-000000000001"),
            ("event_type", "BookingCreated"),
            ("aggregate_type", "booking"),
            ("created_at", "2026-11-26 05:00:00+00"),
            ("pg_lsn", "16/B374D848"),
            ("pg_xid", "771"),
            ("dlq_reason", "payload_not_json"),
            ("dlq_detail", "payload is not valid JSON"),
            ("dlq_topic", "outbox.booking"),
            ("dlq_row_headers", r#"{"traceparent":"00-abc"}"#),
        ] {
            assert_eq!(h.get(k).map(String::as_str), Some(v), "{k}: {h:?}");
        }
    }

    #[test]
    fn too_large_keeps_the_headers_and_the_size_not_the_value() {
        let dl = DeadLetters::new("dlq", ColumnMap::default());
        let routed = Record {
            topic: Arc::from("outbox.booking"),
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from(vec![b'x'; 2000]),
            headers: vec![(Cow::Borrowed("event_id"), Bytes::from_static(b"e1"))],
            event_id: Some(Bytes::from_static(b"e1")),
        };
        let rec = dl.from_record(routed, &Refusal::new(Reason::RecordTooLarge, "2000 > 1000"));
        assert!(rec.value.is_empty());
        let h = headers(&rec);
        assert_eq!(h["dlq_original_bytes"], "2000");
        assert_eq!(h["dlq_topic"], "outbox.booking");
        assert_eq!(h["event_id"], "e1");
    }

    #[test]
    fn an_unreadable_row_keeps_what_is_readable() {
        let dl = DeadLetters::new("dlq", ColumnMap::default());
        let col = |name: &str, v: Option<&'static [u8]>| RawColumn {
            name: name.into(),
            type_oid: 25,
            value: v.map(Bytes::from_static),
        };
        let err = RowError {
            reason: Reason::NullColumn,
            column: "aggregate_id".into(),
            detail: "column \"aggregate_id\" is NULL".into(),
            event_id: None,
            raw: RawRow {
                columns: vec![
                    col("id", None),
                    col("aggregate_type", Some(b"booking")),
                    col("aggregate_id", None),
                    col("event_type", Some(b"BookingCreated")),
                    col("payload", Some(b"{}")),
                ],
            },
        };
        let rec = dl.from_raw(err, &POS);
        let h = headers(&rec);
        assert!(!h.contains_key("event_id"), "{h:?}");
        assert_eq!(h["dlq_reason"], "null_column");
        assert_eq!(h["aggregate_type"], "booking");
        assert_eq!(rec.key, None);
        assert_eq!(&rec.value[..], b"{}");
        assert_eq!(rec.event_id, None);
    }
}
