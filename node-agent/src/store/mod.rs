//! The content store under `--data-dir`: one directory per task holding the
//! data file and its metadata. Survives restarts: completed tasks are served
//! again and partial ones resume from their recorded pieces.

mod budget;
mod claims;
mod disk;
mod gc;
mod intact;
mod meta;
mod piece_writer;
mod running_digest;
mod task;

pub use budget::{Budget, NoRoom};
pub use disk::{fs_usage, FsUsage};
pub use gc::{plan, plan_eviction, EvictReason, GcCandidate, GcLimits, Watermarks};
pub use meta::TaskMeta;
pub use piece_writer::{PieceWriter, SealedPiece};
pub use task::{PinGuard, RunState, StoreError, StoredTask, TaskFailure};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::task_id::is_valid_task_id;

/// Collection rounds at most: freed bytes are estimated from what tasks
/// hold, and the filesystem measured again after each round.
const GC_ROUNDS: usize = 4;

pub struct Store {
    root: PathBuf,
    tasks: Mutex<HashMap<String, Arc<StoredTask>>>,
    budget: Arc<Budget>,
    watermarks: Watermarks,
    /// The same watermarks also hold for the filesystem's used share.
    watch_disk: bool,
    task_ttl: Option<Duration>,
}

/// A task one collection removed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub task_id: String,
    pub reason: EvictReason,
    pub bytes: u64,
}

