//! Scenario e, a rollout in waves: 20 % of the hosts at a time (at least
//! one), each wave starting when the previous one has finished, as a
//! Deployment rolls. Each wave is judged by its slowest host against T*.

use serde::{Deserialize, Serialize};

use super::report::HostTime;

/// Hosts per wave: 20 % of `hosts`, rounded up, at least one.
pub fn wave_size(hosts: usize) -> usize {
    hosts.div_ceil(5).max(1)
}

/// Goal for every wave after the first, in T*.
pub const LATER_WAVE_GOAL: f64 = 1.1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaveReport {
    /// 1-based.
    pub wave: usize,
    pub hosts: Vec<String>,
    /// Slowest host of the wave, from the wave's own start.
    pub max_s: f64,
    pub max_over_t_star: f64,
    pub failed_pulls: usize,
}

impl WaveReport {
    pub fn new(wave: usize, times: &[HostTime], t_star_s: f64) -> WaveReport {
        let max_s = times.iter().map(|h| h.seconds).fold(0.0, f64::max);
        WaveReport {
            wave,
            hosts: times.iter().map(|h| h.host.clone()).collect(),
            max_s,
            max_over_t_star: max_s / t_star_s,
            failed_pulls: times.iter().filter(|h| !h.ok).count(),
        }
    }

    /// Whether the wave meets its goal (the first wave has none).
    pub fn meets_goal(&self) -> Option<bool> {
        (self.wave > 1).then_some(self.failed_pulls == 0 && self.max_over_t_star <= LATER_WAVE_GOAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, seconds: f64, ok: bool) -> HostTime {
        HostTime {
            host: name.into(),
            seconds,
            ok,
            corrupt_blobs: 0,
            retries: 0,
            error: None,
        }
    }

    #[test]
    fn a_fifth_of_the_hosts_rounded_up() {
        assert_eq!(wave_size(1), 1);
        assert_eq!(wave_size(4), 1);
        assert_eq!(wave_size(5), 1);
        assert_eq!(wave_size(8), 2);
        assert_eq!(wave_size(10), 2);
        assert_eq!(wave_size(11), 3);
        assert_eq!(wave_size(0), 1);
    }

    #[test]
    fn slowest_host_against_t_star() {
        let w = WaveReport::new(2, &[host("n3", 20.0, true), host("n4", 24.0, true)], 20.0);
        assert_eq!(w.hosts, ["n3", "n4"]);
        assert_eq!((w.max_s, w.max_over_t_star), (24.0, 1.2));
        assert_eq!(w.meets_goal(), Some(false));
        let w = WaveReport::new(3, &[host("n5", 21.0, true)], 20.0);
        assert_eq!(w.meets_goal(), Some(true));
        let w = WaveReport::new(3, &[host("n5", 1.0, false)], 20.0);
        assert_eq!(w.meets_goal(), Some(false));
        assert_eq!(WaveReport::new(1, &[], 20.0).meets_goal(), None);
    }
}
