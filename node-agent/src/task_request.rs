//! What a caller asks dfdaemon to download (task API, dfget, seed triggers).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::task_id::{self, TaskIdError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub url: String,
    /// Passed through to the origin (e.g. Authorization).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Expected digest of the whole content, `sha256:<hex>`. When set it is
    /// also the task id, whatever URL serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Separates tasks of the same URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// Query parameters ignored when deriving the task id (default: common
    /// signature and expiry parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_query_params: Option<Vec<String>>,
    /// Where the daemon copies the content when done (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Set by a peer asking a seed to fetch a task the scheduler gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seed_request: bool,
    /// Fetch only the pieces readers and peers ask for (lazy pull), not
    /// the whole content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy: bool,
    /// With `lazy`: fetch the rest in the background at the prefetch rate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
}

/// Headers a request from another host may carry to the origin: what a
/// registry fetch needs, nothing that could steer the request elsewhere.
/// (`x-dragonfly-via` is the mirror's loop guard.)
pub const NETWORK_HEADERS: &[&str] = &["authorization", "accept", wire::headers::VIA];

/// Why a task request from the network is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NetworkRequestError {
    #[error("an output file can only be named through the local task API")]
    Output,
    #[error("task id {given} does not belong to this request (its own is {own})")]
    ForeignTaskId { given: String, own: String },
    #[error("header {0:?} cannot be set from the network")]
    Header(String),
    #[error("{0}")]
    Invalid(String),
}

impl TaskRequest {
    pub fn task_id(&self) -> Result<String, TaskIdError> {
        Ok(match &self.task_id {
            Some(id) if self.digest.is_none() => id.clone(),
            _ => self.own_task_id()?,
        })
    }

    /// The id derived from what the request asks for (digest, or URL, tag
    /// and filtered query), whatever `task_id` it names.
    pub fn own_task_id(&self) -> Result<String, TaskIdError> {
        if let Some(digest) = &self.digest {
            return task_id::task_id_for_digest(digest);
        }
        match &self.filtered_query_params {
            Some(filtered) => task_id::task_id_for_url(&self.url, filtered, &self.tag),
            None => task_id::task_id_for_url(&self.url, &task_id::default_filtered(), &self.tag),
        }
    }

    /// What a request from another host may not do: write a file, attach
    /// itself to another request's task (its pieces would then be trusted
    /// by everyone fetching that task), or send the origin headers beyond
    /// [`NETWORK_HEADERS`].
    pub fn check_from_network(&self) -> Result<(), NetworkRequestError> {
        if self.output.is_some() {
            return Err(NetworkRequestError::Output);
        }
        let own = self
            .own_task_id()
            .map_err(|e| NetworkRequestError::Invalid(e.to_string()))?;
        if let Some(given) = &self.task_id {
            if *given != own {
                return Err(NetworkRequestError::ForeignTaskId {
                    given: given.clone(),
                    own,
                });
            }
        }
        if let Some(name) = self.headers.keys().find(|name| !is_network_header(name)) {
            return Err(NetworkRequestError::Header(name.clone()));
        }
        Ok(())
    }

    /// The same request as another host may send it: without an output
    /// file and with only the headers [`NETWORK_HEADERS`] allows.
    pub fn for_network(&self) -> TaskRequest {
        TaskRequest {
            output: None,
            headers: self
                .headers
                .iter()
                .filter(|(name, _)| is_network_header(name))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..self.clone()
        }
    }

    /// Checks what can be checked before starting anything.
    pub fn validate(&self) -> Result<String, String> {
        let parsed =
            url::Url::parse(&self.url).map_err(|e| format!("invalid url {:?}: {e}", self.url))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "unsupported scheme {:?} (http or https)",
                parsed.scheme()
            ));
        }
        if let Some(id) = &self.task_id {
            if !task_id::is_valid_task_id(id) {
                return Err(format!("invalid task_id {id:?}"));
            }
        }
        if let Some(digest) = &self.digest {
            task_id::parse_digest(digest).map_err(|e| e.to_string())?;
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return Err(format!("invalid header {k:?}"));
            }
        }
        self.task_id().map_err(|e| e.to_string())
    }
}

fn is_network_header(name: &str) -> bool {
    NETWORK_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_cannot_write_files_or_take_over_tasks() {
        let own = TaskRequest {
            url: "http://o/x".into(),
            headers: [("Authorization".to_string(), "Basic x".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(own.check_from_network(), Ok(()));
        let with_own_id = TaskRequest {
            task_id: Some(own.own_task_id().unwrap()),
            ..own.clone()
        };
        assert_eq!(with_own_id.check_from_network(), Ok(()));
        let output = TaskRequest {
            output: Some("/etc/containerd/certs.d/x/hosts.toml".into()),
            ..own.clone()
        };
        assert_eq!(
            output.check_from_network(),
            Err(NetworkRequestError::Output)
        );
        let foreign = TaskRequest {
            task_id: Some("ab".repeat(32)),
            ..own.clone()
        };
        assert!(matches!(
            foreign.check_from_network(),
            Err(NetworkRequestError::ForeignTaskId { .. })
        ));
        // With a digest the id is the digest, whatever task_id says.
        let digest = TaskRequest {
            digest: Some(format!("sha256:{}", "cd".repeat(32))),
            task_id: Some("ab".repeat(32)),
            ..own.clone()
        };
        assert_eq!(digest.task_id().unwrap(), "cd".repeat(32));
        assert!(digest.check_from_network().is_err());
        let header = TaskRequest {
            headers: [("Host".to_string(), "metadata".to_string())].into(),
            ..own.clone()
        };
        assert_eq!(
            header.check_from_network(),
            Err(NetworkRequestError::Header("Host".into()))
        );
        assert_eq!(header.for_network().check_from_network(), Ok(()));
        assert!(is_network_header(wire::headers::VIA));
    }

    #[test]
    fn validation() {
        let ok = TaskRequest {
            url: "http://o/x".into(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let bad_scheme = TaskRequest {
            url: "ftp://o/x".into(),
            ..Default::default()
        };
        assert!(bad_scheme.validate().is_err());
        let bad_digest = TaskRequest {
            url: "http://o/x".into(),
            digest: Some("sha256:zz".into()),
            ..Default::default()
        };
        assert!(bad_digest.validate().is_err());
        let bad_header = TaskRequest {
            url: "http://o/x".into(),
            headers: [("bad header".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        assert!(bad_header.validate().is_err());
    }

    #[test]
    fn digest_is_the_task_id() {
        let hex = "ab".repeat(32);
        let req = TaskRequest {
            url: "http://o/x".into(),
            digest: Some(format!("sha256:{hex}")),
            ..Default::default()
        };
        assert_eq!(req.task_id().unwrap(), hex);
    }
}
