//! Content discovery: `tags/list` and the referrers API. Both are asked of
//! the upstream on every request with the caller's credentials, never
//! cached nor served from the swarm, so the registry alone decides who may
//! list a private repository. A registry without the referrers API (404)
//! is answered from the spec's tag-schema fallback (`<alg>-<hex>` tags).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::auth::AuthKey;
use super::manifest::read_limited;
use super::manifest_cache::MAX_MANIFEST;
use super::proxy;
use super::route::parse_reference;
use super::state::{oci_error, Ctx, Mirror};

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Set when the answer was filtered by `artifactType`.
const FILTERS_APPLIED: &str = "oci-filters-applied";
/// A page size the mirror passes on (the registry may cap it further).
const MAX_PAGE_DIGITS: usize = 6;
/// The longest query passed on to the registry.
const MAX_QUERY: usize = 2048;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid page size n={0:?}: expected a number")]
    PageSize(String),
    #[error("invalid last={0:?}: expected a tag")]
    Last(String),
    #[error("invalid artifactType={0:?}: expected a media type")]
    ArtifactType(String),
    #[error("query longer than {MAX_QUERY} bytes")]
    TooLong,
}

impl QueryError {
    fn response(&self) -> Response {
        oci_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &self.to_string())
    }
}

/// The query of a request, as pairs; `ns` is the mirror's own (it names
/// the upstream) and is not passed on.
fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY {
        return Err(QueryError::TooLong);
    }
    Ok(url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "ns")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// The upstream query of a tag list: only the spec's `n` and `last`,
/// checked, so a caller cannot smuggle anything else to the registry.
pub fn tags_query(query: Option<&str>) -> Result<String, QueryError> {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs(query)? {
        match key.as_str() {
            "n" => {
                let ok = !value.is_empty()
                    && value.len() <= MAX_PAGE_DIGITS
                    && value.bytes().all(|b| b.is_ascii_digit());
                if !ok {
                    return Err(QueryError::PageSize(value));
                }
                out.append_pair("n", &value);
            }
            "last" => {
                if parse_reference(&value).is_err() || value.contains(':') {
                    return Err(QueryError::Last(value));
                }
                out.append_pair("last", &value);
            }
            _ => {}
        }
    }
    Ok(out.finish())
}

/// The referrers filter, if any: a media type (`type/subtype`).
pub fn artifact_type(query: Option<&str>) -> Result<Option<String>, QueryError> {
    let Some(value) = pairs(query)?
        .into_iter()
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let ok = value.len() <= 255
        && value.split_once('/').is_some_and(|(t, s)| {
            let token = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            token(t) && token(s)
        });
    if ok {
        Ok(Some(value))
    } else {
        Err(QueryError::ArtifactType(value))
    }
}

/// The upstream query of a referrers request: `artifactType` and the
/// opaque pagination tokens a registry put in its `Link`, without `ns`.
fn referrers_query(query: Option<&str>) -> Result<String, QueryError> {
    artifact_type(query)?;
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs(query)? {
        out.append_pair(&key, &value);
    }
    Ok(out.finish())
}

/// The upstream's `Link: <...>; rel="next"` made to point back at the
/// mirror: same path, the upstream's query, and `ns` again when the client
/// named the upstream that way. `None` for a link elsewhere (another host
/// or path), which the mirror cannot follow for the client.
pub fn rewrite_link(
    link: &str,
    upstream_host: &str,
    path: &str,
    ns: Option<&str>,
) -> Option<String> {
    let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
    let (location, query) = match target.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (target, None),
    };
    let local_path = if location.starts_with('/') {
        location.to_string()
    } else {
        let url = url::Url::parse(location).ok()?;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_string(),
        };
        if !authority.eq_ignore_ascii_case(upstream_host) {
            return None;
        }
        url.path().to_string()
    };
    if local_path != path {
        return None;
    }
    let mut query = query.unwrap_or("").to_string();
    if let Some(ns) = ns {
        let ns = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", ns)
            .finish();
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&ns);
    }
    let params = params.trim();
    let sep = if params.is_empty() || params.starts_with(';') {
        ""
    } else {
        "; "
    };
    if query.is_empty() {
        Some(format!("<{path}>{sep}{params}"))
    } else {
        Some(format!("<{path}?{query}>{sep}{params}"))
    }
}

/// The largest tag list the mirror reads whole to page it itself.
const MAX_TAG_LIST: usize = 8 * 1024 * 1024;

/// The paging a client asked for, parsed from the checked query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Paging {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl Paging {
    fn from_query(query: &str) -> Paging {
        let mut paging = Paging::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "n" => paging.n = v.parse().ok(),
                "last" => paging.last = Some(v.into_owned()),
                _ => {}
            }
        }
        paging
    }

    fn is_empty(&self) -> bool {
        self.n.is_none() && self.last.is_none()
    }
}

