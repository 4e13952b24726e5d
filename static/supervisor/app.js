// Supervisor dashboard: Leaflet map of cell layers (heat, hot spots, aggregated cases, grid), KPI cards,
// charts and the alert feed. Every layer is per cell from the API; no case point is ever fetched.
(function () {
  "use strict";
  const qs = new URLSearchParams(location.search);
  // Signed in by the session cookie (static/common/session.js; a #token=… link is exchanged for it there).
  const city = qs.get("city") || "";
  const $ = (id) => document.getElementById(id);
  const state = { start: null, end: null, category: "" };

  // Kept for code not yet moved to the session (static/common/session.js): no token is kept any more; an
  // "Authorization: Bearer " + token() header is dropped by session.js and the session cookie counts.
  function token() { return ""; }
  function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }

  async function api(path, params, method) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v != null) p.set(k, v);
    if (city) p.set("city", city);
    const r = await cgSession.fetch(path + "?" + p.toString(), { method: method || "GET" });
    if (r.status === 401) { $("login").hidden = false; throw new Error("请登录 please sign in"); }
    if (!r.ok) { let d = r.statusText; try { d = (await r.json()).detail; } catch (_) { /* keep */ } throw new Error(r.status + ": " + d); }
    return r.json();
  }

  // ---------------------------------------------------------------- map
  const map = L.map("map", { preferCanvas: true, zoomSnap: 0.5 }).setView([31.9, 121.2], 11);
  map.attributionControl.addAttribution("citygrid · 单元网格 unit grid");
  const ramp = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"];
  const binColor = { 3: "#b2182b", 2: "#ef8a62", 1: "#fddbc7", "-1": "#d1e5f0", "-2": "#67a9cf", "-3": "#2166ac" };
  const layers = {
    heat: L.geoJSON(null, { style: (f) => { const c = ramp[f.properties.class]; return { weight: 0.5, color: c, opacity: 0.7, fillOpacity: 0.7, fillColor: c }; },
      onEachFeature: (f, l) => l.bindTooltip(`≥ ${f.properties.density_from} 件/km² · ${f.properties.cells} 网格 cells`) }),
    hot: L.geoJSON(null, {
      style: (f) => ({ color: "#555", weight: 0.3, fillOpacity: 0.75, fillColor: binColor[f.properties.bin] }),
      onEachFeature: (f, l) => l.bindTooltip(`${f.properties.label} · ${f.properties.cells} 网格 cells`),
    }),
    cases: L.geoJSON(null, {
      style: (f) => ({ color: "#08306b", weight: 0.3, fillOpacity: 0.6, fillColor: f.properties.count >= 5 ? "#08519c" : f.properties.count >= 2 ? "#4292c6" : "#9ecae1" }),
      onEachFeature: (f, l) => l.bindTooltip(`${f.properties.code}: ${f.properties.count} 件 cases`),
    }),
    grid: L.geoJSON(null, { style: { color: "#666", weight: 0.5, fill: false } }),
    zones: L.geoJSON(null, {  // key zones coloured by whether their patrol frequency was met on the last day
      style: (f) => ({ color: f.properties.frequency_met ? "#1a9850" : "#d73027", weight: 2.5, fillOpacity: 0.15 }),
      pointToLayer: (f, ll) => L.circleMarker(ll, { radius: 6 }),
      onEachFeature: (f, l) => l.bindTooltip(`${f.properties.name} · ${f.properties.zone_type} · ` +
        `覆盖 ${(100 * f.properties.share).toFixed(0)}% · ${f.properties.frequency_met ? "达标 met" : "未达标 missed"}`),
    }),
    emerging: L.geoJSON(null, {
      style: (f) => ({ color: "#333", weight: 0.3, fillOpacity: 0.7, fillColor: /Hot/.test(f.properties.category) ? "#d7301f" : "#0570b0" }),
      onEachFeature: (f, l) => l.bindTooltip(`${f.properties.label} · ${f.properties.code}`),
    }),
  };
  layers.heat.addTo(map);
  layers.hot.addTo(map);
  L.control.layers(null, {
    "热力 Heat": layers.heat, "热点 Hot spots (精确检验 exact test, FDR)": layers.hot, "案件网格 Cases per cell": layers.cases,
    "时空热点趋势 Emerging hot spots": layers.emerging, "单元网格 Grid (zoom ≥ 15)": layers.grid,
    "重点区域巡查 Key zones (patrol)": layers.zones,
  }, { collapsed: false }).addTo(map);
  const legend = L.control({ position: "bottomright" });
  legend.onAdd = () => {
    const d = L.DomUtil.create("div", "legend");
    d.innerHTML = "<b>热点 Hot spots</b><br>" + [3, 2, 1, -1, -2, -3].map((b) => `<i style="background:${binColor[b]}"></i>${b > 0 ? "热" : "冷"} ${({ 3: 99, 2: 95, 1: 90 })[Math.abs(b)]}%`).join("<br>");
    return d;
  };
  legend.addTo(map);

  async function loadGrid() {
    if (!map.hasLayer(layers.grid)) return;
    layers.grid.clearLayers();
    if (map.getZoom() < 15) { $("map-status").textContent = "放大到 15 级显示网格 Zoom to 15 to see the grid"; return; }
    const b = map.getBounds();
    const fc = await api("/api/v1/cells", { bbox: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].join(","), limit: 2000 });
    layers.grid.addData(fc);
  }
  map.on("moveend overlayadd", () => loadGrid().catch((e) => showError(e.message)));
  async function loadEmerging() {
    if (!map.hasLayer(layers.emerging)) return;
    const fc = await api("/api/v1/supervisor/emerging", { end: state.end, category: state.category });
    layers.emerging.clearLayers(); layers.emerging.addData(fc);
    $("map-status").textContent = "时空热点趋势 Emerging: " + (fc.status === "too_few_cases" ? fc.message : JSON.stringify(fc.summary) +
      (fc.scale ? ` · 分析单元 unit ${fc.scale.unit_m} m` : ""));
  }
  async function loadCases() {  // aggregated per cell, fetched only while the layer is shown
    if (!map.hasLayer(layers.cases) || layers.cases.loaded) return;
    const fc = await api("/api/v1/supervisor/cells", { start: state.start, end: state.end, category: state.category });
    layers.cases.clearLayers(); layers.cases.addData(fc); layers.cases.loaded = true;
  }
  async function loadZones() {  // patrol coverage of the key zones on the window's last day
    if (!map.hasLayer(layers.zones)) return;
    const fc = await api("/api/v1/zones/coverage", { start: state.end, end: state.end });
    layers.zones.clearLayers(); layers.zones.addData(fc);
    const missed = fc.features.filter((f) => !f.properties.frequency_met).length;
    $("map-status").textContent = `重点区域 Key zones ${fc.features.length} · 漏巡 missed ${missed} (${state.end || "today"})`;
  }
  map.on("overlayadd", (e) => { if (e.layer === layers.zones) loadZones().catch((err) => showError(err.message)); });
  map.on("overlayadd", (e) => { if (e.layer === layers.cases) loadCases().catch((err) => showError(err.message)); });
  map.on("overlayadd", (e) => { if (e.layer === layers.emerging) loadEmerging().catch((err) => showError(err.message)); });

  async function loadLayers(fit) {
    const p = { start: state.start, end: state.end, category: state.category };
    const d = Object.assign({ dissolve: true }, p);
    const [heat, hot] = await Promise.all([api("/api/v1/supervisor/heat", d), api("/api/v1/supervisor/hotspots", d)]);
    for (const [k, fc] of [["heat", heat], ["hot", hot]]) { layers[k].clearLayers(); layers[k].addData(fc); }
    layers.cases.loaded = false;
    loadCases().catch((e) => showError(e.message));
    const n = Object.values(hot.summary || {}).reduce((a, b) => a + b, 0);
    layers.hot.bringToFront();
    const scale = hot.status === "too_few_cases" ? hot.message
      : (hot.scale ? `分析单元 unit ${hot.scale.unit_m} m` : "");
    $("map-status").textContent = `${heat.total} 件 cases · 带宽 bandwidth ${heat.bandwidth_m || "—"} m · 显著网格 significant cells ${n}` +
      (scale ? ` · ${scale}` : "") + (heat.edge_corrected === false ? " · 热力未做边缘校正 heat: no edge correction" : "");
    const b = layers.heat.getBounds();
    if (fit && b.isValid()) map.fitBounds(b, { padding: [10, 10] });
  }

  // ---------------------------------------------------------------- cards, charts, alerts
  function pct(v) { return v == null ? "—" : (100 * v).toFixed(1) + "%"; }
  async function loadKpis() {
    const r = await api("/api/v1/supervisor/kpis", { start: state.start, end: state.end });
    const k = r.units.length ? r.units[0].kpis : {};
    $("cards").innerHTML = Object.entries(k).map(([name, v]) =>
      `<div class="card"><div class="v">${v.kind === "count" ? v.value.toLocaleString() : pct(v.value)}</div><div class="n">${name}</div><div class="e">${v.en}</div></div>`).join("");
  }

  function chart(canvas, labels, values, kind) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, pad = 28;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "10px sans-serif";
    const max = Math.max(1, ...values);
    ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, H - pad); ctx.lineTo(W - 4, H - pad); ctx.stroke();
    ctx.fillStyle = "#555"; ctx.fillText(String(max), 2, 12); ctx.fillText("0", 14, H - pad);
    const n = values.length, w = (W - pad - 8) / Math.max(1, n);
    if (kind === "line") {
      ctx.strokeStyle = "#8b0000"; ctx.lineWidth = 2; ctx.beginPath();
      values.forEach((v, i) => { const x = pad + w * (i + 0.5), y = H - pad - (H - pad - 8) * v / max; i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.stroke();
      ctx.fillStyle = "#555";
      if (n) { ctx.fillText(labels[0], pad, H - 10); ctx.fillText(labels[n - 1], W - 70, H - 10); }
    } else {
      values.forEach((v, i) => {
        const h = (H - pad - 8) * v / max;
        ctx.fillStyle = "#c0392b"; ctx.fillRect(pad + w * i + 3, H - pad - h, w - 6, h);
        ctx.fillStyle = "#333"; ctx.save(); ctx.translate(pad + w * i + w / 2, H - pad + 4); ctx.rotate(0.5); ctx.fillText(labels[i], 0, 6); ctx.restore();
      });
    }
    canvas.dataset.drawn = String(n);
  }

  async function loadSummary(first) {
    const s = await api("/api/v1/supervisor/summary", { start: state.start, end: state.end });
    if (first) {
      state.start = s.start; state.end = s.end; $("start").value = s.start; $("end").value = s.end;
      const sel = $("category");
      for (const c of s.by_category) { const o = document.createElement("option"); o.value = c.key; o.textContent = `${c.name} (${c.key})`; sel.appendChild(o); }
    }
    chart($("chart-day"), s.by_day.map((d) => d.key), s.by_day.map((d) => d.n), "line");
    const top = s.by_category.slice(0, 10);
    chart($("chart-cat"), top.map((c) => c.name), top.map((c) => c.n), "bar");
  }

  async function loadAlerts() {
    const r = await api("/api/v1/supervisor/alerts", { limit: 30 });
    const ul = $("alerts");
    ul.innerHTML = r.alerts.length ? "" : "<li>暂无预警 No alerts</li>";
    for (const a of r.alerts) {
      const li = document.createElement("li");
      const p = a.p_value == null ? "" : ` · p = ${a.p_value.toFixed(3)}`;
      li.innerHTML = `<b class="k-${a.kind}">${a.label}</b> ${a.detected_on} · ${a.category_code || "全部 all"} · ` +
        `观测 obs ${a.observed} / 期望 exp ${a.expected}${p} · ${a.cells} 网格 cells ` +
        `<a target="_blank" href="/api/v1/supervisor/alerts/${a.id}/report">专报 report</a>`;
      li.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); openReport(a.id); });
      ul.appendChild(li);
    }
  }
  async function openReport(id) {
    const p = new URLSearchParams(city ? { city } : {});
    const r = await fetch(`/api/v1/supervisor/alerts/${id}/report?${p}`, { credentials: "same-origin" });
    const w = window.open("", "_blank"); if (w) w.document.write(await r.text());
  }

  async function refresh(first) {
    showError("");
    try {
      if (first) await loadSummary(true);
      await Promise.all([loadLayers(first), loadKpis(), first ? null : loadSummary(false), loadAlerts()]);
      window.dashboardReady = true;
    } catch (e) { showError(e.message); window.dashboardError = e.message; }
  }

  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.start = $("start").value; state.end = $("end").value; state.category = $("category").value;
    window.dashboardReady = false; refresh(false);
  });
  $("save-token").addEventListener("click", () => cgSession.signIn());
  $("logout").addEventListener("click", () => cgSession.signOut());
  $("run-alerts").addEventListener("click", async () => {
    try { await api("/api/v1/supervisor/alerts/run", { day: state.end }, "POST"); await loadAlerts(); } catch (e) { showError(e.message); }
  });
  cgSession.ready.then((me) => {
    if (!me) { $("login").hidden = false; return; }
    $("who").textContent = `${me.name} · ${me.role_label || me.role}`; $("logout").hidden = false;
    refresh(true);
  });
})();
