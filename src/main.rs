//! `outbox-relay`: thin binary. Parses the command line, loads the configuration, installs
//! telemetry and signals, runs the relay, and maps the outcome to an exit code systemd understands:
//! 0 clean stop, 78 configuration error (do not restart), 69 a server unavailable past the retry
//! budget, 70 a broken invariant, 65 a bad row with `errors.on_error = "stop"`, 1 anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use outbox_relay::config::Config;
use outbox_relay::error::Error;
use outbox_relay::relay::{self, RelaySettings};
use outbox_relay::shutdown::Shutdown;
use outbox_relay::telemetry::{self, LogFormat, Status};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Validate { config, connect } => validate(config, connect),
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
    if let Err(e) = telemetry::init(format, &cfg.log.level) {
        eprintln!("error: {e}");
        return ExitCode::from(78);
    }
    let settings = RelaySettings::from_config(&cfg);
    let drain_timeout = cfg.shutdown.drain_timeout();
    let rt = runtime();
    rt.block_on(async move {
        let shutdown = Shutdown::new();
        if let Err(e) = shutdown.install_signal_handlers() {
            return fail(&Error::internal("cannot install signal handlers").with_source(e));
        }
        // Draining has a deadline: past it, exit without waiting (still safe, nothing unacked
        // was promised).
        let watchdog = shutdown.clone();
        tokio::spawn(async move {
            watchdog.requested().await;
            tokio::time::sleep(drain_timeout).await;
            tracing::error!(?drain_timeout, "drain did not finish in time: exiting");
            std::process::exit(1);
        });
        let status = Arc::new(Status::default());
        match relay::run(settings, shutdown, status).await {
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
