//! `outbox-relay`: thin binary. Parses the command line, loads the configuration, installs
//! telemetry and signals, runs the relay, and maps the outcome to an exit code systemd
//! understands (listed in `--help`, see [`EXIT_CODES`]).
//!
//! Under systemd (Type=notify) it also serves `/live` `/ready` `/metrics`, feeds the watchdog,
//! and re-reads the configuration on SIGHUP ([`outbox_relay::sighup`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use outbox_relay::config::Config;
use outbox_relay::error::Error;
use outbox_relay::relay::{self, RelaySettings};
use outbox_relay::shutdown::Shutdown;
use outbox_relay::telemetry::{self, LogFormat, Status};
use tokio::sync::watch;

/// The process's allocator: jemalloc, for Rust and, through the `malloc`/`free` symbols it
/// defines, for librdkafka's C code too.
///
/// With glibc's malloc about a fifth of the relay's CPU went to librdkafka's allocations: each
/// produced record is copied and its headers allocated one by one on the relay's thread
/// (`_int_malloc`, `malloc_consolidate`), then freed on librdkafka's polling thread after the
/// broker acknowledged it (`_int_free`, another arena's lock). jemalloc's thread caches take
/// that. Replacing only Rust's allocator changed nothing measurable; replacing malloc cut the
/// relay's CPU per event by a fifth to two fifths, for 1-4 MB more peak RSS (issue 16,
/// `outbox-relay-bench --drain-only` and `--large-txn-only`, figures in the commit that set it).
/// Linux only: elsewhere jemalloc cannot take over `malloc`.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts; `MALLOC_CONF` in the environment is applied after
/// them (e.g. `MALLOC_CONF=stats_print:true` prints them at exit).
///
/// One arena: by default jemalloc keeps several arenas per core, each pinning its own pages,
/// which cost RSS (the relay keeps under 40 MB) and no CPU here since the relay's allocations
/// happen on few threads. Freed pages go back to the kernel 2 s after they were last used
/// (`dirty_decay_ms`), without a lazy-free stage RSS would still count (`muzzy_decay_ms:0`).
///
/// The crate's one `unsafe`: exporting this symbol is jemalloc's documented way to set its
/// options at build time, and nothing else in the process defines it.
#[cfg(target_os = "linux")]
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "malloc_conf")]
static malloc_conf: &[u8; 47] = b"narenas:1,dirty_decay_ms:2000,muzzy_decay_ms:0\0";

/// The exit codes, for `--help` (sysexits.h where one fits).
const EXIT_CODES: &str = "\
Exit codes:
  0   stopped cleanly (SIGTERM/SIGINT drained), or the command succeeded
  1   an internal error (a bug: please report it with the log)
  64  usage error (unknown command or option)
  65  a row cannot be published and errors.on_error = \"stop\" (fix the row, then start again)
  69  a server stayed unavailable for retry.max_elapsed_ms (systemd restarts it)
  70  a broken invariant: continuing could lose or duplicate events (slot moved or lost,
      checkpoint unreadable, timeline diverged): read the message and the README runbook
  78  configuration error (a key, a credential, a missing table/publication/slot/topic)
systemd's unit does not restart on 64, 65, 70 or 78.
`status` exits 0, 1 or 2 (ok, warning, critical); `doctor` and `reset-checkpoint` list their
codes in their own --help.

The configuration file is --config, else $OUTBOX_RELAY_CONFIG, else
/etc/outbox-relay/outbox-relay.toml; OUTBOX_RELAY__<SECTION>__<KEY> variables override its keys.";

/// `doctor`'s exit codes.
const DOCTOR_EXIT_CODES: &str = "\
Exit codes:
  0   no check failed (warnings allowed)
  3   at least one check failed (its fix is printed under it)
  78  the configuration cannot be read or is invalid";

