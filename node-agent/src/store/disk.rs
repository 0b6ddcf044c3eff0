//! The filesystem holding the cache, measured the way kubelet measures its
//! own (`nodefs.available` = blocks available to unprivileged writers over
//! all blocks), so the cache's watermarks and kubelet's eviction
//! thresholds speak of the same numbers.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub total: u64,
    pub available: u64,
}

impl FsUsage {
    /// Bytes not available to ordinary writers (root's reserve counts as
    /// used, as it does for kubelet).
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }

    pub fn used_ratio(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.used() as f64 / self.total as f64
    }

    /// Above `share` (0..1) of the filesystem used.
    pub fn above(&self, share: f64) -> bool {
        self.used() as f64 > self.total as f64 * share
    }

    /// Bytes to free to bring usage down to `share` of the filesystem.
    pub fn excess_over(&self, share: f64) -> u64 {
        let target = (self.total as f64 * share) as u64;
        self.used().saturating_sub(target)
    }
}

/// statvfs of the filesystem holding `path`.
pub fn fs_usage(path: &Path) -> std::io::Result<FsUsage> {
    let st = rustix::fs::statvfs(path)?;
    let block = st.f_frsize;
    Ok(FsUsage {
        total: st.f_blocks.saturating_mul(block),
        available: st.f_bavail.saturating_mul(block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_share_and_excess() {
        let fs = FsUsage {
            total: 1000,
            available: 50,
        };
        assert_eq!(fs.used(), 950);
        assert!((fs.used_ratio() - 0.95).abs() < 1e-9);
        assert!(fs.above(0.9));
        assert!(!fs.above(0.95));
        // Down to 70 %: 250 bytes to free.
        assert_eq!(fs.excess_over(0.7), 250);
        assert_eq!(fs.excess_over(0.99), 0);
        let empty = FsUsage {
            total: 0,
            available: 0,
        };
        assert_eq!(empty.used_ratio(), 0.0);
        assert!(!empty.above(0.5));
    }

    #[test]
    fn the_real_filesystem_can_be_measured() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs_usage(dir.path()).unwrap();
        assert!(fs.total > 0 && fs.available <= fs.total);
    }
}
