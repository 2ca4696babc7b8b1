//! The server under test of the side-by-side scenarios ([`super::peers`]): chat-server or
//! Centrifugo behind one interface, so the same scenario code drives either.
//!
//! Each server is used the way an application would use it:
//! - **chat-server**: users register and log in, a group is a chat they are members of, a
//!   WebSocket with the user's token receives every message of the user's chats, and a message
//!   is sent with `POST /v1/send` by one of the members (stored durably, then delivered to every
//!   member's connections, the sender's own included).
//! - **Centrifugo**: a user is the `sub` of a connection JWT, a group is a channel of the
//!   `chat` namespace, a WebSocket connects with the token and subscribes to its user's
//!   channel, and a message is published into the channel through the server HTTP API (by the
//!   application's backend: Centrifugo keeps nothing) and pushed to every subscriber.
//!
//! Either way a message reaches every connection of its group once, so a run expects
//! `published × connections per group` deliveries.

use super::api::{accounts, Account, Api, Target};
use super::centrifugo::{self, Centrifugo, HttpApi, Reply};
use super::ws::{classify, connect, Frame, LgText, WsStream};
use chat_core::protocol::SendRequest;
use chat_core::ChatId;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use std::net::IpAddr;

/// Which server, and where.
#[derive(Clone, Debug)]
pub enum Peer {
    /// chat-server (`loadgen serve` or the binary).
    ChatServer(Target),
    /// Centrifugo, with its API key and token secret.
    Centrifugo(Centrifugo),
}

/// A user of the scenario: who connects and who sends.
#[derive(Clone, Debug)]
pub enum Member {
    /// A logged-in chat-server user.
    ChatServer(Account),
    /// A Centrifugo user: its connection token.
    Centrifugo {
        /// The connection JWT.
        token: String,
    },
}

/// A group: a chat, or a channel.
#[derive(Clone, Debug)]
pub enum Room {
    /// A chat-server chat.
    Chat(ChatId),
    /// A Centrifugo channel.
    Channel(String),
}

/// A scenario's users and groups, as set up on the server.
#[derive(Clone, Debug)]
pub struct Cast {
    /// The users, in the order they were asked for.
    pub members: Vec<Member>,
    /// The groups, in the order they were asked for.
    pub rooms: Vec<Room>,
}

/// How to read a server's frames (cheap to copy into every connection's reader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// chat-server's JSON frames, one per WebSocket message.
    ChatServer,
    /// Centrifugo's JSON client protocol: several replies per WebSocket message, one a line.
    Centrifugo,
}

/// What a reader found in a frame, in terms every scenario counts the same way.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A message of this run delivered.
    Delivery(LgText),
    /// The server pinged at the protocol level: answer with [`Protocol::pong`].
    Ping,
    /// An error the server reported (raw).
    Error(&'a str),
    /// Anything else.
    Other,
}

