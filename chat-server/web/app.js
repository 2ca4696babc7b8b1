// The web client of chat-server: plain JavaScript, no build step, served from the binary.
//
// It speaks the wire contract (docs/protocol.md): REST with a bearer token, and one WebSocket
// (`/v1/ws?token=`) for live events. Live frames are a fast path, not the record: every chat
// that is open keeps the highest `seq` it holds with no hole below it, and a jump in `seq` or
// a reconnect is filled from `GET /v1/fetch?after_seq=`. Every text a user wrote is put in
// the page with `textContent`, never parsed as HTML. The token lives in sessionStorage (see
// SECURITY.md for why).

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "chat.token";
const PAGE = 50;
const TYPING_EVERY_MS = 3000;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,
  chats: [], // GET /v1/chats, newest activity first
  current: null, // open chat id
  view: null, // GET /v1/chats/{id} of the open chat
  msgs: new Map(), // chat id -> Map(seq -> message)
  top: new Map(), // chat id -> page token of older history, or null at the start
  last: new Map(), // chat id -> highest seq held with nothing missing below it
  pending: new Map(), // client_msg_id -> {chat_id, msg_text, reply_to_seq, timestamp, failed}
  names: new Map(), // user id -> display name
  online: new Map(), // user id -> bool
  typing: new Map(), // user id -> until (ms), for the open chat
  receipts: new Map(), // user id -> last_read_seq, for the open chat
  ws: null,
  wsUp: false,
  retryMs: 250,
  reconnectTimer: null,
  replyTo: null,
  editing: null,
  lastTypingSent: 0,
  loadingOlder: false,
  catchingUp: new Set(),
  search: null, // {q, chatId, token, results, done}: the search shown instead of the chat list
  hit: null, // {chatId, seq}: the search result opened, marked in its chat
};

// ---- REST ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "network", "the server cannot be reached");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const err = data && data.error ? data.error : {};
    if (response.status === 401 && state.me) signedOut("Your session ended; log in again.");
    throw new ApiError(response.status, err.code || "http", err.message || response.statusText);
  }
  return data;
}

// ---- Signing in and out ----------------------------------------------------------------

async function signIn(register) {
  const email = $("email").value.trim();
  const password = $("password").value;
  const displayName = $("display-name").value.trim();
  $("signin-error").textContent = "";
  try {
    if (register) {
      await api("POST", "/v1/users", {
        email,
        password,
        display_name: displayName || undefined,
      });
    }
    const session = await api("POST", "/v1/sessions", { email, password });
    state.token = session.token;
    sessionStorage.setItem(TOKEN_KEY, session.token);
    $("password").value = "";
    await start();
  } catch (e) {
    $("signin-error").textContent = e.message;
  }
}

function signedOut(reason) {
  state.token = null;
  state.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
    state.ws = null;
  }
  state.wsUp = false;
  clearTimeout(state.reconnectTimer);
  // Nothing of this account may outlive it in the tab: another person may sign in next, and
  // a pending send left here would go out under their token on their first `ready`.
  closeChat();
  closeResults();
  $("search-q").value = "";
  for (const k of ["msgs", "top", "last", "pending", "names", "online", "typing", "receipts"]) {
    state[k].clear();
  }
  state.catchingUp.clear();
  askedNames.clear();
  state.chats = [];
  state.retryMs = 250;
  renderChats();
  $("me-name").textContent = "";
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = reason || "";
  $("email").focus();
}

async function logout() {
  try {
    await api("DELETE", "/v1/sessions/current");
  } catch (_) {
    // Forget the token locally either way.
  }
  signedOut("");
}

async function start() {
  state.me = await api("GET", "/v1/users/me");
  state.names.set(state.me.user_id, state.me.display_name);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = state.me.display_name;
  await loadChats();
  connect();
}

// ---- The chat list ---------------------------------------------------------------------

let chatsTimer = null;
function loadChatsSoon() {
  clearTimeout(chatsTimer);
  chatsTimer = setTimeout(() => loadChats().catch(showError), 100);
}

async function loadChats() {
  const list = await api("GET", "/v1/chats");
  state.chats = list.chats;
  renderChats();
}

