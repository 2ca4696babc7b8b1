//! Centrifugo's protocol, as far as the side-by-side scenarios need it: its client protocol
//! (v2, JSON, the one Centrifugo v6 speaks at `/connection/websocket`), its connection JWTs,
//! and its server HTTP API's `publish`.
//!
//! The client protocol is commands and replies: the client sends `{"id":1,"connect":{"token":
//! ..}}` and `{"id":2,"subscribe":{"channel":..}}`, the server answers each with a reply of the
//! same `id` (a result or an `error`), and pushes what is published into a subscribed channel as
//! a reply without `id`: `{"push":{"channel":..,"pub":{"data":..}}}`. One WebSocket frame may
//! carry several replies and pushes, one JSON document per line. The server pings with an
//! empty reply `{}` and expects an empty command `{}` back, or it closes the connection.
//!
//! Publishing goes through the server API (`POST /api/publish` with `X-API-Key`), as an
//! application backend does; Centrifugo keeps nothing (no history configured) and delivers to
//! the channel's subscribers.
//!
//! Connection tokens are HS256 JWTs with `sub` (the user) and `exp`, signed with the HMAC
//! secret of the server's `client.token.hmac_secret_key`.

use super::api::{check, Target};
use super::ws::{dial, LgText, WsStream};
use anyhow::{bail, Context as _};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use std::net::IpAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// How long connecting and subscribing may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A Centrifugo server: where it listens and the two secrets of its configuration.
#[derive(Clone, Debug)]
pub struct Centrifugo {
    /// Its address (`http://host:port`).
    pub target: Target,
    /// The server API key (`http_api.key`).
    pub api_key: String,
    /// The HMAC secret of connection tokens (`client.token.hmac_secret_key`).
    pub hmac_secret: String,
}

impl Centrifugo {
    /// The WebSocket URL of the client protocol (`ws://host:port/connection/websocket`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.target.authority)
    }

    /// A connection token for user `sub`, valid for a day.
    pub fn token(&self, sub: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        connection_token(self.hmac_secret.as_bytes(), sub, now + 86_400)
    }

    /// Opens a WebSocket (from `source` if given), connects with `token` and subscribes to
    /// `channels`, one command at a time, answering pings meanwhile.
    pub async fn open(
        &self,
        token: &str,
        channels: &[String],
        source: Option<IpAddr>,
        read_buffer: usize,
    ) -> anyhow::Result<WsStream> {
        let req = self.ws_url().into_client_request()?;
        let open = async {
            let mut ws = dial(self.target.addr, req, source, read_buffer).await?;
            command(&mut ws, 1, &connect_command(1, token))
                .await
                .context("connect")?;
            for (i, channel) in channels.iter().enumerate() {
                let id = 2 + i as u32;
                command(&mut ws, id, &subscribe_command(id, channel))
                    .await
                    .with_context(|| format!("subscribe to {channel}"))?;
            }
            anyhow::Ok(ws)
        };
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .context("timed out connecting to Centrifugo")?
    }
}

/// Sends one command and reads until the reply with its `id`; fails on an `error` reply.
async fn command(ws: &mut WsStream, id: u32, json: &str) -> anyhow::Result<()> {
    ws.send(Message::text(json)).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => {
                for line in lines(t.as_str()) {
                    match classify(line) {
                        Reply::Ping => ws.send(Message::text(PONG)).await?,
                        Reply::Result { id: got, error } if got == id => {
                            return match error {
                                None => Ok(()),
                                Some(e) => bail!("Centrifugo answered an error: {e}"),
                            };
                        }
                        _ => {}
                    }
                }
            }
            Message::Close(c) => bail!("Centrifugo closed the connection: {c:?}"),
            _ => {}
        }
    }
    bail!("connection ended before the reply to command {id}")
}

/// The empty command that answers a server ping.
pub const PONG: &str = "{}";

/// The `connect` command carrying a connection token.
pub fn connect_command(id: u32, token: &str) -> String {
    serde_json::json!({"id": id, "connect": {"token": token, "name": "loadgen"}}).to_string()
}

