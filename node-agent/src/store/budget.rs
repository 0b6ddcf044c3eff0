//! The cache quota as a hard limit: every new piece reserves its bytes
//! before it is written, and a writer that finds the quota full wakes the
//! garbage collector and waits briefly for room instead of writing past
//! it. A full disk (ENOSPC) is remembered until space is freed, so
//! readiness can say so. When the filesystem holding the cache is above
//! its high watermark (other writers count too), new pieces wait for the
//! collector the same way and are refused if it cannot bring it down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a writer waits for the collector to make room.
pub const ROOM_WAIT: Duration = Duration::from_secs(2);

pub struct Budget {
    quota: u64,
    /// Bytes of stored pieces (kept in step as pieces come and go, and
    /// recounted from the metadata at every collection).
    committed: AtomicU64,
    /// Bytes reserved by writes in progress.
    in_flight: AtomicU64,
    /// Wakes the collector: a writer needs room, or the disk is full.
    pressure: Notify,
    /// Wakes writers waiting for room.
    freed: Notify,
    disk_full_since: Mutex<Option<Instant>>,
    /// The cache's directory and the share of its filesystem above which
    /// no new piece is written; unset: the filesystem is not watched.
    disk_limit: OnceLock<(PathBuf, f64)>,
}

/// Why a piece could not reserve room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    Quota,
    /// The filesystem is above its high watermark.
    DiskWatermark,
}

impl Budget {
    pub fn new(quota: u64, committed: u64) -> Self {
        Budget {
            quota,
            committed: AtomicU64::new(committed),
            in_flight: AtomicU64::new(0),
            pressure: Notify::new(),
            freed: Notify::new(),
            disk_full_since: Mutex::new(None),
            disk_limit: OnceLock::new(),
        }
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Stored plus reserved bytes.
    pub fn used(&self) -> u64 {
        self.committed.load(Ordering::SeqCst) + self.in_flight.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Watches the filesystem holding `dir`: no new piece above `high`.
    pub fn limit_disk(&self, dir: PathBuf, high: f64) {
        let _ = self.disk_limit.set((dir, high));
    }

    /// The watched directory and its high watermark.
    pub fn disk_limit(&self) -> Option<(&std::path::Path, f64)> {
        self.disk_limit.get().map(|(p, h)| (p.as_path(), *h))
    }

    /// Whether the watched filesystem is above its high watermark. A
    /// filesystem that cannot be measured does not stop writes (ENOSPC
    /// still does).
    fn disk_over(&self) -> bool {
        let Some((dir, high)) = self.disk_limit.get() else {
            return false;
        };
        match super::disk::fs_usage(dir) {
            Ok(fs) => fs.above(*high),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "statvfs failed");
                false
            }
        }
    }

    fn try_reserve(&self, bytes: u64) -> Result<(), NoRoom> {
        if self.disk_over() {
            return Err(NoRoom::DiskWatermark);
        }
        self.try_reserve_quota(bytes)
    }

    fn try_reserve_quota(&self, bytes: u64) -> Result<(), NoRoom> {
        let committed = self.committed.load(Ordering::SeqCst);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |in_flight| {
                (committed + in_flight + bytes <= self.quota).then_some(in_flight + bytes)
            })
            .map(|_| ())
            .map_err(|_| NoRoom::Quota)
    }

    /// Reserves `bytes` for a piece about to be written, waiting up to
    /// `wait` for the collector to free room. Err: still no room.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Result<(), NoRoom> {
        if self.try_reserve(bytes).is_ok() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            self.pressure.notify_one();
            if self.try_reserve(bytes).is_ok() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_reserve(bytes);
            }
        }
    }

    /// A reserved piece was written.
    pub fn commit(&self, bytes: u64) {
        self.release(bytes);
        self.committed.fetch_add(bytes, Ordering::SeqCst);
    }

    /// A piece stored without a reservation of its own (its slot emptied
    /// while it was written).
    pub fn commit_unreserved(&self, bytes: u64) {
        self.committed.fetch_add(bytes, Ordering::SeqCst);
    }

    /// A reservation not used (the write failed).
    pub fn release(&self, bytes: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// Stored bytes dropped (a task removed, a piece discarded).
    pub fn uncommit(&self, bytes: u64) {
        let _ = self
            .committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// The collector's count of stored bytes replaces the running one.
    pub fn recount(&self, committed: u64) {
        self.committed.store(committed, Ordering::SeqCst);
    }

    /// Waits until a writer needs room or the disk filled up.
    pub async fn pressure(&self) {
        self.pressure.notified().await
    }

    /// The collector freed space: writers may try again.
    pub fn freed(&self) {
        self.freed.notify_waiters();
    }

    pub fn disk_full(&self) {
        let mut since = self
            .disk_full_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now);
        drop(since);
        self.pressure.notify_one();
    }

    pub fn disk_ok(&self) {
        *self
            .disk_full_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Since when writes have been failing for lack of disk space.
    pub fn disk_full_since(&self) -> Option<Instant> {
        *self
            .disk_full_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_quota_is_never_passed() {
        let budget = Budget::new(10, 4);
        assert!(budget.reserve(6, Duration::ZERO).await.is_ok());
        assert_eq!(
            budget.reserve(1, Duration::from_millis(10)).await,
            Err(NoRoom::Quota)
        );
        budget.commit(6);
        assert_eq!(budget.used(), 10);
        budget.uncommit(5);
        assert!(budget.reserve(5, Duration::ZERO).await.is_ok());
        budget.release(5);
        assert_eq!(budget.used(), 5);
    }

    #[tokio::test]
    async fn a_full_quota_wakes_the_collector_and_waits_for_room() {
        let budget = Arc::new(Budget::new(10, 10));
        let collector = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget.pressure().await;
                budget.recount(2);
                budget.freed();
            })
        };
        assert!(budget.reserve(8, Duration::from_secs(5)).await.is_ok());
        collector.await.unwrap();
        assert_eq!(budget.used(), 10);
    }

    #[test]
    fn disk_full_is_remembered_until_cleared() {
        let budget = Budget::new(10, 0);
        assert!(budget.disk_full_since().is_none());
        budget.disk_full();
        let first = budget.disk_full_since().unwrap();
        budget.disk_full();
        assert_eq!(budget.disk_full_since(), Some(first));
        budget.disk_ok();
        assert!(budget.disk_full_since().is_none());
    }

    #[tokio::test]
    async fn a_filesystem_above_its_high_watermark_refuses_new_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget::new(1 << 30, 0);
        // Any real filesystem is above 0.01 % used...
        budget.limit_disk(dir.path().to_path_buf(), 0.0001);
        assert_eq!(
            budget.reserve(1, Duration::from_millis(10)).await,
            Err(NoRoom::DiskWatermark)
        );
        assert_eq!(budget.in_flight(), 0);
        // ...and none is above 100 %.
        let budget = Budget::new(1 << 30, 0);
        budget.limit_disk(dir.path().to_path_buf(), 1.0);
        assert!(budget.reserve(1, Duration::ZERO).await.is_ok());
    }
}
