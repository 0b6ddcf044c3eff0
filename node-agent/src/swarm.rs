//! The swarm exchange's decisions, free of I/O: the parents a download
//! knows and what it may ask each for, which parent to ask for a piece, and
//! when only the origin can supply what is missing. The downloader drives
//! them; everything here is a pure function of its arguments.

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

use crate::piece::Bitmap;
use crate::piece_order::Holders;

/// How long a parent that said "not now" is left alone.
pub const COOLDOWN: Duration = Duration::from_millis(150);

/// A parent's host id and `ip:port` as the scheduler named them; `None`
/// for an address that does not parse.
pub fn parent_base(parent: &proto::Parent) -> Option<(String, String)> {
    let host = parent.host.as_ref()?;
    let ip: std::net::IpAddr = host.ip.parse().ok()?;
    let addr = std::net::SocketAddr::new(ip, host.peer_port as u16);
    // The peer client adds the scheme (https with cluster identity).
    Some((host.id.clone(), addr.to_string()))
}

/// A parent as this download sees it: what it holds (as last told), and
/// how much this download asks of it right now.
pub struct ParentSlot {
    pub id: String,
    pub base: String,
    pub bitmap: Bitmap,
    pub complete: bool,
    pub is_source: bool,
    pub inflight: usize,
    pub cooldown_until: Option<Instant>,
}

impl ParentSlot {
    pub fn from_proto(parent: &proto::Parent) -> Option<ParentSlot> {
        let (id, base) = parent_base(parent)?;
        Some(ParentSlot {
            id,
            base,
            bitmap: Bitmap::from_bytes(&parent.bitmap).unwrap_or_default(),
            complete: parent.complete,
            is_source: parent.is_source,
            inflight: 0,
            cooldown_until: None,
        })
    }

    /// Holds `index`, or will: complete, fetching the task from the
    /// origin, or with the piece in its bitmap.
    pub fn holds_or_fetches(&self, index: u32) -> bool {
        self.complete || self.is_source || self.bitmap.contains(index)
    }

    pub fn available(&self, now: Instant, per_parent: usize) -> bool {
        self.inflight < per_parent && self.cooldown_until.is_none_or(|t| t <= now)
    }
}

/// Merges a fresh parent list into the current one, keeping the in-flight
/// counts of parents we are still fetching from.
pub fn merge_parents(
    slots: &mut Vec<ParentSlot>,
    fresh: &[proto::Parent],
    blocked: &HashSet<String>,
) {
    let mut next: Vec<ParentSlot> = Vec::new();
    for parent in fresh {
        let Some(mut slot) = ParentSlot::from_proto(parent) else {
            continue;
        };
        if blocked.contains(&slot.id) {
            continue;
        }
        if let Some(old) = slots.iter().find(|s| s.id == slot.id) {
            slot.inflight = old.inflight;
            slot.cooldown_until = old.cooldown_until;
        }
        next.push(slot);
    }
    for old in slots.drain(..) {
        if old.inflight > 0 && !next.iter().any(|s| s.id == old.id) {
            next.push(old);
        }
    }
    *slots = next;
}

/// Pieces not to ask a given parent for: it said it lacks them, or it is
/// sending them to someone else right now (ask again shortly); and pieces
/// to ask of the source only, whose digest no record vouches for yet.
#[derive(Default)]
pub struct PieceAvoidance {
    pub lacking: HashSet<(String, u32)>,
    pub deferred: HashMap<(String, u32), Instant>,
    /// A parent's copy came back unverified (nothing recorded for it, e.g.
    /// the scheduler is gone): only the source is taken at its word, so
    /// other parents are not asked again while a source is listed.
    pub source_only: HashSet<u32>,
}

impl PieceAvoidance {
    pub fn defer(&mut self, parent: &str, index: u32, until: Instant) {
        self.deferred.insert((parent.to_string(), index), until);
    }

    pub fn avoids(&self, parent: &str, index: u32, now: Instant) -> bool {
        let key = (parent.to_string(), index);
        self.lacking.contains(&key) || self.deferred.get(&key).is_some_and(|until| *until > now)
    }
}

/// Who among the usable parents holds `index`, for the piece order. With
/// `complete_last` off, complete parents count as any other holder.
pub fn holders_of(
    slots: &[ParentSlot],
    blocked: &HashSet<String>,
    index: u32,
    complete_last: bool,
) -> Holders {
    let mut holders = Holders::default();
    for s in slots.iter().filter(|s| !blocked.contains(&s.id)) {
        if s.complete && complete_last {
            holders.complete += 1;
        } else if s.complete || s.bitmap.contains(index) {
            holders.downloading += 1;
        }
    }
    holders
}

