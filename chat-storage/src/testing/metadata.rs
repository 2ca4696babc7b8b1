//! The [`MetadataStore`] half of the conformance suite: users, sessions, chats and memberships,
//! display names, roles, direct chats and read markers.
//!
//! Every function takes a fresh store by value and panics on a broken contract. Each test makes
//! its own users with random emails and uses random ids for things that must not exist, so a
//! shared database is fine.

use super::{random_id, random_suffix};
use chat_core::ids::now_millis;
use chat_core::{
    Chat, ChatId, ChatKind, Error, Member, MetadataStore, NewChat, NewSession, NewUser, ReadMarker,
    Role, Seq, TokenHash, User, UserChat, UserId,
};
use std::sync::Arc;

/// A unique, normalised email.
fn fresh_email(tag: &str) -> String {
    format!("{tag}-{}@example.test", random_suffix())
}

/// A new user with a unique email.
fn new_user(tag: &str) -> NewUser {
    NewUser {
        email: fresh_email(tag),
        display_name: format!("User {tag}"),
        pw_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${tag}$hash"),
        created_at: now_millis(),
    }
}

/// Creates a user and returns it.
async fn make_user<S: MetadataStore + ?Sized>(store: &S, tag: &str) -> User {
    store.create_user(new_user(tag)).await.expect("create_user")
}

/// A random 32-byte token hash.
fn token_hash() -> TokenHash {
    use rand::RngCore;
    let mut h = [0_u8; 32];
    rand::thread_rng().fill_bytes(&mut h);
    TokenHash(h)
}

/// A user id that no user has.
fn unknown_user() -> UserId {
    UserId(random_id())
}

/// A chat id that no chat has.
fn unknown_chat() -> ChatId {
    ChatId(random_id())
}

/// Creates a chat owned by `owner` with `members`.
async fn make_chat<S: MetadataStore + ?Sized>(
    store: &S,
    name: &str,
    owner: UserId,
    members: &[UserId],
) -> (Chat, Vec<Member>) {
    store
        .create_chat(NewChat {
            chat_name: name.to_owned(),
            owner_id: owner,
            member_ids: members.to_vec(),
            created_at: now_millis(),
        })
        .await
        .expect("create_chat")
}

/// Members sorted by user id, to compare regardless of the order a store returns them in.
fn sorted(mut members: Vec<Member>) -> Vec<Member> {
    members.sort_by_key(|m| m.user_id);
    members
}

/// A created user reads back by id, with its fields as given; ids are distinct and positive.
pub async fn create_and_get_user<S: MetadataStore>(store: S) {
    let input = new_user("alice");
    let user = store.create_user(input.clone()).await.expect("create_user");
    assert!(user.user_id.get() > 0, "user ids are positive");
    assert_eq!(user.email, input.email);
    assert_eq!(user.display_name, input.display_name);
    assert_eq!(user.created_at, input.created_at);
    assert_eq!(
        store.user(user.user_id).await.expect("user"),
        Some(user.clone())
    );

    let other = make_user(&store, "bob").await;
    assert_ne!(other.user_id, user.user_id);
    assert_eq!(store.user(other.user_id).await.expect("user"), Some(other));
}

/// An id no user has reads as `None`.
pub async fn unknown_user_is_none<S: MetadataStore>(store: S) {
    assert_eq!(store.user(unknown_user()).await.expect("user"), None);
    let email = fresh_email("nobody");
    assert_eq!(
        store.user_credentials(&email).await.expect("credentials"),
        None
    );
}

/// A second user with a taken email is `Conflict`, and the first user is unchanged.
pub async fn duplicate_email_is_conflict<S: MetadataStore>(store: S) {
    let first = make_user(&store, "dup").await;
    let mut again = new_user("dup2");
    again.email = first.email.clone();
    again.display_name = "Impostor".to_owned();
    match store.create_user(again).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("a taken email must be Conflict, got {other:?}"),
    }
    let creds = store
        .user_credentials(&first.email)
        .await
        .expect("credentials")
        .expect("the first user is still there");
    assert_eq!(creds.user, first);
    // The store still works after the failed write.
    make_user(&store, "after-dup").await;
}

