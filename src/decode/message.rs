//! message: events without a table. A logical decoding message (`pg_logical_emit_message`) with the
//! relay's prefix becomes the same [`OutboxRow`] an outbox insert becomes, so routing, headers and
//! dead-lettering downstream are identical. Pure: no I/O, no clocks.
//!
//! # The envelope, version 1
//!
//! `outbox_emit(...)` (sql/005_emit_event.sql) writes one event as
//! `pg_logical_emit_message(true, <prefix>, <envelope>)`, where the envelope is one UTF-8 JSON
//! object:
//!
//! ```json
//! {"v":1,"id":"8d3c7c1e-2b0a-4f0e-9d6a-1f7b5e2c4a90","aggregate_type":"booking",
//!  "aggregate_id":"42","event_type":"BookingConfirmed","created_at":"2026-11-30T12:14:55.79319+00:00",
//!  "headers":{"traceparent":"00-4bf9-01"},"payload":{"id": 42}}
//! ```
//!
//! | key | JSON type | required | becomes |
//! |---|---|---|---|
//! | `v` | integer | yes | the envelope version; this relay reads `1` only |
//! | `id` | string, a UUID (`8-4-4-4-12` hex digits) | yes | header `event_id` |
//! | `aggregate_type` | string | yes | the topic (routing) and header `aggregate_type` |
//! | `aggregate_id` | string, not empty | yes | the Kafka key |
//! | `event_type` | string | yes | header `event_type` |
//! | `created_at` | string, ISO 8601 with a UTC offset (what `to_json(timestamptz)` prints) | no | header `created_at`, in the outbox table's form (`2026-11-30 12:14:55.79319+00`) |
//! | `headers` | object of extra headers, or `null` | no | extra Kafka headers, checked as a row's `headers` column |
//! | `payload` | any JSON value (`null` included) | yes | the Kafka value: its bytes exactly as they appear in the envelope |
//!
//! * Key order and whitespace do not matter; `outbox_emit` writes the keys in the order above, with
//!   no whitespace between tokens and the payload as jsonb's canonical text (the bytes the outbox
//!   table's `payload` column would send), last.
//! * Evolution: readers ignore keys they do not know, so optional keys can be added within
//!   version 1. A change an older reader would misread (a key renamed, a meaning changed, a key
//!   that must not be ignored) takes a new `v`; a relay dead-letters versions it does not know
//!   (`envelope_unknown_version`), so upgrade relays before writers.
//! * Only transactional messages (`pg_logical_emit_message(true, ...)`) are events: Postgres
//!   delivers them at their position in the transaction, only if it commits. A non-transactional
//!   message with the relay's prefix is written even if its transaction rolls back; it is reported
//!   ([`MessageEvent::NonTransactional`]), never published.
//! * Messages whose prefix is not the relay's are not ours ([`MessageEvent::OtherPrefix`]).
//!
//! # Dead-letter reasons
//!
//! An envelope that cannot be published is a [`EnvelopeError`] whose [`Reason::code`] is
//! the dead-letter reason:
//!
//! | reason | meaning |
//! |---|---|
//! | `envelope_not_json` | the content is not UTF-8, not JSON, or not a JSON object |
//! | `envelope_duplicate_field` | a key appears twice |
//! | `envelope_unknown_version` | `v` is an integer other than 1 |
//! | `envelope_missing_field` | a required key is absent or `null` |
//! | `envelope_wrong_type` | a key holds the wrong JSON type (e.g. `"v":"1"`, `"aggregate_id":42`) |
//! | `envelope_invalid_id` | `id` is not a UUID |
//! | `envelope_invalid_created_at` | `created_at` is not an ISO 8601 timestamp with an offset |
//! | `empty_aggregate_id` | `aggregate_id` is `""` (the same reason as for a row) |
//!
//! Later checks (the topic, the headers object, the record size) are the router's and the sink's,
//! with the same reasons as for rows.
//!
//! # Cost
//!
//! One pass validates the UTF-8, one pass parses the JSON, borrowing: the payload and headers are
//! [`RawValue`] slices of the message (the payload reaches Kafka as a `Bytes` slice of the
//! replication buffer, never re-serialized), and a string without escapes is copied once into its
//! `String`.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::outbox::{type_oid, OutboxRow};
use crate::reason::Reason;

