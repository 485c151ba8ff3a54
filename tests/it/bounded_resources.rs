//! Bounded resources: an idle outbox does not pin WAL (the slot moves with the server while
//! nothing is published), and the checkpoint topic the relay creates is compacted (one record per
//! slot survives, not one per commit). Memory under a 200k-row transaction is checked with its
//! kill in `exactly_once`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::{current_wal_lsn, slot_info};
use outbox_relay_dev::{shared_servers, wait_until, Kafka};

use crate::support::{fresh, setup, start, stop};

/// In the compatibility set: idle WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbox_does_not_pin_wal() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("postgres.status_interval_ms", 1000i64);
    let mut relay = start(&cfg).await?;
    let client = db.client().await?;
    client
        .batch_execute("CREATE TABLE busy (id bigserial primary key, pad text)")
        .await?;
    // About 200 MB of WAL in a table that is not published.
    let start_lsn = current_wal_lsn(&client).await?;
    while current_wal_lsn(&client).await?.bytes_since(start_lsn) < 200 * 1024 * 1024 {
        client
            .batch_execute(
                "INSERT INTO busy (pad) SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
            )
            .await?;
    }
    let stopped = Instant::now();
    let slot = cfg.slot.clone();
    let retained = wait_until(
        Duration::from_secs(30),
        "retained WAL under 16 MB",
        || async {
            // Running-xacts records (what moves restart_lsn) are logged about every 15 s; a
            // checkpoint logs one at once, as a busy server does on its own.
            client.batch_execute("CHECKPOINT").await.ok();
            let now = current_wal_lsn(&client).await?;
            let info = slot_info(&client, &slot).await?.context("slot")?;
            let retained = now.bytes_since(info.restart_lsn.unwrap_or_default());
            Ok((retained < 16 * 1024 * 1024).then_some(retained))
        },
    )
    .await?;
    eprintln!(
        "retained WAL {} KiB, {:?} after the writer stopped",
        retained / 1024,
        stopped.elapsed()
    );
    stop(&mut relay).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_topic_is_created_compacted() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, cfg) = fresh().await?;
    let mut relay = start(&cfg).await?;
    let kafka = Kafka::shared();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create()?;
    let res = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(
                &cfg.checkpoint_topic,
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await?;
    let cfgs = res
        .into_iter()
        .next()
        .context("one result")?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let policy = cfgs
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .context("cleanup.policy")?;
    ensure!(policy == "compact", "cleanup.policy = {policy}");
    stop(&mut relay).await?;
    Ok(())
}
