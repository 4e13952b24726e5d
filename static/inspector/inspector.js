// The inspector's page: photos + browser location + category → POST /api/v1/reports, through an
// IndexedDB outbox so that a report made offline is resent later with the same Idempotency-Key;
// the worklist on a map, and the 核查 panel of a case waiting for the on-site check (online only).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { lang: localStorage.getItem("citygrid_lang") || "zh", fix: null, photos: [], sending: false, pin: null };
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
  renderVerify();
}
$("lang").onclick = () => { state.lang = state.lang === "zh" ? "en" : "zh"; localStorage.setItem("citygrid_lang", state.lang); applyLang(); };

// ---- auth -----------------------------------------------------------------------------------
// Signed in by the session cookie (static/common/session.js): a link with #token=… (as `make run`
// prints for the demo users) is exchanged there for a session and taken out of the address bar.
function authHeaders() { return cgSession.headers(); }
// Forget the worklist saved for offline use (sign-in of another user, sign-out).
function forgetOffline() {
  const sw = navigator.serviceWorker && navigator.serviceWorker.controller;
  if (sw) sw.postMessage("forget");
}
window.citygridForgetOffline = forgetOffline;
$("save-token").onclick = () => { forgetOffline(); cgSession.signIn(); };
$("logout").onclick = () => { forgetOffline(); cgSession.signOut(); };

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
    (p) => {
      state.fix = { lon: p.coords.longitude, lat: p.coords.latitude, accuracy: p.coords.accuracy, at: p.timestamp };
      showFix();
      if (vstate.id && vstate.task) { showDistance(); verifyMap(); }
    },
    (e) => {
      if (state.fix) return;  // a later timeout while a fix is known: keep it
      $("loc").textContent = t("无法定位", "no location") + "; " + t("请在地图上手动选点, 或使用照片 EXIF", "pin the place by hand, or the photos' EXIF is used");
      openPin();
    },
    { enableHighAccuracy: true, maximumAge: 10000, timeout: 30000 });
}

// ---- a pin by hand when there is no GPS fix ----------------------------------------------------
let pinMap = null, pinMarker = null;
function showPin() {
  const p = state.pin, box = $("pin-info");
  if (!p) { box.className = "muted"; box.textContent = t("尚未选点", "no pin yet"); return; }
  box.className = "ok";
  box.textContent = t("手动选点", "Pinned by hand") + `: ${p.lon.toFixed(6)}, ${p.lat.toFixed(6)}` +
    (state.fix ? "" : " · " + t("上报将标记为手动选点", "the report is marked as pinned by hand"));
}
function openPin() {
  $("pin-box").hidden = false;
  if (!pinMap) {
    pinMap = L.map("pinmap", { attributionControl: false }).setView([31.89, 121.17], 14);
    pinMap.on("click", (e) => {
      state.pin = { lon: e.latlng.lng, lat: e.latlng.lat };
      if (pinMarker) pinMarker.setLatLng(e.latlng);
      else pinMarker = L.marker(e.latlng, { title: t("手动选点", "pinned by hand") }).addTo(pinMap);
      showPin();
    });
  }
  setTimeout(() => pinMap.invalidateSize(), 50);
  showPin();
}
$("pin-btn").onclick = () => { if ($("pin-box").hidden) openPin(); else $("pin-box").hidden = true; };

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
function categoryName(code) {
  const c = catalog.find((i) => i.code === code);
  return c ? (state.lang === "zh" ? c.name : (c.name_en || c.name)) : t("类别", "class");
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
function showPreviews(box, files) {  // the chosen photos as small pictures (report and 核查)
  box.innerHTML = "";
  for (const f of files) {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f);
    img.alt = f.name;
    box.appendChild(img);
  }
}
$("photos").onchange = (e) => {
  state.photos = Array.from(e.target.files).slice(0, 9);
  showPreviews($("previews"), state.photos);
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
    li.textContent = `${categoryName(it.fields.category_code)} · ${it.photos.length} ` + t("张照片", "photos") +
      (it.fields.location_source === "manual" ? " · " + t("手动选点", "pinned by hand") : "") +
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
    r = await cgSession.fetch("/api/v1/reports", { method: "POST", body: fd, headers: { "Idempotency-Key": it.key }, noRedirect: true });
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
    (r.flags.length ? ` · ${r.flags.map(flagText).join(", ")}` : "");
}
function showError(msg) { $("status").className = "bad"; $("status").textContent = t("被拒绝", "Refused") + `: ${msg}`; }