function renderChats() {
  const ul = $("chat-list");
  ul.replaceChildren();
  for (const c of state.chats) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.chatId = c.chat_id;
    b.setAttribute("aria-current", String(c.chat_id === state.current));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = (c.kind === "direct" ? "@ " : "# ") + c.chat_name;
    const unread = document.createElement("span");
    unread.className = "unread";
    const n = c.chat_id === state.current ? 0 : c.unread_count || 0;
    unread.textContent = n > 0 ? String(n) : "";
    unread.setAttribute("aria-label", `${n} unread`);
    const last = document.createElement("span");
    last.className = "last";
    const m = c.last_message;
    last.textContent = m ? (m.deleted ? "(deleted)" : m.msg_text) : "no messages yet";
    b.append(name, unread, last);
    b.addEventListener("click", () => openChat(c.chat_id).catch(showError));
    li.append(b);
    ul.append(li);
  }
}

// ---- A chat ----------------------------------------------------------------------------

async function openChat(chatId) {
  if (!state.hit || state.hit.chatId !== chatId) state.hit = null;
  state.current = chatId;
  state.replyTo = null;
  state.editing = null;
  state.typing.clear();
  state.receipts.clear();
  $("app").classList.add("in-chat");
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("announce").textContent = "";
  renderComposing();
  $("text").disabled = false;
  $("send").disabled = false;
  $("search-here-label").hidden = false;
  renderChats();
  const view = await api("GET", `/v1/chats/${chatId}`);
  // Another chat may have been opened meanwhile; then that one owns the view.
  if (state.current !== chatId) return;
  state.view = view;
  for (const m of view.members || []) state.names.set(m.user_id, m.display_name);
  $("chat-title").textContent = view.chat_name;
  renderChatTools(view);
  if (!state.msgs.has(chatId)) {
    const page = await api("GET", `/v1/fetch?chat_id=${chatId}&limit=${PAGE}`);
    if (state.msgs.has(chatId)) return; // opened twice at once: the other call loaded it
    state.msgs.set(chatId, new Map());
    state.top.set(chatId, page.next_page_token);
    // The newest page holds everything from its first seq up.
    state.last.set(chatId, page.messages.length > 0 ? page.messages[0].seq - 1 : 0);
    addMessages(chatId, page.messages);
  }
  // Also after a first page: a live message that came while it was on its way was dropped
  // (the chat had no store yet) and may be missing from it.
  await catchUp(chatId);
  if (state.current !== chatId) return;
  await Promise.all([loadPresence(view), loadReceipts(chatId)]);
  if (state.current !== chatId) return;
  renderMembers();
  renderMessages({ toBottom: true });
  markRead();
  $("text").focus();
}

// Renaming (owner or admin, group chats), leaving (group chats) and adding members.
function renderChatTools(view) {
  const group = view && view.kind !== "direct";
  const manager = group && isManager(view);
  $("add-member").hidden = !manager;
  $("rename").hidden = !manager;
  if (manager && document.activeElement !== $("rename-name")) {
    $("rename-name").value = view.chat_name;
  }
  $("leave").hidden = !group;
}

function isManager(view) {
  const mine = (view.members || []).find((m) => m.user_id === state.me.user_id);
  return mine && (mine.role === "owner" || mine.role === "admin");
}

async function loadPresence(view) {
  const ids = (view.members || []).map((m) => m.user_id).filter((id) => id !== state.me.user_id);
  if (ids.length === 0) return;
  const p = await api("GET", `/v1/presence?user_ids=${ids.join(",")}`);
  for (const u of p.presence) state.online.set(u.user_id, u.online);
}

async function loadReceipts(chatId) {
  const r = await api("GET", `/v1/chats/${chatId}/receipts`);
  if (state.current !== chatId) return;
  state.receipts.clear();
  for (const x of r.receipts) state.receipts.set(x.user_id, x.last_read_seq);
}

