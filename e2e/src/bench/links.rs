//! Every bench host's link traffic over a scenario, read from the bridge
//! side of its veth every quarter second (what the bridge sends on a host's
//! veth is what the host receives). It shows where a scenario leaves a link
//! idle: the origin's uplink is the one every byte must cross once, so any
//! gap in it is time lost against T*.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub const INTERVAL: Duration = Duration::from_millis(250);
/// Samples kept at most (an hour at 4 per second): bounds a runaway run.
const MAX_SAMPLES: usize = 4 * 3600;

/// Bytes each veth carried since its creation, by veth name.
type Counters = HashMap<String, Counter>;

#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    /// Bridge side: toward the host.
    to_host: u64,
    /// Bridge side: from the host.
    from_host: u64,
}

/// One host's link over the scenario, in Mbit/s per interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkSeries {
    pub host: String,
    pub received_mbit: Vec<f64>,
    pub sent_mbit: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkTimeline {
    /// Seconds between samples; sample `i` covers about `[i, i + 1) *
    /// interval_s` (each rate is over the real time between two reads)
    /// from the scenario's start.
    pub interval_s: f64,
    pub hosts: Vec<LinkSeries>,
}

/// How busy one direction of a link was while it carried anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Busy {
    /// Start of the first interval with traffic, seconds.
    pub first_s: f64,
    /// End of the last interval with traffic, seconds.
    pub last_s: f64,
    /// Mean rate between them, as a share of the link rate.
    pub share: f64,
}

/// Rates under this (Mbit/s) are control traffic, not a transfer.
const IDLE_MBIT: f64 = 1.0;

/// MiB carried by a series of Mbit/s rates over `interval_s` each.
pub fn total_mib(series: &[f64], interval_s: f64) -> f64 {
    series.iter().sum::<f64>() * interval_s * 1e6 / 8.0 / (1024.0 * 1024.0)
}

/// The busy span of a series and its mean use of `link_mbit` within it.
pub fn busy(series: &[f64], interval_s: f64, link_mbit: f64) -> Option<Busy> {
    let first = series.iter().position(|&r| r > IDLE_MBIT)?;
    let last = series.iter().rposition(|&r| r > IDLE_MBIT)?;
    let span = &series[first..=last];
    let mean = span.iter().sum::<f64>() / span.len() as f64;
    Some(Busy {
        first_s: first as f64 * interval_s,
        last_s: (last + 1) as f64 * interval_s,
        share: mean / link_mbit.max(1e-9),
    })
}

impl LinkTimeline {
    pub fn host(&self, name: &str) -> Option<&LinkSeries> {
        self.hosts.iter().find(|h| h.host == name)
    }

    /// One line per host: when its link carried traffic and how full it
    /// was, the origin's uplink first.
    pub fn summary(&self, link_mbit: f64) -> String {
        let mut out = String::new();
        let mut hosts: Vec<&LinkSeries> = self.hosts.iter().collect();
        hosts.sort_by_key(|h| h.host != "origin");
        for h in hosts {
            let line = |what: &str, series: &[f64]| match busy(series, self.interval_s, link_mbit) {
                Some(b) => format!(
                    "{what} {:.0} MiB, {:.2}-{:.2} s at {:.0}%",
                    total_mib(series, self.interval_s),
                    b.first_s,
                    b.last_s,
                    b.share * 100.0
                ),
                None => format!("{what} idle"),
            };
            out.push_str(&format!(
                "    {:<7} {}; {}\n",
                h.host,
                line("received", &h.received_mbit),
                line("sent", &h.sent_mbit)
            ));
        }
        out
    }
}

/// Samples the counters until stopped.
pub struct LinkSampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<LinkTimeline>>,
}

impl LinkSampler {
    /// `links`: (host name, its veth's name in `bridge_ns`).
    pub fn start(bridge_ns: String, links: Vec<(String, String)>) -> LinkSampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            // Each sample with when it was read: rates use the real gap
            // between reads, not the nominal interval.
            let started = Instant::now();
            let read = |bridge_ns: String| async move {
                let counters = read_counters(&bridge_ns).await?;
                anyhow::Ok((started.elapsed().as_secs_f64(), counters))
            };
            let mut samples = vec![read(bridge_ns.clone()).await?];
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while samples.len() < MAX_SAMPLES {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => samples.push(read(bridge_ns.clone()).await?),
                }
            }
            samples.push(read(bridge_ns.clone()).await?);
            Ok(timeline(&samples, &links))
        });
        LinkSampler { stop, task }
    }

    pub async fn finish(self) -> anyhow::Result<LinkTimeline> {
        let _ = self.stop.send(());
        self.task.await.context("link sampler panicked")?
    }
}

