//! Outbox row -> Kafka record (topic, key, headers, value). Pure: no I/O, no clocks.
//!
//! The data contract (docs/ARCHITECTURE.md, "Data contract"; README "The message contract"):
//! - topic: `routing.topics[aggregate_type]`, else `routing.topic_template` with
//!   `{aggregate_type}` replaced (unless `routing.strict`, where an absent override is unroutable);
//! - key: `aggregate_id` (per-aggregate order: one key, one partition);
//! - value: the payload column's bytes as Postgres sent them (jsonb's canonical text), never
//!   re-encoded;
//! - headers: `event_id`, `event_type`, `aggregate_type`, `created_at`, `pg_lsn`, `pg_xid`,
//!   `pg_commit_ts`, then every entry of the row's `headers` JSON object.
//!
//! A row that cannot become a record comes back with a [`Refusal`] naming why; the relay
//! dead-letters it ([`deadletter`], built here too, with the same headers) or stops, by
//! configuration. Topic strings are interned, so a row costs no topic allocation.

pub mod deadletter;
pub mod time;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::decode::OutboxRow;
use crate::lsn::Lsn;
use crate::reason::{Reason, Refusal};

pub use time::{parse_rfc3339_micros, pg_timestamp_rfc3339};

/// Names of the headers the relay sets; a row's own headers may not override them.
pub const RESERVED_HEADERS: [&str; 7] = [
    "event_id",
    "event_type",
    "aggregate_type",
    "created_at",
    "pg_lsn",
    "pg_xid",
    "pg_commit_ts",
];

/// One Kafka record, ready for the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Message key (the aggregate id).
    pub key: Option<Bytes>,
    /// Message value (the payload bytes).
    pub value: Bytes,
    /// Headers in order.
    pub headers: Vec<(Cow<'static, str>, Bytes)>,
    /// The row's event id (the `event_id` header's value), carried so a refusal can name the row
    /// without re-reading the headers. `None` for a dead letter whose id column was unreadable.
    pub event_id: Option<Bytes>,
}

impl Record {
    /// Bytes the record weighs in a Kafka transaction: key, value and headers.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.value.len() + self.key.as_ref().map_or(0, |k| k.len()) + headers) as u64
    }
}

/// One Kafka header: name and value.
pub type Header = (Cow<'static, str>, Bytes);

/// Where a row sits in the Postgres stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// LSN of the change.
    pub lsn: Lsn,
    /// Transaction id.
    pub xid: u32,
    /// Commit time, microseconds since 2000-01-01.
    pub commit_ts_micros: i64,
}

/// Routing rules, resolved from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterSettings {
    /// Template with `{aggregate_type}`.
    pub topic_template: String,
    /// Explicit aggregate_type -> topic overrides.
    pub topics: HashMap<String, String>,
    /// When true, only overrides route.
    pub strict: bool,
}

impl RouterSettings {
    /// `[routing]` of a validated configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        RouterSettings {
            topic_template: cfg.routing.topic_template.clone(),
            topics: cfg
                .routing
                .topics
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            strict: cfg.routing.strict,
        }
    }
}

/// Type OIDs of `json` and `jsonb`: Postgres validated those payloads already.
const JSON_OIDS: [u32; 2] = [114, 3802];

/// Turns rows into records.
#[derive(Debug)]
pub struct Router {
    settings: RouterSettings,
    interned: HashMap<String, Result<Arc<str>, Refusal>>,
    /// The transaction-wide header values of the last row (`pg_xid`, `pg_commit_ts`): every row of a
    /// transaction shares them, so they are formatted once per transaction, not once per row.
    txn_headers: Option<(u32, i64, Bytes, Bytes)>,
}

