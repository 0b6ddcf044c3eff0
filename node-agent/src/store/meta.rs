//! A task's metadata on disk, written crash-safely: a temp file, fsync, then
//! rename over the old one, so a crash leaves either the old or the new file.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

use crate::piece::{piece_count, Bitmap};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskMeta {
    pub task_id: String,
    pub url: String,
    /// Unknown until the origin (or a parent) tells.
    pub content_length: Option<u64>,
    pub piece_length: u32,
    /// Digest of each finished piece (`None`: not stored yet), as recorded by
    /// the first downloader.
    pub digests: Vec<Option<String>>,
    /// Digest of the whole content when known up front (OCI blobs, dfget --digest).
    pub expected_digest: Option<String>,
    pub complete: bool,
    pub last_access_unix: u64,
}

impl TaskMeta {
    pub fn new(task_id: &str, url: &str, expected_digest: Option<String>) -> Self {
        TaskMeta {
            task_id: task_id.to_string(),
            url: url.to_string(),
            content_length: None,
            piece_length: 0,
            digests: Vec::new(),
            expected_digest,
            complete: false,
            last_access_unix: now_unix(),
        }
    }

    /// The shape as the scheduler contract carries it.
    pub fn proto_shape(&self) -> proto::TaskShape {
        proto::TaskShape {
            content_length: self.content_length.unwrap_or(0),
            piece_length: self.piece_length,
            piece_count: self.piece_count().unwrap_or(0),
            known: self.shape_known(),
        }
    }

    pub fn shape_known(&self) -> bool {
        self.content_length.is_some() && self.piece_length > 0
    }

    pub fn piece_count(&self) -> Option<u32> {
        Some(piece_count(self.content_length?, self.piece_length))
    }

    pub fn has_piece(&self, index: u32) -> bool {
        matches!(self.digests.get(index as usize), Some(Some(_)))
    }

    pub fn finished_pieces(&self) -> u32 {
        self.digests.iter().filter(|d| d.is_some()).count() as u32
    }

    pub fn bitmap(&self) -> Bitmap {
        self.digests
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Bytes of the finished pieces.
    pub fn stored_bytes(&self) -> u64 {
        let Some(len) = self.content_length else {
            return self.finished_pieces() as u64 * self.piece_length as u64;
        };
        self.digests
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .map(|(i, _)| crate::piece::piece_range(i as u32, self.piece_length, len))
            .map(|(s, e)| e - s)
            .sum()
    }

    pub fn missing_pieces(&self) -> Vec<u32> {
        match self.piece_count() {
            Some(n) => (0..n).filter(|i| !self.has_piece(*i)).collect(),
            None => Vec::new(),
        }
    }

    pub fn load(path: &Path) -> std::io::Result<TaskMeta> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self)?;
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        let mut meta = TaskMeta::new("t", "http://o/x", None);
        meta.content_length = Some(10);
        meta.piece_length = 4;
        meta.digests = vec![Some("sha256:aa".into()), None, Some("sha256:bb".into())];
        meta.save(&path).unwrap();
        let loaded = TaskMeta::load(&path).unwrap();
        assert_eq!(loaded, meta);
        assert_eq!(loaded.missing_pieces(), vec![1]);
        assert_eq!(loaded.stored_bytes(), 4 + 2);
        assert!(!path.with_extension("json.tmp").exists());
    }
}
