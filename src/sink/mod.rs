//! The Kafka side: a transactional producer that publishes routed records and the checkpoint that
//! covers them in one Kafka transaction.
//!
//! ```text
//!  begin (lazily, on the first record) -> send record ... send record -> send checkpoint -> commit
//!                                                                         |
//!                          only after commit returned Ok may the relay acknowledge Postgres
//! ```
//!
//! Every call here blocks (librdkafka's transactional API waits for the broker), so the relay calls
//! them from `block_in_place`. Errors are sorted the way DESIGN.md section 4 says:
//! retriable -> the same call is retried here; abortable, fatal and fenced -> the session ends
//! ([`Kind::Transient`](crate::error::Kind)) and the relay starts a new one from the checkpoint with
//! a new producer, whose `init_transactions` aborts whatever the old one left open.

pub mod checkpoint;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

pub use checkpoint::{Checkpoint, Partial};

use crate::error::{Error, Result};
use crate::route::Record;

/// What the sink needs to know, resolved from the configuration.
#[derive(Clone)]
pub struct SinkSettings {
    /// librdkafka properties shared by producer and consumers (servers, security, passthrough).
    /// Holds the SASL password: never log it.
    pub client_props: Vec<(String, String)>,
    /// Stable per slot, so a new instance fences the old one.
    pub transactional_id: String,
    /// Broker-side bound on an open transaction.
    pub transaction_timeout: Duration,
    /// Compacted one-partition topic holding checkpoints.
    pub checkpoint_topic: String,
    /// `<system id>/<database>/<slot>`.
    pub checkpoint_key: String,
    /// Create the checkpoint topic when it is missing.
    pub create_checkpoint_topic: bool,
    /// How long one blocking Kafka call may take before it counts as a failure of the session.
    pub call_timeout: Duration,
}

/// Secret-bearing librdkafka properties (`sasl.password`, `ssl.key.password`, ...) print as `***`.
impl std::fmt::Debug for SinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let props: Vec<(&str, &str)> = self
            .client_props
            .iter()
            .map(|(k, v)| {
                let secret = k.contains("password") || k.contains("secret");
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("SinkSettings")
            .field("client_props", &props)
            .field("transactional_id", &self.transactional_id)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .finish_non_exhaustive()
    }
}

/// First delivery failure seen by librdkafka's delivery callback since the transaction began.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    /// The record's topic.
    pub topic: String,
    /// The record's `event_id` header, when it had one.
    pub event_id: Option<String>,
    /// What the broker or client said.
    pub error: String,
    /// librdkafka's error code.
    pub code: Option<RDKafkaErrorCode>,
    /// The record's value size in bytes.
    pub size: usize,
}

/// Producer context: routes librdkafka's logs to tracing and keeps the first delivery failure.
#[derive(Debug, Default)]
pub struct SinkContext {
    failure: Mutex<Option<DeliveryFailure>>,
    /// The first SASL authentication failure librdkafka reported: a wrong password surfaces only
    /// here (requests just time out with a transport failure).
    auth_failure: Mutex<Option<String>>,
}

impl SinkContext {
    fn auth_failure(&self) -> Option<String> {
        self.auth_failure.lock().ok().and_then(|f| f.clone())
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) {
            let mut slot = self.auth_failure.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(reason.to_string());
            }
        }
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        use rdkafka::message::Message;
        if let Err((err, msg)) = result {
            let event_id = msg.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "event_id")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            let size = msg.payload_len();
            let code = err.rdkafka_error_code();
            let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            // librdkafka fails a whole batch when the broker refuses it as too large: blame its
            // largest record, not the first one (which may be a good record sharing the batch).
            let replace = match slot.as_ref() {
                None => true,
                Some(prev) => {
                    permanent_reason(code) == Some("record_too_large")
                        && prev.code == code
                        && size > prev.size
                }
            };
            if replace {
                *slot = Some(DeliveryFailure {
                    topic: msg.topic().to_string(),
                    event_id,
                    error: err.to_string(),
                    code,
                    size,
                });
            }
        }
    }
}

/// Why a record could not be queued.
#[derive(Debug)]
pub enum SendError {
    /// This record can never be published as it is (e.g. larger than the producer accepts):
    /// a poison row, for the dead-letter path.
    Rejected {
        /// Short reason code.
        reason: &'static str,
        /// librdkafka's words.
        detail: String,
    },
    /// The session must end (the transaction cannot go on).
    Session(Error),
}

