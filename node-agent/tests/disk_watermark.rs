//! The cache's GC on a real, small filesystem that another writer fills:
//! a 64 MiB tmpfs mounted for the test (root only; skipped otherwise).
//! The cache fills it to about 60 %, another writer pushes it past the
//! 90 % high watermark, and the collector must bring it back under 70 %
//! by evicting cached tasks, never touching the other writer's file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_agent::store::{fs_usage, EvictReason, Store, StoreError, Watermarks};

const MIB: usize = 1 << 20;

/// The tmpfs, unmounted when dropped (lazily if something still holds it).
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = parent.path().join("fs");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs {
            dir,
            _parent: parent,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn used_percent(dir: &Path) -> f64 {
    fs_usage(dir).expect("statvfs").used_ratio() * 100.0
}

fn task_id(n: u8) -> String {
    format!("{:064x}", n)
}

/// Stores a complete task of `pieces` 1 MiB pieces.
async fn cache_task(store: &Store, n: u8, pieces: u32) -> Result<(), StoreError> {
    let task = store
        .get_or_create(&task_id(n), &format!("http://origin/{n}"), None)
        .expect("task created");
    let len = u64::from(pieces) * MIB as u64;
    task.set_shape(Some(len), MIB as u32)?;
    // As a download writes: its task pinned, room reserved first, then
    // the bytes.
    let _writing = task.pin();
    for i in 0..pieces {
        let data = vec![n.wrapping_add(i as u8); MIB];
        if let Some(mut writer) = task.begin_piece(i).await? {
            writer.push(&data).await?;
            writer.finish().await?;
        }
    }
    task.mark_complete(len).await
}

/// Another writer's file of `bytes`; returns its path.
fn other_writer(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0xa5u8; bytes]).expect("other writer");
    path
}

#[tokio::test]
async fn gc_brings_a_filesystem_filled_by_others_under_the_low_watermark() {
    if !is_root() {
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let fs = match Tmpfs::mount("64m") {
        Ok(fs) => fs,
        Err(e) => {
            println!("skipped: cannot mount a tmpfs here: {e}");
            return;
        }
    };
    let marks = Watermarks {
        high: 0.9,
        low: 0.7,
    };
    // The quota is far away: only the filesystem can bind.
    let store = Arc::new(
        Store::open(&fs.dir.join("data"), 1 << 30, marks)
            .expect("open store")
            .with_disk_watermarks(),
    );
    // Ten tasks of 4 MiB: 40 MiB of 64, about 62 %.
    for n in 1..=10u8 {
        cache_task(&store, n, 4).await.expect("cached");
    }
    let cached = used_percent(&fs.dir);
    println!("tmpfs used with the cache alone: {cached:.1}%");
    assert!(cached < 90.0, "{cached}");
    assert!(store.collect_garbage().is_empty(), "under the watermarks");

    // The most recently used task is being read: it must stay.
    let reading = store.get(&task_id(10)).expect("task 10").pin();
    // Another writer: 20 MiB more, past 90 %.
    let other = other_writer(&fs.dir, "other-writer.bin", 20 * MIB);
    let before = used_percent(&fs.dir);
    println!("tmpfs used after the other writer: {before:.1}%");
    assert!(before > 90.0, "{before}");

    // A new piece now waits for the collector, which a real daemon runs
    // on the budget's pressure signal; bounded by the room wait.
    let collector = {
        let store = store.clone();
        let root = fs.dir.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), store.budget().pressure())
                .await
                .expect("a writer asked for room");
            let evicted = store.collect_garbage();
            // Measured before the waiting writer runs (no await between).
            (evicted, used_percent(&root))
        })
    };
    let started = Instant::now();
    cache_task(&store, 11, 1)
        .await
        .expect("written once the collector made room");
    let (evicted, after_gc) = collector.await.expect("collector");
    let after = used_percent(&fs.dir);
    println!(
        "tmpfs used after GC: {after_gc:.1}% ({} tasks evicted, {} MiB, the waiting write took {:?}); with that 1 MiB piece: {after:.1}%",
        evicted.len(),
        evicted.iter().map(|e| e.bytes).sum::<u64>() / MIB as u64,
        started.elapsed()
    );
    assert!(after_gc <= 70.0, "{after_gc}");
    assert!(after < 90.0, "{after}");
    assert!(!evicted.is_empty());
    assert!(evicted.iter().all(|e| e.reason == EvictReason::Watermark));
    // (Access times have one-second steps: the LRU order among these
    // tasks is a tie, tested in the unit tests instead.) The pinned task
    // stayed.
    assert!(evicted.iter().all(|e| e.task_id != task_id(10)));
    assert!(store.get(&task_id(10)).is_some());
    for e in &evicted {
        assert!(!fs.dir.join("data/tasks").join(&e.task_id).exists());
    }
    // The other writer's file is untouched.
    let meta = std::fs::metadata(&other).expect("other writer's file is there");
    assert_eq!(meta.len(), 20 * MIB as u64);

    // The other writer now takes almost everything: with the rest of the
    // cache pinned or gone, new pieces are refused rather than written
    // past the watermark, and the other writer's files stay.
    // To 95 % used, whatever the cache holds now.
    let now = fs_usage(&fs.dir).expect("statvfs");
    let to_95 = (now.total as f64 * 0.95) as u64 - now.used();
    let big = other_writer(&fs.dir, "other-writer-2.bin", to_95 as usize);
    let left = store.list();
    let pinned: Vec<String> = left.iter().map(|t| t.id.clone()).collect();
    let _pins: Vec<_> = left.iter().map(|t| t.pin()).collect();
    let full = used_percent(&fs.dir);
    println!("tmpfs used with everything left pinned: {full:.1}%");
    assert!(full > 90.0, "{full}");
    let refused = cache_task(&store, 12, 1).await;
    assert!(
        matches!(refused, Err(StoreError::DiskWatermark { .. })),
        "{refused:?}"
    );
    // Only the refused task's empty entry (not pinned) can go.
    let last = store.collect_garbage();
    assert!(last.iter().all(|e| e.task_id == task_id(12)), "{last:?}");
    assert!(pinned.iter().all(|id| store.get(id).is_some()));
    assert!(other.exists() && big.exists());
    drop(reading);
}