/// Eight concurrent registrations with one email create exactly one user; the rest are
/// `Conflict`.
pub async fn concurrent_duplicate_emails_create_one_user<S: MetadataStore>(store: S) {
    let store = Arc::new(store);
    let input = new_user("race");
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let input = input.clone();
        handles.push(tokio::spawn(async move { store.create_user(input).await }));
    }
    let mut created = Vec::new();
    for h in handles {
        match h.await.expect("create task") {
            Ok(u) => created.push(u),
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("a taken email must be Conflict, got {e:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one registration wins");
    let creds = store
        .user_credentials(&input.email)
        .await
        .expect("credentials")
        .expect("the winner is stored");
    assert_eq!(creds.user, created[0]);
}

/// `user_credentials` finds a user by email with the password hash.
pub async fn user_credentials_by_email<S: MetadataStore>(store: S) {
    let input = new_user("carol");
    let user = store.create_user(input.clone()).await.expect("create_user");
    let creds = store
        .user_credentials(&input.email)
        .await
        .expect("credentials")
        .expect("found by email");
    assert_eq!(creds.user, user);
    assert_eq!(creds.pw_hash, input.pw_hash);
}

/// Sessions: create, read (expired or not), delete (true once, then false).
pub async fn session_create_get_delete<S: MetadataStore>(store: S) {
    let user = make_user(&store, "sess").await;
    let now = now_millis();
    let live = token_hash();
    let second = token_hash();
    store
        .create_session(NewSession {
            token_hash: live,
            user_id: user.user_id,
            created_at: now,
            expires_at: now + 3_600_000,
        })
        .await
        .expect("create_session");
    // A second session of the same user. Both expire in the future so that a concurrent
    // cleanup in a shared database keeps them.
    store
        .create_session(NewSession {
            token_hash: second,
            user_id: user.user_id,
            created_at: now,
            expires_at: now + 7_200_000,
        })
        .await
        .expect("create_session");

    let s = store
        .session(&live)
        .await
        .expect("session")
        .expect("live session");
    assert_eq!(s.user_id, user.user_id);
    assert_eq!(s.expires_at, now + 3_600_000);
    assert_eq!(store.session(&token_hash()).await.expect("session"), None);

    assert!(store.delete_session(&live).await.expect("delete_session"));
    assert_eq!(
        store.session(&live).await.expect("session"),
        None,
        "gone at once"
    );
    assert!(!store.delete_session(&live).await.expect("delete_session"));
    assert!(
        store.session(&second).await.expect("session").is_some(),
        "deleting one session keeps the others"
    );
}

/// `delete_expired_sessions(now)` removes the sessions that expired before `now`, keeps the
/// others, and counts what it removed.
pub async fn expired_sessions_are_cleaned_up<S: MetadataStore>(store: S) {
    let user = make_user(&store, "expiry").await;
    let now = now_millis();
    let expired: Vec<TokenHash> = (0..3).map(|_| token_hash()).collect();
    let live = token_hash();
    for (i, h) in expired.iter().enumerate() {
        let i = i64::try_from(i).expect("small");
        store
            .create_session(NewSession {
                token_hash: *h,
                user_id: user.user_id,
                created_at: now - 10_000_000,
                expires_at: now - 1_000_000 - i,
            })
            .await
            .expect("create_session");
        let s = store
            .session(h)
            .await
            .expect("session")
            .expect("expired but stored");
        assert!(s.expires_at < now);
    }
    store
        .create_session(NewSession {
            token_hash: live,
            user_id: user.user_id,
            created_at: now,
            expires_at: now + 3_600_000,
        })
        .await
        .expect("create_session");

    let removed = store.delete_expired_sessions(now).await.expect("cleanup");
    // `>=`: in a shared database other tests' expired sessions may go too.
    assert!(removed >= 3, "removed {removed}, expected at least our 3");
    for h in &expired {
        assert_eq!(store.session(h).await.expect("session"), None);
    }
    assert!(store.session(&live).await.expect("session").is_some());
}

/// `create_chat`: the owner gets `Owner`, the others `Member`; duplicates and the owner's own id
/// in the list are ignored; the chat reads back.
pub async fn create_chat_with_owner_and_members<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "owner").await;
    let a = make_user(&store, "a").await;
    let b = make_user(&store, "b").await;
    let input = NewChat {
        chat_name: "Project ✨".to_owned(),
        owner_id: owner.user_id,
        member_ids: vec![a.user_id, owner.user_id, b.user_id, a.user_id],
        created_at: 1_700_000_000_000,
    };
    let (chat, members) = store.create_chat(input).await.expect("create_chat");
    assert!(chat.chat_id.get() > 0);
    assert_eq!(chat.chat_name, "Project ✨");
    assert_eq!(chat.owner_id, owner.user_id);
    assert_eq!(chat.created_at, 1_700_000_000_000);
    let expected = sorted(vec![
        Member {
            user_id: owner.user_id,
            role: Role::Owner,
        },
        Member {
            user_id: a.user_id,
            role: Role::Member,
        },
        Member {
            user_id: b.user_id,
            role: Role::Member,
        },
    ]);
    assert_eq!(sorted(members), expected);
    assert_eq!(
        store.members(chat.chat_id).await.expect("members"),
        expected
    );
    assert_eq!(
        store.chat(chat.chat_id).await.expect("chat"),
        Some(chat.clone())
    );

    // A chat with no other members has just its owner.
    let (solo, solo_members) = make_chat(&store, "solo", owner.user_id, &[]).await;
    assert_ne!(solo.chat_id, chat.chat_id);
    assert_eq!(
        solo_members,
        vec![Member {
            user_id: owner.user_id,
            role: Role::Owner
        }]
    );
}

