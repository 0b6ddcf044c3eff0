//! Per-task state: the task's shape, its peers and their piece bitmaps, and
//! the bookkeeping behind the one back-to-source downloader.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proto::TaskShape;

use wire::bitmap::Bitmap;

/// How long a peer avoids a parent it reported as failing.
pub const BLOCK_TTL: Duration = Duration::from_secs(60);
/// How long a host that failed as a task's source is passed over when a seed
/// is picked for that task: long enough to stop flapping between a broken
/// seed and the swarm, short enough to recover from a transient outage.
pub const SOURCE_FAILURE_MEMORY: Duration = Duration::from_secs(300);
/// Bounds on per-peer and per-task memory that untrusted reports can grow.
const MAX_BLOCKED_PER_PEER: usize = 64;
/// Parents remembered as handed to a peer (a few answers' worth).
const MAX_GIVEN_PER_PEER: usize = 64;
/// How long a handed-out parent stays one the peer may report.
pub const GIVEN_FOR: Duration = Duration::from_secs(600);
/// URLs are kept for logs and introspection only: without their query (a
/// signed URL's token is no business of anyone reading the scheduler) and
/// cut to this length.
const MAX_KEPT_URL: usize = 1024;
const MAX_FAILED_SOURCES: usize = 64;

/// One host downloading (or holding) one task.
#[derive(Debug, Clone)]
pub struct Peer {
    pub bitmap: Bitmap,
    /// Set when the peer says it has everything, even if the shape (and so
    /// the piece count) is unknown here.
    pub complete: bool,
    /// Last time the peer registered or reported; used to drop peers whose
    /// host never announced.
    pub updated: Instant,
    /// Registered with `no_seed`: its download is never handed to a seed.
    pub no_seed: bool,
    /// Parent host id → blocked until.
    blocked: HashMap<String, Instant>,
    /// Parent host id → when the scheduler last handed it to this peer:
    /// only reports against these count against the parent.
    given: HashMap<String, Instant>,
}

impl Peer {
    pub fn new(now: Instant) -> Self {
        Peer {
            bitmap: Bitmap::default(),
            complete: false,
            updated: now,
            no_seed: false,
            blocked: HashMap::new(),
            given: HashMap::new(),
        }
    }

    /// The scheduler handed `parent` to this peer.
    pub fn give(&mut self, parent: &str, now: Instant) {
        if !self.given.contains_key(parent) && self.given.len() >= MAX_GIVEN_PER_PEER {
            self.given
                .retain(|_, at| now.saturating_duration_since(*at) < GIVEN_FOR);
            if self.given.len() >= MAX_GIVEN_PER_PEER {
                if let Some(oldest) = self
                    .given
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(id, _)| id.clone())
                {
                    self.given.remove(&oldest);
                }
            }
        }
        self.given.insert(parent.to_string(), now);
    }

    /// Whether the scheduler handed `parent` to this peer lately.
    pub fn was_given(&self, parent: &str, now: Instant) -> bool {
        self.given
            .get(parent)
            .is_some_and(|at| now.saturating_duration_since(*at) < GIVEN_FOR)
    }

    /// The parents handed to this peer lately.
    pub fn given(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.given
            .iter()
            .filter(move |(_, at)| now.saturating_duration_since(**at) < GIVEN_FOR)
            .map(|(id, _)| id.as_str())
    }

    pub fn is_complete(&self, piece_count: u32) -> bool {
        self.complete || (piece_count > 0 && self.bitmap.count(piece_count) >= piece_count)
    }

    pub fn finished(&self, piece_count: u32) -> u32 {
        if self.complete && piece_count > 0 {
            piece_count
        } else {
            self.bitmap.count(piece_count)
        }
    }

    pub fn block(&mut self, parent: &str, now: Instant) {
        self.blocked.retain(|_, until| *until > now);
        if self.blocked.len() >= MAX_BLOCKED_PER_PEER && !self.blocked.contains_key(parent) {
            // Keep the newest blocks: drop the one that expires first.
            if let Some(oldest) = self
                .blocked
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(id, _)| id.clone())
            {
                self.blocked.remove(&oldest);
            }
        }
        self.blocked.insert(parent.to_string(), now + BLOCK_TTL);
    }

    pub fn is_blocked(&self, parent: &str, now: Instant) -> bool {
        self.blocked.get(parent).is_some_and(|until| *until > now)
    }
}