impl Peer {
    /// `chat-server` or `centrifugo`, as the reports name it.
    pub fn name(&self) -> &'static str {
        match self {
            Peer::ChatServer(_) => "chat-server",
            Peer::Centrifugo(_) => "centrifugo",
        }
    }

    /// How its frames are read.
    pub fn protocol(&self) -> Protocol {
        match self {
            Peer::ChatServer(_) => Protocol::ChatServer,
            Peer::Centrifugo(_) => Protocol::Centrifugo,
        }
    }

    /// Sets up `users` users and one group per entry of `rooms`, holding the users it lists
    /// (indices below `users`). `prefix` makes names unique to the run. For chat-server this
    /// registers and logs in every user and creates the chats (their first member owns them);
    /// for Centrifugo it only signs tokens and names channels.
    pub async fn setup(
        &self,
        prefix: &str,
        password: &str,
        users: usize,
        rooms: &[Vec<usize>],
        concurrency: usize,
        pb: &ProgressBar,
    ) -> anyhow::Result<Cast> {
        match self {
            Peer::ChatServer(target) => {
                let api = Api::new(target)?;
                let accounts = accounts(&api, prefix, password, users, concurrency, pb).await?;
                let made = futures::stream::iter(rooms.iter().enumerate())
                    .map(|(r, members)| {
                        let api = api.clone();
                        let owner = members.first().map(|&m| accounts[m].clone());
                        let others: Vec<_> = members
                            .iter()
                            .skip(1)
                            .map(|&m| accounts[m].user_id)
                            .collect();
                        async move {
                            let Some(owner) = owner else {
                                anyhow::bail!("group {r} has no members");
                            };
                            let name = format!("peers {r}");
                            let chat = api.create_chat(&owner, &name, &others).await?;
                            Ok(Room::Chat(chat.chat_id))
                        }
                    })
                    .buffered(concurrency.max(1))
                    .collect::<Vec<_>>()
                    .await;
                Ok(Cast {
                    members: accounts.into_iter().map(Member::ChatServer).collect(),
                    rooms: made.into_iter().collect::<anyhow::Result<_>>()?,
                })
            }
            Peer::Centrifugo(server) => {
                let members = (0..users)
                    .map(|u| Member::Centrifugo {
                        token: server.token(&format!("{prefix}-{u}")),
                    })
                    .collect();
                pb.inc(users as u64);
                let rooms = (0..rooms.len())
                    .map(|r| Room::Channel(format!("chat:{prefix}-{r}")))
                    .collect();
                Ok(Cast { members, rooms })
            }
        }
    }

    /// Opens `member`'s WebSocket (from `source` if given), subscribed to `room`. chat-server
    /// subscribes a connection to all its user's chats itself and answers with `ready`;
    /// Centrifugo gets `connect` and one `subscribe`.
    pub async fn open(
        &self,
        member: &Member,
        room: &Room,
        source: Option<IpAddr>,
        read_buffer: usize,
    ) -> anyhow::Result<WsStream> {
        match (self, member, room) {
            (Peer::ChatServer(target), Member::ChatServer(account), Room::Chat(_)) => {
                Ok(connect(target, &account.token, source, read_buffer)
                    .await?
                    .0)
            }
            (Peer::Centrifugo(server), Member::Centrifugo { token }, Room::Channel(channel)) => {
                server
                    .open(token, std::slice::from_ref(channel), source, read_buffer)
                    .await
            }
            _ => anyhow::bail!("a member or group of another server"),
        }
    }

    /// A client for sending (chat-server's REST API, Centrifugo's server API).
    pub fn publisher(&self) -> anyhow::Result<Publisher> {
        Ok(match self {
            Peer::ChatServer(target) => Publisher::ChatServer(Api::new(target)?),
            Peer::Centrifugo(server) => Publisher::Centrifugo(HttpApi::new(server)?),
        })
    }
}

/// Sends messages into groups over HTTP (a shared connection pool; cheap to clone).
#[derive(Clone, Debug)]
pub enum Publisher {
    /// `POST /v1/send` as the sender.
    ChatServer(Api),
    /// `POST /api/publish` (the sender is the application backend).
    Centrifugo(HttpApi),
}

impl Publisher {
    /// Sends `text` into `room`, as `sender` where the server knows senders; returns once the
    /// server answered (chat-server: stored; Centrifugo: accepted for delivery).
    pub async fn publish(&self, sender: &Member, room: &Room, text: String) -> anyhow::Result<()> {
        match (self, sender, room) {
            (Publisher::ChatServer(api), Member::ChatServer(account), Room::Chat(chat_id)) => {
                let req = SendRequest {
                    user_id: None,
                    chat_id: *chat_id,
                    msg_text: text,
                    timestamp: Some(chat_core::ids::now_millis()),
                    client_msg_id: None,
                    reply_to_seq: None,
                };
                api.send(account, &req).await.map(drop)
            }
            (Publisher::Centrifugo(api), _, Room::Channel(channel)) => {
                api.publish(channel, &text).await
            }
            _ => anyhow::bail!("a member or group of another server"),
        }
    }
}

impl Protocol {
    /// Calls `f` with each event of one text frame (chat-server: one frame, one event;
    /// Centrifugo: one event per line).
    pub fn events<'a>(self, frame: &'a str, mut f: impl FnMut(Event<'a>)) {
        match self {
            Protocol::ChatServer => f(match classify(frame) {
                Frame::Message(lg) => Event::Delivery(lg),
                Frame::Error(raw) => Event::Error(raw),
                _ => Event::Other,
            }),
            Protocol::Centrifugo => {
                for line in centrifugo::lines(frame) {
                    f(match centrifugo::classify(line) {
                        Reply::Ping => Event::Ping,
                        Reply::Publication(Some(lg)) => Event::Delivery(lg),
                        Reply::Result { error: Some(_), .. } => Event::Error(line),
                        _ => Event::Other,
                    });
                }
            }
        }
    }

    /// The answer to a protocol-level ping, if this protocol has one (chat-server uses
    /// WebSocket pings, which tungstenite answers by itself).
    pub fn pong(self) -> Option<&'static str> {
        match self {
            Protocol::ChatServer => None,
            Protocol::Centrifugo => Some(centrifugo::PONG),
        }
    }
}
