//! The piece digests the scheduler recorded from a task's back-to-source
//! peer, fetched in blocks and kept for one download: a parent's piece is
//! checked against these, never against the digest the parent sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::scheduler_client::SchedulerPool;

/// Pieces asked for in one call (the scheduler caps a call at 4096).
const BLOCK: u32 = 1024;
/// A block whose digests were asked for recently is not asked again
/// sooner: pieces whose digest is not recorded yet fall back to the
/// parent's claim instead of costing a call each.
const REASK_AFTER: Duration = Duration::from_millis(100);
/// A scheduler slower than this to answer does not hold up the piece.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// What one piece's bytes must hash to, as far as this node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Recorded from the back-to-source peer.
    Recorded(String),
    /// Nothing recorded (no scheduler, a restarted one, a task whose
    /// source did not report digests): only the parent's claim and the
    /// content's own digest, if it has one, can be checked.
    Unknown,
}

#[derive(Default)]
pub struct RecordedDigests {
    known: Mutex<HashMap<u32, String>>,
    asked: Mutex<HashMap<u32, Instant>>,
    /// One question at a time: pieces fetched at once wait for the answer
    /// instead of falling back to their parent's claim meanwhile.
    asking: tokio::sync::Mutex<()>,
}

impl RecordedDigests {
    pub async fn expected(
        &self,
        schedulers: &SchedulerPool,
        host_id: &str,
        task_id: &str,
        index: u32,
    ) -> Expected {
        if let Some(d) = self.lookup(index) {
            return Expected::Recorded(d);
        }
        if !schedulers.is_configured() {
            return Expected::Unknown;
        }
        let _asking = self.asking.lock().await;
        if let Some(d) = self.lookup(index) {
            return Expected::Recorded(d);
        }
        if !self.should_ask(index / BLOCK) {
            return Expected::Unknown;
        }
        let req = proto::GetPieceDigestsRequest {
            task_id: task_id.to_string(),
            host_id: host_id.to_string(),
            first: index / BLOCK * BLOCK,
            count: BLOCK,
        };
        match tokio::time::timeout(ASK_TIMEOUT, schedulers.get_piece_digests(req)).await {
            Ok(Ok(resp)) => self.learn(resp.digests),
            Ok(Err(e)) => tracing::debug!(error = %e, "recorded piece digests not available"),
            Err(_) => tracing::debug!("scheduler slow to tell recorded piece digests"),
        }
        self.lookup(index)
            .map_or(Expected::Unknown, Expected::Recorded)
    }

    /// Whether the source has reported any digest of this task yet.
    pub fn any_recorded(&self) -> bool {
        !self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn lookup(&self, index: u32) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .cloned()
    }

    fn should_ask(&self, block: u32) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match asked.get(&block) {
            Some(at) if now.duration_since(*at) < REASK_AFTER => false,
            _ => {
                asked.insert(block, now);
                true
            }
        }
    }

    fn learn(&self, digests: Vec<proto::PieceDigest>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for d in digests {
            known.insert(d.index, d.digest);
        }
    }
}

/// The verdict on a parent's piece: `actual` is what its bytes hash to,
/// `claimed` what the parent said they hash to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Good,
    /// The bytes broke against the parent's own claim (no record to judge
    /// by, or the claim is the recorded digest): a damaged transfer.
    Damaged,
    /// The bytes fail the recorded digest under a claim of the parent's
    /// own: evidence the scheduler may quarantine the parent on.
    Forged,
    /// Nothing recorded for this piece yet although the task has a source
    /// that records: only the source itself is taken at its word, so the
    /// piece is asked of this parent again later.
    Unverified,
}

/// Where a piece came from, for judging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The parent is the task's back-to-source peer.
    pub is_source: bool,
    /// The task has a source that records digests (one is a parent, or
    /// digests of this task are recorded).
    pub task_has_source: bool,
}

pub fn judge(expected: &Expected, actual: &str, claimed: &str, sender: Sender) -> Verdict {
    match expected {
        Expected::Unknown if sender.task_has_source && !sender.is_source => Verdict::Unverified,
        Expected::Recorded(recorded) if actual == recorded => Verdict::Good,
        Expected::Recorded(recorded) if claimed != recorded => Verdict::Forged,
        Expected::Recorded(_) => Verdict::Damaged,
        Expected::Unknown if actual == claimed => Verdict::Good,
        Expected::Unknown => Verdict::Damaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANYONE: Sender = Sender {
        is_source: false,
        task_has_source: false,
    };

    #[test]
    fn unrecorded_pieces_are_taken_from_the_source_only() {
        let unknown = Expected::Unknown;
        let peer = Sender {
            is_source: false,
            task_has_source: true,
        };
        let source = Sender {
            is_source: true,
            task_has_source: true,
        };
        assert_eq!(
            judge(&unknown, "sha256:a", "sha256:a", peer),
            Verdict::Unverified
        );
        assert_eq!(
            judge(&unknown, "sha256:a", "sha256:a", source),
            Verdict::Good
        );
        let rec = Expected::Recorded("sha256:a".into());
        assert_eq!(judge(&rec, "sha256:a", "sha256:a", peer), Verdict::Good);
    }

    #[test]
    fn the_record_judges_not_the_parent() {
        let rec = Expected::Recorded("sha256:good".into());
        assert_eq!(
            judge(&rec, "sha256:good", "sha256:good", ANYONE),
            Verdict::Good
        );
        // Right bytes under a wrong claim: the bytes are what counts.
        assert_eq!(
            judge(&rec, "sha256:good", "sha256:x", ANYONE),
            Verdict::Good
        );
        // Forged bytes vouched for by the parent's own digest.
        assert_eq!(
            judge(&rec, "sha256:bad", "sha256:bad", ANYONE),
            Verdict::Forged
        );
        // Bytes that broke under the recorded claim.
        assert_eq!(
            judge(&rec, "sha256:bad", "sha256:good", ANYONE),
            Verdict::Damaged
        );
        assert_eq!(
            judge(&Expected::Unknown, "sha256:a", "sha256:a", ANYONE),
            Verdict::Good
        );
        assert_eq!(
            judge(&Expected::Unknown, "sha256:a", "sha256:b", ANYONE),
            Verdict::Damaged
        );
    }

    #[test]
    fn blocks_are_not_asked_again_at_once() {
        let r = RecordedDigests::default();
        assert!(r.should_ask(0));
        assert!(!r.should_ask(0));
        assert!(r.should_ask(1));
        r.learn(vec![proto::PieceDigest {
            index: 5,
            digest: "sha256:x".into(),
        }]);
        assert_eq!(r.lookup(5).as_deref(), Some("sha256:x"));
        assert_eq!(r.lookup(6), None);
    }
}
