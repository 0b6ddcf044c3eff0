//! `Range: bytes=...` from a client, resolved against a blob length.
//!
//! Input: 1 byte choosing the length's scale, 8 bytes of length, then the
//! header value. Invariants: every resolved range is non-empty and inside
//! the blob, and the answer is exactly the requested ranges in order unless
//! they add up to more than the blob, in which case they are coalesced and
//! add up to at most the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::mirror::range::{self, RangeError, RangeSpec, MAX_RANGES};

/// The largest blob the mirror ever resolves ranges against: lengths come
/// from a task shape, which `piece::shape_error` bounds to this.
const LARGEST: u64 =
    node_agent::piece::MAX_PIECES as u64 * node_agent::piece::MAX_PIECE_LENGTH as u64;

/// What each spec means for `len` bytes, before any merging (u128: no
/// overflow whatever the client asks).
fn expected(specs: &[RangeSpec], len: u64) -> Vec<(u64, u64)> {
    specs
        .iter()
        .filter_map(|spec| match *spec {
            RangeSpec::FromTo(a, b) if a < len => {
                Some((a, (b as u128 + 1).min(len as u128) as u64))
            }
            RangeSpec::From(a) if a < len => Some((a, len)),
            RangeSpec::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len)),
            _ => None,
        })
        .collect()
}

fn total(ranges: &[(u64, u64)]) -> u128 {
    ranges.iter().map(|&(s, e)| (e - s) as u128).sum()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    // Every length up to u64::MAX (the overflow once found at the top,
    // fuzz/known/resolve_overflow, is fixed).
    let bits = data[0] % 65;
    let raw = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let len = if bits == 44 && raw & 1 == 1 {
        LARGEST
    } else {
        raw & 1u64.checked_shl(bits as u32).map_or(u64::MAX, |b| b - 1)
    };
    // The mirror only sees header values that are visible ASCII
    // (`HeaderValue::to_str`); any UTF-8 is accepted here.
    let Ok(value) = std::str::from_utf8(&data[9..]) else {
        return;
    };
    let specs = match range::parse(value) {
        Ok(specs) => specs,
        Err(RangeError::Unsatisfiable(_)) => panic!("parse never answers 416"),
        Err(_) => return,
    };
    assert!(
        !specs.is_empty() && specs.len() <= MAX_RANGES,
        "{} specs",
        specs.len()
    );
    for spec in &specs {
        if let RangeSpec::FromTo(a, b) = *spec {
            assert!(a <= b, "inverted range {a}-{b} accepted");
        }
    }
    let asked = expected(&specs, len);
    match range::resolve(&specs, len) {
        Ok(resolved) => {
            assert!(!resolved.is_empty());
            assert!(resolved.len() <= specs.len());
            for &(s, e) in &resolved {
                assert!(s < e && e <= len, "range [{s}, {e}) for {len} bytes");
                let _ = range::content_range(s, e, len);
            }
            let sum = total(&resolved);
            assert!(
                sum <= len as u128,
                "answer of {sum} bytes for a {len}-byte blob"
            );
            if total(&asked) > len as u128 {
                // Coalesced: sorted, disjoint, not even adjacent.
                for w in resolved.windows(2) {
                    assert!(w[0].1 < w[1].0, "not coalesced: {resolved:?}");
                }
            } else {
                assert_eq!(resolved, asked, "ranges changed although they fit");
            }
        }
        Err(RangeError::Unsatisfiable(l)) => {
            assert_eq!(l, len);
            assert!(asked.is_empty(), "{asked:?} satisfiable but answered 416");
        }
        Err(e) => panic!("resolve answered {e:?}"),
    }
});
