//! Piece geometry and piece digests: every peer must cut a task at the same
//! boundaries and agree on what each piece hashes to.

use sha2::{Digest, Sha256};

/// Small enough that a piece crosses a 100 Mbit/s link in a tenth of a
/// second: a piece is forwarded only once whole, so its transfer time is
/// the delay each hop of the swarm adds.
pub const MIN_PIECE_LENGTH: u32 = 1024 * 1024;
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Most pieces a task may have: bounds every per-piece table (bitmaps,
/// digests) whatever length a peer, the scheduler or an origin claims.
pub use wire::MAX_PIECES;
/// For content of unknown length, which may be large.
pub const UNKNOWN_LENGTH_PIECE: u32 = 4 * 1024 * 1024;
/// Aim for at most this many pieces per task.
const TARGET_PIECES: u64 = 500;

/// Piece length for a task of `content_length` bytes: the next power of two of
/// length/500, clamped to 1–64 MiB.
pub fn piece_length_for(content_length: Option<u64>) -> u32 {
    let Some(len) = content_length else {
        return UNKNOWN_LENGTH_PIECE;
    };
    let wanted = len.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
    wanted.clamp(MIN_PIECE_LENGTH as u64, MAX_PIECE_LENGTH as u64) as u32
}

/// Why a task shape (from the origin, a parent or the scheduler) cannot be
/// used; `None` when it can.
pub fn shape_error(content_length: Option<u64>, piece_length: u32) -> Option<String> {
    if piece_length == 0 || piece_length > MAX_PIECE_LENGTH {
        return Some(format!(
            "piece length {piece_length} outside 1..={MAX_PIECE_LENGTH}"
        ));
    }
    let count = content_length.map(|len| len.div_ceil(piece_length as u64));
    match count {
        Some(count) if count > MAX_PIECES as u64 => Some(format!(
            "{count} pieces of {piece_length} bytes, more than {MAX_PIECES}"
        )),
        _ => None,
    }
}

/// Number of pieces of a task, given its length.
pub fn piece_count(content_length: u64, piece_length: u32) -> u32 {
    content_length.div_ceil(piece_length as u64) as u32
}

/// Byte range `[start, end)` of piece `index`.
pub fn piece_range(index: u32, piece_length: u32, content_length: u64) -> (u64, u64) {
    let start = index as u64 * piece_length as u64;
    let end = (start + piece_length as u64).min(content_length);
    (start, end)
}

/// Pieces touched by the byte range `[start, end)`.
pub fn pieces_for_range(start: u64, end: u64, piece_length: u32) -> std::ops::Range<u32> {
    if end <= start {
        return 0..0;
    }
    let first = (start / piece_length as u64) as u32;
    let last = ((end - 1) / piece_length as u64) as u32;
    first..last + 1
}

/// Bytes moved at a time when a piece is written, streamed or hashed from
/// disk: memory per piece in flight does not grow with the piece length,
/// and below the allocator's mmap threshold buffers are reused rather than
/// mapped afresh.
pub const IO_CHUNK: usize = 256 << 10;

/// `sha256:<hex>` of a piece's bytes.
pub fn piece_digest(data: &[u8]) -> String {
    let mut hasher = PieceHasher::default();
    hasher.update(data);
    hasher.finish()
}

/// A piece's digest computed as its bytes arrive.
#[derive(Default, Clone)]
pub struct PieceHasher(Sha256);

impl PieceHasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// `sha256:<hex>` of every byte given.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

pub use wire::Bitmap;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_bounded() {
        assert_eq!(
            shape_error(Some(1 << 30), piece_length_for(Some(1 << 30))),
            None
        );
        assert_eq!(shape_error(None, UNKNOWN_LENGTH_PIECE), None);
        let largest = MAX_PIECES as u64 * MAX_PIECE_LENGTH as u64;
        assert_eq!(shape_error(Some(largest), MAX_PIECE_LENGTH), None);
        assert!(shape_error(Some(largest + 1), MAX_PIECE_LENGTH).is_some());
        assert!(shape_error(Some(10), 0).is_some());
        assert!(shape_error(Some(10), MAX_PIECE_LENGTH + 1).is_some());
        // Our own choice is always acceptable, up to the largest content.
        for len in [0, 1, 1 << 20, 1 << 40, largest] {
            assert_eq!(
                shape_error(Some(len), piece_length_for(Some(len))),
                None,
                "{len}"
            );
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn piece_length_follows_the_rule() {
        assert_eq!(piece_length_for(None), UNKNOWN_LENGTH_PIECE);
        assert_eq!(piece_length_for(Some(0)), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(Some(64 * MIB)), MIN_PIECE_LENGTH);
        // 1 GiB / 500 = 2.05 MiB -> 4 MiB
        assert_eq!(piece_length_for(Some(1024 * MIB)), 4 * MIB as u32);
        // 4 GiB / 500 = 8.2 MiB -> 16 MiB
        assert_eq!(piece_length_for(Some(4096 * MIB)), 16 * MIB as u32);
        assert_eq!(piece_length_for(Some(1 << 50)), MAX_PIECE_LENGTH);
    }

    #[test]
    fn ranges_and_counts() {
        assert_eq!(piece_count(10, 4), 3);
        assert_eq!(piece_count(8, 4), 2);
        assert_eq!(piece_count(0, 4), 0);
        assert_eq!(piece_range(2, 4, 10), (8, 10));
        assert_eq!(pieces_for_range(0, 1, 4), 0..1);
        assert_eq!(pieces_for_range(3, 9, 4), 0..3);
        assert_eq!(pieces_for_range(4, 8, 4), 1..2);
        assert_eq!(pieces_for_range(5, 5, 4), 0..0);
    }

    #[test]
    fn digest_format() {
        assert_eq!(
            piece_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
