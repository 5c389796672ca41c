// fedmark dashboard: polls /api/jobs with the admin token and draws the selected job.
// The token comes from the page address's fragment (#token=...), which the browser never
// sends to a server, or from the form; it is kept in this tab's sessionStorage only.
"use strict";

const NS = "http://www.w3.org/2000/svg";
let token = null;
let selected = null;

function readToken() {
  const m = /(?:^#|&)token=([0-9a-fA-F]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("fedmark-token", m[1]);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("fedmark-token");
}

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(x, digits) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}

// A line chart of one or more series over the round numbers.
function lineChart(rounds, series, planned) {
  const w = 320, h = 180, pad = 28;
  const svg = el("svg:svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, id: "round-chart",
    "data-rounds": String(rounds.length) });
  const maxX = Math.max(planned || 0, rounds.length ? rounds[rounds.length - 1].round : 1, 1);
  const x = (r) => pad + (w - 2 * pad) * (r - 1) / Math.max(maxX - 1, 1);
  svg.appendChild(el("svg:line", { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: "#99a" }));
  svg.appendChild(el("svg:text", { x: pad, y: h - 8 }, "round 1"));
  svg.appendChild(el("svg:text", { x: w - pad - 40, y: h - 8 }, `round ${maxX}`));
  series.forEach((s, i) => {
    const vals = rounds.map((r) => r[s.key]).filter((v) => typeof v === "number" && isFinite(v));
    if (!vals.length) return;
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const y = (v) => h - pad - (h - 2 * pad) * (v - lo) / span;
    const pts = rounds.filter((r) => typeof r[s.key] === "number" && isFinite(r[s.key]))
      .map((r) => `${x(r.round).toFixed(1)},${y(r[s.key]).toFixed(1)}`).join(" ");
    svg.appendChild(el("svg:polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": 2,
      "data-series": s.key }));
    svg.appendChild(el("svg:text", { x: pad + i * 150, y: 12, fill: s.color },
      `${s.label} ${fmt(lo, 4)}–${fmt(hi, 4)}`));
  });
  const box = el("div");
  box.appendChild(svg);
  box.appendChild(el("div", { class: "muted", id: "round-count" },
    `${rounds.length} of ${planned} rounds`));
  return box;
}

function barChart(rounds) {
  const w = 320, h = 140, pad = 24;
  const svg = el("svg:svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  const max = Math.max(1, ...rounds.map((r) => r.participants + r.dropped));
  const bw = (w - 2 * pad) / Math.max(rounds.length, 1);
  rounds.forEach((r, i) => {
    const ph = (h - 2 * pad) * r.participants / max;
    const dh = (h - 2 * pad) * r.dropped / max;
    svg.appendChild(el("svg:rect", { x: pad + i * bw, y: h - pad - ph, width: Math.max(bw - 1, 1), height: ph, fill: "#3b82f6" }));
    svg.appendChild(el("svg:rect", { x: pad + i * bw, y: h - pad - ph - dh, width: Math.max(bw - 1, 1), height: dh, fill: "#ef4444" }));
  });
  svg.appendChild(el("svg:text", { x: pad, y: 12 }, `max ${max} (blue: in the sum, red: dropped)`));
  return svg;
}

function privacyPanel(job) {
  const box = el("div");
  const last = job.rounds.length ? job.rounds[job.rounds.length - 1].epsilon : null;
  if (job.epsilon_budget === null || job.epsilon_budget === undefined) {
    box.appendChild(el("div", { class: "muted" }, "no differential privacy in this job"));
    return box;
  }
  const spent = typeof last === "number" ? last : 0;
  const bar = el("div", { class: "bar" });
  bar.appendChild(el("div", { style: `width:${Math.min(100, 100 * spent / job.epsilon_budget).toFixed(1)}%` }));
  box.appendChild(bar);
  box.appendChild(el("div", { id: "epsilon" }, `ε spent ${fmt(spent, 4)} of ${job.epsilon_budget}`));
  return box;
}

function render(data) {
  const tbody = document.querySelector("#jobs tbody");
  tbody.replaceChildren();
  document.getElementById("jobs").hidden = false;
  const jobs = data.jobs;
  if (!selected || !jobs.some((j) => j.id === selected)) {
    const running = jobs.find((j) => j.status === "running");
    selected = running ? running.id : (jobs.length ? jobs[jobs.length - 1].id : null);
  }
  for (const j of jobs) {
    const tr = el("tr", { class: "job" + (j.id === selected ? " selected" : ""), "data-job": j.id });
    tr.appendChild(el("td", {}, j.id));
    tr.appendChild(el("td", {}, j.name));
    tr.appendChild(el("td", { class: "status-" + j.status }, j.status));
    tr.appendChild(el("td", {}, j.phase));
    tr.appendChild(el("td", {}, `${j.rounds.length} / ${j.planned_rounds}`));
    tr.appendChild(el("td", {}, j.final ? fmt(j.final.auc, 4) : "–"));
    tr.addEventListener("click", () => { selected = j.id; render(data); });
    tbody.appendChild(tr);
  }
  const job = jobs.find((j) => j.id === selected);
  document.getElementById("detail").hidden = !job;
  document.getElementById("audit-head").textContent = data.audit_head;
  if (!job) return;
  document.getElementById("detail-title").textContent = `${job.name} (${job.id}): ${job.phase}`;
  document.getElementById("chart").replaceChildren(lineChart(job.rounds, [
    { key: "auc", label: "AUC", color: "#0b6" },
    { key: "log_loss", label: "log-loss", color: "#8b5cf6" },
  ], job.planned_rounds));
  document.getElementById("participants").replaceChildren(barChart(job.rounds));
  document.getElementById("privacy").replaceChildren(privacyPanel(job));
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const r = await fetch("/api/jobs", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (r.status === 401) {
      sessionStorage.removeItem("fedmark-token");
      token = null;
      document.getElementById("login").hidden = false;
      error.textContent = "The admin token was refused.";
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    error.textContent = "";
    render(await r.json());
  } catch (e) {
    error.textContent = "Cannot reach the coordinator: " + e.message;
  }
}

function start() {
  token = readToken();
  const form = document.getElementById("login");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("fedmark-token", token);
    form.hidden = true;
    refresh();
  });
  if (!token) {
    form.hidden = false;
    return;
  }
  refresh();
  setInterval(() => { if (token) refresh(); }, 2000);
}

start();