/// A transactional producer bound to one `transactional.id`.
pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    context: Arc<SinkContext>,
    settings: SinkSettings,
    in_txn: bool,
    records_in_txn: u64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("transactional_id", &self.settings.transactional_id)
            .field("in_txn", &self.in_txn)
            .finish()
    }
}

/// Properties the relay owns on its producer (refused in `kafka.properties`).
fn producer_config(settings: &SinkSettings) -> ClientConfig {
    let mut cc = ClientConfig::new();
    // Defaults first, so passthrough properties in `client_props` may tune them.
    cc.set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "16384")
        // The first record of a transaction needs AddPartitionsToTxn, which the coordinator answers
        // CONCURRENT_TRANSACTIONS until the previous commit's markers are written; librdkafka
        // retries after retry.backoff.ms (default 100 ms), which then dominates every commit.
        .set("retry.backoff.ms", "10");
    for (k, v) in &settings.client_props {
        cc.set(k, v);
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

/// Sorts a transactional-call error for the caller: `Ok(())` means "retry the same call".
fn classify(what: &str, e: KafkaError) -> std::result::Result<(), Error> {
    if let KafkaError::Transaction(rde) = &e {
        if rde.is_retriable() && !rde.is_fatal() && !rde.txn_requires_abort() {
            return Ok(());
        }
        let fenced = matches!(
            rde.code(),
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        );
        let msg = if fenced {
            format!("kafka: {what}: this instance was fenced by another relay with the same transactional.id")
        } else if rde.is_fatal() {
            format!("kafka: {what}: fatal producer error")
        } else {
            format!("kafka: {what}: transaction must be aborted")
        };
        return Err(Error::transient(msg).with_source(e));
    }
    if matches!(e, KafkaError::Flush(_)) {
        return Ok(());
    }
    Err(Error::transient(format!("kafka: {what}")).with_source(e))
}

impl Sink {
    /// Creates the producer and runs `init_transactions`, which fences any older instance with
    /// the same `transactional.id` and aborts what it left open. Blocks.
    pub fn connect(settings: SinkSettings, deadline: Duration) -> Result<Self> {
        let producer: ThreadedProducer<SinkContext> = producer_config(&settings)
            .create_with_context(SinkContext::default())
            .map_err(|e| {
                Error::config(format!(
                    "kafka: cannot create the producer for {}: {e}",
                    servers(&settings)
                ))
            })?;
        let context = producer.context().clone();
        let started = Instant::now();
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::transient(format!(
                    "kafka: init_transactions for transactional.id {:?} did not complete within {deadline:?} (brokers {})",
                    settings.transactional_id,
                    servers(&settings)
                )));
            }
            match producer.init_transactions(left.min(settings.call_timeout)) {
                Ok(()) => break,
                Err(e) => {
                    if let Some(err) = auth_error(&e, &settings) {
                        return Err(err);
                    }
                    if let Some(err) = auth_failed(&context, &settings) {
                        return Err(err);
                    }
                    classify("init_transactions", e)?;
                }
            }
        }
        Ok(Self {
            producer,
            context,
            settings,
            in_txn: false,
            records_in_txn: 0,
        })
    }

    /// Makes sure the checkpoint topic exists (compacted, one partition), creating it when allowed.
    pub fn ensure_checkpoint_topic(settings: &SinkSettings) -> Result<()> {
        let topic = &settings.checkpoint_topic;
        if topic_exists(settings, topic)? {
            return Ok(());
        }
        if !settings.create_checkpoint_topic {
            return Err(Error::config(format!(
                "kafka: checkpoint topic {topic:?} does not exist and kafka.create_checkpoint_topic = false; create it (1 partition, cleanup.policy=compact) or allow the relay to"
            )));
        }
        let mut cc = ClientConfig::new();
        for (k, v) in &settings.client_props {
            cc.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = cc
            .create()
            .map_err(|e| Error::config(format!("kafka: cannot create an admin client: {e}")))?;
        let new =
            NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(settings.call_timeout));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal("tokio runtime for the admin client").with_source(e))?;
        let results = rt
            .block_on(admin.create_topics([&new], &opts))
            .map_err(|e| {
                Error::transient(format!("kafka: creating checkpoint topic {topic:?}"))
                    .with_source(e)
            })?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic, "created the checkpoint topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::config(format!(
                        "kafka: cannot create checkpoint topic {topic:?}: {code}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Whether a Kafka transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Records produced in the open transaction.
    pub fn records_in_transaction(&self) -> u64 {
        self.records_in_txn
    }

    fn begin(&mut self) -> std::result::Result<(), Error> {
        if self.in_txn {
            return Ok(());
        }
        if let Ok(mut f) = self.context.failure.lock() {
            *f = None;
        }
        self.producer
            .begin_transaction()
            .map_err(|e| Error::transient("kafka: begin_transaction").with_source(e))?;
        self.in_txn = true;
        self.records_in_txn = 0;
        Ok(())
    }

    /// Queues one record in the open transaction (opening one when needed).
    pub fn send(&mut self, rec: &Record) -> std::result::Result<(), SendError> {
        self.begin().map_err(SendError::Session)?;
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k.as_ref(),
                value: Some(v.as_ref()),
            });
        }
        let mut record = BaseRecord::to(&rec.topic)
            .payload(rec.value.as_ref())
            .headers(headers);
        if let Some(key) = &rec.key {
            record = record.key(key.as_ref());
        }
        let mut waited = Duration::ZERO;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.records_in_txn += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Retry this record before any later one, or per-key order breaks.
                    record = r;
                    if waited > self.settings.call_timeout {
                        return Err(SendError::Session(Error::transient(
                            "kafka: the producer queue stayed full (brokers not accepting records)",
                        )));
                    }
                    let pause = Duration::from_millis(2);
                    sleep_blocking(pause);
                    waited += pause;
                }
                Err((KafkaError::MessageProduction(code), _))
                    if matches!(
                        code,
                        RDKafkaErrorCode::MessageSizeTooLarge
                            | RDKafkaErrorCode::InvalidMessageSize
                    ) =>
                {
                    return Err(SendError::Rejected {
                        reason: "record_too_large",
                        detail: code.to_string(),
                    });
                }
                Err((e, _)) => {
                    return Err(SendError::Session(
                        Error::transient(format!("kafka: producing to {}", rec.topic))
                            .with_source(e),
                    ))
                }
            }
        }
    }

    /// Produces the checkpoint and commits the open transaction (opening one for a
    /// checkpoint-only commit). Returns only once the broker confirmed the commit.
    pub fn commit(&mut self, cp: &Checkpoint) -> Result<()> {
        self.begin()?;
        let value = cp.encode();
        let record = BaseRecord::<[u8], [u8]>::to(&self.settings.checkpoint_topic)
            .partition(0)
            .key(self.settings.checkpoint_key.as_bytes())
            .payload(&value);
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    sleep_blocking(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    return Err(Error::transient("kafka: producing the checkpoint").with_source(e))
                }
            }
        }
        let started = Instant::now();
        self.await_deliveries(started + self.settings.call_timeout);
        loop {
            match self.producer.commit_transaction(self.settings.call_timeout) {
                Ok(()) => {
                    self.in_txn = false;
                    self.records_in_txn = 0;
                    return Ok(());
                }
                Err(e) => {
                    let failure = self.delivery_failure();
                    match classify("commit_transaction", e) {
                        Ok(()) if started.elapsed() < self.settings.transaction_timeout => {
                            tracing::warn!("kafka: commit_transaction timed out; retrying");
                        }
                        Ok(()) => {
                            return Err(Error::transient(
                                "kafka: commit_transaction kept timing out past the transaction timeout",
                            ))
                        }
                        Err(err) => {
                            let err = match failure {
                                Some(f) => Error::transient(format!(
                                    "{} (first failed record: topic {:?}, event_id {}: {})",
                                    err.message(),
                                    f.topic,
                                    f.event_id.as_deref().unwrap_or("-"),
                                    f.error
                                ))
                                .with_source(err),
                                None => err,
                            };
                            return Err(err);
                        }
                    }
                }
            }
        }
    }

    /// Waits (until `deadline` at most) for librdkafka to have no record in flight.
    ///
    /// rust-rdkafka's `commit_transaction` first runs its own `flush`, which polls in 100 ms
    /// slices that do not end when the last delivery arrives: any record still in flight makes a
    /// commit cost at least 100 ms (the `0.` section of `dev/bench.sh` measures it: about 100 ms
    /// against 16 ms per commit). The producer's polling thread serves the deliveries; once none
    /// is left that flush returns at once. Past the deadline the commit runs anyway, and its own
    /// flush and error handling decide.
    fn await_deliveries(&self, deadline: Instant) {
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            sleep_blocking(Duration::from_micros(500));
        }
    }

    /// Aborts the open transaction, if any (best effort: the next `init_transactions` aborts it too).
    pub fn abort(&mut self) {
        if !self.in_txn {
            return;
        }
        if let Err(e) = self.producer.abort_transaction(self.settings.call_timeout) {
            tracing::warn!(error = %e, "kafka: abort_transaction failed; the next start aborts it");
        }
        self.in_txn = false;
        self.records_in_txn = 0;
    }

    /// The first delivery failure of the open transaction, if one happened.
    pub fn delivery_failure(&self) -> Option<DeliveryFailure> {
        self.context.failure.lock().ok().and_then(|f| f.clone())
    }
}

