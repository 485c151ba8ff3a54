//! Child processes that must never outlive the test process: Postgres, Kafka and relay children.
//!
//! Three layers, because each one alone has holes:
//! 1. Every long-lived child is spawned from ONE dedicated harness thread that never exits, with
//!    `prctl(PR_SET_PDEATHSIG, SIGKILL)` in `pre_exec`. Linux ties PDEATHSIG to the *thread* that forked
//!    the child (a test thread ends when its test does, which would kill the server), and clears it on a
//!    uid change; std's `do_exec` runs setgid/setuid before the `pre_exec` closures, so setting it there
//!    survives the switch to the unprivileged Postgres user. This covers `kill -9` of the test binary.
//! 2. A `libc::atexit` handler kills every registered child group and removes the server dirs when the
//!    test binary exits normally (also after failed tests: the libtest harness catches panics).
//! 3. At harness start, dirs under [`harness_root`] left by dead pids (`<pid>-...`) are swept.
//!
//! Each child gets its own process group, so a signal reaches the server and all its helpers (Postgres
//! backends), and "gone" can be checked for the whole group.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Where every server and relay of this machine's harness runs: `/tmp/outbox-relay-harness/<pid>-<name>-<suffix>`.
pub fn harness_root() -> PathBuf {
    std::env::var_os("OUTBOX_RELAY_HARNESS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/outbox-relay-harness"))
}

type Job = Box<dyn FnOnce() + Send>;

struct Registered {
    pgid: Arc<AtomicI32>,
}

struct Globals {
    jobs: Mutex<mpsc::Sender<Job>>,
    children: Mutex<Vec<Registered>>,
    dirs: Mutex<Vec<PathBuf>>,
}

static GLOBALS: OnceLock<Globals> = OnceLock::new();

