// The operator console's page script. It asks /console/api/snapshot every REFRESH_MS, turns
// counters into rates from successive readings, and draws. Every value from the server is
// written with textContent (never innerHTML): partner names and rule texts are hostile input.
"use strict";
(function () {
  const REFRESH_MS = 2000;
  const POINTS_MAX = 150; // five minutes of history at REFRESH_MS
  const WATCH_KEY = "quickpay.console.partners";
  const history = { t: [], rate: {}, p50: {}, p99: {} };
  let previous = null;
  let charts = null;
  let shardNames = [];

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function fill(tableId, rows) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren();
    for (const cells of rows) {
      const tr = el("tr");
      for (const cell of cells) tr.appendChild(cell instanceof Node ? wrap(cell) : el("td", cell));
      body.appendChild(tr);
    }
  }

  function wrap(node) {
    const td = el("td");
    td.appendChild(node);
    return td;
  }

  function watched() {
    const text = localStorage.getItem(WATCH_KEY) || "";
    return text.split(",").map((s) => s.trim()).filter((s) => s).slice(0, 20);
  }

  function palette(i) {
    return ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"][i % 8];
  }

  function makeCharts(names) {
    const box = document.getElementById("chart-rate");
    const width = Math.max(300, Math.min(1200, box.clientWidth - 10));
    const series = (suffixes) => {
      const out = [{}];
      names.forEach((name, i) => {
        for (const [suffix, dash] of suffixes) {
          out.push({ label: "shard " + name + suffix, stroke: palette(i), dash: dash, width: 1.5 });
        }
      });
      return out;
    };
    const opts = (title, s) => ({ title: title, width: width, height: 220, series: s, scales: { x: { time: true } } });
    const empty = (n) => [[], ...Array.from({ length: n }, () => [])];
    const rateSeries = series([["", undefined]]);
    const latencySeries = series([[" p50", undefined], [" p99", [6, 4]]]);
    const rateBox = document.getElementById("chart-rate");
    const latencyBox = document.getElementById("chart-latency");
    rateBox.replaceChildren();
    latencyBox.replaceChildren();
    return {
      rate: new uPlot(opts("transfers/s", rateSeries), empty(rateSeries.length - 1), rateBox),
      latency: new uPlot(opts("ms", latencySeries), empty(latencySeries.length - 1), latencyBox),
    };
  }

  function push(list, value) {
    list.push(value);
    if (list.length > POINTS_MAX) list.shift();
  }

  function updateCharts(snap, seconds) {
    const shards = (snap.metrics && snap.metrics.shards) || [];
    const names = shards.map((s) => String(s.shard));
    if (charts === null || names.join() !== shardNames.join()) {
      shardNames = names;
      charts = makeCharts(names);
      history.t = [];
      history.rate = {};
      history.p50 = {};
      history.p99 = {};
    }
    push(history.t, snap.at_ms / 1000);
    for (const s of shards) {
      const key = String(s.shard);
      for (const k of ["rate", "p50", "p99"]) if (!history[k][key]) history[k][key] = [];
      let rate = null;
      if (previous && previous.metrics && seconds > 0) {
        const before = ((previous.metrics && previous.metrics.shards) || []).find((p) => String(p.shard) === key);
        if (before && before.committed_transfers !== undefined && s.committed_transfers !== undefined) {
          rate = Math.max(0, (s.committed_transfers - before.committed_transfers) / seconds);
        }
      }
      push(history.rate[key], rate);
      push(history.p50[key], s.cycle_p50_ms === undefined ? null : s.cycle_p50_ms);
      push(history.p99[key], s.cycle_p99_ms === undefined ? null : s.cycle_p99_ms);
    }
    const pad = (list) => Array.from({ length: history.t.length - list.length }, () => null).concat(list);
    charts.rate.setData([history.t, ...shardNames.map((k) => pad(history.rate[k]))]);
    const latency = [history.t];
    for (const k of shardNames) latency.push(pad(history.p50[k]), pad(history.p99[k]));
    charts.latency.setData(latency);
  }

  function render(snap) {
    const seconds = previous ? (snap.at_ms - previous.at_ms) / 1000 : 0;
    const metrics = snap.metrics || { shards: [], errors: [], webhooks: {} };
    if (snap.metrics) {
      if (previous && previous.metrics && seconds > 0) {
        const delta = metrics.payments_answered_2xx - previous.metrics.payments_answered_2xx;
        document.getElementById("payments-per-s").textContent = Math.max(0, delta / seconds).toFixed(1);
      }
      updateCharts(snap, seconds);
    }
    const health = snap.health || {};
    const status = document.getElementById("status");
    status.textContent = health.status || "unknown";
    status.className = "badge " + String(health.status || "unknown").replace(/ /g, "-");
    document.getElementById("updated").textContent = "updated " + new Date(snap.at_ms).toLocaleTimeString();
    document.getElementById("reasons").textContent = (health.reasons || []).join("; ");

    const byShard = {};
    for (const s of health.shards || []) byShard[String(s.shard)] = s;
    // The shards' PostgreSQL members (GET /admin/v1/ha): Patroni's roles and lag, or "single".
    const ha = snap.ha || { mode: "not read", shards: [] };
    const haByShard = {};
    for (const s of ha.shards || []) haByShard[String(s.shard)] = s;
    const database = (key) => {
      const s = haByShard[key];
      if (!s) return "not read";
      if (s.mode === "single") return "single";
      const standbys = s.members.filter((m) => m.role !== "leader").map((m) => m.role + " " + m.name);
      return "leader " + (s.leader || "NONE") + (standbys.length ? "; " + standbys.join(", ") : "");
    };
    const shardRows = [];
    const indices = new Set([...metrics.shards.map((s) => String(s.shard)), ...Object.keys(byShard)]);
    for (const key of indices) {
      const m = metrics.shards.find((s) => String(s.shard) === key) || {};
      const h = byShard[key] || {};
      const fraud = h.fraud || {};
      shardRows.push([
        key,
        h.ready === undefined ? (m.up ? "yes" : "no") : h.ready ? "yes" : "no",
        m.queue, m.cycle_p50_ms, m.cycle_p99_ms, m.commit_p99_ms, m.relay_backlog, m.relay_lag_s, database(key),
        fraud.enforced_version ? String(fraud.enforced_version).slice(0, 12) : "none",
        h.error || "",
      ]);
    }
    fill("shards", shardRows);

    document.getElementById("ha-mode").textContent = ha.mode === "single"
      ? "Each shard's database is one server (no --ha): role single."
      : ha.mode === "patroni" ? "Patroni's view (GET /cluster), read at most once a second."
        : "Roles not shown: " + (ha.error || ha.mode);
    const rows = [];
    for (const s of ha.shards || []) {
      for (const m of s.members) {
        const lag = m.lag_bytes !== null ? m.lag_bytes : m.lag_unknown ? "unknown" : "";
        rows.push([s.shard, m.name || "(one server)", m.role, m.state || "", lag,
          m.timeline === null ? "" : m.timeline, m.api || ""]);
      }
    }
    fill("ha", rows);

    fill("children", (health.children || []).map((c) => [
      c.name, c.state, c.pid, c.restarts, c.crash_looping ? "yes" : "no",
      c.last_exit === undefined || c.last_exit === null ? "" : JSON.stringify(c.last_exit),
    ]));
    fill("errors", (metrics.errors || []).map((e) => [e.route, e.method, e.status, e.count]));

    const hooks = document.getElementById("webhooks");
    hooks.replaceChildren();
    const w = metrics.webhooks || {};
    for (const [label, value] of [["backlog (due or backing off)", w.backlog], ["failed (given up)", w.failed],
      ["events produced", w.events_produced]]) {
      hooks.appendChild(el("dt", label));
      hooks.appendChild(el("dd", value === undefined ? "not reported" : value));
    }

    const rules = document.getElementById("rules");
    rules.replaceChildren();
    const r = (snap.fraud && snap.fraud.rules) || null;
    if (snap.fraud && snap.fraud.enabled === false) {
      rules.appendChild(el("p", "The fraud filter is off on this stack (started with --no-rules)."));
    } else if (r === null) {
      rules.appendChild(el("p", "rule sets not read"));
    } else {
      rules.appendChild(el("p", "active " + String(r.active_version || "differs between shards").slice(0, 12) +
        ", enforced " + String(r.enforced_version || "differs between shards").slice(0, 12) +
        (r.consistent ? ", every shard agrees" : ", SHARDS DISAGREE") +
        ((r.degraded_shards || []).length ? "; degraded shards: " + r.degraded_shards.join(", ") : "")));
      const table = el("table");
      table.id = "versions";
      const head = el("tr");
      for (const h of ["version", "author", "created", "rules", "active", "enforced"]) head.appendChild(el("th", h));
      table.appendChild(head);
      const first = (r.shards || [])[0] || {};
      for (const v of (first.versions || []).slice(-10).reverse()) {
        const tr = el("tr");
        for (const cell of [String(v.version).slice(0, 12), v.author, new Date(v.created_at_ms).toISOString(),
          v.rule_count, v.active ? "yes" : "", v.enforced ? "yes" : ""]) tr.appendChild(el("td", cell));
        table.appendChild(tr);
      }
      rules.appendChild(table);
    }

    fill("decisions", ((snap.fraud && snap.fraud.decisions) || []).map((d) => {
      const fraud = d.fraud || {};
      const fired = (fraud.reasons || []).map((hit) => {
        const values = Object.entries(hit.values || {}).map(([k, v]) => k + " = " + JSON.stringify(v)).join(", ");
        return hit.rule_id + " (" + hit.action + (hit.shadow ? ", shadow" : ", +" + hit.score) + ")" +
          (values ? ": " + values : "");
      });
      return [d.created_at, d.payment_id, d.amount + " " + d.currency,
        (fraud.decision || d.status) + " (score " + fraud.score + ")", fired.join("; ")];
    }));
    fill("rule-hits", ((snap.fraud && snap.fraud.rule_hits) || []).map((h) => [h.rule_id, h.action,
      h.shadow ? "shadow (not enforced)" : "enforced", h.hits]));
    fill("alerts", ((snap.fraud && snap.fraud.alerts) || []).map((a) => [a.at, a.rule_id || a.rule || "",
      JSON.stringify(Object.fromEntries(Object.entries(a).filter(([k]) => !["at", "at_ms"].includes(k))))]));

    // Reconciliation: per day, closed (files final) or open, and the files' totals over every partner.
    const recon = snap.reconciliation || { days: [] };
    const kindCell = (summary, kind) => {
      if (!summary) return "";
      const parts = summary.totals.filter((t) => t.kind === kind).map((t) => t.count + " (" + t.total + " " + t.currency + ")");
      return parts.length ? parts.join(", ") : "0";
    };
    fill("recon", recon.days.map((d) => {
      const s = d.summary;
      const files = d.closed ? "final (closed)" : "provisional (closes " + d.closes_at + ")";
      const rows = s ? s.rows : d.summary_state === "error" ? "not read: " + d.error : d.summary_state;
      return [d.day, files, rows, kindCell(s, "payment"), kindCell(s, "payment_to_customer"), kindCell(s, "refund"),
        s ? (s.settlement_net.map((n) => n.net + " " + n.currency).join(", ") || "0") : "",
        d.closed && s ? "the whole day" : d.summary_as_of || ""];
    }));

    const rateLimit = (l) => l ? l.requests_per_s + "/s, burst " + l.burst +
      (l.override ? " (override)" : " (default)") : "";
    fill("partner-list", (snap.partner_list || []).map((p) => [p.partner_id, p.name,
      p.disabled ? "disabled" : "enabled", rateLimit(p.rate_limit), p.pending_agreements, p.created_at || ""]));
    document.getElementById("partner-list-more").textContent = snap.more_partners
      ? "The first " + (snap.partner_list || []).length + " partners by id; GET /admin/v1/partners pages on."
      : (snap.partner_list || []).length + " partners.";

    fill("partners", (snap.partners || []).map((p) => p.missing
      ? [p.partner_id, "(no such partner, or not read)", "", "", "", ""]
      : [p.partner_id, p.name, p.disabled ? "disabled" : "enabled",
        p.rate_limit ? p.rate_limit.requests_per_s + "/s, burst " + p.rate_limit.burst +
          (p.rate_limit.override ? " (override)" : " (default)") : "",
        p.tokens_valid_after || "", p.created_at || ""]));

    const problems = document.getElementById("problems");
    problems.replaceChildren();
    for (const p of snap.problems || []) problems.appendChild(el("li", p.source + ": " + (p.status || "") + " " + p.body));
    previous = snap;
  }

  async function refresh() {
    const query = encodeURIComponent(watched().join(","));
    try {
      const response = await fetch("/console/api/snapshot?partners=" + query, {
        credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (response.ok) render(await response.json());
      else document.getElementById("status").textContent = "snapshot answered " + response.status;
    } catch (err) {
      document.getElementById("status").textContent = "gateway not reachable";
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  document.getElementById("watch").value = watched().join(", ");
  document.getElementById("watch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(WATCH_KEY, document.getElementById("watch").value);
    refresh();
  });
  refresh();
})();
