//! Hosts in network namespaces for multi-host runs: one namespace per host,
//! joined by a bridge that lives in a namespace of its own (nothing is added
//! to the root namespace), every link shaped with `tc tbf` on both ends,
//! with the kernel's default queue (`pfifo_fast`) behind the shaper.
//! Dropping the topology deletes every namespace it made.

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The subnet inside the bench's own namespaces; unreachable from the root
/// namespace, which has no route to it.
pub const SUBNET: [u8; 3] = [10, 213, 0];

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub octet: u8,
    /// Link rate in Mbit/s; None leaves the link unshaped.
    pub rate_mbit: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct NetHost {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The bridge's end of this host's link, in the bridge's namespace.
    pub bridge_veth: String,
}

pub struct Topology {
    family: String,
    prefix: String,
    bridge_ns: String,
    pub hosts: Vec<NetHost>,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Refuses to go on without root, saying why.
pub fn require_root() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("this harness creates network namespaces, veth links and tc qdiscs, which needs root; run it as root (e.g. sudo)");
    }
    Ok(())
}

/// The namespace prefix of this process's run: `<family><pid>-`, so that
/// two runs on one machine never touch each other's namespaces.
pub fn run_prefix(family: &str) -> String {
    format!("{family}{}-", std::process::id())
}

/// Namespaces of `family` left behind by runs that were killed outright
/// (their process is gone), and every namespace of `prefix`.
pub fn remove_stale(family: &str, prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let owner_gone = name
            .strip_prefix(family)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if name.starts_with(prefix) || owner_gone {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Topology {
    /// Namespaces are named `<family><pid>-<host>`.
    pub fn create(family: &str, specs: &[HostSpec]) -> anyhow::Result<Topology> {
        require_root()?;
        let prefix = run_prefix(family);
        remove_stale(family, &prefix);
        let prefix = prefix.as_str();
        let bridge_ns = format!("{prefix}br");
        let mut topo = Topology {
            family: family.to_string(),
            prefix: prefix.to_string(),
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
        };
        run(&["ip", "netns", "add", &bridge_ns])?;
        run(&["ip", "-n", &bridge_ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "-n", &bridge_ns, "link", "add", "br0", "type", "bridge",
        ])?;
        run(&["ip", "-n", &bridge_ns, "link", "set", "br0", "up"])?;
        for (i, spec) in specs.iter().enumerate() {
            let ns = format!("{prefix}{}", spec.name);
            let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], spec.octet);
            let veth = format!("v{i}");
            run(&["ip", "netns", "add", &ns])?;
            topo.hosts.push(NetHost {
                name: spec.name.clone(),
                ns: ns.clone(),
                ip,
                bridge_veth: veth.clone(),
            });
            run(&[
                "ip", "-n", &bridge_ns, "link", "add", &veth, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ])?;
            run(&[
                "ip", "-n", &bridge_ns, "link", "set", &veth, "master", "br0", "up",
            ])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            if let Some(rate) = spec.rate_mbit {
                let rate = format!("{rate}mbit");
                for (where_ns, dev) in [(ns.as_str(), "eth0"), (bridge_ns.as_str(), veth.as_str())]
                {
                    run(&[
                        "ip", "netns", "exec", where_ns, "tc", "qdisc", "add", "dev", dev, "root",
                        "handle", "1:", "tbf", "rate", &rate, "burst", "64kb", "latency", "100ms",
                    ])?;
                    // Behind the shaper, the kernel's default queue (three
                    // bands by socket priority) as on a node's NIC, instead
                    // of tbf's own single FIFO.
                    run(&[
                        "ip",
                        "netns",
                        "exec",
                        where_ns,
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        "parent",
                        "1:1",
                        "handle",
                        "10:",
                        "pfifo_fast",
                    ])?;
                }
            }
        }
        Ok(topo)
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&NetHost> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name}"))
    }

    /// The namespace holding the bridge and every host link's far end.
    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }

    /// The arguments that run `program args` inside `host`'s namespace.
    pub fn exec_args(&self, host: &NetHost, program: &str, args: &[String]) -> Vec<String> {
        let mut all = vec![
            "netns".to_string(),
            "exec".into(),
            host.ns.clone(),
            program.to_string(),
        ];
        all.extend(args.iter().cloned());
        all
    }

    pub fn teardown(&mut self) {
        for host in self.hosts.drain(..) {
            let _ = run(&["ip", "netns", "del", &host.ns]);
        }
        let _ = run(&["ip", "netns", "del", &self.bridge_ns]);
        remove_stale(&self.family, &self.prefix);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}
