//! Which scheduler owns a task: rendezvous (highest random weight) hashing of
//! the task id over the scheduler addresses. Every dfdaemon given the same
//! list picks the same owner, and adding a replica moves only ~1/n of tasks.

use sha2::{Digest, Sha256};

fn weight(task_id: &str, node: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(task_id.as_bytes())
        .chain_update([0u8])
        .chain_update(node.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The nodes in preference order for `task_id`: the owner first, then the
/// ones to fall back to if it is unreachable.
pub fn rank<'a>(task_id: &str, nodes: &'a [String]) -> Vec<&'a String> {
    let mut ranked: Vec<(u64, &String)> = nodes.iter().map(|n| (weight(task_id, n), n)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_replica_moves_few_tasks() {
        let three: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:8002")).collect();
        let mut four = three.clone();
        four.push("10.0.0.4:8002".into());
        let tasks: Vec<String> = (0..2000).map(|i| format!("task-{i}")).collect();
        let moved = tasks
            .iter()
            .filter(|t| rank(t, &three)[0] != rank(t, &four)[0])
            .count();
        // Ideal is 1/4 of tasks; every moved task must go to the new replica.
        assert!(moved > 300 && moved < 700, "moved {moved}");
        for t in &tasks {
            let new_owner = rank(t, &four)[0];
            if rank(t, &three)[0] != new_owner {
                assert_eq!(new_owner, "10.0.0.4:8002");
            }
        }
    }

    #[test]
    fn order_is_independent_of_list_order() {
        let a: Vec<String> = vec!["x".into(), "y".into(), "z".into()];
        let b: Vec<String> = vec!["z".into(), "x".into(), "y".into()];
        assert_eq!(rank("t", &a), rank("t", &b));
        assert!(rank("t", &[]).is_empty());
    }
}
