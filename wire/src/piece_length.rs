//! Where a task is cut into pieces: every dfdaemon must choose the same
//! piece length for the same content, and tools that count pieces (the
//! benchmark's origin-requests-per-piece figure) must agree with them.

/// Small enough that a piece crosses a 100 Mbit/s link in a tenth of a
/// second: a piece is forwarded only once whole, so its transfer time is
/// the delay each hop of the swarm adds.
pub const MIN_PIECE_LENGTH: u32 = 1024 * 1024;
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
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

/// Number of pieces of a task, given its length.
pub fn piece_count(content_length: u64, piece_length: u32) -> u32 {
    content_length.div_ceil(piece_length as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn counts() {
        assert_eq!(piece_count(10, 4), 3);
        assert_eq!(piece_count(8, 4), 2);
        assert_eq!(piece_count(0, 4), 0);
        assert_eq!(
            piece_count(128 * MIB, piece_length_for(Some(128 * MIB))),
            128
        );
    }
}
