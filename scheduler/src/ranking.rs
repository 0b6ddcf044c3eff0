//! Parent choice and seed choice as pure functions: the state module gathers
//! the facts, this module only decides.

use std::collections::HashMap;

use proto::Host;

use wire::bitmap::Bitmap;

/// Availability dominates: a parent without the pieces we need is useless
/// however close or idle it is.
const AVAILABILITY_WEIGHT: f64 = 2.0;
const UPLOAD_WEIGHT: f64 = 1.0;
const LOCALITY_WEIGHT: f64 = 1.0;
/// A small per-(child, parent) pseudo-random term: heartbeats report free
/// upload slots only every few seconds, so without it every child asking in
/// the same second would pick the same top parents.
const SPREAD_WEIGHT: f64 = 0.25;
const FAILURE_PENALTY: f64 = 0.5;
const MAX_PENALISED_FAILURES: u32 = 4;

/// The peer asking for parents.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub host_id: &'a str,
    pub labels: &'a HashMap<String, String>,
    pub bitmap: &'a Bitmap,
}

/// Another peer of the same task, with what the state knows about it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub host: &'a Host,
    pub bitmap: &'a Bitmap,
    pub complete: bool,
    /// The task's back-to-source downloader: it will have every piece soon
    /// even if it has none yet.
    pub is_source: bool,
    /// The host's heartbeat is fresh.
    pub alive: bool,
    /// The requester reported this parent as failing recently.
    pub blocked: bool,
    /// Failures anyone reported against this host in the last minute.
    pub recent_failures: u32,
}

/// Pieces the candidate has that the requester lacks.
fn useful_pieces(req: &Requester, c: &Candidate, piece_count: u32) -> u32 {
    c.bitmap.count_missing_from(req.bitmap, piece_count)
}

pub fn eligible(req: &Requester, c: &Candidate, piece_count: u32) -> bool {
    c.host.id != req.host_id
        && c.alive
        && !c.blocked
        && (c.complete || c.is_source || useful_pieces(req, c, piece_count) > 0)
}

/// Higher is better. Only meaningful for eligible candidates.
pub fn score(req: &Requester, c: &Candidate, piece_count: u32) -> f64 {
    let availability = if c.complete || c.is_source {
        1.0
    } else {
        let useful = useful_pieces(req, c, piece_count);
        if piece_count > 0 {
            let missing = piece_count
                .saturating_sub(req.bitmap.count(piece_count))
                .max(1);
            (f64::from(useful) / f64::from(missing)).min(1.0)
        } else if useful > 0 {
            // Shape unknown: some pieces, no way to tell what share.
            0.5
        } else {
            0.0
        }
    };

    let upload = if c.host.upload_capacity == 0 {
        0.5
    } else {
        (f64::from(c.host.free_upload_slots) / f64::from(c.host.upload_capacity)).min(1.0)
    };

    let locality = if req.labels.is_empty() {
        0.0
    } else {
        let same = req
            .labels
            .iter()
            .filter(|(k, v)| c.host.labels.get(*k) == Some(v))
            .count();
        same as f64 / req.labels.len() as f64
    };

    let spread = (rendezvous(req.host_id, &c.host.id) >> 11) as f64 / (1u64 << 53) as f64;
    let penalty = FAILURE_PENALTY * f64::from(c.recent_failures.min(MAX_PENALISED_FAILURES));

    AVAILABILITY_WEIGHT * availability
        + UPLOAD_WEIGHT * upload
        + LOCALITY_WEIGHT * locality
        + SPREAD_WEIGHT * spread
        - penalty
}

/// The best `max` eligible candidates, best first.
pub fn rank<'a>(
    req: &Requester,
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    piece_count: u32,
    max: usize,
) -> Vec<Candidate<'a>> {
    let mut scored: Vec<(f64, Candidate<'a>)> = candidates
        .into_iter()
        .filter(|c| eligible(req, c, piece_count))
        .map(|c| (score(req, &c, piece_count), c))
        .collect();
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.host.id.cmp(&b.1.host.id))
    });
    scored.truncate(max);
    scored.into_iter().map(|(_, c)| c).collect()
}

/// Rendezvous (highest random weight) choice of a seed for a task: stable
/// while the seed set is stable, spreads tasks evenly over seeds, and moves
/// only the tasks of a seed that goes away.
pub fn pick_seed<'a>(task_id: &str, seeds: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    seeds
        .into_iter()
        .max_by_key(|seed| (rendezvous(task_id, seed), *seed))
}