fn globals() -> &'static Globals {
    GLOBALS.get_or_init(|| {
        sweep_stale_dirs();
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("outbox-relay-harness-spawner".into())
            .spawn(move || {
                // Lives as long as the process: the channel's sender sits in a static.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("spawn harness spawner thread");
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        Globals {
            jobs: Mutex::new(tx),
            children: Mutex::new(Vec::new()),
            dirs: Mutex::new(Vec::new()),
        }
    })
}

extern "C" fn cleanup_at_exit() {
    let Some(g) = GLOBALS.get() else { return };
    let pgids: Vec<i32> = match g.children.try_lock() {
        Ok(c) => c.iter().map(|r| r.pgid.load(Ordering::SeqCst)).collect(),
        Err(_) => return,
    };
    for &pgid in &pgids {
        if pgid > 0 {
            // SAFETY: plain signal send.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
    // Give the kernel a moment so files are no longer written while we remove them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pgids.iter().any(|&p| p > 0 && group_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(dirs) = g.dirs.try_lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Removes `<root>/<pid>-*` dirs whose pid is no longer alive (left by a test binary that was killed).
pub fn sweep_stale_dirs() {
    let root = harness_root();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Is `pid` a live (non-zombie) process?
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Creates a fresh dir `<root>/<pid>-<name>-<suffix>` (mode 0755, so an unprivileged server user can
/// traverse it) that is removed when the process exits.
pub fn new_process_dir(name: &str) -> Result<PathBuf> {
    let g = globals();
    let root = harness_root();
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    // The root is shared by every user's harness runs on this machine (tmp-like).
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
    let dir = root.join(format!(
        "{}-{}-{}",
        std::process::id(),
        name,
        crate::util::random_suffix()
    ));
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    g.dirs.lock().expect("dirs lock").push(dir.clone());
    Ok(dir)
}

/// A child spawned by [`spawn_managed`]: its own process group, killed at process exit.
#[derive(Debug)]
pub struct ManagedChild {
    pub child: Child,
    pgid: Arc<AtomicI32>,
}

impl ManagedChild {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the child's whole process group.
    pub fn signal_group(&self, sig: i32) -> Result<()> {
        send_signal(-self.pid(), sig)
    }

    /// Non-blocking: has the child (the group leader) exited? Reaps it if so.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let r = self.child.try_wait()?;
        if r.is_some() {
            self.pgid.store(0, Ordering::SeqCst);
        }
        Ok(r)
    }

    /// Waits (polling, async) until the leader exited and no live process of its group remains.
    pub async fn wait_group_gone(
        &mut self,
        deadline: Duration,
    ) -> Result<std::process::ExitStatus> {
        let pgid = self.pid();
        let start = Instant::now();
        let mut status = None;
        loop {
            if status.is_none() {
                status = self.try_wait()?;
            }
            if let Some(s) = status {
                if !group_alive(pgid) {
                    return Ok(s);
                }
            }
            if start.elapsed() > deadline {
                bail!("process group {pgid} still alive after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL to the group, then wait until it is gone.
    pub async fn kill9(&mut self) -> Result<std::process::ExitStatus> {
        let _ = self.signal_group(libc::SIGKILL);
        self.wait_group_gone(Duration::from_secs(30)).await
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if self.pgid.load(Ordering::SeqCst) > 0 {
            let _ = self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
            self.pgid.store(0, Ordering::SeqCst);
        }
    }
}

pub fn send_signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain signal send.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(())
}

/// Is any non-zombie process in process group `pgid` still alive? (Scans /proc: after the leader dies,
/// its helpers are reparented and a zombie would fool `kill(-pgid, 0)`.)
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" that closes comm: state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let state = it.next().unwrap_or("");
        let _ppid = it.next();
        let pgrp = it.next().and_then(|s| s.parse::<i32>().ok()).unwrap_or(-1);
        if pgrp == pgid && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

/// Spawns `cmd` from the harness thread, in its own process group, with PDEATHSIG=SIGKILL, and registers
/// it for the exit-time kill.
pub fn spawn_managed(mut cmd: Command) -> Result<ManagedChild> {
    let g = globals();
    let parent = std::process::id() as i32;
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Runs after std's setgid/setuid (which would clear it), right before exec.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The harness died between fork and prctl: the signal was missed, so die now.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_owned();
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    g.jobs
        .lock()
        .expect("jobs lock")
        .send(job)
        .map_err(|_| anyhow!("harness spawner thread is gone"))?;
    let child = rx
        .recv()
        .map_err(|_| anyhow!("harness spawner thread dropped the job"))?
        .with_context(|| format!("spawn {}", Path::new(&program).display()))?;
    let pgid = Arc::new(AtomicI32::new(child.id() as i32));
    g.children.lock().expect("children lock").push(Registered {
        pgid: Arc::clone(&pgid),
    });
    Ok(ManagedChild { child, pgid })
}

/// The uid/gid servers run as: the current user, or when root (initdb and postgres refuse root) the
/// system user `outbox-relay-test`, created on first use.
pub fn server_user() -> Result<Option<(u32, u32)>> {
    static USER: OnceLock<std::result::Result<Option<(u32, u32)>, String>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = "outbox-relay-test";
        let lookup = || -> Option<(u32, u32)> {
            let out = Command::new("id").arg("-u").arg(name).output().ok()?;
            let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            let out = Command::new("id").arg("-g").arg(name).output().ok()?;
            let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some((uid, gid))
        };
        if let Some(ids) = lookup() {
            return Ok(Some(ids));
        }
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                name,
            ])
            .output()
            .map_err(|e| format!("useradd: {e}"))?;
        // A parallel test binary may have created it meanwhile (exit 9: already exists).
        match lookup() {
            Some(ids) => Ok(Some(ids)),
            None => Err(format!(
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// chown -R to the server user (no-op when not root).
pub fn chown_tree(path: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    let Some((uid, gid)) = ids else { return Ok(()) };
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .context("run chown")?;
    if !status.success() {
        bail!("chown -R {} failed", path.display());
    }
    Ok(())
}

/// A command that runs as the server user (when the harness is root).
pub fn server_command(program: impl AsRef<OsStr>, ids: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
        // Drop root's supplementary groups too (std calls setgroups when uid is set and we are root).
        cmd.env("HOME", "/tmp");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PDEATHSIG must survive the uid switch and be tied to the harness thread, not the calling thread:
    /// a child spawned from a short-lived thread must outlive that thread.
    #[test]
    fn child_outlives_calling_thread() {
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            spawn_managed(cmd).expect("spawn")
        })
        .join()
        .expect("join");
        std::thread::sleep(Duration::from_millis(200));
        let mut child = child;
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "child died with its calling thread"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(child.kill9()).expect("kill9");
    }
}
