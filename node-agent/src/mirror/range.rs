//! `Range: bytes=...` parsing (RFC 9110 §14) for blob requests: single
//! ranges, open-ended and suffix ranges, and the multi-range requests
//! lazy-pull clients send.

/// Most ranges accepted in one request: enough for eStargz batches, small
/// enough that a hostile header cannot make us build a huge multipart plan.
pub const MAX_RANGES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `a-b` (inclusive).
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The header is not a byte-range set (answered 400).
    #[error("malformed Range header {0:?}")]
    Malformed(String),
    #[error("more than {MAX_RANGES} ranges requested")]
    TooMany,
    /// No range overlaps the content (answered 416).
    #[error("no requested range is satisfiable for {0} bytes")]
    Unsatisfiable(u64),
}

/// Parses the header value into range specs (no length needed yet).
pub fn parse(value: &str) -> Result<Vec<RangeSpec>, RangeError> {
    let malformed = || RangeError::Malformed(value.chars().take(100).collect());
    let set = value.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
    let mut specs = Vec::new();
    for part in set.split(',') {
        let part = part.trim();
        if part.is_empty() {
            // RFC 9110 tolerates empty list elements.
            continue;
        }
        if specs.len() == MAX_RANGES {
            return Err(RangeError::TooMany);
        }
        let (first, last) = part.split_once('-').ok_or_else(malformed)?;
        let number = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            s.parse().map_err(|_| malformed())
        };
        let spec = match (first.is_empty(), last.is_empty()) {
            (true, true) => return Err(malformed()),
            (true, false) => RangeSpec::Suffix(number(last)?),
            (false, true) => RangeSpec::From(number(first)?),
            (false, false) => {
                let (a, b) = (number(first)?, number(last)?);
                if b < a {
                    // An inverted range is invalid syntax, not unsatisfiable.
                    return Err(malformed());
                }
                RangeSpec::FromTo(a, b)
            }
        };
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(malformed());
    }
    Ok(specs)
}

/// Resolves specs against a content length into half-open `[start, end)`
/// ranges. Unsatisfiable specs are dropped; if none is left the request
/// gets 416.
pub fn resolve(specs: &[RangeSpec], len: u64) -> Result<Vec<(u64, u64)>, RangeError> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let range = match *spec {
            RangeSpec::FromTo(a, b) if a < len => Some((a, b.saturating_add(1).min(len))),
            RangeSpec::From(a) if a < len => Some((a, len)),
            RangeSpec::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len)),
            _ => None,
        };
        out.extend(range);
    }
    if out.is_empty() {
        return Err(RangeError::Unsatisfiable(len));
    }
    // Overlapping ranges that add up to more than the content would make
    // one small request answer many times the blob (RFC 9110 §14.2 lets a
    // server coalesce them): merge them, so no answer exceeds the blob.
    // (A total past u64::MAX is more than any content, too.)
    let total = out
        .iter()
        .try_fold(0u64, |sum, (s, e)| sum.checked_add(e - s));
    if total.is_none_or(|total| total > len) {
        out = coalesce(out);
    }
    Ok(out)
}

/// Sorted, with overlapping and adjacent ranges merged.
fn coalesce(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// `bytes START-END/LEN` for a half-open range.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {}-{}/{}", start, end - 1, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeSpec::*;

    #[test]
    fn overlapping_ranges_never_answer_more_than_the_blob() {
        let len = 64 << 20;
        let many = format!("bytes={}", vec!["0-"; MAX_RANGES].join(","));
        let resolved = resolve(&parse(&many).unwrap(), len).unwrap();
        assert_eq!(resolved, vec![(0, len)]);
        let mixed = resolve(&parse("bytes=10-19,0-14,-5,30-,0-9").unwrap(), 40).unwrap();
        assert_eq!(mixed, vec![(0, 20), (30, 40)]);
        // Found by fuzzing (fuzz/known/resolve_overflow): the total of
        // huge ranges no longer overflows.
        let huge = resolve(&parse("bytes=0-,0-").unwrap(), u64::MAX).unwrap();
        assert_eq!(huge, vec![(0, u64::MAX)]);
        // Disjoint ranges keep the order the client asked for.
        let disjoint = resolve(&parse("bytes=20-29,0-9").unwrap(), 40).unwrap();
        assert_eq!(disjoint, vec![(20, 30), (0, 10)]);
    }

    #[test]
    fn single_and_multi_ranges() {
        assert_eq!(parse("bytes=0-1"), Ok(vec![FromTo(0, 1)]));
        assert_eq!(parse("bytes=5-"), Ok(vec![From(5)]));
        assert_eq!(parse("bytes=-10"), Ok(vec![Suffix(10)]));
        assert_eq!(
            parse("bytes=0-9, 20-29,,-5"),
            Ok(vec![FromTo(0, 9), FromTo(20, 29), Suffix(5)])
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "items=0-1",
            "bytes=5-2",
            "bytes=1",
            "bytes=+1-2",
            "bytes=0-1-2",
            "bytes= - ",
            "bytes=99999999999999999999999-",
        ] {
            assert!(
                matches!(parse(bad), Err(RangeError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
        let many = format!("bytes={}", vec!["0-1"; MAX_RANGES + 1].join(","));
        assert_eq!(parse(&many), Err(RangeError::TooMany));
        let max = format!("bytes={}", vec!["0-1"; MAX_RANGES].join(","));
        assert_eq!(parse(&max).map(|v| v.len()), Ok(MAX_RANGES));
    }

    #[test]
    fn resolution_against_the_length() {
        assert_eq!(resolve(&[FromTo(0, 1)], 10), Ok(vec![(0, 2)]));
        assert_eq!(resolve(&[FromTo(5, 100)], 10), Ok(vec![(5, 10)]));
        assert_eq!(resolve(&[From(9)], 10), Ok(vec![(9, 10)]));
        assert_eq!(resolve(&[Suffix(3)], 10), Ok(vec![(7, 10)]));
        assert_eq!(resolve(&[Suffix(30)], 10), Ok(vec![(0, 10)]));
        // Past the end: dropped, and 416 when nothing is left.
        assert_eq!(resolve(&[FromTo(10, 20), From(2)], 10), Ok(vec![(2, 10)]));
        assert_eq!(
            resolve(&[FromTo(10, 20)], 10),
            Err(RangeError::Unsatisfiable(10))
        );
        assert_eq!(
            resolve(&[Suffix(0)], 10),
            Err(RangeError::Unsatisfiable(10))
        );
        assert_eq!(resolve(&[From(0)], 0), Err(RangeError::Unsatisfiable(0)));
        assert_eq!(resolve(&[FromTo(0, u64::MAX)], 10), Ok(vec![(0, 10)]));
        assert_eq!(content_range(0, 2, 10), "bytes 0-1/10");
    }
}
