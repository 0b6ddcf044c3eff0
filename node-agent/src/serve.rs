//! Serves a router on a listener with the limits a port facing a hostile
//! network needs: a cap on open connections, in all and per client
//! address, and a deadline for every request's headers (which also ends
//! idle keep-alive connections). Idle or slow clients then cannot take a
//! port away from everyone else. With a TLS acceptor (the peer port with a
//! cluster identity), a connection is served only after a mutual TLS
//! handshake, and every request carries the caller's identity.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// A request's headers must arrive within this, counted from the end
    /// of the previous request on the connection (or its start).
    pub header_timeout: Duration,
}

/// Admits connections within the limits; counts the refused ones.
struct Gate {
    name: &'static str,
    limits: Limits,
    total: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    refused: Option<prometheus_client::metrics::counter::Counter>,
}

/// One admitted connection; gives its place back when dropped.
struct Admission {
    gate: Arc<Gate>,
    client: Option<IpAddr>,
    _slot: OwnedSemaphorePermit,
}

impl Gate {
    fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Option<Admission> {
        let slot = self.total.clone().try_acquire_owned().ok()?;
        if let Some(ip) = client {
            let mut per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let open = per_client.entry(ip).or_default();
            if *open >= self.limits.max_connections_per_client {
                return None;
            }
            *open += 1;
        }
        Some(Admission {
            gate: self.clone(),
            client,
            _slot: slot,
        })
    }

    fn refuse(&self, client: Option<IpAddr>) {
        if let Some(counter) = &self.refused {
            counter.inc();
        }
        tracing::debug!(listener = self.name, client = ?client, "connection refused: over the connection limit");
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Some(ip) = self.client else { return };
        let mut per_client = self
            .gate
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = per_client.get_mut(&ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_client.remove(&ip);
            }
        }
    }
}

/// How a listener is served.
pub struct Options {
    pub limits: Limits,
    /// Counts connections turned away.
    pub refused: Option<prometheus_client::metrics::counter::Counter>,
    /// Mutual TLS with cluster members.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// What this listener sends is bulk (uploads to peers): its connections
    /// go last in the host's own queue, see [`mark_bulk`].
    pub bulk: bool,
}

/// The socket priority the kernel maps to its lowest band
/// (`TC_PRIO_BULK`; `pfifo_fast`, the kernel's default queue, and `prio`
/// send it after everything else).
const BULK_PRIORITY: u32 = 2;

/// Marks a connection's packets as bulk on this host's own network queue
/// (local only: nothing changes on the wire). A node's uplink carrying
/// uploads to peers would otherwise hold the acknowledgements of its own
/// downloads behind them in one FIFO: a seed forwarding everything it
/// fetched slowed its own fetch from the origin to 88-91 % of the link,
/// 94 % with its uploads marked. Queues that keep flows apart (fq_codel,
/// fq) need no mark and ignore it.
pub fn mark_bulk(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_priority(BULK_PRIORITY)
}

/// The cluster member on the other end of a request's connection (a
/// request extension on listeners served with TLS).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub identity::Identity);

/// A TLS handshake must finish within this (or the header deadline, if
/// shorter): a client that opens connections and stalls holds no place.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener `serve` can take connections from.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves `router` until `stop` changes, then returns once the connections
/// open then have finished their current request.
pub async fn serve(
    name: &'static str,
    listener: Listener,
    router: axum::Router,
    options: Options,
    mut stop: watch::Receiver<bool>,
) {
    let Options {
        limits,
        refused,
        tls,
        bulk,
    } = options;
    let gate = Arc::new(Gate {
        name,
        limits,
        total: Arc::new(Semaphore::new(limits.max_connections)),
        per_client: Mutex::new(HashMap::new()),
        refused,
    });
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, bulk) => accepted,
            _ = stop.changed() => break,
        };
        let (io, client) = match accepted {
            Ok(found) => found,
            Err(e) => {
                // Out of file descriptors, typically: let some close.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admission) = gate.admit(client) else {
            gate.refuse(client);
            continue;
        };
        tokio::spawn(connection(
            io,
            router.clone(),
            limits.header_timeout,
            tls.clone(),
            admission,
            stop.clone(),
        ));
    }
    // Closed now, not when the drain is over: a new connection is refused
    // at once rather than left in the backlog to time out.
    drop(listener);
    // Connections finish the request they are serving (each was told to
    // close after it): resolves once every admission is given back, so a
    // caller bounding this wait drains in-flight answers before exiting.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = gate.total.acquire_many(all).await;
}

enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener, bulk: bool) -> std::io::Result<(Io, Option<IpAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            if bulk {
                if let Err(e) = mark_bulk(&stream) {
                    tracing::debug!(error = %e, "cannot mark the connection as bulk");
                }
            }
            Ok((Io::Tcp(stream), Some(peer.ip())))
        }
        Listener::Unix(l) => Ok((Io::Unix(l.accept().await?.0), None)),
    }
}

async fn connection(
    io: Io,
    router: axum::Router,
    header_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admission: Admission,
    stop: watch::Receiver<bool>,
) {
    match (io, tls) {
        (Io::Tcp(s), Some(tls)) => {
            let deadline = header_timeout.min(HANDSHAKE_TIMEOUT);
            let stream = match tokio::time::timeout(deadline, tls.accept(s)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(client = ?admission.client, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = ?admission.client, "TLS handshake timed out");
                    return;
                }
            };
            // The verifier refuses certificates without an identity, so
            // one is always there; checked again rather than assumed.
            let Some(caller) = identity::peer_identity(stream.get_ref().1) else {
                return;
            };
            let router = router.layer(axum::Extension(PeerIdentity(caller)));
            http1(stream, router, header_timeout, stop).await
        }
        (Io::Tcp(s), None) => http1(s, router, header_timeout, stop).await,
        (Io::Unix(s), _) => http1(s, router, header_timeout, stop).await,
    }
    drop(admission);
}

/// HTTP/1.1 only: every client of these ports (containerd, nydusd, peers,
/// dfget) speaks it, and it keeps the header deadline meaningful.
async fn http1<S>(
    stream: S,
    router: axum::Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Binds the unix socket of the local task API: its directory is created,
/// a stale socket file replaced, a live one (another daemon) never taken
/// over, and the socket is made reachable by its owner (root) alone.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_client: usize) -> Arc<Gate> {
        Arc::new(Gate {
            name: "test",
            limits: Limits {
                max_connections: total,
                max_connections_per_client: per_client,
                header_timeout: Duration::from_secs(1),
            },
            total: Arc::new(Semaphore::new(total)),
            per_client: Mutex::new(HashMap::new()),
            refused: None,
        })
    }

    #[test]
    fn one_client_cannot_take_every_connection() {
        let gate = gate(4, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = gate.admit(Some(a)).unwrap();
        let _second = gate.admit(Some(a)).unwrap();
        assert!(gate.admit(Some(a)).is_none(), "third from the same client");
        let _other = gate.admit(Some(b)).unwrap();
        drop(first);
        let _again = gate.admit(Some(a)).unwrap();
        let _fourth = gate.admit(Some(b)).unwrap();
        assert!(gate.admit(None).is_none(), "over the total");
    }

    #[test]
    fn places_are_given_back() {
        let gate = gate(1, 1);
        for _ in 0..3 {
            let held = gate.admit(Some([127, 0, 0, 1].into())).unwrap();
            drop(held);
        }
        assert!(gate.per_client.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn stopping_lets_answers_in_flight_finish() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let limits = Limits {
            max_connections: 8,
            max_connections_per_client: 8,
            header_timeout: Duration::from_secs(5),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            "test",
            Listener::Tcp(listener),
            router,
            Options {
                limits,
                refused: None,
                tls: None,
                bulk: false,
            },
            stop_rx,
        ));
        let request = tokio::spawn(async move {
            reqwest::get(format!("http://{addr}/slow"))
                .await?
                .text()
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx.send(true).unwrap();
        // The server waits for the answer in flight, and only for it.
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server drained")
            .unwrap();
        assert_eq!(request.await.unwrap().unwrap(), "done");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let live = bind_unix(&path).unwrap();
        let err = bind_unix(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(live);
        // The file is left behind with nobody listening: stale, replaced.
        let _again = bind_unix(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_bulk_connection_gets_the_lowest_band() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        let priority =
            |stream: &tokio::net::TcpStream| socket2::SockRef::from(stream).priority().unwrap();
        assert_eq!(priority(&server), 0);
        mark_bulk(&server).unwrap();
        assert_eq!(priority(&server), BULK_PRIORITY);
        // Only the marked side: the other end's traffic keeps its band.
        assert_eq!(priority(&client.unwrap()), 0);
    }
}
