// The inspector's page: photos + browser location + category → POST /api/v1/reports, through an
// IndexedDB outbox so that a report made offline is resent later with the same Idempotency-Key.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { lang: localStorage.getItem("citygrid_lang") || "zh", fix: null, photos: [], sending: false };
const GATE_M = 30;

// ---- language -------------------------------------------------------------------------------
function t(zh, en) { return state.lang === "zh" ? `${zh} ${en}` : `${en}`; }
function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-zh]").forEach((el) => {
    el.textContent = state.lang === "zh" ? el.dataset.zh : el.dataset.en;
  });
  $("lang").textContent = state.lang === "zh" ? "EN" : "中文";
  fillCategories();
  showFix();
}
$("lang").onclick = () => { state.lang = state.lang === "zh" ? "en" : "zh"; localStorage.setItem("citygrid_lang", state.lang); applyLang(); };

// ---- auth -----------------------------------------------------------------------------------
function token() { return localStorage.getItem("citygrid_token") || ""; }
function authHeaders() { return { Authorization: "Bearer " + token() }; }
$("save-token").onclick = () => {
  localStorage.setItem("citygrid_token", $("token").value.trim());
  $("login").hidden = !!token();
  init();
};

// ---- tabs -----------------------------------------------------------------------------------
document.querySelectorAll("#tabs button").forEach((b) => {
  b.onclick = () => {
    document.querySelectorAll("#tabs button").forEach((x) => x.classList.toggle("on", x === b));
    for (const name of ["report", "work", "outbox"]) $("tab-" + name).hidden = name !== b.dataset.tab;
    $("submit").parentElement.hidden = b.dataset.tab !== "report";
    if (b.dataset.tab === "work") loadWorklist();
    if (b.dataset.tab === "outbox") renderOutbox();
  };
});

// ---- location -------------------------------------------------------------------------------
function showFix() {
  const f = state.fix;
  if (!f) return;
  $("loc").textContent = `${f.lon.toFixed(6)}, ${f.lat.toFixed(6)}`;
  const acc = Math.round(f.accuracy);
  const ok = f.accuracy <= GATE_M;
  $("acc").className = ok ? "ok" : "warn";
  $("acc").textContent = (state.lang === "zh" ? `精度 ±${acc} m` : `accuracy ±${acc} m`) +
    (ok ? " ✓" : (state.lang === "zh" ? ` (超过 ${GATE_M} m, 将标记)` : ` (above ${GATE_M} m: will be flagged)`));
}
function watchLocation() {
  if (!navigator.geolocation) { $("loc").textContent = t("浏览器不支持定位", "no geolocation"); return; }
  navigator.geolocation.watchPosition(
    (p) => { state.fix = { lon: p.coords.longitude, lat: p.coords.latitude, accuracy: p.coords.accuracy, at: p.timestamp }; showFix(); },
    (e) => { $("loc").textContent = t("无法定位", "no location") + ` (${e.message}); ` + t("将使用照片 EXIF", "photo EXIF will be used"); },
    { enableHighAccuracy: true, maximumAge: 10000, timeout: 30000 });
}

// ---- categories -----------------------------------------------------------------------------
let catalog = [];
async function loadCatalog() {
  try {
    const r = await fetch("/api/v1/catalog", { headers: authHeaders() });
    if (r.ok) {
      catalog = (await r.json()).items.filter((i) => i.level === 3 && (i.kind === "event" || i.kind === "component"));
      localStorage.setItem("citygrid_catalog", JSON.stringify(catalog));
    }
  } catch (e) { /* offline: the cached catalog */ }
  if (!catalog.length) catalog = JSON.parse(localStorage.getItem("citygrid_catalog") || "[]");
  fillCategories();
}
function fillCategories() {
  const sel = $("category");
  const keep = sel.value;
  sel.innerHTML = "";
  for (const i of catalog) {
    const o = document.createElement("option");
    o.value = i.code;
    o.textContent = state.lang === "zh" ? `${i.name} ${i.name_en || ""}` : `${i.name_en || i.name}`;
    sel.appendChild(o);
  }
  if (keep) sel.value = keep;
}