/// The `subscribe` command for one channel.
pub fn subscribe_command(id: u32, channel: &str) -> String {
    serde_json::json!({"id": id, "subscribe": {"channel": channel}}).to_string()
}

/// The replies and pushes of one WebSocket frame: one JSON document per line.
pub fn lines(frame: &str) -> impl Iterator<Item = &str> {
    frame.split('\n').map(str::trim).filter(|l| !l.is_empty())
}

/// What one line of a server frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The server's ping (an empty reply): answer with [`PONG`].
    Ping,
    /// A publication pushed from a subscribed channel, with the load-generator fields of its
    /// data's `text` when it has them.
    Publication(Option<LgText>),
    /// The reply to command `id`, and its error (the raw JSON) if it failed.
    Result {
        /// The command's `id`.
        id: u32,
        /// The `error` object, if the command failed.
        error: Option<String>,
    },
    /// Any other push (join, leave, unsubscribe, disconnect, …) or an unreadable line (raw).
    Other(&'a str),
}

/// Classifies one line. Publications, by far the most frequent, are recognised without a JSON
/// parse: the generator reads hundreds of thousands a second. Centrifugo embeds the published
/// `data` as the publisher wrote it, so the `"text":"lg <id> <nanos> "` head is found verbatim.
pub fn classify(line: &str) -> Reply<'_> {
    if line == "{}" {
        return Reply::Ping;
    }
    if line.starts_with(r#"{"push":"#) {
        if line.contains(r#""pub":"#) {
            return Reply::Publication(parse_text_lg(line));
        }
        return Reply::Other(line);
    }
    // Replies to commands are rare (setup only): parse them properly.
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Reply::Other(line);
    };
    match v.get("id").and_then(serde_json::Value::as_u64) {
        Some(id) if id > 0 => Reply::Result {
            id: u32::try_from(id).unwrap_or(u32::MAX),
            error: v.get("error").map(|e| e.to_string()),
        },
        _ => Reply::Other(line),
    }
}

/// The load-generator fields at the start of the publication data's `text`.
fn parse_text_lg(line: &str) -> Option<LgText> {
    const KEY: &str = r#""text":"lg "#;
    let start = line.find(KEY)? + KEY.len();
    let mut parts = line[start..].splitn(3, ' ');
    let id = parts.next()?.parse().ok()?;
    let sched_nanos = parts.next()?.parse().ok()?;
    Some(LgText { id, sched_nanos })
}

/// An HS256 JWT with the claims `sub` and `exp` (Unix seconds), signed with `secret`: what
/// Centrifugo checks on `connect` when `client.token.hmac_secret_key` is set.
pub fn connection_token(secret: &[u8], sub: &str, exp: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64.encode(serde_json::json!({"sub": sub, "exp": exp}).to_string());
    let signing_input = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64.encode(signature.as_ref()))
}

/// The server HTTP API of one Centrifugo (a shared connection pool).
#[derive(Clone, Debug)]
pub struct HttpApi {
    http: reqwest::Client,
    publish_url: String,
    api_key: String,
}

impl HttpApi {
    /// A client for `server`'s API.
    pub fn new(server: &Centrifugo) -> anyhow::Result<HttpApi> {
        Ok(HttpApi {
            http: super::api::http_client()?,
            publish_url: format!("{}/api/publish", server.target.base),
            api_key: server.api_key.clone(),
        })
    }

    /// `POST /api/publish` of `{"channel":..,"data":{"text":..}}`. Centrifugo answers API
    /// errors with HTTP 200 and an `error` object, so the body is checked too.
    pub async fn publish(&self, channel: &str, text: &str) -> anyhow::Result<()> {
        let what = "POST /api/publish";
        let resp = self
            .http
            .post(&self.publish_url)
            .header("X-API-Key", &self.api_key)
            .json(&serde_json::json!({"channel": channel, "data": {"text": text}}))
            .send()
            .await
            .context(what)?;
        let body: serde_json::Value = check(resp, what).await?.json().await.context(what)?;
        if let Some(e) = body.get("error") {
            bail!("{what}: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
