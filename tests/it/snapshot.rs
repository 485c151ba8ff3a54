//! The initial snapshot (`outbox.snapshot = true`): rows already in the table when the relay
//! creates its slot are published once, before the stream, and survive kill -9 during the
//! snapshot and after, while writers keep writing.

use std::time::{Duration, Instant};

use anyhow::Result;
use outbox_relay_dev::{shared_servers, verify, write_concurrently, Kafka};
use rand::Rng;

use crate::common::{bin, setup, spec, start, topics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_already_in_the_table_are_published_once_across_kills() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("outbox.snapshot", true);
    cfg.set("batch.max_events", 2_000i64);
    // One timestamp per row (not per transaction), so the snapshot's order (created_at, then id)
    // is the order the rows were written in.
    db.client()
        .await?
        .batch_execute(
            "ALTER TABLE public.outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp()",
        )
        .await?;
    let old = write_concurrently(&db, &spec(200_000, &types, &[2_000], 2)).await?;
    let started = Instant::now();
    let mut relay = start(&cfg).await?;
    // New rows while the snapshot runs and after: the stream publishes them, after the old ones.
    let writer = {
        let mut s = spec(20_000, &types, &[1, 10, 100], 2);
        s.keys_per_writer = 30;
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    // Three kills during the snapshot, then two once it is done.
    let (mut during, mut after) = (0, 0);
    while during < 3 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..1_200))).await;
        // This process's log only: whether it finished the snapshot before the kill.
        let done = relay.logs().contains("initial snapshot done");
        relay.kill9().await?;
        if done {
            after += 1;
        } else {
            during += 1;
        }
        relay = relay.respawn(&bin(), &[])?;
    }
    relay
        .wait_for_log("initial snapshot done", Duration::from_secs(120))
        .await?;
    while after < 2 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..1_200))).await;
        relay.kill9().await?;
        after += 1;
        relay = relay.respawn(&bin(), &[])?;
    }
    let kills = during + after;
    let new = writer.await??;
    let mut written = old;
    written.extend(new);
    let received = Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(300),
            true,
        )
        .await?;
    let verdict = verify(&written, &received);
    eprintln!(
        "snapshot of 200000 rows + 20000 new, kill -9 x{kills} ({during} during the snapshot), {:?}: {verdict}",
        started.elapsed()
    );
    verdict.assert_exactly_once();
    drop(relay);
    Ok(())
}
