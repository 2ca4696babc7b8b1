//! The accept loop under the HTTP server, written on hyper directly because `axum::serve` has no
//! knob for what it adds: a cap on open connections (a permit is taken before `accept` and held
//! by the socket itself, so upgraded WebSockets count too), a header read timeout (a client that
//! connects and sends nothing, or trickles its headers, or idles between kept-alive requests, is
//! dropped), the peer's address for the per-address limits, and a graceful drain.

use crate::config::AbuseLimits;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long the loop backs off after an accept error that is not about one connection (e.g.
/// out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, asks every
/// connection to finish its current request and waits for them. When `crashed` is cancelled,
/// connections are dropped at once instead.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &AbuseLimits,
    shutdown: CancellationToken,
    crashed: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.max(Duration::from_millis(1)));
    // Each connection task holds a sender; when all are dropped, the drain is complete.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(CountedStream {
            inner: stream,
            _slot: permit,
        });
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let conn = http
            .serve_connection(io, TowerToHyperService::new(service))
            .with_upgrades();
        let (shutdown, crashed, done) = (shutdown.clone(), crashed.clone(), done_tx.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = crashed.cancelled() => Ok(()),
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = crashed.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests end here; hyper has answered what
                // could be answered (e.g. 400, 431).
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(done);
        });
    }
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

/// Errors that concern only the connection being accepted (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A TCP stream that holds one of the server's connection slots until it is dropped, which for
/// an upgraded WebSocket is when the WebSocket closes.
struct CountedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_errors_are_skipped_silently() {
        assert!(is_per_connection(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
        assert!(!is_per_connection(&io::Error::other("EMFILE")));
    }
}
