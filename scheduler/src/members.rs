//! The gRPC port with a cluster identity: connections are served only after
//! a mutual TLS handshake with a member (node, seed or operator), and each
//! request knows who is calling, so the service can check that a member
//! speaks only for its own host.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use identity::{Identity, MemberTls, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// Handshakes in progress at once: a flood of stalled connections holds at
/// most this many places, each for at most `HANDSHAKE_TIMEOUT`.
const MAX_HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a gRPC request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub remote: Option<SocketAddr>,
    /// None when the port is plain (no cluster identity configured).
    pub identity: Option<Identity>,
}

/// An accepted member connection.
pub struct MemberStream {
    inner: TlsStream<TcpStream>,
    caller: Caller,
}

impl Connected for MemberStream {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for MemberStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemberStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts on `listener`, completes handshakes concurrently (bounded), and
/// yields the member connections that passed.
pub fn incoming(
    listener: TcpListener,
    tls: &MemberTls,
) -> impl futures::Stream<Item = Result<MemberStream, std::io::Error>> {
    // Nodes and seeds call for their own hosts; the operator reads (stat).
    let acceptor = tls.acceptor(&[Role::Node, Role::Seed, Role::Operator]);
    let (tx, rx) = mpsc::channel::<MemberStream>(64);
    let places = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Ok(place) = places.clone().try_acquire_owned() else {
                tracing::debug!(client = %remote, "refused: too many handshakes in progress");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _place = place;
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %remote, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %remote, "TLS handshake timed out");
                            return;
                        }
                    };
                let Some(identity) = identity::peer_identity(stream.get_ref().1) else {
                    return;
                };
                let caller = Caller {
                    remote: Some(remote),
                    identity: Some(identity),
                };
                let _ = tx
                    .send(MemberStream {
                        inner: stream,
                        caller,
                    })
                    .await;
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((Ok(next), rx))
    })
}