/// A member id that is no user makes `create_chat` fail with `NotFound`, creating nothing.
pub async fn create_chat_with_unknown_member_is_not_found_and_creates_nothing<S: MetadataStore>(
    store: S,
) {
    let owner = make_user(&store, "owner").await;
    let a = make_user(&store, "a").await;
    let result = store
        .create_chat(NewChat {
            chat_name: "doomed".to_owned(),
            owner_id: owner.user_id,
            member_ids: vec![a.user_id, unknown_user()],
            created_at: now_millis(),
        })
        .await;
    match result {
        Err(Error::NotFound(_)) => {}
        other => panic!("an unknown member must be NotFound, got {other:?}"),
    }
    assert!(store
        .chats_of_user(owner.user_id)
        .await
        .expect("chats")
        .is_empty());
    assert!(store
        .chats_of_user(a.user_id)
        .await
        .expect("chats")
        .is_empty());
    // The store still works after the failed write.
    let (chat, _) = make_chat(&store, "fine", owner.user_id, &[a.user_id]).await;
    assert_eq!(store.members(chat.chat_id).await.expect("members").len(), 2);
}

/// An id no chat has reads as `None`, with no members.
pub async fn unknown_chat_is_none<S: MetadataStore>(store: S) {
    let chat = unknown_chat();
    assert_eq!(store.chat(chat).await.expect("chat"), None);
    assert!(store.members(chat).await.expect("members").is_empty());
    assert_eq!(store.role(chat, unknown_user()).await.expect("role"), None);
}

/// `chats_of_user` lists every chat of the user with the user's role, ordered by chat id.
pub async fn chats_of_user_ordered_by_chat_id_with_roles<S: MetadataStore>(store: S) {
    let me = make_user(&store, "me").await;
    let other = make_user(&store, "other").await;
    let (c1, _) = make_chat(&store, "mine", me.user_id, &[other.user_id]).await;
    let (c2, _) = make_chat(&store, "theirs", other.user_id, &[me.user_id]).await;
    let (c3, _) = make_chat(&store, "not mine", other.user_id, &[]).await;
    let (c4, _) = make_chat(&store, "mine too", me.user_id, &[]).await;

    let mut expected = vec![
        (c1.clone(), Role::Owner),
        (c2.clone(), Role::Member),
        (c4.clone(), Role::Owner),
    ];
    expected.sort_by_key(|(c, _)| c.chat_id);
    assert_eq!(
        store.chats_of_user(me.user_id).await.expect("chats"),
        expected
    );

    let mut theirs = vec![(c1, Role::Member), (c2, Role::Owner), (c3, Role::Owner)];
    theirs.sort_by_key(|(c, _)| c.chat_id);
    assert_eq!(
        store.chats_of_user(other.user_id).await.expect("chats"),
        theirs
    );
    assert!(store
        .chats_of_user(unknown_user())
        .await
        .expect("chats")
        .is_empty());
}

