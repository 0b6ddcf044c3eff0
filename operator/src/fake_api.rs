//! A small in-memory API server under `kube::Client` (tower-test mock), for
//! API-call-level tests: it serves list/get/apply/merge/create/delete from a
//! map of objects and records every call (method, path, query, body), so a
//! test asserts exactly which writes a reconcile made, in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
    /// The call changed what the fake stores (a no-op apply does not).
    pub changed: bool,
}

impl Call {
    /// `METHOD path` with the `/api(s)/.../namespaces/<ns>/` prefix cut, e.g. `PATCH daemonsets/x`.
    pub fn short(&self) -> String {
        let rest = self
            .path
            .split_once("/namespaces/")
            .and_then(|(_, r)| r.split_once('/'))
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| self.path.clone());
        format!("{} {}", self.method, rest)
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    rv: u64,
    /// (method, path part, code, Status body override).
    failures: Vec<(String, String, u16, Option<Value>)>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client whose requests this fake serves until the client is dropped.
    pub fn start() -> (Client, FakeApi) {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = server.serve(req).await;
                send.send_response(resp);
            }
        });
        (Client::new(svc, "default"), fake)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put an object at its full path (collection path + `/` + name).
    pub fn insert(&self, path: &str, obj: Value) {
        let mut s = self.lock();
        s.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = s.rv.to_string().into();
        s.objects.insert(path.to_string(), obj);
    }

    /// Take an object away, as another controller (or kubelet) would.
    pub fn remove(&self, path: &str) -> Option<Value> {
        self.lock().objects.remove(path)
    }

    /// Notes of the events published, in order.
    pub fn event_notes(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/events"))
            .filter_map(|c| c.body.as_ref()?.get("note")?.as_str().map(String::from))
            .collect()
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn set_status(&self, path: &str, status: Value) {
        if let Some(o) = self.lock().objects.get_mut(path) {
            o["status"] = status;
        }
    }

    /// The next call whose method matches and whose path contains `path_part` fails with `code`.
    pub fn fail_next(&self, method: &str, path_part: &str, code: u16) {
        self.lock()
            .failures
            .push((method.into(), path_part.into(), code, None));
    }

    /// Like `fail_next`, answering with this `Status` body (message, reason, details).
    pub fn fail_next_with(&self, method: &str, path_part: &str, status: Value) {
        let code = status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500);
        self.lock()
            .failures
            .push((method.into(), path_part.into(), code, Some(status)));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Writes other than event publishing, in short form.
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.is_write() && !c.path.contains("/events"))
            .map(Call::short)
            .collect()
    }

    /// Writes that changed something (no-op applies left out), other than events.
    pub fn mutations(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.changed && !c.path.contains("/events"))
            .map(Call::short)
            .collect()
    }

    /// Reasons of the events published, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/events"))
            .filter_map(|c| c.body.as_ref()?.get("reason")?.as_str().map(String::from))
            .collect()
    }

    async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let mut s = self.lock();
        s.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
            changed: false,
        });
        if let Some(i) = s
            .failures
            .iter()
            .position(|(m, p, _, _)| *m == method && path.contains(p.as_str()))
        {
            let (_, _, code, body) = s.failures.remove(i);
            return match body {
                Some(b) => json_response(code, &b),
                None => status_response(code, "injected failure"),
            };
        }
        let rv = s.rv;
        let resp = s.handle(&method, &path, &query, &content_type, body);
        let changed = s.rv != rv;
        if let Some(c) = s.calls.last_mut() {
            c.changed = changed;
        }
        resp
    }
}

