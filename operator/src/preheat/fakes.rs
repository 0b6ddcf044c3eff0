//! Test doubles on loopback: a registry serving manifests (with optional
//! Basic auth) and a dfdaemon answering the task API and the mirror's
//! manifest route, each recording what it was asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub fn sha256(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[derive(Default)]
pub struct RegistryState {
    /// (repository, tag or digest) → (media type, body)
    pub manifests: HashMap<(String, String), (String, Vec<u8>)>,
    /// `Authorization` every request must carry, if any.
    pub require: Option<String>,
    pub requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<RegistryState>>,
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        let state = Arc::new(Mutex::new(RegistryState::default()));
        let app = Router::new().fallback(registry).with_state(state.clone());
        FakeRegistry {
            addr: serve(app).await,
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stores a manifest under its digest (and `tag`); returns the digest.
    pub fn put(&self, repo: &str, tag: Option<&str>, media_type: &str, body: &Value) -> String {
        let bytes = serde_json::to_vec(body).expect("json");
        let digest = sha256(&bytes);
        let mut s = self.lock();
        for r in tag.into_iter().chain([digest.as_str()]) {
            s.manifests.insert(
                (repo.to_string(), r.to_string()),
                (media_type.to_string(), bytes.clone()),
            );
        }
        digest
    }

    /// An image manifest with a config and the given layers (digest, size).
    pub fn put_image(&self, repo: &str, tag: Option<&str>, blobs: &[(String, i64)]) -> String {
        let (config, layers) = blobs.split_first().expect("a config blob");
        let body = json!({
            "schemaVersion": 2,
            "mediaType": super::resolve::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
            "layers": layers.iter().map(|(d, s)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})).collect::<Vec<_>>(),
        });
        self.put(repo, tag, super::resolve::OCI_MANIFEST, &body)
    }

    pub fn require(&self, authorization: &str) {
        self.lock().require = Some(authorization.to_string());
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

async fn registry(State(state): State<Arc<Mutex<RegistryState>>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.requests.push(format!("{} {path}", req.method()));
    if let Some(want) = &s.require {
        if auth.as_deref() != Some(want.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"fake\"")],
                json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]})
                    .to_string(),
            )
                .into_response();
        }
    }
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    let found = path
        .strip_prefix("/v2/")
        .and_then(|p| p.split_once("/manifests/"))
        .and_then(|(repo, r)| s.manifests.get(&(repo.to_string(), r.to_string())).cloned());
    match found {
        Some((media_type, body)) => {
            let digest = sha256(&body);
            let mut resp = Response::new(Body::from(body));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, media_type.parse().expect("header"));
            h.insert("docker-content-digest", digest.parse().expect("header"));
            resp
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]})
                .to_string(),
        )
            .into_response(),
    }
}

#[derive(Default)]
pub struct DaemonState {
    /// task id → (length, polls left before complete)
    pub tasks: HashMap<String, (u64, u32)>,
    /// GETs a new task answers `running` before it is complete.
    pub polls_before_done: u32,
    /// Every task fails with this `TaskFailure`, when set.
    pub failure: Option<Value>,
    pub posts: Vec<Value>,
    /// Mirror requests: (path, X-Dragonfly-Registry, Authorization).
    pub mirror: Vec<(String, String, Option<String>)>,
}

#[derive(Clone)]
pub struct FakeDaemon {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<DaemonState>>,
}

impl FakeDaemon {
    pub async fn start() -> FakeDaemon {
        let state = Arc::new(Mutex::new(DaemonState::default()));
        let app = Router::new().fallback(daemon).with_state(state.clone());
        FakeDaemon {
            addr: serve(app).await,
            state,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, DaemonState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn task_json(id: &str, length: u64, done: bool) -> Value {
    json!({
        "task_id": id, "url": "u", "state": if done { "complete" } else { "running" },
        "content_length": length, "piece_length": 4194304, "pieces_total": 1,
        "pieces_done": u32::from(done), "bytes_done": if done { length } else { length / 2 },
        "from_origin": 0, "from_peers": 0, "error": null
    })
}

async fn daemon(State(state): State<Arc<Mutex<DaemonState>>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers: HeaderMap = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if path.starts_with("/v2/") {
        let get = |h: &str| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        s.mirror.push((
            path,
            get(wire::headers::REGISTRY).unwrap_or_default(),
            get("authorization"),
        ));
        return (StatusCode::OK, "{}").into_response();
    }
    if path == "/api/v1/tasks" && method == "POST" {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        s.posts.push(v.clone());
        let id = match v["digest"].as_str() {
            Some(d) => d.trim_start_matches("sha256:").to_string(),
            None => hex::encode(Sha256::digest(v["url"].as_str().unwrap_or("").as_bytes())),
        };
        let polls = s.polls_before_done;
        let entry = s.tasks.entry(id.clone()).or_insert((1000, polls));
        let done = entry.1 == 0;
        return (
            StatusCode::ACCEPTED,
            axum::Json(task_json(&id, entry.0, done)),
        )
            .into_response();
    }
    if let Some(id) = path.strip_prefix("/api/v1/tasks/") {
        if let Some(f) = s.failure.clone() {
            if s.tasks.contains_key(id) {
                return (
                    StatusCode::BAD_GATEWAY,
                    axum::Json(json!({"error": "failed", "failure": f})),
                )
                    .into_response();
            }
        }
        let Some(entry) = s.tasks.get_mut(id) else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": format!("unknown task {id}")})),
            )
                .into_response();
        };
        let done = entry.1 == 0;
        entry.1 = entry.1.saturating_sub(1);
        return axum::Json(task_json(id, entry.0, done)).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}
