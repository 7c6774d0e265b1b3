// botfactory web chat: talks to the gateway's HTTP API and WebSocket. No build step.
// The page trades the API key it is given (a client key) for a visitor token of its
// conversation and uses only that token from then on; it asks for a new one when the token
// expires. Given a visitor token (bfv_...) instead of a key, it uses it as it is.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    settings: $("settings"), apiKey: $("api-key"), bot: $("bot"),
    conversation: $("conversation"), messages: $("messages"), status: $("status"),
    composer: $("composer"), text: $("text"), send: $("send"), connection: $("connection"),
  };
  const session = {
    key: "", token: "", bot: "", conversation: "", socket: null, retry: 0, closing: false,
  };
  const seen = new Set(); // bot message ids already shown (replies come by HTTP and socket)

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function showStatus(text) { els.status.textContent = text || ""; }

  function base() {
    const bot = encodeURIComponent(session.bot);
    const conversation = encodeURIComponent(session.conversation);
    return `/v1/bots/${bot}/conversations/${conversation}`;
  }

  async function request(method, path, body, credential) {
    const response = await fetch(path, {
      method,
      headers: { "Authorization": `Bearer ${credential}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = data.detail || response.statusText;
      const error = new Error(`${response.status}: ${detail}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  const isVisitorToken = (credential) => credential.startsWith("bfv_");

  // A visitor token of this conversation, asked for with the API key.
  async function renewToken() {
    if (isVisitorToken(session.key)) {
      session.token = session.key;
      return false; // nothing to renew it with
    }
    const issued = await request("POST", `${base()}/tokens`, undefined, session.key);
    session.token = issued.token;
    return true;
  }

  // A call with the visitor token; once more with a new token when it has expired.
  async function api(method, path, body) {
    try {
      return await request(method, path, body, session.token);
    } catch (error) {
      if (error.status !== 401 || !(await renewToken())) throw error;
      return request(method, path, body, session.token);
    }
  }

  // --- rendering ----------------------------------------------------------------------------

  function scrollDown() { els.messages.scrollTop = els.messages.scrollHeight; }

  function addUserMessage(text) {
    const item = document.createElement("li");
    item.className = "message user";
    item.dataset.testid = "user-message";
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    item.append(bubble);
    els.messages.append(item);
    scrollDown();
  }

  function addBotMessage(reply) {
    if (reply.message_id && seen.has(reply.message_id)) return;
    if (reply.message_id) seen.add(reply.message_id);
    const role = reply.role === "agent" ? "agent" : "bot";
    const item = document.createElement("li");
    item.className = `message ${role}`;
    item.dataset.testid = "bot-message";
    item.dataset.messageId = reply.message_id || "";
    if (role === "agent") {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = "Agent";
      item.append(who);
    }
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = reply.text || "";
    item.append(bubble);
    if (reply.citations && reply.citations.length) item.append(sources(reply.citations));
    if (reply.buttons && reply.buttons.length) item.append(quickReplies(reply.buttons));
    if (reply.message_id) item.append(feedbackControls(reply.message_id));
    els.messages.append(item);
    scrollDown();
  }

  // "Source: <title>" under a knowledge-base answer; a link only for an http(s) url.
  function sources(citations) {
    const box = document.createElement("div");
    box.className = "sources";
    for (const citation of citations) {
      const line = document.createElement("div");
      line.className = "source";
      line.dataset.testid = "citation";
      line.append("Source: ");
      const title = citation.title || citation.document || "";
      if (/^https?:\/\//i.test(citation.url || "")) {
        const link = document.createElement("a");
        link.href = citation.url;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        link.textContent = title;
        line.append(link);
      } else {
        line.append(title);
      }
      box.append(line);
    }
    return box;
  }

  function quickReplies(buttons) {
    const box = document.createElement("div");
    box.className = "buttons";
    for (const button of buttons) {
      const element = document.createElement("button");
      element.type = "button";
      element.dataset.testid = "quick-reply";
      element.textContent = button.title;
      element.addEventListener("click", () => {
        send(button.payload || button.title, button.title);
      });
      box.append(element);
    }
    return box;
  }

  function feedbackControls(messageId) {
    const box = document.getElementById("feedback-template").content.firstElementChild
      .cloneNode(true);
    const form = box.querySelector(".comment");
    const thanks = box.querySelector(".thanks");
    let rating = 0;
    for (const thumb of box.querySelectorAll(".thumb")) {
      thumb.addEventListener("click", () => {
        rating = Number(thumb.dataset.rating);
        box.querySelectorAll(".thumb").forEach((t) => t.classList.toggle("chosen", t === thumb));
        form.hidden = false;
        thanks.hidden = true;
        form.elements.comment.focus();
      });
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const comment = form.elements.comment.value.trim();
      try {
        const body = comment ? { rating, comment } : { rating };
        await api("POST", `${base()}/messages/${encodeURIComponent(messageId)}/feedback`, body);
        form.hidden = true;
        thanks.hidden = false;
      } catch (error) {
        showStatus(`Feedback not sent: ${error.message}`);
      }
    });
    return box;
  }

  function renderTranscript(entries) {
    for (const entry of entries) {
      if (entry.type === "user") addUserMessage(entry.text || "");
      else if (entry.type === "bot" || entry.type === "agent") {
        addBotMessage({ ...entry, role: entry.role || (entry.type === "agent" ? "agent" : "bot") });
      }
    }
  }

  // --- sending --------------------------------------------------------------------------------

  async function send(text, shown) {
    const message = { text, message_id: randomId() };
    addUserMessage(shown || text);
    showStatus("");
    els.send.disabled = true;
    try {
      const result = await postWithRetry(message);
      result.replies.forEach(addBotMessage);
      if (!result.complete) showStatus("The bot is still working on it…");
    } catch (error) {
      showStatus(`Not sent: ${error.message}`);
    } finally {
      els.send.disabled = false;
      els.text.focus();
    }
  }

  async function postWithRetry(message) {
    try {
      return await api("POST", `${base()}/messages`, message);
    } catch (error) {
      if (error.status !== undefined && error.status < 500) throw error;
      // Network error or 5xx: the same message_id makes a retry safe (no duplicate).
      await new Promise((resolve) => setTimeout(resolve, 500));
      return api("POST", `${base()}/messages`, message);
    }
  }

  // --- live messages (WebSocket) --------------------------------------------------------------

  function openSocket() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${base()}/ws`,
      ["botfactory.v1", `bearer.${session.token}`]);
    session.socket = socket;
    socket.addEventListener("open", () => {
      session.retry = 0;
      els.connection.textContent = "live";
      els.connection.classList.add("live");
    });
    socket.addEventListener("message", (event) => {
      const data = JSON.parse(event.data);
      if (data.type === "message") addBotMessage(data);
      else if (data.type === "error") showStatus(data.detail);
    });
    socket.addEventListener("close", (event) => {
      els.connection.textContent = "not live";
      els.connection.classList.remove("live");
      if (session.closing || session.socket !== socket) return;
      // 4401: the token stopped working; nothing to renew it with when given a token
      if (event.code === 4401 && isVisitorToken(session.key)) return;
      const delay = Math.min(30000, 1000 * 2 ** session.retry++);
      setTimeout(() => reconnect(socket), delay);
    });
  }

  // Reopen with a fresh token (the old one may have expired while the socket was open).
  async function reconnect(socket) {
    if (session.socket !== socket) return;
    try {
      await renewToken();
    } catch (error) {
      if (error.status !== undefined && error.status < 500) {
        showStatus(`Not live: ${error.message}`);
        return;
      }
    }
    if (session.socket === socket) openSocket();
  }

  // --- wiring ---------------------------------------------------------------------------------

  async function start(event) {
    event.preventDefault();
    session.closing = true;
    if (session.socket) session.socket.close();
    session.key = els.apiKey.value.trim();
    session.bot = els.bot.value.trim();
    session.conversation = els.conversation.value.trim() || randomId();
    els.conversation.value = session.conversation;
    sessionStorage.setItem("botfactory.chat", JSON.stringify(
      { bot: session.bot, conversation: session.conversation }));
    els.messages.replaceChildren();
    seen.clear();
    showStatus("");
    try {
      await renewToken();
      const transcript = await api("GET", `${base()}/transcript?limit=100`);
      renderTranscript(transcript.entries || []);
    } catch (error) {
      showStatus(`Cannot start: ${error.message}`);
      return;
    }
    session.closing = false;
    els.text.disabled = false;
    els.send.disabled = false;
    els.text.focus();
    openSocket();
  }

  // With an input method (Chinese pinyin, Japanese kana, ...) the Enter that ends a
  // composition picks the characters; it must not also send (an Enter in the text field
  // submits the form). Chromium and Firefox mark that keydown isComposing, some browsers give
  // it keyCode 229, and Safari fires it just after compositionend: an Enter that soon after one
  // is held back too. The next Enter sends.
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

  function submit(event) {
    event.preventDefault();
    const text = els.text.value.trim();
    if (!text) return;
    els.text.value = "";
    send(text);
  }

  function restore() {
    try {
      const saved = JSON.parse(sessionStorage.getItem("botfactory.chat") || "{}");
      if (saved.bot) els.bot.value = saved.bot;
      if (saved.conversation) els.conversation.value = saved.conversation;
    } catch (_) { /* ignore a malformed saved state */ }
    const params = new URLSearchParams(location.search);
    if (params.get("bot")) els.bot.value = params.get("bot");
  }

  els.settings.addEventListener("submit", start);
  els.composer.addEventListener("submit", submit);
  holdComposingEnter(els.text);
  restore();
})();
