//! The cache quota as a hard limit: every new piece reserves its bytes
//! before it is written, and a writer that finds the quota full wakes the
//! garbage collector and waits briefly for room instead of writing past
//! it. A full disk (ENOSPC) is remembered until space is freed, so
//! readiness can say so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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

    fn try_reserve(&self, bytes: u64) -> bool {
        let committed = self.committed.load(Ordering::SeqCst);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |in_flight| {
                (committed + in_flight + bytes <= self.quota).then_some(in_flight + bytes)
            })
            .is_ok()
    }

    /// Reserves `bytes` for a piece about to be written, waiting up to
    /// `wait` for the collector to free room. False: the quota stays full.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> bool {
        if self.try_reserve(bytes) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            self.pressure.notify_one();
            if self.try_reserve(bytes) {
                return true;
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
        assert!(budget.reserve(6, Duration::ZERO).await);
        assert!(!budget.reserve(1, Duration::from_millis(10)).await);
        budget.commit(6);
        assert_eq!(budget.used(), 10);
        budget.uncommit(5);
        assert!(budget.reserve(5, Duration::ZERO).await);
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
        assert!(budget.reserve(8, Duration::from_secs(5)).await);
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
}
