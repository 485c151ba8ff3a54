//! Start-up: spawn to streaming, and what each phase of it costs (issue 16). Every drain figure,
//! restart and takeover pays it.
//!
//! The relay logs one line when its loop starts, `start-up done: streaming`, with `start_ms` (its
//! session's start-up) and `phases` (`name=<ms>` each, in order). This probe restarts a relay on
//! an existing slot and checkpoint, as a restart or a takeover does, and times spawn to that line
//! from outside (the log file is polled every 2 ms).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use outbox_relay_dev::RelayProcess;

use crate::helpers::{create_relay_slot, drop_env, log, new_env, stop_relay};
use crate::opts::Opts;
use crate::report::Report;

/// The line the relay logs when its loop starts.
pub const STREAMING: &str = "start-up done: streaming";
/// The same line when the session starts by catching up through the SQL interface.
pub const CATCHING_UP: &str = "start-up done: catching up";
/// A log filter that keeps the relay quiet except for its start-up line.
pub const LOG_FILTER: &str = "warn,outbox_relay::relay::session=info";

/// What one start-up took.
#[derive(Debug, Default)]
pub struct Startup {
    /// Spawn to the streaming line, measured outside the relay.
    pub spawn_to_streaming: Duration,
    /// The session's start-up as the relay measured it (`start_ms`).
    pub session_ms: f64,
    /// Each phase, in order, as the relay measured it.
    pub phases: Vec<(String, f64)>,
}

/// Reads the streaming line of `logs`, if it is there.
pub fn parse(logs: &str) -> Option<(f64, Vec<(String, f64)>)> {
    parse_line(logs, STREAMING)
}

/// Reads the start-up line of `logs` that holds `marker` ([`STREAMING`] or [`CATCHING_UP`]).
pub fn parse_line(logs: &str, marker: &str) -> Option<(f64, Vec<(String, f64)>)> {
    let line = logs.lines().find(|l| l.contains(marker))?;
    let field = |name: &str| -> Option<&str> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        Some(&line[at..])
    };
    let start_ms: f64 = field("start_ms")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let phases = field("phases")?
        .trim_start_matches('"')
        .split(['"', ' '])
        .take_while(|p| p.contains("ms"))
        .filter_map(|p| {
            let (name, ms) = p.split_once('=')?;
            Some((name.to_string(), ms.strip_suffix("ms")?.parse().ok()?))
        })
        .collect();
    Some((start_ms, phases))
}

/// Waits (polling every 2 ms) for the streaming line of a relay spawned at `t0`.
pub async fn wait_streaming(relay: &mut RelayProcess, t0: Instant) -> Result<Startup> {
    loop {
        let logs = relay.logs();
        if let Some((session_ms, phases)) = parse(&logs) {
            return Ok(Startup {
                spawn_to_streaming: t0.elapsed(),
                session_ms,
                phases,
            });
        }
        if !relay.is_running() {
            bail!("the relay exited before streaming; logs:\n{logs}");
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the relay did not stream within 120 s; logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `--startup-only`: restarts of a relay on its existing slot and checkpoint.
pub async fn startup_run(opts: &Opts, r: &mut Report) -> Result<()> {
    let s = "2. start-up (restart on an existing slot and checkpoint)";
    let env = new_env().await?;
    create_relay_slot(opts, &env).await?;
    let mut cfg = env.cfg.clone();
    cfg.set("log.level", LOG_FILTER);
    let runs = if opts.quick { 5 } else { 9 };
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for i in 0..runs {
        let t0 = Instant::now();
        let mut relay = RelayProcess::spawn(&opts.relay_bin, &cfg.to_toml(), &[])?;
        let st = wait_streaming(&mut relay, t0).await?;
        let ms = st.spawn_to_streaming.as_secs_f64() * 1e3;
        log(format!(
            "start-up {}/{runs}: spawn to streaming {ms:.0} ms (session {:.0} ms: {})",
            i + 1,
            st.session_ms,
            st.phases
                .iter()
                .map(|(n, v)| format!("{n} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        r.add(s, "spawn to streaming", "ms", ms);
        r.add(
            s,
            "session start-up (relay's own clock)",
            "ms",
            st.session_ms,
        );
        for (name, v) in st.phases {
            if !order.contains(&name) {
                order.push(name.clone());
            }
            phases.entry(name).or_default().push(v);
        }
        stop_relay(relay).await?;
    }
    for name in order {
        for v in &phases[&name] {
            r.add(s, &format!("phase {name}"), "ms", *v);
        }
    }
    drop_env(env).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_streaming_line() {
        let line = "2026-12-01T10:00:00Z  INFO outbox_relay::relay::session: start-up done: streaming start_ms=412 phases=sql_connect=12ms sql_checks=3ms init_transactions=250ms";
        let (ms, phases) = parse(line).expect("parsed");
        assert_eq!(ms, 412.0);
        assert_eq!(phases.len(), 3);
        assert_eq!(phases[2], ("init_transactions".to_string(), 250.0));
    }

    #[test]
    fn parses_the_catching_up_line() {
        let line = "2026-12-01T10:00:00Z  INFO outbox_relay::relay::session: start-up done: catching up start_ms=95 phases=sql_connect=12ms catchup_check=1ms reader_open=20ms";
        assert!(parse(line).is_none());
        let (ms, phases) = parse_line(line, CATCHING_UP).expect("parsed");
        assert_eq!(ms, 95.0);
        assert_eq!(phases[2], ("reader_open".to_string(), 20.0));
    }
}