/// Rates between consecutive `(seconds, counters)` samples.
fn timeline(samples: &[(f64, Counters)], links: &[(String, String)]) -> LinkTimeline {
    let interval_s = INTERVAL.as_secs_f64();
    let rate = |bytes: u64, secs: f64| bytes as f64 * 8.0 / 1e6 / secs.max(1e-3);
    let hosts = links
        .iter()
        .map(|(host, veth)| {
            let mut series = LinkSeries {
                host: host.clone(),
                received_mbit: Vec::new(),
                sent_mbit: Vec::new(),
            };
            for pair in samples.windows(2) {
                let ((t0, c0), (t1, c1)) = (&pair[0], &pair[1]);
                let secs = t1 - t0;
                let before = c0.get(veth).copied().unwrap_or_default();
                let after = c1.get(veth).copied().unwrap_or_default();
                series
                    .received_mbit
                    .push(rate(after.to_host.saturating_sub(before.to_host), secs));
                series
                    .sent_mbit
                    .push(rate(after.from_host.saturating_sub(before.from_host), secs));
            }
            series
        })
        .collect();
    LinkTimeline { interval_s, hosts }
}

async fn read_counters(bridge_ns: &str) -> anyhow::Result<Counters> {
    let out = tokio::process::Command::new("ip")
        .args(["-n", bridge_ns, "-s", "-j", "link", "show"])
        .output()
        .await
        .context("running ip -s -j link show")?;
    anyhow::ensure!(
        out.status.success(),
        "ip -s link show in {bridge_ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_counters(&out.stdout)
}

fn parse_counters(json: &[u8]) -> anyhow::Result<Counters> {
    let links: Vec<serde_json::Value> =
        serde_json::from_slice(json).context("ip -j link output unreadable")?;
    Ok(links
        .iter()
        .filter_map(|link| {
            let name = link["ifname"].as_str()?;
            let stats = &link["stats64"];
            Some((
                name.to_string(),
                Counter {
                    to_host: stats["tx"]["bytes"].as_u64()?,
                    from_host: stats["rx"]["bytes"].as_u64()?,
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_ip_json() {
        let json = br#"[{"ifname":"br0","stats64":{"rx":{"bytes":5},"tx":{"bytes":6}}},
            {"ifname":"v0","stats64":{"rx":{"bytes":100},"tx":{"bytes":2000}}},
            {"ifname":"v1"}]"#;
        let c = parse_counters(json).unwrap();
        assert_eq!(c["v0"].to_host, 2000);
        assert_eq!(c["v0"].from_host, 100);
        assert!(!c.contains_key("v1"));
        assert!(parse_counters(b"not json").is_err());
    }

    #[test]
    fn rates_per_interval() {
        let at = |secs: f64, to_host: u64, from_host: u64| {
            let counter = Counter { to_host, from_host };
            (secs, Counters::from([("v0".to_string(), counter)]))
        };
        // 3.125 MB in a quarter second is 100 Mbit/s; a late read 0.375 s
        // later with 4.6875 MB more is the same rate.
        let samples = [
            at(0.0, 0, 0),
            at(0.25, 3_125_000, 0),
            at(0.625, 7_812_500, 1_000),
        ];
        let t = timeline(&samples, &[("n1".into(), "v0".into())]);
        let n1 = t.host("n1").unwrap();
        assert_eq!(n1.received_mbit.len(), 2);
        assert!((n1.received_mbit[0] - 100.0).abs() < 1e-9);
        assert!((n1.received_mbit[1] - 100.0).abs() < 1e-9);
        assert_eq!(n1.sent_mbit[0], 0.0);
    }

    #[test]
    fn busy_span_ignores_idle_ends() {
        let series = [0.0, 0.5, 100.0, 50.0, 100.0, 0.2, 0.0];
        let b = busy(&series, 0.25, 100.0).unwrap();
        assert_eq!(b.first_s, 0.5);
        assert_eq!(b.last_s, 1.25);
        assert!((b.share - 250.0 / 300.0).abs() < 1e-9);
        assert_eq!(busy(&[0.0, 0.3], 0.25, 100.0), None);
        // 100 Mbit/s for two quarter seconds: 6.25 MB.
        let mib = total_mib(&[100.0, 100.0], 0.25);
        assert!((mib - 6.25e6 / 1048576.0).abs() < 1e-9);
    }
}
