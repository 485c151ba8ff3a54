//! The ground the other tests stand on, checked against itself: the harness's Kafka is a real
//! transactional broker (read_committed hides aborted records), the verdict catches a loss and a
//! duplicate, the final read waits for open transactions and reads every partition to its end (so
//! a duplicate committed late still counts), the servers survive kill -9 and restarts with their
//! data, and the proxy cuts, blackholes and refuses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::{
    exclusive_servers, random_suffix, shared_servers, verify, wait_until, write_batched,
    write_concurrently, Kafka, NewEvent, Postgres, Proxy, Record, WriteSpec, Written,
};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const DEADLINE: Duration = Duration::from_secs(60);

/// Produces `(key, value, event_id)` records in one Kafka transaction, committed or aborted.
async fn produce_txn(
    kafka: &Kafka,
    topic: &str,
    records: Vec<(String, String, String)>,
    commit: bool,
) -> Result<()> {
    let producer = open_txn(kafka, topic, records).await?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        if commit {
            producer.commit_transaction(Duration::from_secs(30))?;
        } else {
            producer.abort_transaction(Duration::from_secs(30))?;
        }
        Ok(())
    })
    .await?
}

/// A producer of its own `transactional.id` with `records` sent and flushed in a transaction it
/// leaves open.
async fn open_txn(
    kafka: &Kafka,
    topic: &str,
    records: Vec<(String, String, String)>,
) -> Result<BaseProducer> {
    let bootstrap = kafka.bootstrap();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<BaseProducer> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set(
                "transactional.id",
                format!("it-harness-{}", random_suffix()),
            )
            .set("partitioner", "murmur2_random")
            .create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        producer.begin_transaction()?;
        for (key, value, id) in &records {
            let headers = OwnedHeaders::new().insert(Header {
                key: "event_id",
                value: Some(id.as_bytes()),
            });
            let rec = BaseRecord::to(&topic)
                .key(key)
                .payload(value)
                .headers(headers);
            producer.send(rec).map_err(|(e, _)| e)?;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(producer)
    })
    .await?
}

fn as_records(written: &[Written]) -> Vec<(String, String, String)> {
    written
        .iter()
        .map(|w| (w.aggregate_id.clone(), w.payload.clone(), w.id.to_string()))
        .collect()
}

async fn scalar_i64(client: &tokio_postgres::Client, sql: &str) -> Result<i64> {
    Ok(client
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_string())?
        .get(0))
}