/// How a download may ask its parents right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asking {
    /// Pieces in flight at once from one parent.
    pub per_parent: usize,
    /// Prefer parents still downloading over complete ones and sources
    /// (off without a scheduler, when only the source's pieces can be taken).
    pub complete_last: bool,
    /// Complete parents and sources may be asked for more (their budget
    /// of pieces in flight is not spent).
    pub everyones_open: bool,
    /// Parents still downloading may be asked for more.
    pub downloading_open: bool,
}

impl Asking {
    /// Every parent may be asked (one budget for all).
    #[cfg(test)]
    pub fn open(per_parent: usize, complete_last: bool) -> Self {
        Asking {
            per_parent,
            complete_last,
            everyones_open: true,
            downloading_open: true,
        }
    }

    /// Whether `slot` counts as everyone's parent: complete or a source,
    /// a candidate of every child in the swarm.
    pub fn is_everyones(&self, slot: &ParentSlot) -> bool {
        self.complete_last && (slot.complete || slot.is_source)
    }

    fn budget_allows(&self, slot: &ParentSlot) -> bool {
        if self.is_everyones(slot) {
            self.everyones_open
        } else {
            self.downloading_open
        }
    }
}

/// The parent to ask for `index`: one that has it, preferring (with
/// `complete_last`) parents still downloading, whose uplinks are otherwise
/// idle while complete parents and sources are everyone's candidates; then
/// the least busy, sources last; else the source, which will have it soon.
/// A parent whose budget (everyone's or downloading) is spent is not asked.
pub fn pick_parent(
    slots: &[ParentSlot],
    blocked: &HashSet<String>,
    index: u32,
    asking: Asking,
    now: Instant,
    avoid: &PieceAvoidance,
) -> Option<usize> {
    let source_only = avoid.source_only.contains(&index)
        && slots
            .iter()
            .any(|s| s.is_source && !blocked.contains(&s.id));
    let usable = |s: &ParentSlot| {
        s.available(now, asking.per_parent)
            && asking.budget_allows(s)
            && !avoid.avoids(&s.id, index, now)
            && (s.is_source || !source_only)
    };
    let holders = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s) && (s.complete || s.bitmap.contains(index)))
        .min_by_key(|(_, s)| (asking.is_everyones(s), s.inflight, s.is_source));
    if let Some((i, _)) = holders {
        return Some(i);
    }
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s) && s.is_source)
        .min_by_key(|(_, s)| s.inflight)
        .map(|(i, _)| i)
}

/// Whether every missing piece has a parent that holds it or will: a
/// complete one, one that is fetching the task from the origin, or one
/// whose bitmap has it.
pub fn parents_cover(slots: &[ParentSlot], blocked: &HashSet<String>, missing: &[u32]) -> bool {
    missing.iter().all(|&index| {
        slots
            .iter()
            .any(|s| !blocked.contains(&s.id) && s.holds_or_fetches(index))
    })
}

/// Whether every wanted piece was refused by a parent as missing (it
/// discarded a damaged copy) and no other parent holds or fetches it: only
/// the origin can supply those.
pub fn only_the_origin_has(
    slots: &[ParentSlot],
    blocked: &HashSet<String>,
    avoid: &PieceAvoidance,
    mut wanted: impl Iterator<Item = u32>,
) -> bool {
    let mut any = false;
    let all = wanted.all(|index| {
        any = true;
        let refused = avoid.lacking.iter().any(|(_, i)| *i == index);
        let candidate = slots.iter().any(|s| {
            !blocked.contains(&s.id)
                && !avoid.lacking.contains(&(s.id.clone(), index))
                && s.holds_or_fetches(index)
        });
        refused && !candidate
    });
    any && all
}

