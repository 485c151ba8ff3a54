//! The transactional producer: one Kafka transaction at a time, records then the checkpoint.
//!
//! ```text
//!  connect: init_transactions (fences any older instance with our transactional.id)
//!  begin (lazily, on the first record) -> send record ... -> commit(checkpoint) | abort
//! ```
//!
//! Every call blocks (librdkafka's transactional API waits for the broker): the committer runs
//! `commit` on a blocking thread and the rest from `block_in_place`. Errors are sorted by
//! [`kafka_error::classify`]: `Retry` is retried here; everything else ends the call with what
//! the caller must do.
//!
//! Each record's delivery opaque is its ordinal in the open transaction, and the producer keeps
//! the event ids by ordinal, so a record the broker refuses is named by the event id the route
//! stage gave it, never by re-reading its headers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use super::checkpoint::{Checkpoint, CheckpointKey};
use super::kafka_error::{self, Failure};
use super::SinkSettings;
use crate::error::{Error, Result};
use crate::reason::{Reason, Refusal};
use crate::route::Record;

/// The key of `doctor --probe-writes`' aborted records.
pub const PROBE_KEY: &str = "outbox-relay-doctor-probe";

/// The first delivery failure since the transaction began (the largest record for "too large").
#[derive(Debug, Clone)]
struct DeliveryFailure {
    /// The record's ordinal in its transaction (its delivery opaque).
    ordinal: usize,
    topic: String,
    error: String,
    code: Option<RDKafkaErrorCode>,
    size: usize,
}

/// Logs the same librdkafka error at most once per this period (a broker outage otherwise logs
/// "all brokers are down" twice a second).
const LOG_REPEAT: Duration = Duration::from_secs(30);

/// Client context shared by the relay's Kafka clients: routes librdkafka's logs to tracing (each
/// repeated error once per [`LOG_REPEAT`]), keeps the first SASL failure (a wrong password surfaces
/// only here) and, for the producer, the first delivery failure.
#[derive(Debug, Default)]
pub struct SinkContext {
    failure: Mutex<Option<DeliveryFailure>>,
    auth_failure: Mutex<Option<String>>,
    logged: Mutex<HashMap<String, Instant>>,
    /// The last ERROR-level line librdkafka logged (e.g. why a transaction failed), for messages.
    last_error_log: Mutex<Option<String>>,
}

impl SinkContext {
    /// The first SASL authentication failure reported, if any.
    pub fn auth_failure(&self) -> Option<String> {
        self.auth_failure.lock().ok().and_then(|f| f.clone())
    }

    /// The last ERROR-level line librdkafka logged, if any (for messages only: errors are
    /// sorted by code, never by this text).
    pub fn last_error_log(&self) -> Option<String> {
        self.last_error_log.lock().ok().and_then(|f| f.clone())
    }

    /// Whether a message keyed `key` should be logged now (first time, or after [`LOG_REPEAT`]).
    fn should_log(&self, key: String) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match logged.get(&key) {
            Some(at) if now.duration_since(*at) < LOG_REPEAT => false,
            _ => {
                logged.insert(key, now);
                true
            }
        }
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if let Ok(mut last) = self.last_error_log.lock() {
                    *last = Some(format!("{fac}: {log_message}"));
                }
                if self.should_log(format!("{fac}:{log_message}")) {
                    tracing::error!(target: "librdkafka", fac, "{log_message}")
                }
            }
            RDKafkaLogLevel::Warning => {
                if self.should_log(format!("{fac}:{log_message}")) {
                    tracing::warn!(target: "librdkafka", fac, "{log_message}")
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code.is_some_and(|c| {
            matches!(
                c,
                RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed
            )
        }) {
            let mut slot = self.auth_failure.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(reason.to_string());
            }
        }
        // A consumer reaching the end of a partition is not an error.
        if matches!(error, KafkaError::PartitionEOF(_))
            || code == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        if self.should_log(format!("{code:?}")) {
            tracing::warn!(target: "librdkafka", %error, "{reason} (repeats of this error are logged at most every {}s)", LOG_REPEAT.as_secs());
        }
    }
}