/// A valid Kafka topic name: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Router {
    /// A router with these rules.
    pub fn new(settings: RouterSettings) -> Self {
        Self {
            settings,
            interned: HashMap::new(),
            txn_headers: None,
        }
    }

    /// Replaces the rules (SIGHUP); affects rows routed from now on.
    pub fn set_settings(&mut self, settings: RouterSettings) {
        self.settings = settings;
        self.interned.clear();
    }

    /// The topic for an aggregate type.
    pub fn topic(&mut self, aggregate_type: &str) -> Result<Arc<str>, Refusal> {
        if let Some(t) = self.interned.get(aggregate_type) {
            return t.clone();
        }
        let resolved = self.resolve(aggregate_type);
        self.interned
            .insert(aggregate_type.to_string(), resolved.clone());
        resolved
    }

    fn resolve(&self, aggregate_type: &str) -> Result<Arc<str>, Refusal> {
        let topic = match self.settings.topics.get(aggregate_type) {
            Some(t) => t.clone(),
            None if self.settings.strict => {
                return Err(Refusal::new(
                    Reason::Unroutable,
                    format!(
                        "aggregate_type {aggregate_type:?} has no entry in [routing.topics] and routing.strict = true"
                    ),
                ))
            }
            None => self
                .settings
                .topic_template
                .replace("{aggregate_type}", aggregate_type),
        };
        if !valid_topic(&topic) {
            return Err(Refusal::new(
                Reason::InvalidTopic,
                format!(
                    "aggregate_type {aggregate_type:?} routes to {topic:?}, which is not a valid Kafka topic name"
                ),
            ));
        }
        Ok(Arc::from(topic))
    }

    fn txn_headers(&mut self, pos: &Position) -> (Bytes, Bytes) {
        match &self.txn_headers {
            Some((xid, ts, x, t)) if *xid == pos.xid && *ts == pos.commit_ts_micros => {
                (x.clone(), t.clone())
            }
            _ => {
                let (x, t) = txn_header_values(pos);
                self.txn_headers = Some((pos.xid, pos.commit_ts_micros, x.clone(), t.clone()));
                (x, t)
            }
        }
    }

    /// Routes one row. A row that cannot be published comes back with the reason, untouched, so
    /// the caller can dead-letter its original bytes without copying them beforehand.
    pub fn route(
        &mut self,
        row: OutboxRow,
        pos: &Position,
    ) -> Result<Record, Box<(Refusal, OutboxRow)>> {
        let (topic, extra) = match self.check(&row) {
            Ok(checked) => checked,
            Err(e) => return Err(Box::new((e, row))),
        };
        let event_id = row.id.into_bytes();
        let txn = self.txn_headers(pos);
        let mut headers = standard_headers(
            event_id.clone(),
            row.event_type.into_bytes(),
            row.aggregate_type.into_bytes(),
            row.created_at.map(ByteString::into_bytes),
            pos,
            txn,
            extra.len(),
        );
        headers.extend(extra);
        Ok(Record {
            topic,
            key: Some(row.aggregate_id.into_bytes()),
            value: row.payload,
            headers,
            event_id: Some(event_id),
        })
    }

    /// Everything that can make a row unpublishable, checked before any of it is moved: the
    /// topic, the payload's JSON (for text/bytea columns), the headers object.
    fn check(&mut self, row: &OutboxRow) -> Result<(Arc<str>, Vec<Header>), Refusal> {
        let topic = self.topic(&row.aggregate_type)?;
        if !JSON_OIDS.contains(&row.payload_type_oid)
            && serde_json::from_slice::<serde::de::IgnoredAny>(&row.payload).is_err()
        {
            return Err(Refusal::new(
                Reason::PayloadNotJson,
                format!("payload of event {} is not valid JSON", row.id),
            ));
        }
        let mut extra = Vec::new();
        if let Some(raw) = &row.headers {
            extra_headers(raw, &row.id, &mut extra)?;
        }
        Ok((topic, extra))
    }
}

/// The `pg_xid` and `pg_commit_ts` header values of the transaction at `pos`.
pub fn txn_header_values(pos: &Position) -> (Bytes, Bytes) {
    (
        Bytes::from(pos.xid.to_string()),
        Bytes::from(pg_timestamp_rfc3339(pos.commit_ts_micros)),
    )
}

/// The headers every record of a row carries, routed or dead-lettered, in this order:
/// `event_id`, `event_type`, `aggregate_type`, `created_at` (when known), `pg_lsn`, `pg_xid`,
/// `pg_commit_ts`. Room is left for `extra` more.
pub fn standard_headers(
    event_id: Bytes,
    event_type: Bytes,
    aggregate_type: Bytes,
    created_at: Option<Bytes>,
    pos: &Position,
    (xid, commit_ts): (Bytes, Bytes),
    extra: usize,
) -> Vec<Header> {
    let mut headers: Vec<Header> = Vec::with_capacity(7 + extra);
    headers.push((Cow::Borrowed("event_id"), event_id));
    headers.push((Cow::Borrowed("event_type"), event_type));
    headers.push((Cow::Borrowed("aggregate_type"), aggregate_type));
    if let Some(created_at) = created_at {
        headers.push((Cow::Borrowed("created_at"), created_at));
    }
    headers.push((Cow::Borrowed("pg_lsn"), Bytes::from(pos.lsn.to_string())));
    headers.push((Cow::Borrowed("pg_xid"), xid));
    headers.push((Cow::Borrowed("pg_commit_ts"), commit_ts));
    headers
}

