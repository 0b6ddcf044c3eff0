//! One task's runtime state: where its bytes came from, what its runs must
//! fetch, the request behind them, and which pieces were handed to peers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::demand::Demand;
use crate::task_request::TaskRequest;

/// Where a task's bytes came from, for status and metrics.
#[derive(Default)]
pub struct TaskProgress {
    pub from_origin: AtomicU64,
    pub from_peers: AtomicU64,
    /// Set while this daemon downloads the task from the origin.
    pub sourcing: AtomicBool,
    /// When each piece was last handed to a peer while this daemon was
    /// fetching from the origin.
    handed_out: Mutex<HashMap<u32, Instant>>,
    pub started: Mutex<Option<Instant>>,
    pub finished: Mutex<Option<Instant>>,
    /// Which pieces the current (or next) run must fetch.
    pub demand: Demand,
    /// The request behind the latest run, so a want arriving later (a
    /// reader's range, a peer asking the source) can start another run.
    request: Mutex<Option<TaskRequest>>,
    /// The scheduler made this daemon the task's back-to-source peer; it
    /// then fetches pieces its children ask for even when no local reader
    /// wants them.
    pub elected_source: AtomicBool,
    /// Where each piece this daemon stored came from ("origin", "peer"),
    /// so range answers can be counted by source.
    piece_sources: Mutex<HashMap<u32, &'static str>>,
}

/// See [`TaskProgress::may_upload`].
const OTHER_TASK_HANDOFF: std::time::Duration = std::time::Duration::from_secs(5);

impl TaskProgress {
    /// While this daemon fetches anything from the origin, its uplink must
    /// not starve that download (its acknowledgements queue behind the
    /// uploads): a piece of the task being fetched is handed out once, so
    /// the uplink carries one copy of every fresh piece and the children
    /// swap the rest; a piece of another task at most once per
    /// `OTHER_TASK_HANDOFF`. Returns whether `index` may be sent now.
    pub fn may_upload(&self, index: u32, sourcing_since: Option<Instant>) -> bool {
        let Some(since) = sourcing_since else {
            return true;
        };
        let this_task = self.sourcing.load(Ordering::SeqCst);
        let now = Instant::now();
        let mut handed = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        match handed.get(&index) {
            Some(at)
                if *at >= since && (this_task || now.duration_since(*at) < OTHER_TASK_HANDOFF) =>
            {
                false
            }
            _ => {
                handed.insert(index, now);
                true
            }
        }
    }

    pub fn record_piece_source(&self, index: u32, source: &'static str) {
        self.piece_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, source);
    }

    /// "origin" if any of `pieces` came from the origin, else "peer" if any
    /// came from a peer, else "local".
    pub fn source_of(&self, pieces: &[u32]) -> &'static str {
        let sources = self.piece_sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = "local";
        for index in pieces {
            match sources.get(index) {
                Some(&"origin") => return "origin",
                Some(&"peer") => found = "peer",
                _ => {}
            }
        }
        found
    }

    /// The request behind the latest run.
    pub fn request(&self) -> Option<TaskRequest> {
        self.request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_request(&self, request: Option<TaskRequest>) {
        *self.request.lock().unwrap_or_else(|e| e.into_inner()) = request;
    }

    pub fn set_sourcing(&self, on: bool) {
        self.sourcing.store(on, Ordering::SeqCst);
    }
}