/// `members` lists every member with their role, ordered by user id.
pub async fn members_ordered_by_user_id<S: MetadataStore>(store: S) {
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(make_user(&store, &format!("m{i}")).await);
    }
    // The owner is the last user created, members given in reverse: the order must still be by
    // user id.
    let owner = users[4].user_id;
    let ids: Vec<UserId> = users[..4].iter().rev().map(|u| u.user_id).collect();
    let (chat, _) = make_chat(&store, "ordered", owner, &ids).await;
    let members = store.members(chat.chat_id).await.expect("members");
    assert_eq!(members.len(), 5);
    assert!(
        members.windows(2).all(|w| w[0].user_id < w[1].user_id),
        "members ordered by user id: {members:?}"
    );
    for m in &members {
        let expected = if m.user_id == owner {
            Role::Owner
        } else {
            Role::Member
        };
        assert_eq!(m.role, expected);
        assert_eq!(
            store.role(chat.chat_id, m.user_id).await.expect("role"),
            Some(expected)
        );
    }
}

/// `role` is `None` for a user who is not a member, and for an unknown chat.
pub async fn role_of_non_member_is_none<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "owner").await;
    let outsider = make_user(&store, "outsider").await;
    let (chat, _) = make_chat(&store, "club", owner.user_id, &[]).await;
    assert_eq!(
        store.role(chat.chat_id, owner.user_id).await.expect("role"),
        Some(Role::Owner)
    );
    assert_eq!(
        store
            .role(chat.chat_id, outsider.user_id)
            .await
            .expect("role"),
        None
    );
    assert_eq!(
        store
            .role(unknown_chat(), owner.user_id)
            .await
            .expect("role"),
        None
    );
}

/// `add_member` returns `true` for a new member (with the given role) and `false` for an
/// existing one, whose role is left unchanged.
pub async fn add_member_true_then_false<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "owner").await;
    let admin = make_user(&store, "admin").await;
    let plain = make_user(&store, "plain").await;
    let (chat, _) = make_chat(&store, "grow", owner.user_id, &[]).await;
    let id = chat.chat_id;

    let admin_m = Member {
        user_id: admin.user_id,
        role: Role::Admin,
    };
    assert!(store
        .add_member(id, admin_m, 100)
        .await
        .expect("add_member"));
    assert_eq!(
        store.role(id, admin.user_id).await.expect("role"),
        Some(Role::Admin)
    );
    let plain_m = Member {
        user_id: plain.user_id,
        role: Role::Member,
    };
    assert!(store
        .add_member(id, plain_m, 100)
        .await
        .expect("add_member"));

    // Adding again, even with another role, changes nothing.
    let again = Member {
        user_id: admin.user_id,
        role: Role::Member,
    };
    assert!(!store.add_member(id, again, 100).await.expect("add_member"));
    assert_eq!(
        store.role(id, admin.user_id).await.expect("role"),
        Some(Role::Admin)
    );
    let owner_again = Member {
        user_id: owner.user_id,
        role: Role::Member,
    };
    assert!(!store
        .add_member(id, owner_again, 100)
        .await
        .expect("add_member"));
    assert_eq!(
        store.role(id, owner.user_id).await.expect("role"),
        Some(Role::Owner)
    );

    let members = store.members(id).await.expect("members");
    assert_eq!(
        sorted(members.clone()),
        sorted(vec![
            Member {
                user_id: owner.user_id,
                role: Role::Owner
            },
            admin_m,
            plain_m,
        ])
    );
    let listed = store.chats_of_user(plain.user_id).await.expect("chats");
    assert_eq!(listed, vec![(chat, Role::Member)]);
}