/// One line per parent for a stall report: id, what it holds, how busy.
pub fn describe_parents(slots: &[ParentSlot], blocked: &HashSet<String>, now: Instant) -> String {
    let mut out = Vec::new();
    for s in slots {
        let held = if s.complete {
            "complete".to_string()
        } else {
            format!("{} pieces", s.bitmap.count(0))
        };
        let cooling = s.cooldown_until.is_some_and(|t| t > now);
        out.push(format!(
            "{}[{held}{}{}{}, {} in flight]",
            s.id,
            if s.is_source { ", source" } else { "" },
            if cooling { ", cooling down" } else { "" },
            if blocked.contains(&s.id) {
                ", blocked"
            } else {
                ""
            },
            s.inflight,
        ));
    }
    if out.is_empty() {
        return "none".into();
    }
    out.join(" ")
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

    fn slots(parents: &[proto::Parent]) -> Vec<ParentSlot> {
        let mut slots = Vec::new();
        merge_parents(&mut slots, parents, &HashSet::new());
        slots
    }

    fn picked<'a>(
        slots: &'a [ParentSlot],
        index: u32,
        now: Instant,
        avoid: &PieceAvoidance,
    ) -> Option<&'a str> {
        pick_parent(
            slots,
            &HashSet::new(),
            index,
            Asking::open(2, true),
            now,
            avoid,
        )
        .map(|i| slots[i].id.as_str())
    }

    #[test]
    fn a_parent_without_an_address_is_not_listed() {
        let mut bad = parent("a", &[], true, false);
        bad.host.as_mut().unwrap().ip = "not an ip".into();
        let listed = slots(&[bad, parent("b", &[], true, false)]);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "b");
        assert_eq!(listed[0].base, "10.0.0.1:65002");
    }

    #[test]
    fn the_least_busy_holder_is_asked_and_sources_last() {
        let now = Instant::now();
        let avoid = PieceAvoidance::default();
        let mut s = slots(&[
            parent("source", &[0, 1], false, true),
            parent("a", &[0], false, false),
            parent("b", &[0, 1], false, false),
        ]);
        // Equally idle: a holder that is not the source.
        assert_eq!(picked(&s, 0, now, &avoid), Some("a"));
        s[1].inflight = 1;
        assert_eq!(picked(&s, 0, now, &avoid), Some("b"));
        // Holders still downloading go first while they have room.
        s[2].inflight = 1;
        assert_eq!(picked(&s, 0, now, &avoid), Some("a"));
        s[1].inflight = 2;
        s[2].inflight = 2;
        assert_eq!(picked(&s, 0, now, &avoid), Some("source"));
        // Nobody lists piece 5, but the source will have it.
        assert_eq!(picked(&s, 5, now, &avoid), Some("source"));
        // At the per-parent cap a parent is not asked.
        s[0].inflight = 2;
        assert_eq!(picked(&s, 0, now, &avoid), None);
        assert_eq!(picked(&s, 5, now, &avoid), None);
    }

    #[test]
    fn a_child_holding_the_piece_goes_before_complete_parents() {
        let now = Instant::now();
        let avoid = PieceAvoidance::default();
        let mut s = slots(&[
            parent("seed", &[], true, false),
            parent("child", &[4], false, false),
        ]);
        assert_eq!(picked(&s, 4, now, &avoid), Some("child"));
        s[1].inflight = 1;
        assert_eq!(picked(&s, 4, now, &avoid), Some("child"));
        // Full: the complete parent.
        s[1].inflight = 2;
        assert_eq!(picked(&s, 4, now, &avoid), Some("seed"));
        // What only the seed holds goes to the seed.
        s[1].inflight = 0;
        assert_eq!(picked(&s, 5, now, &avoid), Some("seed"));
        // Without a scheduler, the least busy holder, the source last.
        s[1].inflight = 1;
        let i = pick_parent(&s, &HashSet::new(), 4, Asking::open(2, false), now, &avoid);
        assert_eq!(i.map(|i| s[i].id.as_str()), Some("seed"));
        let none = HashSet::new();
        assert_eq!(
            holders_of(&s, &none, 4, false),
            Holders {
                downloading: 2,
                complete: 0
            }
        );
        assert_eq!(
            holders_of(&s, &none, 4, true),
            Holders {
                downloading: 1,
                complete: 1
            }
        );
        assert_eq!(
            holders_of(&s, &none, 5, true),
            Holders {
                downloading: 0,
                complete: 1
            }
        );
    }

    #[test]
    fn an_unverified_piece_goes_to_the_source_while_one_is_listed() {
        let now = Instant::now();
        let mut avoid = PieceAvoidance::default();
        let s = slots(&[
            parent("seed", &[], true, true),
            parent("child", &[4], false, false),
        ]);
        assert_eq!(picked(&s, 4, now, &avoid), Some("child"));
        // The child's copy could not be verified (no record reachable).
        avoid.defer("child", 4, now + COOLDOWN);
        avoid.source_only.insert(4);
        assert_eq!(picked(&s, 4, now, &avoid), Some("seed"));
        assert_eq!(picked(&s, 4, now + COOLDOWN, &avoid), Some("seed"));
        // Other pieces are not concerned.
        assert_eq!(picked(&s, 5, now, &avoid), Some("seed"));
        // With the source blocked, or no source, the holders are asked
        // again after the cooldown.
        let blocked: HashSet<String> = ["seed".to_string()].into();
        let i = pick_parent(
            &s,
            &blocked,
            4,
            Asking::open(2, true),
            now + COOLDOWN,
            &avoid,
        );
        assert_eq!(i.map(|i| s[i].id.as_str()), Some("child"));
        let children = slots(&[parent("child", &[4], false, false)]);
        assert_eq!(picked(&children, 4, now, &avoid), None);
        assert_eq!(picked(&children, 4, now + COOLDOWN, &avoid), Some("child"));
    }

    #[test]
    fn no_holder_and_no_source_means_no_parent() {
        let s = slots(&[parent("a", &[1], false, false)]);
        assert_eq!(
            picked(&s, 0, Instant::now(), &PieceAvoidance::default()),
            None
        );
        let complete = slots(&[parent("a", &[], true, false)]);
        assert_eq!(
            picked(&complete, 0, Instant::now(), &PieceAvoidance::default()),
            Some("a")
        );
    }

    #[test]
    fn a_deferred_piece_is_asked_of_that_parent_again_after_the_cooldown() {
        let now = Instant::now();
        let s = slots(&[parent("a", &[], true, false), parent("b", &[], true, false)]);
        let mut avoid = PieceAvoidance::default();
        avoid.defer("a", 3, now + COOLDOWN);
        assert_eq!(picked(&s, 3, now, &avoid), Some("b"));
        // Only that piece: others still go to a.
        assert_eq!(picked(&s, 4, now, &avoid), Some("a"));
        avoid.defer("b", 3, now + COOLDOWN);
        assert_eq!(picked(&s, 3, now, &avoid), None);
        assert_eq!(picked(&s, 3, now + COOLDOWN, &avoid), Some("a"));
    }

    #[test]
    fn a_parent_cooling_down_or_lacking_a_piece_is_not_asked() {
        let now = Instant::now();
        let mut s = slots(&[parent("a", &[], true, false), parent("b", &[], true, false)]);
        s[0].cooldown_until = Some(now + COOLDOWN);
        let mut avoid = PieceAvoidance::default();
        assert_eq!(picked(&s, 0, now, &avoid), Some("b"));
        avoid.lacking.insert(("b".into(), 0));
        assert_eq!(picked(&s, 0, now, &avoid), None);
        assert_eq!(picked(&s, 0, now + COOLDOWN, &avoid), Some("a"));
    }

    #[test]
    fn a_fresh_list_keeps_what_is_in_flight_and_drops_blocked_parents() {
        let now = Instant::now();
        let mut s = slots(&[
            parent("a", &[0], false, false),
            parent("gone", &[], true, false),
        ]);
        s[0].inflight = 2;
        s[0].cooldown_until = Some(now);
        s[1].inflight = 1;
        let blocked: HashSet<String> = ["c".to_string()].into();
        merge_parents(
            &mut s,
            &[
                parent("a", &[0, 1], false, false),
                parent("c", &[], true, false),
            ],
            &blocked,
        );
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        // a refreshed (bitmap grew, counts kept), c blocked, "gone" kept
        // while its piece is in flight.
        assert_eq!(ids, ["a", "gone"]);
        assert!(s[0].bitmap.contains(1));
        assert_eq!((s[0].inflight, s[0].cooldown_until), (2, Some(now)));
        s[1].inflight = 0;
        merge_parents(&mut s, &[parent("a", &[0, 1], false, false)], &blocked);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn coverage_counts_holders_sources_and_complete_parents() {
        let s = slots(&[
            parent("a", &[0, 1], false, false),
            parent("src", &[], false, true),
        ]);
        let none = HashSet::new();
        assert!(parents_cover(&s, &none, &[0, 1, 7]));
        let blocked: HashSet<String> = ["src".to_string()].into();
        assert!(parents_cover(&s, &blocked, &[0, 1]));
        assert!(!parents_cover(&s, &blocked, &[0, 7]));
    }

    #[test]
    fn only_the_origin_has_pieces_every_holder_refused() {
        let s = slots(&[
            parent("a", &[0, 1], false, false),
            parent("b", &[1], false, false),
        ]);
        let none = HashSet::new();
        let mut avoid = PieceAvoidance::default();
        // Nothing refused yet.
        assert!(!only_the_origin_has(&s, &none, &avoid, [0].into_iter()));
        avoid.lacking.insert(("a".into(), 0));
        assert!(only_the_origin_has(&s, &none, &avoid, [0].into_iter()));
        // Piece 1: b still holds it.
        avoid.lacking.insert(("a".into(), 1));
        assert!(!only_the_origin_has(&s, &none, &avoid, [0, 1].into_iter()));
        let blocked: HashSet<String> = ["b".to_string()].into();
        assert!(only_the_origin_has(
            &s,
            &blocked,
            &avoid,
            [0, 1].into_iter()
        ));
        // Nothing wanted is not a reason to leave.
        assert!(!only_the_origin_has(&s, &none, &avoid, std::iter::empty()));
    }
}