impl ConsumerContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ordinal: usize) {
        use rdkafka::message::Message;
        let Err((err, msg)) = result else { return };
        let size = msg.payload_len();
        let code = err.rdkafka_error_code();
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        // librdkafka fails a whole batch when the broker refuses it as too large: blame its
        // largest record, not the first one (which may be a good record sharing the batch).
        let too_large = |c: Option<RDKafkaErrorCode>| {
            c.and_then(kafka_error::refusal_reason) == Some(Reason::RecordTooLarge)
        };
        let replace = match slot.as_ref() {
            None => true,
            Some(prev) => too_large(code) && prev.code == code && size > prev.size,
        };
        if replace {
            *slot = Some(DeliveryFailure {
                ordinal,
                topic: msg.topic().to_string(),
                error: err.to_string(),
                code,
                size,
            });
        }
    }
}

/// Why a record could not be queued.
#[derive(Debug)]
pub enum SendError {
    /// This record can never be published as it is: a poison row.
    Refused(Refusal),
    /// The session must end.
    Session(Error),
}

/// Why a commit failed.
#[derive(Debug)]
pub enum CommitError {
    /// The broker refused one record for good (its event id, when it had one): the replay
    /// dead-letters that row.
    Refused {
        event_id: Option<Bytes>,
        refusal: Refusal,
        error: Error,
    },
    /// The session must end.
    Session(Error),
}

/// A transactional producer bound to one `transactional.id` and one checkpoint key.
pub struct Producer {
    producer: ThreadedProducer<SinkContext>,
    settings: SinkSettings,
    checkpoint_key: CheckpointKey,
    in_txn: bool,
    /// Event ids of the open transaction's records, by ordinal (the delivery opaque).
    ids: EventIds,
}

/// The event ids of one Kafka transaction's records, by ordinal, copied into one buffer.
///
/// A record's id is a slice of the pgoutput message it came in, which must not stay pinned for
/// the whole transaction (up to `batch.split_events` records), and a copy per record would cost
/// an allocation each; appending to one buffer costs none once it has grown.
#[derive(Debug, Default)]
struct EventIds {
    bytes: Vec<u8>,
    /// Each record's span in `bytes`; `None` for a record without a readable id.
    spans: Vec<Option<(u32, u32)>>,
}

impl EventIds {
    fn len(&self) -> usize {
        self.spans.len()
    }

    fn push(&mut self, id: Option<&[u8]>) {
        let span = id.map(|id| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(id);
            // Ids are short texts; a span past u32 would need 4 GiB of ids in one transaction.
            (start as u32, self.bytes.len() as u32)
        });
        self.spans.push(span);
    }

    /// The id of the record with this ordinal, if it had one.
    fn get(&self, ordinal: usize) -> Option<Bytes> {
        let (start, end) = (*self.spans.get(ordinal)?)?;
        self.bytes
            .get(start as usize..end as usize)
            .map(Bytes::copy_from_slice)
    }

    /// Empties the log; what a split transaction grew beyond a default batch is returned.
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.bytes.shrink_to(1 << 18);
        self.spans.shrink_to(1 << 13);
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("transactional_id", &self.settings.transactional_id)
            .field("in_txn", &self.in_txn)
            .finish_non_exhaustive()
    }
}

