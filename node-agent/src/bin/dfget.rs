//! dfget: download a URL through the local dfdaemon (P2P), or straight from
//! the origin when no daemon answers.
//!
//! Exit codes: 0 done, 1 other error or bad input, 2 the origin refused
//! (e.g. 404), 3 digest mismatch, 4 daemon unreachable and --no-direct.

use clap::Parser;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use node_agent::api_address::ApiAddress;
use node_agent::store::TaskFailure;
use node_agent::task_api::TaskStatus;
use node_agent::task_request::TaskRequest;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(
    name = "dfget",
    version,
    about = "Download a URL through the P2P network"
)]
struct Args {
    url: String,
    /// Output file.
    #[arg(short = 'O', long = "output")]
    output: PathBuf,
    /// Header passed to the origin, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Expected sha256 of the content, `sha256:<hex>`.
    #[arg(long)]
    digest: Option<String>,
    /// Separates downloads of the same URL into different tasks.
    #[arg(long, default_value = "")]
    tag: String,
    /// The local dfdaemon's task API: unix:/PATH or HOST:PORT.
    #[arg(long, default_value = "unix:/run/dragonfly/dfdaemon.sock", env = "DFGET_DAEMON", value_parser = ApiAddress::parse_client)]
    daemon: ApiAddress,
    /// Fail (exit 4) instead of downloading straight from the origin when
    /// the daemon is unreachable.
    #[arg(long)]
    no_direct: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug)]
enum Failure {
    BadInput(String),
    Origin(String),
    Digest(String),
    DaemonUnreachable(String),
    Other(String),
}

impl Failure {
    fn exit(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::BadInput(_) | Failure::Other(_) => 1,
            Failure::Origin(_) => 2,
            Failure::Digest(_) => 3,
            Failure::DaemonUnreachable(_) => 4,
        })
    }

    fn message(&self) -> &str {
        match self {
            Failure::BadInput(m)
            | Failure::Origin(m)
            | Failure::Digest(m)
            | Failure::DaemonUnreachable(m)
            | Failure::Other(m) => m,
        }
    }
}

fn parse_headers(raw: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    raw.iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| Failure::BadInput(format!("header {h:?} is not 'Name: value'")))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn progress_bar(quiet: bool, length: Option<u64>) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(length, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Writes a body stream to `output` through a temp file, hashing as it goes;
/// the output appears only when complete and verified.
async fn write_verified<S, E>(
    mut body: S,
    output: &Path,
    expected: Option<&str>,
    bar: &ProgressBar,
) -> Result<u64, Failure>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let tmp = output.with_extension("dfget-tmp");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| Failure::Other(format!("cannot create {}: {e}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let result: Result<(), Failure> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failure::Other(format!("download interrupted: {e}")))?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Failure::Other(format!("writing {}: {e}", tmp.display())))?;
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        file.sync_all()
            .await
            .map_err(|e| Failure::Other(format!("writing {}: {e}", tmp.display())))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize_reset()));
        if let Some(expected) = expected {
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Failure::Digest(format!(
                    "digest mismatch: expected {expected}, got {actual}"
                )));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, output)
        .await
        .map_err(|e| Failure::Other(format!("renaming to {}: {e}", output.display())))?;
    Ok(written)
}

