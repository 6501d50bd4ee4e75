// floe's status page: reads status.json from the same listener and draws it. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const fmtInt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
const fmtSecs = (s) => {
  if (s === null || s === undefined) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
};
const fmtBytes = (b) => {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + units[i];
};
const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

function text(id, value) { $(id).textContent = value; }

function badge(id, ok, label) {
  const el = $(id);
  el.textContent = label + (ok ? " ok" : " failing");
  el.className = "badge " + (ok ? "ok" : "bad");
}

function rows(tbodyParent, items, cells) {
  const tbody = tbodyParent.querySelector("tbody");
  tbody.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    for (const [key, value] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = value;
      if (key) td.dataset.field = key;
      tr.appendChild(td);
    }
    return tr;
  }));
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, content) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  return e;
}

// Bars: rows/s per bucket; line: the worst freshness of each bucket's commits.
function chart(series, bucketS) {
  const W = 900, H = 180, L = 44, R = 44, T = 8, B = 20;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "rows per second and freshness over the last hour" });
  const n = series.length || 1;
  const maxRows = Math.max(1, ...series.map((p) => p.rows_per_s));
  const fresh = series.map((p) => p.freshness_s).filter((f) => f !== null);
  const maxFresh = Math.max(1, ...fresh);
  const bw = (W - L - R) / n;
  const y = (v, max) => T + (H - T - B) * (1 - v / max);
  svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#dde1e6" }));
  series.forEach((p, i) => {
    if (p.rows_per_s > 0) {
      const top = y(p.rows_per_s, maxRows);
      svg.appendChild(el("rect", { x: L + i * bw, y: top, width: Math.max(1, bw - 0.5), height: H - B - top, fill: "#3b6fd4", class: "bar" }));
    }
  });
  const pts = [];
  series.forEach((p, i) => { if (p.freshness_s !== null) pts.push(`${(L + (i + 0.5) * bw).toFixed(1)},${y(p.freshness_s, maxFresh).toFixed(1)}`); });
  if (pts.length) svg.appendChild(el("polyline", { points: pts.join(" "), fill: "none", stroke: "#e08a1e", "stroke-width": 2, class: "freshness" }));
  svg.appendChild(el("text", { x: L - 4, y: T + 10, "text-anchor": "end", class: "axis" }, fmtInt(maxRows)));
  svg.appendChild(el("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "axis" }, "0"));
  svg.appendChild(el("text", { x: W - R + 4, y: T + 10, class: "axis" }, fmtSecs(maxFresh)));
  svg.appendChild(el("text", { x: L, y: H - 4, class: "axis" }, `-${Math.round(n * bucketS / 60)} min`));
  svg.appendChild(el("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "axis" }, "now"));
  $("chart").replaceChildren(svg);
}

function render(s) {
  text("pipeline", s.pipeline);
  text("table", s.table);
  badge("health", s.healthy, "health");
  badge("ready", s.ready, "ready");
  $("idle").className = "badge bad" + (s.idle_alert_since_ms ? "" : " hidden");
  $("idle").textContent = s.idle_alert_since_ms ? "no records since " + new Date(s.idle_alert_since_ms).toISOString().slice(11, 19) : "";
  text("reason", [s.health_reason, s.ready_reason, s.last_check_failure].filter(Boolean).join(" · "));
  const lag = $("lag");
  lag.textContent = fmtInt(s.lag);
  lag.dataset.value = s.lag;
  const committed = $("rows-committed");
  committed.textContent = fmtInt(s.rows_committed);
  committed.dataset.value = s.rows_committed;
  text("commits", fmtInt(s.commits));
  text("freshness", fmtSecs(s.freshness_s));
  text("last-commit", s.last_commit_ms ? fmtSecs((s.now_ms - s.last_commit_ms) / 1000) + " ago" : "none yet");
  text("buffered", fmtBytes(s.buffered_bytes));
  text("dead-letters", fmtInt(sum(s.dead_letters)));
  text("check-failures", fmtInt(sum(s.check_failures)));
  rows($("partitions"), s.partitions, (p) => [
    ["topic", p.topic], ["partition", p.partition], ["committed", p.committed ?? "–"],
    ["end", p.end ?? "–"], ["lag", p.lag ?? "–"],
  ]);
  rows($("commits-table"), s.recent_commits, (c) => [
    ["at", new Date(c.at_ms).toISOString().slice(11, 19)], ["rows", fmtInt(c.rows)], ["files", c.files],
    ["took", c.millis + " ms"], ["freshness", fmtSecs(c.freshness_s)], ["snapshot", c.snapshot_id ?? "–"],
  ]);
  chart(s.series, s.bucket_s);
  text("updated", new Date(s.now_ms).toISOString().replace("T", " ").slice(0, 19) + " UTC");
  document.body.dataset.loaded = "1";
}

// Several pipelines: an overview row each (linking to ?pipeline=NAME), the details of the chosen
// one (the first by default) below.
function overview(list, current) {
  const section = $("pipelines-section");
  section.classList.toggle("hidden", list.length < 2);
  if (list.length < 2) return;
  rows($("pipelines-table"), list, (p) => [
    ["name", p.pipeline], ["table", p.table],
    ["state", p.failed ? "failed" : (p.ready ? "ready" : "not ready")],
    ["lag", fmtInt(p.lag)], ["rows", fmtInt(p.rows_committed)],
    ["last-commit", p.last_commit_ms ? fmtSecs((p.now_ms - p.last_commit_ms) / 1000) + " ago" : "none yet"],
  ]);
  $("pipelines-table").querySelectorAll("tbody tr").forEach((tr, i) => {
    const a = document.createElement("a");
    a.href = "?pipeline=" + encodeURIComponent(list[i].pipeline);
    a.textContent = list[i].pipeline;
    tr.firstChild.replaceChildren(a);
    tr.classList.toggle("current", list[i] === current);
  });
}

async function refresh() {
  try {
    const r = await fetch("status.json", { cache: "no-store" });
    if (!r.ok) throw new Error("status.json: HTTP " + r.status);
    const s = await r.json();
    const list = s.pipelines || [s];
    const want = new URLSearchParams(location.search).get("pipeline");
    const current = list.find((p) => p.pipeline === want) || list[0];
    overview(list, current);
    render(current);
    if (current.failed) text("reason", "stopped on an error: " + current.failed);
  } catch (e) {
    text("reason", "cannot read the status: " + e.message);
  }
}

refresh();
setInterval(refresh, 2000);
