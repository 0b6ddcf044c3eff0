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

impl TaskRequest {
    pub fn task_id(&self) -> Result<String, TaskIdError> {
        if let Some(digest) = &self.digest {
            return task_id::task_id_for_digest(digest);
        }
        let computed = match &self.filtered_query_params {
            Some(filtered) => task_id::task_id_for_url(&self.url, filtered, &self.tag)?,
            None => task_id::task_id_for_url(&self.url, &task_id::default_filtered(), &self.tag)?,
        };
        Ok(self.task_id.clone().unwrap_or(computed))
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

#[cfg(test)]
mod tests {
    use super::*;

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
