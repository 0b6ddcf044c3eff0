//! Figures of a benchmark run: per-scenario completion times against the
//! physical limit, origin and peer bytes, and the fault matrix; printed as a
//! table and written as JSON.

use serde::{Deserialize, Serialize};

use super::links::LinkTimeline;
use super::rss::RssFigures;
use super::waves::{WaveReport, LATER_WAVE_GOAL};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostTime {
    pub host: String,
    pub seconds: f64,
    pub ok: bool,
    pub corrupt_blobs: u32,
    pub retries: u32,
    pub error: Option<String>,
}

/// What the origin served, counted by the origin itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginTraffic {
    pub blob_bytes: u64,
    /// Blob requests with a body (whole or ranged).
    pub blob_gets: u64,
    pub blob_heads: u64,
    pub manifest_requests: u64,
}

impl OriginTraffic {
    /// What was served after `before` was read.
    pub fn since(self, before: OriginTraffic) -> OriginTraffic {
        OriginTraffic {
            blob_bytes: self.blob_bytes.saturating_sub(before.blob_bytes),
            blob_gets: self.blob_gets.saturating_sub(before.blob_gets),
            blob_heads: self.blob_heads.saturating_sub(before.blob_heads),
            manifest_requests: self
                .manifest_requests
                .saturating_sub(before.manifest_requests),
        }
    }
}

