//! Piece geometry and piece digests: every peer must cut a task at the same
//! boundaries and agree on what each piece hashes to.

use sha2::{Digest, Sha256};

pub use wire::piece_length::{
    piece_count, piece_length_for, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH, UNKNOWN_LENGTH_PIECE,
};
/// Most pieces a task may have: bounds every per-piece table (bitmaps,
/// digests) whatever length a peer, the scheduler or an origin claims.
pub use wire::MAX_PIECES;

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

    #[test]
    fn ranges() {
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
