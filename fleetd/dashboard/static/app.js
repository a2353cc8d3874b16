// fleet-py dashboard: plain JavaScript, no framework, no build step.
// The model is fed by one Server-Sent-Events stream (api/events: fleetd's Watch stream): a
// snapshot, then one message per change. Each carries its etcd revision as the event id, so a
// reconnect resumes where it left off. Views are re-rendered from the model, at most once a frame.
"use strict";

const GONE_KEEP_MS = 10 * 60 * 1000;   // how long a departed machine stays on the picture
const MOVED_MARK_MS = 60 * 1000;       // how long a moved unit is marked as such
const STALL_MS = 12000;                // no message (pings come every 5 s): the feed stalled
const JOURNAL_MAX_LINES = 2000;

const model = {
  machines: new Map(),  // id -> machine
  units: new Map(),     // name -> unit
  states: new Map(),    // unit name -> Map(machine id -> state)
  revision: 0,
  gone: new Map(),      // machine id -> {machine, at, units: [names it held]}
  moved: new Map(),     // unit name -> {from, to, at}
  leases: {},           // machine id -> {ttl, left}: its etcd lease (granted TTL, seconds left)
  loaded: false,
};
const ui = { sort: { key: "name", dir: 1 }, filter: "", route: null, unit: null };

// --- DOM helpers ------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
const fill = (el, ...children) => el.replaceChildren(...children.flat(Infinity)
  .filter((c) => c !== null && c !== undefined && c !== false));
const short = (id) => (id || "").slice(0, 8);
const enc = encodeURIComponent;

