//! Options and sizes: the command line (`--quick`, `--no-debezium`, the `--*-only` probes,
//! `--out`, `--relay-bin`) and the sizes of a quick or a full run.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use outbox_relay_dev::util::repo_root;

/// The probes: one section without the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// The Kafka transaction floor (section 0).
    Floor,
    /// The relay's steady state (section 4), with a per-second latency timeline.
    Steady,
    /// The backlog drains of the relay (streaming) beside the decoding limit (section 1, no
    /// Debezium, no catch-up).
    Drain,
    /// The backlog drains of the relay streaming and catching up beside the decoding limit
    /// (section 1, no Debezium).
    CatchUp,
    /// Restarts of the relay: spawn to streaming and its phases (section 2).
    Startup,
    /// One Postgres transaction of 300k (and, full, 1M) rows: peak RSS (section 7).
    LargeTxn,
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub debezium: bool,
    /// One section alone, for quick before/after checks.
    pub only: Option<Only>,
    pub out: PathBuf,
    pub relay_bin: PathBuf,
    pub runs: usize,
    pub rows_batched: i64,
    pub rows_single: i64,
    pub steady_rate: u64,
    pub steady_secs: u64,
    pub scaling: Vec<(i64, usize)>,
}

impl Opts {
    pub fn parse() -> Result<Opts> {
        let mut quick = false;
        let mut debezium = true;
        let mut only = None;
        let mut out = None;
        let mut relay_bin = std::env::var_os("OUTBOX_RELAY_BIN").map(PathBuf::from);
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--no-debezium" => debezium = false,
                "--floor-only" => only = Some(Only::Floor),
                "--steady-only" => only = Some(Only::Steady),
                "--drain-only" => only = Some(Only::Drain),
                "--catchup-only" => only = Some(Only::CatchUp),
                "--startup-only" => only = Some(Only::Startup),
                "--large-txn-only" => only = Some(Only::LargeTxn),
                "--out" => out = Some(PathBuf::from(args.next().context("--out <file>")?)),
                "--relay-bin" => {
                    relay_bin = Some(PathBuf::from(args.next().context("--relay-bin <path>")?))
                }
                "-h" | "--help" => {
                    println!(
                        "usage: outbox-relay-bench [--quick] [--no-debezium] [--floor-only] [--steady-only] [--drain-only] [--catchup-only] [--startup-only] [--large-txn-only] [--out results.json] [--relay-bin path]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        let relay_bin =
            relay_bin.unwrap_or_else(|| repo_root().join("target/release/outbox-relay"));
        if !relay_bin.exists() {
            bail!(
                "relay binary {} not found: cargo build --release --bin outbox-relay (or --relay-bin)",
                relay_bin.display()
            );
        }
        let out = out.unwrap_or_else(|| repo_root().join("target/bench/results.json"));
        Ok(if quick {
            Opts {
                quick,
                debezium,
                only,
                out,
                relay_bin,
                runs: 1,
                rows_batched: 100_000,
                rows_single: 20_000,
                steady_rate: 2_000,
                steady_secs: 30,
                scaling: vec![(20_000, 1), (100_000, 1), (300_000, 1)],
            }
        } else {
            Opts {
                quick,
                debezium,
                only,
                out,
                relay_bin,
                runs: 3,
                rows_batched: 1_000_000,
                rows_single: 200_000,
                steady_rate: 2_000,
                steady_secs: 60,
                // 1M comes from the 100-row drain runs; 3M once (writing it takes a minute).
                scaling: vec![(100_000, 3), (3_000_000, 1)],
            }
        })
    }
}