/// A hash that is stable across processes and versions (unlike std's
/// `DefaultHasher`), so every scheduler replica picks the same seed.
pub fn rendezvous(a: &str, b: &str) -> u64 {
    // FNV-1a over `a 0xff b`, then a splitmix64 finaliser because FNV alone
    // mixes similar ids poorly.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0xff]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, zone: &str, capacity: u32, free: u32) -> Host {
        let mut labels = HashMap::new();
        if !zone.is_empty() {
            labels.insert("zone".to_string(), zone.to_string());
        }
        Host {
            id: id.into(),
            upload_capacity: capacity,
            free_upload_slots: free,
            labels,
            ..Default::default()
        }
    }

    fn bits(pieces: &[u32]) -> Bitmap {
        let mut b = Bitmap::default();
        for &p in pieces {
            b.set(p).unwrap();
        }
        b
    }

    fn cand<'a>(host: &'a Host, bitmap: &'a Bitmap) -> Candidate<'a> {
        Candidate {
            host,
            bitmap,
            complete: false,
            is_source: false,
            alive: true,
            blocked: false,
            recent_failures: 0,
        }
    }

    fn ids(ranked: &[Candidate]) -> Vec<String> {
        ranked.iter().map(|c| c.host.id.clone()).collect()
    }

    struct Fixture {
        labels: HashMap<String, String>,
        bitmap: Bitmap,
    }

    impl Fixture {
        fn new(zone: &str, pieces: &[u32]) -> Self {
            Fixture {
                labels: host("req", zone, 0, 0).labels,
                bitmap: bits(pieces),
            }
        }
        fn req(&self) -> Requester<'_> {
            Requester {
                host_id: "req",
                labels: &self.labels,
                bitmap: &self.bitmap,
            }
        }
    }

    #[test]
    fn filters_ineligible_candidates() {
        let f = Fixture::new("", &[0]);
        let (me, dead, blocked, empty, same, src) = (
            host("req", "", 4, 4),
            host("dead", "", 4, 4),
            host("blocked", "", 4, 4),
            host("empty", "", 4, 4),
            host("same", "", 4, 4),
            host("src", "", 4, 4),
        );
        let some = bits(&[0, 1]);
        let only_mine = bits(&[0]);
        let none = Bitmap::default();
        let candidates = vec![
            cand(&me, &some),
            Candidate {
                alive: false,
                ..cand(&dead, &some)
            },
            Candidate {
                blocked: true,
                ..cand(&blocked, &some)
            },
            cand(&empty, &none),
            // Holds only pieces the requester already has.
            cand(&same, &only_mine),
            Candidate {
                is_source: true,
                ..cand(&src, &none)
            },
        ];
        assert_eq!(ids(&rank(&f.req(), candidates, 4, 10)), vec!["src"]);
    }

    #[test]
    fn prefers_more_useful_pieces() {
        let f = Fixture::new("", &[]);
        let (a, b, c) = (
            host("a", "", 4, 4),
            host("b", "", 4, 4),
            host("c", "", 4, 4),
        );
        let (few, many, all) = (bits(&[0]), bits(&[0, 1, 2]), Bitmap::default());
        let ranked = rank(
            &f.req(),
            vec![
                cand(&a, &few),
                cand(&b, &many),
                Candidate {
                    complete: true,
                    ..cand(&c, &all)
                },
            ],
            8,
            10,
        );
        assert_eq!(ids(&ranked), vec!["c", "b", "a"]);
    }

    #[test]
    fn prefers_free_upload_slots() {
        let f = Fixture::new("", &[]);
        let (busy, idle) = (host("busy", "", 4, 0), host("idle", "", 4, 4));
        let all = bits(&[0, 1]);
        let ranked = rank(&f.req(), vec![cand(&busy, &all), cand(&idle, &all)], 2, 10);
        assert_eq!(ids(&ranked), vec!["idle", "busy"]);
    }

    #[test]
    fn prefers_same_zone() {
        let f = Fixture::new("z1", &[]);
        let (far, near) = (host("far", "z2", 4, 4), host("near", "z1", 4, 4));
        let all = bits(&[0, 1]);
        let ranked = rank(&f.req(), vec![cand(&far, &all), cand(&near, &all)], 2, 10);
        assert_eq!(ids(&ranked), vec!["near", "far"]);
    }

    #[test]
    fn recent_failures_push_a_parent_down() {
        let f = Fixture::new("", &[]);
        let (flaky, steady) = (host("flaky", "", 4, 4), host("steady", "", 4, 4));
        let all = bits(&[0, 1]);
        let ranked = rank(
            &f.req(),
            vec![
                Candidate {
                    recent_failures: 2,
                    ..cand(&flaky, &all)
                },
                cand(&steady, &all),
            ],
            2,
            10,
        );
        assert_eq!(ids(&ranked), vec!["steady", "flaky"]);
    }

    #[test]
    fn truncates_to_max_parents() {
        let f = Fixture::new("", &[]);
        let hosts: Vec<Host> = (0..10).map(|i| host(&format!("h{i}"), "", 4, 4)).collect();
        let all = bits(&[0]);
        let ranked = rank(&f.req(), hosts.iter().map(|h| cand(h, &all)), 1, 4);
        assert_eq!(ranked.len(), 4);
    }

    #[test]
    fn seed_choice_is_stable_and_spreads() {
        let seeds = ["seed-0", "seed-1", "seed-2"];
        assert_eq!(pick_seed("t", []), None);
        let first = pick_seed("task-a", seeds).unwrap();
        assert_eq!(
            pick_seed("task-a", seeds.iter().rev().copied()),
            Some(first)
        );

        let mut per_seed = HashMap::new();
        for i in 0..300 {
            let chosen = pick_seed(&format!("sha256:{i:064x}"), seeds).unwrap();
            *per_seed.entry(chosen).or_insert(0) += 1;
        }
        assert_eq!(per_seed.len(), 3, "every seed gets tasks: {per_seed:?}");
        assert!(per_seed.values().all(|&n| n > 50), "{per_seed:?}");
    }

    #[test]
    fn removing_a_seed_moves_only_its_tasks() {
        let all = ["s0", "s1", "s2"];
        let rest = ["s0", "s2"];
        for i in 0..100 {
            let task = format!("task-{i}");
            let before = pick_seed(&task, all).unwrap();
            if before != "s1" {
                assert_eq!(pick_seed(&task, rest), Some(before));
            }
        }
    }
}
