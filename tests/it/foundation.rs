//! The ground the other tests stand on: the harness's Postgres and Kafka are real (logical WAL,
//! transactions, read_committed), `sql/` is idempotent and grants the relay role exactly what it needs,
//! server crashes and restarts keep committed data, and the verdict, writers and proxy work.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::{current_wal_lsn, slot_info};
use outbox_relay_dev::{
    exclusive_servers, random_suffix, shared_servers, verify, wait_until, write_batched,
    write_concurrently, write_txn, Kafka, NewEvent, Postgres, Proxy, Record, WriteSpec, Written,
};
use pgwire_replication::{ReplicationClient, ReplicationConfig};
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
    let bootstrap = kafka.bootstrap();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set(
                "transactional.id",
                format!("it-foundation-{}", random_suffix()),
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
        if commit {
            producer.commit_transaction(Duration::from_secs(30))?;
        } else {
            producer.flush(Duration::from_secs(30))?;
            producer.abort_transaction(Duration::from_secs(30))?;
        }
        Ok(())
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
async fn postgres_is_logical_and_sql_applies_twice() -> Result<()> {
    let _g = shared_servers().await;
    let pg = Postgres::shared();
    let admin = pg.admin("postgres").await?;
    let wal_level: String = admin.query_one("SHOW wal_level", &[]).await?.get(0);
    assert_eq!(wal_level, "logical");

    let db = pg.new_database().await?;
    db.apply_sql().await.context("second application of sql/")?;
    let c = db.client().await?;
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_tables WHERE schemaname='public' AND tablename='outbox'"
        )
        .await?,
        1
    );
    let pubs = c
        .query(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname='outbox_pub'",
            &[],
        )
        .await?;
    assert_eq!(pubs.len(), 1);
    let flags: (bool, bool, bool, bool) = (
        pubs[0].get(0),
        pubs[0].get(1),
        pubs[0].get(2),
        pubs[0].get(3),
    );
    assert_eq!(
        flags,
        (true, false, false, false),
        "publication must be insert-only"
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_publication_tables WHERE pubname='outbox_pub'"
        )
        .await?,
        1
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_proc WHERE proname='outbox_write'"
        )
        .await?,
        1
    );
    let role = c
        .query_one(
            "SELECT rolsuper, rolreplication, rolcanlogin FROM pg_roles WHERE rolname='outbox_relay'",
            &[],
        )
        .await?;
    let attrs: (bool, bool, bool) = (role.get(0), role.get(1), role.get(2));
    assert_eq!(
        attrs,
        (false, true, true),
        "outbox_relay: not superuser, replication, login"
    );

    // outbox_write returns the id; the payload comes back as Postgres's canonical jsonb text.
    let mut c = c;
    let one = write_txn(
        &mut c,
        &[NewEvent::new(
            "booking",
            "b-1",
            "Created",
            r#"{"b":2,  "a":1}"#,
        )],
    )
    .await?;
    assert_eq!(one[0].payload, r#"{"a": 1, "b": 2}"#);
    let batch: Vec<NewEvent> = (0..50)
        .map(|i| {
            NewEvent::new(
                "booking",
                &format!("b-{i}"),
                "Updated",
                &format!(r#"{{"i":{i}}}"#),
            )
        })
        .collect();
    let many = write_batched(&mut c, &batch).await?;
    assert_eq!(many.len(), 50);
    assert_eq!(many[7].payload, r#"{"i": 7}"#);
    assert_eq!(scalar_i64(&c, "SELECT count(*) FROM outbox").await?, 51);
    Ok(())
}

#[tokio::test]
async fn relay_role_replicates_and_reads_only_the_outbox() -> Result<()> {
    let _g = shared_servers().await;
    let pg = Postgres::shared();
    let db = pg.new_database().await?;

    // A replication session as outbox_relay (SCRAM over TCP), the way the relay connects.
    let mut cfg = ReplicationConfig::default();
    cfg.host = pg.host().to_string();
    cfg.port = pg.port();
    cfg.user = Postgres::RELAY_USER.to_string();
    cfg.password = Postgres::RELAY_PASSWORD.to_string();
    cfg.database = db.name.clone();
    let mut repl = ReplicationClient::connect_gated(cfg).await?;
    let ident = repl.identify_system().await?;
    assert_eq!(ident.dbname.as_deref(), Some(db.name.as_str()));
    let slot = format!("s_{}", random_suffix());
    repl.simple_query(&format!(
        "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput"
    ))
    .await
    .context("the relay role may create a logical slot")?;
    let admin = db.client().await?;
    let info = slot_info(&admin, &slot).await?.context("slot exists")?;
    assert!(info.active, "{info:?}");
    assert!(current_wal_lsn(&admin).await? >= info.confirmed_flush_lsn.unwrap_or_default());
    drop(repl);

    let relay = db.relay_client().await?;
    scalar_i64(&relay, "SELECT count(*) FROM public.outbox").await?;
    admin
        .batch_execute("CREATE TABLE public.secret (x int); INSERT INTO public.secret VALUES (1)")
        .await?;
    let err = relay
        .query("SELECT * FROM public.secret", &[])
        .await
        .expect_err("outbox_relay must not read other tables");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    let err = relay
        .query("SELECT outbox_write('a', 'b', 'c', '{}')", &[])
        .await
        .expect_err("outbox_relay must not write the outbox");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn kafka_is_transactional() -> Result<()> {
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
    let rc = kafka.collect(&topics, 20, DEADLINE, true).await?;
    let mut got: Vec<&str> = rc.iter().filter_map(|r| r.value_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = committed.iter().map(|r| r.1.as_str()).collect();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "read_committed sees exactly the committed records"
    );

    let ru = kafka.collect(&topics, 27, DEADLINE, false).await?;
    assert_eq!(
        ru.len(),
        27,
        "read_uncommitted also sees the aborted records"
    );
    assert!(ru.iter().any(|r| r.value_str() == Some("a3")));
    Ok(())
}

#[tokio::test]
async fn writers_and_verdict_end_to_end() -> Result<()> {
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
    let received = kafka
        .collect(std::slice::from_ref(&topic), 600, DEADLINE, true)
        .await?;
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

#[tokio::test]
async fn postgres_survives_kill9_and_restarts() -> Result<()> {
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
async fn kafka_survives_kill9_restart_and_pause() -> Result<()> {
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
    assert_eq!(kafka.collect(&topics, 30, DEADLINE, true).await?.len(), 30);

    let t = Instant::now();
    kafka.restart().await?;
    eprintln!("Kafka graceful restart: {:.1?}", t.elapsed());
    assert_eq!(kafka.collect(&topics, 30, DEADLINE, true).await?.len(), 30);

    // Paused: the broker answers nothing until resumed.
    kafka.pause()?;
    let paused = kafka
        .collect_for(&topics, Duration::from_secs(2), true)
        .await;
    kafka.resume()?;
    assert!(
        paused.map(|r| r.is_empty()).unwrap_or(true),
        "a paused broker delivers nothing"
    );
    assert_eq!(kafka.collect(&topics, 30, DEADLINE, true).await?.len(), 30);
    Ok(())
}

#[tokio::test]
async fn proxy_cuts_blackholes_and_refuses() -> Result<()> {
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
