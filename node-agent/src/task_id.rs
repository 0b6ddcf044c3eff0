//! Task ids: which downloads are "the same file" across the cluster.
//!
//! A URL task is the URL with volatile query parameters (signatures, expiry)
//! removed, plus an optional tag; content whose digest is known up front
//! (OCI blobs) is identified by the digest alone, whatever URL serves it.

use sha2::{Digest, Sha256};
use url::Url;

/// Query parameters dropped by default: presigned-URL signatures and expiry
/// change on every request for the same object.
pub const DEFAULT_FILTERED_QUERY_PARAMS: &[&str] = &[
    "Expires",
    "Signature",
    "OSSAccessKeyId",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

#[derive(Debug, thiserror::Error)]
pub enum TaskIdError {
    #[error("invalid URL {url:?}: {source}")]
    Url {
        url: String,
        source: url::ParseError,
    },
    #[error("invalid digest {0:?}: expected sha256:<64 hex characters>")]
    Digest(String),
}

/// Validates `sha256:<hex>` and returns it lower-cased.
pub fn parse_digest(digest: &str) -> Result<String, TaskIdError> {
    let hex_part = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| TaskIdError::Digest(digest.to_string()))?;
    if hex_part.len() != 64 || !hex_part.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TaskIdError::Digest(digest.to_string()));
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// The task id of a content digest (`sha256:<hex>`): the hex itself, which is
/// also a safe directory name.
pub fn task_id_for_digest(digest: &str) -> Result<String, TaskIdError> {
    let digest = parse_digest(digest)?;
    Ok(digest["sha256:".len()..].to_string())
}

/// The task id of a URL: sha256 of the URL without the filtered query
/// parameters, plus the tag.
pub fn task_id_for_url(url: &str, filtered: &[String], tag: &str) -> Result<String, TaskIdError> {
    let mut parsed = Url::parse(url).map_err(|source| TaskIdError::Url {
        url: url.to_string(),
        source,
    })?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| !filtered.iter().any(|f| f == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    parsed.set_fragment(None);
    let mut hasher = Sha256::new();
    hasher.update(parsed.as_str().as_bytes());
    if !tag.is_empty() {
        hasher.update(b"\0tag=");
        hasher.update(tag.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Whether `id` looks like a task id (guards paths built from request input).
pub fn is_valid_task_id(id: &str) -> bool {
    id.len() == 64
        && id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

pub fn default_filtered() -> Vec<String> {
    DEFAULT_FILTERED_QUERY_PARAMS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_do_not_change_the_id() {
        let f = default_filtered();
        let a = task_id_for_url("http://o/x?Expires=1&Signature=a&v=2", &f, "").unwrap();
        let b = task_id_for_url("http://o/x?v=2&Expires=9&Signature=b", &f, "").unwrap();
        assert_eq!(a, b);
        let c = task_id_for_url("http://o/x?v=3", &f, "").unwrap();
        assert_ne!(a, c);
        assert!(is_valid_task_id(&a));
    }

    #[test]
    fn tag_separates_tasks() {
        let f = default_filtered();
        let a = task_id_for_url("http://o/x", &f, "").unwrap();
        let b = task_id_for_url("http://o/x", &f, "blue").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn digest_ids() {
        let d = format!("sha256:{}", "A".repeat(64));
        assert_eq!(task_id_for_digest(&d).unwrap(), "a".repeat(64));
        assert!(task_id_for_digest("sha256:xyz").is_err());
        assert!(task_id_for_digest("md5:00").is_err());
        assert!(task_id_for_url("not a url", &[], "").is_err());
        assert!(!is_valid_task_id("../etc/passwd"));
    }
}