#[tokio::test]
async fn kafka_is_transactional_and_read_committed_hides_aborted_records() -> Result<()> {
    let _g = shared_servers().await;
    let kafka = Kafka::shared();
    let topic = format!("t_{}.foundation", random_suffix());
    kafka.create_topic(&topic, 3, &[]).await?;
    let committed: Vec<_> = (0..20)
        .map(|i| {
            (
                format!("k{}", i % 4),
                format!("c{i}"),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    let aborted: Vec<_> = (0..7)
        .map(|i| {
            (
                format!("k{i}"),
                format!("a{i}"),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    produce_txn(kafka, &topic, committed.clone(), true).await?;
    produce_txn(kafka, &topic, aborted.clone(), false).await?;

    let topics = vec![topic];
    let rc = kafka.collect(&topics).await?;
    let mut got: Vec<&str> = rc.iter().filter_map(|r| r.value_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = committed.iter().map(|r| r.1.as_str()).collect();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "read_committed sees exactly the committed records"
    );

    let ru = kafka.collect_uncommitted(&topics).await?;
    assert_eq!(
        ru.len(),
        27,
        "read_uncommitted also sees the aborted records"
    );
    assert!(ru.iter().any(|r| r.value_str() == Some("a3")));
    Ok(())
}

#[tokio::test]
async fn the_writers_commit_what_they_report_and_the_verdict_catches_a_loss_and_a_duplicate(
) -> Result<()> {
    let _g = shared_servers().await;
    let (pg, kafka) = (Postgres::shared(), Kafka::shared());
    let db = pg.new_database().await?;
    let spec = WriteSpec {
        writers: 3,
        total: 600,
        txn_sizes: vec![1, 7, 50],
        keys_per_writer: 5,
        ..WriteSpec::default()
    };
    let t = Instant::now();
    let written = write_concurrently(&db, &spec).await?;
    eprintln!("wrote {} events in {:.1?}", written.len(), t.elapsed());
    assert_eq!(written.len(), 600);
    let c = db.client().await?;
    assert_eq!(
        scalar_i64(&c, "SELECT count(DISTINCT id) FROM outbox").await?,
        600
    );
    ensure!(
        written.iter().all(|w| w.payload.len() > 250),
        "payloads are ~300 bytes"
    );

    // Stand in for the relay: publish the rows in order, one Kafka transaction, then check the verdict.
    let topic = format!("t_{}.booking", random_suffix());
    kafka.create_topic(&topic, 3, &[]).await?;
    produce_txn(kafka, &topic, as_records(&written), true).await?;
    let received = kafka.collect(std::slice::from_ref(&topic)).await?;
    let verdict = verify(&written, &received);
    eprintln!("{verdict}");
    verdict.assert_exactly_once();

    // A duplicate and a loss are caught.
    let mut bad: Vec<Record> = received[1..].to_vec();
    bad.push(received[5].clone());
    let v = verify(&written, &bad);
    assert_eq!((v.missing.len(), v.duplicated.len()), (1, 1), "{v}");
    Ok(())
}

/// The final read cannot miss a duplicate committed late: a transaction still open when the read
/// starts (here committed 3 s later, past the 2 s quiet period the old read stopped after) is
/// waited for, and every partition is read to its end.
#[tokio::test]
async fn the_final_read_waits_for_open_transactions_and_sees_a_late_duplicate() -> Result<()> {
    let _g = shared_servers().await;
    let kafka = Kafka::shared();
    let topic = format!("t_{}.late", random_suffix());
    kafka.create_topic(&topic, 3, &[]).await?;
    let records: Vec<_> = (0..20)
        .map(|i| {
            (
                format!("k{}", i % 4),
                format!("v{i}"),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    produce_txn(kafka, &topic, records.clone(), true).await?;
    // A zombie's transaction holding a copy of record 7, still open when the reader starts.
    let late = open_txn(kafka, &topic, vec![records[7].clone()]).await?;
    let committer = tokio::spawn(async move {
        // The late commit is the scenario, not a wait.
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::spawn_blocking(move || late.commit_transaction(Duration::from_secs(30))).await
    });
    let started = Instant::now();
    let received = kafka.collect(std::slice::from_ref(&topic)).await?;
    committer.await???;
    let ids: Vec<&str> = received
        .iter()
        .filter_map(|r| r.header("event_id"))
        .collect();
    ensure!(
        ids.len() == 21 && ids.iter().filter(|id| **id == records[7].2).count() == 2,
        "the late duplicate was not read ({} records after {:?})",
        ids.len(),
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn postgres_keeps_committed_rows_through_kill9_and_restarts() -> Result<()> {
    let _g = exclusive_servers().await;
    let pg = Postgres::shared();
    let db = pg.new_database().await?;
    let mut c = db.client().await?;
    let rows: Vec<NewEvent> = (0..100)
        .map(|i| NewEvent::new("booking", &format!("b{i}"), "Created", "{}"))
        .collect();
    write_batched(&mut c, &rows).await?;
    let old_pid = pg.pid().context("postmaster pid")?;

    let t = Instant::now();
    pg.kill9().await?;
    assert!(
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists(),
        "postmaster gone"
    );
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "old connection is dead"
    );
    pg.start().await?;
    eprintln!(
        "Postgres kill -9 + start (crash recovery): {:.1?}",
        t.elapsed()
    );
    let c = db.client().await?;
    assert_eq!(scalar_i64(&c, "SELECT count(*) FROM outbox").await?, 100);
    drop(c);

    let t = Instant::now();
    pg.stop_immediate().await?;
    pg.start().await?;
    eprintln!("Postgres immediate stop + start: {:.1?}", t.elapsed());
    let t = Instant::now();
    pg.restart().await?;
    eprintln!("Postgres graceful restart: {:.1?}", t.elapsed());
    let c = db.client().await?;
    assert_eq!(scalar_i64(&c, "SELECT count(*) FROM outbox").await?, 100);
    Ok(())
}

#[tokio::test]
async fn kafka_keeps_committed_records_through_kill9_restart_and_pause() -> Result<()> {
    let _g = exclusive_servers().await;
    let kafka = Kafka::shared();
    let topic = format!("t_{}.crash", random_suffix());
    kafka.create_topic(&topic, 3, &[]).await?;
    let recs: Vec<_> = (0..30)
        .map(|i| {
            (
                format!("k{}", i % 5),
                format!("v{i}"),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    produce_txn(kafka, &topic, recs, true).await?;
    let topics = vec![topic.clone()];

    let t = Instant::now();
    kafka.kill9().await?;
    kafka.start().await?;
    eprintln!(
        "Kafka kill -9 + start (ready for transactions): {:.1?}",
        t.elapsed()
    );
    assert_eq!(kafka.collect(&topics).await?.len(), 30);

    let t = Instant::now();
    kafka.restart().await?;
    eprintln!("Kafka graceful restart: {:.1?}", t.elapsed());
    assert_eq!(kafka.collect(&topics).await?.len(), 30);

    // Paused: the broker answers nothing until resumed.
    kafka.pause()?;
    let paused = tokio::time::timeout(Duration::from_secs(2), kafka.collect(&topics)).await;
    kafka.resume()?;
    assert!(
        !matches!(paused, Ok(Ok(ref r)) if !r.is_empty()),
        "a paused broker delivers nothing"
    );
    assert_eq!(kafka.collect(&topics).await?.len(), 30);
    Ok(())
}

#[tokio::test]
async fn the_proxy_cuts_blackholes_and_refuses() -> Result<()> {
    let _g = shared_servers().await;
    let pg = Postgres::shared();
    let target: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse()?;
    let proxy = Proxy::start(target)?;
    let via_proxy = || {
        // Same server and credentials, but through the proxy's port.
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(proxy.port())
            .dbname("postgres")
            .user(pg.superuser())
            .password(pg.superuser_password())
            .connect_timeout(Duration::from_secs(2));
        async move {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            anyhow::Ok(client)
        }
    };
    let c = via_proxy().await?;
    c.simple_query("SELECT 1").await?;

    proxy.cut_all();
    wait_until(DEADLINE, "the cut connection to fail", || async {
        Ok(c.simple_query("SELECT 1").await.is_err().then_some(()))
    })
    .await?;
    let c = via_proxy().await?;
    c.simple_query("SELECT 1").await?;

    proxy.set_blackhole(true);
    let q = tokio::spawn(async move { c.simple_query("SELECT 42").await.map(|_| ()) });
    let stuck = tokio::time::timeout(Duration::from_millis(500), async {
        while !q.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(stuck.is_err(), "no answer through a blackhole");
    proxy.set_blackhole(false);
    tokio::time::timeout(DEADLINE, q).await???;

    proxy.set_refuse(true);
    assert!(via_proxy().await.is_err(), "refused while set_refuse(true)");
    proxy.set_refuse(false);
    via_proxy().await?.simple_query("SELECT 1").await?;
    Ok(())
}
