//! The OCI distribution routes the mirror answers, parsed from a request
//! path. Names and references are validated against the distribution spec's
//! grammar, so nothing a client sends can reach a file path or smuggle
//! another URL into the upstream request.

/// One recognised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: String,
    },
    /// `/v2/<name>/tags/list`: the repository's tags (paginated).
    Tags {
        name: String,
    },
    /// `/v2/<name>/referrers/<digest>`: manifests whose subject is `digest`.
    Referrers {
        name: String,
        digest: String,
    },
}

impl Route {
    /// The metrics label of the route.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    /// A content digest (`algo:hex`): the manifest is content-addressed.
    Digest(String),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(s) | Reference::Digest(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not an OCI route at all (the caller answers 404).
    #[error("no such route")]
    NotFound,
    #[error("invalid repository name {0:?}")]
    Name(String),
    #[error("invalid reference {0:?}")]
    Reference(String),
    #[error("invalid digest {0:?}")]
    Digest(String),
}

/// Longest repository name accepted (the distribution spec's limit).
const MAX_NAME: usize = 255;

/// Parses an already percent-decoded request path.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix("/v2").ok_or(RouteError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
    // The name may contain slashes, so split at the last "/manifests/",
    // "/blobs/", "/referrers/" or "/tags/" segment: references and digests
    // never contain a slash.
    let (name, kind, last) = split_route(rest).ok_or(RouteError::NotFound)?;
    validate_name(name)?;
    let name = name.to_string();
    let digest = |last: &str| {
        if is_valid_digest(last) {
            Ok(last.to_string())
        } else {
            Err(RouteError::Digest(last.to_string()))
        }
    };
    match kind {
        Kind::Manifests => Ok(Route::Manifest {
            name,
            reference: parse_reference(last)?,
        }),
        Kind::Blobs => Ok(Route::Blob {
            name,
            digest: digest(last)?,
        }),
        Kind::Referrers => Ok(Route::Referrers {
            name,
            digest: digest(last)?,
        }),
        Kind::Tags if last == "list" => Ok(Route::Tags { name }),
        Kind::Tags => Err(RouteError::NotFound),
    }
}

enum Kind {
    Manifests,
    Blobs,
    Referrers,
    Tags,
}

fn split_route(rest: &str) -> Option<(&str, Kind, &str)> {
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    let kind = match kind {
        "manifests" => Kind::Manifests,
        "blobs" => Kind::Blobs,
        "referrers" => Kind::Referrers,
        "tags" => Kind::Tags,
        _ => return None,
    };
    Some((name, kind, last))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn validate_name(name: &str) -> Result<(), RouteError> {
    let bad = || RouteError::Name(name.to_string());
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad());
    }
    for component in name.split('/') {
        if !is_valid_component(component) {
            return Err(bad());
        }
    }
    Ok(())
}

fn is_valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any
    // number of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) or a digest.
pub fn parse_reference(reference: &str) -> Result<Reference, RouteError> {
    if reference.contains(':') {
        if is_valid_digest(reference) {
            return Ok(Reference::Digest(reference.to_string()));
        }
        return Err(RouteError::Reference(reference.to_string()));
    }
    let bytes = reference.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(Reference::Tag(reference.to_string()))
    } else {
        Err(RouteError::Reference(reference.to_string()))
    }
}

/// `algorithm:encoded` per the OCI image spec; sha256 and sha512 must have
/// their exact hex lengths.
pub fn is_valid_digest(digest: &str) -> bool {
    let Some((algo, encoded)) = digest.split_once(':') else {
        return false;
    };
    let algo_ok = !algo.is_empty()
        && algo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && algo.as_bytes()[0].is_ascii_alphanumeric();
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    if !(algo_ok && encoded_ok) {
        return false;
    }
    let hex = |n: usize| encoded.len() == n && encoded.bytes().all(|b| b.is_ascii_hexdigit());
    match algo {
        "sha256" => hex(64),
        "sha512" => hex(128),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn routes_with_nested_names() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(
            parse("/v2/library/busybox/manifests/latest"),
            Ok(Route::Manifest {
                name: "library/busybox".into(),
                reference: Reference::Tag("latest".into())
            })
        );
        assert_eq!(
            parse(&format!("/v2/a/b/c/blobs/{}", d('a'))),
            Ok(Route::Blob {
                name: "a/b/c".into(),
                digest: d('a')
            })
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            parse("/v2/blobs/manifests/v1"),
            Ok(Route::Manifest {
                name: "blobs".into(),
                reference: Reference::Tag("v1".into())
            })
        );
        assert!(matches!(
            parse(&format!("/v2/x/manifests/{}", d('b'))),
            Ok(Route::Manifest {
                reference: Reference::Digest(_),
                ..
            })
        ));
    }

    #[test]
    fn content_discovery_routes() {
        assert_eq!(
            parse("/v2/team/app/tags/list"),
            Ok(Route::Tags {
                name: "team/app".into()
            })
        );
        // A repository called "tags" still has manifests.
        assert_eq!(
            parse("/v2/x/tags/manifests/list"),
            Ok(Route::Manifest {
                name: "x/tags".into(),
                reference: Reference::Tag("list".into())
            })
        );
        assert_eq!(
            parse(&format!("/v2/a/referrers/{}", d('c'))),
            Ok(Route::Referrers {
                name: "a".into(),
                digest: d('c')
            })
        );
        assert!(matches!(
            parse("/v2/a/referrers/latest"),
            Err(RouteError::Digest(_))
        ));
        assert!(matches!(parse("/v2/A/tags/list"), Err(RouteError::Name(_))));
    }

    #[test]
    fn unknown_routes_are_not_found() {
        assert_eq!(parse("/v1/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/x/tags/other"), Err(RouteError::NotFound));
        assert_eq!(
            parse("/v2/x/referrers/"),
            Err(RouteError::Digest(String::new()))
        );
        assert_eq!(parse("/v2/x/blobs/uploads/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/_catalog"), Err(RouteError::NotFound));
    }

    #[test]
    fn bad_names_and_traversal_are_rejected() {
        for name in [
            "..", "a/../b", "A", "a//b", "-a", "a-", "a..b", "a___b", "a b", "a%2fb",
        ] {
            let path = format!("/v2/{name}/manifests/latest");
            assert!(
                matches!(parse(&path), Err(RouteError::Name(_))),
                "{name} accepted"
            );
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "x/y-z/0"] {
            assert!(validate_name(ok).is_ok(), "{ok} rejected");
        }
    }

    #[test]
    fn bad_references_and_digests() {
        assert!(parse("/v2/x/manifests/.hidden").is_err());
        assert!(parse(&format!("/v2/x/manifests/{}", "a".repeat(129))).is_err());
        assert!(parse("/v2/x/manifests/sha256:abc").is_err());
        assert!(parse("/v2/x/blobs/latest").is_err());
        assert!(parse("/v2/x/blobs/sha256:zz").is_err());
        assert!(parse(&format!("/v2/x/blobs/{}", d('a').to_uppercase())).is_err());
        assert!(is_valid_digest(&format!("sha512:{}", "0".repeat(128))));
        assert!(is_valid_digest(
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
        ));
        assert!(!is_valid_digest(":abc"));
    }
}
