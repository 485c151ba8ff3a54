//! NotificationService: an example consumer of the events outbox-relay publishes, done right.
//!
//! - `isolation.level=read_committed`: only events of committed Kafka transactions are read. This is
//!   librdkafka's default but NOT the Java client's (`read_uncommitted`), which would also show events of
//!   aborted transactions, i.e. events that were never published.
//! - Idempotent by `event_id`: Kafka delivery to a consumer is at least once (a crash between the side
//!   effect and the offset commit replays the message), so the consumer records each event id in its own
//!   database, in the SAME transaction as its side effect:
//!
//! ```text
//! BEGIN;
//!   INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING;  -- 0 rows: duplicate, skip
//!   INSERT INTO notification (...) VALUES (...);                                -- the side effect
//! COMMIT;
//! then commit the Kafka offset
//! ```
//!
//! Run: `cargo run --example consumer -- --help`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio_postgres::{Client, NoTls};

#[derive(Debug, Parser)]
#[command(
    name = "consumer",
    about = "NotificationService: consumes booking events (read_committed) and notifies each customer once"
)]
struct Args {
    /// Kafka bootstrap servers; default: $KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Topics to consume, comma-separated.
    #[arg(long, default_value = "outbox.booking")]
    topics: String,
    /// Consumer group id.
    #[arg(long, default_value = "notification-service")]
    group_id: String,
    /// The service's OWN Postgres database (processed_events, notification); libpq key=value or
    /// postgres:// URL; default: $DATABASE_URL, else `host=127.0.0.1 user=postgres dbname=postgres`.
    #[arg(long)]
    database_url: Option<String>,
    /// Exit 0 after this many events were processed (duplicates not counted); 0: run until SIGINT/SIGTERM.
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Touch this file once connected and subscribed (a container healthcheck reads it).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     uuid        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS notification (
    event_id   uuid        PRIMARY KEY REFERENCES processed_events (event_id),
    booking_id text        NOT NULL,
    channel    text        NOT NULL,
    recipient  text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
";

/// What one message meant for this service.
#[derive(Debug)]
enum Outcome {
    /// First time: the notification was recorded.
    Notified {
        event_type: String,
        booking_id: String,
        recipient: String,
        body: String,
    },
    /// The event id was already processed (a redelivery): nothing done.
    Duplicate,
    /// An event type this service does not care about; still marked processed.
    Ignored(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bootstrap = args
        .bootstrap_servers
        .clone()
        .or_else(|| std::env::var("KAFKA_BOOTSTRAP_SERVERS").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".to_string());
    let url = args
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "host=127.0.0.1 user=postgres dbname=postgres".to_string());

    let mut db = connect_retrying(&url).await?;
    db.batch_execute(SCHEMA)
        .await
        .context("create processed_events")?;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &args.group_id)
        // The two settings that matter: see only committed events, commit offsets ourselves.
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .create()
        .context("create the Kafka consumer")?;
    let topics: Vec<&str> = args
        .topics
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if topics.is_empty() {
        bail!("--topics is empty");
    }
    consumer.subscribe(&topics).context("subscribe")?;
    if let Some(f) = &args.ready_file {
        std::fs::write(f, b"ready\n").with_context(|| format!("write {}", f.display()))?;
    }
    println!(
        "[notification] consuming {} from {bootstrap} (read_committed, group {})",
        topics.join(","),
        args.group_id
    );

    let mut stop = Box::pin(stop_signal());
    let mut count = 0u64;
    let mut duplicates = 0u64;
    while args.events == 0 || count < args.events {
        let msg = tokio::select! {
            _ = &mut stop => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            // The topic does not exist until the first event is published (or the broker creates it).
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition))
            | Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopic)) => continue,
            Err(e) => {
                eprintln!("[notification] kafka: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let outcome = loop {
            match handle(&mut db, &msg).await {
                Ok(o) => break o,
                Err(e) if db.is_closed() => {
                    eprintln!("[notification] database connection lost ({e:#}); reconnecting");
                    db = connect_retrying(&url).await?;
                }
                // Not transient (e.g. a message without event_id): stop rather than skip silently.
                Err(e) => {
                    return Err(e.context(format!(
                        "message {}[{}]@{}",
                        msg.topic(),
                        msg.partition(),
                        msg.offset()
                    )))
                }
            }
        };
        // Only after the database commit: a crash before this line redelivers, and the dedupe skips it.
        consumer
            .commit_message(&msg, CommitMode::Async)
            .context("commit the offset")?;
        match outcome {
            Outcome::Notified {
                event_type,
                booking_id,
                recipient,
                body,
            } => {
                count += 1;
                println!(
                    "[notification] #{count} {event_type} {booking_id} -> email to {recipient}: {body} (event {})",
                    header(&msg, "event_id").unwrap_or_default()
                );
            }
            Outcome::Ignored(event_type) => {
                count += 1;
                println!("[notification] #{count} {event_type} ignored");
            }
            Outcome::Duplicate => {
                duplicates += 1;
                println!(
                    "[notification] duplicate event {} skipped",
                    header(&msg, "event_id").unwrap_or_default()
                );
            }
        }
    }
    // Make the last offsets durable before leaving (they are only an optimisation: dedupe covers them).
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    println!("[notification] stopped: {count} events processed, {duplicates} duplicates skipped");
    Ok(())
}

/// Dedupe + side effect in one database transaction.
async fn handle(db: &mut Client, msg: &BorrowedMessage<'_>) -> Result<Outcome> {
    let event_id = header(msg, "event_id").ok_or_else(|| anyhow!("no event_id header"))?;
    let event_type = header(msg, "event_type").unwrap_or("unknown").to_string();
    let payload: serde_json::Value = match msg.payload() {
        Some(bytes) => serde_json::from_slice(bytes).context("payload is not JSON")?,
        None => serde_json::Value::Null,
    };
    let tx = db.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO processed_events (event_id) VALUES ($1::text::uuid) ON CONFLICT DO NOTHING",
            &[&event_id],
        )
        .await
        .context("record the event id")?;
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(Outcome::Duplicate);
    }
    let field = |k: &str| {
        payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let booking_id = field("booking_id");
    let recipient = field("customer_email");
    let car = field("car");
    let body = match event_type.as_str() {
        "BookingCreated" => format!("we received your booking of a {car}"),
        "BookingConfirmed" => format!("your {car} is confirmed"),
        "BookingCancelled" => format!("your booking of a {car} is cancelled"),
        _ => {
            tx.commit().await?;
            return Ok(Outcome::Ignored(event_type));
        }
    };
    // The side effect. A real service would call its mail provider from here or, better, from its own
    // outbox; recording the notification in the same transaction keeps the example exactly-once.
    tx.execute(
        "INSERT INTO notification (event_id, booking_id, channel, recipient, body) \
         VALUES ($1::text::uuid, $2, 'email', $3, $4)",
        &[&event_id, &booking_id, &recipient, &body],
    )
    .await
    .context("record the notification")?;
    tx.commit().await?;
    Ok(Outcome::Notified {
        event_type,
        booking_id,
        recipient,
        body,
    })
}

fn header<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Connects, retrying for up to a minute (the database may still be starting, e.g. under compose).
async fn connect_retrying(url: &str) -> Result<Client> {
    let config: tokio_postgres::Config = url.parse().context("parse the database URL")?;
    let mut last = None;
    for _ in 0..60 {
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("[notification] database connection closed: {e}");
                    }
                });
                return Ok(client);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow!("no attempt")))
    .context("connect to Postgres")
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
