//! The car-rental "monolith": writes bookings and their outbox events in the SAME Postgres transaction,
//! which is the whole contract between an application and outbox-relay.
//!
//! ```text
//! BEGIN;
//!   INSERT INTO booking ...;                      -- the business change
//!   INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES (...);
//! COMMIT;                                         -- both or neither: no dual write
//! ```
//!
//! The relay publishes each committed outbox row to Kafka exactly once (topic `outbox.booking`, key =
//! the booking id, value = the payload, headers `event_id`, `event_type`, ...). A rolled-back transaction
//! publishes nothing. From another language, `SELECT outbox_write('booking', $id, 'BookingCreated',
//! $payload::jsonb)` (sql/004_write_event.sql) is the same INSERT in one call.
//!
//! Run: `cargo run --example monolith -- --help`. Needs a database with sql/ applied and a role that may
//! create the `booking` table and insert into `outbox`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::Rng;
use serde_json::json;
use tokio_postgres::{Client, NoTls};

#[derive(Debug, Parser)]
#[command(
    name = "monolith",
    about = "Car-rental monolith: writes bookings and their outbox events in one transaction"
)]
struct Args {
    /// Postgres connection (libpq key=value or postgres:// URL); default: $DATABASE_URL, else
    /// `host=127.0.0.1 user=postgres dbname=postgres`.
    #[arg(long)]
    database_url: Option<String>,
    /// Booking changes (transactions) per second.
    #[arg(long, default_value_t = 3.0)]
    rate: f64,
    /// Stop after this many events (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Touch this file once connected and the schema is ready (a container healthcheck reads it).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

const CUSTOMERS: &[(&str, &str)] = &[
    ("Alice Martin", "alice@example.com"),
    ("Bob Dupont", "bob@example.com"),
    ("Chloe Nguyen", "chloe@example.com"),
    ("David Okafor", "david@example.com"),
    ("Eva Schmidt", "eva@example.com"),
];
const CARS: &[&str] = &[
    "VW Golf",
    "Tesla Model 3",
    "Renault Clio",
    "Toyota Yaris",
    "BMW X1",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS booking (
    id             text        PRIMARY KEY,
    customer_name  text        NOT NULL,
    customer_email text        NOT NULL,
    car            text        NOT NULL,
    pickup_date    date        NOT NULL,
    status         text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS booking_seq;
";

/// One booking change with its event, written atomically.
#[derive(Debug)]
struct Written {
    event_id: String,
    event_type: &'static str,
    booking_id: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let url = args
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "host=127.0.0.1 user=postgres dbname=postgres".to_string());
    let mut client = connect_retrying(&url).await?;
    client
        .batch_execute(SCHEMA)
        .await
        .context("create the booking table")?;
    if let Some(f) = &args.ready_file {
        std::fs::write(f, b"ready\n").with_context(|| format!("write {}", f.display()))?;
    }
    println!(
        "[monolith] writing bookings with their outbox events, {} per second",
        args.rate
    );

    let mut stop = Box::pin(stop_signal());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = 0u64;
    while args.count == 0 || written < args.count {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        match write_one(&mut client).await {
            Ok(w) => {
                written += 1;
                println!(
                    "[monolith] committed {} {} (event {})",
                    w.event_type, w.booking_id, w.event_id
                );
            }
            Err(e) => {
                // The transaction rolled back: neither the booking change nor its event exists.
                eprintln!("[monolith] write failed, nothing committed: {e:#}");
                if client.is_closed() {
                    client = connect_retrying(&url).await?;
                }
            }
        }
    }
    println!("[monolith] stopped after {written} events");
    Ok(())
}

/// Creates a booking, or confirms / cancels a pending one: business row + outbox row, one transaction.
async fn write_one(client: &mut Client) -> Result<Written> {
    let tx = client.transaction().await?;
    let pending = tx
        .query_opt(
            "SELECT id, customer_name, customer_email, car FROM booking WHERE status = 'pending' \
             ORDER BY random() LIMIT 1",
            &[],
        )
        .await?;
    let (roll, customer, car) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..10u32),
            CUSTOMERS[rng.random_range(0..CUSTOMERS.len())],
            CARS[rng.random_range(0..CARS.len())],
        )
    };
    let (event_type, booking_id, payload) = match pending {
        // Change an existing booking 40% of the time when one is pending.
        Some(row) if roll < 4 => {
            let id: String = row.get(0);
            let name: String = row.get(1);
            let email: String = row.get(2);
            let car: String = row.get(3);
            let (event_type, status) = if roll < 3 {
                ("BookingConfirmed", "confirmed")
            } else {
                ("BookingCancelled", "cancelled")
            };
            tx.execute(
                "UPDATE booking SET status = $2, updated_at = now() WHERE id = $1",
                &[&id, &status],
            )
            .await?;
            let payload = json!({
                "booking_id": id, "status": status, "customer_name": name,
                "customer_email": email, "car": car,
            });
            (event_type, id, payload)
        }
        _ => {
            let row = tx
                .query_one(
                    "INSERT INTO booking (id, customer_name, customer_email, car, pickup_date, status) \
                     VALUES ('booking-' || nextval('booking_seq'), $1, $2, $3, \
                             current_date + (1 + floor(random() * 30))::int, 'pending') \
                     RETURNING id, pickup_date::text",
                    &[&customer.0, &customer.1, &car],
                )
                .await?;
            let id: String = row.get(0);
            let pickup: String = row.get(1);
            let payload = json!({
                "booking_id": id, "status": "pending", "customer_name": customer.0,
                "customer_email": customer.1, "car": car, "pickup_date": pickup,
            });
            ("BookingCreated", id, payload)
        }
    };
    // The event, in the same transaction. The id is the event id consumers dedupe on; headers become
    // extra Kafka headers (here a W3C trace context, as an application with tracing would pass on).
    let event_id = uuid::Uuid::new_v4().to_string();
    let headers = json!({ "traceparent": traceparent() });
    tx.execute(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
         VALUES ($1::text::uuid, 'booking', $2, $3, $4::text::jsonb, $5::text::jsonb)",
        &[
            &event_id,
            &booking_id,
            &event_type,
            &payload.to_string(),
            &headers.to_string(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Written {
        event_id,
        event_type,
        booking_id,
    })
}

fn traceparent() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>(),
        rng.random::<u64>()
    )
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
                        eprintln!("[monolith] connection closed: {e}");
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
        .unwrap_or_else(|| anyhow::anyhow!("no attempt")))
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
