//! The swarm exchange of one download as a state machine: the parents it
//! knows, the pieces in flight, what to ask whom next, what an answer
//! changes, and when to give up on peers for the origin. No I/O here: the
//! downloader sends the asks, stores the pieces, talks to the scheduler and
//! feeds the answers back in.

use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

use crate::demand::Selection;
use crate::pacer::Pacer;
use crate::peer_client::PeerError;
use crate::piece::Bitmap;
use crate::piece_order;
use crate::recorded_digests::Sender;
use crate::swarm::{
    describe_parents, holders_of, merge_parents, only_the_origin_has, parents_cover, pick_parent,
    Asking, ParentSlot, PieceAvoidance, COOLDOWN,
};

/// How a failed parent is kept out of the rest of the download.
const BLOCKED_FOR: Duration = Duration::from_secs(3600);
/// How long a parent that went silent on a piece is asked nothing more.
const STALLED_REST: Duration = Duration::from_secs(5);

/// The limits an exchange works within.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeLimits {
    /// Pieces in flight at once from complete parents and sources, and
    /// as many again from parents still downloading.
    pub concurrent_pieces: usize,
    /// Pieces in flight at once from one parent.
    pub per_parent: usize,
    /// No piece stored for this long: peers are not getting anywhere.
    pub stall_timeout: Duration,
    /// Byte rate of a prefetch (background pieces nobody waits for).
    pub prefetch_rate: u64,
}

/// Which of the two budgets of pieces in flight a pass of asks fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// Parents still downloading.
    Downloading,
    /// Complete parents and sources.
    Everyones,
}

/// One piece to ask of one parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceAsk {
    pub index: u32,
    pub parent: String,
    pub base: String,
    pub sender: Sender,
    /// The parent holds the piece (complete, or its bitmap says so), so
    /// it answers at once; otherwise it may wait for the piece to arrive.
    pub holds: bool,
}

/// What the driver does with a parent's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A verified piece: store it.
    Store,
    /// "Not now" of some kind: the piece is asked again later.
    Retry,
    /// The parent lacks the piece: tell the scheduler, ask others.
    Lacking,
    /// The parent failed (bad bytes, gone): it is blocked; tell the scheduler.
    Failed,
}

/// The scheduler's reply to a report or a request for parents.
pub enum SchedulerReply {
    Parents(Vec<proto::Parent>),
    /// Go to the origin (or a seed): the swarm is not the way.
    Elsewhere,
    /// No scheduler answered.
    Silent,
}

/// What a fresh parent list means for the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOutcome {
    Merged,
    Leave(&'static str),
    /// No scheduler: ask the parents for their bitmaps, then
    /// [`Exchange::after_parents_asked`].
    SchedulerLost,
}

pub struct Exchange {
    limits: ExchangeLimits,
    slots: Vec<ParentSlot>,
    blocked: HashSet<String>,
    avoid: PieceAvoidance,
    inflight: HashSet<u32>,
    /// Paced prefetch pieces in flight (at most one).
    background: HashSet<u32>,
    pacer: Pacer,
    scheduler_lost_since: Option<Instant>,
    last_progress: Instant,
    salt: u64,
    pub stats: ExchangeStats,
}

impl Exchange {
    pub fn new(parents: &[proto::Parent], limits: ExchangeLimits, host_id: &str) -> Self {
        let mut exchange = Exchange {
            limits,
            slots: Vec::new(),
            blocked: HashSet::new(),
            avoid: PieceAvoidance::default(),
            inflight: HashSet::new(),
            background: HashSet::new(),
            pacer: Pacer::new(limits.prefetch_rate),
            scheduler_lost_since: None,
            last_progress: Instant::now(),
            salt: piece_order::salt_for(host_id),
            stats: ExchangeStats::default(),
        };
        exchange.merge(parents);
        exchange
    }