/// Sleeps without stalling the async executor when called from one.
fn sleep_blocking(d: Duration) {
    std::thread::sleep(d);
}

fn servers(settings: &SinkSettings) -> String {
    settings
        .client_props
        .iter()
        .find(|(k, _)| k == "bootstrap.servers")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn sasl_user(settings: &SinkSettings) -> String {
    settings
        .client_props
        .iter()
        .find(|(k, _)| k == "sasl.username")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A SASL authentication failure the client reported through its error callback, as a
/// configuration error naming the brokers and the user.
fn auth_failed(context: &SinkContext, settings: &SinkSettings) -> Option<Error> {
    let reason = context.auth_failure()?;
    Some(Error::config(format!(
        "kafka: authentication failed at {} for user {:?}: {reason} (check kafka.sasl_username / kafka.sasl_password / kafka.sasl_password_file)",
        servers(settings),
        sasl_user(settings)
    )))
}

/// Turns an authentication failure into a configuration error (no retry storm on a wrong password).
fn auth_error(e: &KafkaError, settings: &SinkSettings) -> Option<Error> {
    let code = e.rdkafka_error_code()?;
    if matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    ) {
        return Some(Error::config(format!(
            "kafka: {code} at {} for user {:?} (check kafka.sasl_username / kafka.sasl_password and the ACLs for transactional.id {:?})",
            servers(settings),
            sasl_user(settings),
            settings.transactional_id
        )));
    }
    None
}

/// Why records cannot go to a topic: a dead-letter reason and a detail.
pub type Refusal = (&'static str, String);

/// Error codes that mean "this record can never be written as it is" (a poison row), as a
/// dead-letter reason.
pub fn permanent_reason(code: Option<RDKafkaErrorCode>) -> Option<&'static str> {
    Some(match code? {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::MessageBatchTooLarge => "record_too_large",
        RDKafkaErrorCode::TopicAuthorizationFailed => "topic_not_authorized",
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            "unknown_topic"
        }
        RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::PolicyViolation => "record_refused",
        _ => return None,
    })
}