function ago(t) {
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

function stateClass(st) {
  if (!st) return "s-idle";
  const a = st.active_state;
  if (a === "active") return "s-active";
  if (a === "failed") return "s-failed";
  if (a === "activating" || a === "deactivating" || a === "reloading") return "s-busy";
  return "s-idle";
}

function machineLabel(id) {
  const m = model.machines.get(id) || (model.gone.get(id) || {}).machine;
  return m && m.hostname ? `${m.hostname} (${short(id)})` : short(id);
}

// --- the model --------------------------------------------------------------------------------
function statesOf(name) {
  let per = model.states.get(name);
  if (!per) { per = new Map(); model.states.set(name, per); }
  return per;
}

function putUnit(u) {
  const old = model.units.get(u.name);
  const was = old ? old.machine_ids : [];
  if (old && !u.global && u.machine_ids.length && was.length) {
    const to = u.machine_ids.find((m) => !was.includes(m));
    const from = was.find((m) => !u.machine_ids.includes(m));
    if (to && from) model.moved.set(u.name, { from, to, at: Date.now() });
  } else if (old && !u.global && u.machine_ids.length && !was.length) {
    // rescheduled after its machine was lost: it held the unit when it went away
    for (const [mid, g] of model.gone) {
      if (g.units.includes(u.name) && !u.machine_ids.includes(mid)) {
        model.moved.set(u.name, { from: mid, to: u.machine_ids[0], at: Date.now() });
      }
    }
  }
  model.units.set(u.name, u);
}

function apply(msg) {
  if (msg.revision) model.revision = Math.max(model.revision, msg.revision);
  switch (msg.kind) {
    case "snapshot":
      model.machines = new Map(msg.machines.map((m) => [m.id, m]));
      model.units = new Map(msg.units.map((u) => [u.name, u]));
      model.states = new Map();
      for (const s of msg.states) statesOf(s.name).set(s.machine_id, s);
      for (const id of model.machines.keys()) model.gone.delete(id);
      model.revision = msg.revision;
      model.loaded = true;
      break;
    case "machine_put": {
      const old = model.machines.get(msg.machine.id);
      // change events do not say who leads the engine: keep what the snapshot said
      if (old && old.engine_leader) msg.machine.engine_leader = true;
      model.machines.set(msg.machine.id, msg.machine);
      model.gone.delete(msg.machine.id);
      break;
    }
    case "machine_deleted": {
      const m = model.machines.get(msg.machine_id);
      model.machines.delete(msg.machine_id);
      if (m) {
        const held = [...model.units.values()]
          .filter((u) => !u.global && u.machine_ids.includes(m.id)).map((u) => u.name);
        model.gone.set(m.id, { machine: m, at: Date.now(), units: held });
      }
      break;
    }
    case "leases": {
      const before = JSON.stringify(model.leases);
      model.leases = msg.leases;
      if (JSON.stringify(model.leases) === before) return;  // nothing to redraw
      break;
    }
    case "ping": {
      if (typeof msg.leader !== "string") return;  // etcd did not say
      let changed = false;
      for (const m of model.machines.values()) {
        const lead = m.id === msg.leader;
        if (m.engine_leader !== lead) { m.engine_leader = lead; changed = true; }
      }
      if (!changed) return;
      break;
    }
    case "unit_put": putUnit(msg.unit); break;
    case "unit_deleted":
      model.units.delete(msg.name); model.states.delete(msg.name); model.moved.delete(msg.name);
      break;
    case "state_put": statesOf(msg.state.name).set(msg.state.machine_id, msg.state); break;
    case "state_deleted": statesOf(msg.name).delete(msg.machine_id); break;
    default: return;
  }
  scheduleRender();
}

// --- the live feed ----------------------------------------------------------------------------
const feed = { es: null, lastAt: 0, since: 0, retry: null, downSince: null };

function setConn(state, text) {
  const el = $("#conn");
  el.dataset.state = state;
  el.textContent = text;
  const banner = $("#banner");
  if (state === "disconnected") {
    if (!feed.downSince) feed.downSince = new Date();
    banner.hidden = false;
    banner.textContent = `Disconnected from fleetd since ${feed.downSince.toLocaleTimeString()}` +
      ` — reconnecting. The page shows the cluster as of revision ${model.revision}.`;
  } else if (state === "live") {
    feed.downSince = null;
    banner.hidden = true;
  }
}

function connect() {
  clearTimeout(feed.retry);
  if (feed.es) feed.es.close();
  // EventSource resends the last id by itself (Last-Event-ID); ?since= covers a new EventSource
  const es = new EventSource("api/events" + (model.revision ? `?since=${model.revision}` : ""));
  feed.es = es;
  feed.lastAt = Date.now();
  es.onmessage = (e) => {
    feed.lastAt = Date.now();
    const msg = JSON.parse(e.data);
    if (msg.kind === "error") { setConn("disconnected", "disconnected"); return; }
    if (msg.kind === "snapshot" || msg.kind === "resumed" || model.loaded) {
      setConn("live", `live · rev ${model.revision}`);
    }
    apply(msg);
    if (model.loaded) $("#conn").textContent = `live · rev ${model.revision}`;
  };
  es.onerror = () => {
    setConn("disconnected", "disconnected");
    if (es.readyState === EventSource.CLOSED) feed.retry = setTimeout(connect, 1000);
  };
}

setInterval(() => {  // a stalled connection (e.g. the proxy's upstream powered off)
  if (feed.es && Date.now() - feed.lastAt > STALL_MS) {
    setConn("disconnected", "disconnected");
    connect();
  }
  if (model.gone.size || model.moved.size) scheduleRender();
}, 1000);

// --- rendering --------------------------------------------------------------------------------
let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; render(); });
}

function matches(...texts) {
  const f = ui.filter;
  return !f || texts.some((t) => String(t || "").toLowerCase().includes(f));
}

function unitMatches(u) {
  const st = [...(model.states.get(u.name) || new Map()).values()];
  return matches(u.name, u.description, u.desired_state, u.current_state,
    ...u.machine_ids.map(machineLabel), ...st.map((s) => `${s.active_state}/${s.sub_state}`));
}

function machineMatches(m) {
  return matches(m.id, m.ip, m.hostname, ...Object.entries(m.metadata).map(([k, v]) => `${k}=${v}`));
}

function summary() {
  const units = [...model.units.values()];
  let active = 0;
  for (const per of model.states.values()) {
    for (const s of per.values()) if (s.active_state === "active") active++;
  }
  const failed = units.filter((u) => [...(model.states.get(u.name) || new Map()).values()]
    .some((s) => s.active_state === "failed")).length;
  $("#summary").textContent = `${model.machines.size} machines · ${units.length} units · ` +
    `${active} active` + (failed ? ` · ${failed} failed` : "") +
    (model.gone.size ? ` · ${model.gone.size} lost` : "");
}

