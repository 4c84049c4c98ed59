// Kiln's dashboard: plain JavaScript over API v1, embedded in the
// dispatcher. Every value from the API reaches the page as text nodes (never
// as HTML). The token lives in sessionStorage: it is kept for this tab only,
// and `/?token=T` signs in and then removes the token from the address bar.
"use strict";

const TOKEN_KEY = "kiln.token";
const REFRESH_MS = 3000;
const main = document.getElementById("main");
let timer = null;

(function takeTokenFromAddress() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => null);
  if (response.status === 401) throw new Unauthorized(data?.error?.message || "unauthorized");
  if (!response.ok) throw new Error(`${response.status} ${data?.error?.code || ""}: ${data?.error?.message || response.statusText}`);
  return data;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const stateBadge = (s) => h("span", { class: "state " + s }, s);
const fmtInt = (n) => (n ?? 0).toLocaleString("en");
const fmtCost = (c) => (c === undefined || c === null ? "—" : "$" + c.toFixed(4));
function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 129600) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}
function bar(counts, total) {
  const part = (n, cls) => h("span", { class: cls, style: `width:${total ? (100 * n) / total : 0}%` });
  return h("span", { class: "bar", title: `${counts.succeeded} succeeded, ${counts.awaiting_review} awaiting review, ${counts.failed} failed, ${counts.cancelled} cancelled, ${counts.running} running, ${counts.queued} queued` },
    part(counts.succeeded, "s"), part(counts.awaiting_review, "a"), part(counts.failed, "f"), part(counts.cancelled, "c"), part(counts.running, "r"));
}
// replaceChildren would write a null as the text "null".
function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}
function setStatus(text) { document.getElementById("status").textContent = text; }

function signIn(message) {
  clearTimeout(timer);
  show(document.getElementById("signin-form").content.cloneNode(true));
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    route();
  });
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  signIn("Signed out.");
});

async function act(method, path, body, what) {
  try {
    const answer = await api(method, path, body);
    setStatus(`${what}: ${JSON.stringify(answer)}`);
  } catch (e) {
    setStatus(`${what} failed: ${e.message}`);
  }
  route();
}

// ---- views ---------------------------------------------------------------

const listState = { state: "", name: "", pages: 1 };