/// The image pulled: bytes, and pieces as dfdaemon cuts its blobs.
#[derive(Debug, Clone, Copy)]
pub struct ImageSize {
    pub bytes: u64,
    pub pieces: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub key: String,
    pub title: String,
    pub hosts: Vec<HostTime>,
    pub p50_s: f64,
    pub max_s: f64,
    pub image_bytes: u64,
    pub origin_bytes: u64,
    pub origin_ratio: f64,
    /// Requests the origin answered during the scenario.
    #[serde(default)]
    pub origin: OriginTraffic,
    /// Pieces of the image's blobs (config and layers).
    #[serde(default)]
    pub image_pieces: u64,
    /// Blob requests with a body at the origin per piece of the image: at
    /// most 1.00 when no piece is fetched from the origin twice.
    #[serde(default)]
    pub origin_gets_per_piece: f64,
    pub peer_bytes: u64,
    pub t_star_s: f64,
    pub max_over_t_star: f64,
    pub p50_over_t_star: f64,
    /// Against scenario a (direct), by slowest host.
    pub speedup_vs_direct: Option<f64>,
    pub failed_pulls: usize,
    /// Peak RSS (VmHWM) of the swarm's dfdaemons, seed included, read just
    /// before they stop (swarm scenarios only).
    #[serde(default)]
    pub dfdaemon_rss: Option<RssFigures>,
    /// Scenario e: one entry per wave, host times from the wave's start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveReport>,
    /// Every host's link rates over the scenario, from its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<LinkTimeline>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultReport {
    pub fault: String,
    pub description: String,
    pub failed_pulls: usize,
    pub corrupt_blobs: u32,
    pub retries: u32,
    pub extra_origin_bytes: i64,
    /// Blob requests with a body at the origin during the fault's run.
    #[serde(default)]
    pub origin_blob_gets: u64,
    pub max_s: f64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub hosts: usize,
    pub layers: usize,
    pub layer_mib: usize,
    pub node_mbit: u32,
    pub origin_mbit: u32,
    /// dfdaemon's upload cap as a share of the node link (0: unlimited).
    pub upload_share: f64,
    pub scenarios: Vec<ScenarioReport>,
    pub faults: Vec<FaultReport>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl ScenarioReport {
    pub fn new(
        key: &str,
        title: &str,
        hosts: Vec<HostTime>,
        image: ImageSize,
        origin: OriginTraffic,
        peer_bytes: u64,
        t_star_s: f64,
    ) -> Self {
        let mut times: Vec<f64> = hosts.iter().filter(|h| h.ok).map(|h| h.seconds).collect();
        times.sort_by(f64::total_cmp);
        let p50 = percentile(&times, 0.5);
        let max = times.last().copied().unwrap_or(0.0);
        ScenarioReport {
            key: key.into(),
            title: title.into(),
            failed_pulls: hosts.iter().filter(|h| !h.ok).count(),
            hosts,
            p50_s: p50,
            max_s: max,
            image_bytes: image.bytes,
            origin_bytes: origin.blob_bytes,
            origin_ratio: origin.blob_bytes as f64 / image.bytes.max(1) as f64,
            origin,
            image_pieces: image.pieces,
            origin_gets_per_piece: origin.blob_gets as f64 / image.pieces.max(1) as f64,
            peer_bytes,
            t_star_s,
            max_over_t_star: max / t_star_s,
            p50_over_t_star: p50 / t_star_s,
            speedup_vs_direct: None,
            dfdaemon_rss: None,
            waves: Vec::new(),
            links: None,
        }
    }
}

impl ScenarioReport {
    /// Each wave's slowest host against T*, one line a wave.
    pub fn wave_lines(&self) -> String {
        let mut out = format!(
            "\n{}: slowest host of each wave from the wave's start (goal after the first: <= {LATER_WAVE_GOAL} T*)\n",
            self.key
        );
        for w in &self.waves {
            let verdict = match w.meets_goal() {
                None => "",
                Some(true) => "  ok",
                Some(false) => "  over",
            };
            out.push_str(&format!(
                "  wave {} ({}): {:.1} s  {:.2} T*  failed {}{verdict}\n",
                w.wave,
                w.hosts.join(","),
                w.max_s,
                w.max_over_t_star,
                w.failed_pulls
            ));
        }
        out
    }
}

impl BenchReport {
    pub fn table(&self) -> String {
        let cap = if self.upload_share > 0.0 {
            format!(
                "dfdaemon upload cap {:.0}% of the link",
                self.upload_share * 100.0
            )
        } else {
            "dfdaemon uploads uncapped".to_string()
        };
        let mut out = format!(
            "{} hosts, image {} x {} MiB, nodes {} Mbit/s, origin {} Mbit/s, {cap}\n\n",
            self.hosts, self.layers, self.layer_mib, self.node_mbit, self.origin_mbit
        );
        out.push_str(&format!(
            "{:<34} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>6} {:>12}\n",
            "scenario",
            "p50 s",
            "max s",
            "T* s",
            "p50/T*",
            "max/T*",
            "origin x",
            "GETs/piece",
            "peers MiB",
            "speedup",
            "failed",
            "RSS max/p50"
        ));
        for s in &self.scenarios {
            out.push_str(&format!(
                "{:<34} {:>7.1} {:>7.1} {:>7.1} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>10.0} {:>8} {:>6} {:>12}\n",
                format!("{}. {}", s.key, s.title),
                s.p50_s,
                s.max_s,
                s.t_star_s,
                s.p50_over_t_star,
                s.max_over_t_star,
                s.origin_ratio,
                s.origin_gets_per_piece,
                s.peer_bytes as f64 / (1024.0 * 1024.0),
                s.speedup_vs_direct
                    .map(|x| format!("{x:.1}x"))
                    .unwrap_or_else(|| "-".into()),
                s.failed_pulls,
                s.dfdaemon_rss
                    .as_ref()
                    .map(|r| format!("{:.0}/{:.0} MiB", mib(r.max_bytes), mib(r.median_bytes)))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        for s in self.scenarios.iter().filter(|s| !s.waves.is_empty()) {
            out.push_str(&s.wave_lines());
        }
        let pairs: Vec<(&ScenarioReport, &ScenarioReport)> = self
            .scenarios
            .iter()
            .filter_map(|with| {
                let base = with.key.strip_suffix("+tls")?;
                let plain = self.scenarios.iter().find(|s| s.key == base)?;
                Some((plain, with))
            })
            .collect();
        if !pairs.is_empty() {
            out.push_str("\nmutual TLS, same run (with / without):\n");
            for (plain, with) in pairs {
                out.push_str(&format!(
                    "  {}: p50 {:.3}  max {:.3}  origin bytes {:.3}\n",
                    plain.key,
                    with.p50_s / plain.p50_s.max(1e-9),
                    with.max_s / plain.max_s.max(1e-9),
                    with.origin_ratio / plain.origin_ratio.max(1e-9)
                ));
            }
        }
        if !self.faults.is_empty() {
            out.push_str(&format!(
                "\n{:<22} {:>7} {:>8} {:>8} {:>14} {:>11} {:>7}\n",
                "fault", "failed", "corrupt", "retries", "extra origin", "origin GETs", "max s"
            ));
            for f in &self.faults {
                out.push_str(&format!(
                    "{:<22} {:>7} {:>8} {:>8} {:>11.1} MiB {:>11} {:>7.1}\n",
                    f.fault,
                    f.failed_pulls,
                    f.corrupt_blobs,
                    f.retries,
                    f.extra_origin_bytes as f64 / (1024.0 * 1024.0),
                    f.origin_blob_gets,
                    f.max_s
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: u64, pieces: u64) -> ImageSize {
        ImageSize { bytes, pieces }
    }

    fn served(blob_bytes: u64, blob_gets: u64) -> OriginTraffic {
        OriginTraffic {
            blob_bytes,
            blob_gets,
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_and_ratios() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let hosts = (1..=4)
            .map(|i| HostTime {
                host: format!("n{i}"),
                seconds: i as f64,
                ok: i != 4,
                corrupt_blobs: 0,
                retries: 0,
                error: None,
            })
            .collect();
        let origin = OriginTraffic {
            blob_bytes: 100,
            blob_gets: 6,
            blob_heads: 1,
            manifest_requests: 2,
        };
        let r = ScenarioReport::new("c", "cold", hosts, image(100, 4), origin, 300, 2.0);
        assert_eq!(r.failed_pulls, 1);
        assert_eq!(r.max_s, 3.0);
        assert_eq!(r.max_over_t_star, 1.5);
        assert_eq!(r.origin_ratio, 1.0);
        assert_eq!(r.origin_gets_per_piece, 1.5);
        let later = OriginTraffic {
            blob_gets: 10,
            ..origin
        };
        assert_eq!(later.since(origin).blob_gets, 4);
        assert_eq!(origin.since(later).blob_gets, 0);
    }

    #[test]
    fn table_shows_memory_and_waves() {
        let host = |name: &str, seconds: f64| HostTime {
            host: name.into(),
            seconds,
            ok: true,
            corrupt_blobs: 0,
            retries: 0,
            error: None,
        };
        let times = [host("n1", 30.0), host("n2", 21.0)];
        let mut e = ScenarioReport::new(
            "e",
            "waves",
            times.to_vec(),
            image(100, 4),
            served(100, 4),
            100,
            20.0,
        );
        e.waves = vec![
            WaveReport::new(1, &times[..1], 20.0),
            WaveReport::new(2, &times[1..], 20.0),
        ];
        e.dfdaemon_rss = RssFigures::new(&[40 << 20, 20 << 20, 30 << 20], None);
        let plain = ScenarioReport::new(
            "a",
            "direct",
            times.to_vec(),
            image(100, 4),
            served(800, 8),
            0,
            20.0,
        );
        let report = BenchReport {
            hosts: 2,
            layers: 1,
            layer_mib: 1,
            node_mbit: 100,
            origin_mbit: 100,
            upload_share: 0.0,
            scenarios: vec![plain, e],
            faults: Vec::new(),
        };
        let table = report.table();
        assert!(table.contains("40/30 MiB"), "{table}");
        assert!(
            table.contains("wave 1 (n1): 30.0 s  1.50 T*  failed 0\n"),
            "{table}"
        );
        assert!(
            table.contains("wave 2 (n2): 21.0 s  1.05 T*  failed 0  ok"),
            "{table}"
        );
        let a_row = table.lines().find(|l| l.starts_with("a. direct")).unwrap();
        assert!(a_row.trim_end().ends_with('-'), "{a_row}");
        // Origin requests per piece: 8 GETs for 4 pieces.
        assert!(a_row.contains(" 2.00 "), "{a_row}");
        let e_row = table.lines().find(|l| l.starts_with("e. waves")).unwrap();
        assert!(e_row.contains(" 1.00 "), "{e_row}");
    }
}