/// The elected back-to-source downloader of a task.
#[derive(Debug, Clone)]
pub struct Source {
    pub host_id: String,
    pub elected_at: Instant,
    /// Distinct peers that reported this source as failing.
    reporters: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub url: String,
    pub shape: TaskShape,
    pub peers: HashMap<String, Peer>,
    /// How many times a back-to-source downloader was elected.
    pub source_elections: u32,
    /// Last time anything touched the task; empty tasks are forgotten after
    /// an idle TTL measured from here.
    pub last_active: Instant,
    source: Option<Source>,
    /// Host id → when it failed as this task's source.
    failed_sources: HashMap<String, Instant>,
    /// Piece digests as its back-to-source peer reported them.
    pub digests: crate::digests::PieceDigests,
    /// The host whose call created the task: charged for it.
    pub created_by: String,
}

impl Task {
    pub fn new(id: &str, now: Instant) -> Self {
        Task {
            id: id.to_string(),
            url: String::new(),
            shape: TaskShape::default(),
            peers: HashMap::new(),
            source_elections: 0,
            last_active: now,
            source: None,
            failed_sources: HashMap::new(),
            digests: Default::default(),
            created_by: String::new(),
        }
    }

    pub fn piece_count(&self) -> u32 {
        self.shape.piece_count
    }

    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    pub fn source_id(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.host_id.as_str())
    }

    pub fn is_source(&self, host_id: &str) -> bool {
        self.source_id() == Some(host_id)
    }

    /// Makes `host_id` the source. Returns true when this is a new election
    /// (the source changed), which the caller counts.
    pub fn elect_source(&mut self, host_id: &str, now: Instant) -> bool {
        if self.is_source(host_id) {
            return false;
        }
        self.source = Some(Source {
            host_id: host_id.to_string(),
            elected_at: now,
            reporters: HashSet::new(),
        });
        self.source_elections = self.source_elections.saturating_add(1);
        true
    }

    pub fn clear_source(&mut self) -> Option<String> {
        self.source.take().map(|s| s.host_id)
    }

    /// Clears the source if it is `host_id`; returns whether it was.
    pub fn clear_source_if(&mut self, host_id: &str) -> bool {
        if self.is_source(host_id) {
            self.source = None;
            true
        } else {
            false
        }
    }

    /// Records a failure report against the current source and returns how
    /// many distinct peers reported it.
    pub fn report_source_failure(&mut self, reporter: &str) -> usize {
        match &mut self.source {
            Some(source) => {
                source.reporters.insert(reporter.to_string());
                source.reporters.len()
            }
            None => 0,
        }
    }

    pub fn remember_failed_source(&mut self, host_id: &str, now: Instant) {
        self.failed_sources
            .retain(|_, at| now.saturating_duration_since(*at) < SOURCE_FAILURE_MEMORY);
        if self.failed_sources.len() < MAX_FAILED_SOURCES {
            self.failed_sources.insert(host_id.to_string(), now);
        }
    }

    pub fn failed_as_source_recently(&self, host_id: &str, now: Instant) -> bool {
        self.failed_sources
            .get(host_id)
            .is_some_and(|at| now.saturating_duration_since(*at) < SOURCE_FAILURE_MEMORY)
    }

    /// Takes the shape a peer reports once it is known for sure; an unknown
    /// shape never overwrites a known one.
    pub fn update_shape(&mut self, shape: Option<&TaskShape>) {
        if let Some(shape) = shape.filter(|s| s.known) {
            self.shape = *shape;
        }
    }

    /// Fills the shape from a finished download's content length when no
    /// peer reported it. The shape is marked known only when the piece
    /// length is known too, so `known` always means a usable piece count.
    pub fn learn_content_length(&mut self, content_length: u64) {
        if self.shape.known || content_length == 0 {
            return;
        }
        self.shape.content_length = content_length;
        let piece_length = u64::from(self.shape.piece_length);
        if piece_length > 0 {
            let count = content_length.div_ceil(piece_length);
            if let Ok(count) = u32::try_from(count) {
                self.shape.piece_count = count;
                self.shape.known = true;
            }
        }
    }

    /// Keeps `url` without its query or fragment, cut to a bounded length.
    /// Returns the bytes kept when the URL changed.
    pub fn set_url(&mut self, url: &str) -> usize {
        let kept = kept_url(url);
        if kept.is_empty() || self.url == kept {
            return 0;
        }
        self.url = kept.to_string();
        self.url.len()
    }

    pub fn peer_or_insert(&mut self, host_id: &str, now: Instant) -> &mut Peer {
        let peer = self
            .peers
            .entry(host_id.to_string())
            .or_insert_with(|| Peer::new(now));
        peer.updated = now;
        peer
    }

    /// Removes a peer; when it was the source the source is cleared too.
    /// Returns whether it was the source.
    pub fn remove_peer(&mut self, host_id: &str) -> bool {
        self.peers.remove(host_id);
        self.clear_source_if(host_id)
    }

    pub fn is_idle(&self, now: Instant, ttl: Duration) -> bool {
        self.peers.is_empty() && now.saturating_duration_since(self.last_active) >= ttl
    }
}