function unitCard(u, mid) {
  const st = (model.states.get(u.name) || new Map()).get(mid);
  const mv = model.moved.get(u.name);
  const moved = mv && mv.to === mid && Date.now() - mv.at < MOVED_MARK_MS;
  return h("a", { class: `card ${stateClass(st)}${moved ? " moved" : ""}`, href: `#/unit/${enc(u.name)}`,
                 "data-unit": u.name, "data-machine": mid,
                 "data-active": st ? st.active_state : "", title: u.description || u.name },
    h("div", { class: "name" }, u.name, u.global ? " " : null,
      u.global ? h("span", { class: "chip" }, "global") : null),
    h("div", { class: "st" }, st ? `${st.active_state}/${st.sub_state}` : "scheduled",
      u.desired_state !== "launched" ? ` · ${u.desired_state}` : ""),
    moved ? h("div", { class: "st muted" }, `moved from ${machineLabel(mv.from)} ${ago(mv.at)}`) : null);
}

function machineColumn(m) {
  const units = [...model.units.values()].filter((u) => u.machine_ids.includes(m.id) && unitMatches(u))
    .sort((a, b) => a.name.localeCompare(b.name));
  const md = Object.entries(m.metadata).sort();
  const draining = m.state === "draining";
  return h("section", { class: `machine${draining ? " draining" : ""}`, "data-machine-id": m.id,
                        "data-state": m.state || "active" },
    h("h3", null, h("span", { title: m.id, class: "mono" }, m.hostname || short(m.id)),
      m.engine_leader ? h("span", { class: "badge leader", title: "leads the engine" }, "engine") : null,
      draining ? h("span", { class: "badge draining", title: "fleetctl drain: gets no new units" }, "draining") : null),
    h("div", { class: "meta" }, h("span", { class: "mono", title: m.id }, short(m.id)), " · ", m.ip || "no ip",
      h("br"), md.length ? md.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)) : "no metadata",
      h("br"), capacity(m), " ", health(m)),
    units.length ? units.map((u) => unitCard(u, m.id)) : h("div", { class: "muted" }, "no units"));
}

function bytes(n) {
  const units = ["B", "K", "M", "G", "T"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)}${units[i]}`;
}

// What units may still reserve there ("cpu 1.5/2 free · mem 3.1G/7.8G free"), or that the
// machine publishes no capacity.
function capacity(m) {
  const parts = [];
  if (m.cpu_milli) parts.push(`cpu ${((m.cpu_milli - m.reserved_cpu_milli) / 1000).toFixed(2)}/${(m.cpu_milli / 1000).toFixed(2)} free`);
  if (m.memory_bytes) parts.push(`mem ${bytes(Math.max(0, m.memory_bytes - m.reserved_memory_bytes))}/${bytes(m.memory_bytes)} free`);
  return h("span", { class: "capacity", "data-capacity": "" }, parts.length ? parts.join(" · ") : "no capacity published");
}

function goneColumn(id, g) {
  const m = g.machine;
  return h("section", { class: "machine gone", "data-machine-id": id, "data-gone": "true" },
    h("h3", null, h("span", { title: id, class: "mono" }, m.hostname || short(id)),
      h("span", { class: "badge gone" }, "lost")),
    h("div", { class: "meta" }, h("span", { class: "mono", title: id }, short(id)), " · ", m.ip || "",
      h("br"), Object.entries(m.metadata).sort().map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)),
      h("br"), `lease expired ${ago(g.at)}`),
    g.units.map((name) => {
      const u = model.units.get(name);
      const now = u ? u.machine_ids : [];
      return h("div", { class: "card ghost", "data-ghost": name },
        h("div", { class: "name" }, name),
        h("div", { class: "st muted" }, !u ? "destroyed" : now.length
          ? `→ now on ${now.map(machineLabel).join(", ")}` : "waiting for a machine"));
    }));
}

function clusterPicture() {
  const machines = [...model.machines.values()].sort((a, b) =>
    (a.hostname || a.id).localeCompare(b.hostname || b.id));
  const cols = machines.filter((m) => machineMatches(m) ||
    [...model.units.values()].some((u) => u.machine_ids.includes(m.id) && unitMatches(u)))
    .map(machineColumn);
  for (const [id, g] of model.gone) {
    if (Date.now() - g.at > GONE_KEEP_MS) model.gone.delete(id);
    else cols.push(goneColumn(id, g));
  }
  const waiting = [...model.units.values()].filter((u) => !u.machine_ids.length &&
    u.desired_state !== "inactive" && !u.name.includes("@.") && unitMatches(u));
  if (waiting.length) {
    cols.push(h("section", { class: "machine unscheduled", "data-unscheduled": "true" },
      h("h3", null, "not scheduled"),
      h("div", { class: "meta" }, "units waiting for a machine"),
      waiting.map((u) => h("a", { class: "card s-idle", href: `#/unit/${enc(u.name)}`, "data-unit": u.name },
        h("div", { class: "name" }, u.name),
        h("div", { class: "st" }, u.unschedulable_reason || "waiting for the engine")))));
  }
  return h("div", { class: "cluster", id: "cluster" }, cols.length ? cols
    : h("div", { class: "muted" }, model.loaded ? "no machines" : "loading…"));
}