/// `add_member` to an unknown chat, or of an unknown user, is `NotFound`.
pub async fn add_member_unknown_chat_or_user_is_not_found<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "owner").await;
    let user = make_user(&store, "user").await;
    let (chat, _) = make_chat(&store, "c", owner.user_id, &[]).await;

    let m = Member {
        user_id: user.user_id,
        role: Role::Member,
    };
    match store.add_member(unknown_chat(), m, 100).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("an unknown chat must be NotFound, got {other:?}"),
    }
    let ghost = Member {
        user_id: unknown_user(),
        role: Role::Member,
    };
    match store.add_member(chat.chat_id, ghost, 100).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("an unknown user must be NotFound, got {other:?}"),
    }
    assert_eq!(store.members(chat.chat_id).await.expect("members").len(), 1);
    assert!(store
        .add_member(chat.chat_id, m, 100)
        .await
        .expect("add_member"));
}

/// A chat that already has `max_members` members refuses a new one with `InvalidArgument`;
/// re-adding an existing member still answers `false`.
pub async fn add_member_beyond_max_members_is_invalid_argument<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "owner").await;
    let a = make_user(&store, "a").await;
    let b = make_user(&store, "b").await;
    let c = make_user(&store, "c").await;
    let (chat, _) = make_chat(&store, "small", owner.user_id, &[a.user_id]).await;
    let id = chat.chat_id;

    let bm = Member {
        user_id: b.user_id,
        role: Role::Member,
    };
    assert!(store
        .add_member(id, bm, 3)
        .await
        .expect("add up to the limit"));
    let cm = Member {
        user_id: c.user_id,
        role: Role::Member,
    };
    match store.add_member(id, cm, 3).await {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("a full chat must be InvalidArgument, got {other:?}"),
    }
    assert_eq!(store.role(id, c.user_id).await.expect("role"), None);
    assert_eq!(store.members(id).await.expect("members").len(), 3);
    assert!(!store
        .add_member(id, bm, 3)
        .await
        .expect("existing member in a full chat"));

    assert!(store.remove_member(id, a.user_id).await.expect("remove"));
    assert!(store
        .add_member(id, cm, 3)
        .await
        .expect("room again after a removal"));
}

/// `remove_member` returns whether the user was a member; afterwards their role is `None` and the
/// chat is gone from their list at once.
pub async fn remove_member<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "owner").await;
    let a = make_user(&store, "a").await;
    let b = make_user(&store, "b").await;
    let (chat, _) = make_chat(&store, "shrink", owner.user_id, &[a.user_id, b.user_id]).await;
    let id = chat.chat_id;

    assert!(store.remove_member(id, a.user_id).await.expect("remove"));
    assert_eq!(
        store.role(id, a.user_id).await.expect("role"),
        None,
        "removal is seen at once"
    );
    assert!(store
        .chats_of_user(a.user_id)
        .await
        .expect("chats")
        .is_empty());
    assert!(!store
        .remove_member(id, a.user_id)
        .await
        .expect("remove again"));
    assert!(!store
        .remove_member(id, unknown_user())
        .await
        .expect("remove stranger"));
    assert!(!store
        .remove_member(unknown_chat(), b.user_id)
        .await
        .expect("unknown chat"));
    assert_eq!(
        store.members(id).await.expect("members"),
        sorted(vec![
            Member {
                user_id: owner.user_id,
                role: Role::Owner
            },
            Member {
                user_id: b.user_id,
                role: Role::Member
            },
        ])
    );
    // A removed member can be added back.
    let back = Member {
        user_id: a.user_id,
        role: Role::Member,
    };
    assert!(store.add_member(id, back, 100).await.expect("add back"));
    assert_eq!(
        store.role(id, a.user_id).await.expect("role"),
        Some(Role::Member)
    );
}

/// `health` answers `Ok` on a working store.
pub async fn metadata_health<S: MetadataStore>(store: S) {
    store.health().await.expect("health");
}

