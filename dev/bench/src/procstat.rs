//! CPU time and peak RSS of a process from /proc, and the CPU time of the whole Postgres cluster.

use anyhow::{Context, Result};

/// utime + stime and VmHWM of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// CPU seconds (user + system) of every thread so far.
    pub cpu: f64,
    /// Peak resident set size (VmHWM), in kB.
    pub hwm_kb: u64,
}

impl ProcStat {
    pub fn read(pid: i32) -> Result<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .context("malformed /proc/<pid>/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            Ok(f.get(i).context("short /proc/<pid>/stat")?.parse::<u64>()? as f64)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = (ticks(11)? + ticks(12)?) / hz;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        let hwm_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(ProcStat { cpu, hwm_kb })
    }

    pub fn cpu_secs(&self) -> f64 {
        self.cpu
    }

    pub fn hwm_mb(&self) -> f64 {
        self.hwm_kb as f64 / 1024.0
    }

    /// Resets the peak RSS (VmHWM) of `pid` to its current RSS (Linux >= 4.0).
    pub fn reset_hwm(pid: i32) -> Result<()> {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .with_context(|| format!("reset VmHWM of {pid}"))
    }
}

/// CPU seconds (user + system) the harness's Postgres cluster used so far: the postmaster, every
/// live child (backends, walsenders, background workers) and the children it already reaped. The
/// difference of two samples is the server's share of what ran between them. `None` when the
/// postmaster is not this process's child or /proc cannot be read.
pub fn postgres_cpu_secs() -> Option<f64> {
    tree_cpu_secs(outbox_relay_dev::Postgres::shared().pid()?)
}

/// The same for the harness's Kafka broker (its JVM and any child).
pub fn broker_cpu_secs() -> Option<f64> {
    tree_cpu_secs(outbox_relay_dev::Kafka::shared().pid()?)
}

/// CPU seconds of `pid`, its live children and the children it reaped (its cutime/cstime), so a
/// child that exits between two samples still counts once. A child reaped while /proc is being
/// scanned would count in neither place: the scan is repeated until the parent's reaped time did
/// not move during it.
pub fn tree_cpu_secs(pid: i32) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // ppid, then utime + stime and cutime + cstime (fields 4 and 14-17; 2 and 12-15 after the
    // command name), in ticks.
    let times = |pid: &str| -> Option<(i32, u64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i)?.parse::<u64>().ok();
        Some((f.get(1)?.parse().ok()?, n(11)? + n(12)?, n(13)? + n(14)?))
    };
    let me = pid.to_string();
    for _ in 0..20 {
        let (_, own, reaped) = times(&me)?;
        let mut children = 0u64;
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = e.file_name();
            let Some(child) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((ppid, cpu, their_reaped)) = times(child) {
                if ppid == pid {
                    children += cpu + their_reaped;
                }
            }
        }
        let (_, own_after, reaped_after) = times(&me)?;
        if reaped_after == reaped {
            return Some((own_after.max(own) + reaped + children) as f64 / hz);
        }
    }
    None
}