function target(u) {
  if (u.global) return "global";
  return u.machine_ids.length ? u.machine_ids.map((id) => {
    const m = model.machines.get(id);
    return `${short(id)}/${m ? m.ip : "?"}`;
  }).join(", ") : "-";
}

const UNIT_COLUMNS = [
  ["name", "Unit"], ["desired_state", "Desired"], ["current_state", "Current"],
  [null, "State per machine"], ["hash", "Hash"], ["target", "Target"], ["global", "Global"],
  ["why", "Why not scheduled"],
];

function sortValue(u, key) {
  if (key === "target") return target(u);
  if (key === "why") return u.unschedulable_reason;
  if (key === "global") return u.global ? 1 : 0;
  return u[key];
}

function tableHead(columns, sort, onSort) {
  return h("thead", null, h("tr", null, columns.map(([key, label]) => h("th", {
    "data-sort": key || null,
    class: key && sort.key === key ? (sort.dir > 0 ? "sorted-asc" : "sorted-desc") : null,
    onclick: key ? () => onSort(key) : null,
  }, label))));
}

function sortBy(key) {
  ui.sort = { key, dir: ui.sort.key === key ? -ui.sort.dir : 1 };
  scheduleRender();
}

function unitsTable() {
  const { key, dir } = ui.sort;
  const units = [...model.units.values()].filter(unitMatches).sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : a.name.localeCompare(b.name)) * dir;
  });
  return h("table", { id: "units" }, tableHead(UNIT_COLUMNS, ui.sort, sortBy),
    h("tbody", null, units.map((u) => {
      const per = [...(model.states.get(u.name) || new Map()).values()]
        .sort((a, b) => machineLabel(a.machine_id).localeCompare(machineLabel(b.machine_id)));
      return h("tr", { "data-unit": u.name },
        h("td", null, h("a", { href: `#/unit/${enc(u.name)}` }, u.name),
          u.description ? h("div", { class: "muted" }, u.description) : null),
        h("td", null, u.desired_state), h("td", null, u.current_state),
        h("td", null, per.length ? per.map((s) => h("span", { class: `pill ${stateClass(s)}`,
          title: `${s.machine_id} ${s.load_state}/${s.active_state}/${s.sub_state}` },
          `${machineLabel(s.machine_id)}: ${s.active_state}/${s.sub_state}`)) : "-"),
        h("td", { class: "mono", title: u.hash }, u.hash.slice(0, 7)),
        h("td", { class: "mono" }, target(u)), h("td", null, u.global ? "yes" : ""),
        h("td", { class: "why" }, u.unschedulable_reason));
    })),
    units.length ? null : h("tbody", null, h("tr", null, h("td", { colspan: 8, class: "muted" },
      model.units.size ? "no unit matches the filter" : "no units"))));
}