function renderMembers() {
  const span = $("chat-members");
  span.replaceChildren();
  if (!state.view) return;
  const mine = (state.view.members || []).find((m) => m.user_id === state.me.user_id);
  const owner = state.view.kind !== "direct" && mine && mine.role === "owner";
  for (const m of state.view.members || []) {
    const who = document.createElement("span");
    const dot = document.createElement("span");
    const on = m.user_id === state.me.user_id || state.online.get(m.user_id);
    dot.className = on ? "dot on" : "dot";
    dot.setAttribute("aria-label", on ? "online" : "offline");
    const name = document.createElement("span");
    name.className = "member-name";
    name.textContent = m.display_name;
    who.append(dot, name);
    if (m.role !== "member") who.append(document.createTextNode(` (${m.role})`));
    who.append(document.createTextNode(" "));
    // The owner of a group makes members admins and takes it back.
    if (owner && m.role !== "owner") {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "role";
      const to = m.role === "admin" ? "member" : "admin";
      b.textContent = to === "admin" ? "make admin" : "remove admin";
      b.setAttribute("aria-label", `${b.textContent}: ${m.display_name}`);
      b.addEventListener("click", () =>
        api("PUT", `/v1/chats/${state.current}/members/${m.user_id}/role`, { role: to }).catch(
          showError,
        ),
      );
      who.append(b, document.createTextNode(" "));
    }
    span.append(who);
  }
}

// Adds messages (any order) to a chat's store and moves its contiguous `last`.
function addMessages(chatId, messages) {
  const store = state.msgs.get(chatId);
  if (!store) return;
  for (const m of messages) {
    const had = store.get(m.seq);
    if (!had || (m.rev || 0) >= (had.rev || 0)) store.set(m.seq, m);
    if (m.client_msg_id && m.sender_id === state.me.user_id) state.pending.delete(m.client_msg_id);
    if (!state.names.has(m.sender_id)) lookUpName(m.sender_id);
  }
  let last = state.last.get(chatId) || 0;
  while (store.has(last + 1)) last += 1;
  state.last.set(chatId, last);
}

const askedNames = new Set();
function lookUpName(userId) {
  if (askedNames.has(userId)) return;
  askedNames.add(userId);
  api("GET", `/v1/users/${userId}`)
    .then((u) => {
      state.names.set(u.user_id, u.display_name);
      if (state.current) renderMessages({});
    })
    .catch(() => {});
}

// Fetches everything after the chat's last contiguous seq (a hole, or a reconnect).
async function catchUp(chatId) {
  if (!state.msgs.has(chatId) || state.catchingUp.has(chatId)) return;
  state.catchingUp.add(chatId);
  try {
    let url = `/v1/fetch?chat_id=${chatId}&after_seq=${state.last.get(chatId) || 0}&limit=500`;
    for (;;) {
      const page = await api("GET", url);
      addMessages(chatId, page.messages);
      if (!page.next_page_token) break;
      url = `/v1/fetch?chat_id=${chatId}&page_token=${encodeURIComponent(page.next_page_token)}&limit=500`;
    }
  } finally {
    state.catchingUp.delete(chatId);
  }
  if (chatId === state.current) {
    renderMessages({ stick: true });
    markRead();
  }
}

// One page of older history into the chat's store (nothing when the start is loaded).
async function olderPage(chatId) {
  const token = state.top.get(chatId);
  if (token === null || token === undefined) return;
  const page = await api(
    "GET",
    `/v1/fetch?chat_id=${chatId}&page_token=${encodeURIComponent(token)}&limit=${PAGE}`,
  );
  state.top.set(chatId, page.next_page_token);
  addMessages(chatId, page.messages);
}

async function loadOlder() {
  const chatId = state.current;
  const token = state.top.get(chatId);
  if (!chatId || token === null || token === undefined || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    await olderPage(chatId);
    if (state.current !== chatId) return;
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    renderMessages({});
    box.scrollTop = box.scrollHeight - fromBottom;
  } finally {
    state.loadingOlder = false;
  }
  // A short page may not fill the box: keep going while the top is visible.
  if ($("messages").scrollTop < 80) loadOlder().catch(showError);
}

function renderMessages({ toBottom, stick }) {
  const chatId = state.current;
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const focus = focusedButton(box);
  box.replaceChildren();
  const store = state.msgs.get(chatId);
  if (!store) return;
  if (state.top.get(chatId) === null) {
    const li = document.createElement("li");
    li.className = "history-start";
    li.textContent = "The start of this chat";
    box.append(li);
  }
  const seqs = [...store.keys()].sort((a, b) => a - b);
  for (const seq of seqs) box.append(messageItem(store.get(seq), store));
  for (const [id, p] of state.pending) {
    if (p.chat_id === chatId) box.append(pendingItem(id, p));
  }
  if (toBottom || (stick && atBottom)) box.scrollTop = box.scrollHeight;
  if (focus) refocus(box, focus);
}

