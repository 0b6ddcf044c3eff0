//! Whether the cache could fill kubelet's own filesystem to the point where
//! kubelet evicts workloads: dfdaemon is node-critical and stays, the
//! workloads go. Reported as a node problem, with what to set instead.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::node_report::{camel_code, NodeProblem};

pub const CODE: &str = "cache_watermark_crosses_kubelet_eviction";

/// A high watermark of `high` percent used leaves `100 - high` percent
/// free; kubelet evicts below `threshold` percent available. At or under
/// the threshold, writes in flight past the watermark already reach it.
pub fn crosses(high: u8, threshold: u8) -> bool {
    100u8.saturating_sub(high) <= threshold
}

/// The problem, when `data_dir` is on the same filesystem (st_dev) as
/// `kubelet_root` and the watermark crosses kubelet's threshold. Nothing
/// when kubelet's directory does not exist (not a kubelet node, or not
/// visible to this process). Any path on kubelet's filesystem will do: in
/// a pod, `/etc/hosts` is kubelet's file (`pods/<uid>/etc-hosts`).
pub fn check(data_dir: &Path, kubelet_root: &Path, high: u8, threshold: u8) -> Option<NodeProblem> {
    let kubelet = std::fs::metadata(kubelet_root).ok()?;
    let data = std::fs::metadata(data_dir).ok()?;
    if kubelet.dev() != data.dev() || !crosses(high, threshold) {
        return None;
    }
    let below = 100u8.saturating_sub(threshold);
    Some(NodeProblem {
        code: camel_code(CODE),
        message: format!(
            "cache dir {} shares kubelet's filesystem ({}); GC high watermark {high}% used leaves {}% free, at or below kubelet's eviction threshold ({threshold}% available): set gcHighWatermark (--gc-high-watermark) below {below}, e.g. {}, or move the cache to another disk",
            data_dir.display(),
            kubelet_root.display(),
            100u8.saturating_sub(high),
            below.saturating_sub(5).max(1),
        ),
        ..NodeProblem::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_must_leave_more_free_than_kubelet_needs() {
        // 90 % used = 10 % free: at kubelet's default threshold.
        assert!(crosses(90, 10));
        assert!(crosses(95, 10));
        assert!(!crosses(89, 10));
        assert!(!crosses(80, 15));
        assert!(crosses(85, 15));
    }

    #[test]
    fn reported_only_on_kubelet_s_own_filesystem() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("dragonfly");
        let kubelet = tmp.path().join("kubelet");
        std::fs::create_dir_all(&data).unwrap();
        // Not a kubelet node: nothing to say.
        assert!(check(&data, &kubelet, 90, 10).is_none());
        std::fs::create_dir_all(&kubelet).unwrap();
        let problem = check(&data, &kubelet, 90, 10).expect("same filesystem, 10 % free");
        assert_eq!(problem.code, "CacheWatermarkCrossesKubeletEviction");
        assert!(problem.message.contains("below 90"), "{}", problem.message);
        assert!(
            problem.message.chars().count() <= 300,
            "fits the status cap"
        );
        assert!(check(&data, &kubelet, 80, 10).is_none());
        // A file on kubelet's filesystem stands for it (a pod's /etc/hosts).
        let hosts = kubelet.join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        assert!(check(&data, &hosts, 90, 10).is_some());
        // Another filesystem (procfs has a device of its own).
        assert!(check(Path::new("/proc/self"), &kubelet, 90, 10).is_none());
    }
}
