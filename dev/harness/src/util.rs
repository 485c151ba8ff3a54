//! Small helpers every part of the harness and every test needs: free ports, polling with a deadline
//! (tests never sleep a fixed time to wait for readiness), random names, the repository root, and the
//! process-wide lock that keeps disruptive tests (server kill/restart) from overlapping normal ones.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rand::Rng;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `f` every 50-250 ms until it returns `Ok(Some(value))`, and fails once `deadline` has passed,
/// naming `what` and the last error seen. `Ok(None)` and `Err(_)` both mean "not yet".
pub async fn wait_until<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut interval = Duration::from_millis(50);
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        // One attempt may hang (a query on a blackholed connection): bound it by what is left.
        let left = deadline
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(10));
        match tokio::time::timeout(left, f()).await {
            Ok(Ok(Some(v))) => return Ok(v),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some(anyhow!("an attempt was still pending at the deadline")),
        }
        if start.elapsed() >= deadline {
            return Err(match last_err {
                Some(e) => {
                    anyhow!("timed out after {deadline:?} waiting for {what}; last error: {e:#}")
                }
                None => anyhow!("timed out after {deadline:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// Blocking twin of [`wait_until`], for code that runs outside any runtime (server start-up in `shared()`).
pub fn wait_until_blocking<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(50);
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= deadline {
            return Err(match last_err {
                Some(e) => {
                    anyhow!("timed out after {deadline:?} waiting for {what}; last error: {e:#}")
                }
                None => anyhow!("timed out after {deadline:?} waiting for {what}"),
            });
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// 8 lowercase hex characters, for names that must not collide between parallel tests.
pub fn random_suffix() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

/// The root of the outbox-relay repository (this crate lives in `<root>/dev/harness`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// Runs a future to completion on a fresh current-thread runtime in a helper thread, so blocking code
/// (e.g. `Postgres::shared()`) can use async clients even when its caller is inside another runtime.
pub fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("build helper runtime")?;
            Ok(rt.block_on(fut))
        })
        .join()
        .map_err(|_| anyhow!("helper thread panicked"))?
    })
}

/// Disruptive tests (kill/restart/pause of a shared server) take this exclusively; every other test that
/// uses the shared servers takes it shared, so the two kinds never overlap. tokio's RwLock belongs to no
/// runtime, so one static serves the per-test runtimes.
static SERVERS_LOCK: RwLock<()> = RwLock::const_new(());

/// Guard for a test that disturbs the shared servers: no other test holding [`shared_servers`] runs meanwhile.
pub async fn exclusive_servers() -> RwLockWriteGuard<'static, ()> {
    SERVERS_LOCK.write().await
}

/// Guard for a normal test: runs alongside other normal tests, never during a disruptive one.
pub async fn shared_servers() -> RwLockReadGuard<'static, ()> {
    SERVERS_LOCK.read().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_is_8_hex() {
        let s = random_suffix();
        assert_eq!(s.len(), 8);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
