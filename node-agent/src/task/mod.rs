//! Per-task runtime state, in one place: each task's progress (see
//! [`progress`]), why recently removed tasks failed, and whether this daemon
//! is fetching anything from the origin. The store keeps the content and
//! whether a run is going; everything else a running task needs lives here.

pub mod progress;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::TaskFailure;
pub use progress::TaskProgress;

/// How long the reason of a removed task's failure is kept.
const FAILURE_MEMORY: Duration = Duration::from_secs(300);

/// How a download run ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every piece is stored; the content length.
    Complete(u64),
    /// Every wanted piece is stored and nothing more was asked for.
    Partial,
}

#[derive(Default)]
pub struct Tasks {
    progress: Mutex<HashMap<String, Arc<TaskProgress>>>,
    /// Tasks this daemon is fetching from the origin, and since when at
    /// least one has been.
    sourcing: Arc<Mutex<(usize, Option<Instant>)>>,
    /// Why recently removed tasks failed, so a caller arriving just after
    /// the removal still learns the reason instead of "unknown task".
    failures: Mutex<HashMap<String, (TaskFailure, Instant)>>,
}

impl Tasks {
    /// The task's state, if this daemon has kept any since it started.
    pub fn get(&self, task_id: &str) -> Option<Arc<TaskProgress>> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
            .cloned()
    }

    /// The task's state, created empty when there is none yet (a task
    /// being opened, wanted, or handed to a peer).
    pub fn get_or_insert(&self, task_id: &str) -> Arc<TaskProgress> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task_id.to_string())
            .or_default()
            .clone()
    }

    /// Drops the state of a task that left the store.
    pub fn forget(&self, task_id: &str) {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
    }

    /// Why a task removed after failing failed (recent failures only).
    pub fn recent_failure(&self, task_id: &str) -> Option<TaskFailure> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(task_id)
            .filter(|(_, at)| at.elapsed() < FAILURE_MEMORY)
            .map(|(f, _)| f.clone())
    }

    /// Keeps why a task failed beyond the task itself (the collector may
    /// evict it at once when the quota is full).
    pub fn remember_failure(&self, task_id: &str, failure: TaskFailure) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
        failures.insert(task_id.to_string(), (failure, Instant::now()));
    }

    pub fn clear_failure(&self, task_id: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
    }

    /// Marks a task as fetched from the origin for as long as the guard lives.
    pub fn sourcing_guard(&self) -> SourcingGuard {
        let mut sourcing = self.sourcing.lock().unwrap_or_else(|e| e.into_inner());
        sourcing.0 += 1;
        sourcing.1.get_or_insert_with(Instant::now);
        SourcingGuard {
            sourcing: self.sourcing.clone(),
        }
    }

    /// Since when this daemon has been fetching anything from the origin.
    pub fn sourcing_since(&self) -> Option<Instant> {
        self.sourcing.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// Counts one task as fetched from the origin until dropped.
pub struct SourcingGuard {
    sourcing: Arc<Mutex<(usize, Option<Instant>)>>,
}

impl Drop for SourcingGuard {
    fn drop(&mut self) {
        let mut sourcing = self.sourcing.lock().unwrap_or_else(|e| e.into_inner());
        sourcing.0 = sourcing.0.saturating_sub(1);
        if sourcing.0 == 0 {
            sourcing.1 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looking_a_task_up_does_not_create_it() {
        let tasks = Tasks::default();
        assert!(tasks.get("t").is_none());
        let created = tasks.get_or_insert("t");
        assert!(Arc::ptr_eq(&created, &tasks.get("t").expect("kept")));
        tasks.forget("t");
        assert!(tasks.get("t").is_none());
    }

    #[test]
    fn sourcing_lasts_while_any_guard_lives() {
        let tasks = Tasks::default();
        assert!(tasks.sourcing_since().is_none());
        let first = tasks.sourcing_guard();
        let since = tasks.sourcing_since().expect("sourcing");
        let second = tasks.sourcing_guard();
        drop(first);
        assert_eq!(tasks.sourcing_since(), Some(since));
        drop(second);
        assert!(tasks.sourcing_since().is_none());
    }

    #[test]
    fn a_failure_is_remembered_until_cleared() {
        let tasks = Tasks::default();
        let failure = TaskFailure::Internal {
            message: "disk".into(),
        };
        tasks.remember_failure("t", failure.clone());
        assert_eq!(tasks.recent_failure("t"), Some(failure));
        tasks.clear_failure("t");
        assert_eq!(tasks.recent_failure("t"), None);
    }
}
