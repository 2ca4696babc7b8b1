//! Create a chat (`POST /v1/chats`): the creator becomes its owner; every member's connections
//! hear of it.

use super::publish;
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::{ChatView, CreateChatRequest};
use chat_core::{Error, Event, NewChat, Result, Seq, Topic, UserId};
use std::collections::BTreeSet;

/// Creates the chat and publishes it to each member's topic.
pub(crate) async fn run(st: &AppState, caller: UserId, req: CreateChatRequest) -> Result<ChatView> {
    let limits = &st.config.limits;
    let chat_name = limits.chat_name(&req.chat_name)?;
    let others: BTreeSet<UserId> = req
        .member_ids
        .into_iter()
        .filter(|&u| u != caller)
        .collect();
    if others.len() + 1 > limits.max_members {
        return Err(Error::InvalidArgument(format!(
            "a chat has at most {} members",
            limits.max_members
        )));
    }
    let (chat, members) = st
        .metadata
        .create_chat(NewChat {
            chat_name,
            owner_id: caller,
            member_ids: others.into_iter().collect(),
            created_at: now_millis(),
        })
        .await?;
    let view = super::show_chat::assemble(st, chat, members, Seq::ZERO).await?;
    // Every member's live connections (the creator's other devices included) learn of it.
    for &u in &view.member_ids {
        publish(
            st,
            Topic::User(u),
            Event::ChatUpdated { chat: view.clone() },
        )
        .await;
    }
    Ok(view)
}
