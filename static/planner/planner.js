// Planner page: the layer catalog on a map, area/format/CRS choice, download (zh-CN first, English beside).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { config: null, catalog: null, overlays: {} };
  const map = CGMap.create("map", { preferCanvas: true, headers: () => headers() });
  window.plannerMap = map;  // for the page tests and the browser console

  // Signed in (or not: public layers) by the session cookie, static/common/session.js.
  function signedIn(me) {
    $("who").textContent = me ? `${me.name} · ${me.role_label || me.role}` : "";
    $("signin").hidden = !!me; $("logout").hidden = !me;
  }
  $("logout").addEventListener("click", () => cgSession.signOut());
  $("ogc-url").textContent = location.origin + "/api/v1/ogc";

  function headers() { return cgSession.headers(); }
  function city() { return $("city").value; }
  function msg(text, cls) { $("msg").className = "msg " + (cls || ""); $("msg").textContent = text; }

  async function loadConfig() {
    const r = await fetch("/api/v1/config");
    state.config = await r.json();
    $("city").innerHTML = state.config.cities.map((c) =>
      `<option value="${c.slug}">${c.name}${c.name_en ? " " + c.name_en : ""}</option>`).join("");
    $("city").value = state.config.default_city;
    await map.cg.ready;  // base map, the city's outline, the city in view
    if (map.cg.city !== city()) await map.cg.setCity(city());
  }

  // Another city: its outline, names and tiles, fitted.
  function fitCity() { return map.cg.setCity(city()); }

  async function loadCatalog() {
    const r = await fetch("/api/v1/layers?city=" + encodeURIComponent(city()), { headers: headers() });
    if (!r.ok) { $("layers").textContent = "无法加载目录 Cannot load the catalog: " + r.status; return; }
    state.catalog = await r.json();
    const keep = selected();
    $("layers").innerHTML = state.catalog.layers.map((l) =>
      `<div class="layer"><input type="checkbox" name="layer" value="${l.name}" id="l-${l.name}">
       <label for="l-${l.name}" style="margin:0">${l.title} <small>${l.title_en} · ${l.geometry_type}` +
      `${l.count !== undefined ? " · " + l.count : ""}${l.form === "public" ? " · 公开版 public form" : ""}</small></label></div>`
    ).join("");
    $("format").innerHTML = Object.entries(state.catalog.formats).map(([k, v]) => `<option value="${k}">${v}</option>`).join("");
    $("crs").innerHTML = state.catalog.crs.map((c) => `<option value="${c}">${c}${c === "GCJ-02" ? " (高德/腾讯 AMap, Tencent)" : ""}</option>`).join("");
    $("crs").value = "EPSG:4490";
    document.querySelectorAll("input[name=layer]").forEach((cb) => {
      cb.checked = keep.includes(cb.value);
      cb.addEventListener("change", refreshOverlays);
    });
    document.body.dataset.catalog = state.catalog.layers.some((l) => l.form === "full") ? "full" : "public";
  }

  function selected() { return [...document.querySelectorAll("input[name=layer]:checked")].map((x) => x.value); }

  function bboxParam() {
    const b = map.getBounds();
    return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(6)).join(",");
  }

  // Preview: the whole layer as vector tiles (GET /api/v1/tiles/{name}/{z}/{x}/{y}.mvt, the layer's public
  // or full form as the token allows), drawn by Leaflet.VectorGrid: every feature, at every zoom.
  const COLORS = ["#c0392b", "#1f5f8b", "#16a085", "#8e44ad", "#d35400", "#2c3e50"];
  const CountingGrid = CGMap.VectorTiles.extend({
    _getVectorTilePromise(coords) {
      return CGMap.VectorTiles.prototype._getVectorTilePromise.call(this, coords).then((json) => {
        let n = 0;
        for (const k in json.layers) n += json.layers[k].features.length;
        this.cgCounts[`${coords.z}:${coords.x}:${coords.y}`] = n;
        return json;
      });
    },
  });
  // Features in the tiles shown now (a feature crossing tiles counts in each).
  function counted(layer) {
    const z = map.getZoom(), v = Object.entries(layer.cgCounts).filter(([k]) => +k.split(":")[0] === Math.round(z));
    layer.cgTiles = v.length;
    layer.cgFeatures = v.reduce((a, [, n]) => a + n, 0);
  }
  function previewStyle(name, i) {
    const color = name === "grid_cells" ? "#1f5f8b" : COLORS[i % COLORS.length];
    return { color, weight: 1, opacity: 0.9, fill: true, fillColor: color, fillOpacity: 0.08, radius: 3 };
  }
  function showPreviewInfo() {
    const parts = Object.entries(state.overlays).map(([n, l]) => {
      const meta = (state.catalog.layers.find((x) => x.name === n) || {});
      return `${meta.title || n}：当前视图 ${l.cgTiles} 块矢量瓦片内共 ${l.cgFeatures} 个要素（跨瓦片者按块计${meta.count !== undefined ? "；全图层 " + meta.count + " 个" : ""}）`;
    });
    $("preview-info").textContent = parts.length ? "预览 Preview — " + parts.join("；") : "";
  }
  function refreshOverlays() {
    const names = selected();
    for (const n of Object.keys(state.overlays)) {
      if (!names.includes(n)) { map.removeLayer(state.overlays[n]); delete state.overlays[n]; }
    }
    names.forEach((n, i) => {
      if (state.overlays[n]) return;
      const style = previewStyle(n, i);
      const layer = new CountingGrid(`/api/v1/tiles/${n}/{z}/{x}/{y}.mvt?city=${encodeURIComponent(city())}`, {
        rendererFactory: L.canvas.tile, interactive: false, maxNativeZoom: 20, maxZoom: 22,
        fetchOptions: { headers: headers(), credentials: "same-origin" },
        vectorTileLayerStyles: { [n]: style },
      });
      layer.cgCounts = {}; layer.cgFeatures = 0; layer.cgTiles = 0;
      layer.on("tileunload", (e) => { delete layer.cgCounts[`${e.coords.z}:${e.coords.x}:${e.coords.y}`]; });
      layer.on("load", () => { counted(layer); document.body.dataset.preview = n + ":" + layer.cgFeatures; showPreviewInfo(); });
      state.overlays[n] = layer.addTo(map);
      map.cg.track(layer);
    });
    showPreviewInfo();
  }

  async function detail(r) {
    try { const b = await r.json(); return b.message || (Array.isArray(b.detail) ? b.detail.map((d) => d.msg).join("；") : b.detail) || r.status; }
    catch (e) { return r.status; }
  }
  function progress(job) {
    $("job").hidden = false;
    $("progress").value = job.percent || 0;
    const state = { running: "正在导出", done: "导出完成", failed: "导出失败" }[job.status] || "正在导出";
    $("job-text").textContent = `${state} ${job.percent || 0}%` +
      (job.total ? `（${job.rows} / ${job.total} 个要素）` : job.rows ? `（${job.rows} 个要素）` : "");
    document.body.dataset.job = job.status + ":" + (job.percent || 0);
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // A background export job (POST …/export-jobs): its progress shown until done, then its file downloaded.
  async function download() {
    const names = selected();
    if (names.length !== 1) { msg("请选择一个图层 Pick one layer", "err"); return; }
    const p = new URLSearchParams({ format: $("format").value, crs: $("crs").value, city: city() });
    if ($("use-view").checked) p.set("bbox", bboxParam());
    if ($("area").value.trim()) p.set("area", $("area").value.trim());
    if ($("class").value.trim()) p.set("class", $("class").value.trim());
    msg("正在导出… Exporting…");
    $("download").disabled = true;
    try {
      let r = await fetch(`/api/v1/layers/${names[0]}/export-jobs?` + p.toString(), { method: "POST", headers: headers() });
      if (!r.ok) { msg("导出失败 Export failed: " + await detail(r), "err"); $("job").hidden = true; return; }
      let job = await r.json();
      progress(job);
      while (job.status === "running") {
        await sleep(400);
        r = await fetch(job.status_url, { headers: headers() });
        if (!r.ok) { msg("导出失败 Export failed: " + await detail(r), "err"); return; }
        job = { ...job, ...(await r.json()) };
        progress(job);
      }
      if (job.status !== "done") { msg("导出失败 Export failed: " + (job.error || job.status), "err"); return; }
      r = await fetch(job.file_url, { headers: headers() });
      if (!r.ok) { msg("下载失败 Download failed: " + await detail(r), "err"); return; }
      const blob = await r.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = job.filename || "export";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
      msg(`已下载 Downloaded ${job.filename}（${job.rows} 个要素，${(blob.size / 1024).toFixed(0)} KB）`, "ok");
    } catch (e) {
      msg("导出失败 Export failed: " + e.message, "err");
    } finally { $("download").disabled = false; }
  }

  $("token").addEventListener("change", async () => {
    const t = $("token").value.trim();
    $("token").value = "";
    if (!t) return;
    const me = await cgSession.useToken(t);
    if (!me) msg("令牌无效 " + ((cgSession.tokenError && cgSession.tokenError.detail) || ""), "err");
    signedIn(me);
    for (const n of Object.keys(state.overlays)) { map.removeLayer(state.overlays[n]); delete state.overlays[n]; }
    loadCatalog().then(refreshOverlays);
    map.cg.setCity(city(), false);  // the reference map again: key zones for those who may read them
  });
  $("city").addEventListener("change", () => {
    for (const n of Object.keys(state.overlays)) { map.removeLayer(state.overlays[n]); delete state.overlays[n]; }
    fitCity(); loadCatalog().then(refreshOverlays);
  });
  $("download").addEventListener("click", download);

  cgSession.ready.then(signedIn).then(loadConfig).then(() => loadCatalog()).then(() => { document.body.dataset.ready = "1"; });
})();