/// `reset-checkpoint`'s exit codes.
const RESET_EXIT_CODES: &str = "\
Exit codes:
  0   written, or --dry-run, or nothing to reset
  64  --yes missing: shown, nothing written
  65  --to-lsn refused (below the slot's confirmed_flush_lsn, past the server's WAL, or no slot)
  69  a server is unavailable
  75  a relay holds the slot: stop it first (nothing written)
  78  configuration error (or the checkpoint topic does not exist)";

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/outbox-relay/outbox-relay.toml";

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Publishes a Postgres outbox table to Kafka exactly once",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The configuration file argument every command shares.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML); OUTBOX_RELAY__SECTION__KEY variables override it.
    #[arg(long, short, env = "OUTBOX_RELAY_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    #[command(after_help = EXIT_CODES)]
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the configuration without running.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
        /// Also connect to both servers and check wal_level, the table, the publication, the slot
        /// and the topics. Changes nothing. The fast check (what the unit runs before start): it
        /// stops at the first problem; `doctor` lists everything, with fixes.
        #[arg(long)]
        connect: bool,
    },
    /// Check everything that decides whether the relay will work, one line each (ok, warn, fail,
    /// skip) with the fix. Changes nothing. `validate --connect` stays the fast check.
    #[command(after_help = DOCTOR_EXIT_CODES)]
    Doctor {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Prove WRITE on each topic by writing one record in a Kafka transaction that is then
        /// aborted (invisible to read_committed consumers; read_uncommitted ones see it). Only
        /// while no relay runs: it uses the relay's transactional.id.
        #[arg(long)]
        probe_writes: bool,
    },
    /// Reset the relay's checkpoint in Kafka: a tombstone for its key (the relay next publishes
    /// from the slot's position), or with --to-lsn a checkpoint at that position. Shows first
    /// what it would reset; writes only with --yes, and never while a relay holds the slot.
    #[command(after_help = RESET_EXIT_CODES)]
    ResetCheckpoint {
        #[command(flatten)]
        config: ConfigArg,
        /// Write a checkpoint at this position (Postgres' X/Y form) on the server's current
        /// timeline instead of a tombstone: the relay then publishes the transactions committed
        /// at or after it (e.g. the fork point after a timeline divergence).
        #[arg(long, value_name = "X/Y")]
        to_lsn: Option<outbox_relay::Lsn>,
        /// Show what would be reset and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Confirm: without it nothing is written.
        #[arg(long)]
        yes: bool,
    },
    /// Show the slot, the checkpoint in Kafka, the lag and who holds the slot. Read-only.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare the outbox table with Kafka: missing, duplicated, out of order. Read-only.
    Audit(outbox_relay::audit::Args),
    /// Publish, once, the rows `audit` finds missing (its own transactional.id and checkpoint key,
    /// beside the running relay). The recovery after a lost or invalidated slot.
    #[command(
        after_help = "Exit codes: 0 published (or nothing missing, or --dry-run), 4 the audit could not judge (nothing published), 78 configuration error, 69 a server unavailable, 65 a bad row with errors.on_error = \"stop\", 1 anything else."
    )]
    Backfill(outbox_relay::backfill::Options),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitCode::SUCCESS
                }
                // sysexits EX_USAGE: systemd's unit does not restart on it.
                _ => ExitCode::from(64),
            };
        }
    };
    match cli.command {
        Command::Run { config } => run(config.config),
        Command::Validate { config, connect } => validate(config.config, connect),
        Command::Doctor {
            config,
            json,
            probe_writes,
        } => {
            let cfg = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime().block_on(outbox_relay::doctor::run(
                &config.config,
                &cfg,
                json,
                probe_writes,
            ))
        }
        Command::ResetCheckpoint {
            config,
            to_lsn,
            dry_run,
            yes,
        } => {
            let cfg = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = outbox_relay::reset::Options {
                to_lsn,
                dry_run,
                yes,
            };
            runtime().block_on(outbox_relay::reset::run(&cfg, opts))
        }
        Command::Status { config, json } => {
            let cfg = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime().block_on(outbox_relay::status::run(&cfg, json))
        }
        Command::Audit(args) => match load(&args.config) {
            Ok(cfg) => runtime().block_on(outbox_relay::audit::run(&cfg, &args)),
            Err(code) => code,
        },
        Command::Backfill(args) => match load(args.config()) {
            Ok(cfg) => runtime().block_on(outbox_relay::backfill::run(&cfg, &args)),
            Err(code) => code,
        },
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    match Config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Ok(loaded.config)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(78))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn fail(e: &Error) -> ExitCode {
    tracing::error!(exit_code = e.exit_code(), "{}", e.report());
    eprintln!("error: {}", e.report());
    ExitCode::from(e.exit_code() as u8)
}

fn run(path: PathBuf) -> ExitCode {
    let cfg = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let format = match cfg.log.format {
        outbox_relay::config::LogFormat::Json => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let log_level = match telemetry::init(format, &cfg.log.level) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(78);
        }
    };
    let settings = RelaySettings::from_config(&cfg);
    let drain_timeout = cfg.shutdown.drain_timeout();
    let rt = runtime();
    rt.block_on(async move {
        let shutdown = Shutdown::new();
        if let Err(e) = shutdown.install_signal_handlers() {
            return fail(&Error::internal("cannot install signal handlers").with_source(e));
        }
        let status = Arc::new(Status::new(&settings.source.slot));
        // Draining: not ready, STOPPING=1 for systemd, and a deadline: past it, exit without
        // waiting (still safe, nothing unacked was promised).
        let watchdog = shutdown.clone();
        let draining = status.clone();
        tokio::spawn(async move {
            watchdog.requested().await;
            draining.set_draining();
            tokio::time::sleep(drain_timeout).await;
            tracing::error!(?drain_timeout, "drain did not finish in time: exiting");
            std::process::exit(1);
        });
        if let Some(addr) = cfg.admin.listen_addr() {
            telemetry::admin::spawn(addr, status.clone());
        }
        telemetry::systemd::spawn_watchdog(status.clone());
        let (live_tx, live_rx) = watch::channel(settings.live());
        if let Err(e) = outbox_relay::sighup::spawn(path, cfg, log_level, live_tx, status.clone()) {
            return fail(&Error::internal("cannot install the SIGHUP handler").with_source(e));
        }
        match relay::run(settings, shutdown, status, live_rx).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    })
}

fn validate(path: PathBuf, connect: bool) -> ExitCode {
    let cfg = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !connect {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    let settings = RelaySettings::from_config(&cfg);
    let rt = runtime();
    match rt.block_on(relay::preflight(&settings)) {
        Ok(report) => {
            for line in report {
                println!("{line}");
            }
            println!(
                "{}: configuration is valid and both servers are ready",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks (unique names, valid defaults), which otherwise surface as a
    /// panic the first time a user runs the subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
