//! The supervisor: runs sessions one after another and decides, by the kind of error that ended
//! each, whether to reconnect (and after how long) or to stop the relay with an exit code.
//!
//! | ended by | the supervisor |
//! |---|---|
//! | shutdown (drained) | returns `Ok` |
//! | `Standby` | waits about a second and tries again, forever (healthy) |
//! | `Transient`, `Fenced` | backs off exponentially (with jitter) and reconnects; gives up with exit 69 once the servers have been failing for `retry.max_elapsed_ms` |
//! | anything else | returns the error (exit 78, 70, 65 or 1) |
//!
//! The retry clock starts when the first failing attempt starts, and every blocking Kafka call of
//! an attempt is bounded by what is left of the budget, so `retry.max_elapsed_ms` holds for Kafka
//! as well as for Postgres. The memory of records the broker refused survives from one session to
//! the next: the replay dead-letters them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::session;
use super::settings::{LiveSettings, RelaySettings};
use crate::error::{Error, Kind, Result};
use crate::shutdown::Shutdown;
use crate::sink::Refusals;
use crate::telemetry::Status;

/// Longest wait of one blocking Kafka call in an attempt.
const MAX_CALL: Duration = Duration::from_secs(30);

/// Runs sessions until shutdown or an error that stops the relay. Each new value of `live` (a
/// SIGHUP reload) applies to the running loop and to every later session.
pub async fn run(
    settings: RelaySettings,
    shutdown: Shutdown,
    status: Arc<Status>,
    mut live: watch::Receiver<LiveSettings>,
) -> Result<()> {
    let retry = settings.retry;
    let mut backoff = retry.initial_backoff;
    let mut failing_since: Option<Instant> = None;
    let mut standing_by = false;
    let mut refusals = Refusals::default();
    loop {
        if shutdown.is_requested() {
            return Ok(());
        }
        // Connecting, standing by and backing off are healthy states: keep the watchdog fed.
        status.tick();
        let attempt = Instant::now();
        let left = match failing_since {
            Some(since) => retry.max_elapsed.saturating_sub(since.elapsed()),
            None => retry.max_elapsed,
        };
        let end = session::run(
            &settings,
            &shutdown,
            &status,
            refusals,
            &mut live,
            left.min(MAX_CALL),
        )
        .await;
        refusals = end.refusals;
        status.set_ready(false);
        let err = match end.result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        status.session_error(&err);
        if end.streamed {
            failing_since = None;
            backoff = retry.initial_backoff;
        }
        match err.kind() {
            Kind::Standby => {
                status.set_standby(&settings.source.slot);
                if !standing_by {
                    tracing::info!(slot = %settings.source.slot, "{}", err.report());
                    standing_by = true;
                }
                failing_since = None;
                backoff = retry.initial_backoff.min(Duration::from_secs(1));
            }
            Kind::Transient | Kind::Fenced => {
                standing_by = false;
                let since = *failing_since.get_or_insert(attempt);
                if since.elapsed() >= retry.max_elapsed {
                    return Err(Error::transient(format!(
                        "giving up after {:.1}s of failures (retry.max_elapsed_ms = {}): {}",
                        since.elapsed().as_secs_f64(),
                        retry.max_elapsed.as_millis(),
                        err.report()
                    )));
                }
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "session ended: {}",
                    err.report()
                );
                status.errors_transient.fetch_add(1, Ordering::Relaxed);
            }
            _ => return Err(err),
        }
        let pause = match failing_since {
            // Never sleep past the budget: the next attempt decides.
            Some(since) => jitter(backoff).min(
                retry
                    .max_elapsed
                    .saturating_sub(since.elapsed())
                    .max(Duration::from_millis(10)),
            ),
            None => jitter(backoff),
        };
        tokio::select! {
            _ = shutdown.requested() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        if matches!(err.kind(), Kind::Transient | Kind::Fenced) {
            backoff = (backoff * 2).min(retry.max_backoff);
        }
    }
}

/// 75% .. 125% of the pause, so a fleet of relays does not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(
                j >= Duration::from_millis(750) && j <= Duration::from_millis(1250),
                "{j:?}"
            );
        }
    }
}
