//! `outbox-relay backfill --missing`: publishes, once, exactly the rows `audit` finds missing.
//!
//! ```text
//!  audit (the same window and cut) ─> every missing event id
//!      │ --dry-run: list them, publish nothing
//!      ▼
//!  the rows, read from the table by id ─> decode ─> route / dead-letter ─> Kafka transactions
//!      (its own transactional.id `<relay's>.backfill` and checkpoint key `<relay's key>/backfill`,
//!       so it runs beside the live relay without fencing it)
//! ```
//!
//! Exactly once without a memory of its own: every run starts from what Kafka holds. A row is
//! published only if the audit finds it in neither its topic nor the dead-letter topic; a run
//! killed midway committed whole Kafka transactions, whose rows the next run's audit finds, so it
//! publishes the others only; a run with nothing missing publishes nothing. The audit's cut means
//! a row the relay has not reached yet is never "missing". It is the recovery step of the README's
//! "Lost slot" and "Recovering from an invalidated slot" runbooks.
//!
//! Backfilled events carry the usual headers, except that their WAL position is not known:
//! `pg_lsn` is `0/0`, `pg_xid` the transaction that inserted the row, `pg_commit_ts` the time of the
//! backfill. They arrive after newer events of the same key, so per-key order is not kept for them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::{self, entries::format_uuid};
use crate::config::Config;
use crate::decode::OutboxDecoder;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::relay::publish::{Published, Publisher};
use crate::relay::RelaySettings;
use crate::route::Position;
use crate::sink::{
    Checkpoint, CheckpointKey, Committer, MetadataClient, Outcome, Producer, Refusals, TopicChecker,
};
use crate::source::Control;
use crate::telemetry::Status;

/// Rows read from the table per query.
const CHUNK: usize = 1_000;

/// `outbox-relay backfill` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Publish the rows `audit` finds missing (the only mode).
    #[arg(long, required = true)]
    pub missing: bool,
    /// List the rows it would publish; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The audit's window and options (as `outbox-relay audit`).
    #[command(flatten)]
    pub audit: audit::Args,
}

/// Config path of the arguments.
impl Options {
    /// The configuration file.
    pub fn config(&self) -> &PathBuf {
        &self.audit.config
    }
}

/// Runs the subcommand.
pub async fn run(cfg: &Config, args: &Options) -> ExitCode {
    match backfill(cfg, args).await {
        Ok(code) => ExitCode::from(code),
        Err(Failed::Audit(f)) => {
            eprintln!("backfill: the audit could not judge, nothing published: {f:?}");
            ExitCode::from(f.exit_code())
        }
        Err(Failed::Relay(e)) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

enum Failed {
    Audit(audit::Failure),
    Relay(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Relay(e)
    }
}

async fn backfill(cfg: &Config, args: &Options) -> std::result::Result<u8, Failed> {
    let started = Instant::now();
    let report = audit::audit_with(cfg, &args.audit, true)
        .await
        .map_err(Failed::Audit)?;
    let ids: Vec<String> = report
        .findings
        .missing_ids
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|id| format_uuid(*id))
        .collect();
    let target: Lsn = report.cut.target_lsn.parse().unwrap_or_default();
    eprintln!(
        "backfill: the audit found {} missing rows (cut {}, window {})",
        ids.len(),
        report.cut.target_lsn,
        report.window.kind
    );
    if ids.is_empty() {
        println!("backfill: nothing missing, nothing published");
        return Ok(0);
    }
    let settings = RelaySettings::from_config(cfg);
    let control = Control::connect(&settings.source).await?;
    let order = settings
        .snapshot_order
        .clone()
        .unwrap_or_else(|| settings.columns.id.clone());
    let shape = control.snapshot_shape(&order, &settings.columns).await?;
    if args.dry_run {
        for chunk in ids.chunks(CHUNK) {
            for row in control.rows_by_id(&shape, chunk).await? {
                println!(
                    "would publish {} (ordered by {order} = {})",
                    row.id, row.order
                );
            }
        }
        println!(
            "backfill --dry-run: {} rows would be published; nothing was",
            ids.len()
        );
        return Ok(0);
    }
    let published = publish(&settings, &control, &shape, &ids, target).await?;
    println!(
        "backfill: published {} of {} missing rows in {:.1}s (transactional.id {}.backfill); run `outbox-relay audit` with the same window to check",
        published,
        ids.len(),
        started.elapsed().as_secs_f64(),
        settings.sink.transactional_id
    );
    Ok(0)
}

/// Publishes the rows of `ids` in Kafka transactions of at most `batch.max_events` records.
async fn publish(
    settings: &RelaySettings,
    control: &Control,
    shape: &crate::source::snapshot::Shape,
    ids: &[String],
    target: Lsn,
) -> Result<u64> {
    let src = control.settings();
    let system_id = control.system_identifier().await?;
    let key = CheckpointKey::new(&system_id, &src.dbname, &format!("{}/backfill", src.slot));
    let mut sink = settings.sink.clone();
    sink.transactional_id = format!("{}.backfill", sink.transactional_id);
    let wait = sink.call_timeout;
    let producer = {
        let (sink, key) = (sink.clone(), key.clone());
        tokio::task::block_in_place(|| Producer::connect(sink, key, wait))?
    };
    let meta = tokio::task::block_in_place(|| MetadataClient::new(&sink))?;
    let mut committer = Committer::new(
        producer,
        TopicChecker::new(meta),
        Refusals::default(),
        sink.max_record_bytes(),
    );
    let status = Arc::new(Status::new(&src.slot));
    let mut publisher = Publisher::new(settings, settings.router.clone(), &status);
    let mut decoder =
        OutboxDecoder::new(&src.table_schema, &src.table_name, settings.columns.clone());
    decoder.relation(shape.relation());
    let checkpoint = Checkpoint {
        resume_lsn: target,
        ..Checkpoint::default()
    };
    let now = now_pg_micros();
    let mut published = 0u64;
    for chunk in ids.chunks(CHUNK) {
        for row in control.rows_by_id(shape, chunk).await? {
            let pos = Position {
                lsn: Lsn::ZERO,
                xid: row.xmin,
                commit_ts_micros: now,
            };
            let decoded = decoder.insert(0, row.tuple);
            match publisher.row(&mut committer, decoded, &pos)? {
                Published::Queued => published += 1,
                Published::Stop(e) => {
                    if !committer.fill().is_empty() {
                        committer.decide(checkpoint.clone(), publisher.take_stats())?;
                    }
                    settle(&mut committer).await?;
                    return Err(e);
                }
            }
            if committer.fill().events >= settings.batch.max_events {
                committer.decide(checkpoint.clone(), publisher.take_stats())?;
                settle(&mut committer).await?;
            }
        }
    }
    if !committer.fill().is_empty() {
        committer.decide(checkpoint, publisher.take_stats())?;
    }
    settle(&mut committer).await?;
    Ok(published)
}

async fn settle(committer: &mut Committer) -> Result<()> {
    while committer.committing() {
        if let Outcome::Refused { event_id, refusal } = committer.finished().await? {
            return Err(Error::transient(format!(
                "kafka: the broker refused the record of outbox row {event_id} ({refusal}); run backfill again: it dead-letters that row"
            )));
        }
    }
    Ok(())
}

fn now_pg_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - 946_684_800 * 1_000_000
}