async fn via_daemon(args: &Args, request: &TaskRequest) -> Result<u64, Failure> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .no_proxy();
    let (http, base) = args
        .daemon
        .client(builder)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let resp = http
        .post(format!("{base}/api/v1/tasks"))
        .json(request)
        .send()
        .await
        .map_err(|e| {
            Failure::DaemonUnreachable(format!("dfdaemon at {} is not reachable: {e}", args.daemon))
        })?;
    if resp.status().is_client_error() {
        let text = resp.text().await.unwrap_or_default();
        return Err(Failure::BadInput(format!(
            "dfdaemon rejected the request: {text}"
        )));
    }
    if !resp.status().is_success() {
        return Err(Failure::Other(format!(
            "dfdaemon answered {}",
            resp.status()
        )));
    }
    let status: TaskStatus = resp
        .json()
        .await
        .map_err(|e| Failure::Other(format!("unexpected answer from dfdaemon: {e}")))?;
    let task_id = status.task_id.clone();

    let resp = http
        .get(format!("{base}/api/v1/tasks/{task_id}/content"))
        .send()
        .await
        .map_err(|e| Failure::DaemonUnreachable(format!("dfdaemon at {}: {e}", args.daemon)))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        return Err(reported_failure(&body)
            .and_then(exit_failure)
            .unwrap_or_else(|| Failure::Other(format!("dfdaemon answered {code}: {body}"))));
    }
    let bar = progress_bar(args.quiet, resp.content_length());
    // Show the share that came from peers while the bytes stream in.
    let poller = {
        let bar = bar.clone();
        let http = http.clone();
        let url = format!("{base}/api/v1/tasks/{task_id}");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(Ok(s)) = async { http.get(&url).send().await?.json::<TaskStatus>().await }
                    .await
                    .map(Ok::<_, reqwest::Error>)
                {
                    let total = (s.from_origin + s.from_peers).max(1);
                    bar.set_message(format!("peers {}%", s.from_peers * 100 / total));
                }
            }
        })
    };
    let result = write_verified(
        resp.bytes_stream(),
        &args.output,
        args.digest.as_deref(),
        &bar,
    )
    .await;
    poller.abort();
    bar.finish_and_clear();
    match result {
        // The daemon cuts the stream when the download fails (e.g. the
        // content does not match its digest): ask it why.
        Err(Failure::Other(cut)) => Err(why_failed(&http, &base, &task_id)
            .await
            .unwrap_or(Failure::Other(cut))),
        other => other,
    }
}

/// The failure a daemon recorded for a task, as dfget reports it.
async fn why_failed(http: &reqwest::Client, base: &str, task_id: &str) -> Option<Failure> {
    let resp = http
        .get(format!("{base}/api/v1/tasks/{task_id}"))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    let failure = reported_failure(&body)?;
    let message = failure.to_string();
    Some(exit_failure(failure).unwrap_or(Failure::Other(message)))
}

/// The download failure a task API answer carries: an error body's
/// `failure`, or a task status's `error`.
fn reported_failure(body: &serde_json::Value) -> Option<TaskFailure> {
    body.get("failure")
        .or_else(|| body.get("error"))
        .cloned()
        .and_then(|f| serde_json::from_value(f).ok())
}

/// The failures dfget has an exit code of their own for.
fn exit_failure(failure: TaskFailure) -> Option<Failure> {
    match failure {
        TaskFailure::Origin { .. } => Some(Failure::Origin(failure.to_string())),
        TaskFailure::DigestMismatch { .. } => Some(Failure::Digest(failure.to_string())),
        _ => None,
    }
}

async fn direct(args: &Args, request: &TaskRequest) -> Result<u64, Failure> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Failure::Other(e.to_string()))?;
    let mut req = http.get(&request.url);
    for (k, v) in &request.headers {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Other(format!("origin not reachable: {e}")))?;
    if !resp.status().is_success() {
        return Err(Failure::Origin(format!(
            "origin answered {}",
            resp.status()
        )));
    }
    let bar = progress_bar(args.quiet, resp.content_length());
    let result = write_verified(
        resp.bytes_stream(),
        &args.output,
        args.digest.as_deref(),
        &bar,
    )
    .await;
    bar.finish_and_clear();
    result
}

async fn run(args: Args) -> Result<u64, Failure> {
    let request = TaskRequest {
        url: args.url.clone(),
        headers: parse_headers(&args.headers)?,
        digest: args.digest.clone(),
        tag: args.tag.clone(),
        ..Default::default()
    };
    request.validate().map_err(Failure::BadInput)?;
    match via_daemon(&args, &request).await {
        Err(Failure::DaemonUnreachable(why)) if !args.no_direct => {
            eprintln!("dfget: warning: {why}; downloading straight from the origin");
            direct(&args, &request).await
        }
        other => other,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let output = args.output.clone();
    match run(args).await {
        Ok(bytes) => {
            if std::io::stderr().is_terminal() {
                eprintln!("dfget: {} bytes written to {}", bytes, output.display());
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("dfget: {}", failure.message());
            failure.exit()
        }
    }
}
