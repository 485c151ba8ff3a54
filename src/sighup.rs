//! SIGHUP: re-read the configuration file (and the environment) and apply what may change
//! while the relay runs.
//!
//! The keys that changed are sorted by [`config::reload`](crate::config::reload): if only live
//! keys changed (`log.level`, `[batch]`, `[routing]`) they are applied at once (the loop picks up
//! new batch limits and routing between two events); if any restart-only key changed, the whole
//! reload is refused, those keys are named, and the relay keeps running as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::reload::{changes, Apply};
use crate::config::Config;
use crate::relay::{LiveSettings, RelaySettings};
use crate::telemetry::{LogLevelHandle, Status};

/// Installs the SIGHUP handler: each signal runs one reload.
pub fn spawn(
    path: PathBuf,
    current: Config,
    log_level: LogLevelHandle,
    live: watch::Sender<LiveSettings>,
    status: Arc<Status>,
) -> std::io::Result<()> {
    use futures::StreamExt;
    let mut signals = signal_hook_tokio::Signals::new([signal_hook::consts::SIGHUP])?;
    let mut current = current;
    tokio::spawn(async move {
        while signals.next().await.is_some() {
            let result = reload(&path, &mut current, &log_level, &live);
            status.metrics.reload(result);
        }
    });
    Ok(())
}

/// One reload; returns the result label for the metric (`applied`, `refused`, `failed`).
pub fn reload(
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
    let changed = changes(current, &new);
    let refused: Vec<&str> = changed
        .iter()
        .filter(|c| c.apply == Apply::Restart)
        .map(|c| c.key)
        .collect();
    if !refused.is_empty() {
        tracing::error!(
            keys = %refused.join(", "),
            "configuration reload refused: {} cannot change while the relay runs (restart it to apply); the running configuration stays",
            refused.join(", ")
        );
        return "refused";
    }
    if changed.is_empty() {
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
    let applied: Vec<&str> = changed.iter().map(|c| c.key).collect();
    tracing::info!(
        keys = %applied.join(", "),
        "configuration reloaded: applied {}",
        applied.join(", ")
    );
    *current = new;
    "applied"
}