$("submit").onclick = async () => {
  if (!state.photos.length) { showError(t("请至少拍一张照片", "take at least one photo")); return; }
  const f = state.fix;
  const pin = !f && state.pin;  // no GPS fix: the place pinned by hand, marked as such
  const item = {
    key: newKey(), created: Date.now(),
    fields: {
      category_code: $("category").value, description: $("description").value.trim(),
      lon: f ? f.lon : (pin ? pin.lon : ""), lat: f ? f.lat : (pin ? pin.lat : ""), accuracy: f ? f.accuracy : "",
      crs: "EPSG:4326", location_source: f ? "gps" : (pin ? "manual" : ""),
      device_time: new Date(f ? f.at : Date.now()).toISOString(),
    },
    photos: state.photos.map((p) => ({ name: p.name, blob: p })),
  };
  await outboxPut(item);  // first into the outbox: nothing is lost if the network drops now
  state.photos = []; $("photos").value = ""; $("previews").innerHTML = ""; $("description").value = "";
  if (pin) { state.pin = null; if (pinMarker) { pinMarker.remove(); pinMarker = null; } showPin(); }
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
    map = CGMap.create("map", { fit: false, headers: authHeaders }).setView([31.89, 121.17], 13);
    layer = L.layerGroup().addTo(map);
  }
  setTimeout(() => map.invalidateSize(), 50);
  let w;
  try {
    const r = await fetch("/api/v1/worklist", { headers: authHeaders() });
    if (!r.ok) { $("zones").innerHTML = `<li class="bad">${t("任务无法加载", "tasks unavailable")} (HTTP ${r.status})</li>`; return; }
    w = await r.json();
    const cached = r.headers.get("X-Citygrid-Cached");  // the service worker's copy: offline
    $("work-cached").hidden = !cached;
    if (cached) {
      const when = Date.parse(cached) ? new Date(cached).toLocaleString() : "";
      $("work-cached").textContent = t(`离线: 显示已保存的任务 (${when})`, `Offline: the tasks saved ${when}`);
    }
  } catch (e) { $("zones").innerHTML = `<li class="warn">${t("离线", "offline")}</li>`; return; }
  layer.clearLayers();
  const bounds = [];
  $("zones").innerHTML = "";
  for (const z of w.zones_due) {
    const g = L.geoJSON(z.geometry, { style: { color: "#d35400", weight: 4 } }).bindPopup(z.name).addTo(layer);
    bounds.push(g.getBounds());
    const li = document.createElement("li");
    li.textContent = `${z.name} · ${z.type} · ` + t(`还需 ${z.remaining} 次`, `${z.remaining} visit(s) to go`) +
      ` · ${Math.round(z.share * 100)}%` + hotBadge(z.hotspot);
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
    li.dataset.case = c.id;
    // Every task has its action: 核查 (the department reports it fixed: check it on site) or
    // 核实 (a new report: confirm it on site for the operator); both open the on-site check with photos.
    const b = document.createElement("button");
    b.type = "button";
    b.className = "verify-btn" + (c.state === "collected" ? " confirm" : "");
    b.dataset.case = c.id;
    b.dataset.task = c.state === "collected" ? "confirm" : "check";
    b.textContent = c.state === "collected" ? t("核实", "Confirm") : t("核查", "Check");
    b.onclick = () => openVerify(c.id);
    li.appendChild(b);
    const task = c.state === "collected" ? t("核实上报", "confirm the report") : t("核查处置", "check the fix");
    li.appendChild(document.createTextNode(`${c.overdue ? "⚠ " + t("超期", "overdue") + " " : ""}${c.case_no} · ` +
      `${c.category_name || t("类别", "class")} · ${task}` + hotBadge(c.hotspot)));
    $("cases").appendChild(li);
  }
  if (bounds.length) map.fitBounds(bounds.reduce((a, b) => a.extend(b)), { maxZoom: 16 });
}