    pub fn slots(&self) -> &[ParentSlot] {
        &self.slots
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn merge(&mut self, fresh: &[proto::Parent]) {
        merge_parents(&mut self.slots, fresh, &self.blocked);
    }

    /// The exchange proper begins (the task's length is known): the stall
    /// clock and the figures start now.
    pub fn begin(&mut self, now: Instant) {
        self.last_progress = now;
        self.stats = ExchangeStats::default();
    }

    /// Starts the stall clock afresh: the download is idle by choice, and
    /// idle is not a stall.
    pub fn progressed(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// The pieces to ask for now, and of whom: urgent ones first, then
    /// (a full download) the background in the swarm's piece order, or (a
    /// prefetch) one paced piece at a time; within the total and per-parent
    /// limits, never a piece already in flight. `complete_last`: prefer
    /// parents still downloading (off without a scheduler, when only the
    /// source's pieces can be taken), and fill the two budgets apart: the
    /// downloading parents' with what they hold, rarest first; complete
    /// parents' and sources' with what no downloading parent holds first.
    /// In one pass, a piece a child held but was busy sending went to a
    /// complete parent instead, and complete parents sent the same pieces
    /// over and over (669 copies of 257 pieces to seven children).
    pub fn next_asks(
        &mut self,
        selection: &Selection,
        piece_length: u32,
        complete_last: bool,
        now: Instant,
    ) -> Vec<PieceAsk> {
        let urgent = selection.urgent.iter().map(|&i| (i, true));
        if selection.capped {
            let order: Vec<(u32, bool)> = selection.ordered().collect();
            return self.ask_in_order(order, piece_length, complete_last, true, None, now);
        }
        let holders = |index: u32| holders_of(&self.slots, &self.blocked, index, complete_last);
        let order = piece_order::exchange_order(&selection.background, holders, self.salt);
        let trading: Vec<(u32, bool)> = urgent
            .clone()
            .chain(order.trading().map(|i| (i, false)))
            .collect();
        if !complete_last {
            return self.ask_in_order(trading, piece_length, false, false, None, now);
        }
        let injecting: Vec<(u32, bool)> = urgent
            .chain(order.injecting().map(|i| (i, false)))
            .collect();
        let mut asks = self.ask_in_order(
            trading,
            piece_length,
            true,
            false,
            Some(Budget::Downloading),
            now,
        );
        asks.extend(self.ask_in_order(
            injecting,
            piece_length,
            true,
            false,
            Some(Budget::Everyones),
            now,
        ));
        asks
    }

    /// Asks for the pieces of `order` in turn, of parents whose budget is
    /// `only` (or any, with `None`), until the budgets are spent.
    fn ask_in_order(
        &mut self,
        order: Vec<(u32, bool)>,
        piece_length: u32,
        complete_last: bool,
        capped: bool,
        only: Option<Budget>,
        now: Instant,
    ) -> Vec<PieceAsk> {
        let mut asks = Vec::new();
        for (index, urgent) in order {
            if self.inflight.contains(&index) {
                continue;
            }
            let mut asking = self.asking(complete_last);
            match only {
                Some(Budget::Downloading) => asking.everyones_open = false,
                Some(Budget::Everyones) => asking.downloading_open = false,
                None => {}
            }
            if !asking.everyones_open && !asking.downloading_open {
                break;
            }
            let paced = !urgent && capped;
            if paced && (!self.background.is_empty() || !self.pacer.ready(now)) {
                break;
            }
            let Some(i) = pick_parent(&self.slots, &self.blocked, index, asking, now, &self.avoid)
            else {
                continue;
            };
            if paced {
                self.pacer.spend(u64::from(piece_length), now);
                self.background.insert(index);
            }
            self.slots[i].inflight += 1;
            self.inflight.insert(index);
            let task_has_source = self.slots.iter().any(|s| s.is_source);
            let slot = &self.slots[i];
            asks.push(PieceAsk {
                index,
                parent: slot.id.clone(),
                base: slot.base.clone(),
                sender: Sender {
                    is_source: slot.is_source,
                    task_has_source,
                },
                holds: slot.complete || slot.bitmap.contains(index),
            });
        }
        asks
    }

    /// The budgets of pieces in flight: with `complete_last`, one for
    /// complete parents and sources and one as large for parents still
    /// downloading. Everyone's parents are shared by every child and send
    /// each one slowly; were all of a child's pieces in flight from them,
    /// it could ask nothing of the downloading peers that meanwhile got
    /// pieces, and their uplinks would idle (newcomers' uplinks ran at
    /// 17-61 % after one host had the image). Without a scheduler, one
    /// budget for all.
    fn asking(&self, complete_last: bool) -> Asking {
        let budget = self.limits.concurrent_pieces;
        let mut asking = Asking {
            per_parent: self.limits.per_parent,
            complete_last,
            everyones_open: true,
            downloading_open: true,
        };
        if !complete_last {
            let open = self.inflight.len() < budget;
            asking.everyones_open = open;
            asking.downloading_open = open;
            return asking;
        }
        let everyones: usize = self
            .slots
            .iter()
            .filter(|s| asking.is_everyones(s))
            .map(|s| s.inflight)
            .sum();
        let downloading = self.inflight.len().saturating_sub(everyones);
        asking.everyones_open = everyones < budget;
        asking.downloading_open = downloading < budget;
        asking
    }

    /// Nothing in flight and every wanted piece refused by the parents
    /// that had it, with none other holding it: only the origin can help.
    pub fn only_the_origin_has(&self, selection: &Selection) -> bool {
        self.inflight.is_empty()
            && only_the_origin_has(
                &self.slots,
                &self.blocked,
                &self.avoid,
                selection.ordered().map(|(i, _)| i),
            )
    }

    /// A paced prefetch piece is due later: when to wake up for it.
    pub fn prefetch_due(&self, selection: &Selection, now: Instant) -> Option<Instant> {
        let waits = selection.capped
            && selection
                .background
                .iter()
                .any(|i| !self.inflight.contains(i))
            && self.background.is_empty()
            && !self.pacer.ready(now);
        waits.then_some(self.pacer.next)
    }

    /// No piece stored for the stall timeout.
    pub fn stalled(&self, now: Instant) -> bool {
        now.duration_since(self.last_progress) > self.limits.stall_timeout
    }

    pub fn below_concurrency(&self) -> bool {
        self.inflight.len() < self.limits.concurrent_pieces
    }

    /// Takes in a parent's answer for piece `index`. `scheduler_lost`: no
    /// scheduler answers, so no record will vouch for a child's copy.
    pub fn on_answer<T>(
        &mut self,
        index: u32,
        parent: &str,
        result: &Result<T, PeerError>,
        scheduler_lost: bool,
        now: Instant,
    ) -> Answer {
        self.stats.count(result);
        self.inflight.remove(&index);
        self.background.remove(&index);
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == parent) {
            slot.inflight = slot.inflight.saturating_sub(1);
            match result {
                Err(PeerError::Unverified(_)) => {
                    self.avoid.defer(parent, index, now + COOLDOWN);
                    // With a scheduler, the record catches up within
                    // moments; without one it never will.
                    if scheduler_lost {
                        self.avoid.source_only.insert(index);
                    }
                }
                Err(PeerError::PieceBusy) => self.avoid.defer(parent, index, now + COOLDOWN),
                // Frozen or badly overloaded: others first for a while.
                Err(PeerError::Stalled(_)) => slot.cooldown_until = Some(now + STALLED_REST),
                Err(e) if e.is_soft() => slot.cooldown_until = Some(now + COOLDOWN),
                _ => {}
            }
        }
        match result {
            Ok(_) => {
                self.last_progress = now;
                Answer::Store
            }
            Err(e) if e.is_soft() => Answer::Retry,
            Err(PeerError::NotFound) => {
                // It discarded a damaged copy, say: ask others, keep it
                // for the rest.
                self.avoid.lacking.insert((parent.to_string(), index));
                Answer::Lacking
            }
            Err(_) => {
                self.blocked.insert(parent.to_string());
                // Blocked parents stay listed only while pieces from them
                // are still in flight, and are never picked again.
                for slot in self.slots.iter_mut().filter(|s| s.id == parent) {
                    slot.cooldown_until = Some(now + BLOCKED_FOR);
                }
                let blocked = &self.blocked;
                self.slots
                    .retain(|s| !blocked.contains(&s.id) || s.inflight > 0);
                Answer::Failed
            }
        }
    }

    fn all_blocked(&self) -> bool {
        self.slots.iter().all(|s| self.blocked.contains(&s.id))
    }

    /// The scheduler's reply to a report of a `Lacking` or `Failed`
    /// answer; `Some(reason)` to leave the swarm for the origin.
    pub fn after_report(&mut self, answer: Answer, reply: SchedulerReply) -> Option<&'static str> {
        match (reply, answer) {
            (SchedulerReply::Parents(fresh), _) => {
                self.merge(&fresh);
                None
            }
            (SchedulerReply::Elsewhere, Answer::Lacking) => {
                Some("elected back-to-source: no parent holds a piece")
            }
            (SchedulerReply::Elsewhere, _) => Some("elected back-to-source after a parent failed"),
            (SchedulerReply::Silent, Answer::Failed) if self.all_blocked() => {
                Some("every parent failed and no scheduler answers")
            }
            (SchedulerReply::Silent, _) => None,
        }
    }

