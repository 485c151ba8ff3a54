//! `outbox-relay`: thin binary. Parses the command line, loads the configuration, installs
//! telemetry and signals, runs the relay, and maps the outcome to an exit code systemd understands:
//! 0 clean stop, 78 configuration error (do not restart), 69 a server unavailable past the retry
//! budget, 70 a broken invariant, 65 a bad row with `errors.on_error = "stop"`, 1 anything else.
//!
//! Under systemd (Type=notify) it also serves `/live` `/ready` `/metrics`, feeds the watchdog,
//! and re-reads the configuration on SIGHUP: safe keys apply live, the others are refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use outbox_relay::config::Config;
use outbox_relay::error::Error;
use outbox_relay::relay::{self, LiveSettings, RelaySettings};
use outbox_relay::shutdown::Shutdown;
use outbox_relay::telemetry::{self, LogFormat, LogLevelHandle, Status};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Publishes a Postgres outbox table to Kafka exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Run {
        /// Configuration file (TOML); OUTBOX_RELAY__SECTION__KEY variables override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the configuration without running.
    Validate {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Also connect to both servers and check wal_level, publication, table, slot and topics.
        #[arg(long)]
        connect: bool,
    },
    /// Show the slot, the checkpoint in Kafka, the lag and who holds the slot. Read-only.
    Status {
        /// Configuration file (TOML), as for `run`.
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare the outbox table with Kafka: missing, duplicated, out of order. Read-only.
    Audit(outbox_relay::audit::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Validate { config, connect } => validate(config, connect),
        Command::Status { config, json } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime().block_on(outbox_relay::status::run(&cfg, json))
        }
        Command::Audit(args) => match load(&args.config) {
            Ok(cfg) => runtime().block_on(outbox_relay::audit::run(&cfg, &args)),
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
        if let Err(e) = spawn_reload(path, cfg, log_level, live_tx, status.clone()) {
            return fail(&Error::internal("cannot install the SIGHUP handler").with_source(e));
        }
        match relay::run_with_reload(settings, shutdown, status, live_rx).await {
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
    match rt.block_on(outbox_relay::relay::check_servers(&settings)) {
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

/// SIGHUP: re-read the configuration file (and environment). If only reloadable keys changed
/// (`log.level`, `[batch]`, `[routing]`), apply them live; if any other key changed, refuse the
/// whole reload, name those keys, and keep running with the old configuration.
fn spawn_reload(
    path: PathBuf,
    mut current: Config,
    log_level: LogLevelHandle,
    live: watch::Sender<LiveSettings>,
    status: Arc<Status>,
) -> std::io::Result<()> {
    use futures::StreamExt;
    let mut signals = signal_hook_tokio::Signals::new([signal_hook::consts::SIGHUP])?;
    tokio::spawn(async move {
        while signals.next().await.is_some() {
            let result = reload(&path, &mut current, &log_level, &live);
            status.metrics.reload(result);
        }
    });
    Ok(())
}

/// One reload; returns the result label for the metric.
fn reload(
    path: &Path,
    current: &mut Config,
    log_level: &LogLevelHandle,
    live: &watch::Sender<LiveSettings>,
) -> &'static str {
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let loaded = match Config::load(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("configuration reload failed, the running configuration stays: {e}");
            return "failed";
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let new = loaded.config;
    let refused = restart_only_changes(current, &new);
    if !refused.is_empty() {
        tracing::error!(
            keys = %refused.join(", "),
            "configuration reload refused: {} cannot change while the relay runs (restart it to apply); the running configuration stays",
            refused.join(", ")
        );
        return "refused";
    }
    let applied = live_changes(current, &new);
    if applied.is_empty() {
        tracing::info!("configuration reloaded: nothing changed");
        return "applied";
    }
    if current.log.level != new.log.level {
        match log_level.set(&new.log.level) {
            Ok(true) => {}
            Ok(false) => tracing::warn!("log.level not applied: RUST_LOG overrides it"),
            Err(e) => {
                tracing::error!(
                    "configuration reload failed, the running configuration stays: {e}"
                );
                return "failed";
            }
        }
    }
    live.send_replace(RelaySettings::from_config(&new).live());
    tracing::info!(
        keys = %applied.join(", "),
        "configuration reloaded: applied {}",
        applied.join(", ")
    );
    *current = new;
    "applied"
}

/// Pushes the dotted name of each listed field whose value differs (compared through `Debug`,
/// which every config type has; secrets are compared separately, their `Debug` is `***`).
macro_rules! diff {
    ($out:ident, $a:ident, $b:ident; $($($field:ident).+),+ $(,)?) => {
        $(
            if format!("{:?}", $a.$($field).+) != format!("{:?}", $b.$($field).+) {
                $out.push(stringify!($($field).+).replace(' ', ""));
            }
        )+
    };
}

/// Keys that cannot change without a restart: connections, identities, positions, the data
/// contract, error policy, and the process-level settings read once at start.
fn restart_only_changes(a: &Config, b: &Config) -> Vec<String> {
    let mut out = Vec::new();
    diff!(out, a, b;
        postgres.host, postgres.port, postgres.dbname, postgres.user, postgres.sslmode,
        postgres.sslrootcert, postgres.slot, postgres.publication, postgres.create_slot,
        postgres.connect_timeout_ms, postgres.status_interval_ms,
        outbox.table, outbox.columns,
        kafka.bootstrap_servers, kafka.checkpoint_topic, kafka.create_checkpoint_topic,
        kafka.transactional_id, kafka.transaction_timeout_ms, kafka.security_protocol,
        kafka.sasl_mechanism, kafka.sasl_username, kafka.ssl_ca_location, kafka.properties,
        errors.on_error, errors.dead_letter_topic,
        shutdown.drain_timeout_ms,
        retry.initial_backoff_ms, retry.max_backoff_ms, retry.max_elapsed_ms,
        admin.listen,
        log.format,
    );
    if a.postgres.password.expose() != b.postgres.password.expose() {
        out.push("postgres.password".into());
    }
    if a.kafka.sasl_password.expose() != b.kafka.sasl_password.expose() {
        out.push("kafka.sasl_password".into());
    }
    out
}

/// Keys that apply live: the log filter, batch limits, routing of events not yet read.
fn live_changes(a: &Config, b: &Config) -> Vec<String> {
    let mut out = Vec::new();
    diff!(out, a, b;
        log.level,
        batch.max_events, batch.max_bytes, batch.max_delay_ms, batch.split_events,
        batch.idle_checkpoint_ms,
        routing.topic_template, routing.strict, routing.topics,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_sorts_keys_into_live_and_restart_only() {
        let a = Config::default();
        let mut b = a.clone();
        b.batch.max_events = 5;
        b.routing.strict = true;
        b.log.level = "debug".into();
        assert!(restart_only_changes(&a, &b).is_empty());
        assert_eq!(
            live_changes(&a, &b),
            ["log.level", "batch.max_events", "routing.strict"]
        );
        b.postgres.slot = "other".into();
        b.postgres.password = outbox_relay::config::Secret::new("changed");
        b.kafka.properties.insert("linger.ms".into(), "5".into());
        assert_eq!(
            restart_only_changes(&a, &b),
            ["postgres.slot", "kafka.properties", "postgres.password"]
        );
    }
}
