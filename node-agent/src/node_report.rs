//! Tells the operator how this node's containerd integration went: a JSON
//! report in an annotation on dfdaemon's own Pod
//! (`p2p.dragonfly.dev/node-report`), which the operator gathers into the
//! DragonflyCluster status (condition NodesConfigured, per-node problems).

use std::path::Path;
use std::time::Duration;

pub use wire::node_report::{NodeProblem, NodeReport};
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `no_config_path` -> `NoConfigPath`.
pub fn camel_code(code: &str) -> String {
    code.split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading the service account: {0}")]
    Credentials(std::io::Error),
    #[error("Kubernetes API client: {0}")]
    Client(reqwest::Error),
    #[error("patching pod {namespace}/{pod}: {message}")]
    Patch {
        namespace: String,
        pod: String,
        message: String,
    },
}

/// Where and how to reach the API server for our own Pod.
pub struct PodTarget {
    pub api: String,
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub namespace: String,
    pub pod: String,
}

impl PodTarget {
    /// The in-cluster settings, or None outside Kubernetes (no POD_NAME /
    /// POD_NAMESPACE from the downward API, or no API server address).
    pub fn from_cluster_env() -> Result<Option<PodTarget>, ReportError> {
        let (Ok(pod), Ok(namespace), Ok(host), Ok(port)) = (
            std::env::var("POD_NAME"),
            std::env::var("POD_NAMESPACE"),
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return Ok(None);
        };
        let dir = Path::new(SERVICE_ACCOUNT);
        let token = std::fs::read_to_string(dir.join("token")).map_err(ReportError::Credentials)?;
        let ca_pem = std::fs::read(dir.join("ca.crt")).map_err(ReportError::Credentials)?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Some(PodTarget {
            api: format!("https://{host}:{port}"),
            token: Some(token.trim().to_string()),
            ca_pem: Some(ca_pem),
            namespace,
            pod,
        }))
    }

    /// Writes `report` into the annotation with a JSON merge patch.
    pub async fn publish(&self, report: &NodeReport) -> Result<(), ReportError> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pem) = &self.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem).map_err(ReportError::Client)?;
            builder = builder.add_root_certificate(ca);
        }
        let client = builder.build().map_err(ReportError::Client)?;
        let value = serde_json::to_string(report).unwrap_or_default();
        let patch = serde_json::json!({ "metadata": { "annotations": { wire::node_report::ANNOTATION: value } } });
        let url = format!(
            "{}/api/v1/namespaces/{}/pods/{}",
            self.api, self.namespace, self.pod
        );
        let mut req = client
            .patch(url)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string());
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let patch_error = |message: String| ReportError::Patch {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            message,
        };
        let resp = req.send().await.map_err(|e| patch_error(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(patch_error(format!("{status}: {body}")));
        }
        Ok(())
    }
}

/// Publishes the report when running in a Pod; logs either way.
pub async fn publish_from_pod(report: &NodeReport) {
    match PodTarget::from_cluster_env() {
        Ok(Some(target)) => match target.publish(report).await {
            Ok(()) => tracing::info!(
                configured = report.configured,
                problems = report.problems.len(),
                "node report published"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot publish the node report"),
        },
        Ok(None) => tracing::debug!("not in a Pod; node report not published"),
        Err(e) => tracing::warn!(error = %e, "cannot publish the node report"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path as AxumPath, State};
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn codes_are_camel_case() {
        assert_eq!(camel_code("no_config_path"), "NoConfigPath");
        assert_eq!(
            camel_code("discard_unpacked_layers"),
            "DiscardUnpackedLayers"
        );
    }

    #[tokio::test]
    async fn report_lands_in_the_pod_annotation() {
        type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{pod}",
                axum::routing::patch(
                    |State(seen): State<Seen>,
                     AxumPath((ns, pod)): AxumPath<(String, String)>,
                     headers: HeaderMap,
                     body: String| async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let kind = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        seen.lock().unwrap().push((
                            format!("{ns}/{pod} {auth} {kind}"),
                            body,
                            String::new(),
                        ));
                        "{}"
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let target = PodTarget {
            api: format!("http://{addr}"),
            token: Some("t0ken".into()),
            ca_pem: None,
            namespace: "dragonfly".into(),
            pod: "dfdaemon-x".into(),
        };
        let report = NodeReport {
            configured: false,
            problems: vec![NodeProblem {
                code: camel_code("no_config_path"),
                message: "containerd has no config_path".into(),
                ..NodeProblem::default()
            }],
            ..NodeReport::default()
        };
        target.publish(&report).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0].0,
            "dragonfly/dfdaemon-x Bearer t0ken application/merge-patch+json"
        );
        let patch: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
        let annotation = patch["metadata"]["annotations"][wire::node_report::ANNOTATION]
            .as_str()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(annotation).unwrap();
        assert_eq!(parsed["configured"], false);
        assert_eq!(parsed["problems"][0]["code"], "NoConfigPath");
    }
}