/// Appends the entries of a row's `headers` JSON object: strings as their text, other values as
/// their JSON text. Reserved names are refused rather than silently shadowed.
fn extra_headers(
    raw: &[u8],
    event_id: &str,
    out: &mut Vec<(Cow<'static, str>, Bytes)>,
) -> Result<(), Refusal> {
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| {
        Refusal::new(
            Reason::HeadersNotJson,
            format!("headers of event {event_id} are not valid JSON: {e}"),
        )
    })?;
    match value {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if RESERVED_HEADERS.contains(&k.as_str()) {
                    return Err(Refusal::new(
                        Reason::ReservedHeader,
                        format!("headers of event {event_id} set {k:?}, which the relay owns"),
                    ));
                }
                let bytes = match v {
                    serde_json::Value::String(s) => Bytes::from(s),
                    other => Bytes::from(other.to_string()),
                };
                out.push((Cow::Owned(k), bytes));
            }
            Ok(())
        }
        _ => Err(Refusal::new(
            Reason::HeadersNotObject,
            format!("headers of event {event_id} are not a JSON object"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(aggregate_type: &str, headers: Option<&str>) -> OutboxRow {
        OutboxRow {
            id: "5f0c6f7e-0000-4000-8000-000000000001".into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: "booking-42".into(),
            event_type: "BookingCreated".into(),
            payload: Bytes::from_static(br#"{"a": 1}"#),
            payload_type_oid: 3802,
            headers: headers.map(|h| Bytes::copy_from_slice(h.as_bytes())),
            created_at: Some("2026-11-26 05:00:00.123+00".into()),
        }
    }

    fn router(strict: bool) -> Router {
        let mut topics = HashMap::new();
        topics.insert("car".to_string(), "fleet.cars".to_string());
        Router::new(RouterSettings {
            topic_template: "outbox.{aggregate_type}".into(),
            topics,
            strict,
        })
    }

    const POS: Position = Position {
        lsn: Lsn(0x16_B374_D848),
        xid: 771,
        commit_ts_micros: 0,
    };

    #[test]
    fn routes_by_template_and_override_with_all_headers() {
        let mut r = router(false);
        let rec = r
            .route(
                row("booking", Some(r#"{"traceparent":"00-abc","n":1}"#)),
                &POS,
            )
            .expect("routes");
        assert_eq!(&*rec.topic, "outbox.booking");
        assert_eq!(rec.key.as_deref(), Some(&b"booking-42"[..]));
        assert_eq!(&rec.value[..], br#"{"a": 1}"#);
        let h: HashMap<_, _> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(h["event_id"], "5f0c6f7e-0000-4000-8000-000000000001");
        assert_eq!(h["event_type"], "BookingCreated");
        assert_eq!(h["aggregate_type"], "booking");
        assert_eq!(h["pg_lsn"], "16/B374D848");
        assert_eq!(h["pg_xid"], "771");
        assert_eq!(h["pg_commit_ts"], "2000-01-01T00:00:00.000000Z");
        assert_eq!(h["traceparent"], "00-abc");
        assert_eq!(h["n"], "1");
        assert_eq!(
            &*r.route(row("car", None), &POS).expect("car").topic,
            "fleet.cars"
        );
    }

    #[test]
    fn bad_rows_are_named() {
        assert_eq!(
            router(true)
                .route(row("booking", None), &POS)
                .expect_err("must fail")
                .0
                .reason,
            Reason::Unroutable
        );
        assert_eq!(
            router(false)
                .route(row("has space", None), &POS)
                .expect_err("must fail")
                .0
                .reason,
            Reason::InvalidTopic
        );
        assert_eq!(
            router(false)
                .route(row("booking", Some("[1]")), &POS)
                .expect_err("must fail")
                .0
                .reason,
            Reason::HeadersNotObject
        );
        assert_eq!(
            router(false)
                .route(row("booking", Some(r#"{"event_id":"x"}"#)), &POS)
                .expect_err("must fail")
                .0
                .reason,
            Reason::ReservedHeader
        );
        let mut r = router(false);
        let mut bad = row("booking", None);
        bad.payload = Bytes::from_static(b"{nope");
        bad.payload_type_oid = 25; // text
        assert_eq!(
            r.route(bad, &POS).expect_err("must fail").0.reason,
            Reason::PayloadNotJson
        );
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic("outbox.booking_v2-x"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a/b"));
        assert!(!valid_topic(&"a".repeat(250)));
    }
}
