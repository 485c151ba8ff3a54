//! Every topic the relay writes (checkpoint, routed, dead letter): whether it exists (and what
//! happens at the first record if not), whether the relay may describe it, and whether its
//! partitions, replication, `min.insync.replicas` and (for the checkpoint topic) compaction suit
//! what the relay writes there. Asks the brokers through the [`Cluster`] only.

use rdkafka::admin::ResourceSpecifier;
use rdkafka::error::RDKafkaErrorCode;

use super::cluster::{describe, value, Cluster};
use super::plan::{Plan, Role, KAFKA};
use crate::doctor::check::{Check, Findings, Status};

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

/// The topics that exist, of those checked.
pub(super) struct Found {
    /// Their names.
    pub existing: Vec<String>,
    /// Whether the checkpoint topic is among them.
    pub checkpoint: bool,
}

/// One line per topic of the plan (and one saying why the routed topics could not all be
/// listed, before the dead-letter topic's).
pub(super) async fn check(cluster: &Cluster, plan: &Plan, out: &mut Vec<Check>) -> Found {
    let mut existing = Vec::new();
    let mut checkpoint_exists = false;
    let mut unlisted = plan.unlisted.clone();
    for (role, name) in &plan.topics {
        if *role == Role::DeadLetter {
            if let Some(why) = unlisted.take() {
                out.push(Check::skip(KAFKA, "topic", why));
            }
        }
        let line = topic_check(cluster, plan, *role, name).await;
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
    Found {
        existing,
        checkpoint: checkpoint_exists,
    }
}

/// One topic's line, and whether it exists.
async fn topic_check(c: &Cluster, plan: &Plan, role: Role, name: &str) -> (Check, bool) {
    let (meta, admin, opts, within) = (&c.meta, c.admin.as_ref(), &c.opts, c.within);
    let (production, auto_create) = (c.production, c.auto_create);
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

#[cfg(test)]
mod tests {
    use super::*;

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
