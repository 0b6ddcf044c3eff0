//! Resident memory of a running process, from `/proc/<pid>/status`: the
//! kernel's own peak (VmHWM) and the current size (VmRSS), plus a sampler
//! that keeps the largest VmRSS it sees every 100 ms.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A `Vm*:  1234 kB` field of a status file, in bytes.
pub fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let mut words = line.split(':').nth(1)?.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

fn read_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_field(&status, field).with_context(|| format!("{path} has no {field} line"))
}

/// Peak resident set size (VmHWM) of `pid`, in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    read_field(pid, "VmHWM")
}

/// Current resident set size (VmRSS) of `pid`, in bytes.
pub fn current_rss(pid: u32) -> anyhow::Result<u64> {
    read_field(pid, "VmRSS")
}

/// Current (VmRSS, RssAnon) of `pid`, in bytes: the second is the heap
/// and stacks, without file pages mapped in.
pub fn current_rss_and_anon(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field =
        |name| status_field(&status, name).with_context(|| format!("{path} has no {name} line"));
    Ok((field("VmRSS")?, field("RssAnon")?))
}

/// Checks that `pid` runs `program` (processes started through
/// `ip netns exec` are the program itself: `ip` execs it in place).
pub fn expect_program(pid: u32, program: &str) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/comm");
    let comm = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // comm is cut to 15 bytes by the kernel.
    let expected: String = program.chars().take(15).collect();
    if comm.trim() != expected {
        bail!("pid {pid} runs {:?}, not {program}", comm.trim());
    }
    Ok(())
}

/// Peak RSS of a process known by its program name.
pub fn program_peak_rss(pid: u32, program: &str) -> anyhow::Result<u64> {
    expect_program(pid, program)?;
    peak_rss(pid)
}

/// Max and median of the peaks of one scenario's daemons.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RssFigures {
    /// Daemons measured (seed included).
    pub daemons: usize,
    pub max_bytes: u64,
    pub median_bytes: u64,
    /// The seed's own peak (it sources every byte).
    pub seed_bytes: Option<u64>,
}

impl RssFigures {
    pub fn new(peaks: &[u64], seed_bytes: Option<u64>) -> Option<RssFigures> {
        let mut sorted = peaks.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
        };
        Some(RssFigures {
            daemons: n,
            max_bytes: sorted[n - 1],
            median_bytes: median,
            seed_bytes,
        })
    }
}

/// Samples VmRSS (and RssAnon) of a process every `interval` in a thread
/// of its own until stopped, or until `limit` has passed.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    max_anon: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

/// What a sampler saw.
#[derive(Debug, Clone, Copy)]
pub struct Sampled {
    pub max_bytes: u64,
    pub max_anon_bytes: u64,
    pub samples: usize,
}

impl RssSampler {
    pub fn start(pid: u32, interval: Duration, limit: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let max_anon = Arc::new(AtomicU64::new(0));
        let rounds = (limit.as_millis() / interval.as_millis().max(1)).max(1) as usize;
        let thread = {
            let (stop, max, max_anon) = (stop.clone(), max.clone(), max_anon.clone());
            std::thread::spawn(move || {
                let mut samples = 0;
                for _ in 0..rounds {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok((rss, anon)) = current_rss_and_anon(pid) {
                        max.fetch_max(rss, Ordering::SeqCst);
                        max_anon.fetch_max(anon, Ordering::SeqCst);
                        samples += 1;
                    }
                    std::thread::sleep(interval);
                }
                samples
            })
        };
        RssSampler {
            stop,
            max,
            max_anon,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Sampled {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0);
        Sampled {
            max_bytes: self.max.load(Ordering::SeqCst),
            max_anon_bytes: self.max_anon.load(Ordering::SeqCst),
            samples,
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tdfdaemon\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t4\n";

    #[test]
    fn reads_status_fields_in_bytes() {
        assert_eq!(status_field(STATUS, "VmHWM"), Some(50 << 20));
        assert_eq!(status_field(STATUS, "VmRSS"), Some(40 << 20));
        // A field without a unit, or absent, is not a size.
        assert_eq!(status_field(STATUS, "Threads"), None);
        assert_eq!(status_field(STATUS, "VmSwap"), None);
    }

    #[test]
    fn own_process_has_a_peak_at_least_its_current_size() {
        let pid = std::process::id();
        // Current first: other test threads may grow the process between
        // the two reads, and the later peak then still covers it.
        let current = current_rss(pid).unwrap();
        let peak = peak_rss(pid).unwrap();
        assert!(peak > 0 && peak >= current);
        assert!(expect_program(pid, "no-such-program").is_err());
    }

    #[test]
    fn max_and_median_of_peaks() {
        let f = RssFigures::new(&[30, 10, 20], Some(30)).unwrap();
        assert_eq!((f.daemons, f.max_bytes, f.median_bytes), (3, 30, 20));
        let f = RssFigures::new(&[40, 10, 20, 30], None).unwrap();
        assert_eq!((f.max_bytes, f.median_bytes), (40, 25));
        assert_eq!(RssFigures::new(&[], None), None);
    }

    #[test]
    fn sampler_sees_this_process() {
        let sampler = RssSampler::start(
            std::process::id(),
            Duration::from_millis(10),
            Duration::from_secs(5),
        );
        std::thread::sleep(Duration::from_millis(50));
        let seen = sampler.finish();
        assert!(seen.samples >= 1 && seen.max_bytes > 0, "{seen:?}");
        assert!(
            seen.max_anon_bytes > 0 && seen.max_anon_bytes <= seen.max_bytes,
            "{seen:?}"
        );
    }
}
