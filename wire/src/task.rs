//! The dfdaemon task API's JSON (`/api/v1/tasks`): a task's status, why a
//! download failed, and the body of an error answer.

use serde::{Deserialize, Serialize};

/// Why a download failed, kept so every waiting reader gets the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskFailure {
    #[error("origin answered {status}: {message}")]
    Origin { status: u16, message: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("{message}")]
    Internal { message: String },
    /// A kind this version does not know (a newer dfdaemon's): read, not
    /// refused, so a status still parses during an upgrade.
    #[serde(other)]
    #[error("a failure of a kind this version does not know")]
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Not downloading (a lazily read task between reads, or after a restart).
    Idle,
    Running,
    Complete,
    Failed,
}

/// What the task API reports about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    #[serde(default)]
    pub url: String,
    pub state: TaskState,
    #[serde(default)]
    pub content_length: Option<u64>,
    #[serde(default)]
    pub piece_length: u32,
    #[serde(default)]
    pub pieces_total: Option<u32>,
    #[serde(default)]
    pub pieces_done: u32,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub from_origin: u64,
    #[serde(default)]
    pub from_peers: u64,
    #[serde(default)]
    pub error: Option<TaskFailure>,
}

/// The body of a task API answer that is not a success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: String,
    /// Set when the task itself failed (not the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<TaskFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_their_kind() {
        let failure = TaskFailure::Origin {
            status: 403,
            message: "denied".into(),
        };
        let json = serde_json::to_value(&failure).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "origin", "status": 403, "message": "denied"})
        );
        let body: ErrorBody = serde_json::from_value(serde_json::json!({
            "error": "origin answered 403: denied",
            "failure": json,
        }))
        .unwrap();
        assert_eq!(body.failure, Some(failure));
        let plain = serde_json::to_string(&ErrorBody {
            error: "bad request".into(),
            failure: None,
        })
        .unwrap();
        assert_eq!(plain, r#"{"error":"bad request"}"#);
    }

    #[test]
    fn a_status_reads_with_only_its_id_and_state() {
        let status: TaskStatus =
            serde_json::from_str(r#"{"task_id": "t", "state": "complete", "bytes_done": 5}"#)
                .unwrap();
        assert_eq!(status.state, TaskState::Complete);
        assert_eq!(status.bytes_done, 5);
        assert_eq!(status.error, None);
        assert!(
            serde_json::from_str::<TaskStatus>(r#"{"task_id": "t", "state": "gone"}"#).is_err()
        );
        let newer: TaskFailure =
            serde_json::from_str(r#"{"kind": "quota", "message": "x"}"#).unwrap();
        assert_eq!(newer, TaskFailure::Other);
    }
}