/// The spec's paging applied to a registry's tag list: only tags after
/// `last` in lexical order, at most `n`. Registries that ignore `last` (as
/// distribution 2.x does without `n`) or overshoot `n` still give the
/// client what it asked for. `true` when tags were cut at `n`.
pub fn paginate(tags: &mut Vec<String>, paging: &Paging) -> bool {
    tags.sort();
    if let Some(last) = &paging.last {
        tags.retain(|t| t.as_str() > last.as_str());
    }
    match paging.n {
        Some(n) if tags.len() > n => {
            tags.truncate(n);
            true
        }
        _ => false,
    }
}

/// `GET|HEAD /v2/<name>/tags/list`.
pub async fn tags(mirror: &Mirror, ctx: &Ctx, name: &str) -> Response {
    let query = match tags_query(ctx.query.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.response(),
    };
    let path = format!("/v2/{name}/tags/list");
    let target = with_query(&path, &query);
    let resp = match proxy::send(mirror, ctx, ctx.method.clone(), &target).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unavailable for a tag list");
            return e.response();
        }
    };
    note_access(mirror, ctx, name, resp.status());
    let link = next_link(resp.headers(), ctx, &path);
    let paging = Paging::from_query(&query);
    if resp.status() != StatusCode::OK || ctx.is_head() || paging.is_empty() {
        let mut out = proxy::relay(resp, ctx.is_head(), None);
        set_link(out.headers_mut(), link);
        return out;
    }
    let headers = proxy::relayed_headers(resp.headers());
    let body = match read_limited(resp, MAX_TAG_LIST).await {
        Ok(body) => body,
        Err(e) => return e.response(),
    };
    let mut list: TagList = match serde_json::from_slice(&body) {
        Ok(list) => list,
        Err(e) => {
            let message = format!("upstream tag list is not valid: {e}");
            return oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &message);
        }
    };
    let cut = paginate(&mut list.tags, &paging);
    // Cut here: the next page starts after the last tag kept, unless the
    // registry paged itself (its link then stands).
    let link = match (link, cut, list.tags.last(), paging.n) {
        (Some(link), _, _, _) => Some(link),
        (None, true, Some(last), Some(n)) => {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", last)
                .finish();
            let target = format!("<{path}?{query}>; rel=\"next\"");
            rewrite_link(&target, &ctx.upstream.host, &path, ns(ctx).as_deref())
                .and_then(|l| HeaderValue::from_str(&l).ok())
        }
        _ => None,
    };
    let body = match serde_json::to_vec(&list) {
        Ok(body) => body,
        Err(e) => {
            return oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNSUPPORTED",
                &e.to_string(),
            )
        }
    };
    let mut out = Response::new(Body::from(body.clone()));
    *out.headers_mut() = headers;
    out.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    set_link(out.headers_mut(), link);
    out
}

/// The body of a tag list (`tags` is null for a repository without tags
/// on some registries).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TagList {
    name: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `GET|HEAD /v2/<name>/referrers/<digest>`.
pub async fn referrers(mirror: &Mirror, ctx: &Ctx, name: &str, digest: &str) -> Response {
    let (query, filter) = match (
        referrers_query(ctx.query.as_deref()),
        artifact_type(ctx.query.as_deref()),
    ) {
        (Ok(q), Ok(f)) => (q, f),
        (Err(e), _) | (_, Err(e)) => return e.response(),
    };
    let path = format!("/v2/{name}/referrers/{digest}");
    let mut headers = proxy::forwarded_headers(&ctx.headers, &mirror.daemon.host_id);
    headers.insert(header::ACCEPT, HeaderValue::from_static(INDEX_MEDIA_TYPE));
    let resp = match proxy::send_with(
        mirror,
        ctx,
        ctx.method.clone(),
        &with_query(&path, &query),
        headers,
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unavailable for referrers");
            return e.response();
        }
    };
    if resp.status() != StatusCode::NOT_FOUND {
        note_access(mirror, ctx, name, resp.status());
        let link = next_link(resp.headers(), ctx, &path);
        let mut out = proxy::relay(resp, ctx.is_head(), None);
        set_link(out.headers_mut(), link);
        return out;
    }
    // No referrers API upstream: the spec's fallback tag.
    tracing::debug!("upstream has no referrers API; reading the fallback tag");
    fallback(mirror, ctx, name, digest, filter.as_deref()).await
}