/// Properties the relay owns on its producer (refused in `kafka.properties`).
fn producer_config(settings: &SinkSettings) -> rdkafka::ClientConfig {
    // The client's properties (secrets exposed here, to librdkafka only), then the relay's
    // defaults where the passthrough did not tune them, then what the relay owns.
    let mut cc = super::client_config(&settings.client);
    for (k, v) in [
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("batch.num.messages", "5000"),
        // The records librdkafka holds before the brokers acknowledged them bound the relay's
        // memory whenever it produces faster than the brokers take (a drain, a split Postgres
        // transaction). librdkafka counts only payload bytes against `queue.buffering.max.kbytes`,
        // while each small record also carries its headers, key and bookkeeping (about 1.4 KB in
        // all, measured with heaptrack), so a count bounds it too: 100000 let one 300k-row
        // transaction peak at 48-54 MB of RSS, 5000 at 37-40 MB with the same drain rate
        // (`outbox-relay-bench --large-txn-only`, issue 16). 5000 is also `batch.max_events`'
        // default: a default-sized Kafka transaction still fits the queue whole (and no batch can
        // hold more than the queue, hence `batch.num.messages` the same).
        ("queue.buffering.max.messages", "5000"),
        // The first record of a transaction needs AddPartitionsToTxn, which the coordinator
        // answers CONCURRENT_TRANSACTIONS until the previous commit's markers are written;
        // librdkafka retries after retry.backoff.ms (default 100 ms), which then dominates.
        ("retry.backoff.ms", "10"),
    ] {
        if cc.get(k).is_none() {
            cc.set(k, v);
        }
    }
    // The bytes librdkafka holds before the brokers acknowledged them bound the relay's memory in a
    // Kafka transaction larger than a batch (a split Postgres transaction keeps producing until
    // `split_events`): 16 MiB cost 35-45 MB of RSS there, 4 MiB keeps the drain rate (issue 16).
    // The largest record must still fit, or producing it would wait for room forever.
    if cc.get("queue.buffering.max.kbytes").is_none() {
        let kbytes = (2 * settings.max_record_bytes()).div_ceil(1024).max(4096);
        cc.set("queue.buffering.max.kbytes", kbytes.to_string());
    }
    let timeout_ms = settings.transaction_timeout.as_millis().to_string();
    cc.set("transactional.id", &settings.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("transaction.timeout.ms", &timeout_ms)
        .set("message.timeout.ms", &timeout_ms);
    cc
}

/// An authentication failure the client reported through its error callback, as a
/// configuration error naming the brokers and the user.
pub fn auth_failed(context: &SinkContext, settings: &SinkSettings) -> Option<Error> {
    let reason = context.auth_failure()?;
    Some(Error::config(format!(
        "kafka: authentication failed at {} for user {:?}: {reason} (check kafka.sasl_username / kafka.sasl_password / kafka.sasl_password_file)",
        settings.client.servers(),
        settings.client.sasl_user()
    )))
}

/// An authentication or authorization error code, as a configuration error.
fn auth_error(e: &KafkaError, settings: &SinkSettings) -> Option<Error> {
    let code = e.rdkafka_error_code()?;
    kafka_error::is_auth(code).then(|| {
        Error::config(format!(
            "kafka: {code} at {} for user {:?} (check kafka.sasl_username / kafka.sasl_password and the ACLs for transactional.id {:?})",
            settings.client.servers(),
            settings.client.sasl_user(),
            settings.transactional_id
        ))
    })
}

impl Producer {
    /// Creates the producer and runs `init_transactions` (bounded by `deadline`), which fences
    /// any older instance with the same `transactional.id` and aborts what it left open. Blocks.
    pub fn connect(
        settings: SinkSettings,
        checkpoint_key: CheckpointKey,
        deadline: Duration,
    ) -> Result<Self> {
        let producer: ThreadedProducer<SinkContext> = producer_config(&settings)
            .create_with_context(SinkContext::default())
            .map_err(|e| {
                Error::config(format!(
                    "kafka: cannot create the producer for {}: {e}",
                    settings.client.servers()
                ))
            })?;
        let started = Instant::now();
        // The coordinator query must not go out on the bootstrap connection (see there).
        super::await_learned_broker(
            producer.client(),
            &settings.checkpoint_topic,
            deadline.min(Duration::from_secs(1)),
        );
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::transient(format!(
                    "kafka: init_transactions for transactional.id {:?} did not complete within {deadline:?} (brokers {})",
                    settings.transactional_id,
                    settings.client.servers()
                )));
            }
            // Short slices (a timed-out init_transactions resumes where it was), so a SASL
            // failure, reported only through the error callback, ends the wait at once.
            match producer.init_transactions(left.min(Duration::from_secs(1))) {
                Ok(()) => break,
                Err(e) => {
                    if let Some(err) = auth_error(&e, &settings) {
                        return Err(err);
                    }
                    if let Some(err) = auth_failed(producer.context(), &settings) {
                        return Err(err);
                    }
                    match kafka_error::classify(&e) {
                        Failure::Retry => {}
                        f => return Err(kafka_error::session_error("init_transactions", f, e)),
                    }
                }
            }
        }
        Ok(Self {
            producer,
            settings,
            checkpoint_key,
            in_txn: false,
            ids: EventIds::default(),
        })
    }

    /// Whether a Kafka transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    fn begin(&mut self) -> Result<()> {
        if self.in_txn {
            return Ok(());
        }
        if let Ok(mut f) = self.producer.context().failure.lock() {
            *f = None;
        }
        self.producer.begin_transaction().map_err(|e| {
            let f = kafka_error::classify(&e);
            kafka_error::session_error("begin_transaction", f, e)
        })?;
        self.in_txn = true;
        self.ids.clear();
        Ok(())
    }

    /// Queues one record in the open transaction (opening one when needed). A full queue is
    /// waited out here (up to the call timeout), retrying this record before any later one, or
    /// per-key order would break.
    pub fn send(&mut self, rec: &Record) -> std::result::Result<(), SendError> {
        self.begin().map_err(SendError::Session)?;
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k.as_ref(),
                value: Some(v.as_ref()),
            });
        }
        let ordinal = self.ids.len();
        let mut record = BaseRecord::with_opaque_to(&rec.topic, ordinal)
            .payload(rec.value.as_ref())
            .headers(headers);
        if let Some(key) = &rec.key {
            record = record.key(key.as_ref());
        }
        let mut waited = Duration::ZERO;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.ids.push(rec.event_id.as_deref());
                    return Ok(());
                }
                Err((e, r)) => match kafka_error::classify(&e) {
                    Failure::Retry if waited <= self.settings.call_timeout => {
                        record = r;
                        let pause = Duration::from_millis(2);
                        std::thread::sleep(pause);
                        waited += pause;
                    }
                    Failure::Retry => {
                        return Err(SendError::Session(Error::transient(
                            "kafka: the producer queue stayed full (brokers not accepting records)",
                        )))
                    }
                    Failure::Refused(reason) => {
                        return Err(SendError::Refused(Refusal::new(
                            reason,
                            format!("topic {}: the producer refused the record: {e}", rec.topic),
                        )))
                    }
                    f => {
                        return Err(SendError::Session(kafka_error::session_error(
                            &format!("producing to {}", rec.topic),
                            f,
                            e,
                        )))
                    }
                },
            }
        }
    }

    /// Produces the checkpoint and commits the open transaction (opening one for a
    /// checkpoint-only commit). Returns only once the broker confirmed the commit.
    pub fn commit(&mut self, cp: &Checkpoint) -> std::result::Result<(), CommitError> {
        self.commit_record(Some(&cp.encode()))
    }

    /// Commits a tombstone for our checkpoint key (`reset-checkpoint`): the relay's next start
    /// finds no checkpoint and publishes from the slot's position.
    pub fn commit_tombstone(&mut self) -> std::result::Result<(), CommitError> {
        self.commit_record(None)
    }

    /// Produces the checkpoint record (`None`: a tombstone) and commits the open transaction.
    fn commit_record(&mut self, value: Option<&[u8]>) -> std::result::Result<(), CommitError> {
        self.begin().map_err(CommitError::Session)?;
        let mut record = BaseRecord::with_opaque_to(&self.settings.checkpoint_topic, usize::MAX)
            .partition(0)
            .key(self.checkpoint_key.as_str().as_bytes());
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    return Err(CommitError::Session(
                        Error::transient("kafka: producing the checkpoint").with_source(e),
                    ))
                }
            }
        }
        let started = Instant::now();
        self.await_deliveries(started + self.settings.call_timeout);
        loop {
            match self.producer.commit_transaction(self.settings.call_timeout) {
                Ok(()) => {
                    self.in_txn = false;
                    self.ids.clear();
                    return Ok(());
                }
                Err(e) => match kafka_error::classify(&e) {
                    Failure::Retry if started.elapsed() < self.settings.transaction_timeout => {
                        tracing::warn!("kafka: commit_transaction timed out; retrying");
                    }
                    Failure::Retry => {
                        return Err(CommitError::Session(
                            Error::transient(
                                "kafka: commit_transaction kept timing out past the transaction timeout",
                            )
                            .with_source(e),
                        ))
                    }
                    f => return Err(self.commit_failed(f, e)),
                },
            }
        }
    }

    /// A failed commit: name the first failed record, and say whether it was refused for good.
    fn commit_failed(&self, f: Failure, e: KafkaError) -> CommitError {
        let error = kafka_error::session_error("commit_transaction", f, e);
        let Some(failure) = self
            .producer
            .context()
            .failure
            .lock()
            .ok()
            .and_then(|g| g.clone())
        else {
            return CommitError::Session(error);
        };
        let event_id = self.ids.get(failure.ordinal);
        let shown = event_id
            .as_ref()
            .map_or_else(|| "-".into(), |b| String::from_utf8_lossy(b).into_owned());
        let error = Error::new(
            error.kind(),
            format!(
                "{} (first failed record: topic {:?}, event_id {shown}: {})",
                error.message(),
                failure.topic,
                failure.error
            ),
        )
        .with_source(error);
        match failure.code.and_then(kafka_error::refusal_reason) {
            Some(reason) if f != Failure::Fenced => CommitError::Refused {
                event_id,
                refusal: Refusal::new(
                    reason,
                    format!("topic {}: {}", failure.topic, failure.error),
                ),
                error,
            },
            _ => CommitError::Session(error),
        }
    }

    /// Waits (until `deadline` at most) for librdkafka to have no record in flight.
    ///
    /// rust-rdkafka's `commit_transaction` first runs its own `flush`, which polls in 100 ms
    /// slices that do not end when the last delivery arrives: any record still in flight makes a
    /// commit cost at least 100 ms (section 0 of `dev/bench.sh` measures it). The producer's
    /// polling thread serves the deliveries; once none is left that flush returns at once.
    fn await_deliveries(&self, deadline: Instant) {
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Proves that the broker lets this producer write to `topic` without anything becoming
    /// visible to `read_committed` consumers (`doctor --probe-writes`): one record (key
    /// [`PROBE_KEY`], no value, header `outbox-relay-probe`) in a transaction that is then
    /// aborted. Adding the partition to the transaction is where the broker checks WRITE on the
    /// topic. `Ok(Err(why))`: the broker refused it. Blocks.
    pub fn probe_write(&mut self, topic: &str) -> Result<std::result::Result<(), String>> {
        self.begin()?;
        if let Ok(mut last) = self.producer.context().last_error_log.lock() {
            *last = None;
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: "outbox-relay-probe",
            value: Some("aborted"),
        });
        let record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, 0)
            .key(PROBE_KEY.as_bytes())
            .headers(headers);
        let queued = self.producer.send(record).map_err(|(e, _)| e);
        self.ids.push(None);
        let verdict = match queued {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                self.await_deliveries(Instant::now() + self.settings.call_timeout);
                let context = self.producer.context();
                match context.failure.lock().ok().and_then(|g| g.clone()) {
                    // The transaction failed (librdkafka purged its records): why is in its log.
                    Some(f) if f.code == Some(RDKafkaErrorCode::PurgeQueue) => {
                        Err(context.last_error_log().unwrap_or(f.error))
                    }
                    Some(f) => Err(f.error),
                    None if self.producer.in_flight_count() > 0 => {
                        Err(format!("no answer within {:?}", self.settings.call_timeout))
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = self.producer.abort_transaction(self.settings.call_timeout) {
            return Err(Error::transient(format!(
                "kafka: aborting the probe transaction on {topic:?}"
            ))
            .with_source(e));
        }
        self.in_txn = false;
        self.ids.clear();
        Ok(verdict)
    }

    /// Aborts the open transaction, if any (best effort: the next `init_transactions` aborts it
    /// too). Returns whether one was open.
    pub fn abort(&mut self) -> bool {
        if !self.in_txn {
            return false;
        }
        if let Err(e) = self.producer.abort_transaction(self.settings.call_timeout) {
            tracing::warn!(error = %e, "kafka: abort_transaction failed; the next start aborts it");
        }
        self.in_txn = false;
        self.ids.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_config_is_transactional_and_passthrough_tunes_defaults() {
        let cc = producer_config(&super::super::tests::settings());
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("transactional.id"), Some("outbox-relay-slot"));
        assert_eq!(cc.get("transaction.timeout.ms"), Some("60000"));
        assert_eq!(cc.get("compression.type"), Some("lz4"));
        assert_eq!(cc.get("queue.buffering.max.kbytes"), Some("4096"));
        // A count bounds the queue too: small records weigh far more than their payload.
        assert_eq!(cc.get("queue.buffering.max.messages"), Some("5000"));
        // The largest record still fits the queue when message.max.bytes is raised.
        let mut big = super::super::tests::settings();
        big.client.set("message.max.bytes", "10000000");
        assert_eq!(
            producer_config(&big).get("queue.buffering.max.kbytes"),
            Some("19532")
        );
        // Secrets reach librdkafka (rust-rdkafka's config_map() would have masked them).
        assert_eq!(cc.get("sasl.password"), Some("pw-never-printed"));
        // A passthrough property overrides the relay's default.
        assert_eq!(cc.get("linger.ms"), Some("20"));
    }

    #[test]
    fn event_ids_are_kept_by_ordinal_without_one_allocation_each() {
        let mut ids = EventIds::default();
        ids.push(Some(b"a-1"));
        ids.push(None);
        ids.push(Some(b"b-22"));
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.get(0).as_deref(), Some(&b"a-1"[..]));
        assert_eq!(ids.get(1), None);
        assert_eq!(ids.get(2).as_deref(), Some(&b"b-22"[..]));
        assert_eq!(ids.get(3), None);
        ids.clear();
        assert_eq!((ids.len(), ids.get(0)), (0, None));
    }

    #[test]
    fn authentication_errors_are_configuration_errors_naming_the_user() {
        let s = super::super::tests::settings();
        for code in [
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            let err = auth_error(&KafkaError::Global(code), &s).expect("an auth error");
            let text = err.message().to_string();
            assert!(
                text.contains("\"relay\"") && text.contains("127.0.0.1:9092"),
                "{text}"
            );
            assert!(!text.contains("pw-never-printed"), "{text}");
            assert_eq!(err.exit_code(), 78, "{text}");
        }
        assert!(auth_error(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), &s).is_none());
    }

    #[test]
    fn repeated_librdkafka_errors_are_logged_once_per_period() {
        let c = SinkContext::default();
        assert!(c.should_log("AllBrokersDown".into()));
        assert!(!c.should_log("AllBrokersDown".into()));
        assert!(c.should_log("other".into()));
    }
}
