//! The whole content's digest, computed in order as pieces are stored, for
//! tasks whose content digest is known up front (OCI blobs, `dfget
//! --digest`). Checking it at the end then hashes what is left, not the
//! whole file read back while a reader waits for its last bytes (over
//! 10 s for a 10 GiB blob). The bytes are read back from the data file
//! (the page cache, just written), so the digest covers what is stored.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::task::{StoreError, StoredTask};
use crate::piece::{piece_count, piece_range, PieceHasher};

/// Read-back buffer: below the allocator's mmap threshold, so it is reused
/// instead of mapped afresh each time.
const READ_CHUNK: usize = 256 << 10;

#[derive(Default)]
pub struct RunningDigest {
    state: Mutex<State>,
    /// `State::next`, readable without the lock.
    next: AtomicU32,
}

#[derive(Default)]
struct State {
    /// The first piece not hashed yet.
    next: u32,
    hasher: PieceHasher,
}

impl RunningDigest {
    /// The first piece not hashed yet.
    #[cfg(test)]
    pub fn next_hashed(&self) -> u32 {
        self.next.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoredTask {
    /// Hashes, in the background, the stored pieces that follow the last
    /// one hashed. Cheap when there is nothing to do; when another call
    /// is at it, that one picks the new piece up, or the final check does.
    pub(super) fn advance_content_digest(self: &Arc<Self>) {
        let next = self.running.next.load(Ordering::SeqCst);
        let due = self.with_meta(|m| {
            m.expected_digest.is_some() && m.content_length.is_some() && m.has_piece(next)
        });
        if !due {
            return;
        }
        let task = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = match task.running.state.try_lock() {
                Ok(state) => state,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            if let Err(e) = task.hash_stored_run(&mut state) {
                tracing::debug!(task = %task.id, error = %e, "content digest: read-back failed; the final check reads again");
            }
        });
    }

    /// Hashes stored pieces from `state.next` on, in order, up to the
    /// first one missing.
    fn hash_stored_run(&self, state: &mut State) -> std::io::Result<()> {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let range = self.with_meta(|m| {
                let total = m.content_length?;
                m.has_piece(state.next)
                    .then(|| piece_range(state.next, m.piece_length, total))
            });
            let Some((start, end)) = range else {
                return Ok(());
            };
            let mut offset = start;
            while offset < end {
                let n = ((end - offset) as usize).min(buf.len());
                self.file.read_exact_at(&mut buf[..n], offset)?;
                state.hasher.update(&buf[..n]);
                offset += n as u64;
            }
            state.next += 1;
            self.running.next.store(state.next, Ordering::SeqCst);
        }
    }

    /// The sha256 digest of the whole content: what the running digest
    /// has not hashed yet is hashed now. Pieces missing (a file with holes)
    /// make it the digest of the file as it is, read whole.
    pub async fn content_digest(self: &Arc<Self>) -> Result<String, StoreError> {
        let task = self.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut state = task.running.lock();
            task.hash_stored_run(&mut state)?;
            let (total, count) = task.with_meta(|m| {
                let total = m.content_length.unwrap_or(0);
                (total, piece_count(total, m.piece_length.max(1)))
            });
            if state.next >= count {
                return Ok(state.hasher.clone().finish());
            }
            let mut hasher = PieceHasher::default();
            let mut buf = vec![0u8; READ_CHUNK];
            let mut offset = 0u64;
            while offset < total {
                let n = ((total - offset) as usize).min(buf.len());
                task.file.read_exact_at(&mut buf[..n], offset)?;
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Ok(hasher.finish())
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
        .map_err(|e| self.io(e))
    }
}