async fn fallback(
    mirror: &Mirror,
    ctx: &Ctx,
    name: &str,
    digest: &str,
    filter: Option<&str>,
) -> Response {
    let Some(tag) = fallback_tag(digest) else {
        return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", digest);
    };
    let path = format!("/v2/{name}/manifests/{tag}");
    let mut headers = proxy::forwarded_headers(&ctx.headers, &mirror.daemon.host_id);
    headers.insert(header::ACCEPT, HeaderValue::from_static(INDEX_MEDIA_TYPE));
    let resp = match proxy::send_with(mirror, ctx, Method::GET, &path, headers).await {
        Ok(resp) => resp,
        Err(e) => return e.response(),
    };
    let status = resp.status();
    note_access(mirror, ctx, name, status);
    let index = match status {
        StatusCode::OK => match read_limited(resp, MAX_MANIFEST).await {
            Ok(body) => match referrers_index(&body, filter) {
                Ok(index) => index,
                Err(why) => {
                    let message = format!("fallback tag {tag}: {why}");
                    return oci_error(StatusCode::BAD_GATEWAY, "MANIFEST_INVALID", &message);
                }
            },
            Err(e) => return e.response(),
        },
        // No fallback tag: nothing refers to the digest yet.
        StatusCode::NOT_FOUND => empty_index(),
        // 401 with its challenge, 403: the caller may not read the repository.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return proxy::relay(resp, ctx.is_head(), None)
        }
        other => {
            let message = format!("upstream answered {other} for the fallback tag {tag}");
            return oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &message);
        }
    };
    let body = index.to_string();
    let len = body.len();
    let mut out = Response::new(if ctx.is_head() {
        Body::empty()
    } else {
        Body::from(body)
    });
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(INDEX_MEDIA_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if filter.is_some() {
        h.insert(FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    out
}

/// The fallback tag of `digest`: `<alg>-<hex>`, the algorithm cut to 32
/// and the encoded part to 64 characters so the tag stays a valid tag.
pub fn fallback_tag(digest: &str) -> Option<String> {
    let (alg, encoded) = digest.split_once(':')?;
    let alg: String = alg
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    let encoded: String = encoded.chars().take(64).collect();
    let tag = format!("{alg}-{encoded}");
    parse_reference(&tag).ok().map(|_| tag)
}

/// The referrers answer built from a fallback tag's index: its
/// descriptors, kept only where `artifactType` matches the filter.
pub fn referrers_index(body: &[u8], filter: Option<&str>) -> Result<Value, &'static str> {
    let index: Value = serde_json::from_slice(body).map_err(|_| "not JSON")?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or("not an image index")?;
    if let Some(media_type) = index.get("mediaType").and_then(Value::as_str) {
        if media_type != INDEX_MEDIA_TYPE {
            return Err("not an OCI image index");
        }
    }
    let kept: Vec<Value> = manifests
        .iter()
        .filter(|d| d.is_object())
        .filter(|d| filter.is_none_or(|f| d.get("artifactType").and_then(Value::as_str) == Some(f)))
        .cloned()
        .collect();
    let mut out = empty_index();
    out["manifests"] = Value::Array(kept);
    Ok(out)
}

fn empty_index() -> Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [],
    })
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

fn ns(ctx: &Ctx) -> Option<String> {
    super::state::ns_param(ctx.query.as_deref())
}

fn next_link(upstream: &HeaderMap, ctx: &Ctx, path: &str) -> Option<HeaderValue> {
    let link = upstream.get(header::LINK)?.to_str().ok()?;
    let ns = ns(ctx);
    let rewritten = rewrite_link(link, &ctx.upstream.host, path, ns.as_deref());
    if rewritten.is_none() {
        tracing::debug!(link, "upstream pagination link points elsewhere; dropped");
    }
    HeaderValue::from_str(&rewritten?).ok()
}

fn set_link(headers: &mut HeaderMap, link: Option<HeaderValue>) {
    headers.remove(header::LINK);
    if let Some(link) = link {
        headers.insert(header::LINK, link);
    }
}