/// The dead-letter reasons of an envelope (besides `empty_aggregate_id`, shared with rows).
pub const ENVELOPE_REASONS: [Reason; 8] = [
    Reason::EnvelopeNotJson,
    Reason::EnvelopeDuplicateField,
    Reason::EnvelopeUnknownVersion,
    Reason::EnvelopeMissingField,
    Reason::EnvelopeWrongType,
    Reason::EnvelopeInvalidId,
    Reason::EnvelopeInvalidCreatedAt,
    Reason::EmptyAggregateId,
];

/// The envelope version this relay writes and reads.
pub const ENVELOPE_VERSION: u64 = 1;

/// The prefix `outbox_emit` uses and the relay listens to unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "outbox";

/// What one logical decoding message means to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageEvent {
    /// A transactional message with the relay's prefix and a valid envelope: publish it exactly as
    /// an inserted row (it counts as one change of its transaction).
    Event(OutboxRow),
    /// A transactional message with the relay's prefix whose envelope cannot be published:
    /// dead-letter it (or stop, by policy), as a bad row. It counts as one change too.
    Malformed(EnvelopeError),
    /// A non-transactional message with the relay's prefix. It is not part of any commit (Postgres
    /// writes it even if its transaction rolls back, and re-sends it after a restart), so it can
    /// never be exactly-once: count it and warn, never publish it.
    NonTransactional {
        /// The envelope's `id`, when it has a readable one (for the warning).
        event_id: Option<String>,
    },
    /// Another prefix: someone else's message. Ignore it.
    OtherPrefix,
}

/// Turns logical decoding messages into outbox rows, for one configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDecoder {
    prefix: String,
}

impl Default for MessageDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl MessageDecoder {
    /// A decoder for messages whose prefix is exactly `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix this decoder accepts.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Classifies one message (`PgOutput::Message` or the transport's message event) and, for a
    /// transactional message with our prefix, decodes its envelope. `content` is kept by the
    /// result (the payload is a slice of it), never copied.
    pub fn decode(&self, transactional: bool, prefix: &str, content: Bytes) -> MessageEvent {
        if prefix != self.prefix {
            return MessageEvent::OtherPrefix;
        }
        if !transactional {
            let event_id = match decode_envelope(content) {
                Ok(row) => Some(row.id.to_string()),
                Err(e) => e.event_id,
            };
            return MessageEvent::NonTransactional { event_id };
        }
        match decode_envelope(content) {
            Ok(row) => MessageEvent::Event(row),
            Err(e) => MessageEvent::Malformed(*e),
        }
    }
}

/// A message with the relay's prefix that cannot be published: dead-letter it (or stop, by
/// configuration). The dead-letter value is the whole envelope ([`Self::content`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox message {}: {reason}: {detail}", event_id.as_deref().unwrap_or("(no id)"))]
pub struct EnvelopeError {
    pub reason: Reason,
    /// The envelope key at fault, when one is.
    pub field: Option<&'static str>,
    /// Human-readable explanation.
    pub detail: String,
    /// The envelope's `id`, when it is a readable string.
    pub event_id: Option<String>,
    /// The envelope's `aggregate_id`, when it is a non-empty string: the dead letter's key.
    pub key: Option<Bytes>,
    /// The message content as received.
    pub content: Bytes,
}