/// `users` reads several users at once and leaves unknown ids out.
pub async fn users_by_ids_leave_out_unknown<S: MetadataStore>(store: S) {
    let a = make_user(&store, "many-a").await;
    let b = make_user(&store, "many-b").await;
    let mut got = store
        .users(&[b.user_id, unknown_user(), a.user_id])
        .await
        .expect("users");
    got.sort_by_key(|u| u.user_id);
    assert_eq!(got, vec![a.clone(), b.clone()]);
    assert!(store.users(&[]).await.expect("no ids").is_empty());
}

/// A display name and a chat name change, read back everywhere at once; unknown ids are `None`.
pub async fn display_names_and_chat_names_change<S: MetadataStore>(store: S) {
    let a = make_user(&store, "rename-a").await;
    let changed = store
        .set_display_name(a.user_id, "Ada Lovelace")
        .await
        .expect("set_display_name")
        .expect("a known user");
    assert_eq!(changed.display_name, "Ada Lovelace");
    assert_eq!(changed.email, a.email, "only the name changes");
    assert_eq!(
        store.user(a.user_id).await.expect("user"),
        Some(changed.clone())
    );
    assert_eq!(
        store
            .user_credentials(&a.email)
            .await
            .expect("credentials")
            .expect("still there")
            .user,
        changed
    );
    assert_eq!(
        store
            .set_display_name(unknown_user(), "Nobody")
            .await
            .expect("unknown user"),
        None
    );

    let (chat, _) = make_chat(&store, "before", a.user_id, &[]).await;
    let renamed = store
        .rename_chat(chat.chat_id, "after")
        .await
        .expect("rename_chat")
        .expect("a known chat");
    assert_eq!(
        renamed,
        Chat {
            chat_name: "after".to_owned(),
            ..chat.clone()
        }
    );
    assert_eq!(
        store.chat(chat.chat_id).await.expect("chat"),
        Some(renamed.clone())
    );
    let listed = store.chats_of_user(a.user_id).await.expect("chats");
    assert_eq!(listed, vec![(renamed, Role::Owner)]);
    assert_eq!(
        store
            .rename_chat(unknown_chat(), "ghost")
            .await
            .expect("unknown chat"),
        None
    );
}

/// `set_role` grants and takes back admin; it is `false` for a non-member and an unknown chat.
pub async fn set_role_grants_and_takes_back_admin<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "role-owner").await;
    let m = make_user(&store, "role-m").await;
    let stranger = make_user(&store, "role-x").await;
    let (chat, _) = make_chat(&store, "roles", owner.user_id, &[m.user_id]).await;
    let id = chat.chat_id;

    assert!(store
        .set_role(id, m.user_id, Role::Admin)
        .await
        .expect("grant"));
    assert_eq!(
        store.role(id, m.user_id).await.expect("role"),
        Some(Role::Admin),
        "a grant is seen at once"
    );
    assert!(store.members(id).await.expect("members").contains(&Member {
        user_id: m.user_id,
        role: Role::Admin
    }));
    assert_eq!(
        store.chats_of_user(m.user_id).await.expect("chats"),
        vec![(chat.clone(), Role::Admin)]
    );
    assert!(store
        .set_role(id, m.user_id, Role::Member)
        .await
        .expect("take back"));
    assert_eq!(
        store.role(id, m.user_id).await.expect("role"),
        Some(Role::Member)
    );
    assert!(!store
        .set_role(id, stranger.user_id, Role::Admin)
        .await
        .expect("non-member"));
    assert_eq!(store.role(id, stranger.user_id).await.expect("role"), None);
    assert!(!store
        .set_role(unknown_chat(), m.user_id, Role::Admin)
        .await
        .expect("unknown chat"));
}

