// aligntime playground: talks only to this server's public API, with the key the user
// gives (kept in sessionStorage for this tab). Every piece of text from a model, a user or
// a file is inserted as a text node (textContent), never parsed as HTML.
"use strict";
(() => {
  const KEY_STORE = "aligntime.key";
  const THEME_STORE = "aligntime.theme";
  const $ = (sel, root = document) => root.querySelector(sel);

  // --- small DOM helpers ----------------------------------------------------------------
  // el("p", {class: "x"}, "text", child): attributes with setAttribute, strings as text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const clear = (node) => { node.replaceChildren(); return node; };
  const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
  const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");
  const cut = (s, n = 90) => { s = String(s || "").replace(/\s+/g, " ").trim(); return s.length > n ? s.slice(0, n - 1) + "…" : s; };
  const say = (node, text, isError) => { node.textContent = text; node.classList.toggle("error", !!isError); };

  // --- the API ----------------------------------------------------------------------------
  let apiKey = sessionStorage.getItem(KEY_STORE) || "";

  class ApiFailure extends Error {
    constructor(status, body, fallback) {
      const err = body && body.error ? body.error : null;
      super(err && err.message ? err.message : fallback);
      this.status = status; this.param = err ? err.param : null; this.code = err ? err.code : null;
    }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    const res = await fetch(path, Object.assign({}, options, { headers, cache: "no-store", credentials: "omit" }));
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      throw new ApiFailure(res.status, body, res.status + " " + res.statusText);
    }
    return res;
  }
  const getJson = async (path) => (await api(path)).json();

  function explain(err) {
    if (err instanceof ApiFailure && err.status === 401) return err.message + " — enter an API key above.";
    if (err instanceof ApiFailure && err.status === 429) return err.message;
    return err && err.message ? err.message : String(err);
  }

  // --- key and theme ----------------------------------------------------------------------
  function setupKey() {
    const input = $("#api-key");
    const status = $("#key-status");
    const show = () => say(status, apiKey ? "An API key is set for this tab." : "No API key set (a server with keys answers 401 without one).");
    input.value = "";
    show();
    $("#key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      apiKey = input.value.trim();
      if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey); else sessionStorage.removeItem(KEY_STORE);
      input.value = "";
      show();
      refreshView();
    });
    $("#key-forget").addEventListener("click", () => {
      apiKey = ""; sessionStorage.removeItem(KEY_STORE); show(); refreshView();
    });
  }

  function setupTheme() {
    const button = $("#theme");
    const systemDark = window.matchMedia("(prefers-color-scheme: dark)");
    const apply = () => {
      const chosen = localStorage.getItem(THEME_STORE);
      const dark = chosen ? chosen === "dark" : systemDark.matches;
      document.documentElement.setAttribute("data-theme", dark ? "dark" : "light");
      button.setAttribute("aria-pressed", dark ? "true" : "false");
    };
    button.addEventListener("click", () => {
      const dark = button.getAttribute("aria-pressed") !== "true";
      localStorage.setItem(THEME_STORE, dark ? "dark" : "light");
      apply();
    });
    systemDark.addEventListener("change", apply);
    apply();
  }

  // --- views and navigation ---------------------------------------------------------------
  const VIEWS = { "/": "play", "/audit": "audit", "/reports": "reports" };
  let current = null;

  function showView(path, focus) {
    const view = VIEWS[path] || "play";
    current = view;
    for (const name of Object.values(VIEWS)) $("#view-" + name).hidden = name !== view;
    for (const link of document.querySelectorAll("nav a[data-view]")) {
      if (link.dataset.view === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = { play: "Playground", audit: "Audit log", reports: "Reports" }[view] + " · aligntime";
    if (focus) $("#main").focus();
    refreshView();
  }

  function refreshView() {
    if (current === "play") loadPolicies();
    else if (current === "audit") loadAudit();
    else if (current === "reports") loadReports();
  }

  function setupNav() {
    for (const link of document.querySelectorAll("nav a[data-view]")) {
      link.addEventListener("click", (ev) => {
        if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
        ev.preventDefault();
        const path = new URL(link.href).pathname;
        if (path !== location.pathname) history.pushState(null, "", path);
        showView(path, true);
      });
    }
    window.addEventListener("popstate", () => showView(location.pathname, true));
  }

  // --- candidates -------------------------------------------------------------------------
  // One card per candidate: verdict in words and a symbol (not colour alone), a bar and
  // value per scorer, and the reason it lost.
  function gateBreach(value, gate) {
    if (!gate || value === null || value === undefined) return null;
    if (gate.max !== null && gate.max !== undefined && value > gate.max) return "above max " + gate.max;
    if (gate.min !== null && gate.min !== undefined && value < gate.min) return "below min " + gate.min;
    return null;
  }

  function lossReason(c, chosen, info) {
    if (c.chosen) {
      return info.strategy === "best_of_n" || !info.strategy
        ? "Chosen: the highest combined score among the candidates that passed every gate."
        : "Chosen by the " + info.strategy + " strategy.";
    }
    if (!c.passed) {
      const parts = (c.gate_failures || []).map((name) => {
        const v = c.scores ? c.scores[name] : undefined;
        const why = gateBreach(v, (info.gates || {})[name]);
        return v === undefined ? name : name + " " + fmt(v) + (why ? " (" + why + ")" : "");
      });
      return "Lost: failed gate " + (parts.join(", ") || "(unnamed)") + ".";
    }
    if (!chosen) return info.failClosed ? "Lost: a gating scorer failed, so the request failed closed." : "Lost: no candidate was chosen; the fallback was returned.";
    if (c.score !== null && chosen.score !== null && c.score < chosen.score) {
      return "Lost: lower combined score (" + fmt(c.score) + " < " + fmt(chosen.score) + ").";
    }
    if (c.score === chosen.score) return "Lost: same combined score as the chosen one; the earlier candidate wins ties.";
    return "Lost: not picked by the " + (info.strategy || "policy's") + " strategy.";
  }

  function scoreRows(c, info, chosen) {
    const dl = el("dl", { class: "scores" });
    const bar = (frac, over) => el("span", { class: over ? "bar over" : "bar", "aria-hidden": "true" },
      el("span", { style: null, "data-w": String(Math.round(Math.max(0, Math.min(1, frac)) * 100)) }));
    const add = (name, value, frac, note) => {
      const b = bar(frac, !!note);
      dl.append(el("dt", {}, name), el("dd", {}, b),
        el("dd", { "data-scorer": name }, fmt(value) + (note ? " ✗ " + note : "")));
    };
    add("combined", c.score, c.score === null ? 0 : c.score, null);
    for (const [name, value] of Object.entries(c.scores || {})) {
      const range = (info.ranges || {})[name] || [0, 1];
      const span = range[1] - range[0];
      const frac = value === null ? 0 : (Number.isFinite(span) && span > 0 ? (value - range[0]) / span : value);
      add(name, value, frac, gateBreach(value, (info.gates || {})[name]));
    }
    // A lazy scorer (an LLM judge) skips the answers it could not lift to first place:
    // name it, so a missing row does not read as a missing scorer.
    for (const name of Object.keys((chosen && chosen.scores) || {})) {
      if (!(name in (c.scores || {}))) {
        dl.append(el("dt", {}, name), el("dd", {}),
          el("dd", { "data-scorer": name, class: "skipped" }, "not rated: it could not change the choice"));
      }
    }
    // Widths through the CSSOM (allowed by the style-src policy, unlike style attributes).
    for (const span of dl.querySelectorAll("span[data-w]")) span.style.width = span.dataset.w + "%";
    return dl;
  }

  function candidateCard(c, index, chosen, info) {
    const failed = !c.passed;
    const cls = "cand" + (c.chosen ? " chosen" : "") + (failed ? " failed" : "");
    const badge = c.chosen
      ? el("span", { class: "badge chosen" }, "★ Chosen")
      : failed ? el("span", { class: "badge failed" }, "✗ Failed gate")
        : el("span", { class: "badge lost" }, "○ Not chosen");
    const withheld = c.text === null || c.text === undefined || c.redacted;
    return el("li", { class: cls, "data-index": index, "data-chosen": c.chosen ? "true" : "false", "data-passed": c.passed ? "true" : "false" },
      el("div", { class: "cand-head" }, el("h3", {}, "Candidate " + (index + 1)), badge),
      el("p", { class: "reason" }, lossReason(c, chosen, info)),
      el("p", { class: "facts" }, (c.tokens ?? "?") + " tokens · finish: " + (c.finish_reason || "–")),
      el("div", { class: "cand-text" }, withheld ? "[text withheld: the server does not show this candidate's text to this key]" : c.text),
      scoreRows(c, info, chosen));
  }

  function renderCandidates(list, cands, info) {
    clear(list);
    const chosen = cands.find((c) => c.chosen) || null;
    cands.forEach((c, i) => list.append(candidateCard(c, i, chosen, info)));
  }

  function inputLine(input) {
    if (!input) return null;
    const by = input.decided_by ? " by " + input.decided_by + (input.scores && input.scores[input.decided_by] !== undefined ? " (" + fmt(input.scores[input.decided_by]) + ")" : "") : "";
    const harm = input.harm !== null && input.harm !== undefined ? "; estimated harm " + fmt(input.harm) : "";
    const labels = input.labels && input.labels.length ? "; " + input.labels.join(", ") : "";
    const failed = input.failed && input.failed.length ? "; failed: " + input.failed.join(", ") : "";
    const symbol = input.action === "refuse" ? "✗ " : input.action === "steer" ? "⚠ " : "✓ ";
    return el("p", { class: "verdict-line", "data-input": input.action }, el("strong", {}, "Input gate: "), symbol + input.action + by + harm + labels + failed);
  }

  // --- the playground ---------------------------------------------------------------------
  let policies = [];
  let strategies = [];
  const panes = [];

  async function fetchPolicies() {
    const body = await getJson("/v1/aligntime/policies");
    policies = body.data; strategies = body.strategies;
  }

  async function loadPolicies() {
    const panesNode = $("#panes");
    try {
      await fetchPolicies();
    } catch (err) {
      policies = [];
      clear(panesNode).append(el("p", { class: "error", role: "alert" }, "Cannot list the policies: " + explain(err)));
      return;
    }
    if (!panes.length) setMode("single");
    else for (const pane of panes) fillConfig(pane);
  }

  function policyOf(name) { return policies.find((p) => p.name === name) || policies[0]; }

  function makePane(label) {
    const id = "p" + label;
    const pane = { label, history: [], candidatesAllowed: true };
    const policy = el("select", { id: id + "-policy" });
    const n = el("input", { id: id + "-n", type: "number", min: "1", value: "3" });
    const strategy = el("select", { id: id + "-strategy" });
    const template = el("select", { id: id + "-template" });
    const maxTokens = el("input", { id: id + "-max-tokens", type: "number", min: "1", placeholder: "policy's" });
    pane.controls = { policy, n, strategy, template, maxTokens };
    pane.config = el("fieldset", { class: "config" }, el("legend", {}, "Policy " + label),
      el("label", { for: policy.id }, "Policy"), policy,
      el("label", { for: n.id }, "Candidates (N)"), n,
      el("label", { for: strategy.id }, "Strategy"), strategy,
      el("label", { for: template.id }, "Template"), template,
      el("label", { for: maxTokens.id }, "Max tokens"), maxTokens);
    policy.addEventListener("change", () => fillConfig(pane, true));
    pane.status = el("p", { class: "status", role: "status", "aria-live": "polite" });
    pane.clock = el("p", { class: "facts" });
    pane.turns = el("ol", { class: "turns", "aria-label": "Conversation " + label });
    pane.input = el("div");
    pane.answer = el("div", { class: "answer", "aria-label": "Answer " + label, role: "region" });
    pane.note = el("div");
    pane.list = el("ol", { class: "cands", "aria-label": "Candidates " + label });
    pane.node = el("section", { class: "pane", "aria-labelledby": id + "-title", id },
      el("h2", { id: id + "-title" }, "Policy " + label), pane.clock, pane.status, pane.turns, pane.input,
      el("h3", {}, "Answer"), pane.answer, pane.note, pane.list);
    fillConfig(pane);
    return pane;
  }

  function fillConfig(pane, policyChanged) {
    const { policy, n, strategy, template } = pane.controls;
    const keep = policy.value;
    clear(policy);
    for (const p of policies) policy.append(el("option", { value: p.name }, p.name));
    if (keep && policies.some((p) => p.name === keep)) policy.value = keep;
    else if (pane.label === "B" && policies.length > 1) policy.value = policies[1].name;
    const p = policyOf(policy.value);
    if (!p) return;
    n.max = String(p.max_n);
    if (policyChanged || !n.dataset.touched) n.value = String(Math.min(p.n, p.max_n));
    n.addEventListener("input", () => { n.dataset.touched = "1"; }, { once: true });
    const keepS = strategy.value;
    clear(strategy).append(el("option", { value: "" }, "policy's (" + p.strategy + ")"));
    for (const s of strategies) if (s !== p.strategy) strategy.append(el("option", { value: s }, s));
    if (keepS && !policyChanged) strategy.value = keepS;
    const keepT = template.value;
    clear(template).append(el("option", { value: "" }, p.default_template ? "policy's (" + p.default_template + ")" : "none"));
    for (const t of p.templates) template.append(el("option", { value: t }, t));
    if (keepT && !policyChanged && p.templates.includes(keepT)) template.value = keepT;
    pane.scorerInfo = {
      gates: Object.fromEntries(p.scorers.map((s) => [s.name, s.gate])),
      ranges: Object.fromEntries(p.scorers.map((s) => [s.name, s.range])),
    };
  }

  function setMode(mode) {
    const want = mode === "compare" ? ["A", "B"] : ["A"];
    while (panes.length > want.length) panes.pop();
    for (const label of want.slice(panes.length)) panes.push(makePane(label));
    clear($("#configs")).append(...panes.map((p) => p.config));
    clear($("#panes")).append(...panes.map((p) => p.node));
    $("#panes").setAttribute("data-mode", mode);
  }

  function resetConversation() {
    for (const pane of panes) {
      pane.history = [];
      clear(pane.turns); clear(pane.answer); clear(pane.list); clear(pane.input); clear(pane.note);
      pane.answer.classList.remove("fallback");
      say(pane.status, ""); pane.clock.textContent = "";
    }
  }

  // The conversation so far: every earlier turn, then the question being answered (its
  // answer is in the answer box below, and joins this list when the next question is asked).
  function showTurns(pane) {
    clear(pane.turns);
    for (const m of pane.history) {
      pane.turns.append(el("li", { class: "turn", "data-role": m.role }, el("span", { class: "who" }, m.role === "user" ? "You:" : "Assistant:"), m.content));
    }
  }

  // Server-sent events from the chat endpoint: calls onEvent(object) per data line.
  async function readEvents(res, onEvent) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let cutAt;
      while ((cutAt = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cutAt);
        buffer = buffer.slice(cutAt + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue; // comments (keep-alives) and other fields
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          onEvent(JSON.parse(data));
        }
      }
      if (done) return;
    }
  }

  function requestBody(pane, n, withCandidates) {
    const { policy, strategy, template, maxTokens } = pane.controls;
    const ext = { n };
    const body = { model: policy.value, messages: pane.history, stream: true, aligntime: ext };
    const limit = parseInt(maxTokens.value, 10);
    if (limit > 0) body.max_tokens = limit;
    if (withCandidates) ext.return_candidates = true;
    if (strategy.value) ext.strategy = strategy.value;
    if (template.value) ext.template = template.value;
    return body;
  }

  function candidatesRefused(err) {
    return err instanceof ApiFailure && (err.status === 403 || err.status === 400)
      && String(err.param || "").includes("return_candidates");
  }

  async function ask(pane, prompt) {
    const n = Math.max(1, parseInt(pane.controls.n.value, 10) || 1);
    pane.history.push({ role: "user", content: prompt });
    showTurns(pane);
    clear(pane.answer); clear(pane.input); clear(pane.note);
    pane.answer.classList.remove("fallback");
    pane.answer.setAttribute("aria-busy", "true");
    clear(pane.list);
    for (let i = 0; i < n; i++) {
      pane.list.append(el("li", { class: "cand pending", "data-pending": "true" },
        el("h3", {}, "Candidate " + (i + 1)), el("p", {}, "Generating and scoring…")));
    }
    say(pane.status, "Asking " + pane.controls.policy.value + " for " + n + " candidate(s)…");
    const started = performance.now();
    pane.node.dataset.sent = String(started);
    delete pane.node.dataset.rendered;
    const timer = setInterval(() => { pane.clock.textContent = ((performance.now() - started) / 1000).toFixed(1) + " s"; }, 200);
    let answer = "";
    let ext = null;
    let finish = null;
    let failure = null;
    try {
      let res;
      try {
        res = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(requestBody(pane, n, pane.candidatesAllowed)) });
      } catch (err) {
        if (!candidatesRefused(err)) throw err;
        pane.candidatesAllowed = false; // this key may not see candidates: ask for the answer only
        res = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(requestBody(pane, n, false)) });
      }
      await readEvents(res, (ev) => {
        if (ev.error) { failure = ev.error.message || "the server reported an error"; return; }
        const choice = ev.choices && ev.choices[0];
        if (choice && choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          pane.answer.textContent = answer; // streams in as the pieces arrive
        }
        if (choice && choice.finish_reason) finish = choice.finish_reason;
        if (ev.aligntime) ext = ev.aligntime;
      });
    } catch (err) {
      failure = explain(err);
    } finally {
      clearInterval(timer);
      pane.answer.removeAttribute("aria-busy");
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    pane.clock.textContent = seconds + " s";
    if (failure) {
      pane.history.pop();
      showTurns(pane);
      clear(pane.list);
      say(pane.status, "Failed: " + failure, true);
      return;
    }
    showOutcome(pane, ext, answer, finish, seconds);
    pane.history.push({ role: "assistant", content: answer });
  }

  function showOutcome(pane, ext, answer, finish, seconds) {
    ext = ext || {};
    const input = inputLine(ext.input);
    if (input) pane.input.append(input);
    if (ext.fallback) {
      pane.answer.classList.add("fallback");
      const why = ext.input && ext.input.action === "refuse" ? "the input gate refused the request"
        : ext.fail_closed ? "a gating scorer failed, so the request failed closed"
          : "no candidate passed the gates";
      pane.note.append(el("p", { class: "note" }, "⚠ Fallback text (finish: " + finish + "): " + why + "."));
    }
    const info = Object.assign({}, pane.scorerInfo, { strategy: ext.strategy, failClosed: ext.fail_closed });
    if (Array.isArray(ext.candidates)) {
      renderCandidates(pane.list, ext.candidates, info);
    } else {
      clear(pane.list);
      if (pane.candidatesAllowed && ext.candidates_generated) pane.candidatesAllowed = false;
      pane.note.append(el("p", { class: "note" }, ext.candidates_generated
        ? "This key may not see the candidates (the server grants that per key); " + ext.candidates_generated + " were generated and scored."
        : "No candidates were generated."));
    }
    pane.node.dataset.rendered = String(performance.now());
    pane.node.dataset.totalS = String((ext.timings && ext.timings.total_s) || 0);
    const t = ext.timings || {};
    const count = Array.isArray(ext.candidates) ? ext.candidates.length : (ext.candidates_generated || 0);
    const chosen = ext.best === null || ext.best === undefined ? "no candidate chosen (fallback)" : "candidate " + (ext.best + 1) + " chosen";
    say(pane.status, "Done in " + seconds + " s: " + count + " candidate(s), " + chosen + " by " + (ext.strategy || "the policy") +
      ". Generate " + fmt(t.generate_s, 2) + " s, score " + fmt(t.score_s, 2) + " s.");
  }

  function setupPlay() {
    const form = $("#ask-form");
    const prompt = $("#prompt");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const text = prompt.value.trim();
      if (!text || !panes.length || !policies.length) return;
      const send = $("#send");
      send.disabled = true;
      prompt.value = "";
      try { await Promise.all(panes.map((p) => ask(p, text))); } finally { send.disabled = false; prompt.focus(); }
    });
    prompt.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); }
    });
    $("#reset").addEventListener("click", () => { resetConversation(); prompt.focus(); });
    for (const radio of document.querySelectorAll("input[name=mode]")) {
      radio.addEventListener("change", () => { if (radio.checked) setMode(radio.value); });
    }
  }

  // --- the audit log ----------------------------------------------------------------------
  async function loadAudit() {
    const status = $("#audit-status");
    const list = clear($("#audit-list"));
    clear($("#audit-detail"));
    const params = new URLSearchParams();
    params.set("last", $("#audit-last").value || "50");
    for (const box of document.querySelectorAll("#audit-form input[name=flag]:checked")) params.append("flag", box.value);
    const policy = $("#audit-policy").value;
    if (policy) params.set("policy", policy);
    say(status, "Loading…");
    let rows;
    try {
      rows = (await getJson("/v1/aligntime/audit?" + params)).data;
    } catch (err) {
      const text = err instanceof ApiFailure && err.status === 403
        ? "This API key may not read the audit log. " + err.message : explain(err);
      say(status, text, true);
      list.append(el("p", { class: "error", role: "alert", "data-refused": err.status || "" }, "Audit log refused: " + text));
      return;
    }
    if (!policies.length) {
      try { await fetchPolicies(); } catch (_) { /* gates are then shown without thresholds */ }
    }
    fillAuditPolicies(rows);
    say(status, rows.length + " request(s), newest first.");
    const table = el("table", {}, el("caption", { class: "visually-hidden" }, "Audited requests"),
      el("thead", {}, el("tr", {}, ["Time (UTC)", "Policy", "Status", "Request", "Answer", "Candidates", "Flags", ""].map((h) => el("th", { scope: "col" }, h)))));
    const body = el("tbody");
    for (const r of rows) {
      const flags = [];
      if (r.fallback) flags.push("⚠ fallback");
      if (r.fail_closed) flags.push("✗ fail closed");
      if (r.failed) flags.push("✗ " + r.failed + " failed gate");
      if (r.error) flags.push((r.status === 200 ? "scorer error: " : "error: ") + r.error);
      const users = (r.messages || []).filter((m) => m.role === "user");
      const open = el("button", { type: "button", "data-id": r.id }, "Open");
      open.addEventListener("click", () => openAudit(r.id));
      body.append(el("tr", { "data-id": r.id },
        el("td", {}, when(r.created)), el("td", {}, r.policy), el("td", { class: "num" }, r.status),
        el("td", { class: "text" }, cut(users.length ? users[users.length - 1].content : "")),
        el("td", { class: "text" }, cut(r.answer)),
        el("td", { class: "num" }, r.candidates + (r.failed ? " (" + r.failed + " failed)" : "")),
        el("td", {}, flags.join("; ")), el("td", {}, open)));
    }
    table.append(body);
    list.append(table);
  }

  let auditPolicies = new Set();
  function fillAuditPolicies(rows) {
    const select = $("#audit-policy");
    const names = new Set([...auditPolicies, ...policies.map((p) => p.name), ...rows.map((r) => r.policy)]);
    if (names.size === auditPolicies.size) return;
    auditPolicies = names;
    const keep = select.value;
    clear(select).append(el("option", { value: "" }, "any"));
    for (const name of [...names].sort()) select.append(el("option", { value: name }, name));
    select.value = keep;
  }

  async function openAudit(id) {
    const detail = clear($("#audit-detail"));
    let r;
    try { r = await getJson("/v1/aligntime/audit/" + encodeURIComponent(id)); } catch (err) {
      detail.append(el("p", { class: "error", role: "alert" }, explain(err))); detail.focus(); return;
    }
    const p = policies.find((x) => x.name === r.policy);
    const info = {
      gates: p ? Object.fromEntries(p.scorers.map((s) => [s.name, s.gate])) : {},
      ranges: p ? Object.fromEntries(p.scorers.map((s) => [s.name, s.range])) : {},
      strategy: r.strategy, failClosed: r.fail_closed,
    };
    const turns = el("ol", { class: "turns", "aria-label": "Conversation" });
    for (const m of r.messages || []) turns.append(el("li", { class: "turn" }, el("span", { class: "who" }, m.role + ":"), m.content));
    const facts = [["Id", r.id], ["Time (UTC)", when(r.created)], ["Policy", r.policy], ["Strategy", r.strategy || "–"],
      ["Status", r.status], ["Key", r.key_id || "–"], ["N", r.n ?? "–"], ["Tokens", (r.prompt_tokens ?? "–") + " in, " + (r.completion_tokens ?? "–") + " out"],
      ["Error", r.error || "–"]];
    const list = el("ol", { class: "cands", "aria-label": "Candidates" });
    renderCandidates(list, r.candidates || [], info);
    detail.append(el("h2", {}, "Request " + r.id),
      el("table", {}, el("tbody", {}, facts.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v))))),
      el("h3", {}, "Conversation"), turns, inputLine(r.input) || "",
      el("h3", {}, "Answer" + (r.fallback ? " (⚠ fallback)" : "")), el("div", { class: r.fallback ? "answer fallback" : "answer" }, r.answer ?? "–"),
      el("h3", {}, "Candidates"), list);
    detail.focus();
  }

  // --- evaluation reports -----------------------------------------------------------------
  async function loadReports() {
    const status = $("#reports-status");
    const list = clear($("#reports-list"));
    clear($("#report-detail"));
    let rows;
    try { rows = (await getJson("/v1/aligntime/reports")).data; } catch (err) {
      say(status, explain(err), true); return;
    }
    say(status, rows.length ? rows.length + " report(s)." : "No report folders found.");
    const table = el("table", {}, el("caption", { class: "visually-hidden" }, "Evaluation reports"),
      el("thead", {}, el("tr", {}, ["Report", "Policy", "Prompts", "N", "Written (UTC)", ""].map((h) => el("th", { scope: "col" }, h)))));
    const body = el("tbody");
    for (const r of rows) {
      const open = el("button", { type: "button", "data-report": r.name }, "Open");
      open.addEventListener("click", () => openReport(r.name));
      body.append(el("tr", {}, el("td", {}, r.name), el("td", {}, r.policy ?? "–"), el("td", {}, r.prompts ?? "–"),
        el("td", {}, (r.ns || []).join(", ")), el("td", {}, when(r.modified)), el("td", {}, open)));
    }
    table.append(body);
    list.append(table);
  }

  const interval = (d, digits = 3) => (d && d.mean !== null && d.mean !== undefined ? fmt(d.mean, digits) + (d.low !== null && d.low !== undefined ? " [" + fmt(d.low, digits) + ", " + fmt(d.high, digits) + "]" : "") : "–");

  async function openReport(name) {
    const detail = clear($("#report-detail"));
    let r;
    try { r = await getJson("/v1/aligntime/report?name=" + encodeURIComponent(name)); } catch (err) {
      detail.append(el("p", { class: "error", role: "alert" }, explain(err))); detail.focus(); return;
    }
    const s = r.summary || {};
    const cfg = s.config || {};
    const strategiesText = (cfg.strategies || []).map((x) => (x && x.label) || x).join(", ");
    const facts = [["Policy", cfg.policy], ["Prompts", cfg.prompts], ["Prompt count", s.prompts && s.prompts.all],
      ["N", (cfg.ns || []).join(", ")], ["Strategies", strategiesText], ["Held-out scorer", cfg.heldout ?? "none"],
      ["Scorers", (cfg.scorers || []).join(", ")], ["Gate pass rate", fmt(s.gate_pass_rate)]];
    const head = ["Strategy", "N", "Score", "Held-out win", "Held-out ceiling", "Proxy win", "Fallback", "Refuse harmful", "Refuse benign", "Tokens", "Latency s", "KL bound"];
    const results = el("table", {}, el("caption", {}, "Means over prompts with 95% intervals"),
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, (s.results || []).map((c) => el("tr", {},
        el("td", {}, c.strategy), el("td", { class: "num" }, c.n), el("td", { class: "num" }, interval(c.score)),
        el("td", { class: "num" }, interval(c.heldout_win)), el("td", { class: "num" }, interval(c.heldout_ceiling)),
        el("td", { class: "num" }, interval(c.proxy_win)),
        el("td", { class: "num" }, interval(c.fallback_rate)), el("td", { class: "num" }, interval(c.refusal_harmful)),
        el("td", { class: "num" }, interval(c.refusal_benign)), el("td", { class: "num" }, interval(c.tokens, 0)),
        el("td", { class: "num" }, interval(c.latency_s, 2)), el("td", { class: "num" }, fmt(c.kl_bound))))));
    const plots = el("div", { class: "plots" });
    const download = el("button", { type: "button" }, "Download report.html");
    download.hidden = !r.has_html;
    download.addEventListener("click", () => saveBlob("/v1/aligntime/report/html?name=" + encodeURIComponent(name), "report.html"));
    const examples = el("div");
    for (const rec of r.examples || []) {
      const cands = (rec.candidates || []).map((c) => Object.assign({}, c));
      let best = -1;
      cands.forEach((c, i) => { if (c.passed && (best < 0 || c.score > cands[best].score)) best = i; });
      cands.forEach((c, i) => { c.chosen = i === best; });
      const list = el("ol", { class: "cands", "aria-label": "Candidates of " + (rec.id || "prompt") });
      renderCandidates(list, cands, { strategy: "best_of_n" });
      examples.append(el("h3", {}, "Prompt " + (rec.id ?? "")), el("p", { class: "turn" }, rec.prompt ?? ""), inputLine(rec.input) || "", list);
    }
    detail.append(el("h2", {}, "Report " + name), download,
      el("table", {}, el("tbody", {}, facts.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v ?? "–"))))),
      el("h3", {}, "Results per strategy and N"), el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Results per strategy and N" }, results),
      el("h3", {}, "Plots"), plots,
      el("h3", {}, "Examples (best-of-N at the largest N is marked chosen)"), examples);
    detail.focus();
    for (const plot of r.plots || []) {
      try {
        const blob = await (await api("/v1/aligntime/report/plot?name=" + encodeURIComponent(name) + "&plot=" + encodeURIComponent(plot))).blob();
        plots.append(el("figure", {}, el("img", { src: URL.createObjectURL(blob), alt: "Plot " + plot.replace(/\.png$/, "").replace(/_/g, " ") }), el("figcaption", {}, plot)));
      } catch (err) {
        plots.append(el("p", { class: "error" }, plot + ": " + explain(err)));
      }
    }
  }

  async function saveBlob(path, filename) {
    try {
      const blob = await (await api(path)).blob();
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: filename });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      say($("#reports-status"), explain(err), true);
    }
  }

  // --- start ------------------------------------------------------------------------------
  function start() {
    setupTheme();
    setupKey();
    setupNav();
    setupPlay();
    $("#audit-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadAudit(); });
    showView(location.pathname, false);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