/// A listing the upstream granted or refused is a read of the repository
/// like a manifest's: it feeds the same access cache.
fn note_access(mirror: &Mirror, ctx: &Ctx, name: &str, status: StatusCode) {
    let key = AuthKey::repository(&ctx.upstream.host, name, ctx.authorization());
    match status {
        StatusCode::OK => mirror.auth.record_allowed(&key),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => mirror.auth.record_denied(&key),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_queries_keep_only_checked_pagination() {
        assert_eq!(tags_query(None), Ok(String::new()));
        assert_eq!(
            tags_query(Some("n=10&last=v1.2")),
            Ok("n=10&last=v1.2".into())
        );
        assert_eq!(tags_query(Some("ns=r.io&n=2&evil=1")), Ok("n=2".into()));
        assert_eq!(
            tags_query(Some("n=-1")),
            Err(QueryError::PageSize("-1".into()))
        );
        assert_eq!(
            tags_query(Some("n=9999999")),
            Err(QueryError::PageSize("9999999".into()))
        );
        assert_eq!(
            tags_query(Some("n=")),
            Err(QueryError::PageSize(String::new()))
        );
        assert!(matches!(
            tags_query(Some("last=a/b")),
            Err(QueryError::Last(_))
        ));
        assert!(matches!(
            tags_query(Some("last=sha256:x")),
            Err(QueryError::Last(_))
        ));
        assert_eq!(
            tags_query(Some(&"x".repeat(4000))),
            Err(QueryError::TooLong)
        );
    }

    #[test]
    fn paging_after_last_and_at_most_n() {
        let tags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut all = tags(&["a", "b", "c", "d"]);
        let paging = Paging {
            n: None,
            last: Some("b".into()),
        };
        assert!(!paginate(&mut all, &paging));
        assert_eq!(all, tags(&["c", "d"]));
        let mut all = tags(&["a", "b", "c", "d"]);
        assert!(paginate(
            &mut all,
            &Paging {
                n: Some(2),
                last: Some("a".into())
            }
        ));
        assert_eq!(all, tags(&["b", "c"]));
        let mut all = tags(&["a"]);
        assert!(!paginate(
            &mut all,
            &Paging {
                n: Some(5),
                last: None
            }
        ));
        assert_eq!(all, tags(&["a"]));
        assert_eq!(
            Paging::from_query("n=3&last=v1"),
            Paging {
                n: Some(3),
                last: Some("v1".into())
            }
        );
        let list: TagList = serde_json::from_str(r#"{"name":"x","tags":null}"#).unwrap();
        assert!(list.tags.is_empty());
    }

    #[test]
    fn artifact_type_is_a_media_type() {
        assert_eq!(artifact_type(Some("ns=r")), Ok(None));
        assert_eq!(
            artifact_type(Some("artifactType=application%2Fvnd.example%2Bjson")),
            Ok(Some("application/vnd.example+json".into()))
        );
        assert!(artifact_type(Some("artifactType=nope")).is_err());
        assert!(artifact_type(Some("artifactType=a%2Fb%0d%0aX:1")).is_err());
    }

    #[test]
    fn links_point_back_at_the_mirror() {
        let path = "/v2/team/app/tags/list";
        assert_eq!(
            rewrite_link(
                r#"</v2/team/app/tags/list?n=2&last=b>; rel="next""#,
                "r.io",
                path,
                None
            ),
            Some(r#"</v2/team/app/tags/list?n=2&last=b>; rel="next""#.into())
        );
        assert_eq!(
            rewrite_link(
                r#"<https://r.io/v2/team/app/tags/list?last=b&n=2>; rel="next""#,
                "r.io",
                path,
                Some("r.io")
            ),
            Some(r#"</v2/team/app/tags/list?last=b&n=2&ns=r.io>; rel="next""#.into())
        );
        // Another host or another path: not something to follow through us.
        assert_eq!(
            rewrite_link(
                r#"<https://evil.io/v2/team/app/tags/list?n=2>; rel="next""#,
                "r.io",
                path,
                None
            ),
            None
        );
        assert_eq!(
            rewrite_link(
                r#"</v2/other/tags/list?n=2>; rel="next""#,
                "r.io",
                path,
                None
            ),
            None
        );
        assert_eq!(rewrite_link("garbage", "r.io", path, None), None);
        assert_eq!(
            rewrite_link(
                r#"<https://r.io:5000/v2/team/app/tags/list>; rel="next""#,
                "r.io:5000",
                path,
                None
            ),
            Some(r#"</v2/team/app/tags/list>; rel="next""#.into())
        );
    }

    #[test]
    fn fallback_tags_follow_the_tag_schema() {
        let hex = "a".repeat(64);
        assert_eq!(
            fallback_tag(&format!("sha256:{hex}")),
            Some(format!("sha256-{hex}"))
        );
        let long = "b".repeat(128);
        assert_eq!(
            fallback_tag(&format!("sha512:{long}")),
            Some(format!("sha512-{}", "b".repeat(64)))
        );
        assert_eq!(fallback_tag("nodigest"), None);
    }

    #[test]
    fn fallback_index_is_filtered_by_artifact_type() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:1", "size": 1, "artifactType": "application/a"},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:2", "size": 1, "artifactType": "application/b"},
                "not a descriptor"
            ]
        })
        .to_string();
        let all = referrers_index(body.as_bytes(), None).unwrap();
        assert_eq!(all["manifests"].as_array().unwrap().len(), 2);
        let only_b = referrers_index(body.as_bytes(), Some("application/b")).unwrap();
        assert_eq!(only_b["manifests"][0]["digest"], "sha256:2");
        assert_eq!(only_b["manifests"].as_array().unwrap().len(), 1);
        assert!(referrers_index(b"{}", None).is_err());
        assert!(referrers_index(
            br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#,
            None
        )
        .is_err());
        assert!(referrers_index(b"\xff", None).is_err());
    }
}
