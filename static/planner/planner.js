// Planner page: the layer catalog on a map, area/format/CRS choice, download (zh-CN first, English beside).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { config: null, catalog: null, overlays: {} };
  const map = L.map("map", { preferCanvas: true });
  map.setView([31.9, 121.2], 11);

  // Signed in (or not: public layers) by the session cookie, static/common/session.js.
  function signedIn(me) {
    $("who").textContent = me ? `${me.name} · ${me.role_label || me.role}` : "";
    $("signin").hidden = !!me; $("logout").hidden = !me;
  }
  $("logout").addEventListener("click", () => cgSession.signOut());
  $("ogc-url").textContent = location.origin + "/api/v1/ogc";

  // Kept for code not yet moved to the session (static/common/session.js): no token is kept any more; an
  // "Authorization: Bearer " + token() header is dropped by session.js and the session cookie counts.
  function token() { return ""; }
  function headers() { return cgSession.headers(); }
  function city() { return $("city").value; }
  function msg(text, cls) { $("msg").className = "msg " + (cls || ""); $("msg").textContent = text; }

  async function loadConfig() {
    const r = await fetch("/api/v1/config");
    state.config = await r.json();
    $("city").innerHTML = state.config.cities.map((c) =>
      `<option value="${c.slug}">${c.name}${c.name_en ? " " + c.name_en : ""}</option>`).join("");
    $("city").value = state.config.default_city;
    if (state.config.basemap_url) {
      L.tileLayer(state.config.basemap_url, { attribution: state.config.basemap_attribution }).addTo(map);
    }
  }

  function fitCity() {
    const c = state.config.cities.find((x) => x.slug === city());
    if (c) map.fitBounds([[c.bbox[1], c.bbox[0]], [c.bbox[3], c.bbox[2]]]);
  }

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

  // Preview: the selected layers' features in the current view (OGC API items, at most 2000).
  async function refreshOverlays() {
    const names = selected();
    for (const n of Object.keys(state.overlays)) {
      if (!names.includes(n)) { map.removeLayer(state.overlays[n]); delete state.overlays[n]; }
    }
    for (const n of names) {
      const url = `/api/v1/ogc/collections/${n}/items?limit=2000&city=${encodeURIComponent(city())}&bbox=${bboxParam()}`;
      const r = await fetch(url, { headers: { ...headers(), Accept: "application/geo+json" } });
      if (!r.ok) continue;
      const fc = await r.json();
      if (state.overlays[n]) map.removeLayer(state.overlays[n]);
      state.overlays[n] = L.geoJSON(fc, { style: { weight: 1, color: n === "grid_cells" ? "#1f5f8b" : "#c0392b", fillOpacity: 0.05 },
        pointToLayer: (f, ll) => L.circleMarker(ll, { radius: 3 }) }).addTo(map);
      document.body.dataset.preview = n + ":" + fc.features.length;
    }
  }

  async function download() {
    const names = selected();
    if (names.length !== 1) { msg("请选择一个图层 Pick one layer", "err"); return; }
    const p = new URLSearchParams({ format: $("format").value, crs: $("crs").value, city: city() });
    if ($("use-view").checked) p.set("bbox", bboxParam());
    if ($("area").value.trim()) p.set("area", $("area").value.trim());
    if ($("class").value.trim()) p.set("class", $("class").value.trim());
    msg("正在导出… Exporting…");
    const r = await fetch(`/api/v1/layers/${names[0]}/export?` + p.toString(), { headers: headers() });
    if (!r.ok) {
      let detail = r.status;
      try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
      msg("导出失败 Export failed: " + detail, "err");
      return;
    }
    const cd = r.headers.get("content-disposition") || "";
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/.exec(cd);
    const name = m ? decodeURIComponent(m[1]) : "export";
    const blob = await r.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    msg(`已下载 Downloaded ${name} (${r.headers.get("x-feature-count") || ""})`, "ok");
  }

  $("token").addEventListener("change", async () => {
    const t = $("token").value.trim();
    $("token").value = "";
    if (!t) return;
    const me = await cgSession.useToken(t);
    if (!me) msg("令牌无效 " + ((cgSession.tokenError && cgSession.tokenError.detail) || ""), "err");
    signedIn(me);
    loadCatalog();
  });
  $("city").addEventListener("change", () => { fitCity(); loadCatalog(); });
  $("download").addEventListener("click", download);
  map.on("moveend", () => { if (selected().length) refreshOverlays(); });

  cgSession.ready.then(signedIn).then(loadConfig).then(() => { fitCity(); return loadCatalog(); }).then(() => { document.body.dataset.ready = "1"; });
})();
