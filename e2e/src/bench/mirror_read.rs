//! Reading one blob through a dfdaemon's registry mirror as containerd
//! does (`?ns=` naming the upstream registry), hashing it while it streams.

use anyhow::{bail, Context};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const REPOSITORY: &str = "bench/blob";

#[derive(Debug, Clone, Copy)]
pub struct BlobRead {
    pub bytes: u64,
    pub seconds: f64,
}

/// GETs `digest` from the mirror at `proxy`, upstream `registry`
/// (`host:port`); fails unless the bytes match the digest.
pub async fn read_blob(
    client: &reqwest::Client,
    proxy: SocketAddr,
    registry: &str,
    digest: &str,
    timeout: Duration,
) -> anyhow::Result<BlobRead> {
    let url = format!("http://{proxy}/v2/{REPOSITORY}/blobs/{digest}?ns={registry}");
    let started = Instant::now();
    let read = async {
        let resp = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url}: {}", resp.status());
        }
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("reading {url} after {bytes} bytes"))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            bail!("{url}: {bytes} bytes hashing to {got}");
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .with_context(|| format!("GET {url} took longer than {timeout:?}"))??;
    Ok(BlobRead {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// An HTTP client for the mirror on loopback.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}
