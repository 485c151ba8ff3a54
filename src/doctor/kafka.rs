//! The Kafka half of the checklist: the brokers, their transaction timeout, every topic the relay
//! writes (checkpoint, routed, dead letter), the checkpoint and where the relay would resume, and
//! the ACLs for what the relay does (idempotent and transactional writes, reads, describes).
//!
//! Nothing it does is visible to `read_committed` consumers, and nothing fences a running relay:
//! clients never auto-create topics (`allow.auto.create.topics = false`); the checkpoint is read
//! with an assigned consumer that commits nothing; `init_transactions` with the relay's
//! `transactional.id` runs only while no session holds the slot; `--probe-writes` writes one
//! record per topic inside a transaction it aborts.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ConfigResource, ResourceSpecifier};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::ClientConfig;

use super::check::{Check, Findings, Server, Status};
use super::postgres::Facts;
use crate::error::{Error, Kind};
use crate::relay::session;
use crate::sink::producer::SinkContext;
use crate::sink::{checkpoint, Checkpoint, CheckpointKey, MetadataClient, Producer, SinkSettings};
use crate::source::SourceSettings;

const KAFKA: Server = Server::Kafka;

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kafka.checkpoint_topic`.
    Checkpoint,
    /// A topic events are routed to (`[routing.topics]`, or a `routing.topic_template` without
    /// a placeholder).
    Routed,
    /// `errors.dead_letter_topic` (with `errors.on_error = "dead_letter"`).
    DeadLetter,
}

impl Role {
    fn check(self) -> &'static str {
        match self {
            Role::Checkpoint => "checkpoint_topic",
            Role::Routed => "topic",
            Role::DeadLetter => "dead_letter_topic",
        }
    }
}

/// What the Kafka half checks.
#[derive(Debug)]
pub struct Plan {
    /// The relay's Kafka settings.
    pub sink: SinkSettings,
    /// The relay's Postgres settings (database and slot, for the checkpoint key and messages).
    pub source: SourceSettings,
    /// Every topic the relay writes, with its role.
    pub topics: Vec<(Role, String)>,
    /// Why the routed topics could not all be listed, if so.
    pub unlisted: Option<String>,
    /// Write (and abort) one record per topic to prove WRITE.
    pub probe_writes: bool,
}

/// How long one question to Kafka may take: the doctor must fail fast on a dead bootstrap.
fn bound(sink: &SinkSettings) -> Duration {
    sink.call_timeout.min(Duration::from_secs(10))
}

/// A topic as metadata and its configuration show it.
#[derive(Debug, Default)]
struct Topic {
    partitions: usize,
    replication: usize,
    leaderless: usize,
    cleanup_policy: Option<String>,
    min_insync: Option<usize>,
    config_error: Option<String>,
}

/// The first librdkafka error code in an error's chain.
fn kafka_code(e: &Error) -> Option<RDKafkaErrorCode> {
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(k) = cause.downcast_ref::<KafkaError>() {
            return k.rdkafka_error_code();
        }
        next = cause.source();
    }
    None
}

fn is_local(host_port: &str) -> bool {
    let host = host_port
        .trim()
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_matches(['[', ']']);
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with("127.")
}

/// Runs every Kafka check, appending one line each to `out`.
pub async fn run(plan: &Plan, pg: &Facts, out: &mut Vec<Check>) {
    let mut sink = plan.sink.bounded(bound(&plan.sink));
    // Asking about a missing topic must not create it (librdkafka's producers may by default).
    sink.client.set("allow.auto.create.topics", "false");
    let within = bound(&sink);
    let servers = sink.client.servers().to_string();

    let meta = match MetadataClient::new(&sink) {
        Ok(m) => m,
        Err(e) => {
            out.push(Check::fail(
                KAFKA,
                "bootstrap",
                e.message().to_string(),
                "check kafka.properties",
            ));
            return;
        }
    };
    let started = Instant::now();
    let md = tokio::task::block_in_place(|| meta.metadata(Some(&sink.checkpoint_topic), within));
    let md = match md {
        Ok(md) => md,
        Err(e) => {
            let fix = if e.kind() == Kind::Config {
                "check kafka.sasl_username / kafka.sasl_password (or _file) and kafka.sasl_mechanism"
            } else {
                "check kafka.bootstrap_servers, kafka.security_protocol (the listener's protocol) and the network; each broker's advertised.listeners must be reachable from here too"
            };
            out.push(Check::fail(
                KAFKA,
                "bootstrap",
                format!("{} (after {:.1?})", e.report(), started.elapsed()),
                fix,
            ));
            out.push(Check::skip(
                KAFKA,
                "remaining",
                "the other Kafka checks need the brokers",
            ));
            return;
        }
    };
    let brokers: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    let production = brokers.len() > 1 || !servers.split(',').all(is_local);
    out.push(Check::ok(
        KAFKA,
        "bootstrap",
        format!(
            "{servers} answered: {} broker{} (ids {})",
            brokers.len(),
            if brokers.len() == 1 { "" } else { "s" },
            brokers
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));

    let admin: Option<AdminClient<SinkContext>> = sink
        .client
        .client_config()
        .create_with_context(SinkContext::default())
        .ok();
    let opts = AdminOptions::new().request_timeout(Some(within));

    // The brokers' transaction timeout (and whether they create topics on their own).
    let mut auto_create: Option<bool> = None;
    let mut max_timeout: Option<(u64, i32)> = None;
    let mut broker_config_error = None;
    if let Some(admin) = &admin {
        for id in &brokers {
            match describe(admin, ResourceSpecifier::Broker(*id), &opts, within).await {
                Ok(c) => {
                    if let Some(v) =
                        value(&c, "transaction.max.timeout.ms").and_then(|v| v.parse::<u64>().ok())
                    {
                        if max_timeout.is_none_or(|(m, _)| v < m) {
                            max_timeout = Some((v, *id));
                        }
                    }
                    if let Some(v) = value(&c, "auto.create.topics.enable") {
                        auto_create = Some(auto_create.unwrap_or(false) || v == "true");
                    }
                }
                Err(e) => broker_config_error = Some(e),
            }
        }
    }
    let relay_ms = sink.transaction_timeout.as_millis() as u64;
    out.push(match (max_timeout, &broker_config_error) {
        (Some((max, _)), _) if max >= relay_ms => Check::ok(
            KAFKA,
            "transaction_timeout",
            format!("kafka.transaction_timeout_ms {relay_ms} <= the brokers' transaction.max.timeout.ms {max}"),
        ),
        (Some((max, id)), _) => Check::fail(
            KAFKA,
            "transaction_timeout",
            format!("kafka.transaction_timeout_ms {relay_ms} is above broker {id}'s transaction.max.timeout.ms {max}: the broker refuses the relay's producer (INVALID_TRANSACTION_TIMEOUT)"),
            format!("set kafka.transaction_timeout_ms <= {max}, or raise transaction.max.timeout.ms on every broker"),
        ),
        (None, Some(e)) => Check::skip(
            KAFKA,
            "transaction_timeout",
            format!("cannot read the brokers' configuration ({e}: DESCRIBE_CONFIGS on the cluster); the transactional_id check below tries the timeout when it runs"),
        ),
        (None, None) => Check::skip(
            KAFKA,
            "transaction_timeout",
            "the brokers did not report transaction.max.timeout.ms",
        ),
    });

    // Topics.
    let mut existing = Vec::new();
    let mut checkpoint_exists = false;
    let mut unlisted = plan.unlisted.clone();
    for (role, name) in &plan.topics {
        if *role == Role::DeadLetter {
            if let Some(why) = unlisted.take() {
                out.push(Check::skip(KAFKA, "topic", why));
            }
        }
        let line = topic_check(
            &meta,
            admin.as_ref(),
            &opts,
            within,
            plan,
            *role,
            name,
            production,
            auto_create,
        )
        .await;
        if line.1 {
            existing.push(name.clone());
            if *role == Role::Checkpoint {
                checkpoint_exists = true;
            }
        }
        out.push(line.0.on(name.clone()));
    }
    if let Some(why) = unlisted {
        out.push(Check::skip(KAFKA, "topic", why));
    }

    // The checkpoint, and where the relay would resume.
    let key = pg
        .system_id
        .as_ref()
        .map(|id| CheckpointKey::new(id, &plan.source.dbname, &plan.source.slot));
    checkpoint_checks(&sink, plan, pg, key.as_ref(), checkpoint_exists, out);

    // ACLs: idempotent write, the transactional id, writes.
    out.push(idempotence(&sink, within));
    transactional(&sink, plan, pg, key, &existing, out);
}

async fn describe(
    admin: &AdminClient<SinkContext>,
    what: ResourceSpecifier<'_>,
    opts: &AdminOptions,
    within: Duration,
) -> Result<ConfigResource, String> {
    let asked = tokio::time::timeout(within + Duration::from_secs(1), async {
        admin.describe_configs([&what], opts).await
    })
    .await
    .map_err(|_| format!("no answer within {within:?}"))?
    .map_err(|e| e.to_string())?;
    match asked.into_iter().next() {
        Some(Ok(c)) => Ok(c),
        Some(Err(code)) => Err(code.to_string()),
        None => Err("no result".into()),
    }
}

fn value(c: &ConfigResource, name: &str) -> Option<String> {
    c.get(name).and_then(|e| e.value.clone())
}

/// One topic's line, and whether it exists.
#[allow(clippy::too_many_arguments)]
async fn topic_check(
    meta: &MetadataClient,
    admin: Option<&AdminClient<SinkContext>>,
    opts: &AdminOptions,
    within: Duration,
    plan: &Plan,
    role: Role,
    name: &str,
    production: bool,
    auto_create: Option<bool>,
) -> (Check, bool) {
    let check = role.check();
    let md = match tokio::task::block_in_place(|| meta.metadata(Some(name), within)) {
        Ok(md) => md,
        Err(e) => {
            return (
                Check::fail(KAFKA, check, e.report(), "check the brokers"),
                false,
            )
        }
    };
    let found = md.topics().iter().find(|t| t.name() == name);
    let code = found.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
    let missing = match (found, code) {
        (None, _) => true,
        (
            Some(_),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic),
        ) => true,
        (Some(t), None) => t.partitions().is_empty(),
        _ => false,
    };
    if code == Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
        return (
            Check::fail(
                KAFKA,
                check,
                format!(
                    "not authorized to describe it (TOPIC_AUTHORIZATION_FAILED) for user {:?}",
                    plan.sink.client.sasl_user()
                ),
                format!(
                    "grant DESCRIBE and WRITE{} on topic {name} to the relay's principal",
                    if role == Role::Checkpoint {
                        ", READ"
                    } else {
                        ""
                    }
                ),
            ),
            false,
        );
    }
    if missing {
        return (missing_topic(plan, role, name, auto_create), false);
    }
    let Some(t) = found else {
        return (
            Check::fail(KAFKA, check, "not in the metadata", "check the brokers"),
            false,
        );
    };
    if let Some(code) = code {
        return (
            Check::fail(
                KAFKA,
                check,
                format!("the brokers report {code} for it"),
                "check the brokers' logs",
            ),
            true,
        );
    }
    let mut info = Topic {
        partitions: t.partitions().len(),
        replication: t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0),
        leaderless: t.partitions().iter().filter(|p| p.leader() < 0).count(),
        ..Topic::default()
    };
    match admin {
        Some(admin) => match describe(admin, ResourceSpecifier::Topic(name), opts, within).await {
            Ok(c) => {
                info.cleanup_policy = value(&c, "cleanup.policy");
                info.min_insync = value(&c, "min.insync.replicas").and_then(|v| v.parse().ok());
            }
            Err(e) => info.config_error = Some(e),
        },
        None => info.config_error = Some("no admin client".into()),
    }
    (judge_topic(role, name, &info, production), true)
}

fn missing_topic(plan: &Plan, role: Role, name: &str, auto_create: Option<bool>) -> Check {
    let check = role.check();
    if role == Role::Checkpoint {
        return if plan.sink.create_checkpoint_topic {
            Check::ok(
                KAFKA,
                check,
                "does not exist yet: the relay creates it (1 partition, cleanup.policy=compact; kafka.create_checkpoint_topic)",
            )
        } else {
            Check::fail(
                KAFKA,
                check,
                "does not exist and kafka.create_checkpoint_topic = false",
                format!("kafka-topics.sh --create --topic {name} --partitions 1 --replication-factor 3 --config cleanup.policy=compact (or allow the relay to create it)"),
            )
        };
    }
    let create =
        format!("kafka-topics.sh --create --topic {name} --partitions <N> --replication-factor 3");
    let what = if role == Role::DeadLetter {
        "rows that cannot be published have nowhere to go and stop the relay"
    } else {
        "its events are dead-lettered (unknown_topic)"
    };
    match auto_create {
        Some(true) => Check::warn(
            KAFKA,
            check,
            "does not exist: the brokers create it at the first record, with their defaults (num.partitions, default.replication.factor)",
            create,
        ),
        Some(false) => Check::fail(
            KAFKA,
            check,
            format!("does not exist (and the brokers do not create topics: auto.create.topics.enable=false): {what}"),
            create,
        ),
        None => Check::fail(
            KAFKA,
            check,
            format!("does not exist: {what}, unless the brokers create topics (auto.create.topics.enable)"),
            create,
        ),
    }
}

fn judge_topic(role: Role, name: &str, t: &Topic, production: bool) -> Check {
    let mut f = Findings::default();
    let summary = format!(
        "{} partition{}, replication factor {}, min.insync.replicas {}{}",
        t.partitions,
        if t.partitions == 1 { "" } else { "s" },
        t.replication,
        t.min_insync
            .map_or_else(|| "?".to_string(), |m| m.to_string()),
        t.cleanup_policy
            .as_ref()
            .map_or_else(String::new, |p| format!(", cleanup.policy={p}"))
    );
    f.add(Status::Ok, summary.clone(), None);
    if t.leaderless > 0 {
        f.add(
            Status::Fail,
            format!("{} partition(s) have no leader", t.leaderless),
            Some("check the brokers (a broker down?)".into()),
        );
    }
    if role == Role::Checkpoint {
        if t.partitions != 1 {
            f.add(
                Status::Warn,
                "the relay uses partition 0 only".to_string(),
                Some(format!(
                    "a checkpoint topic needs 1 partition: recreate {name} with --partitions 1 while the relay is stopped (its checkpoints are in partition 0)"
                )),
            );
        }
        match t.cleanup_policy.as_deref() {
            Some("compact") => {}
            Some(p) if p.contains("compact") => f.add(
                Status::Warn,
                format!("cleanup.policy={p}: deletion may remove the newest checkpoint of an idle relay"),
                Some(format!("kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config cleanup.policy=compact")),
            ),
            Some(p) => f.add(
                Status::Fail,
                format!("cleanup.policy={p}: the checkpoint of a relay idle for retention.ms is deleted, and the relay then republishes from the slot"),
                Some(format!("kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config cleanup.policy=compact")),
            ),
            None => f.add(
                Status::Warn,
                format!(
                    "cleanup.policy not verified (cannot read the topic's configuration: {})",
                    t.config_error.as_deref().unwrap_or("?")
                ),
                Some(format!("grant DESCRIBE_CONFIGS on topic {name}, or check by hand that cleanup.policy=compact")),
            ),
        }
    }
    if t.min_insync.is_none() {
        f.add(
            Status::Ok,
            format!(
                "its configuration was not readable ({}; the relay's principal lacks DESCRIBE_CONFIGS on the topic?)",
                t.config_error.as_deref().unwrap_or("not in the brokers' answer")
            ),
            None,
        );
    }
    if let Some(m) = t.min_insync {
        if m > t.replication {
            f.add(
                Status::Fail,
                format!(
                    "min.insync.replicas {m} > replication factor {}: every acks=all write is refused (NOT_ENOUGH_REPLICAS)",
                    t.replication
                ),
                Some(format!(
                    "kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config min.insync.replicas={}",
                    t.replication.max(1)
                )),
            );
        }
    }
    if production && t.replication == 1 {
        f.add(
            Status::Warn,
            "replication factor 1 on what looks like a production cluster: losing one broker loses or blocks these records".to_string(),
            Some("use replication factor 3 and min.insync.replicas 2 (kafka-reassign-partitions.sh)".into()),
        );
    }
    f.into_check(KAFKA, role.check(), summary)
}

/// The checkpoint is readable, and the relay can resume from it with this slot.
fn checkpoint_checks(
    sink: &SinkSettings,
    plan: &Plan,
    pg: &Facts,
    key: Option<&CheckpointKey>,
    topic_exists: bool,
    out: &mut Vec<Check>,
) {
    let Some(key) = key else {
        out.push(Check::skip(
            KAFKA,
            "checkpoint",
            "its key names the Postgres system identifier: needs a Postgres connection",
        ));
        return;
    };
    if !topic_exists {
        out.push(Check::skip(
            KAFKA,
            "checkpoint",
            format!("key {key}: the checkpoint topic does not exist"),
        ));
        return;
    }
    let read = tokio::task::block_in_place(|| {
        checkpoint::read(&sink.client, &sink.checkpoint_topic, key, bound(sink))
    });
    let cp = match read {
        Ok(cp) => cp,
        Err(e) => {
            let fix = match (e.kind(), kafka_code(&e)) {
                (Kind::Invariant, _) => "follow the README runbook \"Unreadable checkpoint\" (outbox-relay reset-checkpoint)".to_string(),
                (_, Some(RDKafkaErrorCode::TopicAuthorizationFailed)) => format!(
                    "grant READ on topic {} to the relay's principal",
                    sink.checkpoint_topic
                ),
                _ => "check the brokers".to_string(),
            };
            out.push(Check::fail(KAFKA, "checkpoint", e.report(), fix).on(key.to_string()));
            return;
        }
    };
    let detail = match &cp {
        None => "none yet: the relay publishes from the slot's position".to_string(),
        Some(c) => format!(
            "resume_lsn {}{}{}",
            c.resume_lsn,
            c.timeline
                .map_or_else(String::new, |t| format!(", timeline {t}")),
            c.partial.map_or_else(String::new, |p| format!(
                ", partial: xid {} (commit {}), {} changes published",
                p.xid, p.final_lsn, p.next_index
            ))
        ),
    };
    out.push(
        Check::ok(
            KAFKA,
            "checkpoint",
            format!("readable, read_committed: {detail}"),
        )
        .on(key.to_string()),
    );
    out.push(resume_check(sink, plan, pg, key, cp));
}

/// Where the relay would resume, or why it would stop (exit 70): a lost slot, a slot moved past
/// the checkpoint, a diverged timeline. The same rules as the relay's start-up.
fn resume_check(
    sink: &SinkSettings,
    plan: &Plan,
    pg: &Facts,
    key: &CheckpointKey,
    cp: Option<Checkpoint>,
) -> Check {
    let src = &plan.source;
    let Some(slot) = &pg.slot else {
        return Check::skip(KAFKA, "resume", "the slot could not be read");
    };
    let Some(info) = slot else {
        return match cp {
            Some(cp) => Check::fail(
                KAFKA,
                "resume",
                session::lost_slot(src, sink, key, &cp)
                    .message()
                    .to_string(),
                "follow the README runbook \"Lost slot\"",
            ),
            None => Check::ok(
                KAFKA,
                "resume",
                "no slot and no checkpoint: a first start, from the slot the relay creates",
            ),
        };
    };
    let cp = match session::resume_point(src, sink, key, info, cp) {
        Ok(cp) => cp,
        Err(e) => {
            return Check::fail(
                KAFKA,
                "resume",
                e.message().to_string(),
                "follow the README runbook \"Slot moved behind the relay's back\" (outbox-relay reset-checkpoint)",
            )
        }
    };
    if let Some(id) = &pg.identity {
        if let Err(e) = session::check_timeline(src, sink, key, id.timeline, &id.history, &cp) {
            return Check::fail(
                KAFKA,
                "resume",
                e.message().to_string(),
                "follow the README runbook \"Timeline diverged\" (outbox-relay reset-checkpoint --to-lsn <fork point>)",
            );
        }
    }
    Check::ok(
        KAFKA,
        "resume",
        format!(
            "the relay resumes at {} (slot confirmed_flush_lsn {})",
            cp.resume_lsn,
            info.confirmed_flush_lsn
                .map_or_else(|| "-".into(), |l| l.to_string())
        ),
    )
}

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
fn idempotence(sink: &SinkSettings, within: Duration) -> Check {
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
fn transactional(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_bootstraps_are_not_production() {
        assert!(is_local("127.0.0.1:9092"));
        assert!(is_local("localhost:9092"));
        assert!(is_local("[::1]:9092"));
        assert!(!is_local("kafka-1.prod:9092"));
        assert!(!is_local("10.0.0.7:9092"));
    }

    #[test]
    fn a_checkpoint_topic_must_be_compacted_and_replicated_in_production() {
        let t = Topic {
            partitions: 1,
            replication: 1,
            cleanup_policy: Some("delete".into()),
            min_insync: Some(1),
            ..Topic::default()
        };
        let c = judge_topic(Role::Checkpoint, "cp", &t, false);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("cleanup.policy=compact")));
        let t = Topic {
            cleanup_policy: Some("compact".into()),
            ..t
        };
        assert_eq!(
            judge_topic(Role::Checkpoint, "cp", &t, false).status,
            Status::Ok
        );
        let c = judge_topic(Role::Checkpoint, "cp", &t, true);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("replication factor 1"), "{c:?}");
        let t = Topic {
            replication: 2,
            min_insync: Some(3),
            ..t
        };
        assert_eq!(
            judge_topic(Role::Routed, "x", &t, false).status,
            Status::Fail
        );
    }
}
