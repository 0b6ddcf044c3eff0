//! Where the local task API listens and where dfget finds it: a unix socket
//! (`unix:/run/dragonfly/dfdaemon.sock`, the default) or a loopback
//! `host:port`. The task API can write files and start downloads with any
//! headers, so it is never bound to an address other hosts can reach.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_API_SOCKET: &str = "/run/dragonfly/dfdaemon.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ApiAddress {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApiAddressError {
    #[error("api address {0:?}: a unix socket path after `unix:` must be absolute")]
    RelativeSocket(String),
    #[error("api address {0:?}: expected unix:/PATH or HOST:PORT")]
    Malformed(String),
    #[error(
        "api address {0}: the task API must stay on this host (a unix socket or a loopback address)"
    )]
    NotLoopback(SocketAddr),
}

impl Default for ApiAddress {
    fn default() -> Self {
        ApiAddress::Unix(PathBuf::from(DEFAULT_API_SOCKET))
    }
}

impl ApiAddress {
    /// Parses an address to connect to: any `host:port` is accepted (a
    /// client may reach a daemon through a forwarded port).
    pub fn parse_client(text: &str) -> Result<Self, ApiAddressError> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(ApiAddressError::RelativeSocket(text.to_string()));
            }
            return Ok(ApiAddress::Unix(path));
        }
        use std::net::ToSocketAddrs;
        let addr = text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ApiAddressError::Malformed(text.to_string()))?;
        Ok(ApiAddress::Tcp(addr))
    }

    /// Parses an address to listen on: loopback only.
    pub fn parse_listen(text: &str) -> Result<Self, ApiAddressError> {
        let parsed = match text.strip_prefix("unix:") {
            Some(_) => ApiAddress::parse_client(text)?,
            None => ApiAddress::Tcp(
                text.parse::<SocketAddr>()
                    .map_err(|_| ApiAddressError::Malformed(text.to_string()))?,
            ),
        };
        if let ApiAddress::Tcp(addr) = parsed {
            if !addr.ip().is_loopback() {
                return Err(ApiAddressError::NotLoopback(addr));
            }
        }
        Ok(parsed)
    }

    /// An HTTP client for this address and the base URL to use with it.
    pub fn client(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> reqwest::Result<(reqwest::Client, String)> {
        match self {
            ApiAddress::Unix(path) => Ok((
                builder.unix_socket(path.as_path()).build()?,
                "http://localhost".to_string(),
            )),
            ApiAddress::Tcp(addr) => Ok((builder.build()?, format!("http://{addr}"))),
        }
    }
}

impl std::fmt::Display for ApiAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            ApiAddress::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl std::str::FromStr for ApiAddress {
    type Err = ApiAddressError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ApiAddress::parse_listen(text)
    }
}

impl TryFrom<String> for ApiAddress {
    type Error = ApiAddressError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        ApiAddress::parse_listen(&text)
    }
}

impl From<ApiAddress> for String {
    fn from(addr: ApiAddress) -> String {
        addr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_stay_on_the_host() {
        assert_eq!(
            ApiAddress::parse_listen("unix:/run/x.sock").unwrap(),
            ApiAddress::Unix("/run/x.sock".into())
        );
        assert!(matches!(
            ApiAddress::parse_listen("127.0.0.5:65003").unwrap(),
            ApiAddress::Tcp(_)
        ));
        assert!(ApiAddress::parse_listen("[::1]:1").is_ok());
        for network in ["0.0.0.0:65003", "10.1.2.3:1", "[::]:1"] {
            assert!(
                matches!(
                    ApiAddress::parse_listen(network),
                    Err(ApiAddressError::NotLoopback(_))
                ),
                "{network}"
            );
        }
        assert!(ApiAddress::parse_listen("unix:relative.sock").is_err());
        assert!(ApiAddress::parse_listen("localhost").is_err());
    }

    #[test]
    fn round_trips_as_text() {
        for text in ["unix:/run/dragonfly/dfdaemon.sock", "127.0.0.1:65003"] {
            let addr: ApiAddress = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
            let yaml: ApiAddress = serde_yaml::from_str(text).unwrap();
            assert_eq!(yaml, addr);
        }
        assert!(serde_yaml::from_str::<ApiAddress>("0.0.0.0:1").is_err());
    }
}
