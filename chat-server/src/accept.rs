//! The accept loop under the HTTP server, written on hyper directly because `axum::serve` has no
//! knob for what it adds: a cap on open connections (a permit is taken before `accept` and held
//! by the socket itself, so upgraded WebSockets count too), a header read timeout (a client that
//! connects and sends nothing, or trickles its headers, or idles between kept-alive requests, is
//! dropped), a cap on connections per address (so one address cannot take every slot), the
//! peer's address for the per-address limits, and a graceful drain. With a [`TlsConfig`] each
//! connection first does its TLS handshake in its own task (bounded by the same header read
//! timeout, so a client that never finishes one holds its slot no longer than a silent one);
//! the decrypted stream is then served exactly like a plain one.

use crate::config::AbuseLimits;
use crate::tls::TlsConfig;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long the loop backs off after an accept error that is not about one connection (e.g.
/// out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// The first byte of every TLS connection (a handshake record). Anything else on a TLS
/// listener is a client speaking plain HTTP to it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP client gets from a TLS listener: a plain 400 with the contract's error
/// body, so it fails with a reason instead of a reset.
const PLAIN_HTTP_TO_TLS: &str = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ";
const PLAIN_HTTP_TO_TLS_BODY: &str = r#"{"error":{"code":"bad_request","message":"this port speaks TLS: use https:// (wss:// for WebSockets)"}}"#;

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, asks every
/// connection to finish its current request and waits for them. When `crashed` is cancelled,
/// connections are dropped at once instead.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &AbuseLimits,
    tls: Option<TlsConfig>,
    shutdown: CancellationToken,
    crashed: CancellationToken,
) {
    let handshake_timeout = limits.header_read_timeout.max(Duration::from_millis(1));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_addr = PerAddr::new(limits);
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
        let Some(addr_slot) = per_addr.take(peer.ip()) else {
            // Closed at once: the address holds its share of the slots already.
            tracing::debug!(%peer, "connection refused: too many from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counted = CountedStream::new(stream, permit, addr_slot);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let (http, tls) = (http.clone(), tls.clone());
        let (shutdown, crashed, done) = (shutdown.clone(), crashed.clone(), done_tx.clone());
        tokio::spawn(async move {
            let io = match tls {
                None => Io::Plain(counted),
                Some(tls) => {
                    let handshake =
                        tokio::time::timeout(handshake_timeout, handshake(&tls, counted));
                    let outcome = tokio::select! {
                        r = handshake => r,
                        _ = crashed.cancelled() => return,
                        _ = shutdown.cancelled() => return,
                    };
                    match outcome {
                        Ok(Ok(Some(stream))) => Io::Tls(Box::new(stream)),
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let conn = http
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .with_upgrades();
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

/// The server side of a TLS handshake. `None` when there is nothing to serve: the client
/// closed at once, or spoke plain HTTP (it has been answered with a plain 400).
async fn handshake(
    tls: &TlsConfig,
    mut stream: CountedStream,
) -> io::Result<Option<tokio_rustls::server::TlsStream<CountedStream>>> {
    let mut first = [0u8; 1];
    if stream.inner.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        // Read what the client sent (its request head, usually) before answering, so closing
        // does not reset the connection under the answer.
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let answer = format!(
            "{PLAIN_HTTP_TO_TLS}{}\r\n\r\n{PLAIN_HTTP_TO_TLS_BODY}",
            PLAIN_HTTP_TO_TLS_BODY.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(None);
    }
    tls.acceptor().accept(stream).await.map(Some)
}

/// A served connection's stream: plain TCP, or TLS over it. One type for both, so the HTTP
/// connection and its graceful shutdown are written once.
enum Io {
    Plain(CountedStream),
    Tls(Box<tokio_rustls::server::TlsStream<CountedStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
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

/// Connections open per peer address, against [`AbuseLimits::max_connections_per_addr`].
#[derive(Clone)]
struct PerAddr {
    /// 0: no cap.
    cap: usize,
    /// Exempt: their clients are told apart by `X-Forwarded-For` in the other limits.
    trusted: Arc<[IpAddr]>,
    open: OpenPerAddr,
}

/// Connections open per address.
type OpenPerAddr = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One counted connection of an address; dropping it frees the slot. `None` inside when the
/// address is not counted. Holds only the map (not the whole [`PerAddr`]): it lives in every
/// open connection.
struct AddrSlot(Option<(IpAddr, OpenPerAddr)>);

impl PerAddr {
    fn new(limits: &AbuseLimits) -> PerAddr {
        PerAddr {
            cap: limits.max_connections_per_addr,
            trusted: limits.trusted_proxies.clone().into(),
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `cap` open.
    fn take(&self, ip: IpAddr) -> Option<AddrSlot> {
        if self.cap == 0 || self.trusted.contains(&ip) {
            return Some(AddrSlot(None));
        }
        let mut open = crate::lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddrSlot(Some((ip, self.open.clone()))))
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        if let Some((ip, open)) = self.0.take() {
            let mut open = crate::lock(&open);
            if let Some(n) = open.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// A TCP stream that holds one of the server's connection slots (and one of its address's)
/// until it is dropped, which for an upgraded WebSocket is when the WebSocket closes.
///
/// It also reads ahead for small reads, so the WebSocket above it needs no read buffer of its
/// own while idle: tungstenite asks for a few bytes at a time (its buffer is tiny, see
/// `ws::WS_READ_BUFFER`), and a read smaller than [`READ_AHEAD`] takes up to [`READ_AHEAD`]
/// bytes from the socket into a stack buffer, hands over what was asked and keeps the rest on
/// the heap only until it is read. So a pipelining client's burst still costs one `recv`, and
/// an idle connection holds no buffer at all (docs/benchmarks.md, "Connections"). Large reads
/// (hyper's, rustls's) go straight to the socket.
struct CountedStream {
    inner: TcpStream,
    /// Bytes read from the socket beyond what a small read asked for, not yet handed out.
    ahead: Option<Box<ReadAhead>>,
    _slot: OwnedSemaphorePermit,
    _addr_slot: AddrSlot,
}

/// Bytes read ahead ([`CountedStream`]): `data[pos..]` is still to be handed out.
struct ReadAhead {
    data: Box<[u8]>,
    pos: usize,
}

/// Most bytes a small read takes from the socket at once (the stack buffer of
/// [`CountedStream::poll_read`]); reads asking for at least this much skip the read-ahead.
const READ_AHEAD: usize = 4096;

impl CountedStream {
    fn new(inner: TcpStream, slot: OwnedSemaphorePermit, addr_slot: AddrSlot) -> CountedStream {
        CountedStream {
            inner,
            ahead: None,
            _slot: slot,
            _addr_slot: addr_slot,
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(ahead) = this.ahead.as_mut() {
            let rest = &ahead.data[ahead.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            ahead.pos += n;
            if ahead.pos == ahead.data.len() {
                this.ahead = None;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut chunk = ReadBuf::uninit(&mut space);
        match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let read = chunk.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.ahead = Some(Box::new(ReadAhead {
                data: read[n..].into(),
                pos: 0,
            }));
        }
        Poll::Ready(Ok(()))
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
    fn connections_are_capped_per_address_except_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let limits = AbuseLimits {
            max_connections_per_addr: 2,
            trusted_proxies: vec![proxy],
            ..AbuseLimits::default()
        };
        let per_addr = PerAddr::new(&limits);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let (s1, s2) = (per_addr.take(a).unwrap(), per_addr.take(a).unwrap());
        assert!(
            per_addr.take(a).is_none(),
            "the third from one address is refused"
        );
        assert!(per_addr.take("127.0.0.3".parse().unwrap()).is_some());
        let proxied: Vec<_> = (0..10).map(|_| per_addr.take(proxy).unwrap()).collect();
        drop(s1);
        assert!(
            per_addr.take(a).is_some(),
            "a closed connection frees its slot"
        );
        drop((s2, proxied));
    }

    #[tokio::test]
    async fn small_reads_come_from_the_read_ahead_in_order_and_nothing_is_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let mut stream = CountedStream::new(server, permit, AddrSlot(None));
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        // tungstenite's reads (a frame header at a time), then a large one (hyper's), which
        // must first get what was read ahead.
        let (mut small, mut large) = ([0u8; 14], vec![0u8; 8192]);
        for i in 0.. {
            let buf: &mut [u8] = if i % 50 == 49 { &mut large } else { &mut small };
            let n = stream.read(buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let held = stream.ahead.as_ref().map_or(0, |a| a.data.len());
            assert!(held < READ_AHEAD, "at most one recv's worth is held");
        }
        assert_eq!(got, sent);
        assert!(stream.ahead.is_none(), "nothing is held once all is read");
    }

    #[test]
    fn only_connection_errors_are_skipped_silently() {
        assert!(is_per_connection(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
        assert!(!is_per_connection(&io::Error::other("EMFILE")));
    }
}
