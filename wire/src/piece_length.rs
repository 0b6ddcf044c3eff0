//! Where a task is cut into pieces: every dfdaemon must choose the same
//! piece length for the same content, and tools that count pieces (the
//! benchmark's origin-requests-per-piece figure) must agree with them.

/// A piece is forwarded only once whole, and a node's uplink carries
/// several at once, so a piece's transfer time is the delay each hop of
/// the swarm adds, and the swarm trails its source by that much. 512 KiB
/// crosses a 100 Mbit/s link in 42 ms; with 1 MiB the slowest of eight
/// nodes pulling at once took 1.22-1.25 T*, with 512 KiB 1.18-1.20 (256
/// KiB: no better, twice the requests).
pub const MIN_PIECE_LENGTH: u32 = 512 * 1024;
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// For content of unknown length, which may be large.
pub const UNKNOWN_LENGTH_PIECE: u32 = 4 * 1024 * 1024;
/// Aim for at most this many pieces per task. Fewer, larger pieces make
/// each hop slower for the same reason: eight nodes pulling one 1 GiB blob
/// at once took 1.22 T* in 256 pieces, 1.18 in 512 and 1.14-1.19 in 1024;
/// but each piece costs a request and its bookkeeping, and in 1024 pieces
/// one parent sent the blob to one child on loopback at 0.76-0.83 of
/// `sha256sum`'s rate (512: 0.81-0.86, 256: 0.80-0.91).
const TARGET_PIECES: u64 = 1000;

/// Piece length for a task of `content_length` bytes: the next power of two of
/// length/1000, clamped to 512 KiB–64 MiB.
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
        assert_eq!(MIN_PIECE_LENGTH, 512 * 1024);
        assert_eq!(piece_length_for(Some(256 * MIB)), MIN_PIECE_LENGTH);
        // 512 MiB / 1000 = 0.51 MiB -> 1 MiB
        assert_eq!(piece_length_for(Some(512 * MIB)), MIB as u32);
        // 1 GiB / 1000 = 1.02 MiB -> 2 MiB
        assert_eq!(piece_length_for(Some(1024 * MIB)), 2 * MIB as u32);
        // 10 GiB / 1000 = 10.2 MiB -> 16 MiB
        assert_eq!(piece_length_for(Some(10240 * MIB)), 16 * MIB as u32);
        assert_eq!(piece_length_for(Some(1 << 50)), MAX_PIECE_LENGTH);
    }

    #[test]
    fn counts() {
        assert_eq!(piece_count(10, 4), 3);
        assert_eq!(piece_count(8, 4), 2);
        assert_eq!(piece_count(0, 4), 0);
        assert_eq!(
            piece_count(128 * MIB, piece_length_for(Some(128 * MIB))),
            256
        );
    }
}