// A machine's health: its etcd lease, granted TTL and whole seconds left, as the feed last
// read it. Renewals come every tenth of the TTL, so a lease under half its TTL is late.
function health(m) {
  const l = model.leases[m.id];
  if (!l) return h("span", { class: "pill s-idle", "data-health": "unknown" }, "lease ?");
  const late = l.left * 2 < l.ttl;
  return h("span", { class: `pill ${late ? "s-busy" : "s-active"}`, "data-health": late ? "late" : "live",
                     "data-lease-left": l.left, "data-lease-ttl": l.ttl,
                     title: `etcd lease: ${l.left} s left of ${l.ttl} s` + (late ? " (renewals are late)" : "") },
    `lease ${l.left}/${l.ttl} s${late ? " late" : ""}`);
}

function machinesTable() {
  const rows = [...model.machines.values()].filter(machineMatches)
    .sort((a, b) => (a.hostname || a.id).localeCompare(b.hostname || b.id));
  return h("table", { id: "machines" },
    h("thead", null, h("tr", null, ["Machine", "IP", "Hostname", "Metadata", "Health", "State", "Capacity", "Units"]
      .map((t) => h("th", null, t)))),
    h("tbody", null, rows.map((m) => {
      const units = [...model.units.values()].filter((u) => u.machine_ids.includes(m.id));
      return h("tr", { "data-machine-id": m.id },
        h("td", { class: "mono", title: m.id }, short(m.id), m.engine_leader ? " (engine)" : ""),
        h("td", null, m.ip), h("td", null, m.hostname),
        h("td", null, Object.entries(m.metadata).sort().map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`))),
        h("td", { class: "health" }, health(m), m.version ? ` v${m.version}` : ""),
        h("td", { class: "machine-state" }, m.state === "draining"
          ? h("span", { class: "pill s-busy" }, "draining") : "active"),
        h("td", null, capacity(m)),
        h("td", null, units.length));
    }),
    [...model.gone].map(([id, g]) => h("tr", { "data-machine-id": id, "data-gone": "true" },
      h("td", { class: "mono", title: id }, short(id)), h("td", null, g.machine.ip),
      h("td", null, g.machine.hostname),
      h("td", null, Object.entries(g.machine.metadata).sort().map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`))),
      h("td", null, h("span", { class: "pill s-failed" }, `lease expired ${ago(g.at)}`)),
      h("td", null, "-"), h("td", null, "-"),
      h("td", null, 0)))));
}

function renderOverview() {
  const main = $("#main");
  fill(main,
    h("h2", null, "Cluster"), clusterPicture(),
    h("h2", null, "Units"), unitsTable(),
    h("h2", null, "Machines"), machinesTable());
}

// --- the unit page ----------------------------------------------------------------------------
function openUnitPage(name) {
  closeJournal();
  ui.unit = { name, file: null, fileError: "", journalMachine: "", notice: null };
  const main = $("#main");
  fill(main,
    h("div", null, h("a", { href: "#/" }, "← cluster")),
    h("div", { id: "unit-live" }),
    h("h2", null, "Unit file"), h("pre", { id: "unit-file" }, "loading…"),
    h("h2", null, "Journal ", h("span", { id: "journal-where", class: "muted" }), " ",
      h("select", { id: "journal-machine", hidden: true, onchange: (e) => {
        ui.unit.journalMachine = e.target.value;
        openJournal(name, e.target.value);
      } })),
    h("pre", { id: "journal", class: "journal" }),
    h("div", { id: "journal-notice" }));
  loadUnitFile(name);
}

function loadUnitFile(name) {
  if (ui.unit.loading) return;
  ui.unit.loading = true;
  ui.unit.tried = (model.units.get(name) || {}).hash;
  fetch(`api/units/${enc(name)}`).then(async (r) => {
    const body = await r.json();
    if (!ui.unit || ui.unit.name !== name) return;
    ui.unit.loading = false;
    if (!r.ok) { $("#unit-file").textContent = body.error ? body.error.message : r.statusText; return; }
    ui.unit.file = body;
    $("#unit-file").textContent = body.text;
    scheduleRender();
  }).catch((e) => {
    if (ui.unit) ui.unit.loading = false;
    $("#unit-file").textContent = `cannot load the unit file: ${e}`;
  });
}

