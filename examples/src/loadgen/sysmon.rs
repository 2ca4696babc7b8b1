//! A process's CPU time and resident memory, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux). Used for the server (by `--server-pid`) and for the load
//! generator itself, so a report shows how much of the machine each side took.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat`'s `utime`/`stime` (`USER_HZ`, 100 on every
/// Linux architecture that matters here).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// User plus system CPU time so far, seconds.
    pub cpu_secs: f64,
}

/// Which process: a PID, or this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proc {
    /// Another process (the server).
    Pid(u32),
    /// The load generator itself.
    SelfProc,
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}"),
            Proc::SelfProc => "/proc/self".to_owned(),
        }
    }

    /// Reads the process's RSS and CPU time; `None` if it is gone or `/proc` is unreadable.
    pub fn sample(self) -> Option<ProcSample> {
        let dir = self.dir();
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses; fields after the last ')'
        // are plain. utime and stime are fields 14 and 15, i.e. the 12th and 13th after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(ProcSample {
            rss_kib,
            cpu_secs: (utime + stime) as f64 / TICKS_PER_SEC,
        })
    }
}

/// RSS growth from `before` to `after` per one of `n` things (connections), in bytes; `None`
/// without both samples or when `n` is 0.
pub fn rss_growth_per(
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    n: u64,
) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => {
            Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / n as f64)
        }
        _ => None,
    }
}

/// CPU seconds used from `before` to `after`; `None` without both samples.
pub fn cpu_between(before: Option<ProcSample>, after: Option<ProcSample>) -> Option<f64> {
    Some(after?.cpu_secs - before?.cpu_secs)
}

/// What a process used over a measured interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Wall-clock length of the interval, seconds.
    pub wall_secs: f64,
    /// CPU time used in it, seconds.
    pub cpu_secs: f64,
    /// Average cores busy (`cpu_secs / wall_secs`).
    pub cores: f64,
    /// RSS at the start, KiB.
    pub rss_start_kib: u64,
    /// RSS at the end, KiB.
    pub rss_end_kib: u64,
    /// Highest RSS sampled (every 250 ms), KiB.
    pub rss_max_kib: u64,
}

/// Samples a process from `start` until `finish`, keeping the highest RSS.
pub struct Monitor {
    proc: Proc,
    started: Instant,
    first: ProcSample,
    max_rss: Arc<Mutex<u64>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Starts measuring; `None` if the process cannot be read.
    pub fn start(proc: Proc) -> Option<Monitor> {
        let first = proc.sample()?;
        let max_rss = Arc::new(Mutex::new(first.rss_kib));
        let max = max_rss.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(s) = proc.sample() else { return };
                if let Ok(mut m) = max.lock() {
                    *m = (*m).max(s.rss_kib);
                }
            }
        });
        Some(Monitor {
            proc,
            started: Instant::now(),
            first,
            max_rss,
            sampler,
        })
    }

    /// Stops and returns what the process used since `start`.
    pub fn finish(self) -> Usage {
        self.sampler.abort();
        let wall = self.started.elapsed().as_secs_f64();
        let last = self.proc.sample().unwrap_or(self.first);
        let max = self.max_rss.lock().map(|m| *m).unwrap_or(0);
        let cpu = (last.cpu_secs - self.first.cpu_secs).max(0.0);
        Usage {
            wall_secs: wall,
            cpu_secs: cpu,
            cores: if wall > 0.0 { cpu / wall } else { 0.0 },
            rss_start_kib: self.first.rss_kib,
            rss_end_kib: last.rss_kib,
            rss_max_kib: max.max(last.rss_kib),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = Proc::SelfProc.sample().expect("/proc/self readable");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_secs >= 0.0);
        assert!(Proc::Pid(u32::MAX).sample().is_none());
    }
}