    /// The scheduler's reply to the periodic request for parents.
    pub fn on_parent_list(&mut self, reply: SchedulerReply, now: Instant) -> ListOutcome {
        match reply {
            SchedulerReply::Parents(fresh) => {
                self.scheduler_lost_since = None;
                self.stats.parent_lists += 1;
                self.merge(&fresh);
                ListOutcome::Merged
            }
            SchedulerReply::Elsewhere => ListOutcome::Leave("elected back-to-source"),
            SchedulerReply::Silent if self.all_blocked() => {
                ListOutcome::Leave("no parents and no scheduler")
            }
            SchedulerReply::Silent => {
                self.stats.scheduler_misses += 1;
                self.scheduler_lost_since.get_or_insert(now);
                ListOutcome::SchedulerLost
            }
        }
    }

    /// The parents to ask for their bitmaps while no scheduler relays them:
    /// `(id, base)` of those still downloading and not blocked.
    pub fn parents_to_ask(&self) -> Vec<(String, String)> {
        self.slots
            .iter()
            .filter(|s| !s.complete && !self.blocked.contains(&s.id))
            .map(|s| (s.id.clone(), s.base.clone()))
            .collect()
    }

    /// A parent told its bitmap itself.
    pub fn parent_told(&mut self, id: &str, bitmap: Bitmap, complete: bool) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
            slot.bitmap = bitmap;
            slot.complete = complete;
        }
    }

    /// Without a scheduler the swarm carries on with what parents say of
    /// themselves; but pieces held only by peers not on the list never
    /// come, and a reader waiting for one would stall. Not for long: after
    /// a third of the stall timeout, leave when the parents do not cover
    /// `missing`.
    pub fn after_parents_asked(&self, missing: &[u32], now: Instant) -> Option<&'static str> {
        let since = self.scheduler_lost_since?;
        (now.duration_since(since) > self.limits.stall_timeout / 3
            && !parents_cover(&self.slots, &self.blocked, missing))
        .then_some("scheduler unreachable and no parent holds what is missing")
    }

    /// Why the exchange stalled, for the log line an operator reads.
    pub fn stall_report(&self, now: Instant) -> StallReport {
        StallReport {
            stats: self.stats.summary(),
            parents: describe_parents(&self.slots, &self.blocked, now),
            inflight: self.inflight.len(),
            deferred: self.avoid.deferred.len(),
            lacking: self.avoid.lacking.len(),
            scheduler_lost: self.scheduler_lost_since.is_some(),
        }
    }
}

