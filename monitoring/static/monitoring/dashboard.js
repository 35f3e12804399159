// mcppool dashboard: follows the numbers the server pushes over the WebSocket (no reloads).
// Formats mirror monitoring/templatetags/dashboard.py so an update looks like the first render.
"use strict";

(function () {
  const NONE = "\u2014";
  const fmt = {
    rate: (v) => (v === null || v === undefined ? NONE : v.toFixed(1)),
    pct: (v) => (v === null || v === undefined ? NONE : (v * 100).toFixed(1) + " %"),
    ms: (v) => (v === null || v === undefined ? NONE : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms"),
    int: (v) => String(v),
  };
  const FIELDS = {
    calls_per_s: fmt.rate, error_rate: fmt.pct, p99_ms: fmt.ms, latency_ms: fmt.ms, share: fmt.pct,
    in_flight: fmt.int, weight: fmt.int, priority: fmt.int, ejections: fmt.int,
  };

  function setFields(root, data) {
    root.querySelectorAll("[data-field]").forEach((el) => {
      const name = el.dataset.field;
      let text;
      if (name === "healthy") text = data.healthy + "/" + data.total;
      else if (name === "sessions") text = Object.entries(data.sessions || {}).filter(([, n]) => n).map(([k, n]) => n + " " + k).join(" ");
      else if (name === "health" || name === "state") text = data[name];
      else if (name in FIELDS && name in data) text = FIELDS[name](data[name]);
      else return;
      if (el.textContent !== text) el.textContent = text;
    });
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chips(cell, pool) {
    cell.replaceChildren(...pool.servers.map((s) => el("a", {
      class: "chip", href: "/dashboard/pools/" + pool.slug + "/servers/" + encodeURIComponent(s.name) + "/",
      "data-server": s.name, "data-health": s.health, "data-up": String(s.up), title: s.name + ": " + s.health,
    }, s.name)));
  }

  function overviewRow(pool) {
    const row = el("tr", { "data-pool": pool.slug });
    const name = el("td");
    name.append(el("a", { href: "/dashboard/pools/" + pool.slug + "/" }, pool.name), " ", el("span", { class: "muted" }, pool.strategy));
    row.append(name, el("td", { class: "chips", "data-field": "servers" }));
    ["healthy", "calls_per_s", "error_rate", "p99_ms", "in_flight"].forEach((f) => row.append(el("td", { class: "num", "data-field": f })));
    return row;
  }

  // The panic banner: shown while a pool is below its panic threshold, with the reason.
  function panicBanner(pools) {
    const banner = document.getElementById("panic");
    if (!banner) return;
    const panicking = pools.filter((p) => p.panic);
    banner.hidden = panicking.length === 0;
    const list = banner.querySelector("ul");
    if (list) {
      list.replaceChildren(...panicking.map((p) => {
        const li = el("li", { "data-pool": p.slug });
        li.append(el("b", {}, p.name), ": " + p.panic_reason);
        return li;
      }));
    } else {
      banner.dataset.panic = String(panicking.length > 0);
      const reason = banner.querySelector('[data-field="panic_reason"]');
      if (reason) reason.textContent = panicking.length ? panicking[0].panic_reason : "";
    }
  }

  function onOverview(msg) {
    panicBanner(msg.pools);
    const body = document.querySelector("#pools tbody");
    if (!body) return;
    const seen = new Set();
    msg.pools.forEach((pool) => {
      seen.add(pool.slug);
      let row = body.querySelector('tr[data-pool="' + CSS.escape(pool.slug) + '"]');
      if (!row) {
        body.querySelectorAll("tr.empty").forEach((r) => r.remove());
        row = body.appendChild(overviewRow(pool));
      }
      row.dataset.status = pool.status;
      row.dataset.panic = String(pool.panic);
      setFields(row, pool);
      chips(row.querySelector('[data-field="servers"]'), pool);
    });
    body.querySelectorAll("tr[data-pool]").forEach((row) => { if (!seen.has(row.dataset.pool)) row.remove(); });
  }

  function flipItem(f) {
    const li = el("li");
    li.append(el("time", {}, f.at.slice(0, 19).replace("T", " ")), el("b", {}, f.server), " " + f.old + " \u2192 ",
      el("span", { class: "badge", "data-health": f.new }, f.new), " ", el("span", { class: "muted" }, f.source + ": " + f.reason));
    return li;
  }

  function onPool(msg) {
    const page = document.body.dataset.page;
    const pool = msg.pool;
    if (page === "pool") {
      const summary = document.getElementById("pool-summary");
      summary.dataset.status = pool.status;
      setFields(summary, pool);
      panicBanner([pool]);
      pool.servers.forEach((s) => {
        const row = document.querySelector('#servers tr[data-server="' + CSS.escape(s.name) + '"]');
        if (!row) return;
        row.dataset.health = s.health;
        row.dataset.up = String(s.up);
        setFields(row, s);
      });
      const flips = document.getElementById("flips");
      if (flips && msg.flips && msg.flips.length) flips.replaceChildren(...msg.flips.map(flipItem));
    } else if (page === "server") {
      const s = pool.servers.find((x) => x.name === document.body.dataset.server);
      const summary = document.getElementById("server-summary");
      if (!s || !summary) return;
      summary.dataset.health = s.health;
      setFields(summary, s);
    }
  }

  // A "check now" result, pushed when the worker has it (the admin only queued it).
  function onCheck(msg) {
    const list = document.getElementById("checks");
    if (!list) return;
    const li = el("li", { "data-server": msg.server, "data-ok": String(msg.ok) });
    const verdict = msg.ok ? "passed in " + fmt.ms(msg.latency_ms) : "failed (" + msg.error + ")";
    li.append(el("time", {}, String(msg.at).slice(0, 19).replace("T", " ")), " ", el("b", {}, msg.server), " " + verdict);
    list.prepend(li);
    document.getElementById("checks-now").hidden = false;
  }

  const conn = document.getElementById("conn");
  function status(state, text) { conn.dataset.state = state; conn.textContent = text; }

  let delay = 1000;
  function connect() {
    const path = document.body.dataset.ws;
    if (!path) return;
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
    ws.onopen = () => { delay = 1000; status("live", "live"); };
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "overview") onOverview(msg);
      else if (msg.type === "pool") onPool(msg);
      else if (msg.type === "check") onCheck(msg);
      document.body.dataset.updated = String(Date.now());
    };
    ws.onclose = (event) => {
      if (event.code === 4403) { status("lost", "signed out"); return; }
      status("lost", "reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();
