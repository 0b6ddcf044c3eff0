//! Task shapes (content length, piece length) as an origin, a parent or the
//! scheduler claims them, and piece bitmaps as peers send them.
//!
//! Invariants: a shape `shape_error` accepts has a piece count that fits
//! the u32 piece indices and the per-piece tables, and its pieces tile the
//! content exactly; byte ranges inside the content map to pieces that cover
//! them; bitmaps keep their pieces and set exactly the bit asked.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use node_agent::piece::{
    piece_count, piece_length_for, piece_range, pieces_for_range, shape_error, Bitmap, MAX_PIECES,
    MAX_PIECE_LENGTH,
};

const LARGEST: u64 = MAX_PIECES as u64 * MAX_PIECE_LENGTH as u64;

/// A u64 at a scale the input chooses (so small lengths are as likely as
/// huge ones).
fn scaled(u: &mut Unstructured) -> Result<u64> {
    let shift: u8 = u.int_in_range(0..=63)?;
    let raw: u64 = u.arbitrary()?;
    Ok(raw >> shift)
}

fn check_shape(u: &mut Unstructured) -> Result<()> {
    let content_length = if u.arbitrary()? {
        Some(scaled(u)?)
    } else {
        None
    };
    let piece_length: u32 = match u.int_in_range(0..=2u8)? {
        0 => piece_length_for(content_length),
        1 => (scaled(u)? & u32::MAX as u64) as u32,
        _ => u.arbitrary()?,
    };
    if let Some(len) = content_length {
        if len <= LARGEST {
            assert_eq!(
                shape_error(Some(len), piece_length_for(Some(len))),
                None,
                "our own piece length refused for {len} bytes"
            );
        }
    }
    if shape_error(content_length, piece_length).is_some() {
        return Ok(());
    }
    assert!(piece_length >= 1 && piece_length <= MAX_PIECE_LENGTH);
    let Some(len) = content_length else {
        return Ok(());
    };
    let count = piece_count(len, piece_length);
    assert_eq!(
        count as u64,
        len.div_ceil(piece_length as u64),
        "count truncated"
    );
    assert!(count <= MAX_PIECES);
    let pl = piece_length as u64;
    // The first and last few pieces, not all of them.
    let indices = (0..count.min(3)).chain(count.saturating_sub(3)..count);
    for index in indices {
        let (start, end) = piece_range(index, piece_length, len);
        assert!(
            start < end && end <= len,
            "piece {index}: [{start}, {end}) of {len}"
        );
        assert_eq!(start, index as u64 * pl);
        if index + 1 < count {
            assert_eq!(end - start, pl, "short piece {index} before the last");
        } else {
            assert_eq!(end, len, "last piece does not end the content");
        }
        assert_eq!(pieces_for_range(start, end, piece_length), index..index + 1);
    }
    // An arbitrary byte range inside the content.
    if len > 0 {
        let a = scaled(u)? % len;
        let b = scaled(u)? % len;
        let (start, end) = (a.min(b), a.max(b) + 1);
        let pieces = pieces_for_range(start, end, piece_length);
        assert!(
            !pieces.is_empty() && pieces.end <= count,
            "{pieces:?} of {count}"
        );
        let first = piece_range(pieces.start, piece_length, len);
        let last = piece_range(pieces.end - 1, piece_length, len);
        assert!(first.0 <= start && start < first.1);
        assert!(last.0 < end && end <= last.1);
    }
    assert_eq!(pieces_for_range(len, len, piece_length), 0..0);
    Ok(())
}

fn check_bitmap(u: &mut Unstructured) -> Result<()> {
    // A peer's bitmap covers at most MAX_PIECES pieces.
    let size = u.int_in_range(0..=(MAX_PIECES as usize / 8))?;
    let bytes = u.bytes(size.min(u.len()))?.to_vec();
    let mut bitmap = Bitmap::from_bytes(&bytes).expect("within MAX_PIECES");
    // Trailing zero bytes carry no piece and are dropped.
    let trimmed = |b: &[u8]| -> Vec<u8> {
        let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        b[..end].to_vec()
    };
    assert_eq!(bitmap.as_bytes(), &trimmed(&bytes)[..]);
    let ones = |b: &[u8]| -> u32 { b.iter().map(|b| b.count_ones()).sum() };
    assert_eq!(bitmap.count(0), ones(&bytes));
    // What the bitmap should hold, kept by hand. Indices stay near the
    // bitmap's end (growing it a little), or anywhere below MAX_PIECES.
    let mut model = bytes;
    let mut set = Vec::new();
    for _ in 0..u.int_in_range(0..=8u8)? {
        // (Far indices make 32 KiB bitmaps: rarer, to keep executions fast.)
        let bound = if u.ratio(1, 8)? {
            MAX_PIECES - 1
        } else {
            (model.len() as u32 * 8 + 63).min(MAX_PIECES - 1)
        };
        let index = u.int_in_range(0..=bound)?;
        let byte = index as usize / 8;
        let bit = 1u8 << (index % 8);
        let expected = model.get(byte).is_some_and(|b| b & bit != 0);
        assert_eq!(bitmap.contains(index), expected, "bit {index}");
        bitmap.set(index).expect("below MAX_PIECES");
        assert!(bitmap.contains(index));
        if model.len() <= byte {
            model.resize(byte + 1, 0);
        }
        model[byte] |= bit;
        set.push(index);
    }
    assert!(
        trimmed(bitmap.as_bytes()) == trimmed(&model),
        "set() changed other bits"
    );
    assert_eq!(bitmap.count(0), ones(&model));
    assert!(bitmap.set(MAX_PIECES).is_err());
    let collected: Bitmap = set.iter().copied().collect();
    for &index in &set {
        assert!(collected.contains(index));
    }
    assert!(collected.count(0) as usize <= set.len());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = check_shape(&mut u);
    let _ = check_bitmap(&mut u);
});
