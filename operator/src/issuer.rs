//! The certificate issuer (`:8443`, TLS with the operator's member
//! certificate): a member pod posts a signing request with its projected
//! service-account token; the API server's TokenReview says which service
//! account, pod and node the token belongs to, and that decides the one
//! identity the certificate may name:
//! - `<cluster>-dfdaemon` → `node/<the pod's node>` (its host id),
//! - `<cluster>-seed-peer` → `seed/<the pod>`,
//! - `<cluster>-scheduler` → `scheduler/<the pod>`,
//!
//! and only where a DragonflyCluster `<cluster>` exists in that namespace.
//! Nothing the caller writes in its request names it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use identity::bootstrap::{IssueRequest, IssueResponse, ISSUE_PATH, TOKEN_AUDIENCE};
use identity::{Identity, MemberTls, Role};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::{watch, Semaphore};

use crate::cluster_ca::CaState;
use crate::crd::DragonflyCluster;

pub const ISSUER_PORT: u16 = 8443;
const MAX_CONNECTIONS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A signing request is well under this.
const MAX_BODY: usize = 16 * 1024;
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// What a reviewed token proved.
#[derive(Debug, Clone, PartialEq)]
pub struct Reviewed {
    pub username: String,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The cluster and the identity a reviewed token may get, or why none.
pub fn member_for(reviewed: &Reviewed) -> Result<(String, String, Identity), String> {
    let rest = reviewed
        .username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(|| format!("{} is not a service account", reviewed.username))?;
    let (namespace, account) = rest
        .split_once(':')
        .ok_or_else(|| format!("malformed service account {rest:?}"))?;
    let one = |key: &str| {
        reviewed
            .extra
            .get(key)
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| format!("the token is not bound to a pod ({key} missing)"))
    };
    let roles = [
        ("-dfdaemon", Role::Node),
        ("-seed-peer", Role::Seed),
        ("-scheduler", Role::Scheduler),
    ];
    let (cluster, role) = roles
        .iter()
        .find_map(|(suffix, role)| account.strip_suffix(suffix).map(|c| (c, *role)))
        .filter(|(cluster, _)| !cluster.is_empty())
        .ok_or_else(|| format!("service account {account:?} is not a cluster member's"))?;
    let name = match role {
        Role::Node => one(NODE_NAME)?,
        _ => one(POD_NAME)?,
    };
    let id = Identity::new(role, name).map_err(|e| e.to_string())?;
    Ok((namespace.to_string(), cluster.to_string(), id))
}

pub struct Issuer {
    pub client: Client,
    pub ca: watch::Receiver<Arc<CaState>>,
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    let why = why.into();
    tracing::warn!(%status, reason = %why, "certificate refused");
    (status, Json(serde_json::json!({ "error": why }))).into_response()
}

async fn review(client: &Client, token: &str) -> Result<Reviewed, Response> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("token review: {e}"),
            )
        })?;
    let status = answer.status.unwrap_or_default();
    let audience_ok = status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE));
    if status.authenticated != Some(true) || !audience_ok {
        let why = status
            .error
            .unwrap_or_else(|| "token not valid for the dragonfly audience".into());
        return Err(refuse(StatusCode::UNAUTHORIZED, why));
    }
    let user = status.user.unwrap_or_default();
    Ok(Reviewed {
        username: user.username.unwrap_or_default(),
        extra: user.extra.unwrap_or_default().into_iter().collect(),
    })
}

async fn issue(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Result<Json<IssueRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return refuse(StatusCode::UNAUTHORIZED, "no bearer token");
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let reviewed = match review(&issuer.client, token.trim()).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let (namespace, cluster, id) = match member_for(&reviewed) {
        Ok(found) => found,
        Err(why) => return refuse(StatusCode::FORBIDDEN, why),
    };
    let clusters: Api<DragonflyCluster> = Api::namespaced(issuer.client.clone(), &namespace);
    match clusters.get_opt(&cluster).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("no DragonflyCluster {namespace}/{cluster}"),
            )
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    let ca = issuer.ca.borrow().clone();
    match ca
        .ca
        .sign_request(&request.csr, &id, identity::MEMBER_VALIDITY)
    {
        Ok(certificate) => {
            tracing::info!(identity = %id, namespace, cluster, "certificate issued");
            Json(IssueResponse {
                certificate,
                ca_bundle: ca.bundle.clone(),
            })
            .into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

pub fn router(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route(ISSUE_PATH, post(issue))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(issuer)
}

/// Serves the issuer over TLS until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: MemberTls,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config_for_anyone());
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "issuer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue;
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _place = place;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(client = %remote, "issuer TLS handshake failed");
                    return;
                }
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let served = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
                .await;
            if let Err(e) = served {
                tracing::debug!(client = %remote, error = %e, "issuer connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewed(user: &str, extra: &[(&str, &str)]) -> Reviewed {
        Reviewed {
            username: user.into(),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
        }
    }

    #[test]
    fn the_token_decides_the_identity() {
        let bound = [(POD_NAME, "dragonfly-dfdaemon-x1"), (NODE_NAME, "node-3")];
        let (ns, cluster, id) = member_for(&reviewed(
            "system:serviceaccount:df:dragonfly-dfdaemon",
            &bound,
        ))
        .unwrap();
        assert_eq!((ns.as_str(), cluster.as_str()), ("df", "dragonfly"));
        assert_eq!(id, Identity::new(Role::Node, "node-3").unwrap());
        let (_, _, id) =
            member_for(&reviewed("system:serviceaccount:df:c-seed-peer", &bound)).unwrap();
        assert_eq!(
            id,
            Identity::new(Role::Seed, "dragonfly-dfdaemon-x1").unwrap()
        );
        let (_, _, id) =
            member_for(&reviewed("system:serviceaccount:df:c-scheduler", &bound)).unwrap();
        assert_eq!(id.role, Role::Scheduler);
    }

    #[test]
    fn other_accounts_and_unbound_tokens_get_nothing() {
        let bound = [(POD_NAME, "p"), (NODE_NAME, "n")];
        for user in [
            "system:serviceaccount:df:default",
            "system:serviceaccount:df:-dfdaemon",
            "system:serviceaccount:df:dragonfly-operator",
            "system:admin",
            "jane",
        ] {
            assert!(member_for(&reviewed(user, &bound)).is_err(), "{user}");
        }
        // A token without its pod (a legacy Secret token) proves no node.
        assert!(member_for(&reviewed("system:serviceaccount:df:c-dfdaemon", &[])).is_err());
    }
}
