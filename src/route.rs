//! Outbox row -> Kafka record (topic, key, headers, value). Pure: no I/O, no clocks.
//!
//! The data contract (DESIGN.md section 3):
//! - topic: `routing.topics[aggregate_type]`, else `routing.topic_template` with
//!   `{aggregate_type}` replaced (unless `routing.strict`, where an absent override is unroutable);
//! - key: `aggregate_id` (per-aggregate order: one key, one partition);
//! - value: the payload column's bytes as Postgres sent them (jsonb's canonical text), never
//!   re-encoded;
//! - headers: `event_id`, `event_type`, `aggregate_type`, `created_at`, `pg_lsn`, `pg_xid`,
//!   `pg_commit_ts`, then every entry of the row's `headers` JSON object.
//!
//! A row that cannot become a record is a [`RouteError`] naming why; the relay dead-letters it or
//! stops, by configuration. Topic strings are interned, so a row costs no topic allocation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::decode::OutboxRow;
use crate::lsn::Lsn;

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

/// Why a row cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Short machine-readable reason (a dead-letter header).
    pub reason: &'static str,
    /// What exactly, for people.
    pub detail: String,
}

/// Routing rules, resolved from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RouterSettings {
    /// Template with `{aggregate_type}`.
    pub topic_template: String,
    /// Explicit aggregate_type -> topic overrides.
    pub topics: HashMap<String, String>,
    /// When true, only overrides route.
    pub strict: bool,
}

/// Type OIDs of `json` and `jsonb`: Postgres validated those payloads already.
const JSON_OIDS: [u32; 2] = [114, 3802];

/// Turns rows into records.
#[derive(Debug)]
pub struct Router {
    settings: RouterSettings,
    interned: HashMap<String, Result<Arc<str>, RouteError>>,
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
    pub fn topic(&mut self, aggregate_type: &str) -> Result<Arc<str>, RouteError> {
        if let Some(t) = self.interned.get(aggregate_type) {
            return t.clone();
        }
        let resolved = self.resolve(aggregate_type);
        self.interned
            .insert(aggregate_type.to_string(), resolved.clone());
        resolved
    }

    fn resolve(&self, aggregate_type: &str) -> Result<Arc<str>, RouteError> {
        let topic = match self.settings.topics.get(aggregate_type) {
            Some(t) => t.clone(),
            None if self.settings.strict => {
                return Err(RouteError {
                    reason: "unroutable",
                    detail: format!(
                        "aggregate_type {aggregate_type:?} has no entry in [routing.topics] and routing.strict = true"
                    ),
                })
            }
            None => self
                .settings
                .topic_template
                .replace("{aggregate_type}", aggregate_type),
        };
        if !valid_topic(&topic) {
            return Err(RouteError {
                reason: "invalid_topic",
                detail: format!(
                    "aggregate_type {aggregate_type:?} routes to {topic:?}, which is not a valid Kafka topic name"
                ),
            });
        }
        Ok(Arc::from(topic))
    }

