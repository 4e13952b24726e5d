// The operator workbench (受理员/派遣员; departments and supervisors too): record a hotline call, the case
// list with its clocks, one case with its timeline, the dispatch proposal and the actions the signed-in
// user may take now (GET /api/v1/cases/{id} → actions), and the needs-location queue placed on the map.
// Every refusal of the API is shown with its message; the API is the gate, the page only hides what a
// role can never do.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const qs = new URLSearchParams(location.search);
  // Signed in by the session cookie (static/common/session.js; a #token=… link is exchanged for it there).
  const city = qs.get("city") || "";

  // Mirrors of the API's role gates, only to hide what a role can never use (api/routers/cases.py).
  const INTAKE = ["operator", "inspector", "supervisor", "admin"];
  const DISPATCHERS = ["operator", "supervisor", "admin"];
  const CONTACT_ROLES = ["operator", "supervisor", "admin", "department"];

  const ACTION_LABELS = {
    accept: "立案 Accept", reject: "不予立案 Reject", dispatch: "派遣 Dispatch", return: "回退 Return (not ours)",
    start: "签收处置 Start", feedback: "处置反馈 Report done", verify_ok: "核查通过 Check passed",
    verify_fail: "核查不通过 Check failed (rework)", close: "结案 Close", rate: "回访评价 Record rating",
    extend: "延期 Extend", defer: "缓办 Defer", suspend: "挂账 Park", resume: "恢复 Resume",
    supervise: "督办 Supervision notice", reopen: "重办 Reopen", void: "作废 Void",
  };
  const UNIT_LABELS = { eh: "紧急工作时 clock hours", wh: "工作时 working hours", wd: "工作日 working days" };
  const URGENCY = { normal: "一般 normal", urgent: "紧急 urgent", emergency: "特急 emergency" };

  const st = {
    me: null, catalog: null, departments: [], tab: "record", selected: null, detail: null, proposal: null,
    recordPoint: null, place: { id: null, latlng: null, cell: null },
  };

  // ---------------------------------------------------------------- helpers
  // Kept for code not yet moved to the session (static/common/session.js): no token is kept any more; an
  // "Authorization: Bearer " + token() header is dropped by session.js and the session cookie counts.
  function token() { return ""; }
  function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function fmt(t) { return t ? new Date(t).toLocaleString("zh-CN", { hour12: false }) : "—"; }
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
      throw new Error("网络错误 network error: " + e.message);
    }
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401) { $("login").hidden = false; }
    if (!r.ok) {
      let d = data && data.detail !== undefined ? data.detail : r.statusText;
      if (typeof d !== "string") d = JSON.stringify(d);
      const err = new Error(`${r.status}: ${d}`);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function clockBadge(c) {
    if (!c) return `<span class="clock none">— 无时限 no clock</span>`;
    const s = Math.abs(c.left_seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    const span = (h ? `${h}时` : "") + `${m}分`;
    const en = (h ? `${h}h ` : "") + `${m}m`;
    const text = c.overdue ? `超时 ${span} overdue ${en}` : `剩余 ${span} left ${en}`;
    const unit = c.overdue ? "" : ` (${(UNIT_LABELS[c.unit] || c.unit).split(" ")[0]})`;
    return `<span class="clock ${esc(c.level)}" data-level="${esc(c.level)}" title="${esc(UNIT_LABELS[c.unit] || c.unit)}; ` +
      `时限 due ${esc(fmt(c.deadline))}">${text}${unit}</span>`;
  }

  // ---------------------------------------------------------------- map
  const map = L.map("map", { zoomSnap: 0.5 }).setView([31.9, 121.2], 11);
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
    if (map.getZoom() < 15) { $("map-status").textContent = "放大到 15 级显示单元网格 Zoom to 15 to see the grid cells"; return; }
    const b = map.getBounds();
    const fc = await api("/api/v1/cells", { params: { bbox: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(6)).join(","), limit: 2000 } });
    grid.addData(fc);
    $("map-status").textContent = `单元网格 cells in view: ${fc.numberReturned}` + (fc.numberMatched > fc.numberReturned ? ` / ${fc.numberMatched}` : "");
  }
  map.on("moveend", () => { if (st.me) loadGrid().catch((e) => showError("网格 grid: " + e.message)); });

  async function loadMapBase() {
    const cfg = await api("/api/v1/config");
    if (cfg.basemap_url) L.tileLayer(cfg.basemap_url, { attribution: cfg.basemap_attribution }).addTo(map);
    const c = cfg.cities.find((x) => x.slug === (city || cfg.default_city)) || cfg.cities[0];
    if (c) map.fitBounds([[c.bbox[1], c.bbox[0]], [c.bbox[3], c.bbox[2]]], { animate: false });
    // District and street outlines for orientation (the OGC API collection of admin areas).
    try {
      const fc = await api("/api/v1/ogc/collections/admin_areas/items", { params: { limit: 100 } });
      areas.addData({ type: "FeatureCollection", features: fc.features.filter((f) => f.properties.level !== "community") });
    } catch (e) { $("map-status").textContent = "行政区划不可用 admin areas unavailable: " + e.message; }
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
        .bindTooltip(`${c.case_no} · ${c.category_name || c.category_code} · ${c.state_label}`)
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
  function fillForm() {
    const cat = st.catalog;
    $("channel").innerHTML = cat.channels.map((c) => `<option>${esc(c)}</option>`).join("");
    $("request-type").innerHTML = `<option value="">— 未指定 unspecified</option>` +
      cat.request_types.map((c) => `<option>${esc(c)}</option>`).join("");
    $("category").innerHTML = leaves(cat.items).map((i) =>
      `<option value="${esc(i.code)}">${esc((i.path || [i.name]).join(" / "))} · ${esc(i.name_en || "")} (${esc(i.code)})</option>`).join("");
    $("f-state").innerHTML = `<option value="">全部 All</option><option value="open">未办结 Open</option>` +
      Object.entries(cat.states).map(([k, v]) => `<option value="${esc(k)}">${esc(v)}</option>`).join("");
    $("f-state").value = "open";  // the work still to do first; 全部 All is one click away
  }

  async function recordPick(latlng) {
    st.recordPoint = { latlng, cell: null };
    setPin(latlng);
    $("record-loc").textContent = `${latlng.lng.toFixed(6)}, ${latlng.lat.toFixed(6)} …`;
    $("record-loc-clear").hidden = false;
    const cell = await snapPreview(latlng);
    if (!st.recordPoint || st.recordPoint.latlng !== latlng) return;
    st.recordPoint.cell = cell;
    $("record-loc").textContent = `${latlng.lng.toFixed(6)}, ${latlng.lat.toFixed(6)} · ` +
      (cell.code ? `网格 cell ${cell.code}` : `城市范围外 outside the city (${cell.reason || "outside"})`);
    if (cell.code) await showCell(cell.code);
  }
  $("record-loc-clear").onclick = () => {
    st.recordPoint = null; setPin(null); cellLayer.clearLayers();
    $("record-loc").textContent = "未定位 none — 点击地图选点 click the map (optional)";
    $("record-loc-clear").hidden = true;
  };

  $("record-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
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
      if (d.merged_into) extra += `<div>已并单 merged into case ${esc(d.merged_into)} (同类、邻近、近期 same class, nearby, recent)</div>`;
      if (d.needs_location) extra += `<div>未定位: 已进入待定位队列 No location: the case waits in the needs-location queue</div>`;
      else extra += `<div>网格 cell <b>${esc(d.cell_code)}</b></div>`;
      say("record-result", "ok", `已受理 Recorded. 案卷编号 Case number: <span class="code" id="new-case-no">${esc(d.case_no)}</span><br>
        查询码 Query code: <span class="code" id="new-query-code">${esc(d.query_code)}</span>
        <div><b>请告知来电人编号和查询码</b> (只显示这一次) <span>Tell the caller both: the query code is shown only now.</span></div>
        ${extra}<button type="button" class="link" id="open-new">查看案卷 open the case</button>`);
      $("open-new").onclick = () => openCase(d.id);
      for (const id of ["description", "address", "caller-name", "caller-phone"]) $(id).value = "";
      $("record-loc-clear").onclick();
      openCase(d.id);
    } catch (e) {
      say("record-result", "err", "登记失败 Not recorded: " + esc(e.message));
    } finally {
      $("record-submit").disabled = false;
    }
  });

  // ---------------------------------------------------------------- (b) the case list
  async function loadList() {
    const clockSel = $("f-clock").value;
    let stateSel = $("f-state").value;
    if (stateSel === "open") stateSel = "collected,accepted,dispatched,processing,feedback,verifying,deferred,suspended";
    let cases, total;
    if (["alerts", "red", "yellow"].includes(clockSel)) {
      const d = await api("/api/v1/cases/alerts", { params: { level: clockSel === "alerts" ? "all" : clockSel } });
      cases = d.cases; total = d.count;
      if ($("f-state").value) cases = cases.filter((c) => stateSel.split(",").includes(c.state));
    } else {
      const d = await api("/api/v1/cases", { params: { state: stateSel, overdue: clockSel === "overdue" ? "true" : "", q: $("f-q").value.trim(), limit: 200 } });
      cases = d.cases; total = d.total;
    }
    $("list-status").textContent = `${total} 件 cases` + (cases.length < total ? ` (显示 showing ${cases.length})` : "");
    $("case-list").innerHTML = cases.map((c) => `<li data-id="${c.id}" class="${c.id === st.selected ? "sel" : ""}">
      <span class="no">${esc(c.case_no)}</span> <span class="state">${esc(c.state_label)}</span> ${clockBadge(c.clock)}<br>
      ${esc(c.category_name || c.category_code)}${c.department_name ? " → " + esc(c.department_name) : ""}
      <span class="muted">${esc((c.address || c.description || "").slice(0, 40))}</span></li>`).join("") ||
      `<li class="muted">无案卷 no cases</li>`;
    $("case-list").querySelectorAll("li[data-id]").forEach((li) => { li.onclick = () => openCase(+li.dataset.id); });
    drawCases(cases);
  }
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); showError(""); loadList().catch((e) => showError("案卷列表 list: " + e.message)); });

  // ---------------------------------------------------------------- (c) one case
  async function openCase(id) {
    st.selected = id;
    document.querySelectorAll("#case-list li, #queue-list li").forEach((li) => li.classList.toggle("sel", +li.dataset.id === id));
    let d;
    try { d = await api("/api/v1/cases/" + id); } catch (e) { showError("案卷 case: " + e.message); return; }
    st.detail = d;
    st.proposal = null;
    const dispatchable = d.actions.some((a) => a.action === "dispatch");
    if (dispatchable) {
      try { st.proposal = d.proposal || await api(`/api/v1/cases/${id}/proposal`); } catch (e) { showError("派遣建议 proposal: " + e.message); }
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
    $("d-title").innerHTML = `<span class="no">${esc(d.case_no)}</span> <span class="state" id="d-state">${esc(d.state_label)}</span>`;
    $("d-clock").innerHTML = "当前时限 <span>Step clock</span> " + clockBadge(d.clock) +
      (d.close_deadline_at ? ` · 办结时限 <span>close by</span> ${esc(fmt(d.close_deadline_at))}` : "");
    const facts = [
      ["类别 Class", `${d.category_name || ""} (${d.category_code})`], ["来源 Source", `${d.source} · ${d.channel || ""}`],
      ["诉求 Type", d.request_type || "—"], ["紧急 Urgency", URGENCY[d.urgency] || d.urgency],
      ["受理 Received", fmt(d.received_at)], ["地址 Address", d.address || "—"], ["描述 Text", d.description || "—"],
      ["网格 Cell", d.cell_code || "未定位 not located"], ["部门 Department", d.department_name ? `${d.department_name} (${d.department_code})` : "—"],
    ];
    if (d.merged_into) facts.push(["并入 Merged into", String(d.merged_into)]);
    if (d.duplicates && d.duplicates.length) facts.push(["并单 Merged here", d.duplicates.join(", ")]);
    if (d.rating) facts.push(["评价 Rating", (st.catalog.ratings[d.rating] || "") + " " + d.rating]);
    if (d.rework_count) facts.push(["返工 Rework", String(d.rework_count)]);
    $("d-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    // Caller data: the API sends it only to the roles allowed to see it.
    $("d-contact").innerHTML = d.contact ? `<dl><dt>来电人 Caller</dt><dd id="d-caller">${esc(d.contact.name || "—")} · ${esc(d.contact.phone || "—")}</dd></dl>` : "";
    renderProposal();
    renderActions();
    const labels = st.catalog.events || {};
    $("d-events").innerHTML = d.events.map((e) => {
      const bits = [];
      if (e.from_state || e.to_state) bits.push(`${esc(e.from_state || "—")} → ${esc(e.to_state || "—")}`);
      if (e.actor_role) bits.push(esc(e.actor_role));
      if (e.department) bits.push("部门 " + esc(e.department));
      const data = e.data || {};
      if (data.met === false) bits.push(`<span class="late">超时 late</span>`);
      if (data.override_reason) bits.push("改派理由 override: " + esc(data.override_reason));
      if (data.cell_code) bits.push("网格 cell " + esc(data.cell_code));
      if (data.rating) bits.push("评价 " + esc(data.rating));
      return `<li data-kind="${esc(e.kind)}"><b>${esc(labels[e.kind] || e.kind)}</b> <span class="at">${esc(fmt(e.at))}</span><br>
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
    $("d-rule").textContent = p ? `${p.rule} · ${p.kind === "event" ? "事件 event" : "部件 component"}` : "";
    $("d-candidates").innerHTML = p && p.candidates.length ? p.candidates.map((c, i) =>
      `<li>${i === 0 ? "<b>建议 proposed</b> " : ""}${esc(c.name)} (${esc(c.code)}) <span class="muted">${esc(c.why)}</span></li>`).join("")
      : `<li class="muted">无建议部门 no department can be proposed: choose one (with a reason)</li>`;
    const proposed = p && p.proposed ? p.proposed.code : "";
    $("d-department").innerHTML = (proposed ? "" : `<option value="">— 选择部门 choose —</option>`) +
      st.departments.map((x) => `<option value="${esc(x.code)}"${x.code === proposed ? " selected" : ""}>${esc(x.name)} (${esc(x.code)})${x.code === proposed ? " ★" : ""}</option>`).join("");
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
      extra.push(`<label>评价 <span>Rating (回访 callback)</span><select id="d-rating">` +
        Object.entries(st.catalog.ratings).map(([k, v]) => `<option value="${esc(k)}">${esc(v)} ${esc(k)}</option>`).join("") + `</select></label>`);
    }
    if (names.includes("extend")) {
      extra.push(`<div class="row"><label>延期量 <span>Amount</span><input type="number" id="d-amount" min="0" step="0.5" value="1"></label>
        <label>单位 <span>Unit</span><select id="d-unit">${Object.entries(UNIT_LABELS).map(([k, v]) => `<option value="${k}"${k === "wd" ? " selected" : ""}>${esc(v)}</option>`).join("")}</select></label></div>`);
    }
    if (names.some((n) => n === "verify_ok" || n === "verify_fail" || n === "feedback")) {
      extra.push(`<label>照片编号 <span>Photo references, comma separated (核查需照片 a check needs one)</span><input type="text" id="d-photos"></label>`);
    }
    $("d-extra").innerHTML = extra.join("");
    $("d-buttons").innerHTML = acts.map((a) =>
      `<button type="button" data-action="${esc(a.action)}" class="${a.needs_reason ? "needs" : ""}" title="${a.needs_reason ? "需填写理由 needs a reason" : ""}">${esc(ACTION_LABELS[a.action] || a.action)}</button>`).join("");
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
    if ($("d-photos") && $("d-photos").value.trim()) body.photos = $("d-photos").value.split(",").map((s) => s.trim()).filter(Boolean);
    button.disabled = true;
    try {
      const r = await api(`/api/v1/cases/${d.id}/actions/${action}`, { method: "POST", json: body });
      await openCase(d.id);
      say("d-result", "ok", `${esc(ACTION_LABELS[action] || action)}: ${esc(st.catalog.states[r.from_state] || r.from_state)} → ` +
        `<b id="d-new-state">${esc(st.catalog.states[r.state] || r.state)}</b>` +
        (r.step_deadline_at ? ` · 下一时限 next due ${esc(fmt(r.step_deadline_at))}` : ""));
      if (st.tab === "list") loadList().catch((e) => showError(e.message));
    } catch (e) {
      say("d-result", "err", "未执行 Not done: " + esc(e.message));
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- (d) the needs-location queue
  async function loadQueue() {
    if (!has(DISPATCHERS)) { $("queue-list").innerHTML = `<li class="muted">仅受理/派遣员 operators only</li>`; return; }
    const d = await api("/api/v1/cases/needs-location", { params: { limit: 200 } });
    $("queue-count").textContent = d.total || "";
    $("queue-list").innerHTML = d.cases.map((c) => `<li data-id="${c.id}" class="${c.id === st.place.id ? "sel" : ""}">
      <span class="no">${esc(c.case_no)}</span> <span class="state">${esc(c.state_label)}</span> ${clockBadge(c.clock)}<br>
      ${esc(c.category_name || c.category_code)} · <b>${esc(c.address || "无地址 no address")}</b>
      <span class="muted">${esc((c.description || "").slice(0, 40))}</span></li>`).join("") || `<li class="muted">队列为空 the queue is empty</li>`;
    $("queue-list").querySelectorAll("li[data-id]").forEach((li) => {
      li.onclick = () => {
        st.place = { id: +li.dataset.id, latlng: null, cell: null };
        $("queue-list").querySelectorAll("li").forEach((x) => x.classList.toggle("sel", x === li));
        $("place-box").hidden = false;
        $("place-case").textContent = li.querySelector(".no").textContent;
        $("place-point").textContent = "点击地图 click the map";
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
    $("place-cell").textContent = cell.code ? cell.code : `城市范围外 outside the city`;
    if (cell.code) await showCell(cell.code); else cellLayer.clearLayers();
  }

  $("place-confirm").onclick = async () => {
    const { id, latlng } = st.place;
    if (!id || !latlng) return;
    $("place-confirm").disabled = true;
    try {
      const r = await api(`/api/v1/cases/${id}/location`, { method: "POST", json: { x: latlng.lng, y: latlng.lat, crs: "EPSG:4326" } });
      say("place-result", "ok", `已定位 Placed: ${esc(r.case_no)} → 网格 cell <b id="placed-cell">${esc(r.cell_code)}</b>`);
      await showCell(r.cell_code);
      $("place-box").hidden = true;
      st.place = { id: null, latlng: null, cell: null };
      await loadQueue();
      openCase(id);
    } catch (e) {
      say("place-result", "err", "定位失败 Not placed: " + esc(e.message));
      $("place-confirm").disabled = false;
    }
  };

  // ---------------------------------------------------------------- start
  async function start() {
    showError("");
    if (!(await cgSession.ready) && !cgSession.tokenError) { $("login").hidden = false; $("who").textContent = "请登录 please sign in"; return; }
    try {
      st.me = await api("/api/v1/me");
    } catch (e) {
      $("login").hidden = false;
      $("who").textContent = "";
      showError("登录失败 sign-in failed: " + e.message);
      return;
    }
    $("login").hidden = true;
    $("logout").hidden = false;
    $("who").textContent = `${st.me.name} · ${st.me.role_label || st.me.role}` + (st.me.department ? ` · ${st.me.department}` : "");
    document.body.dataset.role = st.me.role;
    try {
      const [cat, deps] = await Promise.all([api("/api/v1/catalog"), api("/api/v1/departments")]);
      st.catalog = cat; st.departments = deps.departments;
    } catch (e) { showError("目录 catalog: " + e.message); return; }
    fillForm();
    $("caller-fields").hidden = !has(CONTACT_ROLES);
    const canRecord = has(INTAKE);
    document.querySelector('#tabs [data-tab="record"]').hidden = !canRecord;
    document.querySelector('#tabs [data-tab="queue"]').hidden = !has(DISPATCHERS);
    // The map is placed before the page says it is ready: a click made after would otherwise land
    // on a map that jumps to the city when its outline arrives.
    await loadMapBase().catch((e) => showError("地图 map: " + e.message));
    if (has(DISPATCHERS)) loadQueue().catch(() => {});
    showTab(canRecord ? "record" : "list");
    const open = +(qs.get("case") || 0);
    if (open) openCase(open);
    document.body.dataset.ready = "1";
  }
  start();
})();