function renderUnitPage() {
  const { name } = ui.unit;
  const u = model.units.get(name);
  const live = $("#unit-live");
  if (!u) {
    fill(live, h("h1", null, name), h("div", { class: "notice", id: "unit-gone" },
      model.loaded ? "This unit does not exist (destroyed)." : "loading…"),
      ui.unit.notice ? h("div", { class: `notice ${ui.unit.notice.error ? "error" : ""}`, id: "action-notice" },
        ui.unit.notice.text) : null);
    closeJournal();
    return;
  }
  const per = model.states.get(name) || new Map();
  // the file changed (replaced), or could not be read before the unit existed: read it again
  if (!ui.unit.loading && ui.unit.tried !== u.hash &&
      (!ui.unit.file || ui.unit.file.hash !== u.hash)) loadUnitFile(name);
  const ex = ui.unit.file && ui.unit.file.explanation;
  fill(live,
    h("h1", { id: "unit-name" }, name), u.description ? h("div", { class: "muted" }, u.description) : null,
    h("div", { class: "actions" },
      ["start", "stop", "restart", "rolling-restart", "destroy"].map((a) => h("button", {
        id: `btn-${a}`, class: a === "destroy" || a === "stop" ? "danger" : null,
        disabled: a.endsWith("restart") && u.desired_state !== "launched",
        onclick: () => confirmAction(name, a),
      }, actionLabel(a)))),
    ui.unit.notice ? h("div", { class: `notice ${ui.unit.notice.error ? "error" : ""}`, id: "action-notice" },
      ui.unit.notice.text) : null,
    h("table", null, h("tbody", null,
      h("tr", null, h("th", null, "Desired"), h("td", { id: "unit-desired" }, u.desired_state)),
      h("tr", null, h("th", null, "Current"), h("td", { id: "unit-current" }, u.current_state)),
      h("tr", null, h("th", null, "Hash"), h("td", { class: "mono" }, u.hash)),
      h("tr", null, h("th", null, "Target"), h("td", { class: "mono" }, target(u))),
      u.unschedulable_reason ? h("tr", null, h("th", null, "Why not scheduled"),
        h("td", { class: "why" }, u.unschedulable_reason)) : null)),
    h("h2", null, "Where it runs"),
    u.machine_ids.length ? h("table", { id: "unit-where" },
      h("thead", null, h("tr", null, ["Machine", "IP", "Load", "Active", "Sub", "Main PID", "Hash"]
        .map((t) => h("th", null, t)))),
      h("tbody", null, u.machine_ids.map((mid) => {
        const s = per.get(mid);
        const m = model.machines.get(mid);
        return h("tr", { "data-machine-id": mid, "data-active": s ? s.active_state : "" },
          h("td", { class: "mono", title: mid }, machineLabel(mid)), h("td", null, m ? m.ip : "(lost)"),
          h("td", null, s ? s.load_state : "-"),
          h("td", null, s ? h("span", { class: `pill ${stateClass(s)}` }, s.active_state) : "-"),
          h("td", null, s ? s.sub_state : "-"), h("td", null, s && s.main_pid ? s.main_pid : "-"),
          h("td", { class: "mono" }, s ? s.hash.slice(0, 7) : "-"));
      })))
      : h("div", { class: "muted" }, "not scheduled to any machine"),
    ex && ex.rejected.length && !u.machine_ids.length ? h("div", null, h("h2", null, "Placement checks"),
      h("table", null, h("tbody", null, ex.rejected.map((r) => h("tr", null,
        h("td", { class: "mono" }, machineLabel(r.machine_id)), h("td", null, r.check),
        h("td", null, r.detail)))))) : null);
  followJournal(u);
}

function actionLabel(action) {
  const text = action.replace("-", " ");
  return text[0].toUpperCase() + text.slice(1);
}

function confirmAction(name, action) {
  const dlg = $("#confirm");
  $("#confirm-text").textContent = {
    start: `Start ${name}? fleet schedules it to a machine and starts it there.`,
    stop: `Stop ${name}? It stays loaded on its machine.`,
    restart: `Restart ${name} on every machine that runs it (systemctl restart)?`,
    "rolling-restart": `Restart ${name} one machine at a time, each active again before the next?`,
    destroy: `Destroy ${name}? It is stopped everywhere and its file removed from the cluster.`,
  }[action];
  $("#confirm-ok").textContent = actionLabel(action);
  dlg.onclose = () => { if (dlg.returnValue === "ok") runAction(name, action); };
  dlg.returnValue = "";
  dlg.showModal();
}

