//! One task in the content store: its data file, its metadata, and a change
//! signal that wakes whoever waits for a piece (local readers and the piece
//! server serving pieces still arriving).

use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::meta::{now_unix, TaskMeta};
use crate::piece::piece_range;

/// Metadata is persisted at most this often while pieces stream in; a crash
/// loses at most this much progress (those pieces are fetched again).
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("io error on task {task}: {source}")]
    Io {
        task: String,
        source: std::io::Error,
    },
    #[error("task {0} has no piece {1}")]
    MissingPiece(String, u32),
    #[error("task {task}: piece {index} on disk does not match its digest; discarded")]
    CorruptPiece { task: String, index: u32 },
    #[error("task {task}: shape conflict (have {have}, got {got})")]
    ShapeConflict {
        task: String,
        have: String,
        got: String,
    },
    #[error("task {0}: length not known yet")]
    ShapeUnknown(String),
    #[error("task {task}: unusable shape: {why}")]
    BadShape { task: String, why: String },
    #[error("task {task}: piece {index} of {len} bytes does not fit the task's shape")]
    BadPiece {
        task: String,
        index: u32,
        len: usize,
    },
    #[error("task {task}: the cache quota of {quota} bytes is full (tasks being read or written cannot be evicted)")]
    QuotaFull { task: String, quota: u64 },
    #[error("task {task}: the cache's filesystem is above its {high_percent}% high watermark and nothing in the cache can be evicted (tasks being read or written stay)")]
    DiskWatermark { task: String, high_percent: u32 },
    #[error("task {task}: no space left on the disk")]
    DiskFull { task: String },
    #[error("task {0} was removed")]
    Removed(String),
    #[error("task {task}: piece {index} is being written by another download for too long")]
    PieceBusy { task: String, index: u32 },
}

/// Whether `len` bytes are piece `index` of the task as far as its shape is
/// known: inside the piece count, and exactly the piece's length (at most
/// a piece length while the content length is unknown).
pub(super) fn piece_fits(meta: &TaskMeta, index: u32, len: usize) -> bool {
    let len = len as u64;
    match meta.content_length {
        Some(content_length) => {
            let count = crate::piece::piece_count(content_length, meta.piece_length);
            let (start, end) = piece_range(index, meta.piece_length, content_length);
            index < count && len == end - start
        }
        None => index < crate::piece::MAX_PIECES && len <= meta.piece_length as u64 && len > 0,
    }
}

pub use wire::task::TaskFailure;

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Idle,
    Running,
    Failed(TaskFailure),
}

pub struct StoredTask {
    pub id: String,
    dir: PathBuf,
    pub(super) file: File,
    meta: Mutex<TaskMeta>,
    run: Mutex<RunState>,
    changed: watch::Sender<u64>,
    pins: AtomicUsize,
    removed: AtomicBool,
    last_flush: Mutex<Instant>,
    /// One flush at a time: concurrent saves would share the metadata's
    /// temp file, and one rename would find it gone.
    flushing: Mutex<()>,
    /// The store's quota, which every new piece reserves its bytes from.
    pub(super) budget: Arc<super::budget::Budget>,
    /// Pieces a read may serve without hashing them again.
    pub(super) intact: super::intact::IntactPieces,
    /// The whole content's digest, hashed in order as pieces come.
    pub(super) running: super::running_digest::RunningDigest,
    /// Pieces being written, one writer each.
    pub(super) claims: super::claims::Claims,
}