// The list is drawn anew on every change; someone at the keyboard on a message's button must
// not lose their place whenever a message arrives. Which button had the focus, by message and
// by label (or position, for reaction buttons whose text counts change).
function focusedButton(box) {
  const el = document.activeElement;
  if (!el || el.tagName !== "BUTTON" || !box.contains(el)) return null;
  const li = el.closest("li");
  if (!li) return null;
  return {
    seq: li.dataset.seq,
    clientMsgId: li.dataset.clientMsgId,
    label: el.getAttribute("aria-label"),
    index: [...li.querySelectorAll("button")].indexOf(el),
  };
}

function refocus(box, f) {
  const li = [...box.children].find((x) =>
    f.seq !== undefined ? x.dataset.seq === f.seq : x.dataset.clientMsgId === f.clientMsgId,
  );
  if (!li) return;
  const buttons = [...li.querySelectorAll("button")];
  const target =
    (f.label && buttons.find((b) => b.getAttribute("aria-label") === f.label)) ||
    buttons[f.index];
  if (target) target.focus({ preventScroll: true });
}

function messageItem(m, store) {
  const li = document.createElement("li");
  li.className = "msg";
  li.dataset.seq = m.seq;
  if (m.client_msg_id) li.dataset.clientMsgId = m.client_msg_id;
  const mine = m.sender_id === state.me.user_id;
  if (mine) li.classList.add("mine");
  if (m.deleted) li.classList.add("deleted");
  if (state.hit && state.hit.chatId === m.chat_id && state.hit.seq === m.seq) {
    li.classList.add("hit");
  }
  if (m.reply_to_seq) {
    const q = document.createElement("span");
    q.className = "quote";
    const orig = store.get(m.reply_to_seq);
    q.textContent = orig
      ? `↪ ${nameOf(orig.sender_id)}: ${orig.deleted ? "(deleted)" : orig.msg_text}`
      : `↪ #${m.reply_to_seq}`;
    li.append(q);
  }
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = nameOf(m.sender_id);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.deleted ? "message deleted" : m.msg_text;
  const meta = document.createElement("span");
  meta.className = "meta";
  let info = new Date(m.sent_at).toLocaleTimeString();
  if (m.edited_at && !m.deleted) info += " · edited";
  if (mine) {
    const readers = [...state.receipts].filter(
      ([u, s]) => u !== state.me.user_id && s >= m.seq,
    ).length;
    if (readers > 0) info += ` · seen by ${readers}`;
  }
  meta.textContent = info;
  li.append(who, text, meta);
  if (!m.deleted) li.append(actions(m, mine));
  if (m.reactions && m.reactions.length > 0) {
    const r = document.createElement("div");
    r.className = "reactions";
    for (const x of m.reactions) {
      const b = document.createElement("button");
      b.type = "button";
      const pressed = x.user_ids.includes(state.me.user_id);
      b.setAttribute("aria-pressed", String(pressed));
      b.textContent = `${x.emoji} ${x.count}`;
      b.title = pressed ? "Take your reaction back" : "React the same";
      b.addEventListener("click", () => react(m, x.emoji, !pressed).catch(showError));
      r.append(b);
    }
    li.append(r);
  }
  return li;
}

function actions(m, mine) {
  const span = document.createElement("span");
  span.className = "actions";
  const add = (label, title, fn) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.title = title;
    b.setAttribute("aria-label", `${title} message ${m.seq}`);
    b.addEventListener("click", () => fn().catch(showError));
    span.append(b);
  };
  add("Reply", "Reply", async () => {
    state.replyTo = m.seq;
    state.editing = null;
    renderComposing();
    $("text").focus();
  });
  add("👍", "React", () => react(m, "👍", !(m.reactions || []).some((x) => x.emoji === "👍" && x.user_ids.includes(state.me.user_id))));
  if (mine) {
    add("Edit", "Edit", async () => {
      state.editing = m.seq;
      state.replyTo = null;
      $("text").value = m.msg_text;
      renderComposing();
      $("text").focus();
    });
  }
  if (mine || (state.view && isManager(state.view))) {
    add("Delete", "Delete", async () => {
      const updated = await api("DELETE", `/v1/chats/${m.chat_id}/messages/${m.seq}`);
      addMessages(m.chat_id, [updated]);
      renderMessages({});
    });
  }
  return span;
}

