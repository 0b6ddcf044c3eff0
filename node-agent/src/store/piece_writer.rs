//! A piece written to disk in chunks as its bytes arrive and hashed on the
//! way, so a download holds a chunk in memory, not a whole piece (pieces
//! grow to 32 MiB for large blobs). Readers see the piece only once it is
//! recorded with its digest; bytes that fail their check are never
//! recorded. One writer per piece at a time (see [`super::claims`]).

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::task::{piece_fits, StoreError, StoredTask};
use crate::piece::{piece_count, piece_range, PieceHasher, IO_CHUNK, MAX_PIECES};

/// How long a writer waits for another writer of the same piece (whose
/// own fetch is bounded by its timeouts) before giving up.
const CLAIM_WAIT: Duration = Duration::from_secs(60);

/// The right to write piece `index`; given back when dropped.
struct Claim {
    task: Arc<StoredTask>,
    index: u32,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.task.claims.release(self.index);
        self.task.notify();
    }
}

pub struct PieceWriter {
    claim: Claim,
    /// Where the piece starts in the data file.
    start: u64,
    /// The most bytes the piece may hold.
    limit: u64,
    /// Bytes given so far (written or buffered).
    taken: u64,
    written: u64,
    buf: BytesMut,
    hasher: PieceHasher,
    /// Quota bytes held for the piece; given back when it is recorded or
    /// abandoned.
    reserved: u64,
}

/// A piece whose bytes are all on disk, with their digest, not yet
/// recorded: the caller checks the digest first.
pub struct SealedPiece {
    writer: PieceWriter,
    digest: String,
}

impl StoredTask {
    /// Starts writing piece `index` chunk by chunk; `None` when it is
    /// stored (perhaps by a writer this one waited for). The quota is
    /// reserved up front: room first, or no write at all.
    pub async fn begin_piece(
        self: &Arc<Self>,
        index: u32,
    ) -> Result<Option<PieceWriter>, StoreError> {
        let Some(claim) = self.claim_piece(index).await? else {
            return Ok(None);
        };
        let (start, limit) = self.piece_bounds(index)?;
        match self.budget.reserve(limit, super::budget::ROOM_WAIT).await {
            Ok(()) => {}
            Err(super::budget::NoRoom::Quota) => {
                return Err(StoreError::QuotaFull {
                    task: self.id.clone(),
                    quota: self.budget.quota(),
                })
            }
            Err(super::budget::NoRoom::DiskWatermark) => {
                return Err(StoreError::DiskWatermark {
                    task: self.id.clone(),
                    high_percent: self
                        .budget
                        .disk_limit()
                        .map_or(100, |(_, high)| (high * 100.0).round() as u32),
                })
            }
        }
        Ok(Some(PieceWriter {
            claim,
            start,
            limit,
            taken: 0,
            written: 0,
            buf: BytesMut::new(),
            hasher: PieceHasher::default(),
            reserved: limit,
        }))
    }

    async fn claim_piece(self: &Arc<Self>, index: u32) -> Result<Option<Claim>, StoreError> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            if self.is_removed() {
                return Err(StoreError::Removed(self.id.clone()));
            }
            if self.with_meta(|m| m.has_piece(index)) {
                return Ok(None);
            }
            if self.claims.try_claim(index) {
                return Ok(Some(Claim {
                    task: self.clone(),
                    index,
                }));
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(StoreError::PieceBusy {
                    task: self.id.clone(),
                    index,
                });
            }
        }
    }

    /// Where piece `index` starts and the most bytes it may hold.
    fn piece_bounds(&self, index: u32) -> Result<(u64, u64), StoreError> {
        let meta = self.lock_meta();
        if meta.piece_length == 0 {
            return Err(StoreError::ShapeUnknown(self.id.clone()));
        }
        let bad_piece = || StoreError::BadPiece {
            task: self.id.clone(),
            index,
            len: 0,
        };
        match meta.content_length {
            Some(total) if index < piece_count(total, meta.piece_length) => {
                let (start, end) = piece_range(index, meta.piece_length, total);
                Ok((start, end - start))
            }
            None if index < MAX_PIECES => Ok((
                index as u64 * meta.piece_length as u64,
                meta.piece_length as u64,
            )),
            _ => Err(bad_piece()),
        }
    }
}

impl PieceWriter {
    pub fn index(&self) -> u32 {
        self.claim.index
    }

    /// Bytes given so far.
    pub fn len(&self) -> u64 {
        self.taken
    }

    pub fn is_empty(&self) -> bool {
        self.taken == 0
    }

    fn task(&self) -> &Arc<StoredTask> {
        &self.claim.task
    }

    /// Takes the next bytes of the piece; they reach the disk a chunk at a
    /// time. More than the piece holds is refused.
    pub async fn push(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let len = data.len() as u64;
        if self.taken + len > self.limit {
            return Err(StoreError::BadPiece {
                task: self.task().id.clone(),
                index: self.index(),
                len: (self.taken + len) as usize,
            });
        }
        self.taken += len;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= IO_CHUNK {
            self.write_buffered().await?;
        }
        Ok(())
    }

    /// Hashes and writes what is buffered.
    async fn write_buffered(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.task().is_removed() {
            return Err(StoreError::Removed(self.task().id.clone()));
        }
        let data: Bytes = self.buf.split().freeze();
        let len = data.len() as u64;
        let task = self.task().clone();
        let offset = self.start + self.written;
        let mut hasher = std::mem::take(&mut self.hasher);
        let own_write = self.task().intact.own_write();
        let written = tokio::task::spawn_blocking(move || {
            hasher.update(&data);
            task.file.write_all_at(&data, offset)?;
            Ok((hasher, task.data_mtime()))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match written {
            Ok((hasher, mtime)) => {
                own_write.done(mtime);
                self.hasher = hasher;
                self.written += len;
                Ok(())
            }
            Err(e) => Err(self.task().write_failed(e)),
        }
    }

    /// Every byte given is on disk and hashed; the piece is not recorded
    /// yet. Refused when the bytes are not the whole piece as far as the
    /// task's shape is known.
    pub async fn seal(mut self) -> Result<SealedPiece, StoreError> {
        self.write_buffered().await?;
        let (index, written) = (self.index(), self.written);
        if !self
            .task()
            .with_meta(|m| piece_fits(m, index, written as usize))
        {
            return Err(StoreError::BadPiece {
                task: self.task().id.clone(),
                index,
                len: written as usize,
            });
        }
        let digest = std::mem::take(&mut self.hasher).finish();
        Ok(SealedPiece {
            writer: self,
            digest,
        })
    }

    /// Seals the piece and records it with the digest of its bytes (for
    /// bytes from the origin, which nothing can check a piece against).
    pub async fn finish(self) -> Result<(), StoreError> {
        self.seal().await?.record().await
    }
}

impl SealedPiece {
    /// `sha256:<hex>` of the piece's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn index(&self) -> u32 {
        self.writer.index()
    }

    pub fn len(&self) -> u64 {
        self.writer.written
    }

    pub fn is_empty(&self) -> bool {
        self.writer.written == 0
    }

    /// Records the piece: readers see it from now on.
    pub async fn record(mut self) -> Result<(), StoreError> {
        let reserved = std::mem::take(&mut self.writer.reserved);
        let task = self.writer.task().clone();
        task.record_piece(self.index(), self.writer.written, self.digest, reserved)
            .await
    }
}

impl Drop for PieceWriter {
    fn drop(&mut self) {
        self.task().budget.release(self.reserved);
    }
}
