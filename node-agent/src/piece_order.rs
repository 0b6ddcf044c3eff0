//! The order in which a peer asks its parents for pieces.
//!
//! If every peer of a swarm asked for the lowest missing piece first, they
//! would all hold the same pieces at the same time, have nothing to trade,
//! and queue on whichever parent got the next piece first. So a full
//! download asks first for the pieces that parents still downloading hold
//! fewest copies of (rarest first, ties broken differently on every host),
//! which spreads distinct pieces over the swarm for peers to exchange.
//! Pieces only complete parents hold come next, in an order of this host's
//! own: complete parents (seeds, nodes that finished) hold everything, so
//! counting them would make every piece nobody else has look rarest and
//! send the whole swarm to their uplinks while the children's sit idle.
//! Complete parents and sources, though, are asked first for what no
//! parent still downloading holds ([`ExchangeOrder::injecting`]): they
//! bring the swarm pieces it lacks, and the children trade the rest.
//! Two exceptions: the lowest missing piece goes first, so a reader
//! streaming the content keeps moving; and pieces no parent holds yet come
//! last in ascending order, which is the order the back-to-source peer
//! fetches them in.

/// Who among a download's parents holds one piece.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holders {
    /// Parents still downloading the task whose bitmap has the piece.
    pub downloading: usize,
    /// Complete parents (they hold every piece).
    pub complete: usize,
}

/// A full download's pieces in the classes that order them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExchangeOrder {
    /// The lowest missing piece, for a reader streaming the content.
    first: Option<u32>,
    /// Held by parents still downloading, rarest first.
    traded: Vec<u32>,
    /// Held only by complete parents, in this host's own order.
    from_complete: Vec<u32>,
    /// Held by no parent yet, ascending.
    unheld: Vec<u32>,
}

impl ExchangeOrder {
    /// For parents still downloading: what they hold, rarest first.
    pub fn trading(&self) -> impl Iterator<Item = u32> + '_ {
        self.between_first_and_unheld(&self.traded, &self.from_complete)
    }

    /// For complete parents and sources: first what no parent still
    /// downloading holds, so their uplinks bring the swarm pieces it lacks
    /// rather than copies children could trade for.
    pub fn injecting(&self) -> impl Iterator<Item = u32> + '_ {
        self.between_first_and_unheld(&self.from_complete, &self.traded)
    }

    fn between_first_and_unheld<'a>(
        &'a self,
        before: &'a [u32],
        after: &'a [u32],
    ) -> impl Iterator<Item = u32> + 'a {
        self.first
            .iter()
            .chain(before)
            .chain(after)
            .chain(&self.unheld)
            .copied()
    }
}

/// A full download's piece order. `missing` is ascending; `holders(i)` says
/// who among the known parents holds piece `i`; `salt` differs per host.
pub fn exchange_order(
    missing: &[u32],
    holders: impl Fn(u32) -> Holders,
    salt: u64,
) -> ExchangeOrder {
    let Some((&first, rest)) = missing.split_first() else {
        return ExchangeOrder::default();
    };
    let mut traded: Vec<(usize, u64, u32)> = Vec::new();
    let mut from_complete: Vec<(u64, u32)> = Vec::new();
    let mut unheld: Vec<u32> = Vec::new();
    for &index in rest {
        let tie = mix(salt ^ u64::from(index));
        match holders(index) {
            Holders {
                downloading: 0,
                complete: 0,
            } => unheld.push(index),
            Holders { downloading: 0, .. } => from_complete.push((tie, index)),
            Holders { downloading, .. } => traded.push((downloading, tie, index)),
        }
    }
    traded.sort_unstable();
    from_complete.sort_unstable();
    ExchangeOrder {
        first: Some(first),
        traded: traded.into_iter().map(|(_, _, index)| index).collect(),
        from_complete: from_complete.into_iter().map(|(_, index)| index).collect(),
        unheld,
    }
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

    fn downloading(n: usize) -> Holders {
        Holders {
            downloading: n,
            complete: 0,
        }
    }

    #[test]
    fn lowest_first_then_rarest_then_unheld_ascending() {
        // Piece 5 has one holder, 2 and 3 have three, 4 and 6 have none.
        let holders = |i: u32| match i {
            5 => downloading(1),
            2 | 3 => downloading(3),
            _ => Holders::default(),
        };
        let order = exchange_order(&[1, 2, 3, 4, 5, 6], holders, salt_for("a"))
            .trading()
            .collect::<Vec<_>>();
        assert_eq!(order[0], 1);
        assert_eq!(order[1], 5);
        let mut middle = order[2..4].to_vec();
        middle.sort();
        assert_eq!(middle, vec![2, 3]);
        assert_eq!(&order[4..], &[4, 6]);
    }

    #[test]
    fn pieces_only_complete_parents_hold_come_after_the_traded_ones_in_a_host_order() {
        // A seed and a finished node hold everything; two children hold 7
        // and 9. The children's pieces first, then the rest, spread.
        let holders = |i: u32| Holders {
            downloading: usize::from(i == 7 || i == 9),
            complete: 2,
        };
        let missing: Vec<u32> = (0..64).collect();
        let a = exchange_order(&missing, holders, salt_for("host-a"))
            .trading()
            .collect::<Vec<_>>();
        let b = exchange_order(&missing, holders, salt_for("host-b"))
            .trading()
            .collect::<Vec<_>>();
        assert_eq!(a[0], 0);
        let mut traded = a[1..3].to_vec();
        traded.sort();
        assert_eq!(traded, vec![7, 9]);
        // Not ascending, and not the same on two hosts: two children do
        // not both ask the seed for the same next piece.
        assert_ne!(&a[3..8], &[1, 2, 3, 4, 5]);
        assert_ne!(a[3..], b[3..]);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, missing, "every missing piece exactly once");
    }

    #[test]
    fn complete_parents_bring_first_what_no_child_holds() {
        // 1-31 only complete parents hold; 40 a child holds; 50 nobody.
        let holders = |i: u32| Holders {
            downloading: usize::from(i == 40),
            complete: usize::from(i != 50),
        };
        let missing: Vec<u32> = (0..32).chain([40, 50]).collect();
        let order = exchange_order(&missing, holders, salt_for("me"));
        let trading: Vec<u32> = order.trading().collect();
        let injecting: Vec<u32> = order.injecting().collect();
        assert_eq!(trading[..2], [0, 40]);
        assert_eq!(trading[33], 50);
        assert_eq!(injecting[0], 0);
        assert_eq!(injecting[32..], [40, 50]);
        // The complete parents' pieces in the same host order either way.
        assert_eq!(trading[2..33], injecting[1..32]);
        let mut sorted = injecting.clone();
        sorted.sort();
        assert_eq!(sorted, missing, "every missing piece exactly once");
    }

    #[test]
    fn hosts_break_ties_differently() {
        let missing: Vec<u32> = (0..64).collect();
        let a = exchange_order(&missing, |_| downloading(2), salt_for("host-a"))
            .trading()
            .collect::<Vec<_>>();
        let b = exchange_order(&missing, |_| downloading(2), salt_for("host-b"))
            .trading()
            .collect::<Vec<_>>();
        assert_eq!(a[0], 0);
        assert_eq!(b[0], 0);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, missing, "every missing piece exactly once");
    }

    #[test]
    fn empty_and_single() {
        assert!(exchange_order(&[], |_| downloading(1), 0)
            .trading()
            .collect::<Vec<_>>()
            .is_empty());
        assert_eq!(
            exchange_order(&[9], |_| downloading(1), 0)
                .trading()
                .collect::<Vec<_>>(),
            vec![9]
        );
    }
}