function pendingItem(id, p) {
  const li = document.createElement("li");
  li.className = p.failed ? "msg mine failed" : "msg mine pending";
  li.dataset.clientMsgId = id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = state.me.display_name;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = p.msg_text;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = p.failed ? `not sent: ${p.failed}` : "sending…";
  li.append(who, text, meta);
  if (p.failed) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = "Retry";
    retry.addEventListener("click", () => {
      p.failed = null;
      renderMessages({});
      sendPending(id);
    });
    const discard = document.createElement("button");
    discard.type = "button";
    discard.textContent = "Discard";
    discard.addEventListener("click", () => {
      state.pending.delete(id);
      renderMessages({});
    });
    li.append(retry, discard);
  }
  return li;
}

function nameOf(userId) {
  return state.names.get(userId) || `user ${userId}`;
}

async function react(m, emoji, add) {
  const path = `/v1/chats/${m.chat_id}/messages/${m.seq}/reactions/${encodeURIComponent(emoji)}`;
  const updated = await api(add ? "PUT" : "DELETE", path);
  addMessages(m.chat_id, [updated]);
  renderMessages({});
}

let readTimer = null;
function markRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(async () => {
    const chatId = state.current;
    if (!chatId || document.hidden) return;
    const last = state.last.get(chatId) || 0;
    const summary = state.chats.find((c) => c.chat_id === chatId);
    if (last === 0 || (summary && summary.last_read_seq >= last && summary.unread_count === 0)) return;
    try {
      const r = await api("POST", `/v1/chats/${chatId}/read`, { seq: last });
      if (summary) {
        summary.last_read_seq = r.last_read_seq;
        summary.unread_count = 0;
      }
      renderChats();
    } catch (e) {
      showError(e);
    }
  }, 150);
}

// ---- Sending ---------------------------------------------------------------------------

async function submit() {
  const text = $("text").value;
  const chatId = state.current;
  if (!chatId || text.trim() === "") return;
  $("text").value = "";
  if (state.editing !== null) {
    const seq = state.editing;
    state.editing = null;
    renderComposing();
    const updated = await api("PATCH", `/v1/chats/${chatId}/messages/${seq}`, { msg_text: text });
    addMessages(chatId, [updated]);
    renderMessages({});
    return;
  }
  const id = crypto.randomUUID();
  state.pending.set(id, {
    chat_id: chatId,
    msg_text: text,
    reply_to_seq: state.replyTo,
    timestamp: Date.now(),
    failed: null,
  });
  state.replyTo = null;
  renderComposing();
  renderMessages({ toBottom: true });
  sendPending(id);
}

// Sends a queued message: over the WebSocket when it is up (the ack or error frame settles
// it; a reconnect resends whatever is still pending), else over REST. The same
// client_msg_id every time, so the server stores it once however often it is sent.
function sendPending(id) {
  const p = state.pending.get(id);
  if (!p || p.failed) return;
  const frame = {
    chat_id: p.chat_id,
    msg_text: p.msg_text,
    client_msg_id: id,
    timestamp: p.timestamp,
  };
  if (p.reply_to_seq) frame.reply_to_seq = p.reply_to_seq;
  if (state.wsUp) {
    state.ws.send(JSON.stringify({ type: "send", ...frame }));
    return;
  }
  api("POST", "/v1/send", frame)
    .then((m) => {
      addMessages(m.chat_id, [m]);
      if (m.chat_id === state.current) renderMessages({ stick: true });
    })
    .catch((e) => {
      // Unreachable: stays pending for the reconnect. Refused: failed, with a retry button.
      if (e.status === 0) return;
      p.failed = e.message;
      if (p.chat_id === state.current) renderMessages({});
    });
}