/// A plain (non-transactional) client for cluster metadata, so topics can be checked while the
/// producer is busy committing.
pub struct MetadataClient {
    client: rdkafka::producer::BaseProducer,
    timeout: Duration,
}

impl std::fmt::Debug for MetadataClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataClient").finish_non_exhaustive()
    }
}

impl MetadataClient {
    /// Creates the client (no connection is made until the first request).
    pub fn new(settings: &SinkSettings) -> Result<Self> {
        let mut cc = ClientConfig::new();
        for (k, v) in &settings.client_props {
            cc.set(k, v);
        }
        let client = cc
            .create()
            .map_err(|e| Error::config(format!("kafka: cannot create a metadata client: {e}")))?;
        Ok(Self {
            client,
            timeout: settings.call_timeout,
        })
    }

    /// Whether records can be written to `topic`, from cluster metadata: `Err((reason, detail))`
    /// for a topic that does not exist or that we may not write (a poison row, not a session
    /// failure). Blocks.
    pub fn topic_status(&self, topic: &str) -> Result<std::result::Result<(), Refusal>> {
        let md = self
            .client
            .client()
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| {
                Error::transient(format!("kafka: metadata request for topic {topic:?}"))
                    .with_source(e)
            })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(Err((
                "unknown_topic",
                format!("topic {topic:?} is not in the cluster metadata"),
            )));
        };
        match t.error() {
            None if !t.partitions().is_empty() => Ok(Ok(())),
            None => Ok(Err((
                "unknown_topic",
                format!("topic {topic:?} has no partitions"),
            ))),
            Some(e) => {
                let code = RDKafkaErrorCode::from(e);
                match permanent_reason(Some(code)) {
                    Some(reason) => Ok(Err((reason, format!("topic {topic:?}: {code}")))),
                    None => Err(Error::transient(format!(
                        "kafka: metadata for topic {topic:?}: {code}"
                    ))),
                }
            }
        }
    }
}

