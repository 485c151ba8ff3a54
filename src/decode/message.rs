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
//! An envelope that cannot be published is a [`EnvelopeError`] whose [`EnvelopeErrorKind::code`] is
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
                Ok(row) => Some(row.id),
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

/// Why an envelope cannot be published: the dead-letter reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvelopeErrorKind {
    /// Not UTF-8, not JSON, or not a JSON object.
    NotJson,
    /// A key appears twice (which one to believe is undefined).
    DuplicateField,
    /// `v` is an integer this relay does not read.
    UnknownVersion,
    /// A required key is absent or `null`.
    MissingField,
    /// A key holds the wrong JSON type.
    WrongType,
    /// `id` is not a UUID.
    InvalidId,
    /// `created_at` is not an ISO 8601 timestamp with a UTC offset.
    InvalidCreatedAt,
    /// `aggregate_id` is empty: no Kafka key, no per-aggregate order (as for a row).
    EmptyAggregateId,
}

impl EnvelopeErrorKind {
    /// Every kind, for docs and metric label pre-registration.
    pub const ALL: [EnvelopeErrorKind; 8] = [
        EnvelopeErrorKind::NotJson,
        EnvelopeErrorKind::DuplicateField,
        EnvelopeErrorKind::UnknownVersion,
        EnvelopeErrorKind::MissingField,
        EnvelopeErrorKind::WrongType,
        EnvelopeErrorKind::InvalidId,
        EnvelopeErrorKind::InvalidCreatedAt,
        EnvelopeErrorKind::EmptyAggregateId,
    ];

    /// A stable code for dead-letter headers and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            EnvelopeErrorKind::NotJson => "envelope_not_json",
            EnvelopeErrorKind::DuplicateField => "envelope_duplicate_field",
            EnvelopeErrorKind::UnknownVersion => "envelope_unknown_version",
            EnvelopeErrorKind::MissingField => "envelope_missing_field",
            EnvelopeErrorKind::WrongType => "envelope_wrong_type",
            EnvelopeErrorKind::InvalidId => "envelope_invalid_id",
            EnvelopeErrorKind::InvalidCreatedAt => "envelope_invalid_created_at",
            EnvelopeErrorKind::EmptyAggregateId => "empty_aggregate_id",
        }
    }
}

