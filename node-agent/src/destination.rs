//! Where dfdaemon's own requests (origin downloads, registry requests, and
//! every redirect they follow) may go. A URL comes from whoever asked for
//! a task or named a registry, so without this check the daemon would be a
//! relay into the node's loopback services and the cloud metadata endpoint.
//! Loopback, link-local, unspecified, multicast and broadcast addresses are
//! refused unless listed in `allowed_destinations`; everything else (public
//! and private networks, where registries live) is allowed.
//!
//! Names are checked where they are resolved, as each connection is made
//! (the resolver drops refused addresses); IP literals are checked when a
//! request starts and on every redirect.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A network in CIDR notation (`127.0.0.0/8`, `::1/128`; a bare address is
/// one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DestinationError {
    #[error("invalid network {0:?} (expected ADDRESS or ADDRESS/PREFIX)")]
    BadCidr(String),
    #[error("{0} is not a destination this daemon may reach (loopback, link-local and the like are refused unless allowed_destinations lists them)")]
    Refused(IpAddr),
    #[error("URL {0:?} has no host")]
    NoHost(String),
}

impl std::str::FromStr for Cidr {
    type Err = DestinationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || DestinationError::BadCidr(text.to_string());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n) as u128, self.prefix, 32)
                    == masked(u32::from(a) as u128, self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Addresses that are never another host's service: this host's own
/// loopback, link-local (the metadata endpoint 169.254.169.254), and
/// addresses no unicast connection should go to.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPolicy {
    allowed: Vec<Cidr>,
}

impl DestinationPolicy {
    pub fn new(allowed: &[String]) -> Result<Self, DestinationError> {
        Ok(DestinationPolicy {
            allowed: allowed
                .iter()
                .map(|c| c.parse())
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        !is_special(ip) || self.allowed.iter().any(|c| c.contains(ip))
    }

    /// Checks a URL's host when it is an IP literal (names are checked
    /// when resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), DestinationError> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(DestinationError::NoHost(url.to_string())),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(DestinationError::Refused(ip))
        }
    }

    pub fn check(&self, url: &str) -> Result<(), DestinationError> {
        let parsed = url::Url::parse(url).map_err(|_| DestinationError::NoHost(url.to_string()))?;
        self.check_url(&parsed)
    }

    /// A client builder whose connections and redirects obey the policy.
    /// `max_redirects`: 0 follows none.
    pub fn apply(
        self: &Arc<Self>,
        builder: reqwest::ClientBuilder,
        max_redirects: usize,
    ) -> reqwest::ClientBuilder {
        let policy = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= max_redirects {
                return attempt.error(format!("more than {max_redirects} redirects"));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => {
                    tracing::warn!(url = %attempt.url(), error = %e, "redirect refused");
                    attempt.error(e)
                }
            }
        });
        builder.redirect(redirects).dns_resolver(Arc::new(Resolver {
            policy: self.clone(),
        }))
    }
}

/// The system resolver, keeping only addresses the policy allows.
struct Resolver {
    policy: Arc<DestinationPolicy>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                let refused = found
                    .first()
                    .map(|a| DestinationError::Refused(a.ip()).to_string())
                    .unwrap_or_else(|| format!("{host} has no address"));
                tracing::warn!(host = %host, "destination refused: {refused}");
                return Err(format!("{host}: {refused}").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_refused_unless_allowed() {
        let default = DestinationPolicy::default();
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!default.allows(refused.parse().unwrap()), "{refused}");
        }
        for allowed in [
            "10.0.0.5",
            "192.168.1.1",
            "172.16.0.1",
            "8.8.8.8",
            "fd00::1",
        ] {
            assert!(default.allows(allowed.parse().unwrap()), "{allowed}");
        }
        let tests = DestinationPolicy::new(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
        assert!(tests.allows("127.0.3.4".parse().unwrap()));
        assert!(tests.allows("::1".parse().unwrap()));
        assert!(!tests.allows("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn urls_with_literal_addresses() {
        let policy = DestinationPolicy::default();
        assert!(policy
            .check("http://169.254.169.254/latest/meta-data")
            .is_err());
        assert!(policy.check("http://[::1]:8080/").is_err());
        assert!(policy.check("https://registry.example.com/v2/").is_ok());
        assert!(policy.check("http://10.1.2.3:5000/v2/").is_ok());
        assert!(policy.check("not a url").is_err());
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("127.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_not_reached() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = Arc::new(DestinationPolicy::default());
        let client = policy
            .apply(reqwest::Client::builder(), 10)
            .no_proxy()
            .build()
            .unwrap();
        // "localhost" resolves to loopback: refused before connecting.
        let err = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("not a destination"), "{err:?}");
    }
}
