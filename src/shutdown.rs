//! Shutdown, passed in rather than global.
//!
//! The first SIGTERM or SIGINT asks the pipeline to drain: stop reading, commit the open Kafka
//! transaction, acknowledge, exit 0. A second signal exits at once. That is still safe: nothing is
//! acknowledged to Postgres before its Kafka commit, so an abrupt exit only means the next start
//! re-reads and skips what the checkpoint already covers.
//!
//! [`Shutdown`] is a cloneable token; stages await [`Shutdown::requested`] in their `select!`.
//! Tests and embedders trigger it with [`Shutdown::trigger`] instead of signals.

use tokio::sync::watch;

/// A cloneable shutdown token.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A token that has not been triggered.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    /// Asks every holder to drain.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether a drain was asked for.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once a drain is asked for (at once if it already was).
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which cannot happen while `self` holds one.
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Installs SIGTERM/SIGINT handlers (signal-hook): the first signal triggers this token, the
    /// second exits the process at once with code 130.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use futures::StreamExt;
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
        let token = self.clone();
        tokio::spawn(async move {
            let mut seen = 0u32;
            while let Some(signal) = signals.next().await {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "shutdown requested: draining (send again to exit now)"
                    );
                    token.trigger();
                } else {
                    tracing::warn!(signal, "second signal: exiting now without draining");
                    std::process::exit(130);
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_requested());
        a.trigger();
        b.requested().await;
        assert!(b.is_requested());
    }
}
