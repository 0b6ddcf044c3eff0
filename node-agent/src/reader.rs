//! Streams a task's bytes in order to a local reader while later pieces are
//! still arriving: each piece is read as soon as it is stored.

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;

use crate::piece::{piece_range, pieces_for_range};
use crate::store::{PinGuard, StoredTask};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("download failed: {0}")]
    Failed(crate::store::TaskFailure),
    #[error("no progress for {0:?} while waiting for piece {1}")]
    Stalled(Duration, u32),
    #[error("content not verified against its digest within {0:?}")]
    Unverified(Duration),
    #[error("reading stored piece: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("piece {0} changed on disk while it was read")]
    Changed(u32),
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// The most a reader is sent at once.
const CHUNK: u64 = crate::piece::IO_CHUNK as u64;

struct Cursor {
    task: Arc<StoredTask>,
    _pin: PinGuard,
    offset: u64,
    end: u64,
    piece_length: u32,
    content_length: u64,
    stall: Duration,
    /// The reader asked for everything from byte 0 (not a lazy-pull range).
    whole: bool,
    on_bytes: Box<dyn Fn(u64) + Send + Sync>,
}

/// Bytes `[start, end)` of a task whose shape is known. `on_bytes` sees every
/// chunk's size (for metrics). The task stays pinned while streaming.
pub fn stream_range(
    task: Arc<StoredTask>,
    start: u64,
    end: u64,
    stall: Duration,
    on_bytes: Box<dyn Fn(u64) + Send + Sync>,
) -> impl Stream<Item = Result<Bytes, ReadError>> + Send {
    let (content_length, piece_length) =
        task.with_meta(|m| (m.content_length.unwrap_or(0), m.piece_length));
    let cursor = Cursor {
        _pin: task.pin(),
        task,
        offset: start,
        end: end.min(content_length),
        piece_length,
        content_length,
        stall,
        whole: start == 0 && end >= content_length,
        on_bytes,
    };
    futures::stream::try_unfold(cursor, |mut c| async move {
        if c.offset >= c.end {
            return Ok(None);
        }
        let index = pieces_for_range(c.offset, c.offset + 1, c.piece_length).start;
        if !c
            .task
            .wait_piece(index, c.stall)
            .await
            .map_err(ReadError::Failed)?
        {
            return Err(ReadError::Stalled(c.stall, index));
        }
        let (_, piece_end) = piece_range(index, c.piece_length, c.content_length);
        // Pieces go out in small chunks straight from disk, so memory does
        // not grow with the piece length; one this process cannot vouch
        // for is checked against its digest first (in chunks too).
        let chunk_end = piece_end.min(c.end).min(c.offset + CHUNK);
        let len = (chunk_end - c.offset) as usize;
        let bytes = c
            .task
            .read_verified(index, c.offset, len)
            .await?
            .ok_or(ReadError::Changed(index))?;
        if c.whole && chunk_end == c.content_length {
            // For whole-content readers the last bytes go out only once
            // the daemon has judged the content, so a client that has
            // everything never finds rejected content still cached
            // (Content-Length framing ends the response at the last byte).
            // Range readers (lazy pull) are not held up. Content that
            // failed its digest (or was not judged in time) never ends as
            // a clean answer: the body is cut, so the client retries.
            await_verdict(&c.task, c.stall).await?;
        }
        (c.on_bytes)(bytes.len() as u64);
        c.offset = chunk_end;
        Ok(Some((bytes, c)))
    })
    // The client only sees a cut body; the reason belongs in our log.
    .inspect_err(|e| tracing::warn!(error = %e, "stream to the reader cut short"))
}

/// Waits (up to `timeout`) until a task whose digest is known up front has
/// been judged: complete and verified, or failed and removed. Streams end
/// only after this, so a client that finished reading never finds content
/// the daemon is about to reject still in the cache. An error when the
/// content was rejected or not judged in time.
pub async fn await_verdict(task: &StoredTask, timeout: Duration) -> Result<(), ReadError> {
    if task.with_meta(|m| m.expected_digest.is_none()) {
        return Ok(());
    }
    let mut rx = task.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    while !task.is_complete()
        && !task.is_removed()
        && task.run_state() == crate::store::RunState::Running
    {
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    if task.is_complete() && !task.is_removed() {
        return Ok(());
    }
    Err(match task.run_state() {
        crate::store::RunState::Failed(failure) => ReadError::Failed(failure),
        _ => ReadError::Unverified(timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piece::piece_digest;
    use crate::store::{Store, Watermarks};
    use futures::StreamExt;

    /// A stored task of two 1 MiB pieces written by this process.
    async fn task_of_two_pieces(dir: &std::path::Path) -> (Arc<StoredTask>, Vec<u8>) {
        let store = Store::open(dir, 1 << 30, Watermarks::default()).unwrap();
        let task = store
            .get_or_create(&format!("{:064x}", 7), "http://o/x", None)
            .unwrap();
        let piece = 1 << 20;
        task.set_shape(Some(2 * piece), piece as u32).unwrap();
        let content: Vec<u8> = (0..2 * piece).map(|i| (i % 251) as u8).collect();
        for (i, chunk) in content.chunks(piece as usize).enumerate() {
            let data = Bytes::copy_from_slice(chunk);
            task.write_piece(i as u32, data.clone(), piece_digest(&data))
                .await
                .unwrap();
        }
        (task, content)
    }

    async fn read_all(
        task: Arc<StoredTask>,
        start: u64,
        end: u64,
    ) -> Vec<Result<Bytes, ReadError>> {
        let stall = Duration::from_secs(1);
        stream_range(task, start, end, stall, Box::new(|_| {}))
            .collect()
            .await
    }

    #[tokio::test]
    async fn intact_pieces_go_out_in_small_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (task, content) = task_of_two_pieces(dir.path()).await;
        let chunks = read_all(task.clone(), 100, content.len() as u64 - 7).await;
        let chunks: Vec<Bytes> = chunks.into_iter().map(|c| c.unwrap()).collect();
        assert!(chunks.iter().all(|c| c.len() as u64 <= CHUNK));
        assert_eq!(chunks.concat(), &content[100..content.len() - 7]);
    }

    #[tokio::test]
    async fn a_piece_another_writer_touched_is_checked_whole_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (task, content) = task_of_two_pieces(dir.path()).await;
        std::thread::sleep(Duration::from_millis(20));
        let data = dir
            .path()
            .join("tasks")
            .join(format!("{:064x}", 7))
            .join("data");
        let file = std::fs::OpenOptions::new().write(true).open(data).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"damage", (1 << 20) + 10).unwrap();
        let chunks = read_all(task.clone(), 0, content.len() as u64).await;
        let (good, bad): (Vec<_>, Vec<_>) = chunks.into_iter().partition(|c| c.is_ok());
        let good: Vec<Bytes> = good.into_iter().map(|c| c.unwrap()).collect();
        // Piece 0 re-checked and whole, piece 1 refused: nothing damaged sent.
        assert_eq!(good.concat(), &content[..1 << 20]);
        assert!(matches!(
            bad.as_slice(),
            [Err(ReadError::Store(
                crate::store::StoreError::CorruptPiece { index: 1, .. }
            ))]
        ));
    }
}