/// Keeps a task from garbage collection while alive.
pub struct PinGuard(Arc<StoredTask>);

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StoredTask {
    pub(super) fn new(
        dir: PathBuf,
        file: File,
        meta: TaskMeta,
        budget: Arc<super::budget::Budget>,
    ) -> Self {
        let (changed, _) = watch::channel(0);
        StoredTask {
            id: meta.task_id.clone(),
            dir,
            file,
            meta: Mutex::new(meta),
            run: Mutex::new(RunState::Idle),
            changed,
            pins: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            last_flush: Mutex::new(Instant::now()),
            flushing: Mutex::new(()),
            budget,
            intact: Default::default(),
            running: Default::default(),
            claims: Default::default(),
        }
    }

    pub(super) fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            task: self.id.clone(),
            source,
        }
    }

    pub(super) fn lock_meta(&self) -> MutexGuard<'_, TaskMeta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn meta(&self) -> TaskMeta {
        self.lock_meta().clone()
    }

    /// Runs `f` on the metadata under the lock (for cheap reads).
    pub fn with_meta<R>(&self, f: impl FnOnce(&TaskMeta) -> R) -> R {
        f(&self.lock_meta())
    }

    pub fn is_complete(&self) -> bool {
        self.lock_meta().complete
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    pub fn pin(self: &Arc<Self>) -> PinGuard {
        self.pins.fetch_add(1, Ordering::SeqCst);
        PinGuard(self.clone())
    }

    pub fn is_pinned(&self) -> bool {
        self.pins.load(Ordering::SeqCst) > 0
    }

    pub fn touch(&self) {
        self.lock_meta().last_access_unix = now_unix();
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(super) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn run_state(&self) -> RunState {
        self.run.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves the task to Running unless it already is; true when this
    /// caller claimed the run.
    pub fn try_claim_run(&self) -> bool {
        let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if *run == RunState::Running {
            return false;
        }
        *run = RunState::Running;
        drop(run);
        self.notify();
        true
    }

    pub fn set_run_state(&self, state: RunState) {
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.notify();
    }

    /// Records the content length and piece length. A second call must agree.
    pub fn set_shape(
        &self,
        content_length: Option<u64>,
        piece_length: u32,
    ) -> Result<(), StoreError> {
        if let Some(why) = crate::piece::shape_error(content_length, piece_length) {
            return Err(StoreError::BadShape {
                task: self.id.clone(),
                why,
            });
        }
        let mut meta = self.lock_meta();
        let conflict = |meta: &TaskMeta| StoreError::ShapeConflict {
            task: self.id.clone(),
            have: format!("{:?}/{}", meta.content_length, meta.piece_length),
            got: format!("{content_length:?}/{piece_length}"),
        };
        if meta.piece_length != 0 && meta.piece_length != piece_length {
            return Err(conflict(&meta));
        }
        if let (Some(have), Some(got)) = (meta.content_length, content_length) {
            if have != got {
                return Err(conflict(&meta));
            }
        }
        meta.piece_length = piece_length;
        if content_length.is_some() {
            meta.content_length = content_length;
        }
        if let Some(len) = meta.content_length {
            let count = crate::piece::piece_count(len, piece_length) as usize;
            let slots = count.max(meta.digests.len());
            meta.digests.resize(slots, None);
            self.set_file_len(len)?;
        }
        drop(meta);
        self.notify();
        Ok(())
    }

    /// Stores a whole piece at once; skipped when it is stored already.
    /// Bytes that do not match `digest` are refused. (Downloads write
    /// pieces as they arrive, through [`StoredTask::begin_piece`].)
    #[cfg(test)]
    pub async fn write_piece(
        self: &Arc<Self>,
        index: u32,
        data: Bytes,
        digest: String,
    ) -> Result<(), StoreError> {
        if self.with_meta(|m| m.piece_length != 0 && !piece_fits(m, index, data.len())) {
            return Err(StoreError::BadPiece {
                task: self.id.clone(),
                index,
                len: data.len(),
            });
        }
        let Some(mut writer) = self.begin_piece(index).await? else {
            return Ok(());
        };
        writer.push(&data).await?;
        let sealed = writer.seal().await?;
        if sealed.digest() != digest {
            return Err(StoreError::CorruptPiece {
                task: self.id.clone(),
                index,
            });
        }
        sealed.record().await
    }

    /// A failed write's error; a full disk is remembered so the collector
    /// frees space and readiness reports it.
    pub(super) fn write_failed(&self, e: std::io::Error) -> StoreError {
        if e.raw_os_error() == Some(28) {
            self.budget.disk_full();
            return StoreError::DiskFull {
                task: self.id.clone(),
            };
        }
        self.io(e)
    }

    /// Records piece `index` (`len` bytes, already on disk) as stored with
    /// `digest`; `reserved` bytes of the quota were held for it.
    pub(super) async fn record_piece(
        self: &Arc<Self>,
        index: u32,
        len: u64,
        digest: String,
        reserved: u64,
    ) -> Result<(), StoreError> {
        self.budget.disk_ok();
        {
            let mut meta = self.lock_meta();
            let slot = index as usize;
            if meta.digests.len() <= slot {
                meta.digests.resize(slot + 1, None);
            }
            let was_empty = meta.digests[slot].is_none();
            meta.digests[slot] = Some(digest);
            // Under the meta lock, so a concurrent discard cannot slip between.
            self.intact.wrote(index);
            self.budget.release(reserved);
            if was_empty {
                self.budget.commit_unreserved(len);
            }
            tracing::trace!(task = %self.id, index, len, "piece stored");
        }
        self.notify();
        self.advance_content_digest();
        self.flush_if_due().await
    }

    /// Sizes the data file; a write of this process as far as the pieces
    /// it keeps unhashed are concerned (the size change moves the file's
    /// modification time).
    fn set_file_len(&self, len: u64) -> Result<(), StoreError> {
        let own_write = self.intact.own_write();
        self.file.set_len(len).map_err(|e| self.io(e))?;
        own_write.done(self.data_mtime());
        Ok(())
    }

    /// The data file's modification time, if the filesystem keeps one.
    pub(super) fn data_mtime(&self) -> Option<std::time::SystemTime> {
        self.file.metadata().and_then(|m| m.modified()).ok()
    }

    /// Piece `index` whole, checked as [`StoredTask::verify_piece`] does.
    #[cfg(test)]
    pub async fn read_piece(self: &Arc<Self>, index: u32) -> Result<(Bytes, String), StoreError> {
        let (start, len, digest) = self.verify_piece(index).await?;
        Ok((self.read_at(start, len as usize).await?, digest))
    }

    /// Where stored piece `index` starts, its length and its digest.
    fn stored_piece(&self, index: u32) -> Result<(u64, u64, String), StoreError> {
        let meta = self.lock_meta();
        let Some(Some(digest)) = meta.digests.get(index as usize).cloned() else {
            return Err(StoreError::MissingPiece(self.id.clone(), index));
        };
        let content_length = meta.content_length.unwrap_or(u64::MAX);
        let (start, end) = piece_range(index, meta.piece_length, content_length);
        // Length unknown yet (origin without Content-Length): a stored
        // piece is full-sized except the last, whose size is learnt at the end.
        Ok((start, end - start, digest))
    }

    /// Makes sure stored piece `index` matches its digest, hashing it in
    /// chunks (never whole in memory) unless this process can vouch for
    /// it; [`StoredTask::read_intact`] then serves it chunk by chunk. A
    /// damaged piece is discarded. Where it starts, its length, its digest.
    pub async fn verify_piece(
        self: &Arc<Self>,
        index: u32,
    ) -> Result<(u64, u64, String), StoreError> {
        let (start, len, digest) = self.stored_piece(index)?;
        if self.intact.is_intact(index, self.data_mtime()) {
            return Ok((start, len, digest));
        }
        let task = self.clone();
        let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut hasher = crate::piece::PieceHasher::default();
            let mut buf = vec![0u8; crate::piece::IO_CHUNK];
            super::running_digest::hash_file_range(
                &task.file,
                start,
                start + len,
                &mut buf,
                &mut hasher,
            )?;
            Ok(hasher.finish())
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
        .map_err(|e| self.io(e))?;
        if actual != digest {
            tracing::warn!(task = %self.id, index, "piece on disk is corrupt, discarding it");
            self.discard_piece(index).await;
            return Err(StoreError::CorruptPiece {
                task: self.id.clone(),
                index,
            });
        }
        self.intact.verified(index);
        Ok((start, len, digest))
    }

    /// Forgets a piece so it is fetched again.
    pub async fn discard_piece(self: &Arc<Self>, index: u32) {
        {
            let mut meta = self.lock_meta();
            self.intact.forget(index);
            let content_length = meta.content_length.unwrap_or(u64::MAX);
            let (start, end) = piece_range(index, meta.piece_length, content_length);
            if let Some(slot) = meta.digests.get_mut(index as usize) {
                if slot.take().is_some() {
                    self.budget.uncommit(end - start);
                }
            }
            meta.complete = false;
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(task = %self.id, error = %e, "persisting discarded piece failed");
        }
        self.notify();
    }

    /// Waits until piece `index` is stored, the task fails, or `timeout`.
    /// Returns true when the piece is there.
    pub async fn wait_piece(&self, index: u32, timeout: Duration) -> Result<bool, TaskFailure> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.lock_meta().has_piece(index) {
                return Ok(true);
            }
            if let RunState::Failed(failure) = self.run_state() {
                return Err(failure);
            }
            if self.is_removed() {
                return Err(TaskFailure::Internal {
                    message: "task removed".into(),
                });
            }
            if self.beyond_end(index) {
                return Ok(false);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(self.lock_meta().has_piece(index)),
            }
        }
    }

    /// Waits until the content length is known (or the task fails).
    pub async fn wait_shape(&self, timeout: Duration) -> Result<Option<(u64, u32)>, TaskFailure> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let meta = self.lock_meta();
                if let (Some(len), true) = (meta.content_length, meta.piece_length > 0) {
                    return Ok(Some((len, meta.piece_length)));
                }
            }
            if let RunState::Failed(failure) = self.run_state() {
                return Err(failure);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    fn beyond_end(&self, index: u32) -> bool {
        let meta = self.lock_meta();
        meta.piece_count().is_some_and(|n| index >= n)
    }

    /// Marks the task complete (all pieces stored) and persists it.
    pub async fn mark_complete(self: &Arc<Self>, content_length: u64) -> Result<(), StoreError> {
        {
            let mut meta = self.lock_meta();
            meta.content_length = Some(content_length);
            let count = crate::piece::piece_count(content_length, meta.piece_length) as usize;
            meta.digests.truncate(count);
            meta.complete = meta.digests.len() == count && meta.digests.iter().all(Option::is_some);
        }
        self.set_file_len(content_length)?;
        self.flush().await?;
        self.notify();
        Ok(())
    }

    /// Syncs data then metadata, so recorded pieces are always on disk.
    pub async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.is_removed() {
            return Ok(());
        }
        let task = self.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _one_at_a_time = task.flushing.lock().unwrap_or_else(|e| e.into_inner());
            task.file.sync_data()?;
            let meta = task.lock_meta().clone();
            meta.save(&task.dir.join("meta.json"))
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
        .map_err(|e| self.io(e))?;
        *self.last_flush.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    async fn flush_if_due(self: &Arc<Self>) -> Result<(), StoreError> {
        let due = self
            .last_flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= FLUSH_INTERVAL;
        if due {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// The byte range of piece `index` when it is stored and the content
    /// length known.
    fn stored_range(&self, index: u32) -> Option<(u64, u64)> {
        self.with_meta(|m| {
            let total = m.content_length?;
            m.has_piece(index)
                .then(|| crate::piece::piece_range(index, m.piece_length, total))
        })
    }

    /// Hashes into the running content digest, in the background, the
    /// stored pieces after the last one hashed (tasks with a known digest).
    fn advance_content_digest(self: &Arc<Self>) {
        let next = self.running.next_piece();
        let due =
            self.with_meta(|m| m.expected_digest.is_some()) && self.stored_range(next).is_some();
        if !due {
            return;
        }
        let task = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = task
                .running
                .try_advance(&task.file, |i| task.stored_range(i))
            {
                tracing::debug!(task = %task.id, error = %e, "content digest: read-back failed; the final check reads again");
            }
        });
    }

    /// The sha256 digest of the whole content (see [`super::running_digest`]).
    pub async fn content_digest(self: &Arc<Self>) -> Result<String, StoreError> {
        let task = self.clone();
        tokio::task::spawn_blocking(move || {
            let (total, count) = task.with_meta(|m| {
                let total = m.content_length.unwrap_or(0);
                (
                    total,
                    crate::piece::piece_count(total, m.piece_length.max(1)),
                )
            });
            task.running
                .finish(&task.file, |i| task.stored_range(i), count, total)
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
        .map_err(|e| self.io(e))
    }

    /// Reads `len` bytes at `offset` of the data file (stored pieces only).
    pub async fn read_at(self: &Arc<Self>, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        let task = self.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            task.file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
        .map(Bytes::from)
        .map_err(|e| self.io(e))
    }

    /// Bytes `[offset, offset + len)` of piece `index`, read straight from
    /// disk when the piece is intact as this process knows it (see
    /// [`StoredTask::verify_piece`]); `None` when it must be verified
    /// first. Lets a reader stream a piece in small chunks.
    pub async fn read_intact(
        self: &Arc<Self>,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        if !self.with_meta(|m| m.has_piece(index)) {
            return Ok(None);
        }
        let task = self.clone();
        let (data, mtime) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut buf = vec![0u8; len];
            task.file.read_exact_at(&mut buf, offset)?;
            Ok((buf, task.data_mtime()))
        })
        .await
        .map_err(|e| self.io(std::io::Error::other(e)))?
        .map_err(|e| self.io(e))?;
        Ok(self
            .intact
            .is_intact(index, mtime)
            .then(|| Bytes::from(data)))
    }

    /// Like [`StoredTask::read_intact`], but a piece this process can no
    /// longer vouch for (its file changed since it was checked) is checked
    /// against its digest again first: a change elsewhere in the file must
    /// not cut every upload and read under way. `None` if it changed again
    /// meanwhile; a missing piece is an error, a damaged one is discarded
    /// (an error too).
    pub async fn read_verified(
        self: &Arc<Self>,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        if let Some(bytes) = self.read_intact(index, offset, len).await? {
            return Ok(Some(bytes));
        }
        self.verify_piece(index).await?;
        self.read_intact(index, offset, len).await
    }

    pub(super) fn mark_removed(&self) -> PathBuf {
        self.removed.store(true, Ordering::SeqCst);
        self.notify();
        self.dir.clone()
    }
}
