//! Pieces being written: one writer per piece at a time, so unverified
//! bytes never land on a piece another download is writing or has stored.

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Default)]
pub struct Claims(Mutex<HashSet<u32>>);

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True: `index` is this caller's to write until [`Claims::release`].
    pub fn try_claim(&self, index: u32) -> bool {
        self.lock().insert(index)
    }

    pub fn release(&self, index: u32) {
        self.lock().remove(&index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_per_piece() {
        let claims = Claims::default();
        assert!(claims.try_claim(3));
        assert!(!claims.try_claim(3));
        assert!(claims.try_claim(4));
        claims.release(3);
        assert!(claims.try_claim(3));
    }
}