/// The direct chat of two people is created once and found again from either side; it has
/// exactly those two as members, `kind` direct, and no one can be added to it.
pub async fn direct_chat_is_one_per_pair<S: MetadataStore>(store: S) {
    let a = make_user(&store, "dm-a").await;
    let b = make_user(&store, "dm-b").await;
    let c = make_user(&store, "dm-c").await;
    let t = now_millis();
    let (chat, created) = store
        .direct_chat(a.user_id, b.user_id, "A & B", t)
        .await
        .expect("direct_chat");
    assert!(created, "the first call creates it");
    assert_eq!(chat.kind, ChatKind::Direct);
    assert_eq!(chat.owner_id, a.user_id);
    assert_eq!(chat.chat_name, "A & B");
    let (again, created) = store
        .direct_chat(b.user_id, a.user_id, "B & A", t)
        .await
        .expect("direct_chat reversed");
    assert!(!created, "the pair already has one");
    assert_eq!(again, chat, "the other side finds the same chat");
    assert_eq!(
        store.chat(chat.chat_id).await.expect("chat"),
        Some(chat.clone())
    );
    assert_eq!(
        store.members(chat.chat_id).await.expect("members"),
        sorted(vec![
            Member {
                user_id: a.user_id,
                role: Role::Member
            },
            Member {
                user_id: b.user_id,
                role: Role::Member
            },
        ])
    );
    // A different pair gets a different chat.
    let (other, created) = store
        .direct_chat(a.user_id, c.user_id, "A & C", t)
        .await
        .expect("another pair");
    assert!(created);
    assert_ne!(other.chat_id, chat.chat_id);
    // No third member.
    match store
        .add_member(
            chat.chat_id,
            Member {
                user_id: c.user_id,
                role: Role::Member,
            },
            100,
        )
        .await
    {
        Err(Error::Conflict(_)) => {}
        other => panic!("adding to a direct chat must be Conflict, got {other:?}"),
    }
    assert_eq!(store.members(chat.chat_id).await.expect("members").len(), 2);
    // An unknown partner is NotFound and creates nothing.
    let before = store.chats_of_user(a.user_id).await.expect("chats").len();
    match store
        .direct_chat(a.user_id, unknown_user(), "ghost", t)
        .await
    {
        Err(Error::NotFound(_)) => {}
        other => panic!("an unknown partner must be NotFound, got {other:?}"),
    }
    assert_eq!(
        store.chats_of_user(a.user_id).await.expect("chats").len(),
        before
    );
    // Group chats are `kind` group.
    let (group, _) = make_chat(&store, "group", a.user_id, &[b.user_id]).await;
    assert_eq!(group.kind, ChatKind::Group);
}

/// Eight concurrent requests for one pair, from both sides, end with exactly one chat, created
/// by exactly one of them.
pub async fn concurrent_direct_chats_create_one<S: MetadataStore>(store: S) {
    let store = Arc::new(store);
    let a = make_user(&*store, "dm-race-a").await;
    let b = make_user(&*store, "dm-race-b").await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        let (x, y) = if i % 2 == 0 {
            (a.user_id, b.user_id)
        } else {
            (b.user_id, a.user_id)
        };
        handles.push(tokio::spawn(async move {
            store.direct_chat(x, y, "race", now_millis()).await
        }));
    }
    let mut chats = Vec::new();
    let mut creators = 0;
    for h in handles {
        let (chat, created) = h.await.expect("task").expect("direct_chat under a race");
        creators += usize::from(created);
        chats.push(chat.chat_id);
    }
    chats.dedup();
    assert_eq!(chats.len(), 1, "every caller gets the same chat: {chats:?}");
    assert_eq!(creators, 1, "exactly one caller created it");
    let direct: Vec<_> = store
        .chats_of_user(a.user_id)
        .await
        .expect("chats")
        .into_iter()
        .filter(|(c, _)| c.kind == ChatKind::Direct)
        .collect();
    assert_eq!(direct.len(), 1, "one direct chat in the list");
}

