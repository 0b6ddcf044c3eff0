//! A large blob that is held nowhere: block i is generated from (seed, i),
//! so any range of a 10 GiB blob is served without keeping or storing it.
//! Served as an OCI registry blob (`/v2/`, HEAD and GET of
//! `/v2/<name>/blobs/<digest>` with Range), as the mirror's upstream for
//! the memory and loopback figures.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::origin::parse_range;

/// Generated (and streamed) one block at a time.
pub const BLOCK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct SyntheticBlob {
    pub seed: u64,
    pub len: u64,
}

impl SyntheticBlob {
    /// Block `i` (the last one may be short).
    pub fn block(&self, i: u64) -> Bytes {
        let start = i * BLOCK;
        let len = BLOCK.min(self.len.saturating_sub(start)) as usize;
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        Bytes::from(data)
    }

    /// Bytes `start..end`, block by block.
    pub fn range(self, start: u64, end: u64) -> impl Iterator<Item = Bytes> + Send {
        let first = start / BLOCK;
        let last = end.div_ceil(BLOCK);
        (first..last).map(move |i| {
            let block = self.block(i);
            let from = start.saturating_sub(i * BLOCK) as usize;
            let to = (end - i * BLOCK).min(block.len() as u64) as usize;
            block.slice(from..to)
        })
    }

    /// `sha256:<hex>` of the whole blob (one pass of generation).
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for block in self.range(0, self.len) {
            hasher.update(&block);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

#[derive(Clone)]
struct ServerState {
    blob: SyntheticBlob,
    digest: String,
    bytes_served: Arc<AtomicU64>,
}

/// An OCI registry holding only the synthetic blob, under any repository.
pub struct BlobServer {
    pub addr: SocketAddr,
    pub digest: String,
    bytes_served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl BlobServer {
    pub async fn start(bind: &str, blob: SyntheticBlob, digest: String) -> anyhow::Result<Self> {
        let state = ServerState {
            blob,
            digest: digest.clone(),
            bytes_served: Arc::default(),
        };
        let bytes_served = state.bytes_served.clone();
        let app = axum::Router::new().fallback(serve).with_state(state);
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BlobServer {
            addr,
            digest,
            bytes_served,
            task,
        })
    }

    /// `host:port`, as containerd puts it in a mirror's `ns`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Blob body bytes sent so far, counted as each block goes out.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::SeqCst)
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(state): State<ServerState>, req: Request) -> Response {
    let path = req.uri().path();
    if path == "/v2/" || path == "/v2" {
        return StatusCode::OK.into_response();
    }
    let wanted = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/blobs/"))
        .map(|(_, digest)| digest);
    if wanted != Some(state.digest.as_str()) {
        return (StatusCode::NOT_FOUND, "BLOB_UNKNOWN").into_response();
    }
    let len = state.blob.len;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        Some(None) => return (StatusCode::RANGE_NOT_SATISFIABLE, "bad range").into_response(),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", state.digest.as_str());
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            builder = builder.header(header::CONTENT_RANGE, value);
        }
    }
    if req.method() == Method::HEAD {
        return builder.body(Body::empty()).unwrap_or_default();
    }
    let counter = state.bytes_served.clone();
    let blocks = state.blob.range(start, end).map(move |block| {
        counter.fetch_add(block.len() as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(block)
    });
    builder
        .body(Body::from_stream(futures::stream::iter(blocks)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_slices_of_the_same_bytes() {
        let blob = SyntheticBlob {
            seed: 3,
            len: 2 * BLOCK + 100,
        };
        let whole: Vec<u8> = blob.range(0, blob.len).flatten().collect();
        assert_eq!(whole.len() as u64, blob.len);
        assert_ne!(
            whole[..BLOCK as usize],
            whole[BLOCK as usize..2 * BLOCK as usize]
        );
        for (s, e) in [
            (0, 1),
            (5, BLOCK + 7),
            (BLOCK, 2 * BLOCK + 100),
            (2 * BLOCK + 99, 2 * BLOCK + 100),
        ] {
            let part: Vec<u8> = blob.range(s, e).flatten().collect();
            assert_eq!(part, whole[s as usize..e as usize], "range {s}..{e}");
        }
        assert_eq!(blob.digest(), crate::origin::sha256_hex(&whole));
        let other = SyntheticBlob { seed: 4, ..blob };
        assert_ne!(other.digest(), blob.digest());
    }
}