function renderComposing() {
  const box = $("composing");
  if (state.replyTo !== null) {
    box.hidden = false;
    $("composing-what").textContent = `Replying to #${state.replyTo}`;
  } else if (state.editing !== null) {
    box.hidden = false;
    $("composing-what").textContent = `Editing #${state.editing}`;
  } else {
    box.hidden = true;
  }
}

function cancelComposing() {
  if (state.editing !== null) $("text").value = "";
  state.replyTo = null;
  state.editing = null;
  renderComposing();
}

function typed() {
  const now = Date.now();
  if (!state.wsUp || !state.current || now - state.lastTypingSent < TYPING_EVERY_MS) return;
  state.lastTypingSent = now;
  state.ws.send(JSON.stringify({ type: "typing", chat_id: state.current }));
}

// ---- The WebSocket ---------------------------------------------------------------------

function connect() {
  clearTimeout(state.reconnectTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  setConn("connecting…", false);
  ws.onmessage = (e) => {
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch (_) {
      return;
    }
    onFrame(frame).catch(showError);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.wsUp = false;
    setConn(`offline, retrying in ${Math.round(state.retryMs / 100) / 10} s`, true);
    state.reconnectTimer = setTimeout(async () => {
      // A rejected session is a 401 on REST; anything else is the network.
      try {
        await api("GET", "/v1/users/me");
      } catch (_) {
        // Still unreachable, or signed out (api() handled that).
      }
      if (state.token) connect();
    }, state.retryMs * (0.5 + Math.random()));
    state.retryMs = Math.min(state.retryMs * 2, 5000);
  };
}

function setConn(text, down) {
  $("conn").textContent = text;
  $("conn").classList.toggle("down", down);
}

async function onFrame(f) {
  switch (f.type) {
    case "ready": {
      state.wsUp = true;
      state.retryMs = 250;
      setConn("online", false);
      for (const c of f.chats) {
        if (state.msgs.has(c.chat_id) && c.last_seq > (state.last.get(c.chat_id) || 0)) {
          catchUp(c.chat_id).catch(showError);
        }
      }
      for (const [id, p] of state.pending) if (!p.failed) sendPending(id);
      loadChatsSoon();
      break;
    }
    case "message":
    case "ack": {
      const m = f.message;
      const store = state.msgs.get(m.chat_id);
      if (store) {
        const last = state.last.get(m.chat_id) || 0;
        if (m.seq > last + 1) {
          addMessages(m.chat_id, [m]);
          await catchUp(m.chat_id);
        } else {
          addMessages(m.chat_id, [m]);
        }
      } else if (f.type === "ack") {
        state.pending.delete(f.client_msg_id);
      }
      if (m.chat_id === state.current) {
        // The list is drawn anew on every change, so it is not a live region itself (a screen
        // reader would read it all again); a new message from someone else is announced here.
        if (f.type === "message" && m.sender_id !== state.me.user_id) {
          $("announce").textContent = `${nameOf(m.sender_id)}: ${m.msg_text}`;
        }
        state.typing.delete(m.sender_id);
        renderTyping();
        renderMessages({ stick: true });
        markRead();
      }
      loadChatsSoon();
      break;
    }
    case "message_updated":
      if (state.msgs.has(f.message.chat_id)) addMessages(f.message.chat_id, [f.message]);
      if (f.message.chat_id === state.current) renderMessages({});
      loadChatsSoon();
      break;
    case "error": {
      const p = f.client_msg_id && state.pending.get(f.client_msg_id);
      if (p) {
        p.failed = f.message;
        if (p.chat_id === state.current) renderMessages({});
      } else {
        showError(new Error(f.message));
      }
      break;
    }
    case "chat_updated":
      if (f.chat.chat_id === state.current) {
        state.view = await api("GET", `/v1/chats/${f.chat.chat_id}`);
        for (const m of state.view.members || []) state.names.set(m.user_id, m.display_name);
        $("chat-title").textContent = state.view.chat_name;
        renderChatTools(state.view);
        // New members: presence events only tell of changes, so ask where they stand now.
        await loadPresence(state.view);
        renderMembers();
      }
      loadChatsSoon();
      break;
    case "removed_from_chat":
      if (f.chat_id === state.current) closeChat();
      state.msgs.delete(f.chat_id);
      loadChatsSoon();
      break;
    case "read":
      if (f.user_id === state.me.user_id) {
        loadChatsSoon();
      } else if (f.chat_id === state.current) {
        state.receipts.set(f.user_id, f.last_read_seq);
        renderMessages({});
      }
      break;
    case "typing":
      if (f.chat_id === state.current && f.user_id !== state.me.user_id) {
        state.typing.set(f.user_id, Date.now() + 5000);
        renderTyping();
        setTimeout(renderTyping, 5100);
      }
      break;
    case "presence":
      state.online.set(f.user_id, f.online);
      renderMembers();
      break;
    default:
      break;
  }
}

function renderTyping() {
  const now = Date.now();
  const who = [...state.typing]
    .filter(([, until]) => until > now)
    .map(([u]) => nameOf(u));
  $("typing").textContent =
    who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
}

function closeChat() {
  state.current = null;
  state.view = null;
  state.replyTo = null;
  state.editing = null;
  $("text").value = "";
  $("typing").textContent = "";
  $("announce").textContent = "";
  renderComposing();
  $("app").classList.remove("in-chat");
  $("chat-title").textContent = "Pick a chat";
  renderChatTools(null);
  $("chat-members").replaceChildren();
  $("messages").replaceChildren();
  $("text").disabled = true;
  $("send").disabled = true;
  $("search-here").checked = false;
  $("search-here-label").hidden = true;
  state.hit = null;
  renderChats();
}

// ---- Search ----------------------------------------------------------------------------

const MAX_QUERY_BYTES = 256;
const SEARCH_PAGE = 20;

// A new search from the box (more = false), or the next page of the shown one.
async function runSearch(more) {
  let s = state.search;
  if (!more) {
    const q = $("search-q").value.trim();
    const bytes = new TextEncoder().encode(q).length;
    if (bytes === 0 || bytes > MAX_QUERY_BYTES) {
      state.search = null;
      renderResults(`A search is 1 to ${MAX_QUERY_BYTES} bytes long; this one is ${bytes}.`);
      return;
    }
    const chatId = $("search-here").checked && state.current ? state.current : null;
    s = { q, chatId, token: null, results: [], done: false };
    state.search = s;
  }
  if (!s || s.done) return;
  let url = `/v1/search?q=${encodeURIComponent(s.q)}&limit=${SEARCH_PAGE}`;
  if (s.chatId) url += `&chat_id=${s.chatId}`;
  if (s.token) url += `&page_token=${encodeURIComponent(s.token)}`;
  let page;
  try {
    page = await api("GET", url);
  } catch (e) {
    if (state.search === s) renderResults(e.message || String(e));
    return;
  }
  if (state.search !== s) return; // a newer search (or signing out) replaced this one
  s.results.push(...page.messages);
  s.token = page.next_page_token;
  s.done = !s.token;
  renderResults();
}

function chatName(chatId) {
  const c = state.chats.find((x) => x.chat_id === chatId);
  return c ? c.chat_name : `chat ${chatId}`;
}

// The results replace the chat list; `error` is shown instead of them.
function renderResults(error) {
  const s = state.search;
  $("results").hidden = false;
  $("chat-list").hidden = true;
  const list = $("result-list");
  list.replaceChildren();
  if (error || !s) {
    $("results-title").textContent = error || "";
    $("results-more").hidden = true;
    return;
  }
  const where = s.chatId ? ` in ${chatName(s.chatId)}` : "";
  const n = s.results.length;
  $("results-title").textContent =
    n === 0
      ? `No messages with “${s.q}”${where}`
      : `${n}${s.done ? "" : "+"} message${n === 1 ? "" : "s"} with “${s.q}”${where}`;
  for (const m of s.results) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.chatId = m.chat_id;
    b.dataset.seq = m.seq;
    const at = document.createElement("span");
    at.className = "where";
    at.textContent = `${chatName(m.chat_id)} · ${nameOf(m.sender_id)} · ${new Date(
      m.sent_at,
    ).toLocaleString()}`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = m.msg_text;
    b.append(at, text);
    b.addEventListener("click", () => openResult(m).catch(showError));
    li.append(b);
    list.append(li);
    if (!state.names.has(m.sender_id)) lookUpName(m.sender_id);
  }
  $("results-more").hidden = s.done;
}

