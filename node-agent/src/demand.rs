//! What a task's download must fetch. A whole-content reader (dfget, a
//! full blob GET, preheat) wants every piece; a lazy-pull reader wants only
//! the pieces its ranges touch, and peers may ask the task's back-to-source
//! peer for more. Wanted pieces always go first; the rest is fetched only
//! when everything is wanted, or as a rate-capped background prefetch.

use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::watch;

use crate::piece::pieces_for_range;

#[derive(Debug, Default)]
struct State {
    full: bool,
    prefetch: bool,
    wanted: BTreeSet<u32>,
    /// Byte ranges asked for before the piece length was known.
    pending: Vec<(u64, u64)>,
}

/// Pieces to fetch next, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Selection {
    /// Asked for by a reader or a peer: fetched first, never rate-capped.
    pub urgent: Vec<u32>,
    /// Everything else that is missing, when the demand covers it.
    pub background: Vec<u32>,
    /// Background pieces are a prefetch (rate-capped), not a full download.
    pub capped: bool,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.background.is_empty()
    }

    /// Urgent pieces first, then background ones.
    pub fn ordered(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        self.urgent
            .iter()
            .map(|&i| (i, true))
            .chain(self.background.iter().map(|&i| (i, false)))
    }
}

pub struct Demand {
    state: Mutex<State>,
    /// Bumped on every change so a waiting download never misses one.
    version: watch::Sender<u64>,
}

impl Default for Demand {
    fn default() -> Self {
        Demand {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
        }
    }
}

impl Demand {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.version.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn want_all(&self) {
        self.update(|s| s.full = true);
    }

    pub fn want_prefetch(&self) {
        self.update(|s| s.prefetch = true);
    }

    pub fn wants_all(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).full
    }

    /// Bytes `[start, end)`; `piece_length` when the task's shape is known.
    pub fn want_bytes(&self, start: u64, end: u64, piece_length: Option<u32>) {
        self.update(|s| match piece_length {
            Some(len) if len > 0 => s.wanted.extend(pieces_for_range(start, end, len)),
            _ => s.pending.push((start, end)),
        });
    }

    pub fn want_piece(&self, index: u32) {
        self.update(|s| {
            s.wanted.insert(index);
        });
    }

    /// What to fetch next among `missing` (sorted), given the piece length.
    /// Wants already satisfied are forgotten.
    pub fn select(&self, missing: &[u32], piece_length: u32) -> Selection {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if piece_length > 0 {
            for (start, end) in std::mem::take(&mut s.pending) {
                s.wanted.extend(pieces_for_range(start, end, piece_length));
            }
        }
        let missing_set: BTreeSet<u32> = missing.iter().copied().collect();
        s.wanted.retain(|i| missing_set.contains(i));
        let urgent: Vec<u32> = s.wanted.iter().copied().collect();
        let background = if s.full || s.prefetch {
            missing
                .iter()
                .copied()
                .filter(|i| !s.wanted.contains(i))
                .collect()
        } else {
            Vec::new()
        };
        Selection {
            urgent,
            background,
            capped: !s.full,
        }
    }

    /// Whether anything is wanted that `missing` still lacks (or wanted
    /// bytes wait for the shape).
    pub fn has_unmet(&self, missing: &[u32]) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.full || s.prefetch {
            return !missing.is_empty();
        }
        !s.pending.is_empty() || s.wanted.iter().any(|i| missing.binary_search(i).is_ok())
    }

    /// Forgets everything: the task is complete or gone.
    pub fn reset(&self) {
        self.update(|s| *s = State::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_reads_fetch_only_touched_pieces() {
        let demand = Demand::default();
        demand.want_bytes(5, 6, Some(4));
        demand.want_bytes(15, 17, Some(4));
        let missing: Vec<u32> = (0..10).collect();
        let sel = demand.select(&missing, 4);
        assert_eq!(sel.urgent, vec![1, 3, 4]);
        assert!(sel.background.is_empty());
    }

    #[test]
    fn wants_before_the_shape_wait_for_it() {
        let demand = Demand::default();
        demand.want_bytes(0, 2, None);
        assert!(demand.has_unmet(&[]));
        let sel = demand.select(&[0, 1, 2], 4);
        assert_eq!(sel.urgent, vec![0]);
    }

    #[test]
    fn satisfied_wants_are_forgotten() {
        let demand = Demand::default();
        demand.want_piece(2);
        demand.want_piece(3);
        assert!(demand.has_unmet(&[3]));
        let sel = demand.select(&[3], 4);
        assert_eq!(sel.urgent, vec![3]);
        assert!(!demand.has_unmet(&[5]));
    }

    #[test]
    fn wanted_pieces_go_before_the_rest() {
        let demand = Demand::default();
        demand.want_piece(7);
        demand.want_all();
        let sel = demand.select(&[1, 2, 7], 4);
        let order: Vec<u32> = sel.ordered().map(|(i, _)| i).collect();
        assert_eq!(order, vec![7, 1, 2]);
        assert!(!sel.capped);
    }

    #[test]
    fn prefetch_is_capped_background_work() {
        let demand = Demand::default();
        demand.want_prefetch();
        let sel = demand.select(&[0, 1], 4);
        assert!(sel.capped);
        assert_eq!(sel.background, vec![0, 1]);
        demand.reset();
        assert!(demand.select(&[0, 1], 4).is_empty());
    }
}