impl Store {
    /// Opens (or creates) the store and loads every task found on disk.
    /// Unreadable tasks are removed: they would only be fetched again.
    pub fn open(data_dir: &Path, quota: u64, watermarks: Watermarks) -> std::io::Result<Store> {
        let root = data_dir.join("tasks");
        std::fs::create_dir_all(&root)?;
        let mut tasks = HashMap::new();
        // Recounted below, once the tasks on disk are known.
        let budget = Arc::new(Budget::new(quota, 0));
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !is_valid_task_id(&name) {
                continue;
            }
            match Self::load_task(&dir, &budget) {
                Ok(task) if task.id == name => {
                    tasks.insert(name, Arc::new(task));
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(dir = %dir.display(), "dropping unreadable task directory");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        budget.recount(
            tasks
                .values()
                .map(|t: &Arc<StoredTask>| t.with_meta(|m| m.stored_bytes()))
                .sum(),
        );
        tracing::info!(root = %root.display(), tasks = tasks.len(), used = budget.used(), "content store opened");
        Ok(Store {
            root,
            tasks: Mutex::new(tasks),
            budget,
            watermarks,
            watch_disk: false,
            task_ttl: None,
        })
    }

    /// Also collects when the filesystem holding the store passes the high
    /// watermark (its used share, other writers included), down to the low
    /// one, and refuses new pieces while it stays above.
    pub fn with_disk_watermarks(mut self) -> Self {
        self.watch_disk = true;
        self.budget
            .limit_disk(self.root.clone(), self.watermarks.high);
        self
    }

    /// Evicts tasks not accessed for longer than `ttl` (zero: never).
    pub fn with_task_ttl(mut self, ttl: Duration) -> Self {
        self.task_ttl = (!ttl.is_zero()).then_some(ttl);
        self
    }

    /// The filesystem holding the store, as kubelet would count it.
    pub fn fs_usage(&self) -> std::io::Result<FsUsage> {
        fs_usage(&self.root)
    }

    fn load_task(dir: &Path, budget: &Arc<Budget>) -> std::io::Result<StoredTask> {
        let meta = TaskMeta::load(&dir.join("meta.json"))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("data"))?;
        Ok(StoredTask::new(
            dir.to_path_buf(),
            file,
            meta,
            budget.clone(),
        ))
    }

    /// The quota every piece is written under.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StoredTask>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, task_id: &str) -> Option<Arc<StoredTask>> {
        self.lock().get(task_id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<StoredTask>> {
        self.lock().values().cloned().collect()
    }

    /// Returns the task, creating an empty one if needed.
    pub fn get_or_create(
        &self,
        task_id: &str,
        url: &str,
        expected_digest: Option<String>,
    ) -> std::io::Result<Arc<StoredTask>> {
        if !is_valid_task_id(task_id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid task id {task_id:?}"),
            ));
        }
        let mut tasks = self.lock();
        if let Some(task) = tasks.get(task_id) {
            return Ok(task.clone());
        }
        let dir = self.root.join(task_id);
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("data"))?;
        let meta = TaskMeta::new(task_id, url, expected_digest);
        meta.save(&dir.join("meta.json"))?;
        let task = Arc::new(StoredTask::new(dir, file, meta, self.budget.clone()));
        tasks.insert(task_id.to_string(), task.clone());
        Ok(task)
    }

    /// Removes a task and its files. Refuses pinned tasks unless `force`
    /// (the owner of a failed download removes what it wrote).
    pub fn remove(&self, task_id: &str, force: bool) -> bool {
        let task = {
            let mut tasks = self.lock();
            match tasks.get(task_id) {
                Some(t) if force || !t.is_pinned() => tasks.remove(task_id),
                _ => None,
            }
        };
        let Some(task) = task else { return false };
        self.budget.uncommit(task.with_meta(|m| m.stored_bytes()));
        let dir = task.mark_removed();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing task directory failed");
        }
        true
    }

    /// Bytes held by all tasks, and reserved by writes in progress.
    pub fn used_bytes(&self) -> u64 {
        self.budget.used()
    }

    /// Evicts tasks not accessed within the TTL, then least recently used
    /// ones once the cache passes its quota's high watermark or the
    /// filesystem its own, down to the low one; pinned tasks (being read
    /// or written) stay. Returns what was removed.
    pub fn collect_garbage(&self) -> Vec<Evicted> {
        let mut evicted = Vec::new();
        for round in 0..GC_ROUNDS {
            // Later rounds finish what the estimate left of a filesystem
            // collection: down to its low watermark, not only when above
            // the high one. The quota's count is exact: round one did it.
            let later = round > 0;
            let marks = if later {
                Watermarks {
                    high: self.watermarks.low,
                    ..self.watermarks
                }
            } else {
                self.watermarks
            };
            let removed = self.collect_round(marks, !later);
            let for_disk = removed.iter().any(|e| e.reason == EvictReason::Watermark);
            evicted.extend(removed);
            if !for_disk {
                break;
            }
        }
        if !evicted.is_empty() {
            self.budget.disk_ok();
        }
        self.budget.freed();
        evicted
    }

    /// `with_quota`: false leaves the quota out (the filesystem alone).
    fn collect_round(&self, marks: Watermarks, with_quota: bool) -> Vec<Evicted> {
        let candidates: Vec<GcCandidate> = self
            .list()
            .iter()
            .map(|t| {
                t.with_meta(|m| GcCandidate {
                    task_id: m.task_id.clone(),
                    bytes: m.stored_bytes(),
                    last_access_unix: m.last_access_unix,
                    pinned: t.is_pinned(),
                })
            })
            .collect();
        let stored: u64 = candidates.iter().map(|c| c.bytes).sum();
        self.budget.recount(stored);
        // Writes in progress count as used; on a full disk the quota is
        // what is held now, so the collector frees space below it.
        let mut quota = self.budget.quota();
        if self.budget.disk_full_since().is_some() {
            quota = quota.min(stored);
        }
        if !with_quota {
            quota = u64::MAX;
        }
        let fs = if self.watch_disk {
            match self.fs_usage() {
                Ok(fs) => Some(fs),
                Err(e) => {
                    tracing::warn!(root = %self.root.display(), error = %e, "cannot measure the cache's filesystem");
                    None
                }
            }
        } else {
            None
        };
        let limits = GcLimits {
            in_flight: self.budget.in_flight(),
            quota,
            marks,
            fs,
            now_unix: meta::now_unix(),
            ttl: self.task_ttl,
        };
        let bytes_of: HashMap<&str, u64> = candidates
            .iter()
            .map(|c| (c.task_id.as_str(), c.bytes))
            .collect();
        plan(&candidates, &limits)
            .into_iter()
            .filter(|(id, _)| self.remove(id, false))
            .map(|(task_id, reason)| {
                tracing::info!(task = %task_id, reason = reason.as_str(), "evicted from cache");
                Evicted {
                    bytes: bytes_of.get(task_id.as_str()).copied().unwrap_or(0),
                    task_id,
                    reason,
                }
            })
            .collect()
    }

    pub fn quota(&self) -> u64 {
        self.budget.quota()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piece::piece_digest;
    use bytes::Bytes;
    use std::time::Duration;

    fn id(n: u8) -> String {
        format!("{:064x}", n)
    }

    #[tokio::test]
    async fn the_quota_is_a_hard_limit_that_the_collector_makes_room_in() {
        let dir = tempfile::tempdir().unwrap();
        let marks = Watermarks {
            high: 0.9,
            low: 0.5,
        };
        let store = Arc::new(Store::open(dir.path(), 12, marks).unwrap());
        let old = store.get_or_create(&id(1), "http://o/old", None).unwrap();
        old.set_shape(Some(8), 4).unwrap();
        for i in 0..2 {
            let data = Bytes::from_static(b"abcd");
            old.write_piece(i, data.clone(), piece_digest(&data))
                .await
                .unwrap();
        }
        old.mark_complete(8).await.unwrap();
        // A pinned task (being read) cannot make room: the write fails
        // instead of passing the quota.
        let reading = old.pin();
        let new = store.get_or_create(&id(2), "http://o/new", None).unwrap();
        // Pinned while written, as a download pins its task.
        let _writing = new.pin();
        new.set_shape(Some(8), 4).unwrap();
        let data = Bytes::from_static(b"efgh");
        new.write_piece(0, data.clone(), piece_digest(&data))
            .await
            .unwrap();
        let refused = new.write_piece(1, data.clone(), piece_digest(&data)).await;
        assert!(
            matches!(refused, Err(StoreError::QuotaFull { .. })),
            "{refused:?}"
        );
        assert!(store.used_bytes() <= 12);
        // Unpinned, the old task is evicted as soon as a write needs room.
        drop(reading);
        let collector = {
            let store = store.clone();
            tokio::spawn(async move {
                store.budget().pressure().await;
                store.collect_garbage()
            })
        };
        new.write_piece(1, data.clone(), piece_digest(&data))
            .await
            .unwrap();
        let evicted = collector.await.unwrap();
        assert_eq!(
            evicted,
            vec![Evicted {
                task_id: id(1),
                reason: EvictReason::Quota,
                bytes: 8
            }]
        );
        assert_eq!(store.used_bytes(), 8);
    }

    #[tokio::test]
    async fn hostile_shapes_and_pieces_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(9), "http://o/x", None).unwrap();
        // Piece length 0 (a division by zero later) and 2^64 one-byte
        // pieces (tables sized by the count) never become the shape.
        for (length, piece) in [(Some(10), 0), (Some(u64::MAX), 1), (None, u32::MAX)] {
            assert!(
                matches!(
                    task.set_shape(length, piece),
                    Err(StoreError::BadShape { .. })
                ),
                "{length:?}/{piece}"
            );
        }
        task.set_shape(Some(10), 4).unwrap();
        // A piece outside the task, or of the wrong size, is not written.
        for (index, data) in [
            (3u32, &b"ab"[..]),
            (1, b"abc"),
            (2, b"abc"),
            (u32::MAX, b"a"),
        ] {
            let data = Bytes::copy_from_slice(data);
            let digest = piece_digest(&data);
            assert!(
                matches!(
                    task.write_piece(index, data, digest).await,
                    Err(StoreError::BadPiece { .. })
                ),
                "piece {index}"
            );
        }
        let last = Bytes::from_static(b"ij");
        task.write_piece(2, last.clone(), piece_digest(&last))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pieces_survive_reopen_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
            let task = store.get_or_create(&id(1), "http://o/x", None).unwrap();
            task.set_shape(Some(10), 4).unwrap();
            for (i, chunk) in [&b"abcd"[..], b"efgh", b"ij"].iter().enumerate() {
                let data = Bytes::copy_from_slice(chunk);
                task.write_piece(i as u32, data.clone(), piece_digest(&data))
                    .await
                    .unwrap();
            }
            task.mark_complete(10).await.unwrap();
        }
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get(&id(1)).expect("task reloaded");
        assert!(task.is_complete());
        let (data, _) = task.read_piece(2).await.unwrap();
        assert_eq!(&data[..], b"ij");
        assert_eq!(
            task.content_digest().await.unwrap(),
            piece_digest(b"abcdefghij")
        );

        // Damage piece 1 on disk: reading it must fail and forget the piece.
        let data_path = dir.path().join("tasks").join(id(1)).join("data");
        let mut bytes = std::fs::read(&data_path).unwrap();
        bytes[5] ^= 0xff;
        std::fs::write(&data_path, bytes).unwrap();
        assert!(matches!(
            task.read_piece(1).await,
            Err(StoreError::CorruptPiece { .. })
        ));
        assert!(!task.is_complete());
        assert_eq!(task.meta().missing_pieces(), vec![1]);
    }

    #[tokio::test]
    async fn pieces_written_here_are_not_hashed_again_unless_another_writer_came() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(1), "http://o/x", None).unwrap();
        task.set_shape(Some(8), 4).unwrap();
        for (i, chunk) in [&b"abcd"[..], b"efgh"].iter().enumerate() {
            let data = Bytes::copy_from_slice(chunk);
            task.write_piece(i as u32, data.clone(), piece_digest(&data))
                .await
                .unwrap();
        }
        // Completing sizes the file (a later modification time): still
        // this process's own write.
        std::thread::sleep(std::time::Duration::from_millis(20));
        task.mark_complete(8).await.unwrap();
        let data_path = dir.path().join("tasks").join(id(1)).join("data");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data_path)
            .unwrap();
        let written_at = file.metadata().unwrap().modified().unwrap();
        // A change that hides its traces (the modification time put back)
        // is served as written: the read trusts its own write, no hash.
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"X", 0).unwrap();
        file.set_modified(written_at).unwrap();
        let (data, _) = task.read_piece(0).await.unwrap();
        assert_eq!(&data[..], b"Xbcd", "read without hashing");
        // A visible write by someone else: every piece is checked again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.write_all_at(b"Y", 4).unwrap();
        assert!(matches!(
            task.read_piece(0).await,
            Err(StoreError::CorruptPiece { index: 0, .. })
        ));
        assert!(matches!(
            task.read_piece(1).await,
            Err(StoreError::CorruptPiece { index: 1, .. })
        ));
        assert_eq!(task.meta().missing_pieces(), vec![0, 1]);
    }

    #[tokio::test]
    async fn a_piece_written_in_chunks_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 16, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(4), "http://o/w", None).unwrap();
        task.set_shape(Some(10), 4).unwrap();
        let mut writer = task.begin_piece(1).await.unwrap().expect("not stored yet");
        assert_eq!(store.budget().in_flight(), 4, "room reserved up front");
        writer.push(b"ef").await.unwrap();
        assert!(
            !task.with_meta(|m| m.has_piece(1)),
            "invisible until finished"
        );
        // Past the piece's end: refused, nothing written into piece 2.
        assert!(matches!(
            writer.push(b"ghi").await,
            Err(StoreError::BadPiece { .. })
        ));
        writer.push(b"gh").await.unwrap();
        writer.finish().await.unwrap();
        let (data, digest) = task.read_piece(1).await.unwrap();
        assert_eq!(&data[..], b"efgh");
        assert_eq!(digest, piece_digest(b"efgh"));
        assert_eq!((store.budget().in_flight(), store.used_bytes()), (0, 4));
        assert!(
            task.begin_piece(1).await.unwrap().is_none(),
            "stored: skipped"
        );

        // Short of the piece's length: never recorded, the room given back.
        let mut short = task.begin_piece(0).await.unwrap().unwrap();
        short.push(b"abc").await.unwrap();
        assert!(matches!(
            short.finish().await,
            Err(StoreError::BadPiece { .. })
        ));
        // Abandoned halfway (a broken body): the same.
        let mut abandoned = task.begin_piece(2).await.unwrap().unwrap();
        abandoned.push(b"i").await.unwrap();
        drop(abandoned);
        assert_eq!(task.meta().missing_pieces(), vec![0, 2]);
        assert_eq!((store.budget().in_flight(), store.used_bytes()), (0, 4));
        // Outside the task: refused before any byte.
        assert!(matches!(
            task.begin_piece(3).await,
            Err(StoreError::BadPiece { .. })
        ));
    }

    #[tokio::test]
    async fn a_second_writer_of_a_piece_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(7), "http://o/c", None).unwrap();
        task.set_shape(Some(8), 4).unwrap();
        let mut first = task.begin_piece(0).await.unwrap().unwrap();
        let second = {
            let task = task.clone();
            tokio::spawn(async move { task.begin_piece(0).await.map(|w| w.is_some()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "no two writers on one piece");
        first.push(b"abcd").await.unwrap();
        first.finish().await.unwrap();
        assert!(
            !second.await.unwrap().unwrap(),
            "stored by the first: nothing to write"
        );

        // A first writer that gives up hands the piece to the next.
        let abandoned = task.begin_piece(1).await.unwrap().unwrap();
        let next = {
            let task = task.clone();
            tokio::spawn(async move { task.begin_piece(1).await.map(|w| w.is_some()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(abandoned);
        assert!(
            next.await.unwrap().unwrap(),
            "the piece is the next writer's"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_content_digest_is_hashed_in_order_as_pieces_come() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let whole = piece_digest(b"abcdefghij");
        let task = store
            .get_or_create(&id(5), "http://o/d", Some(whole.clone()))
            .unwrap();
        task.set_shape(Some(10), 4).unwrap();
        // Out of order: nothing can be hashed until piece 0 is there.
        for (i, chunk) in [(2u32, &b"ij"[..]), (1, b"efgh"), (0, b"abcd")] {
            let data = Bytes::copy_from_slice(chunk);
            task.write_piece(i, data.clone(), piece_digest(&data))
                .await
                .unwrap();
        }
        // The background catch-up hashes all three (bounded wait).
        for _ in 0..200 {
            if task.running.next_piece() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(task.running.next_piece(), 3);
        assert_eq!(task.content_digest().await.unwrap(), whole);

        // A piece missing: the digest of the file as it is, not the whole.
        let holes = store
            .get_or_create(&id(6), "http://o/h", Some(whole.clone()))
            .unwrap();
        holes.set_shape(Some(10), 4).unwrap();
        let data = Bytes::from_static(b"abcd");
        holes
            .write_piece(0, data.clone(), piece_digest(&data))
            .await
            .unwrap();
        let mut file = b"abcd".to_vec();
        file.resize(10, 0);
        assert_eq!(holes.content_digest().await.unwrap(), piece_digest(&file));
    }

    #[tokio::test]
    async fn a_piece_is_verified_in_chunks_before_it_is_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let piece = vec![7u8; 3 * crate::piece::IO_CHUNK + 5];
        let len = piece.len() as u64;
        {
            let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
            let task = store.get_or_create(&id(8), "http://o/v", None).unwrap();
            task.set_shape(Some(2 * len), len as u32).unwrap();
            for i in 0..2 {
                let data = Bytes::from(piece.clone());
                task.write_piece(i, data.clone(), piece_digest(&data))
                    .await
                    .unwrap();
            }
            task.mark_complete(2 * len).await.unwrap();
        }
        // Reopened: nothing vouched for, so nothing streams unchecked.
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get(&id(8)).unwrap();
        assert!(task.read_intact(0, 0, 16).await.unwrap().is_none());
        let (start, got_len, digest) = task.verify_piece(0).await.unwrap();
        assert_eq!((start, got_len, digest), (0, len, piece_digest(&piece)));
        assert_eq!(
            &task.read_intact(0, 0, 16).await.unwrap().unwrap()[..],
            &[7u8; 16]
        );
        // Damaged on disk: refused and forgotten, never streamed.
        let data_path = dir.path().join("tasks").join(id(8)).join("data");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data_path)
            .unwrap();
        use std::os::unix::fs::FileExt;
        std::thread::sleep(Duration::from_millis(20));
        file.write_all_at(b"X", len + 2).unwrap();
        assert!(matches!(
            task.verify_piece(1).await,
            Err(StoreError::CorruptPiece { index: 1, .. })
        ));
        assert_eq!(task.meta().missing_pieces(), vec![1]);
    }

    #[tokio::test]
    async fn a_change_elsewhere_in_the_file_does_not_cut_intact_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(9), "http://o/w", None).unwrap();
        task.set_shape(Some(8), 4).unwrap();
        for (i, data) in [(0, b"abcd"), (1, b"efgh")] {
            let data = Bytes::from_static(data);
            task.write_piece(i, data.clone(), piece_digest(&data))
                .await
                .unwrap();
        }
        assert!(task.read_intact(0, 0, 2).await.unwrap().is_some());
        // Someone else writes into piece 1: the file's time moves on.
        std::thread::sleep(Duration::from_millis(20));
        let data_path = dir.path().join("tasks").join(id(9)).join("data");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data_path)
            .unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"X", 5).unwrap();
        drop(file);
        // Piece 0 can no longer be vouched for unchecked, but it is intact.
        assert!(task.read_intact(0, 0, 2).await.unwrap().is_none());
        assert_eq!(
            &task.read_verified(0, 2, 2).await.unwrap().unwrap()[..],
            b"cd"
        );
        // Piece 1 is damaged: refused and forgotten.
        assert!(matches!(
            task.read_verified(1, 4, 4).await,
            Err(StoreError::CorruptPiece { index: 1, .. })
        ));
        assert_eq!(task.meta().missing_pieces(), vec![1]);
        assert!(matches!(
            task.read_verified(1, 4, 4).await,
            Err(StoreError::MissingPiece(_, 1))
        ));
    }

    #[tokio::test]
    async fn partial_task_resumes_with_its_missing_pieces() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
            let task = store.get_or_create(&id(2), "http://o/y", None).unwrap();
            task.set_shape(Some(12), 4).unwrap();
            let data = Bytes::from_static(b"wxyz");
            task.write_piece(1, data.clone(), piece_digest(&data))
                .await
                .unwrap();
            task.flush().await.unwrap();
        }
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get(&id(2)).unwrap();
        assert_eq!(task.meta().missing_pieces(), vec![0, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_never_lose_the_metadata_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(3), "http://o/z", None).unwrap();
        task.set_shape(Some(16), 4).unwrap();
        let flushes: Vec<_> = (0..64)
            .map(|_| {
                let task = task.clone();
                tokio::spawn(async move { task.flush().await })
            })
            .collect();
        for flush in flushes {
            flush.await.unwrap().expect("every flush succeeds");
        }
    }

    #[tokio::test]
    async fn waiting_reader_wakes_when_piece_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default()).unwrap();
        let task = store.get_or_create(&id(3), "http://o/z", None).unwrap();
        task.set_shape(Some(4), 4).unwrap();
        let waiter = {
            let task = task.clone();
            tokio::spawn(async move { task.wait_piece(0, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let data = Bytes::from_static(b"1234");
        task.write_piece(0, data.clone(), piece_digest(&data))
            .await
            .unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(true));
        assert_eq!(task.wait_piece(0, Duration::from_millis(1)).await, Ok(true));
    }

    #[tokio::test]
    async fn tasks_past_their_ttl_go_even_under_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30, Watermarks::default())
            .unwrap()
            .with_task_ttl(Duration::from_secs(3600));
        let mut pins = Vec::new();
        for n in 1..=3u8 {
            let task = store.get_or_create(&id(n), "http://o", None).unwrap();
            task.set_shape(Some(4), 4).unwrap();
            let data = Bytes::from_static(b"abcd");
            task.write_piece(0, data.clone(), piece_digest(&data))
                .await
                .unwrap();
            if n != 3 {
                // Last read two hours ago.
                task.lock_meta().last_access_unix -= 7200;
            }
            if n == 2 {
                pins.push(task.pin());
            }
        }
        let evicted = store.collect_garbage();
        assert_eq!(
            evicted,
            vec![Evicted {
                task_id: id(1),
                reason: EvictReason::Ttl,
                bytes: 4
            }]
        );
        // Pinned (in use) stays however old; fresh stays.
        assert!(store.get(&id(2)).is_some() && store.get(&id(3)).is_some());
        drop(pins);
    }

    #[tokio::test]
    async fn gc_keeps_pinned_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            12,
            Watermarks {
                high: 0.8,
                low: 0.5,
            },
        )
        .unwrap();
        let mut pins = Vec::new();
        for n in 1..=3u8 {
            let task = store.get_or_create(&id(n), "http://o", None).unwrap();
            task.set_shape(Some(4), 4).unwrap();
            let data = Bytes::from_static(b"abcd");
            task.write_piece(0, data.clone(), piece_digest(&data))
                .await
                .unwrap();
            if n == 1 {
                pins.push(task.pin());
            }
        }
        // 12 bytes > 9.6: evict unpinned tasks until <= 6 bytes.
        let removed = store.collect_garbage();
        assert_eq!(removed.len(), 2);
        assert!(store.get(&id(1)).is_some());
        drop(pins);
    }
}