/// What of a URL the scheduler keeps: up to the query, at most
/// `MAX_KEPT_URL` bytes (cut on a character boundary).
pub fn kept_url(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let mut end = end.min(MAX_KEPT_URL);
    while !url.is_char_boundary(end) {
        end -= 1;
    }
    &url[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_kept_without_query_and_bounded() {
        assert_eq!(
            kept_url("http://o/a?Expires=99&Signature=SECRET"),
            "http://o/a"
        );
        assert_eq!(kept_url("http://o/a#frag"), "http://o/a");
        let long = format!("http://o/{}", "é".repeat(2000));
        assert!(kept_url(&long).len() <= MAX_KEPT_URL);
    }

    #[test]
    fn given_parents_are_remembered_for_a_while_and_bounded() {
        let now = Instant::now();
        let mut p = Peer::new(now);
        p.give("a", now);
        assert!(p.was_given("a", now + Duration::from_secs(1)));
        assert!(!p.was_given("b", now));
        assert!(!p.was_given("a", now + GIVEN_FOR));
        for i in 0..200 {
            p.give(&format!("h{i}"), now + Duration::from_millis(i));
        }
        assert!(p.given.len() <= MAX_GIVEN_PER_PEER);
        assert!(p.was_given("h199", now + Duration::from_secs(1)));
    }

    use super::*;

    #[test]
    fn elections_count_only_changes() {
        let now = Instant::now();
        let mut t = Task::new("t", now);
        assert!(t.elect_source("a", now));
        assert!(!t.elect_source("a", now));
        assert!(t.elect_source("b", now));
        assert_eq!(t.source_elections, 2);
        assert!(!t.clear_source_if("a"));
        assert!(t.clear_source_if("b"));
        assert_eq!(t.source_id(), None);
    }

    #[test]
    fn source_failure_reporters_are_distinct_and_reset_on_election() {
        let now = Instant::now();
        let mut t = Task::new("t", now);
        assert_eq!(t.report_source_failure("x"), 0);
        t.elect_source("s", now);
        assert_eq!(t.report_source_failure("x"), 1);
        assert_eq!(t.report_source_failure("x"), 1);
        assert_eq!(t.report_source_failure("y"), 2);
        t.elect_source("s2", now);
        assert_eq!(t.report_source_failure("x"), 1);
    }

    #[test]
    fn failed_sources_are_forgotten_after_a_while() {
        let now = Instant::now();
        let mut t = Task::new("t", now);
        t.remember_failed_source("s", now);
        assert!(t.failed_as_source_recently("s", now + Duration::from_secs(10)));
        assert!(!t.failed_as_source_recently("s", now + SOURCE_FAILURE_MEMORY));
        assert!(!t.failed_as_source_recently("other", now));
    }

    #[test]
    fn blocks_expire() {
        let now = Instant::now();
        let mut p = Peer::new(now);
        p.block("a", now);
        assert!(p.is_blocked("a", now + Duration::from_secs(59)));
        assert!(!p.is_blocked("a", now + BLOCK_TTL));
        for i in 0..200 {
            p.block(&format!("h{i}"), now);
        }
        assert!(p.blocked.len() <= MAX_BLOCKED_PER_PEER);
        assert!(p.is_blocked("h199", now));
    }

    #[test]
    fn completeness_from_flag_or_bitmap() {
        let now = Instant::now();
        let mut p = Peer::new(now);
        for i in 0..3 {
            p.bitmap.set(i).unwrap();
        }
        assert!(!p.is_complete(4));
        assert!(!p.is_complete(0), "unknown shape: only the flag counts");
        assert!(p.is_complete(3));
        assert_eq!(p.finished(4), 3);
        p.complete = true;
        assert!(p.is_complete(0));
        assert_eq!(p.finished(10), 10);
    }

    #[test]
    fn shape_from_content_length_needs_piece_length() {
        let now = Instant::now();
        let mut t = Task::new("t", now);
        t.learn_content_length(100);
        assert!(!t.shape.known);
        assert_eq!(t.shape.content_length, 100);
        t.shape.piece_length = 30;
        t.learn_content_length(100);
        assert!(t.shape.known);
        assert_eq!(t.shape.piece_count, 4);

        t.update_shape(Some(&TaskShape::default()));
        assert!(t.shape.known, "unknown shape does not overwrite");
    }
}
