// The operator workbench (受理员/派遣员; departments and supervisors too): record a hotline call, the case
// list with its clocks, one case with its timeline, the dispatch proposal and the actions the signed-in
// user may take now (GET /api/v1/cases/{id} → actions), and the needs-location queue placed on the map.
// Every refusal of the API is shown with its message; the API is the gate, the page only hides what a
// role can never do. Words: Chinese by default, English behind the 中文/EN switch; every code (state,
// event, action, role, source, class, department, area) through the catalog of static/common/i18n.js.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const T = (zh, en) => I18N.t(zh, en);
  const W = (kind, code, fallback) => I18N.word(kind, code, fallback);
  const qs = new URLSearchParams(location.search);
  // Signed in by the session cookie (static/common/session.js; a #token=… link is exchanged for it there).
  const city = qs.get("city") || "";

  // Mirrors of the API's role gates, only to hide what a role can never use (api/routers/cases.py).
  const INTAKE = ["operator", "inspector", "supervisor", "admin"];
  const DISPATCHERS = ["operator", "supervisor", "admin"];
  const CONTACT_ROLES = ["operator", "supervisor", "admin", "department"];

  const URGENCY_ORDER = ["normal", "urgent", "emergency"];
  // The first word of a "中文 English" text the API sends (a proposal's rule, a candidate's reason).
  const half = (s) => { const [zh, ...en] = String(s || "").split(" "); return I18N.lang === "en" && en.length ? en.join(" ") : zh; };

  const st = {
    me: null, catalog: null, departments: [], tab: "record", selected: null, detail: null, proposal: null,
    recordPoint: null, place: { id: null, latlng: null, cell: null },
  };

  // ---------------------------------------------------------------- helpers
  function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function fmt(t) { return I18N.time(t); }
  function count(n) { return Number(n).toLocaleString("en-US"); }  // 10,000 (grouped as the staff read numbers)
  function has(list) { return st.me && list.includes(st.me.role); }
  function showError(msg) { const e = $("error"); e.textContent = msg || ""; e.hidden = !msg; }
  function say(el, cls, html) { $(el).innerHTML = `<div class="${cls}">${html}</div>`; }

  async function api(path, opts) {
    opts = opts || {};
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.params || {})) if (v !== "" && v != null) p.set(k, v);
    if (city) p.set("city", city);
    const headers = cgSession.headers();
    let body;
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(opts.json); }
    let r;
    try {
      r = await cgSession.fetch(path + (p.toString() ? "?" + p : ""), { method: opts.method || "GET", headers, body });
    } catch (e) {
      throw new Error(T("网络连接失败，请稍后再试", "Network error: try again later"));
    }
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401) { $("login").hidden = false; }
    if (!r.ok) {
      // The API's error: its code, and what is wrong in the page's language (message / message_en).
      const err = new Error("");
      err.status = r.status;
      err.body = data && typeof data === "object" ? data : { detail: r.statusText };
      err.code = err.body.code;
      err.message = I18N.error(err) + (err.code ? "" : ` (${r.status})`);
      throw err;
    }
    return data;
  }

  function clockBadge(c) {
    if (!c) return `<span class="clock none">${T("无时限", "no clock")}</span>`;
    const s = Math.abs(c.left_seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    const span = T((h ? `${h}小时` : "") + `${m}分`, (h ? `${h}h ` : "") + `${m}m`);
    const text = c.overdue ? T(`超时 ${span}`, `${span} overdue`) : T(`剩余 ${span}`, `${span} left`);
    const unit = c.overdue ? "" : `（${W("units", c.unit)}）`;
    return `<span class="clock ${esc(c.level)}" data-level="${esc(c.level)}" title="${esc(W("clock", c.level))} · ` +
      `${T("时限", "due")} ${esc(fmt(c.deadline))}">${text}${unit}</span>`;
  }

  // ---------------------------------------------------------------- map
  const map = CGMap.create("map", { zoomSnap: 0.5, fit: false, headers: () => cgSession.headers() }).setView([31.9, 121.2], 11);
  map.attributionControl.addAttribution("citygrid · 单元网格 unit grid");
  const areas = L.geoJSON(null, { style: (f) => ({ color: f.properties.level === "district" ? "#333" : "#7f8c8d", weight: f.properties.level === "district" ? 2 : 1, fill: false }),
    interactive: false }).addTo(map);
  const grid = L.geoJSON(null, { style: { color: "#8aa", weight: 0.5, fill: false }, interactive: false }).addTo(map);
  const caseLayer = L.layerGroup().addTo(map);
  const cellLayer = L.geoJSON(null, { style: { color: "#d35400", weight: 2, fillOpacity: 0.25 }, interactive: false }).addTo(map);
  window.citygridMap = map;  // for the page tests and the browser console
  let pin = null;

  function setPin(latlng, color) {
    if (pin) map.removeLayer(pin);
    pin = latlng ? L.circleMarker(latlng, { radius: 8, color: color || "#d35400", weight: 3, fillOpacity: 0.6, interactive: false }).addTo(map) : null;
  }
  async function showCell(code) {
    cellLayer.clearLayers();
    if (!code) return;
    const f = await api("/api/v1/cells/" + encodeURIComponent(code));
    cellLayer.addData(f);
  }
  async function snapPreview(latlng) {
    const r = await api("/api/v1/snap", { method: "POST", json: { crs: "EPSG:4326", points: [[latlng.lng, latlng.lat]] } });
    return r.cells[0];
  }
  async function loadGrid() {
    grid.clearLayers();
    if (map.getZoom() < 15) { $("map-status").textContent = T("放大到 15 级显示单元网格", "Zoom to 15 to see the grid cells"); return; }
    const b = map.getBounds();
    const fc = await api("/api/v1/cells", { params: { bbox: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(6)).join(","), limit: 2000 } });
    grid.addData(fc);
    $("map-status").textContent = T("视野内单元网格：", "Cells in view: ") + fc.numberReturned + (fc.numberMatched > fc.numberReturned ? ` / ${fc.numberMatched}` : "");
  }
  map.on("moveend", () => { if (st.me) loadGrid().catch((e) => showError(T("网格：", "Grid: ") + e.message)); });

  async function loadMapBase() {
    const cfg = await api("/api/v1/config");
    if (cfg.basemap_url) L.tileLayer(cfg.basemap_url, { attribution: cfg.basemap_attribution }).addTo(map);
    const c = cfg.cities.find((x) => x.slug === (city || cfg.default_city)) || cfg.cities[0];
    if (c) map.fitBounds([[c.bbox[1], c.bbox[0]], [c.bbox[3], c.bbox[2]]], { animate: false });
    // District and street outlines for orientation (the OGC API collection of admin areas).
    try {
      const fc = await api("/api/v1/ogc/collections/admin_areas/items", { params: { limit: 100 } });
      areas.addData({ type: "FeatureCollection", features: fc.features.filter((f) => f.properties.level !== "community") });
    } catch (e) { $("map-status").textContent = T("行政区划不可用：", "Admin areas unavailable: ") + e.message; }
  }

  map.on("click", (e) => {
    if (st.tab === "record" && has(INTAKE)) recordPick(e.latlng).catch((err) => say("record-result", "err", esc(err.message)));
    else if (st.tab === "queue" && st.place.id) placePick(e.latlng).catch((err) => say("place-result", "err", esc(err.message)));
  });

  function drawCases(cases) {
    caseLayer.clearLayers();
    for (const c of cases) {
      if (c.lat == null) continue;
      const colour = c.clock ? { green: "#2e8b57", yellow: "#d4a106", red: "#c0392b" }[c.clock.level] : "#555";
      L.circleMarker([c.lat, c.lon], { radius: c.id === st.selected ? 9 : 6, color: colour, weight: 2, fillOpacity: 0.5 })
        .bindTooltip(`${esc(c.case_no)} · ${esc(className(c))} · ${esc(W("states", c.state))}`)
        .on("click", (ev) => { L.DomEvent.stopPropagation(ev); openCase(c.id); })
        .addTo(caseLayer);
    }
  }

  // ---------------------------------------------------------------- sign-in
  $("login").addEventListener("submit", (ev) => { ev.preventDefault(); cgSession.signIn(); });
  $("logout").onclick = () => cgSession.signOut();

  // ---------------------------------------------------------------- tabs
  function showTab(name) {
    st.tab = name;
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
    for (const n of ["record", "list", "queue"]) $("tab-" + n).hidden = n !== name;
    setPin(null); cellLayer.clearLayers();
    if (name === "record" && st.recordPoint) setPin(st.recordPoint.latlng);
    if (name === "list") loadList().catch((e) => showError(e.message));
    if (name === "queue") loadQueue().catch((e) => showError(e.message));
  }
  document.querySelectorAll("#tabs button").forEach((b) => { b.onclick = () => showTab(b.dataset.tab); });

  // ---------------------------------------------------------------- (a) record a call
  function leaves(items) {
    const parents = new Set(items.map((i) => i.parent).filter(Boolean));
    return items.filter((i) => !parents.has(i.code));
  }
  // The street or town a cell lies in (the first 9 digits of its code), by name.
  function street(cellCode) { return W("areas", String(cellCode || "").slice(0, 9), T("本市", "the city")); }
  // A class by its name (never its code): the catalog's words, else the name the case carries.
  function className(c) { return W("classes", c.category_code, c.category_name || T("未分类", "unclassified")); }
  function classPath(i, byCode) {
    const names = [];
    for (let x = i; x; x = byCode[x.parent]) names.unshift(I18N.lang === "en" ? (x.name_en || x.name) : x.name);
    return names.join(" / ");
  }
  function fillForm() {
    const cat = st.catalog;
    const keep = { channel: $("channel").value, rt: $("request-type").value, category: $("category").value,
                   state: $("f-state").value };
    $("channel").innerHTML = cat.channels.map((c) => `<option value="${esc(c)}">${esc(W("channels", c, c))}</option>`).join("");
    $("request-type").innerHTML = `<option value="">${T("— 未指定", "— unspecified")}</option>` +
      cat.request_types.map((c) => `<option value="${esc(c)}">${esc(W("request_types", c, c))}</option>`).join("");
    const byCode = Object.fromEntries(cat.items.map((i) => [i.code, i]));
    $("category").innerHTML = `<option value="">${T("— 请选择类别 —", "— choose a category —")}</option>` +
      leaves(cat.items).map((i) => `<option value="${esc(i.code)}">${esc(classPath(i, byCode))}</option>`).join("");
    $("f-state").innerHTML = `<option value="">${T("全部", "All")}</option><option value="open">${T("未办结", "Open")}</option>` +
      Object.keys(cat.states).map((k) => `<option value="${esc(k)}">${esc(W("states", k))}</option>`).join("");
    if (keep.channel) $("channel").value = keep.channel;
    if (keep.rt) $("request-type").value = keep.rt;
    if (keep.category) $("category").value = keep.category;
    $("f-state").value = keep.state || "open";  // the work still to do first; 全部 All is one click away
    syncUrgency();
  }
  // A class urgent by nature (a missing manhole cover is 特急) sets the least urgency, shown on the
  // form: what is sent is what the operator sees chosen, never raised silently.
  function syncUrgency() {
    const item = st.catalog && st.catalog.items.find((i) => i.code === $("category").value);
    const least = item && item.urgency ? URGENCY_ORDER.indexOf(item.urgency) : 0;
    for (const o of $("urgency").options) o.disabled = URGENCY_ORDER.indexOf(o.value) < least;
    if (URGENCY_ORDER.indexOf($("urgency").value) < least) $("urgency").value = item.urgency;
    $("urgency-note").hidden = least === 0;
    $("urgency-note").textContent = least ? T(`该类别至少为“${W("urgencies", item.urgency)}”`, `This category is at least "${W("urgencies", item.urgency)}"`) : "";
  }
  $("category").addEventListener("change", syncUrgency);
  function locText() {
    const p = st.recordPoint;
    if (!p) return T("未定位 — 可点击地图选点", "none — click the map to pick a point");
    const xy = `${p.latlng.lng.toFixed(6)}, ${p.latlng.lat.toFixed(6)}`;
    if (!p.cell) return xy + " …";
    return `${xy} · ` + (p.cell.code ? `${T("网格", "cell")} ${p.cell.code}（${street(p.cell.code)}）` : T("不在本市范围内", "outside the city"));
  }

  async function recordPick(latlng) {
    st.recordPoint = { latlng, cell: null };
    setPin(latlng);
    $("record-loc").textContent = locText();
    $("record-loc").dataset.empty = "";
    $("record-loc-clear").hidden = false;
    const cell = await snapPreview(latlng);
    if (!st.recordPoint || st.recordPoint.latlng !== latlng) return;
    st.recordPoint.cell = cell;
    $("record-loc").textContent = locText();
    $("record-loc").dataset.outside = cell.code ? "" : "1";
    if (cell.code) await showCell(cell.code);
  }
  $("record-loc-clear").onclick = () => {
    st.recordPoint = null; setPin(null); cellLayer.clearLayers();
    $("record-loc").textContent = locText();
    $("record-loc").dataset.empty = "1";
    $("record-loc").dataset.outside = "";
    $("record-loc-clear").hidden = true;
  };

  // The call form's rule (the API's too: 422 call_description_missing / call_place_missing): a
  // category, a description, and an address or a point. Said on the page before anything is sent.
  function formProblem() {
    const missing = [];
    if (!$("category").value) missing.push(["category", T("请选择类别", "Choose a category")]);
    if (!$("description").value.trim()) missing.push(["description", I18N.word("errors", "call_description_missing", T("请填写问题描述", "Describe the problem"))]);
    if (!$("address").value.trim() && !st.recordPoint) missing.push(["address", I18N.word("errors", "call_place_missing", T("请填写地址或在地图上选点", "Give an address or pick a point on the map"))]);
    for (const id of ["category", "description", "address"]) $(id).removeAttribute("aria-invalid");
    for (const [id] of missing) $(id).setAttribute("aria-invalid", "true");
    return missing;
  }
  $("record-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const missing = formProblem();
    if (missing.length) {
      say("record-result", "err", `<b>${T("未登记", "Not recorded")}</b>：` + missing.map(([, m]) => esc(m)).join("；"));
      $(missing[0][0]).focus();
      return;
    }
    const body = {
      source: "hotline", channel: $("channel").value, category_code: $("category").value,
      request_type: $("request-type").value || null, urgency: $("urgency").value,
      description: $("description").value.trim() || null, address: $("address").value.trim() || null,
    };
    if (st.recordPoint) body.location = { x: st.recordPoint.latlng.lng, y: st.recordPoint.latlng.lat, crs: "EPSG:4326" };
    if (has(CONTACT_ROLES) && ($("caller-name").value.trim() || $("caller-phone").value.trim())) {
      body.contact = { name: $("caller-name").value.trim() || null, phone: $("caller-phone").value.trim() || null };
    }
    $("record-submit").disabled = true;
    try {
      const d = await api("/api/v1/cases", { method: "POST", json: body });
      let extra = "";
      if (d.merged_into) extra += `<div>${T("已并单：与近期邻近的同类案卷合并", "Merged into an open case of the same class nearby")}</div>`;
      if (d.needs_location) extra += `<div>${T("未定位：已进入待定位队列", "No location: the case waits in the needs-location queue")}</div>`;
      else extra += `<div>${T("网格", "Cell")} <b>${esc(d.cell_code)}</b>（${esc(street(d.cell_code))}）</div>`;
      say("record-result", "ok", `${T("已受理。案卷编号", "Recorded. Case number")}：<span class="code" id="new-case-no">${esc(d.case_no)}</span><br>
        ${T("查询码", "Query code")}：<span class="code" id="new-query-code">${esc(d.query_code)}</span>
        <div><b>${T("请告知来电人编号和查询码（只显示这一次）", "Tell the caller both: the query code is shown only now.")}</b></div>
        ${extra}<button type="button" class="link" id="open-new">${T("查看案卷", "Open the case")}</button>`);
      $("open-new").onclick = () => openCase(d.id);
      for (const id of ["description", "address", "caller-name", "caller-phone"]) $(id).value = "";
      $("record-loc-clear").onclick();
      openCase(d.id);
    } catch (e) {
      say("record-result", "err", `<b>${T("未登记", "Not recorded")}</b>：` + esc(e.message));
    } finally {
      $("record-submit").disabled = false;
    }
  });

  // ---------------------------------------------------------------- (b) the case list
  async function loadList() {
    const clockSel = $("f-clock").value;
    let stateSel = $("f-state").value;
    if (stateSel === "open") stateSel = "collected,accepted,dispatched,processing,feedback,verifying,deferred,suspended";
    let cases, total, exact = true, atLeast = 0;
    if (["alerts", "red", "yellow"].includes(clockSel)) {
      const d = await api("/api/v1/cases/alerts", { params: { level: clockSel === "alerts" ? "all" : clockSel } });
      cases = d.cases; total = d.count;
      if ($("f-state").value) cases = cases.filter((c) => stateSel.split(",").includes(c.state));
    } else {
      const d = await api("/api/v1/cases", { params: { state: stateSel, overdue: clockSel === "overdue" ? "true" : "", q: $("f-q").value.trim(), limit: 200 } });
      cases = d.cases; total = d.total;
      // past the server's counting cap (10,000) the total is an estimate: "10,000+", the estimate in the tip
      if (d.total_exact === false) { exact = false; atLeast = d.total_at_least; }
    }
    const status = $("list-status");
    status.textContent = (exact ? T(`共 ${total} 件`, `${total} cases`) : T(`共 ${count(atLeast)}+ 件`, `${count(atLeast)}+ cases`)) +
      (cases.length < total ? T(`（显示 ${cases.length} 件）`, ` (showing ${cases.length})`) : "");
    status.dataset.totalExact = String(exact);
    status.title = exact ? "" : T(`超过 ${count(atLeast)} 件后不再逐件计数，约 ${count(total)} 件`,
      `counted exactly up to ${count(atLeast)}; about ${count(total)}`);
    $("case-list").innerHTML = cases.map((c) => `<li data-id="${c.id}" class="${c.id === st.selected ? "sel" : ""}">
      <span class="no">${esc(c.case_no)}</span> <span class="state">${esc(W("states", c.state))}</span> ${clockBadge(c.clock)}<br>
      ${esc(className(c))}${c.department_code ? " → " + esc(W("departments", c.department_code, c.department_name)) : ""}
      <span class="muted">${esc((c.address || c.description || "").slice(0, 40))}</span></li>`).join("") ||
      `<li class="muted">${T("无案卷", "No cases")}</li>`;
    $("case-list").querySelectorAll("li[data-id]").forEach((li) => { li.onclick = () => openCase(+li.dataset.id); });
    drawCases(cases);
  }
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); showError(""); loadList().catch((e) => showError(T("案卷列表：", "Case list: ") + e.message)); });

  // ---------------------------------------------------------------- (c) one case
  async function openCase(id) {
    st.selected = id;
    document.querySelectorAll("#case-list li, #queue-list li").forEach((li) => li.classList.toggle("sel", +li.dataset.id === id));
    let d;
    try { d = await api("/api/v1/cases/" + id); } catch (e) { showError(T("案卷：", "Case: ") + e.message); return; }
    st.detail = d;
    st.proposal = null;
    const dispatchable = d.actions.some((a) => a.action === "dispatch");
    if (dispatchable) {
      try { st.proposal = d.proposal || await api(`/api/v1/cases/${id}/proposal`); } catch (e) { showError(T("派遣建议：", "Proposal: ") + e.message); }
    }
    renderDetail();
    if (d.lat != null) { map.setView([d.lat, d.lon], Math.max(map.getZoom(), 15)); }
  }

  function renderDetail() {
    const d = st.detail;
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    $("detail-body").dataset.caseId = d.id;
    $("detail-body").dataset.state = d.state;
    $("d-title").innerHTML = `<span class="no">${esc(d.case_no)}</span> <span class="state" id="d-state">${esc(W("states", d.state))}</span>`;
    $("d-clock").innerHTML = T("当前时限 ", "Step clock ") + clockBadge(d.clock) +
      (d.close_deadline_at ? ` · ${T("办结时限", "close by")} ${esc(fmt(d.close_deadline_at))}` : "");
    const facts = [
      [T("类别", "Class"), className(d)], [T("来源", "Source"), `${W("sources", d.source)}${d.channel ? " · " + W("channels", d.channel, d.channel) : ""}`],
      [T("诉求类型", "Type"), d.request_type ? W("request_types", d.request_type, d.request_type) : "—"], [T("紧急程度", "Urgency"), W("urgencies", d.urgency)],
      [T("受理时间", "Received"), fmt(d.received_at)], [T("地址", "Address"), d.address || "—"], [T("问题描述", "Description"), d.description || "—"],
      [T("网格", "Cell"), d.cell_code ? `${d.cell_code}（${street(d.cell_code)}）` : T("未定位", "not located")],
      [T("处置部门", "Department"), d.department_code ? W("departments", d.department_code, d.department_name) : "—"],
    ];
    if (d.merged_into) facts.push([T("并入", "Merged into"), String(d.merged_into)]);
    if (d.duplicates && d.duplicates.length) facts.push([T("并单", "Merged here"), d.duplicates.join(", ")]);
    if (d.rating) facts.push([T("评价", "Rating"), W("ratings", d.rating)]);
    if (d.rework_count) facts.push([T("返工次数", "Rework"), String(d.rework_count)]);
    $("d-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    // Photos of every kind (static/common/photos.js): thumbnails and the viewer.
    if (window.CasePhotos) {
      if (!$("d-photos-box")) $("d-facts").insertAdjacentHTML("afterend", `<div id="d-photos-box"></div>`);
      CasePhotos.show($("d-photos-box"), d.id, { headers: () => cgSession.headers(), city });
    }
    // Caller data: the API sends it only to the roles allowed to see it.
    $("d-contact").innerHTML = d.contact ? `<dl><dt>${T("来电人", "Caller")}</dt><dd id="d-caller">${esc(d.contact.name || "—")} · ${esc(d.contact.phone || "—")}</dd></dl>` : "";
    renderProposal();
    renderActions();
    $("d-events").innerHTML = d.events.map((e) => {
      const bits = [];
      if (e.from_state || e.to_state) bits.push(`${esc(W("states", e.from_state))} → ${esc(W("states", e.to_state))}`);
      if (e.actor_role) bits.push(esc(W("roles", e.actor_role)));
      if (e.department) bits.push(T("部门 ", "Dept. ") + esc(W("departments", e.department)));
      const data = e.data || {};
      if (data.met === false) bits.push(`<span class="late">${T("超时", "late")}</span>`);
      if (data.override_reason) bits.push(T("改派理由：", "Override: ") + esc(data.override_reason));
      if (data.cell_code) bits.push(T("网格 ", "Cell ") + esc(data.cell_code));
      if (data.rating) bits.push(T("评价 ", "Rating ") + esc(W("ratings", data.rating)));
      return `<li data-kind="${esc(e.kind)}"><b>${esc(W("events", e.kind))}</b> <span class="at">${esc(fmt(e.at))}</span><br>
        <span class="muted">${bits.join(" · ")}</span>${e.note ? `<div>${esc(e.note)}</div>` : ""}</li>`;
    }).join("");
    if (d.lat != null) {
      setPin([d.lat, d.lon], "#0d4f8b");
      showCell(d.cell_code).catch(() => {});
    } else if (st.tab !== "record") { setPin(null); cellLayer.clearLayers(); }
  }

  function renderProposal() {
    const p = st.proposal;
    const box = $("d-proposal");
    box.hidden = !st.detail.actions.some((a) => a.action === "dispatch");
    if (box.hidden) return;
    $("d-rule").textContent = p ? `${half(p.rule)} · ${p.kind === "event" ? T("事件", "event") : T("部件", "component")}` : "";
    const unstaffed = T("（无人员）", " (unstaffed)");
    $("d-candidates").innerHTML = p && p.candidates.length ? p.candidates.map((c) =>
      `<li data-code="${esc(c.code)}" class="${c.staffed === false ? "unstaffed" : ""}">${p.proposed && c.code === p.proposed.code ? `<b>${T("建议", "proposed")}</b> ` : ""}` +
      `${esc(W("departments", c.code, half(c.name)))}${c.staffed === false ? `<span class="flag">${unstaffed}</span>` : ""} <span class="muted">${esc(half(c.why))}</span></li>`).join("")
      : `<li class="muted">${T("无建议部门：请选择部门并填写理由", "No department can be proposed: choose one (with a reason)")}</li>`;
    const proposed = p && p.proposed ? p.proposed.code : "";
    $("d-department").innerHTML = (proposed ? "" : `<option value="">${T("— 选择部门 —", "— choose —")}</option>`) +
      st.departments.map((x) => `<option value="${esc(x.code)}"${x.code === proposed ? " selected" : ""}>${esc(W("departments", x.code, half(x.name)))}${x.staffed === false ? unstaffed : ""}${x.code === proposed ? " ★" : ""}</option>`).join("");
    const sync = () => { $("d-override-row").hidden = $("d-department").value === proposed; };
    $("d-department").onchange = sync;
    $("d-override").value = "";
    sync();
  }

  function renderActions() {
    const acts = st.detail.actions;
    $("d-actions").hidden = !acts.length;
    $("d-note").value = "";
    $("d-result").innerHTML = "";
    const names = acts.map((a) => a.action);
    const extra = [];
    if (names.includes("rate")) {
      extra.push(`<label>${T("回访评价", "Rating (callback)")}<select id="d-rating">` +
        Object.keys(st.catalog.ratings).map((k) => `<option value="${esc(k)}">${esc(W("ratings", k))}</option>`).join("") + `</select></label>`);
    }
    if (names.includes("extend")) {
      extra.push(`<div class="row"><label>${T("延期时长", "Amount")}<input type="number" id="d-amount" min="0" step="0.5" value="1"></label>
        <label>${T("单位", "Unit")}<select id="d-unit">${["wh", "eh", "wd"].map((k) => `<option value="${k}"${k === "wd" ? " selected" : ""}>${esc(W("units", k))}</option>`).join("")}</select></label></div>`);
    }
    if (names.includes("feedback") && window.CasePhotos) extra.push(CasePhotos.feedbackFields());  // before/after upload
    if (names.some((n) => n === "verify_ok" || n === "verify_fail") && window.CasePhotos) extra.push(CasePhotos.verifyFields());
    $("d-extra").innerHTML = extra.join("");
    $("d-buttons").innerHTML = acts.map((a) =>
      `<button type="button" data-action="${esc(a.action)}" class="${a.needs_reason ? "needs" : ""}" title="${a.needs_reason ? T("需填写理由", "needs a reason") : ""}">${esc(W("actions", a.action))}</button>`).join("");
    $("d-buttons").querySelectorAll("button").forEach((b) => { b.onclick = () => doAction(b.dataset.action, b); });
  }

  async function doAction(action, button) {
    const d = st.detail;
    const meta = d.actions.find((a) => a.action === action) || {};
    const body = {};
    const note = $("d-note").value.trim();
    if (note) body[meta.needs_reason ? "reason" : "note"] = note;
    if (action === "dispatch") {
      body.department = $("d-department").value || null;
      const o = $("d-override").value.trim();
      if (o && !$("d-override-row").hidden) body.override_reason = o;
    }
    if (action === "rate") body.rating = $("d-rating").value;
    if (action === "extend") { body.amount = parseFloat($("d-amount").value); body.unit = $("d-unit").value; }
    button.disabled = true;
    try {
      const po = { headers: () => cgSession.headers(), city };  // multipart, with the photos:
      const r = action === "feedback" ? await CasePhotos.sendFeedback(d.id, note, po)
        : action.startsWith("verify_") ? await CasePhotos.sendVerify(d.id, action === "verify_ok" ? "ok" : "fail", note, po)
        : await api(`/api/v1/cases/${d.id}/actions/${action}`, { method: "POST", json: body });
      await openCase(d.id);
      say("d-result", "ok", `${esc(W("actions", action))}：${esc(W("states", r.from_state))} → ` +
        `<b id="d-new-state">${esc(W("states", r.state))}</b>` +
        (r.step_deadline_at ? ` · ${T("下一时限", "next due")} ${esc(fmt(r.step_deadline_at))}` : ""));
      if (st.tab === "list") loadList().catch((e) => showError(e.message));
    } catch (e) {
      say("d-result", "err", `<b>${T("未执行", "Not done")}</b>：` + esc(e.message));
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- (d) the needs-location queue
  async function loadQueue() {
    if (!has(DISPATCHERS)) { $("queue-list").innerHTML = `<li class="muted">${T("仅受理/派遣员可用", "Operators only")}</li>`; return; }
    const d = await api("/api/v1/cases/needs-location", { params: { limit: 200 } });
    $("queue-count").textContent = d.total_exact === false ? `${count(d.total_at_least)}+` : (d.total || "");
    $("queue-list").innerHTML = d.cases.map((c) => `<li data-id="${c.id}" class="${c.id === st.place.id ? "sel" : ""}">
      <span class="no">${esc(c.case_no)}</span> <span class="state">${esc(W("states", c.state))}</span> ${clockBadge(c.clock)}<br>
      ${esc(className(c))} · <b>${esc(c.address || T("无地址", "no address"))}</b>
      <span class="muted">${esc((c.description || "").slice(0, 40))}</span></li>`).join("") || `<li class="muted">${T("队列为空", "The queue is empty")}</li>`;
    $("queue-list").querySelectorAll("li[data-id]").forEach((li) => {
      li.onclick = () => {
        st.place = { id: +li.dataset.id, latlng: null, cell: null };
        $("queue-list").querySelectorAll("li").forEach((x) => x.classList.toggle("sel", x === li));
        $("place-box").hidden = false;
        $("place-case").textContent = li.querySelector(".no").textContent;
        $("place-point").textContent = T("请点击地图", "click the map");
        $("place-cell").textContent = "—";
        $("place-confirm").disabled = true;
        $("place-result").innerHTML = "";
        setPin(null); cellLayer.clearLayers();
        openCase(st.place.id);
      };
    });
    if (st.place.id && !d.cases.some((c) => c.id === st.place.id)) { $("place-box").hidden = true; st.place.id = null; }
  }

  async function placePick(latlng) {
    st.place.latlng = latlng;
    st.place.cell = null;
    setPin(latlng);
    $("place-point").textContent = `${latlng.lng.toFixed(6)}, ${latlng.lat.toFixed(6)}`;
    $("place-confirm").disabled = false;
    const cell = await snapPreview(latlng);
    if (st.place.latlng !== latlng) return;
    st.place.cell = cell;
    $("place-cell").textContent = cell.code ? cell.code : T("不在本市范围内", "outside the city");
    if (cell.code) await showCell(cell.code); else cellLayer.clearLayers();
  }

  $("place-confirm").onclick = async () => {
    const { id, latlng } = st.place;
    if (!id || !latlng) return;
    $("place-confirm").disabled = true;
    try {
      const r = await api(`/api/v1/cases/${id}/location`, { method: "POST", json: { x: latlng.lng, y: latlng.lat, crs: "EPSG:4326" } });
      say("place-result", "ok", `${T("已定位", "Placed")}：${esc(r.case_no)} → ${T("网格", "cell")} <b id="placed-cell">${esc(r.cell_code)}</b>`);
      await showCell(r.cell_code);
      $("place-box").hidden = true;
      st.place = { id: null, latlng: null, cell: null };
      await loadQueue();
      openCase(id);
    } catch (e) {
      say("place-result", "err", `<b>${T("定位失败", "Not placed")}</b>：` + esc(e.message));
      $("place-confirm").disabled = false;
    }
  };

  // ---------------------------------------------------------------- start
  async function start() {
    showError("");
    await I18N.ready;
    I18N.apply(document);
    if (!st.recordPoint) $("record-loc").textContent = locText();
    if (!(await cgSession.ready) && !cgSession.tokenError) { $("login").hidden = false; $("who").textContent = T("请登录", "Please sign in"); return; }
    try {
      st.me = await api("/api/v1/me");
    } catch (e) {
      $("login").hidden = false;
      $("who").textContent = "";
      // A refused #token=… link says why (e.g. 未知令牌), not only that nobody is signed in.
      showError(T("登录失败：", "Sign-in failed: ") + (cgSession.tokenError ? cgSession.tokenError.detail : e.message));
      return;
    }
    $("login").hidden = true;
    $("logout").hidden = false;
    showWho();
    document.body.dataset.role = st.me.role;
    try {
      const [cat, deps] = await Promise.all([api("/api/v1/catalog"), api("/api/v1/departments")]);
      st.catalog = cat; st.departments = deps.departments;
    } catch (e) { showError(T("目录：", "Catalog: ") + e.message); return; }
    fillForm();
    $("caller-fields").hidden = !has(CONTACT_ROLES);
    const canRecord = has(INTAKE);
    document.querySelector('#tabs [data-tab="record"]').hidden = !canRecord;
    document.querySelector('#tabs [data-tab="queue"]').hidden = !has(DISPATCHERS);
    // The map is placed before the page says it is ready: a click made after would otherwise land
    // on a map that jumps to the city when its outline arrives.
    await loadMapBase().catch((e) => showError(T("地图：", "Map: ") + e.message));
    if (has(DISPATCHERS)) loadQueue().catch(() => {});
    showTab(canRecord ? "record" : "list");
    const open = +(qs.get("case") || 0);
    if (open) openCase(open);
    document.body.dataset.ready = "1";
  }
  function showWho() {
    if (!st.me) return;
    $("who").textContent = `${st.me.name} · ${W("roles", st.me.role)}` + (st.me.department ? ` · ${W("departments", st.me.department, st.me.department)}` : "");
  }

  // The language switch: everything drawn again in the other language.
  I18N.toggle($("lang"));
  I18N.onChange(() => {
    if (!st.recordPoint) $("record-loc").textContent = locText(); else $("record-loc").textContent = locText();
    if (!st.me || !st.catalog) return;
    showWho();
    fillForm();
    if (st.tab === "list") loadList().catch((e) => showError(e.message));
    if (has(DISPATCHERS)) loadQueue().catch(() => {});
    if (st.detail) renderDetail();
  });
  start();
})();