/// Decodes one envelope (the content of a message with the relay's prefix) into the row an insert
/// would have become. The error is boxed: it is rare and large (it keeps the whole content).
pub fn decode_envelope(content: Bytes) -> Result<OutboxRow, Box<EnvelopeError>> {
    let fail = |reason, field, detail: String, fields: Option<&Fields<'_>>| {
        Box::new(EnvelopeError {
            reason,
            field,
            detail,
            event_id: fields
                .and_then(|f| f.id)
                .and_then(|raw| plain_string(raw).ok()),
            key: fields
                .and_then(|f| f.aggregate_id)
                .and_then(|raw| plain_string(raw).ok())
                .filter(|k| !k.is_empty())
                .map(Bytes::from),
            content: content.clone(),
        })
    };
    let text = std::str::from_utf8(&content).map_err(|e| {
        fail(
            Reason::EnvelopeNotJson,
            None,
            format!(
                "content is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
            None,
        )
    })?;
    let fields: Fields<'_> = serde_json::from_str(text).map_err(|e| {
        fail(
            Reason::EnvelopeNotJson,
            None,
            format!("content is not a JSON object: {e}"),
            None,
        )
    })?;
    let f = Some(&fields);
    if let Some(key) = fields.duplicate {
        return Err(fail(
            Reason::EnvelopeDuplicateField,
            Some(key),
            format!("key {key:?} appears more than once"),
            f,
        ));
    }
    check_version(fields.v).map_err(|(reason, detail)| fail(reason, Some("v"), detail, f))?;
    let required =
        |name: &'static str, raw: Option<&RawValue>| -> Result<String, Box<EnvelopeError>> {
            let raw = raw.filter(|raw| !is_null(raw)).ok_or_else(|| {
                fail(
                    Reason::EnvelopeMissingField,
                    Some(name),
                    format!("required key {name:?} is absent or null"),
                    f,
                )
            })?;
            plain_string(raw).map_err(|found| {
                fail(
                    Reason::EnvelopeWrongType,
                    Some(name),
                    format!("{name:?} must be a string, found {found}"),
                    f,
                )
            })
        };
    let id = required("id", fields.id)?;
    if !is_uuid(&id) {
        return Err(fail(
            Reason::EnvelopeInvalidId,
            Some("id"),
            format!("\"id\" {id:?} is not a UUID"),
            f,
        ));
    }
    let aggregate_type = required("aggregate_type", fields.aggregate_type)?;
    let aggregate_id = required("aggregate_id", fields.aggregate_id)?;
    if aggregate_id.is_empty() {
        return Err(fail(
            Reason::EmptyAggregateId,
            Some("aggregate_id"),
            "\"aggregate_id\" is empty: it is the Kafka key".into(),
            f,
        ));
    }
    let event_type = required("event_type", fields.event_type)?;
    let created_at = match fields.created_at.filter(|raw| !is_null(raw)) {
        None => None,
        Some(raw) => {
            let text = plain_string(raw).map_err(|found| {
                fail(
                    Reason::EnvelopeWrongType,
                    Some("created_at"),
                    format!("\"created_at\" must be a string, found {found}"),
                    f,
                )
            })?;
            Some(pg_utc_timestamp(&text).ok_or_else(|| {
                fail(
                    Reason::EnvelopeInvalidCreatedAt,
                    Some("created_at"),
                    format!(
                        "\"created_at\" {text:?} is not an ISO 8601 timestamp with a UTC offset \
                         (YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM)"
                    ),
                    f,
                )
            })?)
        }
    };
    let headers = fields
        .headers
        .filter(|raw| !is_null(raw))
        .map(|raw| content.slice_ref(raw.get().as_bytes()));
    let payload = match fields.payload {
        Some(raw) => content.slice_ref(raw.get().as_bytes()),
        None => {
            return Err(fail(
                Reason::EnvelopeMissingField,
                Some("payload"),
                "required key \"payload\" is absent (a JSON null payload is written as null)"
                    .into(),
                f,
            ))
        }
    };
    Ok(OutboxRow {
        id: id.into(),
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate_id.into(),
        event_type: event_type.into(),
        payload,
        // The JSON parser above validated it: the router need not parse it again.
        payload_type_oid: type_oid::JSON,
        headers,
        created_at: created_at.map(Into::into),
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing: one borrowed pass over the object.

/// The envelope's known keys as raw JSON slices of the content. `None` = absent; JSON `null` is
/// kept as a raw `null` (only the checks above decide what it means).
#[derive(Debug, Default)]
struct Fields<'a> {
    v: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    aggregate_type: Option<&'a RawValue>,
    aggregate_id: Option<&'a RawValue>,
    event_type: Option<&'a RawValue>,
    created_at: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    /// The first key seen twice.
    duplicate: Option<&'static str>,
}

/// A key of the envelope: one of ours, or one to skip.
enum Key {
    Known(&'static str),
    Unknown,
}

const KEYS: [&str; 8] = [
    "v",
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "created_at",
    "headers",
    "payload",
];

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an envelope key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(KEYS
                    .iter()
                    .find(|k| **k == s)
                    .map_or(Key::Unknown, |k| Key::Known(k)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object (the outbox envelope)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let Key::Known(name) = key else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    let raw: &'de RawValue = map.next_value()?;
                    let slot = match name {
                        "v" => &mut f.v,
                        "id" => &mut f.id,
                        "aggregate_type" => &mut f.aggregate_type,
                        "aggregate_id" => &mut f.aggregate_id,
                        "event_type" => &mut f.event_type,
                        "created_at" => &mut f.created_at,
                        "headers" => &mut f.headers,
                        _ => &mut f.payload,
                    };
                    if slot.is_some() {
                        f.duplicate.get_or_insert(name);
                    } else {
                        *slot = Some(raw);
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The JSON type of a raw value, for messages.
fn type_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A JSON string's value (null counts as absent for required keys, hence its own message). A
/// string without escapes is its raw text between the quotes: no second parse.
fn plain_string(raw: &RawValue) -> Result<String, &'static str> {
    let text = raw.get();
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return Err(type_name(raw));
    };
    if !inner.contains('\\') {
        return Ok(inner.to_owned());
    }
    // The parser validated the string already; this only resolves its escapes.
    serde_json::from_str::<String>(text).map_err(|_| "an invalid string")
}

fn check_version(v: Option<&RawValue>) -> Result<(), (Reason, String)> {
    let Some(raw) = v.filter(|raw| !is_null(raw)) else {
        return Err((
            Reason::EnvelopeMissingField,
            "required key \"v\" (the envelope version) is absent or null".into(),
        ));
    };
    match raw.get().parse::<i64>() {
        Ok(1) => Ok(()),
        Ok(other) => Err((
            Reason::EnvelopeUnknownVersion,
            format!(
                "envelope version {other} is not one this relay reads ({ENVELOPE_VERSION}): \
                 upgrade the relay before the writers"
            ),
        )),
        Err(_) => Err((
            Reason::EnvelopeWrongType,
            format!("\"v\" must be an integer, found {}", raw.get()),
        )),
    }
}

/// The canonical text of a UUID: 8-4-4-4-12 hexadecimal digits (either case, as Postgres'
/// `uuid` input accepts; it prints lower case).
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `2026-11-30T12:14:55.79319+01:00` (what `to_json(timestamptz)` prints in any session) as the
/// outbox table's `created_at` arrives from the relay's replication session (`DateStyle=ISO`,
/// `TimeZone=UTC`): `2026-11-30 11:14:55.79319+00`, fraction without trailing zeros. `Z` is
/// accepted for `+00:00`, a space for `T`, and offsets `+HH`, `+HH:MM`, `+HH:MM:SS`. Years
/// 0001-9999 only.
pub(crate) fn pg_utc_timestamp(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(r)?;
        if s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1 || d < 1 || d > days_in_month || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut i = 19;
    let mut fraction = "";
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start || end - start > 6 {
            return None;
        }
        fraction = text.get(start..end)?.trim_end_matches('0');
        i = end;
    }
    let offset_secs = match b.get(i)? {
        b'Z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') => {
            let rest = text.get(i + 1..)?;
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            let mut secs = 0i64;
            for (p, unit) in parts.iter().zip([3600, 60, 1]) {
                if !p.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                secs += p.parse::<i64>().ok()? * unit;
            }
            if secs >= 16 * 3600 {
                return None;
            }
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let local = crate::route::time::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    let utc = local - offset_secs;
    let (uy, um, ud) = crate::route::time::civil_from_days(utc.div_euclid(86_400));
    if !(1..=9999).contains(&uy) {
        return None;
    }
    let sod = utc.rem_euclid(86_400);
    let mut out = format!(
        "{uy:04}-{um:02}-{ud:02} {:02}:{:02}:{:02}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    );
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out.push_str("+00");
    Some(out)
}

// The tests live beside the decoder's other tests; they reach its private helpers as a child.
#[cfg(test)]
#[path = "tests/message.rs"]
mod tests;
