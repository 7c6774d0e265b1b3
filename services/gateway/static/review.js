// The review queue page: lists a bot's review items (an admin key, or a person signed in with
// single sign-on: viewer to read, editor to decide) and decides them.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const session = { key: "", bot: "" };

  function setStatus(text, error = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  }

  // With an API key, it is the bearer; without, the session cookie of single sign-on
  // (/auth/login) is sent, and X-Requested-With tells the gateway the call is this page's.
  async function api(method, path, body) {
    const headers = { "Content-Type": "application/json", "X-Requested-With": "botfactory" };
    if (session.key) headers.Authorization = `Bearer ${session.key}`;
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const errors = (data.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
      throw new Error(errors || data.detail || `HTTP ${response.status}`);
    }
    return data;
  }

  const base = () => `/v1/admin/bots/${encodeURIComponent(session.bot)}/review`;

  function describe(item) {
    const predicted = item.predicted.intent || "(none)";
    return `seen ${item.count}× · confidence ${item.min_confidence.toFixed(2)} · ` +
      `predicted ${predicted} · ${item.reasons.join(", ")} · priority ${item.priority.toFixed(3)}`;
  }

  function suggestedSpans(item) {
    return item.predicted.entities.filter((e) => e.start !== null && e.start !== undefined)
      .map((e) => ({ entity: e.entity, start: e.start, end: e.end }));
  }

  async function act(node, path, body) {
    try {
      await api("POST", `${base()}/${path}`, body);
      node.remove();
      setStatus(`${path === "skips" ? "skipped" : "saved"}: ${body.item}`);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  function render(item) {
    const node = $("item-template").content.firstElementChild.cloneNode(true);
    node.dataset.item = item.id;
    node.querySelector(".text").textContent = item.text;
    node.querySelector(".meta").textContent = describe(item);
    const form = node.querySelector("form");
    const decision = item.decision || {};
    form.intent.value = decision.intent || item.predicted.intent || "";
    const spans = decision.entities || suggestedSpans(item);
    form.entities.value = spans.length ? JSON.stringify(spans) : "";
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let entities = [];
      try {
        entities = form.entities.value.trim() ? JSON.parse(form.entities.value) : [];
      } catch {
        setStatus("entities: not valid JSON", true);
        return;
      }
      act(node, "decisions", { item: item.id, intent: form.intent.value.trim(), entities });
    });
    node.querySelector(".oos").addEventListener("click",
      () => act(node, "decisions", { item: item.id, out_of_scope: true }));
    node.querySelector(".skip").addEventListener("click",
      () => act(node, "skips", { item: item.id }));
    return node;
  }

  async function load(event) {
    event.preventDefault();
    session.key = $("api-key").value.trim();
    session.bot = $("bot").value.trim();
    const query = new URLSearchParams({ status: $("status-filter").value, limit: "100" });
    if ($("reason").value) query.set("reason", $("reason").value);
    try {
      const data = await api("GET", `${base()}?${query}`);
      $("items").replaceChildren(...data.items.map(render));
      $("count").textContent = `${data.items.length} items`;
      setStatus(data.items.length ? "" : "nothing to review");
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  $("settings").addEventListener("submit", load);
})();