impl SinkSettings {
    /// The producer's `message.max.bytes` (librdkafka's default 1000000 unless passed through):
    /// larger records are refused before they are queued.
    pub fn max_record_bytes(&self) -> u64 {
        self.client_props
            .iter()
            .find(|(k, _)| k == "message.max.bytes")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1_000_000)
    }
}

/// Whether `topic` exists, from cluster metadata.
pub fn topic_exists(settings: &SinkSettings, topic: &str) -> Result<bool> {
    let mut cc = ClientConfig::new();
    for (k, v) in &settings.client_props {
        cc.set(k, v);
    }
    let producer: rdkafka::producer::BaseProducer<SinkContext> = cc
        .create_with_context(SinkContext::default())
        .map_err(|e| Error::config(format!("kafka: cannot create a metadata client: {e}")))?;
    // Short attempts, so a SASL failure (reported only through the error callback) ends the wait.
    let started = Instant::now();
    let md = loop {
        let left = settings.call_timeout.saturating_sub(started.elapsed());
        match producer
            .client()
            .fetch_metadata(Some(topic), left.min(Duration::from_secs(1)))
        {
            Ok(md) => break md,
            Err(e) => {
                // Serves the error callback (a BaseProducer's events wait for poll).
                producer.poll(Duration::ZERO);
                if let Some(err) = auth_failed(producer.context(), settings) {
                    return Err(err);
                }
                if started.elapsed() >= settings.call_timeout {
                    return Err(Error::transient(format!(
                        "kafka: brokers {} unreachable (metadata request)",
                        servers(settings)
                    ))
                    .with_source(e));
                }
            }
        }
    };
    Ok(md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SinkSettings {
        SinkSettings {
            client_props: vec![
                ("bootstrap.servers".into(), "127.0.0.1:9092".into()),
                ("sasl.username".into(), "relay".into()),
                ("sasl.password".into(), "pw-never-printed".into()),
                ("linger.ms".into(), "20".into()),
            ],
            transactional_id: "outbox-relay-slot".into(),
            transaction_timeout: Duration::from_secs(60),
            checkpoint_topic: "ckpt".into(),
            checkpoint_key: "1/db/slot".into(),
            create_checkpoint_topic: true,
            call_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn debug_hides_the_sasl_password() {
        let text = format!("{:?}", settings());
        assert!(!text.contains("pw-never-printed"), "{text}");
        assert!(
            text.contains("sasl.password") && text.contains("***"),
            "{text}"
        );
        assert!(text.contains("outbox-relay-slot"), "{text}");
    }

    #[test]
    fn producer_config_is_transactional_and_passthrough_tunes_defaults() {
        let cc = producer_config(&settings());
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("transactional.id"), Some("outbox-relay-slot"));
        assert_eq!(cc.get("transaction.timeout.ms"), Some("60000"));
        assert_eq!(cc.get("compression.type"), Some("lz4"));
        // A passthrough property overrides the relay's default.
        assert_eq!(cc.get("linger.ms"), Some("20"));
    }

    #[test]
    fn permanent_reasons_are_the_refusals_retrying_cannot_fix() {
        use RDKafkaErrorCode as C;
        for (code, reason) in [
            (C::MessageSizeTooLarge, "record_too_large"),
            (C::InvalidMessageSize, "record_too_large"),
            (C::MessageBatchTooLarge, "record_too_large"),
            (C::TopicAuthorizationFailed, "topic_not_authorized"),
            (C::UnknownTopicOrPartition, "unknown_topic"),
            (C::UnknownTopic, "unknown_topic"),
            (C::InvalidRecord, "record_refused"),
            (C::PolicyViolation, "record_refused"),
        ] {
            assert_eq!(permanent_reason(Some(code)), Some(reason), "{code:?}");
        }
        for code in [
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::BrokerTransportFailure,
        ] {
            assert_eq!(permanent_reason(Some(code)), None, "{code:?}");
        }
        assert_eq!(permanent_reason(None), None);
    }

    #[test]
    fn classify_retries_a_flush_timeout_and_ends_the_session_otherwise() {
        assert!(classify(
            "commit",
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)
        )
        .is_ok());
        let err = classify(
            "commit_transaction",
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
        )
        .expect_err("a session error");
        assert!(
            err.message().contains("kafka: commit_transaction"),
            "{err:?}"
        );
    }

    #[test]
    fn authentication_errors_are_configuration_errors_naming_the_user() {
        let s = settings();
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
}
