//! systemd integration (Type=notify), through the `sd-notify` crate: `READY=1` once the pipeline
//! streams, `STATUS=` while standing by, `STOPPING=1` when draining, and `WATCHDOG=1` only while the
//! pipeline's own loop keeps ticking ([`super::Status::tick`]).
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//!
//! ```text
//!  Pipeline::run turn / session loop ──tick──> Status.last_tick
//!  watchdog task, every WatchdogSec/4: last tick younger than WatchdogSec? ──yes──> WATCHDOG=1
//!                                                                          └─no──> silence: systemd
//!                                                                                  kills and restarts
//! ```

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::Status;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1`: slot held, producer initialised, checkpoint read.
pub fn ready() {
    send(&[
        NotifyState::Ready,
        NotifyState::Status("streaming: slot held, producer initialised, checkpoint read"),
    ]);
}

/// `STOPPING=1`: draining after SIGTERM.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: committing the open Kafka transaction"),
    ]);
}

/// `STATUS=<text>`, shown by `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// `WatchdogSec=` as systemd passes it. Like libsystemd's `sd_watchdog_enabled`, a missing
/// `$WATCHDOG_PID` means "this process" (the crate insists on it, so that case is handled here).
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        return Some(Duration::from_micros(usec));
    }
    if std::env::var_os("WATCHDOG_PID").is_some() {
        return None; // meant for another process
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// When systemd asked for a watchdog (`WatchdogSec=`, seen as `$WATCHDOG_USEC`), spawns the task
/// that forwards fresh ticks as `WATCHDOG=1`. A loop that stopped turning for longer than the
/// watchdog interval is reported once in the log and no longer vouched for.
pub fn spawn_watchdog(status: Arc<Status>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tracing::info!(
        watchdog_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            every.tick().await;
            let since = status.since_tick();
            if since < interval {
                if stalled {
                    tracing::info!("pipeline turns again: feeding the systemd watchdog");
                    stalled = false;
                }
                send(&[NotifyState::Watchdog]);
            } else if !stalled {
                tracing::error!(
                    stalled_ms = since.as_millis() as u64,
                    "the pipeline loop has not turned within the watchdog interval: no longer feeding the systemd watchdog"
                );
                stalled = true;
            }
        }
    });
}
