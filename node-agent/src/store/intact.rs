//! Which pieces of a task can be served without hashing them again: those
//! this process wrote (their digest was computed on the way in) or already
//! read back intact, for as long as nothing else wrote the data file. The
//! file's modification time tells: after each of its own writes the task
//! notes it, and a later one means another writer (a damaged disk copy, an
//! operator's hand), after which every piece is checked again on its next
//! read. While a write of this process is under way a later time is taken
//! to be its own (a piece written in chunks would otherwise make every read
//! beside it hash again); another writer in that window goes unnoticed
//! until the next read after it. A restarted daemon starts with nothing
//! trusted.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Default)]
pub struct IntactPieces {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pieces: HashSet<u32>,
    /// The data file's modification time after this process's last write.
    own_mtime: Option<SystemTime>,
    /// Writes of this process under way.
    writing: usize,
}

/// A write of this process under way; ends with [`OwnWrite::done`], or
/// when dropped (a failed or abandoned write) without advancing the time.
pub struct OwnWrite<'a> {
    intact: &'a IntactPieces,
}

impl OwnWrite<'_> {
    /// The write ended; `mtime` is the data file's modification time read
    /// after it.
    pub fn done(self, mtime: Option<SystemTime>) {
        let mut state = self.intact.lock();
        match mtime {
            Some(mtime) => {
                state.own_mtime = Some(state.own_mtime.map_or(mtime, |own| own.max(mtime)));
            }
            None => {
                // Without modification times nothing can be trusted later.
                state.pieces.clear();
                state.own_mtime = None;
            }
        }
        // `self` drops here and ends the write.
    }
}

impl Drop for OwnWrite<'_> {
    fn drop(&mut self) {
        let mut state = self.intact.lock();
        state.writing = state.writing.saturating_sub(1);
    }
}

impl IntactPieces {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of this process begins.
    pub fn own_write(&self) -> OwnWrite<'_> {
        self.lock().writing += 1;
        OwnWrite { intact: self }
    }

    /// This process wrote `index` whole (and verified it); its last write
    /// was noted with [`OwnWrite::done`].
    pub fn wrote(&self, index: u32) {
        let mut state = self.lock();
        if state.own_mtime.is_some() {
            state.pieces.insert(index);
        }
    }

    /// Whether `index` may be served without hashing it, the data file now
    /// having modification time `mtime`. A time later than this process's
    /// own last write, with none of its own under way, forgets every piece
    /// (and makes that time the new reference, so each piece is hashed
    /// once more, not forever).
    pub fn is_intact(&self, index: u32, mtime: Option<SystemTime>) -> bool {
        let mut state = self.lock();
        match (state.own_mtime, mtime) {
            (Some(own), Some(now)) if now <= own || state.writing > 0 => {
                state.pieces.contains(&index)
            }
            (_, now) => {
                state.pieces.clear();
                state.own_mtime = now;
                false
            }
        }
    }

    /// `index` was read and hashed: it matches its digest.
    pub fn verified(&self, index: u32) {
        let mut state = self.lock();
        if state.own_mtime.is_some() {
            state.pieces.insert(index);
        }
    }

    pub fn forget(&self, index: u32) {
        self.lock().pieces.remove(&index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wrote(intact: &IntactPieces, index: u32, mtime: Option<SystemTime>) {
        intact.own_write().done(mtime);
        intact.wrote(index);
    }

    #[test]
    fn written_pieces_are_trusted_until_someone_else_writes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let intact = IntactPieces::default();
        assert!(!intact.is_intact(0, Some(t0)), "nothing trusted at first");
        wrote(&intact, 0, Some(t0));
        wrote(&intact, 1, Some(t0 + Duration::from_millis(5)));
        let now = t0 + Duration::from_millis(5);
        assert!(intact.is_intact(0, Some(now)) && intact.is_intact(1, Some(now)));
        assert!(!intact.is_intact(2, Some(now)));
        // Another writer: every piece is hashed again, once.
        let later = now + Duration::from_millis(1);
        assert!(!intact.is_intact(0, Some(later)));
        assert!(!intact.is_intact(1, Some(later)));
        intact.verified(1);
        assert!(intact.is_intact(1, Some(later)));
        assert!(!intact.is_intact(0, Some(later)));
        intact.forget(1);
        assert!(!intact.is_intact(1, Some(later)));
    }

    #[test]
    fn without_modification_times_every_read_is_hashed() {
        let intact = IntactPieces::default();
        wrote(&intact, 0, None);
        assert!(!intact.is_intact(0, None));
        intact.verified(0);
        assert!(!intact.is_intact(0, None));
        let t0 = SystemTime::UNIX_EPOCH;
        wrote(&intact, 0, Some(t0));
        assert!(!intact.is_intact(0, None));
    }

    #[test]
    fn a_write_under_way_does_not_make_reads_hash_again() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let intact = IntactPieces::default();
        wrote(&intact, 0, Some(t0));
        let writing = intact.own_write();
        let during = t0 + Duration::from_millis(3);
        assert!(
            intact.is_intact(0, Some(during)),
            "the newer time is our own write's"
        );
        writing.done(Some(during));
        assert!(intact.is_intact(0, Some(during)));
        // An abandoned write ends too: a later time is someone else's again.
        drop(intact.own_write());
        assert!(!intact.is_intact(0, Some(during + Duration::from_millis(1))));
    }
}