// ---- photos ---------------------------------------------------------------------------------
$("photos").onchange = (e) => {
  state.photos = Array.from(e.target.files).slice(0, 9);
  $("previews").innerHTML = "";
  for (const f of state.photos) {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f);
    img.alt = f.name;
    $("previews").appendChild(img);
  }
};

// ---- outbox (IndexedDB) ---------------------------------------------------------------------
let dbp = null;
function db() {
  if (!dbp) dbp = new Promise((resolve, reject) => {
    const req = indexedDB.open("citygrid_inspector", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("outbox", { keyPath: "key" });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return dbp;
}
async function store(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction("outbox", mode);
    const out = fn(tx.objectStore("outbox"));
    tx.oncomplete = () => resolve(out && out.result !== undefined ? out.result : undefined);
    tx.onerror = () => reject(tx.error);
  });
}
const outboxAll = () => store("readonly", (s) => s.getAll());
const outboxPut = (item) => store("readwrite", (s) => s.put(item));
const outboxDelete = (key) => store("readwrite", (s) => s.delete(key));

async function renderOutbox() {
  const items = await outboxAll();
  $("outbox-count").textContent = items.length;
  $("outbox").innerHTML = "";
  for (const it of items) {
    const li = document.createElement("li");
    li.textContent = `${it.fields.category_code} · ${it.photos.length} ` + t("张照片", "photos") +
      ` · ${new Date(it.created).toLocaleString()}` + (it.error ? ` · ${it.error}` : "");
    li.dataset.key = it.key;
    $("outbox").appendChild(li);
  }
}

function newKey() {
  return (crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random().toString(16).slice(2));
}

async function sendOne(it) {
  const fd = new FormData();
  for (const [k, v] of Object.entries(it.fields)) if (v !== null && v !== undefined && v !== "") fd.append(k, v);
  it.photos.forEach((p, i) => fd.append("photos", p.blob, p.name || `photo${i}.jpg`));
  let r;
  try {
    r = await fetch("/api/v1/reports", { method: "POST", body: fd, headers: { ...authHeaders(), "Idempotency-Key": it.key } });
  } catch (e) {
    return { kept: true };  // offline or the server unreachable: stays in the outbox
  }
  if (r.status === 200 || r.status === 201) { await outboxDelete(it.key); return { done: await r.json() }; }
  if (r.status >= 500 || r.status === 401 || r.status === 408 || r.status === 429) return { kept: true, error: `HTTP ${r.status}` };
  // 4xx: the report itself is wrong; it would fail the same way again: removed, the reason shown.
  let detail = `HTTP ${r.status}`;
  try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
  await outboxDelete(it.key);
  return { refused: detail };
}

async function flush() {
  if (state.sending) return;
  state.sending = true;
  try {
    for (const it of await outboxAll()) {
      const res = await sendOne(it);
      if (res.done) showResult(res.done);
      else if (res.refused) showError(res.refused);
      else break;  // still offline: try later
    }
  } finally {
    state.sending = false;
    renderOutbox();
  }
}

function showResult(r) {
  const merged = r.case.merged_into ? t(` 已并入 ${r.case.merged_into_no}`, ` merged into ${r.case.merged_into_no}`) : "";
  $("status").className = "ok";
  $("status").textContent = t("已上报", "Reported") + `: ${r.case.case_no} · ` + t("网格", "cell") + ` ${r.cell_code}` + merged +
    (r.flags.length ? ` · ${r.flags.join(", ")}` : "");
}
function showError(msg) { $("status").className = "bad"; $("status").textContent = t("被拒绝", "Refused") + `: ${msg}`; }

$("submit").onclick = async () => {
  if (!state.photos.length) { showError(t("请至少拍一张照片", "take at least one photo")); return; }
  const f = state.fix;
  const item = {
    key: newKey(), created: Date.now(),
    fields: {
      category_code: $("category").value, description: $("description").value.trim(),
      lon: f ? f.lon : "", lat: f ? f.lat : "", accuracy: f ? f.accuracy : "", crs: "EPSG:4326",
      device_time: new Date(f ? f.at : Date.now()).toISOString(),
    },
    photos: state.photos.map((p) => ({ name: p.name, blob: p })),
  };
  await outboxPut(item);  // first into the outbox: nothing is lost if the network drops now
  state.photos = []; $("photos").value = ""; $("previews").innerHTML = ""; $("description").value = "";
  await renderOutbox();
  if (!navigator.onLine) {
    $("status").className = "warn";
    $("status").textContent = t("离线: 已存入待发箱, 联网后自动发送", "Offline: saved in the outbox, sent when online");
    return;
  }
  $("status").className = "muted";
  $("status").textContent = t("发送中…", "Sending…");
  await flush();
  const left = (await outboxAll()).find((x) => x.key === item.key);
  if (left) {
    $("status").className = "warn";
    $("status").textContent = t("网络不可用: 已存入待发箱", "No network: saved in the outbox");
  }
};
$("resend").onclick = flush;
window.addEventListener("online", flush);
setInterval(() => { if (navigator.onLine) flush(); }, 15000);

// ---- worklist on a map ----------------------------------------------------------------------
let map = null, layer = null;
async function loadWorklist() {
  if (!map) {
    map = L.map("map", { attributionControl: false }).setView([31.89, 121.17], 13);
    layer = L.layerGroup().addTo(map);
  }
  setTimeout(() => map.invalidateSize(), 50);
  let w;
  try {
    const r = await fetch("/api/v1/worklist", { headers: authHeaders() });
    if (!r.ok) { $("zones").innerHTML = `<li class="bad">HTTP ${r.status}</li>`; return; }
    w = await r.json();
  } catch (e) { $("zones").innerHTML = `<li class="warn">${t("离线", "offline")}</li>`; return; }
  layer.clearLayers();
  const bounds = [];
  $("zones").innerHTML = "";
  for (const z of w.zones_due) {
    const g = L.geoJSON(z.geometry, { style: { color: "#d35400", weight: 4 } }).bindPopup(z.name).addTo(layer);
    bounds.push(g.getBounds());
    const li = document.createElement("li");
    li.textContent = `${z.name} · ${z.type} · ` + t(`还需 ${z.remaining} 次`, `${z.remaining} visit(s) to go`) +
      ` · ${Math.round(z.share * 100)}%`;
    $("zones").appendChild(li);
  }
  $("cases").innerHTML = "";
  for (const c of w.cases) {
    if (c.lat != null) {
      const m = L.circleMarker([c.lat, c.lon], { radius: 7, color: c.overdue ? "#c0392b" : "#0d5c8c" })
        .bindPopup(`${c.case_no}<br>${c.category_name || c.category_code}`).addTo(layer);
      bounds.push(L.latLngBounds([m.getLatLng(), m.getLatLng()]));
    }
    const li = document.createElement("li");
    if (c.overdue) li.className = "overdue";
    li.textContent = `${c.overdue ? "⚠ " : ""}${c.case_no} · ${c.category_name || c.category_code} · ${c.task}`;
    $("cases").appendChild(li);
  }
  if (bounds.length) map.fitBounds(bounds.reduce((a, b) => a.extend(b)), { maxZoom: 16 });
}

// ---- start ----------------------------------------------------------------------------------
function init() {
  if (!token()) { $("login").hidden = false; return; }
  $("login").hidden = true;
  loadCatalog();
  renderOutbox();
  if (navigator.onLine) flush();
}
applyLang();
watchLocation();
init();
