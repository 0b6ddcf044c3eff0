//! Who a member is: a role and a name, carried in its certificate as the
//! URI subject alternative name `spiffe://dragonfly/<role>/<name>`.

use std::fmt;

/// The URI scheme and trust domain every member identity starts with.
const URI_PREFIX: &str = "spiffe://dragonfly/";

/// The one DNS name every member certificate carries. Peers are dialled by
/// IP address; this name is what a client checks the chain against, and
/// the role and name in the URI say which member it is.
pub const MEMBER_DNS_NAME: &str = "member.dragonfly.internal";

/// Longest member name accepted: a Kubernetes node or pod name fits.
const MAX_NAME: usize = 253;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A dfdaemon on a node; its name is the node's (its host id).
    Node,
    /// A seed peer; its name is its pod's.
    Seed,
    Scheduler,
    /// The operator: issues certificates, triggers Preheat downloads.
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Node, Role::Seed, Role::Scheduler, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Seed => "seed",
            Role::Scheduler => "scheduler",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::Invalid(format!("unknown role {s:?}")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid identity: {0}")]
    Invalid(String),
    #[error("certificate names no member identity")]
    Missing,
    #[error("malformed certificate: {0}")]
    Certificate(String),
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<Identity, IdentityError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(IdentityError::Invalid(format!(
                "member name {name:?} (1-{MAX_NAME} of [A-Za-z0-9._-])"
            )));
        }
        Ok(Identity { role, name })
    }

    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Result<Identity, IdentityError> {
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| IdentityError::Invalid(format!("not a member URI: {uri:?}")))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Invalid(format!("not a member URI: {uri:?}")))?;
        Identity::new(role.parse()?, name)
    }

    /// The identity a DER certificate names: its one member URI.
    pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?
            .ok_or(IdentityError::Missing)?;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        });
        let first = found.next().ok_or(IdentityError::Missing)?;
        if found.next().is_some() {
            // Two identities in one certificate would let it speak for both.
            return Err(IdentityError::Invalid(
                "certificate names two members".into(),
            ));
        }
        Identity::from_uri(first)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_refusals() {
        let id = Identity::new(Role::Seed, "dragonfly-seed-peer-0").unwrap();
        assert_eq!(id.uri(), "spiffe://dragonfly/seed/dragonfly-seed-peer-0");
        assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        for bad in [
            "spiffe://other/node/a",
            "spiffe://dragonfly/root/a",
            "spiffe://dragonfly/node/",
            "spiffe://dragonfly/node/a/b",
            "spiffe://dragonfly/node",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
        assert!(Identity::new(Role::Node, "x".repeat(254)).is_err());
    }
}