    fn txn_headers(&mut self, pos: &Position) -> (Bytes, Bytes) {
        match &self.txn_headers {
            Some((xid, ts, x, t)) if *xid == pos.xid && *ts == pos.commit_ts_micros => {
                (x.clone(), t.clone())
            }
            _ => {
                let x = Bytes::from(pos.xid.to_string());
                let t = Bytes::from(pg_timestamp_rfc3339(pos.commit_ts_micros));
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
    ) -> Result<Record, Box<(RouteError, OutboxRow)>> {
        let (topic, extra) = match self.check(&row) {
            Ok(checked) => checked,
            Err(e) => return Err(Box::new((e, row))),
        };
        let mut headers: Vec<(Cow<'static, str>, Bytes)> = Vec::with_capacity(7 + extra.len());
        headers.push((Cow::Borrowed("event_id"), Bytes::from(row.id)));
        headers.push((Cow::Borrowed("event_type"), Bytes::from(row.event_type)));
        headers.push((
            Cow::Borrowed("aggregate_type"),
            Bytes::from(row.aggregate_type),
        ));
        if let Some(created_at) = row.created_at {
            headers.push((Cow::Borrowed("created_at"), Bytes::from(created_at)));
        }
        headers.push((Cow::Borrowed("pg_lsn"), Bytes::from(pos.lsn.to_string())));
        let (xid, ts) = self.txn_headers(pos);
        headers.push((Cow::Borrowed("pg_xid"), xid));
        headers.push((Cow::Borrowed("pg_commit_ts"), ts));
        headers.extend(extra);
        Ok(Record {
            topic,
            key: Some(Bytes::from(row.aggregate_id)),
            value: row.payload,
            headers,
        })
    }

    /// Everything that can make a row unpublishable, checked before any of it is moved: the
    /// topic, the payload's JSON (for text/bytea columns), the headers object.
    fn check(&mut self, row: &OutboxRow) -> Result<(Arc<str>, Vec<Header>), RouteError> {
        let topic = self.topic(&row.aggregate_type)?;
        if !JSON_OIDS.contains(&row.payload_type_oid)
            && serde_json::from_slice::<serde::de::IgnoredAny>(&row.payload).is_err()
        {
            return Err(RouteError {
                reason: "payload_not_json",
                detail: format!("payload of event {} is not valid JSON", row.id),
            });
        }
        let mut extra = Vec::new();
        if let Some(raw) = &row.headers {
            extra_headers(raw, &row.id, &mut extra)?;
        }
        Ok((topic, extra))
    }
}

/// Appends the entries of a row's `headers` JSON object: strings as their text, other values as
/// their JSON text. Reserved names are refused rather than silently shadowed.
fn extra_headers(
    raw: &[u8],
    event_id: &str,
    out: &mut Vec<(Cow<'static, str>, Bytes)>,
) -> Result<(), RouteError> {
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| RouteError {
        reason: "headers_not_json",
        detail: format!("headers of event {event_id} are not valid JSON: {e}"),
    })?;
    match value {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if RESERVED_HEADERS.contains(&k.as_str()) {
                    return Err(RouteError {
                        reason: "reserved_header",
                        detail: format!(
                            "headers of event {event_id} set {k:?}, which the relay owns"
                        ),
                    });
                }
                let bytes = match v {
                    serde_json::Value::String(s) => Bytes::from(s),
                    other => Bytes::from(other.to_string()),
                };
                out.push((Cow::Owned(k), bytes));
            }
            Ok(())
        }
        _ => Err(RouteError {
            reason: "headers_not_object",
            detail: format!("headers of event {event_id} are not a JSON object"),
        }),
    }
}

/// Microseconds since 2000-01-01 (Postgres' epoch) as RFC 3339 UTC with microseconds.
pub fn pg_timestamp_rfc3339(micros_since_2000: i64) -> String {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let unix_micros = micros_since_2000 + PG_EPOCH_UNIX_SECS * 1_000_000;
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parses what [`pg_timestamp_rfc3339`] prints back to microseconds since the Unix epoch.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[10] != b'T' || b[26] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    let days = days_from_civil(y, m, d);
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

// Howard Hinnant's civil calendar algorithms (also used by decode::message for `created_at`).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
            "unroutable"
        );
        assert_eq!(
            router(false)
                .route(row("has space", None), &POS)
                .expect_err("must fail")
                .0
                .reason,
            "invalid_topic"
        );
        assert_eq!(
            router(false)
                .route(row("booking", Some("[1]")), &POS)
                .expect_err("must fail")
                .0
                .reason,
            "headers_not_object"
        );
        assert_eq!(
            router(false)
                .route(row("booking", Some(r#"{"event_id":"x"}"#)), &POS)
                .expect_err("must fail")
                .0
                .reason,
            "reserved_header"
        );
        let mut r = router(false);
        let mut bad = row("booking", None);
        bad.payload = Bytes::from_static(b"{nope");
        bad.payload_type_oid = 25; // text
        assert_eq!(
            r.route(bad, &POS).expect_err("must fail").0.reason,
            "payload_not_json"
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let micros = 848_984_400_123_456; // 2026-11-26-ish since 2000
        let text = pg_timestamp_rfc3339(micros);
        let unix = parse_rfc3339_micros(&text).expect("parses");
        assert_eq!(unix, micros + 946_684_800 * 1_000_000);
        assert_eq!(pg_timestamp_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
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
