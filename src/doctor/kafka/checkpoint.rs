//! The checkpoint and where the relay would resume: the checkpoint record is readable
//! (`read_committed`, under the key that names this database and slot), and the relay's own
//! start-up rules ([`session`]) accept it with the slot and timeline Postgres reported, or say why
//! the relay would stop (exit 70) and which runbook fixes it.

use rdkafka::error::RDKafkaErrorCode;

use super::plan::{bound, kafka_code, Plan, KAFKA};
use crate::doctor::check::Check;
use crate::doctor::postgres::Facts;
use crate::error::Kind;
use crate::relay::session;
use crate::sink::{checkpoint, Checkpoint, CheckpointKey, SinkSettings};

/// The checkpoint is readable, and the relay can resume from it with this slot.
pub(super) fn check(
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