async function viewBatches() {
  const params = new URLSearchParams({ limit: String(25 * listState.pages) });
  if (listState.state) params.set("state", listState.state);
  if (listState.name) params.set("name", listState.name);
  const page = await api("GET", "/v1/batches?" + params);
  const stateSelect = h("select", { id: "filter-state", onchange: (e) => { listState.state = e.target.value; route(); } },
    ["", "queued", "running", "awaiting_review", "succeeded", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: s === listState.state ? "" : false }, s || "any state")));
  const search = h("input", { id: "filter-name", type: "search", placeholder: "name contains…", value: listState.name,
    onchange: (e) => { listState.name = e.target.value; route(); } });
  const rows = page.batches.map((b) => {
    const ended = b.counts.succeeded + b.counts.failed;
    return h("tr", { "data-batch": b.batch_id },
      h("td", {}, h("a", { href: "#/batches/" + b.batch_id }, b.name || b.batch_id)),
      h("td", {}, stateBadge(b.state)),
      h("td", {}, bar(b.counts, b.total), " ", `${b.counts.succeeded + b.counts.failed + b.counts.cancelled}/${b.total}`),
      h("td", { class: "num" }, ended ? Math.round((100 * b.counts.succeeded) / ended) + "%" : "—"),
      h("td", { class: "num" }, fmtInt(b.usage.prompt_tokens + b.usage.completion_tokens)),
      h("td", { class: "num" }, fmtCost(b.usage.cost_usd)),
      h("td", { class: "num", title: b.created_at }, age(b.created_at)));
  });
  show(
    h("h1", {}, "Batches"),
    h("div", { class: "filters" }, stateSelect, search),
    h("table", { id: "batches" },
      h("thead", {}, h("tr", {}, ["name", "state", "progress", "pass rate", "tokens", "cost", "age"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no batches")))),
    page.next_cursor ? h("p", {}, h("button", { onclick: () => { listState.pages += 1; route(); } }, "more")) : null);
}

const batchState = { state: "", cursor: null };

// The report aggregates every attempt of the batch (seconds on a huge
// one), so a page refresh reuses it for REPORT_MS while the batch runs,
// and for good once the batch has finished.
const REPORT_MS = 30000;
const reportCache = { id: null, at: 0, finished: null, report: null };

async function batchReport(b) {
  const c = reportCache;
  const fresh = c.id === b.batch_id && c.finished === (b.finished_at || null) && (b.finished_at || Date.now() - c.at < REPORT_MS);
  if (!fresh) Object.assign(c, { id: b.batch_id, at: Date.now(), finished: b.finished_at || null,
    report: await api("GET", `/v1/batches/${b.batch_id}/report`) });
  return c.report;
}

const pct = (r) => (r * 100).toFixed(1) + "%";

function viewReport(r) {
  const each = r.per_success;
  return h("div", { id: "report" },
    h("table", { id: "pass-rates" },
      h("thead", {}, h("tr", {}, ["attempt", "jobs", "passed", "pass rate", "passed by then"].map((c, i) => h("th", i ? { class: "num" } : {}, c)))),
      h("tbody", {}, r.attempts.length ? r.attempts.map((a) => h("tr", {},
        h("td", {}, a.n), h("td", { class: "num" }, fmtInt(a.jobs)), h("td", { class: "num" }, fmtInt(a.passed)),
        h("td", { class: "num" }, pct(a.pass_rate)), h("td", { class: "num" }, pct(a.cumulative_pass_rate)))) :
        h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no attempt yet")))),
    h("p", { class: "muted", id: "per-success" }, each ?
      `per success: ${fmtInt(Math.round(each.prompt_tokens + each.completion_tokens))} tokens` + (each.cost_usd != null ? `, ${fmtCost(each.cost_usd)}` : "") : "no success yet",
      r.phases.length ? " · p50 / p90 ms: " + r.phases.map((p) => `${p.phase} ${Math.round(p.p50_ms)} / ${Math.round(p.p90_ms)}`).join(" · ") : "",
      r.rules.length ? " · failing rules: " + r.rules.slice(0, 5).map((x) => `${x.rule} ${x.diagnostics}`).join(", ") : ""));
}

async function viewBatch(id) {
  const [b, failed] = await Promise.all([
    api("GET", `/v1/batches/${id}`),
    api("GET", `/v1/batches/${id}/jobs?state=failed&limit=1000`),
  ]);
  const params = new URLSearchParams({ limit: "100" });
  if (batchState.state) params.set("state", batchState.state);
  const jobs = await api("GET", `/v1/batches/${id}/jobs?` + params);
  const report = await batchReport(b);
  const reasons = {};
  for (const j of failed.jobs) {
    const code = j.error?.code || "unknown";
    (reasons[code] ||= []).push(j);
  }
  const card = (label, n, state) => h("div", { class: "card" }, h("b", {}, fmtInt(n)),
    state ? h("a", { href: "#", onclick: (e) => { e.preventDefault(); batchState.state = state === batchState.state ? "" : state; route(); } }, label) : label);
  show(
    h("h1", {}, "Batch ", b.name || "", " ", stateBadge(b.state)),
    h("p", { class: "muted" }, b.batch_id, " · created ", b.created_at, b.finished_at ? " · finished " + b.finished_at : "",
      b.created_by ? ` · by ${b.created_by.name || b.created_by.token_id}` : ""),
    h("div", { class: "cards" }, card("total", b.total),
      ["queued", "running", "awaiting_review", "succeeded", "failed", "cancelled"].map((s) => card(s.replace("_", " "), b.counts[s], s)),
      card("tokens", b.usage.prompt_tokens + b.usage.completion_tokens), h("div", { class: "card" }, h("b", {}, fmtCost(b.usage.cost_usd)), "cost")),
    h("div", { class: "actions" },
      h("button", { "data-action": "retry-failed", onclick: () => act("POST", `/v1/batches/${id}/retry`, { states: ["failed"] }, "retry failed") }, "Retry failed jobs"),
      h("button", { "data-action": "rejudge", title: "judge the stored answers of succeeded and failed jobs again, without asking the model",
        onclick: () => act("POST", `/v1/batches/${id}/rejudge`, { states: ["succeeded", "failed"] }, "re-judge") }, "Re-judge answers"),
      h("button", { "data-action": "cancel", class: "danger", onclick: () => act("POST", `/v1/batches/${id}/cancel`, undefined, "cancel") }, "Cancel batch"),
      h("button", { "data-action": "budget", onclick: () => {
        const raw = prompt("New token budget for the batch (empty removes it):", b.options.budget_tokens ?? "");
        if (raw === null) return;
        act("PATCH", `/v1/batches/${id}`, { options: { budget_tokens: raw.trim() === "" ? null : Number(raw) } }, "budget");
      } }, "Set budget")),
    h("h2", {}, "Pass rate per attempt"),
    viewReport(report),
    h("h2", {}, "Failure reasons"),
    h("table", { id: "reasons" }, h("thead", {}, h("tr", {}, h("th", {}, "error code"), h("th", { class: "num" }, "jobs"), h("th", {}, "for example"))),
      h("tbody", {}, Object.keys(reasons).length ? Object.entries(reasons).sort((a, b) => b[1].length - a[1].length).map(([code, js]) =>
        h("tr", {}, h("td", {}, code), h("td", { class: "num" }, js.length),
          h("td", {}, h("a", { href: "#/jobs/" + js[0].job_id }, js[0].label), " ", js[0].error?.message || ""))) :
        h("tr", {}, h("td", { colspan: 3, class: "muted" }, "no failed job")))),
    h("h2", {}, "Jobs", batchState.state ? ` (${batchState.state})` : ""),
    h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["#", "job", "kind", "state", "run", "attempts", "error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, jobs.jobs.map((j) => h("tr", { "data-job": j.job_id },
        h("td", { class: "num" }, j.position), h("td", {}, h("a", { href: "#/jobs/" + j.job_id }, j.label)),
        h("td", {}, j.kind), h("td", {}, stateBadge(j.state)), h("td", { class: "num" }, j.run),
        h("td", { class: "num" }, j.attempts), h("td", {}, j.error ? `${j.error.code}: ${j.error.message}` : ""))))),
    jobs.next_cursor ? h("p", { class: "muted" }, "first 100 jobs shown; use the API or `kiln jobs` for the rest") : null);
}

// ---- changes between attempts --------------------------------------------

// An attempt's files never change once stored, so each pair of attempts is
// fetched and compared once per page load; which comparisons are open is
// remembered across the page's periodic redraws.
const diffs = new Map();
const openDiffs = new Set();

function authHeaders() {
  return { Authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || "") };
}

// The files of one attempt, from its tar.gz (the archive `kiln download`
// unpacks): the browser gunzips, and the tar is read here.
async function attemptFiles(job, run, n) {
  const response = await fetch(`/v1/jobs/${job}/artifacts?run=${run}&attempt=${n}`, { headers: authHeaders() });
  if (!response.ok) throw new Error(`files of attempt ${n}: ${response.status}`);
  const unzipped = response.body.pipeThrough(new DecompressionStream("gzip"));
  return untar(new Uint8Array(await new Response(unzipped).arrayBuffer()));
}

// Regular files of a GNU tar, by path; a path over 100 bytes comes in an
// `L` entry before its file's header.
function untar(bytes) {
  const files = new Map();
  const decoder = new TextDecoder();
  const cstring = (b) => decoder.decode(b).replace(/\0[\s\S]*$/, "");
  let longName = null;
  for (let at = 0; at + 512 <= bytes.length;) {
    const header = bytes.subarray(at, at + 512);
    if (header.every((b) => b === 0)) break;
    const size = parseInt(cstring(header.subarray(124, 136)).trim() || "0", 8);
    const type = String.fromCharCode(header[156]);
    const data = bytes.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
    if (type === "L") { longName = cstring(data); continue; }
    if (type === "0" || type === "\0") files.set(longName ?? cstring(header.subarray(0, 100)), decoder.decode(data));
    longName = null;
  }
  return files;
}

// Lines of `a` and `b` as kept (" "), removed ("-") and added ("+"), by
// their longest common subsequence.
function lineDiff(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const ops = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { ops.push([" ", a[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) ops.push(["-", a[i++]]);
    else ops.push(["+", b[j++]]);
  }
  while (i < n) ops.push(["-", a[i++]]);
  while (j < m) ops.push(["+", b[j++]]);
  return ops;
}

// The changed lines with three lines of context; "…" where lines are left out.
function hunks(ops) {
  const keep = ops.map(([kind], x) => ops.slice(Math.max(0, x - 3), x + 4).some(([k]) => k !== " ") || kind !== " ");
  const out = [];
  ops.forEach((op, x) => {
    if (keep[x]) out.push(op);
    else if (x > 0 && keep[x - 1]) out.push(["…", ""]);
  });
  return out;
}

// Files too long to compare line by line in the page (the table is n × m).
const DIFF_MAX_LINES = 3000;

// A file's lines, without the empty "line" after its final newline.
function fileLines(text) {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  return lines;
}

function compareFiles(before, after) {
  const paths = [...new Set([...before.keys(), ...after.keys()])].sort();
  const changed = [];
  let unchanged = 0;
  for (const path of paths) {
    const a = before.get(path), b = after.get(path);
    if (a === b) { unchanged++; continue; }
    const status = a === undefined ? "added" : b === undefined ? "removed" : "changed";
    const [la, lb] = [fileLines(a ?? ""), fileLines(b ?? "")];
    const lines = la.length > DIFF_MAX_LINES || lb.length > DIFF_MAX_LINES
      ? [["…", `too long to compare here (${la.length} and ${lb.length} lines): download both attempts' files`]]
      : hunks(lineDiff(la, lb));
    changed.push({ path, status, lines });
  }
  return { changed, unchanged };
}

function viewDiff(d) {
  const kinds = { "+": "add", "-": "del", " ": "ctx", "…": "gap" };
  return h("div", {},
    d.changed.length ? d.changed.map((f) => h("div", { class: "diff-file" }, h("b", {}, `${f.path} (${f.status})`),
      h("pre", {}, f.lines.map(([k, text]) => h("span", { class: kinds[k] }, k === "…" ? `… ${text}\n` : `${k} ${text}\n`)))))
      : h("p", { class: "muted" }, "no file changed"),
    d.unchanged ? h("p", { class: "muted" }, `${d.unchanged} file(s) unchanged`) : null);
}

async function loadDiff(job, from, to, key) {
  if (!diffs.has(key)) {
    try {
      const [a, b] = await Promise.all([attemptFiles(job, from.run, from.n), attemptFiles(job, to.run, to.n)]);
      diffs.set(key, compareFiles(a, b));
    } catch (e) {
      setStatus(`changes from attempt ${from.n}: ${e.message}`);
      return;
    }
  }
  // The page may have been redrawn meanwhile: fill the comparison shown now.
  const body = document.querySelector(`details.diff[data-diff="${CSS.escape(key)}"] .diff-body`);
  if (body) body.replaceChildren(viewDiff(diffs.get(key)));
}

// The changes from the run's previous attempt, loaded when opened.
function diffSection(job, from, to) {
  const key = `${job}/${to.run}.${from.n}-${to.n}`;
  const details = h("details", { class: "diff", "data-diff": key },
    h("summary", {}, `Changes from attempt ${from.n}`),
    h("div", { class: "diff-body" }, diffs.has(key) ? viewDiff(diffs.get(key)) : h("p", { class: "muted" }, "loading…")));
  details.open = openDiffs.has(key);
  details.addEventListener("toggle", () => {
    if (!details.open) { openDiffs.delete(key); return; }
    openDiffs.add(key);
    loadDiff(job, from, to, key);
  });
  return details;
}

// ---- one job ---------------------------------------------------------------

// Attempts still at `prompted` or `generated` have no files to compare yet.
const hasFiles = (a) => a.phase === "validated" || a.phase === "tested";

function viewAttempt(a, job, previous) {
  const v = a.validation;
  const t = a.tests;
  const faults = (a.faults || []).map((f) => h("li", {}, `${f.kind} ${f.class}: ${f.message}`));
  return h("div", { class: "attempt", "data-attempt": `${a.run}.${a.n}` },
    h("h3", {}, `Run ${a.run} · attempt ${a.n} `, stateBadge(a.state), " ", h("span", { class: "muted" },
      `${a.model} · ${fmtInt(a.usage.prompt_tokens)} + ${fmtInt(a.usage.completion_tokens)} tokens · phase ${a.phase}`,
      a.cost_usd !== undefined ? ` · ${fmtCost(a.cost_usd)}` : "")),
    a.rejudged_from ? h("p", { class: "muted" }, `re-judged the stored answer of run ${a.rejudged_from.run} · attempt ${a.rejudged_from.n} (no model request)`) : null,
    h("p", { class: "muted" }, "timings (ms): ", Object.entries(a.timings_ms || {}).map(([k, ms]) => `${k} ${ms}`).join(" · ") || "—",
      ` · worker ${a.worker_id}`),
    a.error ? h("p", { class: "error" }, `${a.error.code}: ${a.error.message}`) : null,
    faults.length ? h("div", {}, h("b", {}, `Provider and sandbox faults (${a.llm_faults} + ${a.sandbox_faults}, retried)`), h("ul", {}, faults)) : null,
    v && v.diagnostics.length ? h("div", { class: "diagnostics" }, h("b", {}, "Diagnostics"),
      h("ul", {}, v.diagnostics.map((d) => h("li", { class: "diag" },
        h("span", { class: "loc" }, `${d.file}:${d.line}:${d.col}`), " ", h("span", { class: "rule" }, `[${d.rule}]`), ` ${d.severity}: ${d.message}`)))) : null,
    t ? h("div", { class: "tests" }, h("b", {}, `Tests: ${t.passed} of ${t.total} passed`), t.problem ? h("span", { class: "error" }, " — " + t.problem) : null,
      t.cases.some((c) => c.outcome !== "passed") ? h("table", { class: "cases" },
        h("thead", {}, h("tr", {}, h("th", {}, "case"), h("th", {}, "outcome"), h("th", {}, "expected vs got"))),
        h("tbody", {}, t.cases.filter((c) => c.outcome !== "passed").map((c) =>
          h("tr", {}, h("td", {}, c.name), h("td", {}, stateBadge(c.outcome)), h("td", {}, h("pre", {}, c.message || "")))))) : null,
      t.output ? h("details", {}, h("summary", {}, "output"), h("pre", {}, t.output)) : null) : null,
    previous && hasFiles(previous) && hasFiles(a) ? diffSection(job, previous, a) : null);
}

async function viewJob(id) {
  const [job, attempts] = await Promise.all([api("GET", `/v1/jobs/${id}`), api("GET", `/v1/jobs/${id}/attempts`)]);
  const canRetry = job.state === "failed" || job.state === "cancelled";
  const canCancel = job.state === "queued" || job.state === "running" || job.state === "awaiting_review";
  const awaiting = job.state === "awaiting_review";
  // The comment is read when a decision is clicked, not kept across redraws.
  const decide = (decision) => act("POST", `/v1/jobs/${id}/review`,
    { decision, comment: document.getElementById("review-comment").value.trim() || undefined }, decision);
  // An attempt past `prompted` holds the model's answer, which a re-judge replays.
  const canRejudge = ["succeeded", "failed", "cancelled"].includes(job.state) && attempts.some((a) => a.phase !== "prompted");
  show(
    h("h1", {}, `Job ${job.spec.entry_point || job.spec.service_name || job.job_id} `, stateBadge(job.state)),
    h("p", { class: "muted" }, job.job_id, " · batch ", h("a", { href: "#/batches/" + job.batch_id }, job.batch_id),
      ` · ${job.kind} · run ${job.run} · ${job.attempts} of ${job.max_attempts} attempts`,
      job.crashes ? ` · ${job.crashes} takeovers (${job.blamed_crashes} blamed)` : "", job.activity ? ` · now: ${job.activity}` : ""),
    job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : null,
    awaiting ? h("div", { class: "review", id: "review" },
      h("b", {}, "This job passed and awaits your review: approve its files, or reject them."),
      h("input", { id: "review-comment", type: "text", placeholder: "comment (a rejection's reason)…" }),
      h("button", { "data-action": "approve", onclick: () => decide("approve") }, "Approve"),
      h("button", { "data-action": "reject", class: "danger", onclick: () => decide("reject") }, "Reject")) : null,
    h("div", { class: "actions" },
      canRetry ? h("button", { "data-action": "retry", onclick: () => act("POST", `/v1/jobs/${id}/retry`, undefined, "retry") }, "Retry job") : null,
      canRejudge ? h("button", { "data-action": "rejudge", title: "judge the stored answer again, without asking the model",
        onclick: () => act("POST", `/v1/jobs/${id}/rejudge`, undefined, "re-judge") }, "Re-judge") : null,
      canCancel ? h("button", { "data-action": "cancel", class: "danger", onclick: () => act("POST", `/v1/jobs/${id}/cancel`, undefined, "cancel") }, "Cancel job") : null,
      job.result ? h("button", { "data-action": "download", onclick: () => download(id) }, "Download files") : null),
    job.result ? h("p", {}, "Result files: ", job.result.files.map((f) => `${f.path} (${f.size} B)`).join(", ")) : null,
    job.reviews.length ? h("div", {}, h("h2", {}, "Reviews"), h("ul", { id: "reviews" }, job.reviews.map((r) =>
      h("li", {}, `run ${r.run} attempt ${r.attempt}: `, h("b", {}, r.decision), ` at ${r.at}`,
        r.by ? ` by ${r.by.name || r.by.token_id}` : "", r.comment ? ` — ${r.comment}` : "")))) : null,
    h("h2", {}, "Attempts"),
    h("div", { id: "attempts" }, attempts.length
      ? attempts.map((a) => viewAttempt(a, id, attempts.find((p) => p.run === a.run && p.n === a.n - 1))) : h("p", { class: "muted" }, "no attempt yet")),
    h("details", {}, h("summary", {}, "spec"), h("pre", {}, JSON.stringify(job.spec, null, 2))));
}

async function download(id) {
  const response = await fetch(`/v1/jobs/${id}/artifacts`, { headers: authHeaders() });
  if (!response.ok) { setStatus(`download failed: ${response.status}`); return; }
  const link = h("a", { href: URL.createObjectURL(await response.blob()), download: `${id}.tar.gz` });
  link.click();
}

async function viewWorkers() {
  const list = await api("GET", "/v1/workers");
  show(h("h1", {}, "Workers"),
    h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ["worker", "slots busy", "started", "jobs in hand"].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.workers.length ? list.workers.map((w) => h("tr", { "data-worker": w.worker_id },
        h("td", {}, w.worker_id, w.lock_missing_since ? h("span", { class: "error" }, " (not answering)") : null),
        h("td", { class: "num" }, `${w.slots_busy}/${w.concurrency ?? "?"}`),
        h("td", { title: w.started_at }, age(w.started_at) + " ago"),
        h("td", {}, w.jobs.map((j) => h("div", {}, h("a", { href: "#/jobs/" + j.job_id }, j.job_id.slice(0, 13)), ` ${j.activity || ""}`)))))
        : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "no live worker")))));
}

// ---- routing -------------------------------------------------------------

async function route() {
  clearTimeout(timer);
  const hash = location.hash.replace(/^#/, "") || "/";
  let m;
  try {
    if ((m = hash.match(/^\/batches\/([0-9a-f-]+)$/))) await viewBatch(m[1]);
    else if ((m = hash.match(/^\/jobs\/([0-9a-f-]+)$/))) await viewJob(m[1]);
    else if (hash === "/workers") await viewWorkers();
    else await viewBatches();
    document.getElementById("signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
    document.body.dataset.loaded = hash;
  } catch (e) {
    if (e instanceof Unauthorized) { signIn(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused: " + e.message : ""); return; }
    show(h("p", { class: "error", id: "load-error" }, e.message));
  }
  // Live updates: polling, paused while the tab is hidden.
  // Not while the user types in a field, which a redraw would reset.
  timer = setTimeout(function tick() {
    const typing = document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName);
    if (document.hidden || typing) timer = setTimeout(tick, REFRESH_MS);
    else route();
  }, REFRESH_MS);
}

window.addEventListener("hashchange", () => { batchState.state = ""; route(); });
route();