// A significant hot spot (exact test; the worklist's weight), as " · 热点 hot spot 99% (z 12.3)"; else nothing.
function hotBadge(h) {
  return h && h.bin > 0 ? ` · ${t("热点", "hot spot")} ${[0, 90, 95, 99][h.bin]}% (z ${h.z.toFixed(1)})` : "";
}

// ---- 核查: the on-site check of a case the department reports fixed ------------------------------
// POST /api/v1/cases/{id}/verify (multipart, Idempotency-Key). A check needs a connection: it is not
// put in the outbox (the case may have moved on meanwhile); a request whose answer was lost is sent
// again with the same key and gets the first answer.
const vstate = { id: null, task: null, result: null, photos: [], keys: {}, sending: false, error: null, map: null, layer: null,
                 base: null, cell: null, based: null };  // base map, the case's cell, the task they were drawn for
const FAR_M_DEFAULT = 100;
const FLAGS = {
  far_from_case: ["离案件过远", "far from the case"], exif_far_from_case: ["照片 EXIF 位置远离案件", "photo EXIF far from the case"],
  no_position: ["无定位", "no position"], accuracy_unknown: ["精度未知", "accuracy unknown"],
  accuracy_over_gate: ["定位精度不足", "accuracy above the gate"], case_not_located: ["案件无位置", "the case has no location"],
};
Object.assign(FLAGS, {
  manual_pin: ["手动选点", "pinned by hand"], exif_device_mismatch: ["照片位置与定位不符", "photo EXIF far from the fix"],
  location_from_exif: ["位置取自照片", "place from the photo"], device_time_skew: ["设备时间偏差", "device clock off"],
  asset_far: ["部件较远", "asset far"], no_photos: ["无照片", "no photos"],
});
function flagText(f) { return FLAGS[f] ? t(FLAGS[f][0], FLAGS[f][1]) : t("其他标记", "other flag"); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function distanceM(lon1, lat1, lon2, lat2) {
  const r = Math.PI / 180, a = Math.sin((lat2 - lat1) * r / 2) ** 2 +
    Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin((lon2 - lon1) * r / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.sqrt(Math.min(1, a)));
}
function newVerifyKeys() { vstate.keys = { ok: newKey(), fail: newKey() }; }
function apiDetail(j, status) {
  if (j && typeof j.detail === "string") return j.detail;
  if (j && j.detail) return JSON.stringify(j.detail);
  return `HTTP ${status}`;
}
async function authImage(url, alt) {  // photos need the bearer token: fetched, shown as a blob
  const img = el("img");
  img.alt = alt || "";
  try {
    const r = await fetch(url, { headers: authHeaders() });
    if (r.ok) img.src = URL.createObjectURL(await r.blob());
  } catch (e) { /* offline: no picture */ }
  return img;
}

async function openVerify(id) {
  Object.assign(vstate, { id, task: null, result: null, photos: [], error: null });
  newVerifyKeys();
  $("vphotos").value = ""; $("vpreviews").innerHTML = ""; $("vnote").value = "";
  $("worklist").hidden = true;
  $("verify").hidden = false;
  renderVerify();
  $("vphotos-box").innerHTML = "";
  if (window.CasePhotos) CasePhotos.show($("vphotos-box"), id, { headers: authHeaders });
  try {
    const r = await fetch(`/api/v1/cases/${id}/verify`, { headers: authHeaders() });
    const j = await r.json().catch(() => null);
    if (!r.ok) vstate.error = apiDetail(j, r.status);
    else vstate.task = j;
  } catch (e) {
    vstate.error = t("离线: 无法读取案件, 核查需联网", "Offline: cannot load the case; a check needs a connection");
  }
  renderVerify();
}
function closeVerify() {
  $("verify").hidden = true;
  $("worklist").hidden = false;
  vstate.id = null;
  loadWorklist();
}
$("vback").onclick = closeVerify;

let pageConfig = null;
async function verifyBase(task) {  // the base map (when configured) and the case's unit cell
  try {
    if (!pageConfig) pageConfig = await (await fetch("/api/v1/config")).json();
    if (pageConfig.basemap_url && !vstate.base) {
      vstate.base = L.tileLayer(pageConfig.basemap_url, { attribution: pageConfig.basemap_attribution }).addTo(vstate.map);
    }
  } catch (e) { /* no base map */ }
  if (vstate.cell) { vstate.cell.remove(); vstate.cell = null; }
  if (!task.case.cell_code) return;
  try {
    const r = await fetch(`/api/v1/cells/${task.case.cell_code}`, { headers: authHeaders() });
    if (r.ok && vstate.task === task) {
      vstate.cell = L.geoJSON(await r.json(), { style: { color: "#d35400", weight: 2, fillOpacity: 0.05 } })
        .bindTooltip(t("单元网格", "unit cell") + ` ${task.case.cell_code}`).addTo(vstate.map);
    }
  } catch (e) { /* offline */ }
}
function verifyMap() {
  const task = vstate.task;
  if (!task || task.case.lat == null) return;
  if (!vstate.map) {
    vstate.map = CGMap.create("vmap", { fit: false, headers: authHeaders }).setView([task.case.lat, task.case.lon], 17);
    vstate.layer = L.layerGroup().addTo(vstate.map);
  }
  setTimeout(() => vstate.map.invalidateSize(), 50);
  if (vstate.based !== task) { vstate.based = task; verifyBase(task); }
  vstate.layer.clearLayers();
  const c = [task.case.lat, task.case.lon];
  L.circleMarker(c, { radius: 9, color: "#c0392b", weight: 3, fillOpacity: 0.5 })
    .bindTooltip(t("案件位置", "the case"), { permanent: false }).addTo(vstate.layer);
  const pts = [c];
  const f = state.fix;
  if (f) {
    const me = [f.lat, f.lon];
    L.circle(me, { radius: f.accuracy, color: "#0d5c8c", weight: 1, fillOpacity: 0.1 }).addTo(vstate.layer);
    L.circleMarker(me, { radius: 6, color: "#0d5c8c", fillOpacity: 0.9 }).bindTooltip(t("我的位置", "you")).addTo(vstate.layer);
    L.polyline([c, me], { color: "#6b7885", dashArray: "4 4", weight: 2 }).addTo(vstate.layer);
    pts.push(me);
  }
  vstate.map.fitBounds(L.latLngBounds(pts), { maxZoom: 18, padding: [24, 24] });
}

function showDistance() {
  const task = vstate.task, f = state.fix, box = $("vdist");
  if (!task) { box.textContent = ""; return; }
  if (task.case.lat == null) { box.className = "warn"; box.textContent = t("案件无位置", "the case has no location"); return; }
  if (!f) { box.className = "warn"; box.textContent = t("无定位: 提交时将标记「无定位」", "no fix: the check will be flagged as without position"); return; }
  const d = Math.round(distanceM(f.lon, f.lat, task.case.lon, task.case.lat));
  const farM = task.far_m || FAR_M_DEFAULT;
  const far = d > farM + (f.accuracy || 0);
  box.className = far ? "warn" : "ok";
  box.textContent = (state.lang === "zh" ? `距案件 ${d} m (精度 ±${Math.round(f.accuracy)} m)` : `${d} m from the case (±${Math.round(f.accuracy)} m)`) +
    (far ? t(` · 超过 ${farM} m, 将标记「离案件过远」`, ` · beyond ${farM} m: flagged as far from the case`) : " ✓");
}

function showOnline() {
  const online = navigator.onLine;
  $("voffline").hidden = online;
  const done = !!vstate.result;
  const can = vstate.task ? vstate.task.can_verify : { ok: false, fail: false };
  $("vok").disabled = !online || done || vstate.sending || !can.ok;
  $("vfail").disabled = !online || done || vstate.sending || !can.fail;
}

function renderVerify() {
  if (!vstate.id) return;
  const task = vstate.task;
  const dl = $("vcase");
  dl.innerHTML = "";
  $("vcaseno").textContent = task ? task.case.case_no : "";
  if (vstate.error && !task) { dl.appendChild(el("dd", vstate.error, "bad")); showOnline(); return; }
  if (!task) { dl.appendChild(el("dd", t("加载中…", "Loading…"), "muted")); showOnline(); return; }
  const c = task.case, fb = task.feedback;
  const rows = [
    ["category", t("类别", "Category"), c.category_name || "—"],
    ["address", t("地址", "Address"), c.address || "—"],
    ["description", t("描述", "Description"), c.description || "—"],
    ["department", t("处置部门", "Department"), c.department_name || c.department_code || "—"],
    ["feedback", t("部门反馈", "Department's feedback"), fb ? `${fb.note || "—"} · ${new Date(fb.at).toLocaleString()}` : "—"],
    ["cell", t("网格", "Cell"), c.cell_code || "—"],
    ["state", t("状态", "State"), c.state_label + (c.rework_count ? t(` · 已返工 ${c.rework_count} 次`, ` · reworked ${c.rework_count}×`) : "")],
  ];
  const LEVELS = { green: ["正常", "on time"], yellow: ["临期", "due soon"], red: ["超期", "overdue"] };
  if (c.clock) {
    const lv = LEVELS[c.clock.level] || [c.clock.level || "", c.clock.level || ""];
    rows.push(["deadline", t("时限", "Deadline"), `${t(lv[0], lv[1])} · ${new Date(c.step_deadline_at).toLocaleString()}`]);
  }
  for (const [name, k, v] of rows) {
    dl.appendChild(el("dt", k));
    const dd = el("dd", v);
    dd.dataset.field = name;
    dl.appendChild(dd);
  }
  const confirm = task.check === "核实";  // a new report to confirm, not a department's fix to check
  const mark = (sym, zh, en) => `${sym} ` + t(zh, en);
  $("vok").textContent = confirm ? mark("✓", "属实", "Confirmed") : mark("✓", "通过", "Pass");
  $("vfail").textContent = confirm ? mark("✗", "不属实", "Not found") : mark("✗", "不通过 (返工)", "Fail (rework)");
  showDistance();
  verifyMap();
  showOnline();
  renderResult();
  renderHistory();
}

function resultText(r) {
  const confirm = r.check === "核实";
  const zh = confirm ? (r.result === "ok" ? "核实: 属实" : "核实: 不属实") : (r.result === "ok" ? "核查通过" : "核查不通过, 已返工");
  const en = confirm ? (r.result === "ok" ? "Confirmed on site" : "Not found on site")
    : (r.result === "ok" ? "Check passed" : "Check failed: sent back for rework");
  return t(zh, en) + ` · ${r.case_no} → ${r.state_label}` +
    (r.rework ? t(` (第 ${r.rework} 次返工)`, ` (rework ${r.rework})`) : "");
}
async function renderResult() {
  const box = $("vresult");
  box.innerHTML = "";
  const r = vstate.result;
  if (!r) return;
  const card = el("div", null, "card");
  card.appendChild(el("div", resultText(r), r.result === "ok" ? "ok" : "warn"));
  if (r.distance_m != null) {
    card.appendChild(el("div", state.lang === "zh" ? `距案件 ${r.distance_m} m from the case` : `${r.distance_m} m from the case`, "muted"));
  }
  if (r.flags && r.flags.length) card.appendChild(el("div", t("标记", "Flags") + ": " + r.flags.map(flagText).join("; "), "warn"));
  if (r.note) card.appendChild(el("div", t("备注/原因", "Note") + ": " + r.note, "muted"));
  card.appendChild(el("div", t("时间", "At") + ": " + new Date(r.verified_at).toLocaleString(), "muted"));
  const pics = el("div", null, "previews");
  card.appendChild(pics);
  box.appendChild(card);
  for (const p of r.photos) pics.appendChild(await authImage(p.thumb_url, `photo ${p.seq}`));
}
function renderHistory() {
  const box = $("vhistory");
  box.innerHTML = "";
  const list = (vstate.task && vstate.task.verifications) || [];
  if (!list.length) return;
  box.appendChild(el("h2", t("以往核查", "Earlier checks")));
  for (const v of list) {
    const ok = v.result === "ok", confirm = v.check === "核实";
    const word = confirm ? (ok ? t("核实: 属实", "confirmed") : t("核实: 不属实", "not found")) : (ok ? t("通过", "passed") : t("不通过", "failed"));
    box.appendChild(el("div", `${new Date(v.verified_at).toLocaleString()} · ${word}` +
      (v.note ? ` · ${v.note}` : ""), "card muted"));
  }
}

$("vphotos").onchange = (e) => {
  vstate.photos = Array.from(e.target.files).slice(0, 9);
  newVerifyKeys();  // a different request: a new key
  showPreviews($("vpreviews"), vstate.photos);
};
$("vnote").oninput = newVerifyKeys;

function vshow(cls, msg) { $("vstatus").className = cls; $("vstatus").textContent = msg; }

async function sendVerify(result) {
  if (vstate.sending || !vstate.id) return;
  if (!navigator.onLine) { vshow("warn", t("离线: 核查需联网, 联网后再提交", "Offline: a check needs a connection; submit when online")); return; }
  if (!vstate.photos.length) { vshow("bad", t("请至少拍一张现场照片", "take at least one photo of the site")); return; }
  const note = $("vnote").value.trim();
  if (result === "fail" && !note) { vshow("bad", t("不通过 (返工) 必须填写原因", "a failed check needs a reason")); $("vnote").focus(); return; }
  const fd = new FormData();
  fd.append("result", result);
  if (note) fd.append("note", note);
  const f = state.fix;
  if (f) { fd.append("lon", f.lon); fd.append("lat", f.lat); fd.append("accuracy", f.accuracy); fd.append("crs", "EPSG:4326"); }
  vstate.photos.forEach((p, i) => fd.append("photos", p, p.name || `photo${i}.jpg`));
  vstate.sending = true;
  showOnline();
  vshow("muted", t("提交中…", "Sending…"));
  try {
    let r;
    try {
      r = await cgSession.fetch(`/api/v1/cases/${vstate.id}/verify`, { method: "POST", body: fd,
        headers: { "Idempotency-Key": vstate.keys[result] }, noRedirect: true });
    } catch (e) {
      vshow("warn", t("网络不可用, 未确认提交: 联网后再点一次 (同一幂等键, 不会重复)",
                      "No network, not confirmed: press again when online (same Idempotency-Key: never twice)"));
      return;
    }
    const j = await r.json().catch(() => null);
    if (r.status === 200 || r.status === 201) {
      vstate.result = j;
      if (vstate.task) Object.assign(vstate.task.case, { state: j.state, state_label: j.state_label });
      vshow(j.result === "ok" ? "ok" : "warn", t("已提交", "Submitted") + ` · ${j.case_no}` +
        (r.status === 200 ? t(" (重发: 首次结果)", " (resent: the first result)") : ""));
      renderVerify();
      if (window.CasePhotos) CasePhotos.show($("vphotos-box"), vstate.id, { headers: authHeaders });
    } else {
      vshow("bad", t("被拒绝", "Refused") + ` (HTTP ${r.status}): ${apiDetail(j, r.status)}`);
    }
  } finally {
    vstate.sending = false;
    showOnline();
  }
}
$("vok").onclick = () => sendVerify("ok");
$("vfail").onclick = () => sendVerify("fail");
window.addEventListener("online", showOnline);
window.addEventListener("offline", showOnline);

// ---- start ----------------------------------------------------------------------------------
async function init() {
  const me = await cgSession.ready;  // offline: the outbox and the cached catalog still work
  if (!me && !cgSession.offline) { $("login").hidden = false; return; }
  $("login").hidden = true;
  $("logout").hidden = !me;
  loadCatalog();
  renderOutbox();
  if (navigator.onLine) flush();
}
// The service worker keeps the page, its scripts and the day's worklist available offline.
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/inspector-sw.js", { scope: "/inspector" }).catch(() => { /* not offered: online only */ });
}
applyLang();
watchLocation();
init();