async function runAction(name, action) {
  const notice = (text, error) => { if (ui.unit) { ui.unit.notice = { text, error }; scheduleRender(); } };
  notice(`${action}: sent…`, false);
  try {
    const r = await fetch(`api/units/${enc(name)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    const body = await r.json();
    if (!r.ok) { notice(`${action} failed: ${body.error ? body.error.message : r.statusText}`, true); return; }
    if (action.endsWith("restart")) {
      const bad = body.restarted.filter((x) => x.exit_code !== 0);
      const stopped = body.stopped_at ? ` (rollout stopped at ${machineLabel(body.stopped_at)})` : "";
      notice(bad.length ? `restart failed on ${bad.map((x) => machineLabel(x.machine_id)).join(", ")}: ` +
        bad.map((x) => x.output.trim()).join("; ") + stopped
        : `restarted on ${body.restarted.length} machine(s)`, bad.length > 0);
    } else {
      notice(action === "destroy" ? "destroyed" : `${action}: desired state is now ${body.desired_state}`, false);
    }
  } catch (e) {
    notice(`${action} failed: ${e}`, true);
  }
}

// --- the journal of the unit shown ------------------------------------------------------------
const journal = { es: null, machine: "", retry: null };

function closeJournal() {
  clearTimeout(journal.retry);
  if (journal.es) journal.es.close();
  journal.es = null;
  journal.machine = "";
}

function followJournal(u) {
  const where = u.machine_ids;
  if (!where.length) {
    if (journal.es) closeJournal();
    const w = $("#journal-where");
    if (w) w.textContent = "(not running anywhere)";
    return;
  }
  const select = $("#journal-machine");  // a global unit: which machine's journal
  select.hidden = where.length < 2;
  const options = where.map((m) => `${m}`).join(",");
  if (select.dataset.options !== options) {
    select.dataset.options = options;
    fill(select, where.map((m) => h("option", { value: m, selected: m === journal.machine }, machineLabel(m))));
  }
  if (journal.es && where.includes(journal.machine)) return;
  if (journal.retry && !journal.es) return;
  const wanted = where.includes(ui.unit.journalMachine) ? ui.unit.journalMachine : where[0];
  openJournal(u.name, wanted);
  select.value = wanted;
}

function openJournal(name, machine) {
  closeJournal();
  journal.machine = machine;
  $("#journal-where").textContent = `on ${machineLabel(machine)}, following`;
  fill($("#journal-notice"));
  const es = new EventSource(`api/units/${enc(name)}/journal?machine=${enc(machine)}&lines=50`);
  journal.es = es;
  const pre = $("#journal");
  let lines = 0;
  es.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.kind === "start") { pre.textContent = ""; lines = 0; }
    else if (msg.kind === "line") {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(msg.text + "\n");
      if (++lines > JOURNAL_MAX_LINES) pre.firstChild.remove();
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    } else if (msg.kind === "end") {
      fill($("#journal-notice"), h("div", { class: "notice" }, `journal: ${msg.message}`));
      es.close();
      journal.es = null;
      journal.retry = setTimeout(() => { journal.retry = null; scheduleRender(); }, 3000);
    }
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      journal.es = null;
      journal.retry = setTimeout(() => { journal.retry = null; scheduleRender(); }, 3000);
    }
  };
}

// --- routing ----------------------------------------------------------------------------------
function route() {
  const m = location.hash.match(/^#\/unit\/(.+)$/);
  return m ? { unit: decodeURIComponent(m[1]) } : { unit: null };
}

function render() {
  summary();
  const r = route();
  if (r.unit) {
    if (!ui.unit || ui.unit.name !== r.unit) openUnitPage(r.unit);
    renderUnitPage();
  } else {
    if (ui.unit) { closeJournal(); ui.unit = null; }
    renderOverview();
  }
}

window.addEventListener("hashchange", scheduleRender);
document.addEventListener("DOMContentLoaded", () => {
  $("#filter").addEventListener("input", (e) => { ui.filter = e.target.value.trim().toLowerCase(); scheduleRender(); });
  scheduleRender();
  connect();
});
