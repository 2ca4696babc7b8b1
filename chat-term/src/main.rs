//! Run with: cargo run --release -p chat-term -- --server http://127.0.0.1:8080 --email ada@example.com --password 'correct horse'
//!
//! A line-based terminal chat client. It logs in (registering the account on first use), shows
//! your chats with their unread counts, and then prints live messages of every chat while
//! reading lines from stdin: a plain line is sent to the current chat, and a few slash commands
//! manage chats. Messages show their sender's display name; "X is typing…", people coming
//! online and going offline, and other members' read receipts show as they happen. What is
//! printed in the current chat counts as read.
//!
//! ```text
//! /chats                   list your chats
//! /create NAME [USER_ID..] create a chat (with these members) and make it current
//! /join CHAT_ID            make a chat current and print its latest messages
//! /add USER_ID             add a user to the current chat
//! /leave                   leave the current chat
//! /reply SEQ TEXT          reply to message SEQ of the current chat
//! /edit SEQ TEXT           change the text of your message SEQ
//! /delete SEQ              delete message SEQ (yours, or any as the chat's owner or an admin)
//! /react SEQ EMOJI         react to message SEQ (again with /unreact SEQ EMOJI to take it back)
//! /dm USER                 open (or start) the direct chat with USER (an id or an email)
//! /who                     members of the current chat, with their role and who is online
//! /read                    list who has read how far in the current chat
//! /name NAME               change your display name
//! /rename NAME             rename the current chat (owner or admin)
//! /admin USER_ID           make a member an admin (owner); /unadmin USER_ID takes it back
//! /search WORDS            messages with all these words in your chats, newest first
//! /search! WORDS           the same, in the current chat only
//! /me                      show who you are
//! /quit                    exit
//! //text                   send "/text" (e.g. `//time` asks the bot example for the time)
//! ```

use anyhow::Context as _;
use chat_client::{
    ChatId, ChatKind, Client, Event, FetchOptions, Message, Role, SearchOptions, Seq, UserId,
};
use clap::Parser;
use futures::StreamExt;
use std::collections::HashMap;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "Terminal chat client for the chat server")]
struct Args {
    /// Server URL.
    #[arg(long, env = "CHAT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A PEM file of extra root certificates to trust for an `https://` server (a private CA or a
    /// self-signed certificate).
    #[arg(long, env = "CHAT_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Your email (the account is registered on first use).
    #[arg(long, env = "CHAT_EMAIL")]
    email: String,
    /// Your password.
    #[arg(long, env = "CHAT_PASSWORD")]
    password: String,
    /// Display name used when registering.
    #[arg(long)]
    name: Option<String>,
    /// How many messages of history `/join` prints.
    #[arg(long, default_value_t = 20)]
    history: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_term::init_tracing();
    let args = Args::parse();
    let client = chat_term::sign_in(
        &args.server,
        args.ca_cert.as_deref(),
        &args.email,
        &args.password,
        args.name.as_deref(),
    )
    .await?;
    let me = client.me().await.context("reading your account")?;
    println!(
        "Signed in as {} (user {}). Type /help for commands.",
        me.display_name, me.user_id
    );

    let mut session = Session {
        client: client.clone(),
        me: me.user_id,
        current: None,
        history: args.history,
        outbox: spawn_sender(client.clone()),
        names: HashMap::from([(me.user_id, me.display_name.clone())]),
    };
    session.list_chats().await;

    let mut events = client.subscribe().await.context("subscribing")?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line.context("reading stdin")? else { break };
                if !session.command(line.trim()).await {
                    break;
                }
            }
            event = events.next() => {
                let Some(event) = event else { break };
                session.show(event).await;
            }
        }
    }
    Ok(())
}

/// How many results `/search` prints.
const SEARCH_PAGE: u32 = 20;

