//! Order: per key, events arrive in the order they were written (every verdict checks it), each
//! row on its topic with its key, value and headers; and the rows of one Postgres transaction
//! become visible in Kafka all at once, never half.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::{
    shared_servers, verify, write_concurrently, write_txn, Kafka, NewEvent, Written,
};

use crate::support::{setup, spec, start, stop, topics, wait_published};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_arrive_in_key_order_on_their_topic_with_key_value_and_headers(
) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(10_000, &types, &[1, 7, 100, 500], 3)).await?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    let received = Kafka::shared().collect(&topics).await?;
    let verdict = verify(&written, &received);
    verdict.assert_exactly_once();

    let by_id: HashMap<String, &Written> = written.iter().map(|w| (w.id.to_string(), w)).collect();
    for r in &received {
        let id = r.header("event_id").context("event_id header")?;
        let w = by_id.get(id).context("unknown event id")?;
        ensure!(
            r.topic == cfg.topic_for(&w.aggregate_type),
            "topic of {id}: {}",
            r.topic
        );
        ensure!(r.key_str() == Some(w.aggregate_id.as_str()), "key of {id}");
        ensure!(
            r.value_str() == Some(w.payload.as_str()),
            "value of {id} differs from the payload text"
        );
        ensure!(
            r.header("event_type") == Some(w.event_type.as_str()),
            "event_type of {id}"
        );
        ensure!(
            r.header("aggregate_type") == Some(w.aggregate_type.as_str()),
            "aggregate_type of {id}"
        );
        for h in ["pg_lsn", "pg_xid", "pg_commit_ts", "created_at"] {
            ensure!(
                r.header(h).is_some_and(|v| !v.is_empty()),
                "header {h} of {id}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_transaction_becomes_visible_all_at_once() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car", "customer"];
    let (db, mut cfg) = setup(&types).await?;
    // One Kafka transaction per Postgres transaction here, so partial visibility would show.
    cfg.set("batch.max_events", 1i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let mut written = Vec::new();
    for round in 0..20 {
        let rows: Vec<NewEvent> = (0..30)
            .map(|i| {
                NewEvent::new(
                    types[i % 3],
                    &format!("agg-{round}-{}", i % 5),
                    "Changed",
                    &format!("{{\"round\":{round},\"i\":{i}}}"),
                )
            })
            .collect();
        written.extend(write_txn(&mut client, &rows).await?);
    }
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let received = Kafka::shared().collect(&topics).await?;
    verify(&written, &received).assert_exactly_once();
    // Atomic visibility: every Kafka commit leaves a marker offset in each partition it wrote,
    // so within a partition a run of consecutive offsets is (part of) one Kafka transaction. The
    // rows of one Postgres transaction must never span two runs of a partition.
    let mut by_partition: HashMap<(String, i32), Vec<(i64, String)>> = HashMap::new();
    for r in &received {
        by_partition
            .entry((r.topic.clone(), r.partition))
            .or_default()
            .push((r.offset, r.header("pg_xid").unwrap_or("").to_string()));
    }
    for ((topic, partition), mut rows) in by_partition {
        rows.sort();
        let mut run = 0;
        let mut run_of_xid: HashMap<String, usize> = HashMap::new();
        for (i, (offset, xid)) in rows.iter().enumerate() {
            if i > 0 && *offset != rows[i - 1].0 + 1 {
                run += 1;
            }
            let first = *run_of_xid.entry(xid.clone()).or_insert(run);
            ensure!(
                first == run,
                "xid {xid} is split over two Kafka transactions in {topic}/{partition}"
            );
        }
    }
    let mut per_xid: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *per_xid
            .entry(r.header("pg_xid").unwrap_or("").to_string())
            .or_default() += 1;
    }
    ensure!(
        per_xid.len() == 20,
        "expected 20 transactions, saw {}",
        per_xid.len()
    );
    ensure!(per_xid.values().all(|n| *n == 30), "{per_xid:?}");
    Ok(())
}
