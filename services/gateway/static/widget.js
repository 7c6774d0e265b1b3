// botfactory web widget (docs/channels.md, "The web widget"). Any site embeds it with
//   <script src="https://GATEWAY/widget.js" data-bot="banking" data-key="pk_..." async></script>
// Plain ES2020, no build step, no dependencies, no requests but to the gateway it came from.
//
// The page holds only a publishable key (pk_): it reads the bot's theme and starts a session,
// which gives a visitor token (bfv_) of one conversation; everything else (messages, the live
// WebSocket, the transcript) uses that token. The session is kept in localStorage per bot, so
// a reload resumes the conversation while its token is valid (then a new one starts, and the
// visitor is told). Everything lives in a Shadow DOM: the page's CSS does not reach in, the
// widget's does not leak out.
"use strict";

(() => {
  const script = document.currentScript ||
    document.querySelector('script[src*="widget.js"][data-bot][data-key]');
  if (!script || !script.dataset.bot || !script.dataset.key) return;
  const bot = script.dataset.bot;
  const key = script.dataset.key;
  if (document.querySelector(`botfactory-widget[data-bot="${CSS.escape(bot)}"]`)) return;

  const gateway = new URL(script.src, location.href).origin;
  const botPath = `${gateway}/v1/bots/${encodeURIComponent(bot)}`;
  const storageKey = `botfactory-widget:${bot}`;
  const RENEW_BEFORE_MS = 120000; // renew the token this long before it expires
  const TYPING_TIMEOUT_MS = 30000;

  const state = {
    session: null, starting: null, socket: null, retry: 0, closing: false,
    open: false, unread: 0, typingTimer: 0,
    seen: new Set(), titles: new Map(), theme: null,
  };

  // --- the gateway ---------------------------------------------------------------------------

  async function call(method, url, credential, body) {
    const headers = { "Authorization": `Bearer ${credential}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method, headers, mode: "cors", credentials: "omit", referrerPolicy: "no-referrer",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(data.detail || response.statusText || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function conversationPath() {
    return `${botPath}/conversations/${encodeURIComponent(state.session.conversation_id)}`;
  }

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- the session (visitor token), kept per bot across reloads ---------------------------------

  function savedSession() {
    try {
      const saved = JSON.parse(localStorage.getItem(storageKey) || "null");
      return saved && saved.token && saved.conversation_id ? saved : null;
    } catch (_) {
      return null; // storage off or malformed: start afresh
    }
  }

  function saveSession(session) {
    try {
      localStorage.setItem(storageKey, JSON.stringify({
        conversation_id: session.conversation_id, token: session.token,
        expires_at_unix_ms: session.expires_at_unix_ms,
      }));
    } catch (_) { /* storage off: the conversation lasts as long as the page */ }
  }

  // Ask the gateway for a session: the held (or saved) token's conversation while the token
  // is valid, else a new conversation. Once at a time.
  function ensureSession() {
    if (state.session) return Promise.resolve(state.session);
    return renewSession(savedSession());
  }

  function renewSession(held) {
    if (!state.starting) {
      state.starting = requestSession(held).finally(() => { state.starting = null; });
    }
    return state.starting;
  }

  async function requestSession(held) {
    const body = held ? { visitor_token: held.token, conversation_id: held.conversation_id } : {};
    const session = await call("POST", `${botPath}/widget/sessions`, key, body);
    const previous = state.session;
    state.session = session;
    saveSession(session);
    if (held && !session.resumed) {
      notice(session.restarted === "expired"
        ? "Your previous conversation has expired, so a new one has started."
        : "Your previous conversation could not be resumed, so a new one has started.");
    }
    if (previous && previous.conversation_id !== session.conversation_id) resetLog();
    if (session.resumed && (!previous || previous.conversation_id !== session.conversation_id)) {
      await loadTranscript();
    }
    openSocket();
    return session;
  }

  // A token about to expire is renewed first (same conversation while it is still valid).
  async function freshSession() {
    const session = await ensureSession();
    if (session.expires_at_unix_ms - Date.now() > RENEW_BEFORE_MS) return session;
    return renewSession(session);
  }

  async function loadTranscript() {
    try {
      const transcript = await call("GET", `${conversationPath()}/transcript?limit=100`,
        state.session.token);
      for (const entry of transcript.entries || []) {
        if (entry.type === "user") addUser(state.titles.get(entry.text) || entry.text || "");
        else if (entry.type === "bot" || entry.type === "agent") {
          addBot({ ...entry, role: entry.type }, { quiet: true });
        }
      }
    } catch (error) {
      notice(`The earlier messages could not be loaded (${error.message}).`);
    }
  }

  // --- live messages ---------------------------------------------------------------------------

  function openSocket() {
    if (state.socket) {
      const old = state.socket;
      state.socket = null;
      old.close();
    }
    const url = `${gateway.replace(/^http/, "ws")}${conversationPath().slice(gateway.length)}/ws`;
    const socket = new WebSocket(url, ["botfactory.v1", `bearer.${state.session.token}`]);
    state.socket = socket;
    socket.addEventListener("open", () => { state.retry = 0; });
    socket.addEventListener("message", (event) => {
      let data = null;
      try { data = JSON.parse(event.data); } catch (_) { return; }
      if (data.type === "message") addBot(data);
    });
    socket.addEventListener("close", (event) => {
      if (state.closing || state.socket !== socket) return;
      state.socket = null;
      const delay = event.code === 4401 ? 0 : Math.min(30000, 1000 * 2 ** state.retry++);
      setTimeout(() => reconnect(event.code === 4401), delay);
    });
  }

  async function reconnect(expired) {
    if (state.closing || state.socket) return;
    try {
      if (expired) await renewSession(state.session);
      else await freshSession();
      if (!state.socket) openSocket();
    } catch (_) {
      setTimeout(() => reconnect(false), Math.min(30000, 1000 * 2 ** state.retry++));
    }
  }

  // --- sending ---------------------------------------------------------------------------------

  async function send(text, shown) {
    addUser(shown || text);
    notice("");
    typing(true);
    const message = { text, message_id: randomId() };
    try {
      const result = await post(message, shown || text);
      (result.replies || []).forEach((reply) => addBot(reply));
      if (result.complete === false) return; // the rest comes on the socket
    } catch (error) {
      notice(`Your message was not sent: ${error.message}`);
    }
    typing(false);
  }

  async function post(message, shown) {
    const session = await freshSession();
    try {
      return await call("POST", `${conversationPath()}/messages`, session.token, message);
    } catch (error) {
      if (error.status === 401) { // the token expired meanwhile: renew it, then send again
        await renewSession(state.session);
        if (state.session.conversation_id !== session.conversation_id) addUser(shown);
        return call("POST", `${conversationPath()}/messages`, state.session.token, message);
      }
      if (error.status !== undefined && error.status < 500) throw error;
      // A network error or 5xx: the same message_id makes the retry safe (no duplicate).
      await new Promise((resolve) => setTimeout(resolve, 800));
      return call("POST", `${conversationPath()}/messages`, state.session.token, message);
    }
  }

  // --- the view --------------------------------------------------------------------------------

  const CSS_TEXT = `
    :host { all: initial !important; display: block !important; }
    .root { all: initial; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
      color: #1d1d1f; --accent: #0b5fff; --on-accent: #fff; }
    .root *, .root *::before, .root *::after { box-sizing: border-box; }
    .sr { position: absolute; width: 1px; height: 1px; overflow: hidden;
      clip: rect(0 0 0 0); white-space: nowrap; }
    button, input { font: inherit; color: inherit; margin: 0; }
    button:focus-visible, input:focus-visible { outline: 3px solid #ffbf47; outline-offset: 2px; }
    [hidden] { display: none !important; }
    .launcher { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000;
      width: 60px; height: 60px; border-radius: 50%; border: 0; cursor: pointer;
      background: var(--accent); color: var(--on-accent);
      box-shadow: 0 6px 20px rgba(0,0,0,.25); display: grid; place-items: center; }
    .launcher svg { width: 28px; height: 28px; fill: currentColor; }
    .badge { position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px;
      padding: 0 6px; border-radius: 11px; background: #d1242f; color: #fff;
      font-size: 12px; font-weight: 700; line-height: 22px; text-align: center;
      box-shadow: 0 0 0 2px #fff; }
    .panel { position: fixed; right: 20px; bottom: 92px; z-index: 2147483000;
      width: 370px; height: min(600px, calc(100vh - 112px)); display: flex;
      flex-direction: column; background: #fff; border-radius: 14px; overflow: hidden;
      box-shadow: 0 12px 40px rgba(0,0,0,.28); }
    header { display: flex; align-items: center; gap: 10px; padding: 12px 12px 12px 16px;
      background: var(--accent); color: var(--on-accent); }
    header img { width: 32px; height: 32px; border-radius: 50%; object-fit: cover;
      background: rgba(255,255,255,.3); }
    header h2 { flex: 1; margin: 0; font-size: 16px; font-weight: 600; overflow: hidden;
      text-overflow: ellipsis; white-space: nowrap; }
    .close { width: 36px; height: 36px; border: 0; border-radius: 8px; cursor: pointer;
      background: transparent; color: inherit; font-size: 24px; line-height: 1; }
    .close:hover { background: rgba(255,255,255,.18); }
    .log { flex: 1; overflow-y: auto; padding: 14px; display: flex; flex-direction: column;
      gap: 8px; background: #f6f7f9; overscroll-behavior: contain; }
    .msg { display: flex; flex-direction: column; max-width: 85%; }
    .msg.user { align-self: flex-end; align-items: flex-end; }
    .msg.bot, .msg.agent { align-self: flex-start; align-items: flex-start; }
    .bubble { padding: 8px 12px; border-radius: 14px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
    .user .bubble { background: var(--accent); color: var(--on-accent);
      border-bottom-right-radius: 4px; }
    .bot .bubble, .agent .bubble { background: #fff; border: 1px solid #e3e5e8;
      border-bottom-left-radius: 4px; }
    .who { font-size: 12px; color: #5b616b; margin: 0 0 2px 4px; }
    .buttons { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
    .quick { border: 1.5px solid var(--accent); color: var(--accent); background: #fff;
      border-radius: 16px; padding: 5px 12px; cursor: pointer; }
    .quick:hover:not(:disabled) { background: var(--accent); color: var(--on-accent); }
    .quick:disabled { opacity: .5; cursor: default; }
    .typing { align-self: flex-start; padding: 10px 14px; background: #fff;
      border: 1px solid #e3e5e8; border-radius: 14px; margin: 0 14px 8px; width: fit-content; }
    .dots span { display: inline-block; width: 7px; height: 7px; margin: 0 2px;
      border-radius: 50%; background: #8a9099; animation: bf-blink 1.2s infinite both; }
    .dots span:nth-child(2) { animation-delay: .2s; }
    .dots span:nth-child(3) { animation-delay: .4s; }
    @keyframes bf-blink { 0%, 80%, 100% { opacity: .25; } 40% { opacity: 1; } }
    @media (prefers-reduced-motion: reduce) { .dots span { animation: none; } }
    .notice { margin: 0; padding: 0 14px; font-size: 13px; color: #8a2a0c; }
    .notice:not(:empty) { padding: 8px 14px; background: #fff4e5; }
    form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e3e5e8;
      background: #fff; }
    input { flex: 1; min-width: 0; padding: 10px 12px; border: 1px solid #c7cbd1;
      border-radius: 10px; background: #fff; }
    .send { border: 0; border-radius: 10px; padding: 0 16px; cursor: pointer;
      background: var(--accent); color: var(--on-accent); font-weight: 600; }
    @media (max-width: 480px) {
      .panel { inset: 0; width: 100%; height: 100%; border-radius: 0; }
      .root.open .launcher { display: none; }
    }`;

  const host = document.createElement("botfactory-widget");
  host.dataset.bot = bot;
  const shadow = host.attachShadow({ mode: "open" });
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name in node && !name.startsWith("aria")) node[name] = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  };

  const ui = {};

  function build(theme) {
    const style = el("style", { textContent: CSS_TEXT });
    ui.root = el("div", { className: "root", dataset: { testid: "widget" } });
    ui.root.style.setProperty("--accent", theme.color);
    ui.root.style.setProperty("--on-accent", readableOn(theme.color));
    ui.badge = el("span", { className: "badge", hidden: true, "aria-hidden": "true",
      dataset: { testid: "widget-unread" } });
    ui.launcher = el("button", { type: "button", className: "launcher",
      "aria-expanded": "false", "aria-controls": "bf-panel",
      "aria-label": `Open chat: ${theme.title}`, dataset: { testid: "widget-launcher" } });
    ui.launcher.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 ' +
      "2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z\"/></svg>";
    ui.launcher.append(ui.badge);
    ui.title = el("h2", { id: "bf-title", textContent: theme.title });
    const avatar = el("img", { alt: "", hidden: !theme.avatar_url,
      referrerPolicy: "no-referrer" });
    if (theme.avatar_url) avatar.src = theme.avatar_url;
    ui.close = el("button", { type: "button", className: "close", textContent: "×",
      "aria-label": "Close chat", dataset: { testid: "widget-close" } });
    ui.log = el("div", { className: "log", role: "log", "aria-live": "polite",
      "aria-relevant": "additions", "aria-label": "Conversation", tabIndex: 0,
      dataset: { testid: "widget-log" } });
    ui.typing = el("div", { className: "typing", role: "status", hidden: true,
      dataset: { testid: "widget-typing" } },
    el("span", { className: "dots", "aria-hidden": "true" }, el("span"), el("span"), el("span")),
    el("span", { className: "sr", textContent: `${theme.title} is typing…` }));
    ui.notice = el("p", { className: "notice", role: "status",
      dataset: { testid: "widget-notice" } });
    ui.input = el("input", { id: "bf-input", type: "text", maxLength: 2000,
      autocomplete: "off", placeholder: "Type a message…", enterKeyHint: "send",
      dataset: { testid: "widget-input" } });
    ui.form = el("form", { "aria-label": "Send a message" },
      el("label", { className: "sr", htmlFor: "bf-input", textContent: "Message" }), ui.input,
      el("button", { type: "submit", className: "send", textContent: "Send",
        dataset: { testid: "widget-send" } }));
    ui.panel = el("div", { id: "bf-panel", className: "panel", role: "dialog",
      "aria-modal": "false", "aria-labelledby": "bf-title", hidden: true,
      dataset: { testid: "widget-panel" } },
    el("header", {}, avatar, ui.title, ui.close), ui.log, ui.typing, ui.notice, ui.form);
    ui.root.append(ui.panel, ui.launcher);
    shadow.append(style, ui.root);
    resetLog();
    wire();
    document.body.append(host);
  }

  // Black or white text, whichever reads better on the theme colour (WCAG luminance).
  function readableOn(color) {
    let hex = color.slice(1);
    if (hex.length === 3) hex = hex.replace(/./g, (c) => c + c);
    const [r, g, b] = [0, 2, 4].map((i) => {
      const c = parseInt(hex.slice(i, i + 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 ? "#111" : "#fff";
  }

  function resetLog() {
    ui.log.replaceChildren();
    state.seen.clear();
    if (state.theme && state.theme.greeting) {
      addBot({ text: state.theme.greeting, role: "bot" }, { quiet: true });
    }
  }

  function scrollDown() { ui.log.scrollTop = ui.log.scrollHeight; }

  function addUser(text) {
    for (const old of ui.log.querySelectorAll(".quick")) old.disabled = true;
    ui.log.append(el("div", { className: "msg user", dataset: { testid: "widget-user-message" } },
      el("span", { className: "sr", textContent: "You: " }),
      el("div", { className: "bubble", textContent: text })));
    scrollDown();
  }

  // A bot (or human agent) message, once (replies come by HTTP and on the socket).
  function addBot(reply, { quiet = false } = {}) {
    if (reply.message_id) {
      if (state.seen.has(reply.message_id)) return;
      state.seen.add(reply.message_id);
    }
    const agent = reply.role === "agent";
    const who = agent ? "Agent" : state.theme.title;
    const item = el("div", { className: `msg ${agent ? "agent" : "bot"}`,
      dataset: { testid: "widget-bot-message" } });
    if (agent) item.append(el("span", { className: "who", "aria-hidden": "true", textContent: who }));
    item.append(el("span", { className: "sr", textContent: `${who}: ` }),
      el("div", { className: "bubble", textContent: reply.text || "" }));
    if (reply.buttons && reply.buttons.length) item.append(quickReplies(reply.buttons));
    ui.log.append(item);
    scrollDown();
    if (!quiet) {
      typing(false);
      if (!state.open) setUnread(state.unread + 1);
    }
  }

  function quickReplies(buttons) {
    const box = el("div", { className: "buttons", role: "group", "aria-label": "Suggested replies" });
    for (const button of buttons) {
      const payload = button.payload || button.title;
      state.titles.set(payload, button.title);
      const element = el("button", { type: "button", className: "quick",
        textContent: button.title, dataset: { testid: "widget-quick-reply" } });
      element.addEventListener("click", () => {
        send(payload, button.title);
        ui.input.focus(); // the pressed button is disabled now: keep the focus in the panel
      });
      box.append(element);
    }
    return box;
  }

  // Waiting for the bot: the indicator shows from a send until the first answer (or a
  // timeout, when the bot says nothing).
  function typing(on) {
    ui.typing.hidden = !on;
    clearTimeout(state.typingTimer);
    if (on) state.typingTimer = setTimeout(() => typing(false), TYPING_TIMEOUT_MS);
    scrollDown();
  }

  function notice(text) { if (ui.notice) ui.notice.textContent = text; }

  function setUnread(count) {
    state.unread = count;
    ui.badge.hidden = count === 0;
    ui.badge.textContent = String(count);
    const unread = count ? `, ${count} unread message${count === 1 ? "" : "s"}` : "";
    ui.launcher.setAttribute("aria-label", `Open chat: ${state.theme.title}${unread}`);
  }

  function openPanel() {
    state.open = true;
    ui.panel.hidden = false;
    ui.root.classList.add("open");
    ui.launcher.setAttribute("aria-expanded", "true");
    setUnread(0);
    ui.input.focus();
    scrollDown();
    ensureSession().catch((error) => notice(`The chat is not available: ${error.message}`));
  }

  function closePanel() {
    state.open = false;
    ui.panel.hidden = true;
    ui.root.classList.remove("open");
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.focus();
  }

  // With an input method (Chinese pinyin, Japanese kana, ...) the Enter that ends a
  // composition picks the characters; it must not also send (an Enter in the text field
  // submits the form). Chromium and Firefox mark that keydown isComposing, some browsers give
  // it keyCode 229, and Safari fires it just after compositionend: an Enter that soon after one
  // is held back too. The next Enter sends. (The same as the web chat page's chat.js.)
  const COMPOSITION_GUARD_MS = 100;

  function holdComposingEnter(input) {
    let composing = false;
    let endedAt = -Infinity;
    input.addEventListener("compositionstart", () => { composing = true; });
    input.addEventListener("compositionend", () => {
      composing = false;
      endedAt = performance.now();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      const justEnded = performance.now() - endedAt < COMPOSITION_GUARD_MS;
      if (event.isComposing || event.keyCode === 229 || composing || justEnded) {
        event.preventDefault();
      }
    });
  }

  function wire() {
    ui.launcher.addEventListener("click", () => (state.open ? closePanel() : openPanel()));
    ui.close.addEventListener("click", closePanel);
    shadow.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.open) {
        event.stopPropagation();
        closePanel();
      }
    });
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = ui.input.value.trim();
      if (!text) return;
      ui.input.value = "";
      send(text);
    });
    holdComposingEnter(ui.input);
    window.addEventListener("pagehide", () => {
      state.closing = true;
      if (state.socket) state.socket.close();
    });
  }

  async function start() {
    let theme;
    try {
      theme = await call("GET", `${botPath}/widget/config`, key);
    } catch (error) {
      console.warn(`botfactory widget: not shown for bot ${bot}: ${error.message}`);
      return;
    }
    state.theme = theme;
    build(theme);
    // A conversation from an earlier visit: resume it now (transcript, live replies, unread).
    if (savedSession()) {
      ensureSession().catch((error) => notice(`The chat is not available: ${error.message}`));
    }
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start, { once: true });
})();
