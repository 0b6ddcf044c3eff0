//! Which dfdaemons download: the seed-peer and dfdaemon pods the operator's
//! own builders labelled for the cluster, filtered by the Preheat's scope.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::crd::Scope;
use crate::crd::DragonflyCluster;

/// One dfdaemon a Preheat drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Pod name (or the address, for `preheat-local`).
    pub name: String,
    pub node: Option<String>,
    /// Task API base, e.g. `http://10.0.0.5:65002`.
    pub peer: String,
    /// Registry mirror base, e.g. `http://10.0.0.5:65001`.
    pub mirror: String,
}

impl Target {
    /// How messages name it: `pod (node)`.
    pub fn describe(&self) -> String {
        match &self.node {
            Some(n) => format!("peer {} on node {n}", self.name),
            None => format!("peer {}", self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Waiting may help (pods starting, nodes joining).
    #[error("{0}")]
    NotYet(String),
    /// Only a spec change helps.
    #[error("{0}")]
    Impossible(String),
}

/// Ready pods the scope selects, sorted by name. `seeds` and `daemons` are
/// the cluster's seed-peer and dfdaemon pods; `selected_nodes` the nodes
/// matching `nodeSelector` (scope `NodeSelector` only); `previous` the
/// targets already in the status, so `OneSeedPeer` keeps its peer.
pub fn choose(
    dfc: &DragonflyCluster,
    scope: Scope,
    seeds: &[Pod],
    daemons: &[Pod],
    selected_nodes: Option<&BTreeSet<String>>,
    previous: &[String],
) -> Result<Vec<Target>, TargetError> {
    let cluster = dfc.name_any();
    let seed_scope = matches!(scope, Scope::OneSeedPeer | Scope::AllSeedPeers);
    if seed_scope && !dfc.spec.seed_peer.enabled {
        return Err(TargetError::Impossible(format!(
            "DragonflyCluster {cluster} has seed peers disabled; use scope AllNodes or NodeSelector"
        )));
    }
    let pool = if seed_scope { seeds } else { daemons };
    let d = &dfc.spec.dfdaemon;
    let mut ready: Vec<Target> = pool
        .iter()
        .filter(|p| is_ready(p))
        .filter(|p| match (scope, selected_nodes) {
            (Scope::NodeSelector, Some(nodes)) => node_of(p).is_some_and(|n| nodes.contains(&n)),
            (Scope::NodeSelector, None) => false,
            _ => true,
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            };
            Some(Target {
                name: p.name_any(),
                node: node_of(p),
                peer: format!("http://{host}:{}", d.peer_port),
                mirror: format!("http://{host}:{}", d.proxy_port),
            })
        })
        .collect();
    ready.sort_by(|a, b| a.name.cmp(&b.name));
    if ready.is_empty() {
        let what = match scope {
            Scope::OneSeedPeer | Scope::AllSeedPeers => "no seed peer pod".to_string(),
            Scope::AllNodes => "no dfdaemon pod".to_string(),
            Scope::NodeSelector if selected_nodes.is_some_and(BTreeSet::is_empty) => {
                return Err(TargetError::NotYet(format!(
                    "no node matches spec.nodeSelector (DragonflyCluster {cluster})"
                )))
            }
            Scope::NodeSelector => "no dfdaemon pod on a node matching spec.nodeSelector".into(),
        };
        return Err(TargetError::NotYet(format!(
            "{what} of DragonflyCluster {cluster} is ready"
        )));
    }
    if scope == Scope::OneSeedPeer {
        let keep = previous
            .first()
            .and_then(|name| ready.iter().position(|t| &t.name == name))
            .unwrap_or(0);
        return Ok(vec![ready.swap_remove(keep)]);
    }
    Ok(ready)
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

/// Running, Ready, not being deleted, with an IP.
fn is_ready(p: &Pod) -> bool {
    if p.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(st) = p.status.as_ref() else {
        return false;
    };
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && st
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `--dfdaemon PEER_URL,MIRROR_URL` of `preheat-local`.
pub fn parse_local(arg: &str) -> Result<Target, String> {
    let (peer, mirror) = arg
        .split_once(',')
        .ok_or_else(|| format!("--dfdaemon {arg:?}: expected PEER_URL,MIRROR_URL"))?;
    for u in [peer, mirror] {
        let parsed = url::Url::parse(u).map_err(|e| format!("--dfdaemon {arg:?}: {u:?}: {e}"))?;
        if parsed.scheme() != "http" || parsed.host_str().is_none() {
            return Err(format!("--dfdaemon {arg:?}: {u:?} is not an http:// URL"));
        }
    }
    Ok(Target {
        name: peer
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
        node: None,
        peer: peer.trim_end_matches('/').to_string(),
        mirror: mirror.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    fn pod(name: &str, node: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn cluster(seeds: bool) -> DragonflyCluster {
        let mut dfc = DragonflyCluster::new("dragonfly", Default::default());
        dfc.spec.seed_peer.enabled = seeds;
        dfc
    }

    fn names(t: &[Target]) -> Vec<&str> {
        t.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn one_seed_peer_is_stable_while_ready() {
        let seeds = [
            pod("s-1", "n1", "10.0.0.2", true),
            pod("s-0", "n2", "10.0.0.1", true),
            pod("s-2", "n3", "10.0.0.3", false),
        ];
        let dfc = cluster(true);
        let t = choose(&dfc, Scope::OneSeedPeer, &seeds, &[], None, &[]).expect("one");
        assert_eq!(names(&t), ["s-0"]);
        assert_eq!(t[0].peer, "http://10.0.0.1:65002");
        assert_eq!(t[0].mirror, "http://10.0.0.1:65001");
        assert_eq!(t[0].describe(), "peer s-0 on node n2");
        let t = choose(&dfc, Scope::OneSeedPeer, &seeds, &[], None, &["s-1".into()]).expect("one");
        assert_eq!(names(&t), ["s-1"]);
        // The previous one is no longer ready: another takes over.
        let t = choose(&dfc, Scope::OneSeedPeer, &seeds, &[], None, &["s-2".into()]).expect("one");
        assert_eq!(names(&t), ["s-0"]);
    }

    #[test]
    fn scopes_pick_their_pools() {
        let seeds = [
            pod("s-0", "n0", "10.0.0.1", true),
            pod("s-1", "n1", "10.0.0.2", true),
        ];
        let mut deleting = pod("d-c", "n3", "10.0.1.3", true);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let daemons = [
            pod("d-a", "n1", "10.0.1.1", true),
            pod("d-b", "n2", "fd00::2", true),
            deleting,
        ];
        let dfc = cluster(true);
        let all_seeds =
            choose(&dfc, Scope::AllSeedPeers, &seeds, &daemons, None, &[]).expect("seeds");
        assert_eq!(names(&all_seeds), ["s-0", "s-1"]);
        let all = choose(&dfc, Scope::AllNodes, &seeds, &daemons, None, &[]).expect("nodes");
        assert_eq!(names(&all), ["d-a", "d-b"]);
        assert_eq!(all[1].peer, "http://[fd00::2]:65002");
        let picked = BTreeSet::from(["n2".to_string()]);
        let sel = choose(
            &dfc,
            Scope::NodeSelector,
            &seeds,
            &daemons,
            Some(&picked),
            &[],
        )
        .expect("sel");
        assert_eq!(names(&sel), ["d-b"]);
    }

    #[test]
    fn explains_why_nobody_can_download() {
        let dfc = cluster(false);
        let e = choose(&dfc, Scope::OneSeedPeer, &[], &[], None, &[]).expect_err("disabled");
        assert!(matches!(e, TargetError::Impossible(_)));
        assert!(e.to_string().contains("seed peers disabled"), "{e}");
        let e = choose(
            &cluster(true),
            Scope::AllSeedPeers,
            &[pod("s", "n", "1.1.1.1", false)],
            &[],
            None,
            &[],
        )
        .expect_err("none ready");
        assert_eq!(
            e,
            TargetError::NotYet("no seed peer pod of DragonflyCluster dragonfly is ready".into())
        );
        let e = choose(
            &dfc,
            Scope::NodeSelector,
            &[],
            &[],
            Some(&BTreeSet::new()),
            &[],
        )
        .expect_err("no nodes");
        assert!(
            e.to_string().contains("no node matches spec.nodeSelector"),
            "{e}"
        );
    }

    #[test]
    fn local_targets() {
        let t = parse_local("http://127.0.0.1:65002,http://127.0.0.1:65001/").expect("parses");
        assert_eq!(t.name, "127.0.0.1:65002");
        assert_eq!(t.mirror, "http://127.0.0.1:65001");
        assert!(parse_local("http://127.0.0.1:65002").is_err());
        assert!(parse_local("https://a:1,http://b:2").is_err());
    }
}
