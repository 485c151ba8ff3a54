//! One writer at a time: a second relay on the same slot stands by (live, not ready) while the
//! first lives and takes over when it dies.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::{shared_servers, write_concurrently};

use crate::support::{
    setup, spawn, spec, start, stop, topics, verdict, wait_published, wait_records,
    wait_standing_by, READY_WITHIN,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_stands_by_while_the_first_lives_and_takes_over_after_a_kill() -> Result<()>
{
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut first = start(&cfg).await?;
    let mut second_cfg = cfg.clone();
    second_cfg.new_admin_port();
    let mut second = spawn(&second_cfg, &[])?;
    wait_standing_by(&mut second).await?;
    let written_a = write_concurrently(&db, &spec(5_000, &types, &[1, 10], 2)).await?;
    wait_published(&topics, &written_a, Duration::from_secs(60)).await?;
    ensure!(second.is_running(), "standby exited:\n{}", second.logs());
    let (code, body) = second.get("/ready").await?;
    ensure!(
        code == 503 && body.contains("standing by"),
        "the standby became active while the first was alive: {code} {body}"
    );

    first.kill9().await?;
    let killed = Instant::now();
    let written_b = write_concurrently(&db, &spec(5_000, &types, &[1, 10], 2)).await?;
    second.wait_ready(READY_WITHIN).await?;
    let mut all = written_a;
    all.extend(written_b);
    wait_published(&topics, &all, Duration::from_secs(60)).await?;
    let took = killed.elapsed();
    stop(&mut second).await?;
    verdict(&topics, &all).await?.assert_exactly_once();
    eprintln!("standby took over and published the rest {took:?} after the kill");
    ensure!(took < Duration::from_secs(60), "took {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_takes_over_within_30s_of_a_kill9() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("retry.initial_backoff_ms", 100i64);
    let topics = topics(&cfg, &types);
    let mut active = start(&cfg).await?;
    let mut standby_cfg = cfg.clone();
    standby_cfg.new_admin_port();
    let mut standby = spawn(&standby_cfg, &[])?;
    wait_standing_by(&mut standby).await?;
    let writer = {
        let db = db.clone();
        let s = spec(20_000, &types, &[1, 10], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    wait_records(&topics, 2_000, Duration::from_secs(60)).await?;
    active.kill9().await?;
    let killed = Instant::now();
    standby
        .wait_ready(READY_WITHIN)
        .await
        .context("standby did not take over")?;
    let takeover = killed.elapsed();
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut standby).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("hot standby: took over {takeover:?} after kill -9 of the active relay; {verdict}");
    verdict.assert_exactly_once();
    ensure!(
        takeover < Duration::from_secs(30),
        "takeover took {takeover:?}"
    );
    Ok(())
}
