//! Piece digests recorded from a task's back-to-source peer, the one that
//! read the pieces from the origin. Children check what a parent serves
//! against these, so a parent cannot vouch for its own bytes.
//!
//! The record belongs to the host that read it (its recorder). When that
//! host later reads another digest for a recorded piece, the origin's
//! content changed under the task (a mutable URL), so the whole record
//! starts again from that report. Any other source's differing digest is
//! only a dispute: a member that got itself elected (a takeover) must not
//! rewrite what everyone checks against. The record moves to another host
//! when a seed reads it (seeds fetch for everyone) or when a second,
//! distinct host reads the same new digest for the same piece. The replaced
//! record is kept (one generation) so that a peer still serving the old
//! content is told apart from a forger: stale, not lying.

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
    /// Another digest was recorded before: the record was replaced by this
    /// one (the previous record is kept as the superseded generation).
    Replaced,
    /// Another digest was recorded before by another host: the record
    /// stands until the change is confirmed.
    Disputed,
}

/// Whose word a recording is.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub host_id: &'a str,
    /// A seed: trusted to fetch for everyone, its reading replaces.
    pub trusted: bool,
}

/// A parent's claimed digest against the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The recorded digest.
    Recorded,
    /// The digest of the content before the source's last replacement: an
    /// old copy, honestly held.
    Superseded,
    /// Neither: a forgery.
    Other,
}

#[derive(Debug, Default, Clone)]
pub struct PieceDigests {
    by_piece: HashMap<u32, [u8; 32]>,
    superseded: HashMap<u32, [u8; 32]>,
    replacements: u32,
    /// The host whose reading started the current generation.
    recorder: Option<String>,
    /// One pending dispute: piece, the other digest, who read it.
    dispute: Option<(u32, [u8; 32], String)>,
}

impl PieceDigests {
    pub fn record(&mut self, index: u32, digest: [u8; 32], by: Reader<'_>) -> Recorded {
        match self.by_piece.get(&index) {
            None => {
                self.by_piece.insert(index, digest);
                if self.recorder.is_none() {
                    self.recorder = Some(by.host_id.to_string());
                }
                Recorded::New
            }
            Some(known) if *known == digest => Recorded::Same,
            Some(_) => {
                let own = self.recorder.as_deref() == Some(by.host_id);
                let confirmed = self
                    .dispute
                    .as_ref()
                    .is_some_and(|(i, d, who)| *i == index && *d == digest && who != by.host_id);
                if !(own || by.trusted || confirmed) {
                    self.dispute = Some((index, digest, by.host_id.to_string()));
                    return Recorded::Disputed;
                }
                self.superseded = std::mem::take(&mut self.by_piece);
                self.by_piece.insert(index, digest);
                self.replacements = self.replacements.saturating_add(1);
                self.recorder = Some(by.host_id.to_string());
                self.dispute = None;
                Recorded::Replaced
            }
        }
    }

    /// Records `digest` for `index` only if nothing is recorded for it.
    pub fn fill(&mut self, index: u32, digest: [u8; 32]) {
        self.by_piece.entry(index).or_insert(digest);
    }

    /// The host whose reading the current record is, if any.
    pub fn recorder(&self) -> Option<&str> {
        self.recorder.as_deref()
    }

    /// How `claimed` stands against the record of `index`; `None` when
    /// nothing is recorded.
    pub fn judge(&self, index: u32, claimed: &str) -> Option<Claim> {
        let known = self.by_piece.get(&index)?;
        let claimed = parse(claimed);
        Some(match claimed {
            Some(c) if c == *known => Claim::Recorded,
            Some(c) if self.superseded.get(&index) == Some(&c) => Claim::Superseded,
            _ => Claim::Other,
        })
    }

    /// Digests held, the superseded generation included (what counts
    /// against the scheduler's cap).
    pub fn held(&self) -> usize {
        self.by_piece.len() + self.superseded.len()
    }

    /// How often the source replaced the record.
    pub fn replacements(&self) -> u32 {
        self.replacements
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

    const SRC: Reader<'static> = Reader {
        host_id: "src",
        trusted: false,
    };

    #[test]
    fn the_sources_latest_digest_replaces_the_record() {
        let mut p = PieceDigests::default();
        assert_eq!(p.record(0, parse(&d('a')).unwrap(), SRC), Recorded::New);
        assert_eq!(p.record(1, parse(&d('c')).unwrap(), SRC), Recorded::New);
        assert_eq!(p.record(0, parse(&d('a')).unwrap(), SRC), Recorded::Same);
        assert_eq!(p.judge(0, &d('a')), Some(Claim::Recorded));
        assert_eq!(p.judge(0, &d('b')), Some(Claim::Other));
        assert_eq!(p.judge(0, "garbage"), Some(Claim::Other));
        assert_eq!(p.judge(2, &d('a')), None);
        // The content changed: piece 0 now reads 'b'. The whole record
        // starts again (piece 1's old digest no longer vouches for it).
        assert_eq!(
            p.record(0, parse(&d('b')).unwrap(), SRC),
            Recorded::Replaced
        );
        assert_eq!(p.replacements(), 1);
        assert_eq!(p.judge(0, &d('b')), Some(Claim::Recorded));
        assert_eq!(p.judge(0, &d('a')), Some(Claim::Superseded));
        assert_eq!(p.judge(0, &d('e')), Some(Claim::Other));
        assert_eq!(p.judge(1, &d('c')), None);
        assert_eq!(p.held(), 3);
        // Only one generation is kept.
        assert_eq!(
            p.record(0, parse(&d('e')).unwrap(), SRC),
            Recorded::Replaced
        );
        assert_eq!(p.judge(0, &d('a')), Some(Claim::Other));
        assert_eq!(p.judge(0, &d('b')), Some(Claim::Superseded));
        assert_eq!(p.held(), 2);
    }

    #[test]
    fn another_host_disputes_and_only_a_second_one_or_a_seed_replaces() {
        let mut p = PieceDigests::default();
        let reader = |host_id, trusted| Reader { host_id, trusted };
        let (a, b) = (parse(&d('a')).unwrap(), parse(&d('b')).unwrap());
        assert_eq!(p.record(0, a, SRC), Recorded::New);
        assert_eq!(p.recorder(), Some("src"));
        // A takeover: another source reads other bytes. The record stands,
        // however often it says so.
        for _ in 0..3 {
            assert_eq!(p.record(0, b, reader("evil", false)), Recorded::Disputed);
        }
        assert_eq!(p.judge(0, &d('a')), Some(Claim::Recorded));
        // A second host reading the same: the origin changed.
        assert_eq!(p.record(0, b, reader("other", false)), Recorded::Replaced);
        assert_eq!(p.recorder(), Some("other"));
        assert_eq!(p.judge(0, &d('a')), Some(Claim::Superseded));
        // A seed's reading replaces at once.
        assert_eq!(p.record(0, a, reader("seed", true)), Recorded::Replaced);
        assert_eq!(p.recorder(), Some("seed"));
    }

    #[test]
    fn ranges_are_capped() {
        let mut p = PieceDigests::default();
        assert_eq!(p.record(0, parse(&d('a')).unwrap(), SRC), Recorded::New);
        for i in 1..5000 {
            p.record(i, [1; 32], SRC);
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
