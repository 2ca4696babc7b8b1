//! Run with: cargo run -p examples --example bot -- --server http://127.0.0.1:8080 --email bot@example.com --password 'bot password'
//!
//! A bot that answers every new message in the chats it belongs to: `/time` gets the server-
//! independent UTC time, `/help` a short usage line, anything else an echo (`bot: <text>`).
//! Add it to a chat with `/add BOT_USER_ID` in the `chat` example; it prints its user id on start.
//!
//! It never answers itself (messages whose sender is the bot) nor other bots (text starting with
//! `bot:`), so two bots in one chat do not talk forever. When added to a chat it skips the
//! chat's earlier history (the SDK delivers it, see `chat_client::subscription`), answering only
//! messages that arrive after it joined.

use anyhow::Context as _;
use chat_client::{ChatId, Client, Event, Message, Seq, UserId};
use clap::Parser;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "Echo bot for the chat server")]
struct Args {
    /// Server URL.
    #[arg(long, env = "CHAT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A PEM file of extra root certificates to trust for an `https://` server.
    #[arg(long, env = "CHAT_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// The bot's email (registered on first use).
    #[arg(long, env = "CHAT_EMAIL")]
    email: String,
    /// The bot's password.
    #[arg(long, env = "CHAT_PASSWORD")]
    password: String,
}

/// The prefix of every answer, and how the bot recognises other bots.
const PREFIX: &str = "bot:";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let args = Args::parse();
    let client = examples::sign_in(
        &args.server,
        args.ca_cert.as_deref(),
        &args.email,
        &args.password,
        Some("bot"),
    )
    .await?;
    let me = client.me().await.context("reading the bot's account")?;
    println!("bot is user {}; add it to a chat to talk to it", me.user_id);

    let mut events = client.subscribe().await.context("subscribing")?;
    // Per chat joined while running: the last seq that was already history when it joined.
    let mut history_until: HashMap<ChatId, Seq> = HashMap::new();
    while let Some(event) = events.next().await {
        match event {
            // Nothing taken from this chat yet: it is one the bot just joined.
            Event::ChatUpdated(chat) if events.position(chat.chat_id) == Some(Seq::ZERO) => {
                history_until.entry(chat.chat_id).or_insert(chat.last_seq);
                println!("joined chat {} ({})", chat.chat_id, chat.chat_name);
            }
            Event::Message(m) => {
                let is_history = history_until
                    .get(&m.chat_id)
                    .is_some_and(|&until| m.seq <= until);
                if !is_history {
                    answer(&client, me.user_id, &m).await;
                }
            }
            Event::RemovedFromChat(chat) => println!("removed from chat {chat}"),
            Event::Disconnected {
                reason,
                reconnecting: false,
                ..
            } => anyhow::bail!("disconnected for good: {reason}"),
            _ => {}
        }
    }
    Ok(())
}

/// Answers one message, unless it is the bot's own or another bot's.
async fn answer(client: &Client, me: UserId, m: &Message) {
    if m.sender_id == me || m.msg_text.starts_with(PREFIX) {
        return;
    }
    let reply = match m.msg_text.trim() {
        "/time" => format!("{PREFIX} it is {} UTC", utc_now()),
        "/help" => format!("{PREFIX} I answer /time, and echo everything else"),
        text => format!("{PREFIX} {text}"),
    };
    if let Err(e) = client.send(m.chat_id, &reply).await {
        eprintln!("could not answer in chat {}: {e}", m.chat_id);
    }
}

/// The time of day in UTC as HH:MM:SS (no calendar crate needed for a clock).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}
