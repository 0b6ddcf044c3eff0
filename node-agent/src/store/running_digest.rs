//! The whole content's digest, computed in order as pieces are stored, for
//! tasks whose content digest is known up front (OCI blobs, `dfget
//! --digest`). Checking it at the end then hashes what is left, not the
//! whole file read back while a reader waits for its last bytes (over
//! 10 s for a 10 GiB blob). The bytes are read back from the data file
//! (the page cache, just written), so the digest covers what is stored.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::piece::{PieceHasher, IO_CHUNK};

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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first piece not hashed yet.
    pub fn next_piece(&self) -> u32 {
        self.next.load(Ordering::SeqCst)
    }

    /// Hashes the pieces from the first not hashed on, in order, while
    /// `stored_range` gives their byte range in `file` (`None`: not
    /// stored). Returns at once when another caller is at it: that one
    /// picks the new pieces up, or [`RunningDigest::finish`] does.
    pub fn try_advance(
        &self,
        file: &File,
        stored_range: impl Fn(u32) -> Option<(u64, u64)>,
    ) -> std::io::Result<()> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        self.advance(&mut state, file, &stored_range)
    }

    fn advance(
        &self,
        state: &mut State,
        file: &File,
        stored_range: &dyn Fn(u32) -> Option<(u64, u64)>,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; IO_CHUNK];
        while let Some((start, end)) = stored_range(state.next) {
            hash_file_range(file, start, end, &mut buf, &mut state.hasher)?;
            state.next += 1;
            self.next.store(state.next, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The digest of the whole content, `total` bytes in `count` pieces:
    /// what is not hashed yet is hashed now. Pieces missing (a file with
    /// holes) make it the digest of the file as it is, read whole.
    pub fn finish(
        &self,
        file: &File,
        stored_range: impl Fn(u32) -> Option<(u64, u64)>,
        count: u32,
        total: u64,
    ) -> std::io::Result<String> {
        let mut state = self.lock();
        self.advance(&mut state, file, &stored_range)?;
        if state.next >= count {
            return Ok(state.hasher.clone().finish());
        }
        let mut hasher = PieceHasher::default();
        hash_file_range(file, 0, total, &mut vec![0u8; IO_CHUNK], &mut hasher)?;
        Ok(hasher.finish())
    }
}

pub(super) fn hash_file_range(
    file: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
    hasher: &mut PieceHasher,
) -> std::io::Result<()> {
    let mut offset = start;
    while offset < end {
        let n = ((end - offset) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(())
}
