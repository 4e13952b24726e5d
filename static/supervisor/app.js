// Supervisor dashboard: Leaflet map of cell layers (heat as vector tiles, hot spots, emerging hot spots,
// aggregated cases, grid), KPI cards, ECharts charts, the bulletin centre and the alert feed. Every layer
// is per cell from the API; no case point is ever fetched. One filter state (window, class, channel, area)
// goes to every request: map, tiles, KPIs and charts count the same cases (the definition is on the page).
(function () {
  "use strict";
  const qs = new URLSearchParams(location.search);
  // Signed in by the session cookie (static/common/session.js; a #token=… link is exchanged for it there).
  const city = qs.get("city") || "";
  const $ = (id) => document.getElementById(id);
  const state = { start: null, end: null, category: "", channel: "", area: "" };
  const names = { category: {}, area: {} };

  function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }
  function esc(s) { return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]); }

  // The one place that sends the signed-in user's credentials (switches to the session helper after merge).
  function authFetch(path, params, opts) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v != null) p.set(k, v);
    if (city) p.set("city", city);
    return cgSession.fetch(path + (p.toString() ? "?" + p.toString() : ""), Object.assign({ credentials: "same-origin" }, opts || {}));
  }
  function authHeaders() { return cgSession.headers(); }

  async function failure(r) {
    if (r.status === 401) { $("login").hidden = false; return new Error("请登录 Please sign in"); }
    let d = r.statusText;
    try { const b = await r.json(); d = (b.message || b.detail || d); if (typeof d !== "string") d = JSON.stringify(d); } catch (_) { /* keep */ }
    return new Error(`请求失败 Request failed (${r.status}): ${d}`);
  }
  async function api(path, params, method) {
    const r = await authFetch(path, params, { method: method || "GET" });
    if (!r.ok) throw await failure(r);
    return r.json();
  }
  const filt = () => ({ start: state.start, end: state.end, category: state.category, channel: state.channel, area: state.area });
  const fmt = (n) => Number(n).toLocaleString("zh-CN");

  // ---------------------------------------------------------------- map
  const map = CGMap.create("map", { preferCanvas: true, zoomSnap: 0.5, fit: false, headers: () => cgSession.headers() }).setView([31.9, 121.2], 11);
  map.attributionControl.addAttribution("citygrid · 单元网格 unit grid");
  const ramp = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"];
  const bands = [0.02, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9];  // = layers.analytics.heatmap.HEAT_BANDS
  const binColor = { 3: "#b2182b", 2: "#ef8a62", 1: "#fddbc7", "-1": "#d1e5f0", "-2": "#67a9cf", "-3": "#2166ac" };
  const binWords = { 3: "热点（99% 置信）", 2: "热点（95% 置信）", 1: "热点（90% 置信）", "-1": "冷点（90% 置信）", "-2": "冷点（95% 置信）", "-3": "冷点（99% 置信）" };
  // Emerging hot spot categories (the API's English keys) → Chinese words and colours
  const EMERGING = {
    "New Hot Spot": ["新增热点", "#d7191c"], "Consecutive Hot Spot": ["连续热点", "#f46d43"],
    "Intensifying Hot Spot": ["加强热点", "#a50026"], "Persistent Hot Spot": ["持续热点", "#fdae61"],
    "Diminishing Hot Spot": ["减弱热点", "#fee090"], "Sporadic Hot Spot": ["零星热点", "#e78ac3"],
    "Oscillating Hot Spot": ["振荡热点", "#c51b7d"], "Historical Hot Spot": ["历史热点", "#8c510a"],
    "New Cold Spot": ["新增冷点", "#2c7bb6"], "Consecutive Cold Spot": ["连续冷点", "#74add1"],
    "Intensifying Cold Spot": ["加强冷点", "#313695"], "Persistent Cold Spot": ["持续冷点", "#abd9e9"],
    "Diminishing Cold Spot": ["减弱冷点", "#e0f3f8"], "Sporadic Cold Spot": ["零星冷点", "#80cdc1"],
    "Oscillating Cold Spot": ["振荡冷点", "#35978f"], "Historical Cold Spot": ["历史冷点", "#01665e"],
  };
  const isCold = (cat) => /Cold/.test(cat || "");
  const emWord = (f) => f.name || (EMERGING[f.category] || ["其他趋势"])[0];
  const emColor = (cat) => (EMERGING[cat] || [null, "#999"])[1];
  let showCold = false;

  function heatColor(level) { let k = 0; for (let i = 0; i < bands.length; i++) if (level >= bands[i]) k = i; return ramp[k]; }
  function tileUrl(kind) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(filt())) if (v) p.set(k, v);
    if (city) p.set("city", city);
    return `/api/v1/supervisor/${kind}/tiles/{z}/{x}/{y}.mvt?` + p.toString();
  }
  const caseColor = (n) => (n >= 5 ? "#08519c" : n >= 2 ? "#4292c6" : "#9ecae1");
  function makeCases() {
    const t = L.vectorGrid.protobuf(tileUrl("cells"), {
      rendererFactory: L.canvas.tile, maxNativeZoom: 18, interactive: true,
      fetchOptions: { headers: authHeaders(), credentials: "same-origin" },
      vectorTileLayerStyles: { cases: (p) => ({ fill: true, fillColor: caseColor(p.count || p.count_from), fillOpacity: 0.6, color: "#08306b", weight: 0.3 }) },
    });
    t.on("click", (e) => {
      const p = e.layer.properties;
      L.popup().setLatLng(e.latlng).setContent(p.count != null ? `本网格 ${fmt(p.count)} 件` : `每格 ${p.count_from} 件${p.count_from === 5 ? "以上" : p.count_from === 2 ? "–4 件" : ""} · ${fmt(p.cells)} 个网格（放大查看单个网格）`).openOn(map);
    });
    return t;
  }
  function makeHeat() {
    return L.vectorGrid.protobuf(tileUrl("heat"), {
      rendererFactory: L.canvas.tile, maxNativeZoom: 18, interactive: false, pane: "overlayPane",
      fetchOptions: { headers: authHeaders(), credentials: "same-origin" },
      vectorTileLayerStyles: { heat: (p) => ({ fill: true, fillColor: heatColor(p.level), fillOpacity: 0.7, stroke: false, weight: 0 }) },
    });
  }
  const heatGroup = L.layerGroup();  // the tile layer inside is replaced when the filters change
  const layers = {
    heat: heatGroup,
    hot: L.geoJSON(null, {
      filter: (f) => showCold || f.properties.bin > 0,
      style: (f) => ({ color: "#555", weight: 0.3, fillOpacity: 0.75, fillColor: binColor[f.properties.bin] }),
      onEachFeature: (f, l) => l.bindTooltip(`${binWords[f.properties.bin] || ""} · ${f.properties.cells} 个网格`),
    }),
    cases: L.layerGroup(),  // vector tiles of the cases per cell, made when shown
    grid: L.geoJSON(null, { style: { color: "#666", weight: 0.5, fill: false } }),
    zones: L.geoJSON(null, {  // key zones coloured by whether their patrol frequency was met on the last day
      style: (f) => ({ color: f.properties.frequency_met ? "#1a9850" : "#d73027", weight: 2.5, fillOpacity: 0.15 }),
      pointToLayer: (f, ll) => L.circleMarker(ll, { radius: 6 }),
      onEachFeature: (f, l) => l.bindTooltip(`${esc(f.properties.name)} · 覆盖 ${(100 * f.properties.share).toFixed(0)}% · ${f.properties.frequency_met ? "达标" : "未达标"}`),
    }),
    emerging: L.geoJSON(null, {
      filter: (f) => showCold || !isCold(f.properties.category),
      style: (f) => ({ color: "#333", weight: 0.3, fillOpacity: 0.75, fillColor: emColor(f.properties.category) }),
      onEachFeature: (f, l) => l.bindTooltip(`${emWord(f.properties)} · ${f.properties.cells} 个网格`),
    }),
  };
  let heatTiles = null, bbox = null;
  function resetHeat() {
    if (heatTiles) heatGroup.removeLayer(heatTiles);
    heatTiles = makeHeat();
    window.heatReady = false;
    heatTiles.on("load", () => { window.heatReady = true; });
    heatGroup.addLayer(heatTiles);
  }
  layers.heat.addTo(map);
  layers.hot.addTo(map);
  L.control.layers(null, {
    "热力 Heat": layers.heat, "热点 Hot spots": layers.hot, "案件网格 Cases per cell": layers.cases,
    "时空热点趋势 Emerging hot spots": layers.emerging, "单元网格 Grid (zoom ≥ 15)": layers.grid,
    "重点区域巡查 Key zones (patrol)": layers.zones,
  }, { collapsed: window.innerWidth < 700 }).addTo(map);

  // Legends: the heat ramp, the hot spots (with the cold-spot toggle) and, while shown, the emerging layer.
  function control(pos, cls) { const c = L.control({ position: pos }); c.onAdd = () => { const d = L.DomUtil.create("div", "legend " + cls); L.DomEvent.disableClickPropagation(d); c.div = d; return d; }; return c; }
  const heatLegend = control("bottomleft", "legend-heat");
  const hotLegend = control("bottomright", "legend-hot");
  const emLegend = control("bottomright", "legend-emerging");
  heatLegend.addTo(map); hotLegend.addTo(map);
  // Each legend folds (<details>): open on a wide screen, folded on a phone so the map stays visible.
  const legendOpen = {};
  function fold(name, title, body, always) {
    const open = legendOpen[name] == null ? (always || window.innerWidth >= 700) : legendOpen[name];
    return `<details data-legend="${name}"${open ? " open" : ""}><summary><b>${title}</b></summary>${body}</details>`;
  }
  document.addEventListener("toggle", (ev) => { const d = ev.target; if (d.dataset && d.dataset.legend) legendOpen[d.dataset.legend] = d.open; }, true);
  heatLegend.div.innerHTML = fold("heat", "热力 案件密度", ramp.map((c, i) => `<i style="background:${c}"></i>${i === 0 ? "低" : i === ramp.length - 1 ? "高" : ""}`).join(""));
  function drawHotLegend() {
    const bins = showCold ? [3, 2, 1, -1, -2, -3] : [3, 2, 1];
    hotLegend.div.innerHTML = fold("hot", "热点分析 Hot spots", bins.map((b) => `<i style="background:${binColor[b]}"></i>${binWords[b]}`).join("<br>") +
      `<br><label><input type="checkbox" id="show-cold"${showCold ? " checked" : ""}> 显示冷点 Show cold spots</label>`);
    $("show-cold").addEventListener("change", (ev) => { showCold = ev.target.checked; redrawSpots(); });
  }
  drawHotLegend();
  let lastHot = null, lastEmerging = null;
  function drawEmergingLegend(fc) {
    const rows = (fc && fc.legend) || [];
    const shown = rows.filter((r) => showCold || !r.cold);
    const hidden = rows.filter((r) => r.cold).reduce((a, r) => a + r.cells, 0);
    emLegend.div.innerHTML = fold("emerging", "时空热点趋势 Emerging", (shown.length ? shown.map((r) =>
      `<i style="background:${emColor(r.category)}"></i>${esc(r.name || (EMERGING[r.category] || ["其他趋势"])[0])}（${fmt(r.cells)} 格）`).join("<br>") : "无显著趋势") +
      (!showCold && hidden ? `<br><small>冷点 ${fmt(hidden)} 格已隐藏</small>` : ""), true);
  }
  function redrawSpots() {
    drawHotLegend();
    if (lastHot) { layers.hot.clearLayers(); layers.hot.addData(lastHot); }
    if (lastEmerging) { layers.emerging.clearLayers(); layers.emerging.addData(lastEmerging); drawEmergingLegend(lastEmerging); }
  }
  const casesLegend = control("bottomleft", "legend-cases");
  map.on("overlayadd", (e) => {
    if (e.layer === layers.emerging) emLegend.addTo(map);
    if (e.layer === layers.cases) {
      casesLegend.addTo(map);
      casesLegend.div.innerHTML = fold("cases", "案件网格 每格件数", [[1, "1 件"], [2, "2–4 件"], [5, "5 件及以上"]]
        .map(([n, t]) => `<i style="background:${caseColor(n)}"></i>${t}`).join("<br>"), true);
    }
  });
  map.on("overlayremove", (e) => { if (e.layer === layers.emerging) emLegend.remove(); if (e.layer === layers.cases) casesLegend.remove(); });

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
    const fc = await api("/api/v1/supervisor/emerging", { end: state.end, category: state.category, channel: state.channel, area: state.area });
    lastEmerging = fc;
    layers.emerging.clearLayers(); layers.emerging.addData(fc); drawEmergingLegend(fc);
    const parts = (fc.legend || []).filter((r) => showCold || !r.cold).map((r) => `${r.name || (EMERGING[r.category] || ["其他趋势"])[0]} ${fmt(r.cells)} 格`);
    $("map-status").textContent = "时空热点趋势 Emerging：" + (fc.status === "too_few_cases" ? `案件太少，无法分析（${fmt(fc.cases)} 件）`
      : (parts.length ? parts.join("，") : "无显著趋势") + (fc.scale ? ` · 分析单元 ${fc.scale.unit_m} 米` : "") + ` · ${fc.start} 至 ${fc.end}`);
  }
  async function loadCases() {  // aggregated per cell as vector tiles, fetched only while the layer is shown
    if (!map.hasLayer(layers.cases) || layers.cases.loaded) return;
    layers.cases.clearLayers(); layers.cases.addLayer(makeCases()); layers.cases.loaded = true;
  }
  async function loadZones() {  // patrol coverage of the key zones on the window's last day
    if (!map.hasLayer(layers.zones)) return;
    const fc = await api("/api/v1/zones/coverage", { start: state.end, end: state.end });
    layers.zones.clearLayers(); layers.zones.addData(fc);
    const missed = fc.features.filter((f) => !f.properties.frequency_met).length;
    $("map-status").textContent = `重点区域 Key zones ${fc.features.length} · 漏巡 missed ${missed} (${state.end || "今日"})`;
  }
  map.on("overlayadd", (e) => { if (e.layer === layers.zones) loadZones().catch((err) => showError(err.message)); });
  map.on("overlayadd", (e) => { if (e.layer === layers.cases) loadCases().catch((err) => showError(err.message)); });
  map.on("overlayadd", (e) => { if (e.layer === layers.emerging) loadEmerging().catch((err) => showError(err.message)); });

  async function loadLayers(fit) {
    resetHeat();
    const hot = await api("/api/v1/supervisor/hotspots", Object.assign({ dissolve: true }, filt()));
    lastHot = hot;
    layers.hot.clearLayers(); layers.hot.addData(hot);
    layers.cases.loaded = false;
    loadCases().catch((e) => showError(e.message));
    loadEmerging().catch((e) => showError(e.message));
    const n = Object.entries(hot.summary || {}).filter(([k]) => showCold || !/冷点/.test(k)).reduce((a, [, b]) => a + b, 0);
    const c = hot.counts || { located: hot.total, unlocated: 0, merged: 0 };
    const st = $("map-status");
    st.dataset.mapCount = String(hot.total);
    st.dataset.unlocated = String(c.unlocated);
    st.textContent = `地图 ${fmt(hot.total)} 件 cases on the map` + (c.unlocated ? ` · 另有 ${fmt(c.unlocated)} 件无网格位置未上图` : "") +
      ` · 合计受理 ${fmt(hot.total + c.unlocated)} 件` + (c.merged ? ` · 并单 ${fmt(c.merged)} 件不重复计` : "") +
      ` · 显著热点网格 ${fmt(n)}` + (hot.status === "too_few_cases" ? " · 案件太少，未做热点分析" : (hot.scale ? ` · 分析单元 ${hot.scale.unit_m} 米` : ""));
    layers.hot.bringToFront();
    if (fit && bbox) map.fitBounds([[bbox[1], bbox[0]], [bbox[3], bbox[2]]], { padding: [10, 10] });
  }

  // ---------------------------------------------------------------- cards
  function pct(v) { return v == null ? "—" : (100 * v).toFixed(1) + "%"; }
  async function loadKpis() {
    const r = await api("/api/v1/supervisor/kpis", filt());
    const k = r.units.length ? r.units[0].kpis : {};
    $("cards").innerHTML = Object.entries(k).map(([name, v]) =>
      `<div class="card" data-kpi="${esc(name)}" data-value="${v.value == null ? "" : v.value}" title="${v.den == null ? "" : `${fmt(v.num)} / ${fmt(v.den)}`}"><div class="v">${v.kind === "count" ? fmt(v.value) : pct(v.value)}</div><div class="n">${esc(name)}</div><div class="e">${esc(v.en)}</div></div>`).join("");
  }

  // ---------------------------------------------------------------- charts (Apache ECharts, SVG: sharp at any DPI)
  const charts = {};
  function chartOf(id) {
    if (!charts[id]) {
      charts[id] = echarts.init($(id), null, { renderer: "svg" });
      new ResizeObserver(() => charts[id].resize()).observe($(id));
    }
    return charts[id];
  }
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
  const axisName = { nameTextStyle: { color: "#444", fontSize: 11 } };
  function drawDay(s) {
    const el = $("chart-day");
    const days = s.by_day.map((d) => d.key), vals = s.by_day.map((d) => d.n);
    chartOf("chart-day").setOption({
      animation: false, grid: { left: 48, right: 16, top: 30, bottom: days.length > 31 ? 68 : 48 },
      tooltip: { trigger: "axis", valueFormatter: (v) => `${v} 件` },
      xAxis: Object.assign({ type: "category", data: days, name: "日期", nameLocation: "middle", nameGap: 32, axisLabel: { hideOverlap: true, margin: 12, formatter: (v) => v.slice(5) } }, axisName),
      yAxis: Object.assign({ type: "value", name: "受理量（件）", minInterval: 1 }, axisName),
      dataZoom: days.length > 31 ? [{ type: "inside" }, { type: "slider", height: 14, bottom: 4 }] : [],
      series: [{ type: "line", name: "受理量", data: vals, showSymbol: days.length <= 31, lineStyle: { color: "#8b0000", width: 2 }, itemStyle: { color: "#8b0000" } }],
    }, true);
    el.dataset.drawn = String(days.length);
    el.dataset.total = String(vals.reduce((a, b) => a + b, 0));
  }
  function drawCat(s) {
    const el = $("chart-cat");
    const top = s.by_category.slice(0, 10);
    const rest = s.by_category.slice(10).reduce((a, c) => a + c.n, 0);
    const rows = top.map((c) => ({ name: c.name, n: c.n }));
    if (rest) rows.push({ name: "其他类别", n: rest });
    rows.reverse();  // largest on top
    chartOf("chart-cat").setOption({
      animation: false, grid: { left: 8, right: 40, top: 28, bottom: 40, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => `${v} 件` },
      xAxis: Object.assign({ type: "value", name: "件数（件）", nameLocation: "middle", nameGap: 30, minInterval: 1, axisLabel: { hideOverlap: true } }, axisName),
      yAxis: Object.assign({ type: "category", data: rows.map((r) => r.name), name: "类别", axisLabel: { width: 110, overflow: "truncate", interval: 0 } }, axisName),
      series: [{ type: "bar", data: rows.map((r) => r.n), itemStyle: { color: "#c0392b" }, label: { show: true, position: "right", fontSize: 10 } }],
    }, true);
    el.dataset.drawn = String(rows.length);
    el.dataset.total = String(s.by_category.reduce((a, c) => a + c.n, 0));
  }
  function drawChannel(s) {
    const el = $("chart-channel");
    chartOf("chart-channel").setOption({
      animation: false, grid: { left: 8, right: 40, top: 28, bottom: 32, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => `${v} 件` },
      xAxis: Object.assign({ type: "category", data: s.by_channel.map((c) => c.key), name: "渠道", axisLabel: { interval: 0, rotate: s.by_channel.length > 5 ? 30 : 0 } }, axisName),
      yAxis: Object.assign({ type: "value", name: "件数（件）", minInterval: 1 }, axisName),
      series: [{ type: "bar", data: s.by_channel.map((c) => c.n), itemStyle: { color: "#d46b08" }, label: { show: true, position: "top", fontSize: 10 } }],
    }, true);
    el.dataset.drawn = String(s.by_channel.length);
    el.dataset.total = String(s.by_channel.reduce((a, c) => a + c.n, 0));
  }
  async function loadSummary() {
    const s = await api("/api/v1/supervisor/summary", filt());
    if (!state.start) { state.start = s.start; state.end = s.end; $("start").value = s.start; $("end").value = s.end; }
    $("definition").textContent = `${s.definition}（${s.start} 至 ${s.end}：受理 ${fmt(s.counts.received)} 件，其中有网格位置 ${fmt(s.counts.located)} 件` +
      (s.counts.merged ? `；另有 ${fmt(s.counts.merged)} 件重复诉求已并单，不重复计` : "") + "）";
    $("definition").dataset.received = String(s.counts.received);
    drawDay(s); drawCat(s); drawChannel(s);
  }
  async function loadOptions() {
    const o = await api("/api/v1/supervisor/options", {});
    bbox = o.bbox;
    const add = (sel, value, label) => { const op = document.createElement("option"); op.value = value; op.textContent = label; sel.appendChild(op); };
    for (const c of o.categories) { names.category[c.key] = c.name; add($("category"), c.key, c.name); }
    for (const c of o.channels) add($("channel"), c, c);
    for (const a of o.areas) { names.area[a.code] = a.name; add($("area"), a.code, (a.level === "street" ? "　" : "") + a.name); }
  }

  // ---------------------------------------------------------------- bulletin centre
  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url; a.download = filename; document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
  const FORMAT_WORDS = { pdf: "PDF", xlsx: "Excel", html: "网页 HTML" };
  async function downloadBulletin(month, kind, button) {
    const label = button.textContent;
    const status = $("bulletin-status");
    button.disabled = true; button.textContent = "生成中…"; button.setAttribute("aria-busy", "true");
    status.innerHTML = `<progress></progress> 正在生成 ${esc(month)} 月报（${FORMAT_WORDS[kind]}），请稍候…`;
    try {
      const r = await authFetch(`/api/v1/bulletins/${month}.${kind}`, {});
      if (!r.ok) throw await failure(r);
      const blob = await r.blob();
      saveBlob(blob, `简报-${month}.${kind}`);
      status.textContent = `已下载 ${month} 月报（${FORMAT_WORDS[kind]}，${Math.max(1, Math.round(blob.size / 1024))} KB）`;
    } catch (e) {
      status.textContent = `下载失败：${e.message}`;
    } finally {
      button.disabled = false; button.textContent = label; button.removeAttribute("aria-busy");
    }
  }
  async function loadBulletins() {
    const r = await api("/api/v1/bulletins", {});
    const tb = $("bulletin-list").querySelector("tbody");
    tb.innerHTML = r.months.length ? "" : `<tr><td colspan="3">暂无可生成的月报</td></tr>`;
    for (const m of r.months) {
      const tr = document.createElement("tr");
      tr.dataset.month = m.month;
      tr.innerHTML = `<td>${esc(m.month.replace("-", " 年 "))} 月${m.complete ? "" : "（本月未完，初稿）"}</td><td>${fmt(m.received)}</td><td></td>`;
      for (const kind of ["pdf", "xlsx", "html"]) {
        const b = document.createElement("button");
        b.type = "button"; b.className = "dl dl-" + kind; b.textContent = FORMAT_WORDS[kind];
        b.addEventListener("click", () => downloadBulletin(m.month, kind, b));
        tr.lastChild.appendChild(b);
      }
      tb.appendChild(tr);
    }
  }

  // ---------------------------------------------------------------- alerts
  async function loadAlerts() {
    const r = await api("/api/v1/supervisor/alerts", { limit: 30 });
    const ul = $("alerts");
    ul.innerHTML = r.alerts.length ? "" : "<li>暂无预警 No alerts</li>";
    for (const a of r.alerts) {
      const li = document.createElement("li");
      const p = a.p_value == null ? "" : ` · p = ${a.p_value.toFixed(3)}`;
      const cls = a.category_code ? (names.category[a.category_code] || "其他类别") : "全部类别";
      li.innerHTML = `<b class="k-${esc(a.kind)}">${esc(a.label)}</b> ${esc(a.detected_on)} · ${esc(cls)} · ` +
        `观测 ${a.observed} / 期望 ${a.expected}${p} · ${a.cells} 个网格 ` +
        `<a href="#" role="button">专报 report</a>`;
      li.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); openReport(a.id); });
      ul.appendChild(li);
    }
  }
  async function openReport(id) {
    const r = await authFetch(`/api/v1/supervisor/alerts/${id}/report`, {});
    if (!r.ok) { showError((await failure(r)).message); return; }
    saveBlob(await r.blob(), `预警专报-${id}.html`);
  }

  async function refresh(first) {
    showError("");
    try {
      if (first) await loadOptions();
      await loadSummary();
      await Promise.all([loadLayers(first), loadKpis(), first ? loadBulletins() : null, loadAlerts()]);
      window.dashboardReady = true;
    } catch (e) { showError(e.message); window.dashboardError = e.message; }
  }

  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.start = $("start").value; state.end = $("end").value;
    state.category = $("category").value; state.channel = $("channel").value; state.area = $("area").value;
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
