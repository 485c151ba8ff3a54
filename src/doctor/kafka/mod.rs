//! The Kafka half of the checklist: the brokers, their transaction timeout, every topic the relay
//! writes (checkpoint, routed, dead letter), the checkpoint and where the relay would resume, and
//! the ACLs for what the relay does (idempotent and transactional writes, reads, describes).
//!
//! Nothing it does is visible to `read_committed` consumers, and nothing fences a running relay:
//! clients never auto-create topics (`allow.auto.create.topics = false`); the checkpoint is read
//! with an assigned consumer that commits nothing; `init_transactions` with the relay's
//! `transactional.id` runs only while no session holds the slot; `--probe-writes` writes one
//! record per topic inside a transaction it aborts.
//!
//! One file per concern, in the order the lines appear; each depends only on the files below it
//! in this list, and this one runs them in order:
//!
//! ```text
//!  cluster.rs     bootstrap, the brokers' transaction.max.timeout.ms     -> Cluster (clients, facts)
//!  topics.rs      each topic: exists, describable, partitions, replication, compaction  (Cluster)
//!  checkpoint.rs  the checkpoint is readable; where the relay would resume (the relay's rules)
//!  acl.rs         idempotent write, the transactional id, --probe-writes
//!  plan.rs        what is asked (Plan, Role), the time bound, the error code behind an error
//! ```

mod acl;
mod checkpoint;
mod cluster;
mod plan;
mod topics;

pub use plan::{Plan, Role};

use super::check::Check;
use super::postgres::Facts;
use crate::sink::CheckpointKey;

/// Runs every Kafka check, appending one line each to `out`.
pub async fn run(plan: &Plan, pg: &Facts, out: &mut Vec<Check>) {
    let mut sink = plan.sink.bounded(plan::bound(&plan.sink));
    // Asking about a missing topic must not create it (librdkafka's producers may by default).
    sink.client.set("allow.auto.create.topics", "false");
    let Some(cluster) = cluster::check(&sink, out).await else {
        return;
    };
    let found = topics::check(&cluster, plan, out).await;

    // The checkpoint, and where the relay would resume.
    let key = pg
        .system_id
        .as_ref()
        .map(|id| CheckpointKey::new(id, &plan.source.dbname, &plan.source.slot));
    checkpoint::check(&sink, plan, pg, key.as_ref(), found.checkpoint, out);

    // ACLs: idempotent write, the transactional id, writes.
    out.push(acl::idempotence(&sink, cluster.within));
    acl::transactional(&sink, plan, pg, key, &found.existing, out);
}
