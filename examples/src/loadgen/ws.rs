//! Raw WebSocket connections to `GET /v1/ws` (and, through [`dial`], to any WebSocket URL),
//! optionally from a chosen source address.
//!
//! One client IP can hold only as many connections to one server port as it has ephemeral
//! ports (about 28,000 with Linux's default range), so the connections scenario binds each
//! socket to one of 127.0.0.2, 127.0.0.3, … before connecting.

use super::api::Target;
use anyhow::{bail, Context as _};
use chat_core::protocol::{ChatCursor, ServerFrame};
use futures::StreamExt as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over plain TCP.
pub type WsStream = WebSocketStream<TcpStream>;

/// How long a connection may take to open and receive `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Client-side buffer sizes. tungstenite's default read buffer is 128 KiB and it zero-fills
/// the whole spare capacity before every read, which costs both memory (every page touched)
/// and time per read; frames here are small, so a few KiB is plenty.
pub fn client_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
}

/// Opens an authenticated WebSocket (from `source` if given) and waits for its `ready` frame;
/// returns the stream and the chats `ready` listed.
pub async fn connect(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    read_buffer: usize,
) -> anyhow::Result<(WsStream, Vec<ChatCursor>)> {
    let mut req = target.ws_url().into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("token is not a valid header value")?,
    );
    let open = async {
        let mut ws = dial(target.addr, req, source, read_buffer).await?;
        let chats = wait_ready(&mut ws).await?;
        anyhow::Ok((ws, chats))
    };
    tokio::time::timeout(READY_TIMEOUT, open)
        .await
        .context("timed out opening the WebSocket")?
}

/// Opens a TCP connection to `addr` (from `source` if given) and makes the WebSocket handshake
/// of `req` over it, with the generator's small client buffers. No timeout: callers bound it.
pub async fn dial(
    addr: SocketAddr,
    req: Request,
    source: Option<IpAddr>,
    read_buffer: usize,
) -> anyhow::Result<WsStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding source address {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(client_config(read_buffer)))
            .await
            .context("WebSocket handshake")?;
    Ok(ws)
}

/// Reads frames until `ready`.
async fn wait_ready(ws: &mut WsStream) -> anyhow::Result<Vec<ChatCursor>> {
    while let Some(msg) = ws.next().await {
        match msg.context("reading ready")? {
            Message::Text(t) => match serde_json::from_str::<ServerFrame>(t.as_str()) {
                Ok(ServerFrame::Ready { chats, .. }) => return Ok(chats),
                Ok(ServerFrame::Error { code, message, .. }) => {
                    bail!("server error before ready: {code:?}: {message}")
                }
                _ => {}
            },
            Message::Close(c) => bail!("closed before ready: {c:?}"),
            _ => {}
        }
    }
    bail!("connection ended before ready")
}

/// What the fast path of a reader found in a text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A `message` frame whose text is a load-generator text.
    Message(LgText),
    /// An `ack` of a load-generator send.
    Ack(LgText),
    /// A `message_updated` frame, with the load-generator fields when its text has them (an
    /// edit by the generator).
    Updated(Option<LgText>),
    /// An `error` frame (the raw JSON).
    Error(&'a str),
    /// Anything else (`ready`, `pong`, `chat_updated`, foreign messages).
    Other,
}

/// The fields the load generator writes at the start of each message text:
/// `lg <id> <scheduled send time, ns since the run's epoch> `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LgText {
    /// The send's number in this run.
    pub id: u64,
    /// When it was scheduled, in nanoseconds since the run's epoch.
    pub sched_nanos: u64,
}

impl LgText {
    /// The head of a message text carrying these fields.
    pub fn head(self) -> String {
        format!("lg {} {} ", self.id, self.sched_nanos)
    }
}

/// Classifies a server frame without a full JSON parse: the generator reads every delivery,
/// and at hundreds of thousands a second a `serde_json` parse of each would make the generator
/// the bottleneck. Relies on the server writing `type` first (serde's internally tagged enums
/// do) and on the text's own `"lg <id> <nanos> "` head, which has no characters JSON escapes.
pub fn classify(text: &str) -> Frame<'_> {
    let kind = if text.starts_with(r#"{"type":"message""#) {
        0
    } else if text.starts_with(r#"{"type":"ack""#) {
        1
    } else if text.starts_with(r#"{"type":"message_updated""#) {
        return Frame::Updated(parse_lg(text));
    } else if text.starts_with(r#"{"type":"error""#) {
        return Frame::Error(text);
    } else {
        return Frame::Other;
    };
    let Some(lg) = parse_lg(text) else {
        return Frame::Other;
    };
    if kind == 0 {
        Frame::Message(lg)
    } else {
        Frame::Ack(lg)
    }
}

fn parse_lg(text: &str) -> Option<LgText> {
    const KEY: &str = r#""msg_text":"lg "#;
    let start = text.find(KEY)? + KEY.len();
    let mut parts = text[start..].splitn(3, ' ');
    let id = parts.next()?.parse().ok()?;
    let sched_nanos = parts.next()?.parse().ok()?;
    Some(LgText { id, sched_nanos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ChatId, Message as ChatMessage, Seq, UserId};

    fn msg(text: &str) -> ChatMessage {
        let mut m = ChatMessage::new(ChatId(1), Seq(2), UserId(3), text, 4);
        m.timestamp = Some(5);
        m.client_msg_id = Some("c".into());
        m
    }

    #[test]
    fn classifies_real_frames() {
        let lg = LgText {
            id: 17,
            sched_nanos: 123_456_789,
        };
        let text = crate::loadgen::padded_text(&lg.head(), 100);
        let m = serde_json::to_string(&ServerFrame::Message {
            message: msg(&text),
        })
        .unwrap();
        assert_eq!(classify(&m), Frame::Message(lg));
        let a = serde_json::to_string(&ServerFrame::Ack {
            client_msg_id: "c".into(),
            message: msg(&text),
        })
        .unwrap();
        assert_eq!(classify(&a), Frame::Ack(lg));
        let e = serde_json::to_string(&ServerFrame::Error {
            code: chat_core::ErrorCode::RateLimited,
            message: "slow down".into(),
            client_msg_id: Some("c".into()),
        })
        .unwrap();
        assert!(matches!(classify(&e), Frame::Error(_)));
        let u = serde_json::to_string(&ServerFrame::MessageUpdated {
            message: msg(&text),
        })
        .unwrap();
        assert_eq!(classify(&u), Frame::Updated(Some(lg)));
        assert_eq!(classify(r#"{"type":"pong"}"#), Frame::Other);
        let foreign = serde_json::to_string(&ServerFrame::Message {
            message: msg("hello"),
        })
        .unwrap();
        assert_eq!(classify(&foreign), Frame::Other);
    }
}
