//! CPU time and peak RSS of a process from /proc.

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
