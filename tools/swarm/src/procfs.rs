//! What `swarm run` reads from /proc about other processes (the servers, Redis, its own
//! workers) and about the kernel: CPU time (utime + stime, all threads), VmRSS, and the
//! `Slab:` line of /proc/meminfo. The parsers are pure and tested; the readers return
//! `None` when a process is gone or a file is unreadable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// CPU time of a process in clock ticks (utime + stime) from the text of /proc/PID/stat.
/// The command name (field 2) may hold spaces and parentheses: fields are counted after
/// the last ')'.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state(3) ppid(4) ... utime(14) stime(15) => indexes 11 and 12 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value in kB of a `Key:   123 kB` line (VmRSS in /proc/PID/status, Slab in
/// /proc/meminfo).
pub fn parse_kb_line(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    parse_kb_line(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS",
    )
}

pub fn slab_kb() -> Option<u64> {
    parse_kb_line(&std::fs::read_to_string("/proc/meminfo").ok()?, "Slab")
}

pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// "123,456" -> [123, 456]; empty -> [].
pub fn parse_pids(spec: &str) -> Result<Vec<u32>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("pid {s:?}: must be a positive whole number"))
        })
        .collect()
}

/// One look at a set of processes and the kernel.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub t_unix_us: u64,
    /// Sum of utime + stime over the processes still there, in ticks.
    pub cpu_ticks: u64,
    /// Sum of VmRSS, in kB.
    pub rss_kb: u64,
    /// Processes that were readable.
    pub alive: usize,
    pub slab_kb: u64,
}

pub fn sample(pids: &[u32]) -> Sample {
    let mut s = Sample {
        t_unix_us: crate::net::now_unix_us(),
        slab_kb: slab_kb().unwrap_or(0),
        ..Sample::default()
    };
    for &pid in pids {
        if let (Some(c), Some(r)) = (cpu_ticks(pid), rss_kb(pid)) {
            s.cpu_ticks += c;
            s.rss_kb += r;
            s.alive += 1;
        }
    }
    s
}

/// Samples `pids` every `every` on its own thread until stopped; the series is bounded
/// by the caller's run time (one small row per sample).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<Vec<Sample>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pids: Vec<u32>, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, series) = (Arc::clone(&stop), Arc::clone(&series));
            std::thread::Builder::new()
                .name("swarm-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let s = sample(&pids);
                        series.lock().expect("sampler lock").push(s);
                        std::thread::sleep(every);
                    }
                })
                .ok()
        };
        Sampler {
            stop,
            series,
            handle,
        }
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.series.lock().expect("sampler lock"))
    }
}

/// CPU ticks between the last sample at or before `from_us` and the first at or after
/// `to_us` (so the window is never shorter than asked). `None` if the series does not
/// cover it.
pub fn ticks_between(series: &[Sample], from_us: u64, to_us: u64) -> Option<u64> {
    let a = series.iter().rev().find(|s| s.t_unix_us <= from_us)?;
    let b = series.iter().find(|s| s.t_unix_us >= to_us)?;
    Some(b.cpu_ticks.saturating_sub(a.cpu_ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_odd_names() {
        let stat = "4242 (volley (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0 123 456 789";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (a) S 1 2"), None);
    }

    #[test]
    fn kb_lines() {
        let status = "Name:\tvolley\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_kb_line(status, "VmRSS"), Some(12345));
        assert_eq!(
            parse_kb_line("Slab:             811148 kB\n", "Slab"),
            Some(811_148)
        );
        assert_eq!(parse_kb_line(status, "Slab"), None);
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("1, 22,333"), Ok(vec![1, 22, 333]));
        assert_eq!(parse_pids(""), Ok(vec![]));
        assert!(parse_pids("1,x").is_err());
        assert!(parse_pids("0").is_err());
    }

    #[test]
    fn windows_widen_to_samples() {
        let s = |t, c| Sample {
            t_unix_us: t,
            cpu_ticks: c,
            ..Sample::default()
        };
        let series = vec![s(100, 1), s(200, 5), s(300, 9), s(400, 20)];
        assert_eq!(ticks_between(&series, 250, 310), Some(15));
        assert_eq!(ticks_between(&series, 200, 300), Some(4));
        assert_eq!(ticks_between(&series, 50, 300), None);
        assert_eq!(ticks_between(&series, 100, 500), None);
    }

    #[test]
    fn sample_reads_this_process() {
        let me = std::process::id();
        let s = sample(&[me]);
        assert_eq!(s.alive, 1);
        assert!(s.rss_kb > 0);
    }
}