function closeResults() {
  state.search = null;
  $("results").hidden = true;
  $("result-list").replaceChildren();
  $("chat-list").hidden = false;
}

// Opens a result's chat and pages back through its history until the message is on screen.
async function openResult(m) {
  state.hit = { chatId: m.chat_id, seq: m.seq };
  await openChat(m.chat_id);
  if (state.current !== m.chat_id) return;
  state.loadingOlder = true; // the scroll handler must not page at the same time
  try {
    for (let i = 0; i < 1000 && state.current === m.chat_id; i += 1) {
      const store = state.msgs.get(m.chat_id);
      if (!store || store.has(m.seq) || !state.top.get(m.chat_id)) break;
      await olderPage(m.chat_id);
    }
  } finally {
    state.loadingOlder = false;
  }
  if (state.current !== m.chat_id) return;
  renderMessages({});
  const li = [...$("messages").children].find((x) => x.dataset.seq === String(m.seq));
  if (li) {
    li.tabIndex = -1;
    li.scrollIntoView({ block: "center" });
    li.focus({ preventScroll: true });
  }
}

function showError(e) {
  setConn(e.message || String(e), true);
  setTimeout(() => setConn(state.wsUp ? "online" : "offline", !state.wsUp), 4000);
}

// ---- Wiring ----------------------------------------------------------------------------

