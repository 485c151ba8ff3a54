//! What the relay's principal may do, proved by doing it harmlessly: an idempotent producer gets
//! its producer id (IDEMPOTENT_WRITE), `init_transactions` with the relay's `transactional.id`
//! succeeds (only while no relay runs: it would fence it), and with `--probe-writes` one record
//! per existing topic is accepted in a transaction that is then aborted.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::ClientConfig;

use super::plan::{bound, kafka_code, Plan, KAFKA};
use crate::doctor::check::Check;
use crate::doctor::postgres::Facts;
use crate::error::Kind;
use crate::sink::{CheckpointKey, Producer, SinkSettings};

/// Statistics and errors of the idempotence probe.
#[derive(Debug, Default)]
struct ProbeContext {
    idemp_state: std::sync::Mutex<Option<String>>,
    error: std::sync::Mutex<Option<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for ProbeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, "{message}");
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let state = serde_json::from_slice::<serde_json::Value>(statistics)
            .ok()
            .and_then(|v| v["eos"]["idemp_state"].as_str().map(str::to_string));
        if let (Some(state), Ok(mut slot)) = (state, self.idemp_state.lock()) {
            *slot = Some(state);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert((error.rdkafka_error_code(), format!("{error}: {reason}")));
        }
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// An idempotent, non-transactional producer gets its producer id (InitProducerId): the
/// IDEMPOTENT_WRITE right (or, on Kafka 3.0+, WRITE on any topic). Writes nothing.
pub(super) fn idempotence(sink: &SinkSettings, within: Duration) -> Check {
    let mut cc: ClientConfig = sink.client.client_config();
    cc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("statistics.interval.ms", "100");
    let producer: BaseProducer<ProbeContext> = match cc.create_with_context(ProbeContext::default())
    {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                KAFKA,
                "idempotent_write",
                format!("cannot create an idempotent producer: {e}"),
                "check kafka.properties",
            )
        }
    };
    let started = Instant::now();
    loop {
        producer.poll(Duration::from_millis(100));
        let ctx = producer.context();
        if let Some((code, text)) = producer
            .client()
            .fatal_error()
            .map(|(c, t)| (Some(c), t))
            .or_else(|| {
                ctx.error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .filter(|(c, _)| {
                        c.is_some_and(|c| {
                            matches!(
                                c,
                                RDKafkaErrorCode::ClusterAuthorizationFailed
                                    | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                                    | RDKafkaErrorCode::Authentication
                                    | RDKafkaErrorCode::SaslAuthenticationFailed
                            )
                        })
                    })
            })
        {
            return Check::fail(
                KAFKA,
                "idempotent_write",
                format!("the brokers refused the idempotent producer: {text}"),
                if code == Some(RDKafkaErrorCode::ClusterAuthorizationFailed) {
                    "grant IDEMPOTENT_WRITE on the cluster (needed before Kafka 3.0; from 3.0 WRITE on any topic suffices)"
                } else {
                    "check the credentials and ACLs"
                },
            );
        }
        let state = ctx.idemp_state.lock().ok().and_then(|s| s.clone());
        if state.as_deref() == Some("Assigned") {
            return Check::ok(
                KAFKA,
                "idempotent_write",
                "an idempotent producer got its producer id (nothing written)",
            );
        }
        if started.elapsed() >= within {
            return Check::fail(
                KAFKA,
                "idempotent_write",
                format!(
                    "an idempotent producer got no producer id within {within:?} (state {})",
                    state.as_deref().unwrap_or("unknown")
                ),
                "check the brokers' logs and the cluster ACLs (IDEMPOTENT_WRITE)",
            );
        }
    }
}

/// `init_transactions` with the relay's `transactional.id` (only when no relay runs: it would
/// fence it), then, with `--probe-writes`, one aborted record per topic.
pub(super) fn transactional(
    sink: &SinkSettings,
    plan: &Plan,
    pg: &Facts,
    key: Option<CheckpointKey>,
    existing: &[String],
    out: &mut Vec<Check>,
) {
    let id = &sink.transactional_id;
    let no_probe = |why: String| Check::skip(KAFKA, "write", why);
    let held = match pg.slot_held() {
        Some(false) => false,
        Some(true) => {
            out.push(
                Check::skip(
                    KAFKA,
                    "transactional_id",
                    format!("a relay is running with this transactional.id (a session holds slot {:?}); init_transactions would fence it", plan.source.slot),
                )
                .on(id.clone()),
            );
            true
        }
        None => {
            out.push(
                Check::skip(
                    KAFKA,
                    "transactional_id",
                    "cannot tell whether a relay is running (the slot could not be read): init_transactions could fence it",
                )
                .on(id.clone()),
            );
            true
        }
    };
    if held {
        out.push(no_probe(
            "write permission cannot be proved without writing; --probe-writes writes one aborted record per topic with the relay's transactional.id, so it needs the relay stopped".into(),
        ));
        return;
    }
    let key =
        key.unwrap_or_else(|| CheckpointKey::new("?", &plan.source.dbname, &plan.source.slot));
    let bound = bound(sink);
    let connected = tokio::task::block_in_place(|| Producer::connect(sink.clone(), key, bound));
    let mut producer = match connected {
        Ok(p) => {
            out.push(
                Check::ok(
                    KAFKA,
                    "transactional_id",
                    "init_transactions succeeded (WRITE and DESCRIBE on the transactional id; no relay was running, nothing was fenced)",
                )
                .on(id.clone()),
            );
            p
        }
        Err(e) => {
            let fix = match kafka_code(&e) {
                Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => format!(
                    "grant WRITE and DESCRIBE on transactional id {id:?} to the relay's principal (kafka-acls.sh --add --allow-principal User:<name> --operation Write --operation Describe --transactional-id {id})"
                ),
                Some(RDKafkaErrorCode::InvalidTransactionTimeout) => format!(
                    "lower kafka.transaction_timeout_ms ({}) below the brokers' transaction.max.timeout.ms",
                    sink.transaction_timeout.as_millis()
                ),
                _ if e.kind() == Kind::Config => "check the credentials and ACLs (TransactionalId, Cluster)".to_string(),
                _ => "check the brokers (the transaction coordinator, __transaction_state)".to_string(),
            };
            out.push(Check::fail(KAFKA, "transactional_id", e.report(), fix).on(id.clone()));
            out.push(no_probe("needs a transactional producer".into()));
            return;
        }
    };
    if !plan.probe_writes {
        out.push(no_probe(
            "write permission on the topics cannot be proved without writing; add --probe-writes to write one record per topic in a transaction that is then aborted (invisible to read_committed consumers, seen by read_uncommitted ones)".into(),
        ));
        return;
    }
    for topic in existing {
        let verdict = tokio::task::block_in_place(|| producer.probe_write(topic));
        out.push(
            match verdict {
                Ok(Ok(())) => Check::ok(
                    KAFKA,
                    "write",
                    "a record was accepted in a transaction, then aborted",
                ),
                Ok(Err(why)) => Check::fail(
                    KAFKA,
                    "write",
                    format!("refused: {why}"),
                    format!("grant WRITE on topic {topic} to the relay's principal"),
                ),
                Err(e) => Check::fail(KAFKA, "write", e.report(), "check the brokers"),
            }
            .on(topic.clone()),
        );
    }
}
