//! Piece digests recorded from a task's back-to-source peer, the one that
//! read the pieces from the origin. Children check what a parent serves
//! against these, so a parent cannot vouch for its own bytes.

use std::collections::HashMap;

use proto::PieceDigest;

/// Digests one `GetPieceDigests` call returns at most.
pub const MAX_PER_CALL: u32 = 4096;
/// Digests kept over all tasks (32 bytes each plus the map's overhead:
/// about 100 MB at the cap); past it new ones are not recorded and children
/// fall back to the parent's claim plus the content's own digest.
pub const MAX_TOTAL: usize = 2_000_000;

const PREFIX: &str = "sha256:";

/// `sha256:<64 lower-case hex>` as raw bytes.
pub fn parse(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix(PREFIX)?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

fn format(raw: &[u8; 32]) -> String {
    format!("{PREFIX}{}", hex::encode(raw))
}

/// What recording one digest did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    New,
    Same,
    /// Another digest was recorded first; it stays.
    Conflict,
}

#[derive(Debug, Default, Clone)]
pub struct PieceDigests {
    by_piece: HashMap<u32, [u8; 32]>,
}

impl PieceDigests {
    pub fn record(&mut self, index: u32, digest: [u8; 32]) -> Recorded {
        match self.by_piece.get(&index) {
            None => {
                self.by_piece.insert(index, digest);
                Recorded::New
            }
            Some(known) if *known == digest => Recorded::Same,
            Some(_) => Recorded::Conflict,
        }
    }

    /// Whether `claimed` is the recorded digest of `index`; `None` when
    /// nothing is recorded (or `claimed` is not a digest at all).
    pub fn matches(&self, index: u32, claimed: &str) -> Option<bool> {
        let known = self.by_piece.get(&index)?;
        Some(parse(claimed).is_some_and(|c| c == *known))
    }

    /// The recorded digests of pieces `first .. first + count`.
    pub fn range(&self, first: u32, count: u32) -> Vec<PieceDigest> {
        let end = first.saturating_add(count.min(MAX_PER_CALL));
        (first..end)
            .filter_map(|index| {
                self.by_piece.get(&index).map(|raw| PieceDigest {
                    index,
                    digest: format(raw),
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_piece.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_piece.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn first_digest_stays_and_ranges_are_capped() {
        let mut p = PieceDigests::default();
        assert_eq!(p.record(0, parse(&d('a')).unwrap()), Recorded::New);
        assert_eq!(p.record(0, parse(&d('a')).unwrap()), Recorded::Same);
        assert_eq!(p.record(0, parse(&d('b')).unwrap()), Recorded::Conflict);
        assert_eq!(p.matches(0, &d('a')), Some(true));
        assert_eq!(p.matches(0, &d('b')), Some(false));
        assert_eq!(p.matches(0, "garbage"), Some(false));
        assert_eq!(p.matches(1, &d('a')), None);
        for i in 1..5000 {
            p.record(i, [1; 32]);
        }
        assert_eq!(p.range(0, u32::MAX).len(), MAX_PER_CALL as usize);
        assert_eq!(p.range(4999, 10).len(), 1);
        assert_eq!(p.range(u32::MAX, 10).len(), 0);
        assert_eq!(p.range(0, 1)[0].digest, d('a'));
    }

    #[test]
    fn only_sha256_hex_parses() {
        assert!(parse(&d('0')).is_some());
        assert!(parse(&d('A')).is_none());
        assert!(parse(&d('g')).is_none());
        assert!(parse("sha256:00").is_none());
        assert!(parse(&format!("sha512:{}", "0".repeat(64))).is_none());
    }
}