impl fmt::Display for EnvelopeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A message with the relay's prefix that cannot be published: dead-letter it (or stop, by
/// configuration). The dead-letter value is the whole envelope ([`Self::content`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox message {}: {reason}: {detail}", event_id.as_deref().unwrap_or("(no id)"))]
pub struct EnvelopeError {
    pub reason: EnvelopeErrorKind,
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
            EnvelopeErrorKind::NotJson,
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
            EnvelopeErrorKind::NotJson,
            None,
            format!("content is not a JSON object: {e}"),
            None,
        )
    })?;
    let f = Some(&fields);
    if let Some(key) = fields.duplicate {
        return Err(fail(
            EnvelopeErrorKind::DuplicateField,
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
                    EnvelopeErrorKind::MissingField,
                    Some(name),
                    format!("required key {name:?} is absent or null"),
                    f,
                )
            })?;
            plain_string(raw).map_err(|found| {
                fail(
                    EnvelopeErrorKind::WrongType,
                    Some(name),
                    format!("{name:?} must be a string, found {found}"),
                    f,
                )
            })
        };
    let id = required("id", fields.id)?;
    if !is_uuid(&id) {
        return Err(fail(
            EnvelopeErrorKind::InvalidId,
            Some("id"),
            format!("\"id\" {id:?} is not a UUID"),
            f,
        ));
    }
    let aggregate_type = required("aggregate_type", fields.aggregate_type)?;
    let aggregate_id = required("aggregate_id", fields.aggregate_id)?;
    if aggregate_id.is_empty() {
        return Err(fail(
            EnvelopeErrorKind::EmptyAggregateId,
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
                    EnvelopeErrorKind::WrongType,
                    Some("created_at"),
                    format!("\"created_at\" must be a string, found {found}"),
                    f,
                )
            })?;
            Some(pg_utc_timestamp(&text).ok_or_else(|| {
                fail(
                    EnvelopeErrorKind::InvalidCreatedAt,
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
                EnvelopeErrorKind::MissingField,
                Some("payload"),
                "required key \"payload\" is absent (a JSON null payload is written as null)"
                    .into(),
                f,
            ))
        }
    };
    Ok(OutboxRow {
        id,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        // The JSON parser above validated it: the router need not parse it again.
        payload_type_oid: type_oid::JSON,
        headers,
        created_at,
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

fn check_version(v: Option<&RawValue>) -> Result<(), (EnvelopeErrorKind, String)> {
    let Some(raw) = v.filter(|raw| !is_null(raw)) else {
        return Err((
            EnvelopeErrorKind::MissingField,
            "required key \"v\" (the envelope version) is absent or null".into(),
        ));
    };
    match raw.get().parse::<i64>() {
        Ok(1) => Ok(()),
        Ok(other) => Err((
            EnvelopeErrorKind::UnknownVersion,
            format!(
                "envelope version {other} is not one this relay reads ({ENVELOPE_VERSION}): \
                 upgrade the relay before the writers"
            ),
        )),
        Err(_) => Err((
            EnvelopeErrorKind::WrongType,
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
    let local = crate::route::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    let utc = local - offset_secs;
    let (uy, um, ud) = crate::route::civil_from_days(utc.div_euclid(86_400));
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

#[cfg(test)]
mod tests {
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
                assert_eq!(e.reason, EnvelopeErrorKind::EmptyAggregateId);
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
        use EnvelopeErrorKind::*;
        let cases: Vec<(String, EnvelopeErrorKind, Option<&str>)> = vec![
            ("".into(), NotJson, None),
            ("{nope".into(), NotJson, None),
            ("[1]".into(), NotJson, None),
            ("\"text\"".into(), NotJson, None),
            ("null".into(), NotJson, None),
            (format!("{good} x"), NotJson, None),
            (good[..good.len() - 1].to_string(), NotJson, None),
            (
                replace("\"v\":1", "\"v\":1,\"v\":1"),
                DuplicateField,
                Some("v"),
            ),
            (
                replace("\"payload\":", "\"id\":\"x\",\"payload\":"),
                DuplicateField,
                Some("id"),
            ),
            (replace("\"v\":1", "\"v\":2"), UnknownVersion, Some("v")),
            (replace("\"v\":1", "\"v\":0"), UnknownVersion, Some("v")),
            (replace("\"v\":1", "\"v\":-1"), UnknownVersion, Some("v")),
            (replace("\"v\":1,", ""), MissingField, Some("v")),
            (replace("\"v\":1", "\"v\":null"), MissingField, Some("v")),
            (replace("\"v\":1", "\"v\":\"1\""), WrongType, Some("v")),
            (replace("\"v\":1", "\"v\":1.0"), WrongType, Some("v")),
            (replace("\"v\":1", "\"v\":true"), WrongType, Some("v")),
            (
                replace(&format!("\"id\":\"{id}\","), ""),
                MissingField,
                Some("id"),
            ),
            (
                replace(&format!("\"id\":\"{id}\""), "\"id\":null"),
                MissingField,
                Some("id"),
            ),
            (
                replace(&format!("\"id\":\"{id}\""), "\"id\":5"),
                WrongType,
                Some("id"),
            ),
            (replace(id, "not-a-uuid"), InvalidId, Some("id")),
            (replace(id, &id.replace('-', "")), InvalidId, Some("id")),
            (replace(id, &format!("{id}0")), InvalidId, Some("id")),
            (
                replace(id, &id.replacen('8', "g", 1)),
                InvalidId,
                Some("id"),
            ),
            (
                replace("\"aggregate_type\":\"booking\",", ""),
                MissingField,
                Some("aggregate_type"),
            ),
            (
                replace(
                    "\"aggregate_type\":\"booking\"",
                    "\"aggregate_type\":[\"booking\"]",
                ),
                WrongType,
                Some("aggregate_type"),
            ),
            (
                replace("\"aggregate_id\":\"B-7\",", ""),
                MissingField,
                Some("aggregate_id"),
            ),
            (
                replace("\"aggregate_id\":\"B-7\"", "\"aggregate_id\":null"),
                MissingField,
                Some("aggregate_id"),
            ),
            (
                replace("\"aggregate_id\":\"B-7\"", "\"aggregate_id\":42"),
                WrongType,
                Some("aggregate_id"),
            ),
            (
                replace("\"aggregate_id\":\"B-7\"", "\"aggregate_id\":\"\""),
                EmptyAggregateId,
                Some("aggregate_id"),
            ),
            (
                replace("\"event_type\":\"BookingCreated\",", ""),
                MissingField,
                Some("event_type"),
            ),
            (
                replace("\"event_type\":\"BookingCreated\"", "\"event_type\":{}"),
                WrongType,
                Some("event_type"),
            ),
            (
                replace("\"2026-11-30T12:23:47.529776+00:00\"", "1796300627"),
                WrongType,
                Some("created_at"),
            ),
            (
                replace("2026-11-30T12:23:47.529776+00:00", "yesterday"),
                InvalidCreatedAt,
                Some("created_at"),
            ),
            (
                replace(
                    "2026-11-30T12:23:47.529776+00:00",
                    "2026-11-30T12:23:47.529776",
                ),
                InvalidCreatedAt,
                Some("created_at"),
            ),
            (
                replace(
                    "2026-11-30T12:23:47.529776+00:00",
                    "2026-02-30T12:23:47+00:00",
                ),
                InvalidCreatedAt,
                Some("created_at"),
            ),
            (
                replace(
                    ",\"payload\":{\"car\": \"VW Polo\", \"days\": 3, \"price\": 2.50}",
                    "",
                ),
                MissingField,
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
            if reason != NotJson {
                // The id is named whenever it is a string (even a bad or duplicated one).
                let expect_id = field != Some("id") || matches!(reason, InvalidId | DuplicateField);
                assert_eq!(e.event_id.is_some(), expect_id, "{text}: {e:?}");
            }
        }
        // Bytes that are not UTF-8.
        let mut bytes = envelope().into_bytes();
        bytes[30] = 0xff;
        let e = decode_envelope(Bytes::from(bytes)).unwrap_err();
        assert_eq!(e.reason, NotJson);
        assert!(e.detail.contains("not UTF-8"), "{}", e.detail);
    }

    #[test]
    fn the_dead_letter_key_is_the_aggregate_id_when_readable() {
        let text = envelope().replace("\"v\":1", "\"v\":9");
        let e = decode_str(&text).unwrap_err();
        assert_eq!(e.reason, EnvelopeErrorKind::UnknownVersion);
        assert_eq!(e.key.as_deref(), Some(&b"B-7"[..]));
        assert_eq!(
            e.event_id.as_deref(),
            Some("288d845d-6fff-412b-b6b3-48205597eb07")
        );
    }

    #[test]
    fn reason_codes_are_unique_short_snake_case() {
        let codes: Vec<&str> = EnvelopeErrorKind::ALL.iter().map(|k| k.code()).collect();
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
        // The same fault as a row's, the same code.
        assert_eq!(
            EnvelopeErrorKind::EmptyAggregateId.code(),
            crate::decode::RowErrorKind::EmptyAggregateId.code()
        );
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
            prop_assert_eq!(row.created_at, Some(expected_created));
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
}