/// Read markers move only forward, stamp `read_at` when they move, are `None` for a non-member,
/// show in `user_chats` and `read_markers`, and outlive a removal.
pub async fn read_markers_move_forward_only<S: MetadataStore>(store: S) {
    let owner = make_user(&store, "rm-owner").await;
    let m = make_user(&store, "rm-m").await;
    let stranger = make_user(&store, "rm-x").await;
    let (chat, _) = make_chat(&store, "markers", owner.user_id, &[m.user_id]).await;
    let (second, _) = make_chat(&store, "second", owner.user_id, &[]).await;
    let id = chat.chat_id;

    let fresh = store.read_markers(id).await.expect("read_markers");
    assert_eq!(fresh.len(), 2);
    assert!(
        fresh.windows(2).all(|w| w[0].user_id < w[1].user_id),
        "ordered by user id"
    );
    assert!(fresh
        .iter()
        .all(|r| r.last_read_seq == Seq(0) && r.read_at.is_none() && r.chat_id == id));

    let moved = store
        .mark_read(id, m.user_id, Seq(5), 1_000)
        .await
        .expect("mark_read")
        .expect("a member");
    assert_eq!(
        moved,
        ReadMarker {
            chat_id: id,
            user_id: m.user_id,
            last_read_seq: Seq(5),
            read_at: Some(1_000)
        }
    );
    let back = store
        .mark_read(id, m.user_id, Seq(3), 2_000)
        .await
        .expect("mark_read back")
        .expect("a member");
    assert_eq!(back, moved, "a marker never moves back, nor does its time");
    let forward = store
        .mark_read(id, m.user_id, Seq(9), 3_000)
        .await
        .expect("mark_read forward")
        .expect("a member");
    assert_eq!(
        (forward.last_read_seq, forward.read_at),
        (Seq(9), Some(3_000))
    );
    assert_eq!(
        store
            .mark_read(id, stranger.user_id, Seq(1), 1)
            .await
            .expect("stranger"),
        None
    );
    assert_eq!(
        store
            .mark_read(unknown_chat(), m.user_id, Seq(1), 1)
            .await
            .expect("unknown chat"),
        None
    );

    let markers = store.read_markers(id).await.expect("read_markers");
    let mine = markers
        .iter()
        .find(|r| r.user_id == m.user_id)
        .expect("the member's marker");
    assert_eq!(mine, &forward);
    assert!(
        !markers.iter().any(|r| r.user_id == stranger.user_id),
        "a stranger has no marker here"
    );

    store
        .mark_read(second.chat_id, owner.user_id, Seq(2), 10)
        .await
        .expect("mark second")
        .expect("owner is a member");
    let list = store.user_chats(owner.user_id).await.expect("user_chats");
    assert_eq!(
        list,
        vec![
            UserChat {
                chat: chat.clone(),
                role: Role::Owner,
                last_read_seq: Seq(0)
            },
            UserChat {
                chat: second.clone(),
                role: Role::Owner,
                last_read_seq: Seq(2)
            },
        ],
        "ordered by chat id, with roles and markers"
    );
    assert!(store
        .user_chats(stranger.user_id)
        .await
        .expect("no chats")
        .is_empty());

    // Removed and added back: the old marker is still there.
    assert!(store.remove_member(id, m.user_id).await.expect("remove"));
    assert!(!store
        .read_markers(id)
        .await
        .expect("markers")
        .iter()
        .any(|r| r.user_id == m.user_id));
    let back_in = Member {
        user_id: m.user_id,
        role: Role::Member,
    };
    assert!(store.add_member(id, back_in, 100).await.expect("add back"));
    assert_eq!(
        store.user_chats(m.user_id).await.expect("user_chats")[0].last_read_seq,
        Seq(9)
    );
}

/// `shared_chat_users` keeps only those who share a chat with the user.
pub async fn shared_chat_users_are_chat_partners<S: MetadataStore>(store: S) {
    let me = make_user(&store, "sh-me").await;
    let friend = make_user(&store, "sh-friend").await;
    let dm = make_user(&store, "sh-dm").await;
    let stranger = make_user(&store, "sh-x").await;
    make_chat(&store, "shared", me.user_id, &[friend.user_id]).await;
    make_chat(&store, "theirs", stranger.user_id, &[]).await;
    store
        .direct_chat(dm.user_id, me.user_id, "dm", now_millis())
        .await
        .expect("direct");
    let mut got = store
        .shared_chat_users(
            me.user_id,
            &[friend.user_id, stranger.user_id, dm.user_id, unknown_user()],
        )
        .await
        .expect("shared_chat_users");
    got.sort();
    let mut want = vec![friend.user_id, dm.user_id];
    want.sort();
    assert_eq!(got, want);
    assert!(store
        .shared_chat_users(stranger.user_id, &[me.user_id, friend.user_id])
        .await
        .expect("stranger")
        .is_empty());
}
