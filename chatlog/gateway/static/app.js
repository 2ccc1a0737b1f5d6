// The chat page: a chat front end over chatlog's public /v1 API, no framework, no build.
//
// It signs in (the development login, POST /dev/token, or a pasted token), lists the
// caller's sessions, starts one, sends messages, and keeps the open session's context
// current from its event stream (GET /v1/sessions/{id}/events, Server-Sent Events).
// The stream needs the bearer token in a header, which EventSource cannot send, so it is
// read with fetch() and parsed here. Everything users typed is shown with textContent,
// never as HTML; the page's Content-Security-Policy forbids inline scripts besides.
"use strict";

(() => {
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 10000;
  const POLL_MS = 1000;
  const SEND_ATTEMPTS = 3;
  const STORAGE_KEY = "chatlog.token";

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    sessionId: null,
    // The open session's messages by id, in the order they came: a message the stream
    // repeats (a reconnect resumes at the last id seen) is shown once.
    messages: new Map(),
    lastEventId: null,
    stream: null, // the AbortController of the open session's stream or poll
    following: null, // its signal while the stream is followed; null once it has ended
    listTimer: null,
  };

  // -- the API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function authHeaders(extra) {
    return Object.assign({ Authorization: `Bearer ${state.token}` }, extra || {});
  }

  async function api(method, path, body, headers) {
    const init = { method, headers: authHeaders(headers) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const answer = await fetch(path, init);
    const data = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      const error = (data && data.error) || {};
      if (answer.status === 401) signOut("Your token was refused: " + (error.message || ""));
      throw new ApiError(
        answer.status,
        error.code || "http",
        error.message || `${method} ${path} answered ${answer.status}`,
        Number(answer.headers.get("Retry-After") || "1"),
      );
    }
    return data;
  }

  function newIdempotencyKey() {
    // A valid chatlog id (letters, digits, '-'): 128 random bits as hex.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- signing in --------------------------------------------------------------------

  function claimsOf(token) {
    // Only to show who is signed in: the gateway checks the token, not this page.
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part));
    } catch (e) {
      return {};
    }
  }

  async function devLogin(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const user = $("login-user").value.trim();
    const tenant = $("login-tenant").value.trim() || "default";
    const answer = await fetch("/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user, tenant }),
    });
    const data = await answer.json().catch(() => ({}));
    if (answer.status === 404) {
      $("login-error").textContent =
        "The development login is off: this gateway does not run with --dev. Paste a token.";
      return;
    }
    if (!answer.ok) {
      $("login-error").textContent = (data.error && data.error.message) || "sign-in failed";
      return;
    }
    signIn(data.token);
  }

  function tokenLogin(event) {
    event.preventDefault();
    signIn($("login-token").value.trim());
  }

  function signIn(token) {
    state.token = token;
    sessionStorage.setItem(STORAGE_KEY, token);
    const claims = claimsOf(token);
    $("who").textContent = `${claims.sub || "?"} (${claims.tenant || "default"})`;
    $("login").hidden = true;
    $("chat").hidden = false;
    $("sign-out").hidden = false;
    $("login-error").textContent = "";
    refreshSessions();
  }

  function signOut(why) {
    closeSession();
    state.token = null;
    sessionStorage.removeItem(STORAGE_KEY);
    $("who").textContent = "";
    $("sessions").replaceChildren();
    $("chat").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = typeof why === "string" ? why : "";
  }

  // -- the session list --------------------------------------------------------------

  async function refreshSessions() {
    let data;
    try {
      data = await api("GET", "/v1/sessions?limit=50");
    } catch (e) {
      showError(e);
      return;
    }
    const items = data.sessions.map((s) => {
      const item = document.createElement("li");
      item.dataset.sessionId = s.session_id;
      item.className = s.session_id === state.sessionId ? "active" : "";
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = s.title || s.session_id;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = String(s.message_count);
      item.append(title, count);
      item.addEventListener("click", () => openSession(s.session_id));
      return item;
    });
    $("sessions").replaceChildren(...items);
  }

  function refreshSessionsSoon() {
    // Many events in a burst refresh the list once.
    clearTimeout(state.listTimer);
    state.listTimer = setTimeout(refreshSessions, 300);
  }

  async function newSession() {
    try {
      const title = "Chat of " + new Date().toLocaleString();
      const made = await api("POST", "/v1/sessions", { title });
      await openSession(made.session_id);
      refreshSessions();
    } catch (e) {
      showError(e);
    }
  }

  // -- the open session ----------------------------------------------------------------

  function closeSession() {
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.sessionId = null;
    state.messages.clear();
    state.lastEventId = null;
    state.following = null;
    $("messages").replaceChildren();
    $("summary").hidden = true;
    $("session-title").textContent = "No session open";
    $("message-input").disabled = true;
    $("send").disabled = true;
    setLive("off", "not connected");
  }

  async function openSession(sessionId) {
    closeSession();
    state.sessionId = sessionId;
    const controller = new AbortController();
    state.stream = controller;
    for (const item of $("sessions").children) {
      item.className = item.dataset.sessionId === sessionId ? "active" : "";
    }
    try {
      const context = await api("GET", `/v1/sessions/${encodeURIComponent(sessionId)}/context`);
      if (controller.signal.aborted) return;
      reset(context);
    } catch (e) {
      showError(e);
      return;
    }
    $("message-input").disabled = false;
    $("message-input").placeholder = "Type a message; Enter sends, Shift+Enter is a new line";
    $("send").disabled = false;
    $("message-input").focus();
    follow(sessionId, controller.signal);
  }

  function reset(context) {
    state.messages.clear();
    $("messages").replaceChildren();
    $("session-title").textContent = context.title || context.session_id;
    showSummary(context.summary);
    for (const message of context.messages) addMessage(message);
    if (context.position && offsetOf(context.position) > offsetOf(state.lastEventId)) {
      state.lastEventId = context.position;
    }
  }

  function offsetOf(position) {
    // A session stays on one partition: its positions compare by offset ("P:O").
    return position ? Number(position.split(":")[1]) : -1;
  }

  function showSummary(summary) {
    $("summary").hidden = !summary;
    $("summary").textContent = summary ? "Summary of earlier turns: " + summary : "";
  }

  function addMessage(message) {
    if (state.messages.has(message.message_id)) return;
    state.messages.set(message.message_id, message);
    const item = document.createElement("li");
    item.className = `message role-${message.role}`;
    item.dataset.messageId = message.message_id;
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = message.name ? `${message.role} · ${message.name}` : message.role;
    const content = document.createElement("span");
    content.className = "content";
    content.textContent = message.content; // never innerHTML: this is what someone typed
    item.append(role, content);
    $("messages").append(item);
    item.scrollIntoView({ block: "end" });
  }

  // -- live updates ------------------------------------------------------------------------

  function setLive(kind, text) {
    $("live-status").dataset.state = kind;
    $("live-status").textContent = text;
  }

  const sleep = (ms, signal) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      });
    });

  async function follow(sessionId, signal) {
    // Read the stream; reconnect after a break, resuming at the last event id seen.
    state.following = signal;
    let wait = RETRY_MIN_MS;
    while (!signal.aborted) {
      let answer;
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
        answer = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}/events`, {
          headers,
          signal,
          cache: "no-store",
        });
      } catch (e) {
        if (signal.aborted) return;
        setLive("reconnecting", "reconnecting…");
        await sleep(wait, signal);
        wait = Math.min(wait * 2, RETRY_MAX_MS);
        continue;
      }
      if (answer.status === 404 || answer.status === 405) {
        const error = ((await answer.json().catch(() => ({}))).error || {});
        if (error.code === "not_found") {
          ended("This session no longer exists.");
          return;
        }
        // A gateway without the event stream: read the context every second instead.
        return poll(sessionId, signal);
      }
      if (answer.status === 401) {
        signOut("Your token was refused; sign in again.");
        return;
      }
      if (!answer.ok || !answer.body) {
        setLive("reconnecting", "reconnecting…");
        await sleep(wait, signal);
        wait = Math.min(wait * 2, RETRY_MAX_MS);
        continue;
      }
      setLive("live", "live");
      wait = RETRY_MIN_MS;
      try {
        await readEvents(answer.body, signal, (event) => onEvent(sessionId, event));
      } catch (e) {
        if (signal.aborted) return;
      }
      // A closed or erased session's stream ends after its `session` event: no reconnect.
      if (signal.aborted || state.following !== signal) return;
      setLive("reconnecting", "reconnecting…");
      await sleep(wait, signal);
    }
  }

  async function readEvents(body, signal, handle) {
    // Server-Sent Events as the HTML standard parses them: lines of "field: value",
    // an event ending at a blank line; comments (":...") keep the connection alive.
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
    let buffer = "";
    let event = { id: null, type: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an unfinished line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) handle({ ...event, data: event.data.join("\n") });
          event = { id: null, type: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") event.data.push(text);
        else if (field === "event") event.type = text;
        else if (field === "id") event.id = text;
      }
    }
  }

  function onEvent(sessionId, event) {
    if (sessionId !== state.sessionId) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    handleEvent(event.type, data);
    // After handling: a reset sets the context's position, the event's own id wins.
    if (event.id) state.lastEventId = event.id;
  }

  function handleEvent(type, data) {
    if (type === "message") {
      addMessage(data);
      refreshSessionsSoon();
    } else if (type === "reset") {
      reset(data);
      refreshSessionsSoon();
    } else if (type === "summary") {
      // The summary now covers some of the messages shown: the context says which are
      // left (a message event carries no offset to compare with `summary_through`).
      showSummary(data.summary);
      reload();
    } else if (type === "session") {
      if (data.title) $("session-title").textContent = data.title;
      if (data.status === "erased") ended("This session was erased.");
      else if (data.status === "closed") ended("This session is closed; a new message reopens it.", true);
      refreshSessionsSoon();
    }
  }

  async function reload() {
    const sessionId = state.sessionId;
    try {
      const context = await api("GET", `/v1/sessions/${encodeURIComponent(sessionId)}/context`);
      if (sessionId === state.sessionId) reset(context);
    } catch (e) {
      showError(e);
    }
  }

  function ended(why, canSend) {
    // The stream is over for this session; a send to a closed one follows it again.
    state.following = null;
    const kind = canSend ? "closed" : "ended";
    setLive(kind, kind);
    $("chat-error").textContent = why;
    $("message-input").disabled = !canSend;
    $("send").disabled = !canSend;
  }

  async function poll(sessionId, signal) {
    setLive("polling", "polling");
    while (!signal.aborted) {
      try {
        const context = await api("GET", `/v1/sessions/${encodeURIComponent(sessionId)}/context`);
        if (!signal.aborted && context.position !== state.lastEventId) {
          const before = state.messages.size;
          for (const message of context.messages) addMessage(message);
          showSummary(context.summary);
          state.lastEventId = context.position;
          if (state.messages.size !== before) refreshSessionsSoon();
        }
      } catch (e) {
        if (e.status === 401) return;
      }
      await sleep(POLL_MS, signal);
    }
  }

  // -- sending -------------------------------------------------------------------------

  async function send(event) {
    event.preventDefault();
    const input = $("message-input");
    const content = input.value;
    const sessionId = state.sessionId;
    if (!content.trim() || !sessionId) return;
    $("chat-error").textContent = "";
    $("send").disabled = true;
    // One key for every attempt: a retry after an unknown outcome is stored once.
    const key = newIdempotencyKey();
    try {
      let sent;
      for (let attempt = 1; ; attempt++) {
        try {
          sent = await api(
            "POST",
            `/v1/sessions/${encodeURIComponent(sessionId)}/messages`,
            { role: "user", content },
            { "Idempotency-Key": key },
          );
          break;
        } catch (e) {
          if (e.status !== 503 || attempt >= SEND_ATTEMPTS) throw e;
          await sleep(1000 * (e.retryAfter || 1), new AbortController().signal);
        }
      }
      input.value = "";
      refreshSessionsSoon();
      if (!state.following && state.stream && sessionId === state.sessionId) {
        $("chat-error").textContent = "";
        // A stream starts from what is projected, and a closed session's ends at once:
        // wait for this message (the one reopening it) to be projected first.
        const path = `/v1/sessions/${encodeURIComponent(sessionId)}/context`;
        await api("GET", `${path}?after=${encodeURIComponent(sent.position)}`);
        if (!state.following && state.stream && sessionId === state.sessionId) {
          follow(sessionId, state.stream.signal);
        }
      }
    } catch (e) {
      showError(e);
    } finally {
      $("send").disabled = false;
      input.focus();
    }
  }

  function showError(error) {
    $("chat-error").textContent = error.message || String(error);
  }

  // -- start ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (e) => devLogin(e).catch(showLoginError));
    $("token-form").addEventListener("submit", tokenLogin);
    $("sign-out").addEventListener("click", () => signOut());
    $("new-session").addEventListener("click", newSession);
    $("send-form").addEventListener("submit", send);
    $("message-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        $("send-form").requestSubmit();
      }
    });
    const saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved) signIn(saved);
  });

  function showLoginError(error) {
    $("login-error").textContent = error.message || String(error);
  }
})();