async function findUser(email) {
  return api("GET", `/v1/users?email=${encodeURIComponent(email)}`);
}

function wire() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn(false);
  });
  $("register").addEventListener("click", () => signIn(true));
  $("logout").addEventListener("click", () => logout());
  $("back").addEventListener("click", () => closeChat());
  $("new-chat").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const chat = await api("POST", "/v1/chats", {
        chat_name: $("new-chat-name").value.trim(),
        member_ids: [],
      });
      $("new-chat-name").value = "";
      await loadChats();
      await openChat(chat.chat_id);
    } catch (err) {
      showError(err);
    }
  });
  $("new-dm").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const user = await findUser($("dm-email").value.trim());
      const chat = await api("POST", "/v1/direct", { user_id: user.user_id });
      $("dm-email").value = "";
      await loadChats();
      await openChat(chat.chat_id);
    } catch (err) {
      showError(err);
    }
  });
  $("add-member").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const user = await findUser($("add-email").value.trim());
      await api("POST", `/v1/chats/${state.current}/members`, { user_id: user.user_id });
      $("add-email").value = "";
    } catch (err) {
      showError(err);
    }
  });
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    runSearch(false).catch(showError);
  });
  $("search-q").addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      $("search-q").value = "";
      closeResults();
    }
  });
  $("results-more").addEventListener("click", () => runSearch(true).catch(showError));
  $("results-close").addEventListener("click", () => {
    closeResults();
    $("search-q").focus();
  });
  $("rename").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("PATCH", `/v1/chats/${state.current}`, {
        chat_name: $("rename-name").value.trim(),
      });
    } catch (err) {
      showError(err);
    }
  });
  $("leave").addEventListener("click", async () => {
    const chatId = state.current;
    if (!chatId || !window.confirm(`Leave ${chatName(chatId)}? Its messages go from this list.`)) {
      return;
    }
    try {
      await api("DELETE", `/v1/chats/${chatId}/members/${state.me.user_id}`);
      if (state.current === chatId) closeChat();
      state.msgs.delete(chatId);
      await loadChats();
    } catch (err) {
      showError(err);
    }
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submit().catch(showError);
  });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      submit().catch(showError);
    } else if (e.key === "Escape") {
      cancelComposing();
    }
  });
  $("text").addEventListener("input", typed);
  // Escape cancels a reply or an edit wherever the focus is (e.g. on a message's buttons).
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("composing").hidden && e.target !== $("text")) {
      cancelComposing();
      $("text").focus();
    }
  });
  $("composing-cancel").addEventListener("click", cancelComposing);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 80) loadOlder().catch(showError);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) markRead();
  });
}

wire();
if (state.token) {
  start().catch(() => signedOut(""));
} else {
  $("signin").hidden = false;
}