impl State {
    fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> Response<Body> {
        let (collection, name, sub) = split_path(path);
        match (method, name) {
            ("GET", None) => {
                let selector = query_param(query, "labelSelector");
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| in_collection(k, &collection))
                    .map(|(_, v)| v.clone())
                    .filter(|v| {
                        selector
                            .as_deref()
                            .is_none_or(|sel| matches_selector(v, sel))
                    })
                    .collect();
                json_response(
                    200,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => match self.objects.get(&format!("{collection}/{name}")) {
                Some(o) => json_response(200, o),
                None => status_response(404, "not found"),
            },
            ("POST", None) => {
                let mut obj = body.unwrap_or_else(|| json!({}));
                let name = obj["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("generated-{}", self.rv + 1));
                obj["metadata"]["name"] = name.clone().into();
                let key = format!("{collection}/{name}");
                // Events are recorded, not kept: a repeated name is fine there.
                if self.objects.contains_key(&key) && !collection.ends_with("/events") {
                    return status_response(409, "already exists");
                }
                let stored = self.store(&key, obj);
                json_response(201, &stored)
            }
            // Replace: guarded by the body's resourceVersion, as the API server does.
            ("PUT", Some(name)) if sub.is_none() => {
                let key = format!("{collection}/{name}");
                let Some(mut obj) = body else {
                    return status_response(400, "PUT without a JSON body");
                };
                let Some(cur) = self.objects.get(&key) else {
                    return status_response(404, "not found");
                };
                let want = obj["metadata"]["resourceVersion"].as_str();
                if want.is_some_and(|rv| Some(rv) != cur["metadata"]["resourceVersion"].as_str()) {
                    return status_response(409, "the object has been modified");
                }
                obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
                let stored = self.store(&key, obj);
                json_response(200, &stored)
            }
            ("PATCH", Some(name)) => {
                let key = format!("{collection}/{name}");
                let Some(patch) = body else {
                    return status_response(400, "patch without a JSON body");
                };
                let existing = self.objects.get(&key).cloned();
                let updated = if content_type.starts_with("application/apply-patch") {
                    match (existing, sub) {
                        (Some(_), Some(other)) if other != "status" => {
                            return status_response(405, "unknown subresource")
                        }
                        (Some(mut cur), Some(_)) => {
                            cur["status"] = patch["status"].clone();
                            cur
                        }
                        (None, Some(_)) => return status_response(404, "not found"),
                        (Some(cur), None) => {
                            let mut new = patch.clone();
                            for k in ["uid", "resourceVersion", "generation"] {
                                new["metadata"][k] = cur["metadata"][k].clone();
                            }
                            if let Some(st) = cur.get("status") {
                                new["status"] = st.clone();
                            }
                            // A no-op apply is not written: same resourceVersion.
                            if new == cur {
                                return json_response(200, &cur);
                            }
                            new["metadata"]["generation"] =
                                (cur["metadata"]["generation"].as_i64().unwrap_or(1) + 1).into();
                            new
                        }
                        (None, None) => {
                            let mut new = patch.clone();
                            new["metadata"]["uid"] = format!("uid-{name}").into();
                            new["metadata"]["generation"] = 1.into();
                            new
                        }
                    }
                } else {
                    let Some(mut cur) = existing else {
                        return status_response(404, "not found");
                    };
                    let want_rv = patch["metadata"]["resourceVersion"].as_str();
                    if want_rv
                        .is_some_and(|rv| Some(rv) != cur["metadata"]["resourceVersion"].as_str())
                    {
                        return status_response(409, "the object has been modified");
                    }
                    merge(&mut cur, &patch);
                    cur
                };
                let stored = self.store(&key, updated);
                json_response(200, &stored)
            }
            ("DELETE", Some(name)) => match self.objects.remove(&format!("{collection}/{name}")) {
                Some(_) => {
                    self.rv += 1;
                    status_response(200, "deleted")
                }
                None => status_response(404, "not found"),
            },
            _ => status_response(405, "not supported by the fake API server"),
        }
    }

    fn store(&mut self, key: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
        self.objects.insert(key.to_string(), obj.clone());
        obj
    }
}

/// Whether the object at `key` is listed at `collection`: its own items,
/// and for a cluster-wide list of a namespaced kind (`<prefix>/<resource>`)
/// those of every namespace (`<prefix>/namespaces/<ns>/<resource>/<name>`).
fn in_collection(key: &str, collection: &str) -> bool {
    if let Some(n) = key.strip_prefix(&format!("{collection}/")) {
        return !n.contains('/');
    }
    if collection.contains("/namespaces/") {
        return false;
    }
    let Some((prefix, resource)) = collection.rsplit_once('/') else {
        return false;
    };
    key.strip_prefix(&format!("{prefix}/namespaces/"))
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, r)| r.strip_prefix(&format!("{resource}/")))
        .is_some_and(|n| !n.contains('/'))
}

/// `(collection path, name, subresource)`.
fn split_path(path: &str) -> (String, Option<&str>, Option<&str>) {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // ["", "api", v, "namespaces", ns, plural, ...] or ["", "apis", g, v, "namespaces", ns, plural, ...];
    // cluster-scoped: ["", "api", v, plural, name, ...] (namespaces themselves included).
    let prefix = if parts.get(1) == Some(&"api") { 3 } else { 4 };
    let namespaced = parts.get(prefix) == Some(&"namespaces") && parts.len() > prefix + 2;
    let base = if namespaced { prefix + 3 } else { prefix + 1 };
    let collection = parts[..base.min(parts.len())].join("/");
    (
        collection,
        parts.get(base).copied(),
        parts.get(base + 1).copied(),
    )
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|req| match req.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
            None => false,
        })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    if let Some(t) = target.as_object_mut() {
                        t.remove(k);
                    }
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn status_response(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    };
    let status = if code < 300 { "Success" } else { "Failure" };
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status, "message": message, "reason": reason, "code": code}),
    )
}