/// Sends queued lines one after another, so typing never waits for the network and the lines
/// of one chat keep their order.
fn spawn_sender(client: Client) -> mpsc::UnboundedSender<(ChatId, String)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(ChatId, String)>();
    tokio::spawn(async move {
        while let Some((chat_id, text)) = rx.recv().await {
            if let Err(e) = client.send(chat_id, &text).await {
                eprintln!("! not sent to chat {chat_id}: {e}");
            }
        }
    });
    tx
}

/// The interactive state.
struct Session {
    client: Client,
    me: UserId,
    current: Option<ChatId>,
    history: u32,
    outbox: mpsc::UnboundedSender<(ChatId, String)>,
    /// Display names already looked up.
    names: HashMap<UserId, String>,
}

impl Session {
    /// Runs one input line; `false` means quit.
    async fn command(&mut self, line: &str) -> bool {
        if line.is_empty() {
            return true;
        }
        let mut words = line.split_whitespace();
        let result = match words.next().unwrap_or_default() {
            "/quit" | "/exit" => return false,
            "/help" => {
                println!("/chats | /create NAME [USER_ID..] | /join CHAT_ID | /add USER_ID | /leave | /me | /quit | //text sends /text");
                println!("/reply SEQ TEXT | /edit SEQ TEXT | /delete SEQ | /react SEQ EMOJI | /unreact SEQ EMOJI");
                println!("/dm USER | /who | /read | /name NAME | /rename NAME | /admin USER_ID | /unadmin USER_ID");
                println!("/search WORDS (all your chats) | /search! WORDS (the current chat)");
                Ok(())
            }
            "/chats" => {
                self.list_chats().await;
                Ok(())
            }
            "/me" => {
                println!("you are user {}", self.me);
                Ok(())
            }
            "/create" => self.create(words.collect()).await,
            "/join" => match words.next().map(str::parse::<i64>) {
                Some(Ok(id)) => self.join(ChatId(id)).await,
                _ => Err(anyhow::anyhow!("usage: /join CHAT_ID")),
            },
            "/add" => match (self.current, words.next().map(str::parse::<i64>)) {
                (Some(chat), Some(Ok(user))) => self
                    .client
                    .add_member(chat, UserId(user))
                    .await
                    .map(|()| println!("added user {user} to chat {chat}"))
                    .map_err(Into::into),
                (None, _) => Err(anyhow::anyhow!("pick a chat first: /join CHAT_ID")),
                _ => Err(anyhow::anyhow!("usage: /add USER_ID")),
            },
            "/leave" => match self.current.take() {
                Some(chat) => self
                    .client
                    .remove_member(chat, self.me)
                    .await
                    .map(|()| println!("left chat {chat}"))
                    .map_err(Into::into),
                None => Err(anyhow::anyhow!("no current chat")),
            },
            "/dm" => match words.next() {
                Some(who) => self.direct(who).await,
                None => Err(anyhow::anyhow!("usage: /dm USER_ID or /dm EMAIL")),
            },
            cmd @ ("/search" | "/search!") => {
                let words = line[cmd.len()..].trim();
                let only = if cmd == "/search!" {
                    self.current
                } else {
                    None
                };
                if cmd == "/search!" && only.is_none() {
                    Err(anyhow::anyhow!("pick a chat first: /join CHAT_ID"))
                } else if words.is_empty() {
                    Err(anyhow::anyhow!("usage: /search WORDS"))
                } else {
                    self.search(words, only).await
                }
            }
            "/who" => self.who().await,
            "/read" => self.receipts().await,
            "/name" => {
                let name = line["/name".len()..].trim();
                match self.client.set_display_name(name).await {
                    Ok(u) => {
                        println!("you are now {}", u.display_name);
                        self.names.insert(u.user_id, u.display_name);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            "/rename" => match self.current {
                Some(chat) => self
                    .client
                    .rename_chat(chat, line["/rename".len()..].trim())
                    .await
                    .map(|c| println!("chat {} is now {:?}", c.chat_id, c.chat_name))
                    .map_err(Into::into),
                None => Err(anyhow::anyhow!("pick a chat first: /join CHAT_ID")),
            },
            cmd @ ("/admin" | "/unadmin") => {
                let role = if cmd == "/admin" {
                    Role::Admin
                } else {
                    Role::Member
                };
                match (self.current, words.next().map(str::parse::<i64>)) {
                    (Some(chat), Some(Ok(user))) => self
                        .client
                        .set_role(chat, UserId(user), role)
                        .await
                        .map(|r| {
                            println!(
                                "user {} is now {:?} of chat {}",
                                r.user_id, r.role, r.chat_id
                            )
                        })
                        .map_err(Into::into),
                    (None, _) => Err(anyhow::anyhow!("pick a chat first: /join CHAT_ID")),
                    _ => Err(anyhow::anyhow!("usage: {cmd} USER_ID")),
                }
            }
            cmd @ ("/reply" | "/edit" | "/delete" | "/react" | "/unreact") => {
                self.change(cmd, line).await
            }
            cmd if cmd.starts_with("//") => self.say(&line[1..]),
            cmd if cmd.starts_with('/') => Err(anyhow::anyhow!("unknown command {cmd}; try /help")),
            _ => self.say(line),
        };
        if let Err(e) = result {
            eprintln!("! {e}");
        }
        true
    }

    /// Queues a line for the current chat.
    fn say(&self, text: &str) -> anyhow::Result<()> {
        let Some(chat) = self.current else {
            anyhow::bail!("pick a chat first: /join CHAT_ID or /create NAME");
        };
        // The sender task only stops when the program does.
        let _ = self.outbox.send((chat, text.to_owned()));
        Ok(())
    }

    /// `/reply`, `/edit`, `/delete`, `/react` and `/unreact` on a message of the current chat.
    /// The result shows up as a live event, like everyone else's changes.
    async fn change(&self, cmd: &str, line: &str) -> anyhow::Result<()> {
        let Some(chat) = self.current else {
            anyhow::bail!("pick a chat first: /join CHAT_ID");
        };
        // The command, the seq, and the rest of the line as it was typed.
        let rest = line[cmd.len()..].trim_start();
        let (seq, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let seq = Seq(seq
            .parse::<i64>()
            .with_context(|| format!("usage: {cmd} SEQ ..."))?);
        let arg = arg.trim();
        let needs_arg = cmd != "/delete";
        if needs_arg && arg.is_empty() {
            anyhow::bail!(
                "usage: {cmd} SEQ {}",
                if cmd.ends_with("react") {
                    "EMOJI"
                } else {
                    "TEXT"
                }
            );
        }
        let c = &self.client;
        match cmd {
            "/reply" => c.reply(chat, seq, arg).await.map(drop),
            "/edit" => c.edit(chat, seq, arg).await.map(drop),
            "/delete" => c.delete_message(chat, seq).await.map(drop),
            "/react" => c.react(chat, seq, arg).await.map(drop),
            _ => c.unreact(chat, seq, arg).await.map(drop),
        }
        .map_err(Into::into)
    }

    /// The chats, latest activity first, with unread counts and the last message.
    async fn list_chats(&mut self) {
        match self.client.list_chats().await {
            Ok(chats) if chats.is_empty() => println!("No chats yet: /create NAME [USER_ID..]"),
            Ok(chats) => {
                for c in chats {
                    let mark = if Some(c.chat_id) == self.current {
                        "*"
                    } else {
                        " "
                    };
                    let kind = if c.kind == ChatKind::Direct {
                        "dm"
                    } else {
                        "  "
                    };
                    let unread = if c.unread_count > 0 {
                        format!("({} unread)", c.unread_count)
                    } else {
                        String::new()
                    };
                    let last = match &c.last_message {
                        Some(m) if m.deleted => "(deleted)".to_owned(),
                        Some(m) => {
                            let who = self.name_of(m.sender_id).await;
                            let text: String = m.msg_text.chars().take(40).collect();
                            format!("{who}: {text}")
                        }
                        None => String::new(),
                    };
                    println!(
                        "{mark} {kind} chat {:>4}  {:<24} {:<12} {last}",
                        c.chat_id, c.chat_name, unread
                    );
                }
            }
            Err(e) => eprintln!("! listing chats: {e}"),
        }
    }

    /// `/search WORDS`: the newest matches (one page of [`SEARCH_PAGE`]), in every chat or in
    /// `only`, each with its chat, `seq` and age.
    async fn search(&mut self, words: &str, only: Option<ChatId>) -> anyhow::Result<()> {
        let mut options = SearchOptions::new(words).limit(SEARCH_PAGE);
        if let Some(chat) = only {
            options = options.chat(chat);
        }
        let page = self.client.search_page(&options).await?;
        if page.messages.is_empty() {
            println!("No messages with {words:?}.");
        }
        for m in &page.messages {
            let who = if m.sender_id == self.me {
                "me".to_owned()
            } else {
                self.name_of(m.sender_id).await
            };
            println!(
                "[chat {}] #{} {who} ({}): {}",
                m.chat_id,
                m.seq,
                ago(m.sent_at),
                m.msg_text
            );
        }
        if page.next_page_token.is_some() {
            println!("(only the newest {SEARCH_PAGE}; add words to narrow it down)");
        }
        Ok(())
    }

    /// A user's display name, looked up once.
    async fn name_of(&mut self, user: UserId) -> String {
        if let Some(n) = self.names.get(&user) {
            return n.clone();
        }
        match self.client.user(user).await {
            Ok(u) => {
                self.names.insert(user, u.display_name.clone());
                u.display_name
            }
            Err(_) => format!("user {user}"),
        }
    }

    /// `/dm USER`: the direct chat with a user given by id or email becomes current.
    async fn direct(&mut self, who: &str) -> anyhow::Result<()> {
        let user = match who.parse::<i64>() {
            Ok(id) => UserId(id),
            Err(_) => self.client.find_user(who).await?.user_id,
        };
        let chat = self.client.direct_chat(user).await?;
        self.join(chat.chat_id).await
    }

    /// `/who`: the current chat's members, their roles and who is online.
    async fn who(&mut self) -> anyhow::Result<()> {
        let Some(chat) = self.current else {
            anyhow::bail!("pick a chat first: /join CHAT_ID");
        };
        let chat = self.client.chat(chat).await?;
        let presence = self.client.presence(&chat.member_ids).await?;
        for m in &chat.members {
            self.names.insert(m.user_id, m.display_name.clone());
            let p = presence.iter().find(|p| p.user_id == m.user_id);
            let status = match p {
                Some(p) if p.online => "online".to_owned(),
                Some(p) => match p.last_seen {
                    Some(t) => format!("last seen {}", ago(t)),
                    None => "offline".to_owned(),
                },
                None => String::new(),
            };
            println!(
                "  {:<24} {:<7} {status}",
                m.display_name,
                format!("{:?}", m.role).to_lowercase()
            );
        }
        Ok(())
    }

    /// `/read`: how far each member has read the current chat.
    async fn receipts(&mut self) -> anyhow::Result<()> {
        let Some(chat) = self.current else {
            anyhow::bail!("pick a chat first: /join CHAT_ID");
        };
        for r in self.client.receipts(chat).await? {
            let name = self.name_of(r.user_id).await;
            println!("  {name:<24} read up to #{}", r.last_read_seq);
        }
        Ok(())
    }

    /// Marks the current chat read up to `seq`, in the background.
    fn read_up_to(&self, chat: ChatId, seq: Seq) {
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.mark_read(chat, seq).await {
                tracing::debug!(error = %e, "marking read failed");
            }
        });
    }

    async fn create(&mut self, words: Vec<&str>) -> anyhow::Result<()> {
        let Some((name, ids)) = words.split_first() else {
            anyhow::bail!("usage: /create NAME [USER_ID..]");
        };
        let members = ids
            .iter()
            .map(|w| w.parse::<i64>().map(UserId))
            .collect::<Result<Vec<_>, _>>()
            .context("user ids are numbers")?;
        let chat = self.client.create_chat(name, &members).await?;
        println!("created chat {} ({})", chat.chat_id, chat.chat_name);
        self.current = Some(chat.chat_id);
        Ok(())
    }

    async fn join(&mut self, chat_id: ChatId) -> anyhow::Result<()> {
        let chat = self.client.chat(chat_id).await?;
        let page = self
            .client
            .fetch(chat_id, FetchOptions::latest(self.history))
            .await?;
        println!(
            "--- chat {} ({}), {} members, {} messages ---",
            chat.chat_id,
            chat.chat_name,
            chat.member_ids.len(),
            chat.last_seq
        );
        for m in &chat.members {
            self.names.insert(m.user_id, m.display_name.clone());
        }
        self.current = Some(chat_id);
        for m in &page.messages {
            self.print_message(m).await;
        }
        if chat.last_seq > Seq::ZERO {
            self.read_up_to(chat_id, chat.last_seq);
        }
        Ok(())
    }

    async fn show(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                self.print_message(&m).await;
                if Some(m.chat_id) == self.current && m.sender_id != self.me {
                    self.read_up_to(m.chat_id, m.seq);
                }
            }
            Event::MessageUpdated(m) => {
                print!("~ ");
                self.print_message(&m).await;
            }
            Event::Typing {
                chat_id, user_id, ..
            } if user_id != self.me => {
                let who = self.name_of(user_id).await;
                let here = if Some(chat_id) == self.current {
                    String::new()
                } else {
                    format!(" in chat {chat_id}")
                };
                println!("* {who} is typing…{here}");
            }
            Event::Presence {
                user_id, online, ..
            } => {
                let who = self.name_of(user_id).await;
                println!("* {who} is {}", if online { "online" } else { "offline" });
            }
            Event::Read {
                chat_id,
                user_id,
                last_read_seq,
            } => {
                if Some(chat_id) == self.current && user_id != self.me {
                    let who = self.name_of(user_id).await;
                    println!("* {who} read up to #{last_read_seq}");
                }
            }
            Event::ChatUpdated(chat) => println!(
                "* chat {} ({}) now has {} members",
                chat.chat_id,
                chat.chat_name,
                chat.member_ids.len()
            ),
            Event::RemovedFromChat(chat) => println!("* you are no longer in chat {chat}"),
            Event::Connected => {}
            Event::Disconnected {
                reason,
                reconnecting,
                ..
            } => {
                if reconnecting {
                    eprintln!("* connection lost ({reason}); reconnecting");
                } else {
                    eprintln!("* disconnected: {reason}");
                }
            }
            other => println!("* {other:?}"),
        }
    }

    async fn print_message(&mut self, m: &Message) {
        let who = if m.sender_id == self.me {
            "me".to_owned()
        } else {
            self.name_of(m.sender_id).await
        };
        let here = if Some(m.chat_id) == self.current {
            String::new()
        } else {
            format!("[chat {}] ", m.chat_id)
        };
        let reply = m
            .reply_to_seq
            .map(|r| format!("(re #{r}) "))
            .unwrap_or_default();
        let text = if m.deleted {
            "(deleted)".to_owned()
        } else if m.edited_at.is_some() {
            format!("{} (edited)", m.msg_text)
        } else {
            m.msg_text.clone()
        };
        let reactions: Vec<String> = m
            .reactions
            .iter()
            .map(|r| format!("{} {}", r.emoji, r.count))
            .collect();
        let reactions = if reactions.is_empty() {
            String::new()
        } else {
            format!("  [{}]", reactions.join(", "))
        };
        println!("{here}#{} {who}: {reply}{text}{reactions}", m.seq);
    }
}

/// "5 min ago" for a time in Unix milliseconds.
fn ago(t: chat_client::Millis) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let secs = (now - t).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}
