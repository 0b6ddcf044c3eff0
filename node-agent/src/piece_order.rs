//! The order in which a peer asks its parents for pieces.
//!
//! If every peer of a swarm asked for the lowest missing piece first, they
//! would all hold the same pieces at the same time, have nothing to trade,
//! and queue on whichever parent got the next piece first. So a full
//! download asks for the pieces its parents hold fewest copies of first
//! (rarest first, ties broken differently on every host), which spreads
//! distinct pieces over the swarm for peers to exchange. Two exceptions: the
//! lowest missing piece goes first, so a reader streaming the content keeps
//! moving; and pieces no parent holds yet come last in ascending order,
//! which is the order the back-to-source peer fetches them in.

/// A full download's piece order. `missing` is ascending; `holders(i)` is
/// how many known parents hold piece `i`; `salt` differs per host.
pub fn exchange_order(missing: &[u32], holders: impl Fn(u32) -> usize, salt: u64) -> Vec<u32> {
    let Some((&first, rest)) = missing.split_first() else {
        return Vec::new();
    };
    let mut held: Vec<(usize, u64, u32)> = Vec::new();
    let mut unheld: Vec<u32> = Vec::new();
    for &index in rest {
        match holders(index) {
            0 => unheld.push(index),
            n => held.push((n, mix(salt ^ u64::from(index)), index)),
        }
    }
    held.sort_unstable();
    let mut order = Vec::with_capacity(missing.len());
    order.push(first);
    order.extend(held.into_iter().map(|(_, _, index)| index));
    order.extend(unheld);
    order
}

/// A per-host salt for [`exchange_order`]'s tie-break.
pub fn salt_for(host_id: &str) -> u64 {
    host_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finaliser: neighbouring indices get unrelated tie-breaks.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_first_then_rarest_then_unheld_ascending() {
        // Piece 5 has one holder, 2 and 3 have three, 4 and 6 have none.
        let holders = |i: u32| match i {
            5 => 1,
            2 | 3 => 3,
            _ => 0,
        };
        let order = exchange_order(&[1, 2, 3, 4, 5, 6], holders, salt_for("a"));
        assert_eq!(order[0], 1);
        assert_eq!(order[1], 5);
        let mut middle = order[2..4].to_vec();
        middle.sort();
        assert_eq!(middle, vec![2, 3]);
        assert_eq!(&order[4..], &[4, 6]);
    }

    #[test]
    fn hosts_break_ties_differently() {
        let missing: Vec<u32> = (0..64).collect();
        let a = exchange_order(&missing, |_| 2, salt_for("host-a"));
        let b = exchange_order(&missing, |_| 2, salt_for("host-b"));
        assert_eq!(a[0], 0);
        assert_eq!(b[0], 0);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, missing, "every missing piece exactly once");
    }

    #[test]
    fn empty_and_single() {
        assert!(exchange_order(&[], |_| 1, 0).is_empty());
        assert_eq!(exchange_order(&[9], |_| 1, 0), vec![9]);
    }
}