pub struct StallReport {
    pub stats: String,
    pub parents: String,
    pub inflight: usize,
    pub deferred: usize,
    pub lacking: usize,
    pub scheduler_lost: bool,
}

/// How a download from peers went, for tuning: how long it had fewer
/// pieces in flight than allowed, and how often parents said "later".
pub struct ExchangeStats {
    started: Instant,
    starved: Duration,
    starved_since: Option<Instant>,
    not_ready: u32,
    busy: u32,
    piece_busy: u32,
    unverified: u32,
    stored: u32,
    failed: u32,
    parent_lists: u32,
    scheduler_misses: u32,
}

impl Default for ExchangeStats {
    fn default() -> Self {
        ExchangeStats {
            started: Instant::now(),
            starved: Duration::ZERO,
            starved_since: None,
            not_ready: 0,
            busy: 0,
            piece_busy: 0,
            unverified: 0,
            stored: 0,
            failed: 0,
            parent_lists: 0,
            scheduler_misses: 0,
        }
    }
}

impl ExchangeStats {
    pub fn start_starved(&mut self) {
        self.starved_since = Some(Instant::now());
    }

    pub fn end_starved(&mut self) {
        if let Some(since) = self.starved_since.take() {
            self.starved += since.elapsed();
        }
    }

    fn count<T>(&mut self, result: &Result<T, PeerError>) {
        match result {
            Err(PeerError::NotReady) => self.not_ready += 1,
            Err(PeerError::Busy) => self.busy += 1,
            Err(PeerError::PieceBusy) => self.piece_busy += 1,
            Err(PeerError::Unverified(_)) => self.unverified += 1,
            Ok(_) => self.stored += 1,
            Err(_) => self.failed += 1,
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} s: {} stored, {} not ready, {} busy, {} piece busy, {} unverified, {} failed; {} parent lists, {} scheduler misses",
            self.started.elapsed().as_secs(),
            self.stored,
            self.not_ready,
            self.busy,
            self.piece_busy,
            self.unverified,
            self.failed,
            self.parent_lists,
            self.scheduler_misses,
        )
    }

    pub fn log(&self) {
        tracing::debug!(
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            below_concurrency_ms = self.starved.as_millis() as u64,
            not_ready = self.not_ready,
            busy = self.busy,
            piece_busy = self.piece_busy,
            stored = self.stored,
            parent_lists = self.parent_lists,
            "pieces from peers done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(id: &str, pieces: &[u32], complete: bool, is_source: bool) -> proto::Parent {
        let bitmap: Bitmap = pieces.iter().copied().collect();
        proto::Parent {
            host: Some(proto::Host {
                id: id.into(),
                ip: "10.0.0.1".into(),
                peer_port: 65002,
                ..Default::default()
            }),
            bitmap: bitmap.as_bytes().to_vec(),
            finished_pieces: pieces.len() as u32,
            complete,
            is_source,
        }
    }

    fn limits() -> ExchangeLimits {
        ExchangeLimits {
            concurrent_pieces: 4,
            per_parent: 2,
            stall_timeout: Duration::from_secs(30),
            prefetch_rate: 1 << 20,
        }
    }

    fn full(pieces: std::ops::Range<u32>) -> Selection {
        Selection {
            urgent: Vec::new(),
            background: pieces.collect(),
            capped: false,
        }
    }

    fn asked(asks: &[PieceAsk]) -> Vec<(u32, &str)> {
        asks.iter().map(|a| (a.index, a.parent.as_str())).collect()
    }

    const OK: Result<(), PeerError> = Ok(());

    #[test]
    fn asks_stay_within_the_total_and_per_parent_limits() {
        let parents = [
            parent("a", &[0, 1, 2, 3, 4, 5], false, false),
            parent("b", &[0, 1, 2, 3, 4, 5], false, false),
            parent("c", &[0, 1, 2, 3, 4, 5], false, false),
        ];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        let asks = ex.next_asks(&full(0..6), 1024, true, now);
        assert_eq!(asks.len(), 4, "{:?}", asked(&asks));
        for id in ["a", "b", "c"] {
            assert!(asks.iter().filter(|a| a.parent == id).count() <= 2);
        }
        // Nothing more while all four are in flight, and never a piece twice.
        assert!(ex.next_asks(&full(0..6), 1024, true, now).is_empty());
        let first = asks[0].clone();
        assert_eq!(
            ex.on_answer(first.index, &first.parent, &OK, false, now),
            Answer::Store
        );
        // The selection is what is still missing: the stored piece is not.
        let mut missing = full(0..6);
        missing.background.retain(|&i| i != first.index);
        let more = ex.next_asks(&missing, 1024, true, now);
        assert_eq!(more.len(), 1);
        assert!(asks.iter().all(|a| a.index != more[0].index));
    }

    #[test]
    fn downloading_parents_have_a_budget_of_their_own() {
        // Complete parents and the source hold 4 pieces in flight; a peer
        // still downloading gets asked on top, up to a budget as large.
        let held: Vec<u32> = (0..12).collect();
        let parents = [
            parent("seed", &[], true, true),
            parent("first", &[], true, false),
            parent("a", &held, false, false),
            parent("b", &held, false, false),
            parent("c", &held, false, false),
        ];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        let asks = ex.next_asks(&full(0..16), 1024, true, now);
        let to = |id: &str| asks.iter().filter(|a| a.parent == id).count();
        assert_eq!(asks.len(), 8, "{:?}", asked(&asks));
        assert_eq!(to("seed") + to("first"), 4, "{:?}", asked(&asks));
        assert_eq!(to("a") + to("b") + to("c"), 4, "{:?}", asked(&asks));
        assert!(ex.next_asks(&full(0..16), 1024, true, now).is_empty());
        // A piece from a downloading peer frees its budget only.
        let from_a = asks.iter().find(|a| a.parent == "a").unwrap().clone();
        ex.on_answer(from_a.index, "a", &OK, false, now);
        let mut missing = full(0..16);
        missing.background.retain(|&i| i != from_a.index);
        let more = ex.next_asks(&missing, 1024, true, now);
        assert_eq!(more.len(), 1, "{:?}", asked(&more));
        assert!(["a", "b", "c"].contains(&more[0].parent.as_str()));
        // Without a scheduler there is one budget for all.
        let mut alone = Exchange::new(&parents, limits(), "me");
        assert_eq!(alone.next_asks(&full(0..16), 1024, false, now).len(), 4);
    }

    #[test]
    fn complete_parents_are_asked_for_what_no_downloading_parent_holds() {
        // "a" holds 0-7 but may send only two at once; "seed" holds all.
        // Pieces a holds and is busy with are not taken from the seed while
        // pieces only the seed holds are missing: those it brings.
        let held: Vec<u32> = (0..8).collect();
        let parents = [
            parent("seed", &[], true, false),
            parent("a", &held, false, false),
        ];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let asks = ex.next_asks(&full(0..16), 1024, true, Instant::now());
        let of = |id: &str| -> Vec<u32> {
            asks.iter()
                .filter(|a| a.parent == id)
                .map(|a| a.index)
                .collect()
        };
        assert_eq!(of("a").len(), 2, "{:?}", asked(&asks));
        assert!(of("a").iter().all(|i| held.contains(i)));
        // Piece 0 (the lowest missing, for a streaming reader) may come
        // from the seed; the others it sends are ones "a" lacks.
        let seed = of("seed");
        assert_eq!(seed.len(), 2, "{:?}", asked(&asks));
        assert!(
            seed.iter().filter(|&&i| i != 0).all(|i| *i >= 8),
            "{:?}",
            asked(&asks)
        );
    }

    #[test]
    fn urgent_pieces_go_first() {
        let parents = [parent("a", &[0, 1, 2, 3, 4, 5, 6, 7], true, false)];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let selection = Selection {
            urgent: vec![6, 7],
            background: vec![0, 1, 2, 3, 4, 5],
            capped: false,
        };
        let asks = ex.next_asks(&selection, 1024, true, Instant::now());
        assert_eq!(asked(&asks), vec![(6, "a"), (7, "a")]);
    }

    #[test]
    fn a_prefetch_goes_one_paced_piece_at_a_time() {
        let parents = [parent("a", &[0, 1, 2, 3], true, false)];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let prefetch = Selection {
            urgent: Vec::new(),
            background: vec![0, 1, 2, 3],
            capped: true,
        };
        let now = Instant::now();
        assert_eq!(
            asked(&ex.next_asks(&prefetch, 1 << 20, true, now)),
            vec![(0, "a")]
        );
        assert!(ex.next_asks(&prefetch, 1 << 20, true, now).is_empty());
        ex.on_answer(0, "a", &OK, false, now);
        let prefetch = Selection {
            background: vec![1, 2, 3],
            ..prefetch
        };
        // Stored, but the pace (1 MiB/s for 1 MiB pieces) holds the next one.
        let due = ex.prefetch_due(&prefetch, now).expect("paced");
        assert!(due > now && due <= now + Duration::from_secs(1));
        assert!(ex.next_asks(&prefetch, 1 << 20, true, now).is_empty());
        let later = now + Duration::from_secs(1);
        assert_eq!(
            asked(&ex.next_asks(&prefetch, 1 << 20, true, later)),
            vec![(1, "a")]
        );
    }

    #[test]
    fn an_unverified_piece_is_asked_of_the_source_only_without_a_scheduler() {
        let parents = [
            parent("child", &[0], false, false),
            parent("source", &[], false, true),
        ];
        let now = Instant::now();
        let unverified: Result<(), PeerError> = Err(PeerError::Unverified(0));
        // With a scheduler: the child is left alone a moment, then asked again.
        let mut ex = Exchange::new(&parents, limits(), "me");
        assert_eq!(
            asked(&ex.next_asks(&full(0..1), 1024, true, now)),
            vec![(0, "child")]
        );
        assert_eq!(
            ex.on_answer(0, "child", &unverified, false, now),
            Answer::Retry
        );
        assert_eq!(
            asked(&ex.next_asks(&full(0..1), 1024, true, now)),
            vec![(0, "source")]
        );
        ex.on_answer(0, "source", &Err::<(), _>(PeerError::NotReady), false, now);
        let later = now + COOLDOWN * 2;
        assert_eq!(
            asked(&ex.next_asks(&full(0..1), 1024, true, later)),
            vec![(0, "child")]
        );
        // Without one: the source only, however long it takes.
        let mut ex = Exchange::new(&parents, limits(), "me");
        ex.next_asks(&full(0..1), 1024, false, now);
        ex.on_answer(0, "child", &unverified, true, now);
        for step in 1..5 {
            let at = now + COOLDOWN * step * 2;
            let asks = ex.next_asks(&full(0..1), 1024, false, at);
            assert_eq!(asked(&asks), vec![(0, "source")]);
            ex.on_answer(0, "source", &Err::<(), _>(PeerError::NotReady), true, at);
        }
    }

    #[test]
    fn a_silent_parent_rests_and_comes_back() {
        let parents = [
            parent("frozen", &[0, 1, 2, 3], true, false),
            parent("live", &[0, 1, 2, 3], false, false),
        ];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        let asks = ex.next_asks(&full(0..4), 1024, false, now);
        let held = asks.iter().find(|a| a.parent == "frozen").unwrap().index;
        assert!(asks.iter().all(|a| a.holds), "both hold every piece");
        let silent: Result<(), PeerError> = Err(PeerError::Stalled(Duration::from_secs(1)));
        // Not a failure (under load a live parent can be that slow): the
        // piece is asked again, elsewhere while the parent rests.
        assert_eq!(
            ex.on_answer(held, "frozen", &silent, false, now),
            Answer::Retry
        );
        let soon = now + Duration::from_secs(1);
        let again = ex.next_asks(&full(0..4), 1024, false, soon);
        assert!(
            again.iter().all(|a| a.parent == "live"),
            "{:?}",
            asked(&again)
        );
        for a in asks.iter().chain(&again).filter(|a| a.index != held) {
            ex.on_answer(a.index, &a.parent, &OK, false, soon);
        }
        let rested = now + STALLED_REST + Duration::from_millis(1);
        let later = ex.next_asks(&full(0..4), 1024, false, rested);
        assert!(
            later.iter().any(|a| a.parent == "frozen"),
            "{:?}",
            asked(&later)
        );
    }

    #[test]
    fn a_failed_parent_is_never_asked_again() {
        let parents = [
            parent("bad", &[0, 1, 2, 3], true, false),
            parent("good", &[0, 1, 2, 3], false, false),
        ];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        let asks = ex.next_asks(&full(0..4), 1024, false, now);
        let from_bad: Vec<u32> = asks
            .iter()
            .filter(|a| a.parent == "bad")
            .map(|a| a.index)
            .collect();
        assert!(!from_bad.is_empty());
        let forged: Result<(), PeerError> = Err(PeerError::DigestMismatch);
        assert_eq!(
            ex.on_answer(from_bad[0], "bad", &forged, false, now),
            Answer::Failed
        );
        // Its fresh listing by the scheduler does not bring it back.
        assert_eq!(
            ex.after_report(Answer::Failed, SchedulerReply::Parents(parents.to_vec())),
            None
        );
        for a in &asks {
            ex.on_answer(a.index, &a.parent, &OK, false, now);
        }
        let later = now + Duration::from_secs(10);
        for _ in 0..3 {
            let asks = ex.next_asks(&full(0..4), 1024, false, later);
            assert!(
                asks.iter().all(|a| a.parent == "good"),
                "{:?}",
                asked(&asks)
            );
            for a in &asks {
                ex.on_answer(
                    a.index,
                    &a.parent,
                    &Err::<(), _>(PeerError::Busy),
                    false,
                    later,
                );
            }
        }
    }

    #[test]
    fn every_parent_failed_and_no_scheduler_means_the_origin() {
        let parents = [parent("only", &[0, 1], true, false)];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        let asks = ex.next_asks(&full(0..2), 1024, true, now);
        let gone: Result<(), PeerError> = Err(PeerError::Connect("refused".into()));
        assert_eq!(
            ex.on_answer(asks[0].index, "only", &gone, false, now),
            Answer::Failed
        );
        // A piece still in flight keeps it listed, but it is blocked.
        assert_eq!(
            ex.after_report(Answer::Failed, SchedulerReply::Silent),
            Some("every parent failed and no scheduler answers")
        );
        // With a scheduler's new list instead, the exchange goes on.
        let mut ex = Exchange::new(&parents, limits(), "me");
        ex.next_asks(&full(0..2), 1024, true, now);
        ex.on_answer(0, "only", &gone, false, now);
        let fresh = vec![parent("other", &[0, 1], true, false)];
        assert_eq!(
            ex.after_report(Answer::Failed, SchedulerReply::Parents(fresh)),
            None
        );
        assert_eq!(
            ex.after_report(Answer::Failed, SchedulerReply::Elsewhere),
            Some("elected back-to-source after a parent failed")
        );
    }

    #[test]
    fn a_piece_every_holder_lacks_is_left_to_the_origin() {
        let parents = [parent("a", &[0, 1], false, false)];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        let wanted = full(1..2);
        assert_eq!(
            asked(&ex.next_asks(&wanted, 1024, true, now)),
            vec![(1, "a")]
        );
        assert!(!ex.only_the_origin_has(&wanted), "in flight");
        let lacking: Result<(), PeerError> = Err(PeerError::NotFound);
        assert_eq!(ex.on_answer(1, "a", &lacking, false, now), Answer::Lacking);
        assert_eq!(
            ex.after_report(Answer::Lacking, SchedulerReply::Silent),
            None
        );
        assert!(ex.next_asks(&wanted, 1024, true, now).is_empty());
        assert!(ex.only_the_origin_has(&wanted));
        // A new parent holding it changes that.
        ex.merge(&[
            parent("a", &[0, 1], false, false),
            parent("b", &[1], false, false),
        ]);
        assert!(!ex.only_the_origin_has(&wanted));
        assert_eq!(
            asked(&ex.next_asks(&wanted, 1024, true, now)),
            vec![(1, "b")]
        );
    }

    #[test]
    fn no_stored_piece_for_the_stall_timeout_is_a_stall_but_idling_is_not() {
        let parents = [parent("a", &[0], true, false)];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let start = Instant::now();
        ex.begin(start);
        assert!(!ex.stalled(start + Duration::from_secs(30)));
        assert!(ex.stalled(start + Duration::from_secs(31)));
        ex.progressed(start + Duration::from_secs(31));
        assert!(!ex.stalled(start + Duration::from_secs(40)));
        ex.next_asks(&full(0..1), 1024, true, start);
        let busy: Result<(), PeerError> = Err(PeerError::Busy);
        ex.on_answer(0, "a", &busy, false, start + Duration::from_secs(60));
        assert!(
            ex.stalled(start + Duration::from_secs(62)),
            "a 'later' is no progress"
        );
        ex.on_answer(0, "a", &OK, false, start + Duration::from_secs(62));
        assert!(!ex.stalled(start + Duration::from_secs(62)));
    }

    #[test]
    fn without_a_scheduler_the_exchange_leaves_when_parents_do_not_cover_the_rest() {
        let parents = [parent("a", &[0], false, false)];
        let mut ex = Exchange::new(&parents, limits(), "me");
        let now = Instant::now();
        assert_eq!(
            ex.on_parent_list(SchedulerReply::Silent, now),
            ListOutcome::SchedulerLost
        );
        assert_eq!(
            ex.parents_to_ask(),
            vec![("a".to_string(), "10.0.0.1:65002".to_string())]
        );
        let soon = now + Duration::from_secs(5);
        assert_eq!(
            ex.after_parents_asked(&[1], soon),
            None,
            "not yet a third of the timeout"
        );
        let later = now + Duration::from_secs(11);
        assert_eq!(
            ex.after_parents_asked(&[1], later),
            Some("scheduler unreachable and no parent holds what is missing")
        );
        // The parent says it has piece 1 now: carry on.
        ex.parent_told("a", [0, 1].into_iter().collect(), false);
        assert_eq!(ex.after_parents_asked(&[1], later), None);
        // The scheduler is back: no more deadline.
        let fresh = vec![parent("a", &[0], false, false)];
        assert_eq!(
            ex.on_parent_list(SchedulerReply::Parents(fresh), later),
            ListOutcome::Merged
        );
        assert_eq!(
            ex.after_parents_asked(&[1], later + Duration::from_secs(60)),
            None
        );
        assert_eq!(
            ex.on_parent_list(SchedulerReply::Elsewhere, later),
            ListOutcome::Leave("elected back-to-source")
        );
    }
}
