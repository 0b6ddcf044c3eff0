//! Piece bitmaps as they travel between dfdaemons and the scheduler: piece
//! `i` is bit `i % 8` of byte `i / 8`.

use thiserror::Error;

/// Upper bound on piece indices a peer may report: as many as a task may
/// have, so a bitmap is at most 32 KiB whoever sends it.
pub const MAX_PIECES: u32 = 1 << 18;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BitmapError {
    #[error("piece index {0} exceeds the limit of {MAX_PIECES} pieces")]
    PieceOutOfRange(u32),
    #[error("bitmap of {0} bytes exceeds the limit of {max} bytes", max = MAX_PIECES / 8)]
    TooLarge(usize),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitmap {
    bytes: Vec<u8>,
}

impl Bitmap {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BitmapError> {
        if bytes.len() > (MAX_PIECES / 8) as usize {
            return Err(BitmapError::TooLarge(bytes.len()));
        }
        let mut bitmap = Bitmap {
            bytes: bytes.to_vec(),
        };
        bitmap.trim();
        Ok(bitmap)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn set(&mut self, piece: u32) -> Result<(), BitmapError> {
        if piece >= MAX_PIECES {
            return Err(BitmapError::PieceOutOfRange(piece));
        }
        let byte = (piece / 8) as usize;
        if self.bytes.len() <= byte {
            self.bytes.resize(byte + 1, 0);
        }
        self.bytes[byte] |= 1 << (piece % 8);
        Ok(())
    }

    pub fn contains(&self, piece: u32) -> bool {
        self.bytes
            .get((piece / 8) as usize)
            .is_some_and(|b| b & (1 << (piece % 8)) != 0)
    }

    /// Number of pieces held. With a known `piece_count` (not 0), bits past
    /// the end of the task are not counted (a peer may pad its last byte).
    pub fn count(&self, piece_count: u32) -> u32 {
        self.count_where(piece_count, |byte, _| byte)
    }

    /// Number of pieces held here and missing from `other`: what a child
    /// could actually fetch from this parent.
    pub fn count_missing_from(&self, other: &Bitmap, piece_count: u32) -> u32 {
        self.count_where(piece_count, |byte, i| {
            byte & !other.bytes.get(i).copied().unwrap_or(0)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn count_where(&self, piece_count: u32, select: impl Fn(u8, usize) -> u8) -> u32 {
        let mut total = 0;
        for (i, &byte) in self.bytes.iter().enumerate() {
            let mut bits = select(byte, i);
            if piece_count > 0 {
                let first = (i as u64) * 8;
                if first >= u64::from(piece_count) {
                    break;
                }
                let valid = u64::from(piece_count) - first;
                if valid < 8 {
                    bits &= (1u8 << valid) - 1;
                }
            }
            total += bits.count_ones();
        }
        total
    }

    /// Drops trailing zero bytes so equal piece sets compare equal.
    fn trim(&mut self) {
        while self.bytes.last() == Some(&0) {
            self.bytes.pop();
        }
    }
}

/// Indices at or past [`MAX_PIECES`] are left out: no task has that many
/// pieces (its shape is refused first).
impl FromIterator<u32> for Bitmap {
    fn from_iter<I: IntoIterator<Item = u32>>(pieces: I) -> Self {
        let mut bitmap = Bitmap::default();
        for piece in pieces.into_iter().filter(|&p| p < MAX_PIECES) {
            let byte = (piece / 8) as usize;
            if bitmap.bytes.len() <= byte {
                bitmap.bytes.resize(byte + 1, 0);
            }
            bitmap.bytes[byte] |= 1 << (piece % 8);
        }
        bitmap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layout_is_lsb_first() {
        let mut b = Bitmap::default();
        b.set(0).unwrap();
        b.set(9).unwrap();
        assert_eq!(b.as_bytes(), &[0b0000_0001, 0b0000_0010]);
        assert!(b.contains(0) && b.contains(9));
        assert!(!b.contains(1) && !b.contains(8) && !b.contains(1000));
        let collected: Bitmap = [9, 0, MAX_PIECES].into_iter().collect();
        assert_eq!(collected, b);
    }

    #[test]
    fn count_ignores_padding_past_piece_count() {
        let b = Bitmap::from_bytes(&[0xff, 0xff]).unwrap();
        assert_eq!(b.count(0), 16);
        assert_eq!(b.count(10), 10);
        assert_eq!(b.count(8), 8);
        assert_eq!(b.count(3), 3);
    }

    #[test]
    fn missing_from_counts_only_useful_pieces() {
        let parent = Bitmap::from_bytes(&[0b1111_0000, 0b0000_0001]).unwrap();
        let child = Bitmap::from_bytes(&[0b0011_0000]).unwrap();
        assert_eq!(parent.count_missing_from(&child, 0), 3);
        assert_eq!(parent.count_missing_from(&Bitmap::default(), 0), 5);
        assert_eq!(parent.count_missing_from(&child, 8), 2);
    }

    #[test]
    fn trailing_zero_bytes_are_trimmed() {
        let b = Bitmap::from_bytes(&[1, 0, 0]).unwrap();
        assert_eq!(b.as_bytes(), &[1]);
        assert!(Bitmap::from_bytes(&[0, 0]).unwrap().is_empty());
    }

    #[test]
    fn oversized_input_is_rejected() {
        assert_eq!(
            Bitmap::default().set(MAX_PIECES),
            Err(BitmapError::PieceOutOfRange(MAX_PIECES))
        );
        let huge = vec![0u8; (MAX_PIECES / 8) as usize + 1];
        assert!(matches!(
            Bitmap::from_bytes(&huge),
            Err(BitmapError::TooLarge(_))
        ));
    }
}
