//! decode: pgoutput bytes -> typed messages -> outbox rows.
//!
//! Two layers, plus the envelope of table-less events, all pure (no I/O, no clocks) and allocation-light:
//!
//! ```text
//!  XLogData bytes ──> pgoutput::decode ──> PgOutput ──┬─ Relation ──> OutboxDecoder::relation (cache, column indexes)
//!  (one message,       (protocol v1, text tuples,     │
//!   tag included)       never panics, zero-copy)      ├─ Insert ────> OutboxDecoder::insert ──> OutboxRow
//!                                                     │                 InsertError::Row: dead-letter (reason + raw bytes)
//!                                                     │                 InsertError::Schema / Protocol: stop the relay
//!                                                     └─ Message ───> MessageDecoder::decode ──> OutboxRow (the same)
//!                                                                       Malformed: dead-letter (reason + envelope)
//!                                                                       OtherPrefix: ignore; NonTransactional: count, warn
//! ```
//!
//! * [`pgoutput`]: one pgoutput message (protocol version 1, no streaming, no two-phase) from raw bytes.
//!   Every message type is decoded, including the ones the transport (`pgwire-replication`) parses
//!   itself (Begin, Commit, logical Message), so the transport can change. Unknown tags are errors,
//!   never skipped. Datums are `Bytes` slices of the input: no copy.
//! * [`outbox`]: the relation cache and the mapping of an insert tuple onto the configured outbox
//!   columns ([`ColumnMap`]), with errors sorted by what the relay must do: a bad *row* is
//!   dead-lettered ([`RowError`] keeps its raw column bytes), a bad *schema* or *protocol* stops.
//! * [`message`]: events without a table. A transactional logical decoding message with the
//!   relay's prefix (`outbox_emit`, sql/005) carries a versioned JSON envelope that becomes the same
//!   [`OutboxRow`] an insert becomes; a malformed envelope is an [`EnvelopeError`] (dead-letter),
//!   other prefixes and non-transactional messages are told apart ([`MessageEvent`]).
//! * [`encode`]: the inverse of [`pgoutput::decode`], to build messages in tests and benchmarks.

pub mod encode;
pub mod message;
pub mod outbox;
pub mod pgoutput;

pub use message::{decode_envelope, EnvelopeError, MessageDecoder, MessageEvent, ENVELOPE_REASONS};
pub use outbox::{
    type_oid, ColumnMap, InsertError, OutboxDecoder, OutboxRow, RawColumn, RawRow, RowError,
    SchemaError,
};
pub use pgoutput::{decode, Column, Datum, DecodeError, Lsn, PgOutput, Relation, Tuple};

#[cfg(test)]
mod tests;
