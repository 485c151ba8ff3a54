//! The floor under exactly-once latency: what one Kafka transaction costs on this broker with
//! librdkafka, with nothing of the relay around it.
//!
//! Every relay commit is one such transaction (records plus the checkpoint record, two
//! partitions), so the relay's steady-state latency can never be below it: the figure is the
//! baseline the latency target is judged against, measured in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use outbox_relay_dev::util::random_suffix;
use outbox_relay_dev::Kafka;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Cycle times of `begin; produce one record to a data topic and one to a checkpoint topic;
/// commit`, in milliseconds, sorted.
///
/// `await_deliveries`: wait until librdkafka has no message in flight before calling
/// `commit_transaction`, as the relay does (see `src/sink`). rust-rdkafka's `commit_transaction`
/// first runs its own `flush`, which polls in 100 ms slices that do not end early, so a commit
/// with anything in flight costs at least 100 ms; with nothing in flight that flush returns at
/// once.
pub async fn kafka_txn_cycles(cycles: usize, await_deliveries: bool) -> Result<Vec<f64>> {
    let kafka = Kafka::shared();
    let suffix = random_suffix();
    let data = format!("bench-floor-{suffix}");
    let ckpt = format!("bench-floor-ckpt-{suffix}");
    kafka.create_topic(&data, 3, &[]).await?;
    kafka
        .create_topic(&ckpt, 1, &[("cleanup.policy", "compact")])
        .await?;
    let bootstrap = kafka.bootstrap();
    tokio::task::spawn_blocking(move || -> Result<Vec<f64>> {
        // The relay's own producer settings (src/sink): exactly-once, lz4, short linger.
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", format!("bench-floor-{suffix}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("retry.backoff.ms", "10")
            .create()
            .context("create the floor producer")?;
        p.init_transactions(Duration::from_secs(30))?;
        let value = "x".repeat(300);
        let mut ms = Vec::with_capacity(cycles);
        for i in 0..cycles + 10 {
            let t = Instant::now();
            p.begin_transaction()?;
            let key = format!("agg-{}", i % 100);
            p.send(BaseRecord::to(&data).key(&key).payload(&value))
                .map_err(|(e, _)| e)?;
            p.send(BaseRecord::to(&ckpt).key("slot").payload("checkpoint"))
                .map_err(|(e, _)| e)?;
            if await_deliveries {
                while p.in_flight_count() > 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            p.commit_transaction(Duration::from_secs(30))?;
            // The first cycles include connecting to the coordinator and partition leaders.
            if i >= 10 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        Ok(ms)
    })
    .await?
}
