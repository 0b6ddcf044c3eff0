//! A piece written to disk in chunks as its bytes arrive and hashed on the
//! way, so a download holds a chunk in memory, not a whole piece (pieces
//! grow to 32 MiB for large blobs). Readers see the piece only once it is
//! finished and its digest recorded.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::task::{piece_fits, StoreError, StoredTask};
use crate::piece::{piece_count, piece_range, PieceHasher, MAX_PIECES};

pub struct PieceWriter {
    task: Arc<StoredTask>,
    index: u32,
    /// Where the piece starts in the data file.
    start: u64,
    /// The most bytes the piece may hold.
    limit: u64,
    written: u64,
    hasher: PieceHasher,
    /// Quota bytes held for the piece; given back when it is recorded or
    /// abandoned.
    reserved: u64,
}

impl StoredTask {
    /// Starts writing piece `index` chunk by chunk; `None` when it is
    /// already stored. The quota is reserved up front: room first, or no
    /// write at all.
    pub async fn begin_piece(
        self: &Arc<Self>,
        index: u32,
    ) -> Result<Option<PieceWriter>, StoreError> {
        if self.is_removed() {
            return Err(StoreError::Removed(self.id.clone()));
        }
        let (start, limit) = {
            let meta = self.lock_meta();
            if meta.piece_length == 0 {
                return Err(StoreError::ShapeUnknown(self.id.clone()));
            }
            if meta.has_piece(index) {
                return Ok(None);
            }
            let bad_piece = || StoreError::BadPiece {
                task: self.id.clone(),
                index,
                len: 0,
            };
            match meta.content_length {
                Some(total) => {
                    if index >= piece_count(total, meta.piece_length) {
                        return Err(bad_piece());
                    }
                    let (start, end) = piece_range(index, meta.piece_length, total);
                    (start, end - start)
                }
                None if index < MAX_PIECES => (
                    index as u64 * meta.piece_length as u64,
                    meta.piece_length as u64,
                ),
                None => return Err(bad_piece()),
            }
        };
        if !self.budget.reserve(limit, super::budget::ROOM_WAIT).await {
            return Err(StoreError::QuotaFull {
                task: self.id.clone(),
                quota: self.budget.quota(),
            });
        }
        Ok(Some(PieceWriter {
            task: self.clone(),
            index,
            start,
            limit,
            written: 0,
            hasher: PieceHasher::default(),
            reserved: limit,
        }))
    }
}

impl PieceWriter {
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Hashes `data` and writes it after the bytes written so far.
    pub async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        let len = data.len() as u64;
        if self.written + len > self.limit {
            return Err(StoreError::BadPiece {
                task: self.task.id.clone(),
                index: self.index,
                len: (self.written + len) as usize,
            });
        }
        if self.task.is_removed() {
            return Err(StoreError::Removed(self.task.id.clone()));
        }
        let task = self.task.clone();
        let offset = self.start + self.written;
        let mut hasher = std::mem::take(&mut self.hasher);
        let own_write = self.task.intact.own_write();
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
            Err(e) => Err(self.task.write_failed(e)),
        }
    }

    /// Records the piece with the digest of the bytes written, once they
    /// are the whole piece as far as the task's shape is known.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        let fits = self
            .task
            .with_meta(|m| piece_fits(m, self.index, self.written as usize));
        if !fits {
            return Err(StoreError::BadPiece {
                task: self.task.id.clone(),
                index: self.index,
                len: self.written as usize,
            });
        }
        let digest = std::mem::take(&mut self.hasher).finish();
        let reserved = std::mem::take(&mut self.reserved);
        self.task
            .record_piece(self.index, self.written, digest, reserved)
            .await
    }
}

impl Drop for PieceWriter {
    fn drop(&mut self) {
        self.task.budget.release(self.reserved);
    }
}
