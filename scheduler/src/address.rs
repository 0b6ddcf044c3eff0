//! Which address a member may announce for itself. Children dial the
//! announced `ip:peer_port`; the peer port's mutual TLS already refuses a
//! parent that is not the host named, so a false address cannot serve
//! content, but it can aim every child of the cluster at any address of the
//! attacker's choosing (or at their own loopback).
//!
//! The announced ip cannot simply be the connection's address: a dfdaemon
//! on a hostPort advertises its node's address (`status.hostIP`) while its
//! calls leave from its pod's address, and either may be translated on the
//! way. So:
//! - a seed (advertising its pod address, `status.podIP`, which is what it
//!   calls from) must announce the address it calls from;
//! - anyone calling from outside loopback may not announce a loopback,
//!   unspecified or multicast address;
//! - an address and peer port name one live host (checked in the state):
//!   a member cannot announce another member's.

use std::net::IpAddr;

use identity::Role;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("announced ip {0:?} is not an IP address")]
    NotAnIp(String),
    #[error("announced ip {0} is not one peers can reach")]
    Unreachable(IpAddr),
    #[error("a seed announces the address it calls from ({remote}), not {announced}")]
    NotTheCaller { announced: IpAddr, remote: IpAddr },
}

/// Checks `announced` for a caller of `role` connecting from `remote`.
pub fn check(
    announced: &str,
    role: Option<Role>,
    remote: Option<IpAddr>,
) -> Result<IpAddr, AddressError> {
    let ip: IpAddr = announced
        .parse()
        .map_err(|_| AddressError::NotAnIp(announced.to_string()))?;
    let Some(remote) = remote.filter(|r| !r.is_loopback()) else {
        // Loopback callers: tests and the all-in-one mode, one machine.
        return Ok(ip);
    };
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || is_broadcast(ip) {
        return Err(AddressError::Unreachable(ip));
    }
    if role == Some(Role::Seed) && canonical(ip) != canonical(remote) {
        return Err(AddressError::NotTheCaller {
            announced: ip,
            remote,
        });
    }
    Ok(ip)
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// IPv4 callers may show up as IPv4-mapped IPv6 on a dual-stack listener.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn members_announce_reachable_addresses_and_seeds_their_own() {
        let pod = ip("10.244.1.7");
        // A node on a hostPort: its node's address, not the pod's.
        assert!(check("192.168.0.10", Some(Role::Node), pod).is_ok());
        for bad in [
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
        ] {
            assert!(
                matches!(
                    check(bad, Some(Role::Node), pod),
                    Err(AddressError::Unreachable(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            check("node-a", Some(Role::Node), pod),
            Err(AddressError::NotAnIp(_))
        ));
        // A seed: the address it calls from, also as a mapped IPv6 peer.
        assert!(check("10.244.1.7", Some(Role::Seed), pod).is_ok());
        assert!(check("10.244.1.7", Some(Role::Seed), ip("::ffff:10.244.1.7")).is_ok());
        assert!(matches!(
            check("10.244.1.8", Some(Role::Seed), pod),
            Err(AddressError::NotTheCaller { .. })
        ));
        // On one machine (loopback callers) anything goes.
        assert!(check("127.0.0.5", Some(Role::Seed), ip("127.0.0.1")).is_ok());
    }
}
