// citygrid maps: one function every page uses to make its Leaflet map (window.CGMap).
//
//   const map = CGMap.create("map", { ...Leaflet map options, city: "haimen", headers: () => ({...}),
//                                      fit: true, center: [lat, lon], zoom: 13 });
//
// Returns the L.Map at once (the page adds its own layers as before); then, in the background:
// the base maps configured on the server (GET /api/v1/basemaps: 天地图, AMap/Tencent in GCJ-02, XYZ,
// offline MBTiles, or the reference map drawn from the city's own layers), a layer switcher, the
// attribution, a scale bar, the city's outline, and the city in view (unless fit: false).
// map.cg.ready is a Promise resolved when all that is done.
//
// GCJ-02 base maps (AMap, Tencent): the map then uses a CRS whose projection first shifts WGS-84 to
// GCJ-02 (the published formula, as gis/crs.py), so every overlay the page adds in WGS-84 lies on the
// right street of the base map, and clicks (map.on("click", e => e.latlng)) still give WGS-84.
// CGMap.wgs2gcj / gcj2wgs convert [lon, lat]; map.cg.crs says which datum the base map is in.
// Needs /static/vendor/leaflet/leaflet.js and /static/vendor/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js.
(function () {
  "use strict";

  // ---- GCJ-02 (port of gis/crs.py: Krasovsky ellipsoid, zero offset outside the China box) ----
  const A = 6378245.0, EE = 0.00669342162296594323, PI = Math.PI;
  function inChina(lon, lat) { return lon >= 72.004 && lon <= 137.8347 && lat >= 0.8293 && lat <= 55.8271; }
  function offset(lon, lat) {
    if (!inChina(lon, lat)) return [0, 0];
    const x = lon - 105.0, y = lat - 35.0;
    const sx = 0.2 * Math.sqrt(Math.abs(x));
    const common = (20.0 * Math.sin(6.0 * x * PI) + 20.0 * Math.sin(2.0 * x * PI)) * 2.0 / 3.0;
    let dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + sx + common;
    dlat += (20.0 * Math.sin(y * PI) + 40.0 * Math.sin(y / 3.0 * PI)) * 2.0 / 3.0;
    dlat += (160.0 * Math.sin(y / 12.0 * PI) + 320.0 * Math.sin(y * PI / 30.0)) * 2.0 / 3.0;
    let dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.5 * sx + common;
    dlon += (20.0 * Math.sin(x * PI) + 40.0 * Math.sin(x / 3.0 * PI)) * 2.0 / 3.0;
    dlon += (150.0 * Math.sin(x / 12.0 * PI) + 300.0 * Math.sin(x / 30.0 * PI)) * 2.0 / 3.0;
    const rad = lat / 180.0 * PI;
    const magic = 1.0 - EE * Math.sin(rad) ** 2, sqrtMagic = Math.sqrt(magic);
    dlat = dlat * 180.0 / ((A * (1.0 - EE)) / (magic * sqrtMagic) * PI);
    dlon = dlon * 180.0 / (A / sqrtMagic * Math.cos(rad) * PI);
    return [dlon, dlat];
  }
  function wgs2gcj(lon, lat) { const d = offset(lon, lat); return [lon + d[0], lat + d[1]]; }
  function gcj2wgs(lon, lat) {  // the exact inverse, iterated to 1e-12 degrees as gis.crs.gcj02_to_wgs84
    const d = offset(lon, lat);
    let x = lon - d[0], y = lat - d[1];
    for (let i = 0; i < 30; i++) {
      const f = wgs2gcj(x, y), ex = f[0] - lon, ey = f[1] - lat;
      x -= ex; y -= ey;
      if (Math.abs(ex) <= 1e-12 && Math.abs(ey) <= 1e-12) break;
    }
    return [x, y];
  }

  const SM = L.Projection.SphericalMercator;
  //: Web Mercator of GCJ-02 positions: overlays given in WGS-84 are drawn where GCJ-02 tiles show them.
  const GCJ_CRS = L.extend({}, L.CRS.EPSG3857, {
    code: "GCJ-02",
    projection: {
      bounds: SM.bounds,
      project(ll) { const g = wgs2gcj(ll.lng, ll.lat); return SM.project(L.latLng(g[1], g[0])); },
      unproject(p) { const g = SM.unproject(p); const w = gcj2wgs(g.lng, g.lat); return L.latLng(w[1], w[0]); },
    },
  });

  // Vector tiles (Leaflet.VectorGrid) whose failed fetches (offline, a refused layer) draw nothing instead
  // of an uncaught error.
  const SafeGrid = L.VectorGrid && L.VectorGrid.Protobuf.extend({
    _getVectorTilePromise(coords) {
      return L.VectorGrid.Protobuf.prototype._getVectorTilePromise.call(this, coords).catch(() => ({ layers: {} }));
    },
    // A tile that arrives after the layer left the map (a new token, another city) is dropped: Leaflet 1.9's
    // GridLayer would read the map it no longer has.
    _tileReady(coords, err, tile) {
      if (!this._map) return;
      L.VectorGrid.Protobuf.prototype._tileReady.call(this, coords, err, tile);
    },
  });

  // ---- small helpers ---------------------------------------------------------------------------
  function esc(s) { return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  let cached = null;  // one fetch of the sources and the page configuration per page
  function sources() {
    if (!cached) {
      cached = Promise.all([
        fetch("/api/v1/basemaps", { credentials: "same-origin" }).then((r) => r.ok ? r.json() : { sources: [] }).catch(() => ({ sources: [] })),
        fetch("/api/v1/config", { credentials: "same-origin" }).then((r) => r.ok ? r.json() : { cities: [] }).catch(() => ({ cities: [] })),
      ]).then(([b, c]) => ({ basemaps: b.sources && b.sources.length ? b.sources : [REFERENCE], config: c }));
    }
    return cached;
  }
  const REFERENCE = { name: "reference", title: "参考图（本市区划与网格） Reference map", kind: "reference", crs: "EPSG:4326", attribution: "", layers: [] };

  let styled = false;
  function addStyle() {
    if (styled) return;
    styled = true;
    const s = document.createElement("style");
    s.textContent = `
      .cg-label { background: none; border: 0; }
      .cg-label span { position: absolute; transform: translate(-50%, -50%); white-space: nowrap; pointer-events: none;
        font: 12px/1.2 "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif; color: #37474f;
        text-shadow: 0 0 3px #fff, 0 0 3px #fff, 0 0 2px #fff; }
      .cg-label-district span { font-size: 16px; font-weight: bold; color: #263238; letter-spacing: 2px; }
      .cg-label-street span { font-size: 13px; font-weight: bold; color: #455a64; }
      .cg-label-community span { font-size: 11px; color: #607d8b; }
      .cg-label-zone span { font-size: 11px; color: #a84300; }
      .leaflet-container { background: #f2efe9; }`;
    document.head.appendChild(s);
  }

  const AREA_STYLE = {
    district: { color: "#37474f", weight: 2.5, fill: true, fillColor: "#f7f4ee", fillOpacity: 0.6 },
    street: { color: "#78909c", weight: 1.5, dashArray: "6 3", fill: false },
    community: { color: "#b0bec5", weight: 0.8, fill: false },
  };

  // ---- the map -----------------------------------------------------------------------------------
  function create(el, options) {
    const opts = Object.assign({}, options || {});
    const own = {};
    for (const k of ["city", "headers", "fit", "center", "zoom", "switcher", "outline"]) { own[k] = opts[k]; delete opts[k]; }
    addStyle();
    const map = L.map(el, opts);
    if (map.attributionControl) map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
    map.setView(own.center || [32.0, 121.2], own.zoom || 10);
    L.control.scale({ imperial: false, maxWidth: 120 }).addTo(map);
    const panes = { labels: map.createPane("cgLabels"), outline: map.createPane("cgOutline") };
    panes.labels.style.zIndex = 450; panes.labels.style.pointerEvents = "none";
    panes.outline.style.zIndex = 390; panes.outline.style.pointerEvents = "none";

    const cg = { source: null, crs: "EPSG:4326", city: own.city || null, bases: {}, sources: [], map,
                 headers: typeof own.headers === "function" ? own.headers : () => ({}) };
    map.cg = cg;
    cg.outline = L.geoJSON(null, { pane: "cgOutline", renderer: L.svg({ pane: "cgOutline" }), interactive: false,
      style: { color: "#c0392b", weight: 3, opacity: 0.85, fill: false, dashArray: "10 4 2 4" } });
    cg.reference = L.layerGroup();
    cg.wgsTiles = [];  // tile layers in WGS-84 Web Mercator (shifted as a whole under the GCJ-02 CRS)

    // WGS-84 tiles under the GCJ-02 CRS: moved by the local GCJ-02 offset (metres, the same over a city).
    function shiftTiles() {
      for (const t of cg.wgsTiles) {
        const c = t.getContainer && t.getContainer();
        if (!c) continue;
        if (map.options.crs !== GCJ_CRS) { c.style.transform = ""; continue; }
        const z = map.getZoom(), ll = map.getCenter();
        const d = GCJ_CRS.latLngToPoint(ll, z).subtract(L.CRS.EPSG3857.latLngToPoint(ll, z));
        c.style.transform = `translate(${d.x.toFixed(2)}px, ${d.y.toFixed(2)}px)`;
      }
    }
    map.on("zoomend moveend viewreset layeradd", shiftTiles);

    function setCrs(datum) {
      const crs = datum === "GCJ-02" ? GCJ_CRS : L.CRS.EPSG3857;
      cg.crs = datum === "GCJ-02" ? "GCJ-02" : "EPSG:4326";
      map.getContainer().dataset.cgCrs = cg.crs;
      if (map.options.crs === crs) return;
      const c = map.getCenter(), z = map.getZoom();
      map.options.crs = crs;
      map._resetView(c, z, true);  // re-projects every layer (viewreset)
      shiftTiles();
    }

    function tileLayers(src) {
      const g = L.layerGroup();
      (src.layers || []).forEach((lay, i) => {
        g.addLayer(L.tileLayer(lay.url, { subdomains: lay.subdomains || "abc", maxNativeZoom: lay.max_zoom || 18, maxZoom: 20,
          attribution: i === 0 ? esc(src.attribution || "") : "", crossOrigin: false }));
      });
      return g;
    }

    function q(extra) { return "?city=" + encodeURIComponent(cg.city || "") + (extra || ""); }

    // The reference map: district, streets and communities (vector tiles) with their names, key zones with
    // theirs (staff who may read them), the grid from zoom 15.
    async function buildReference() {
      cg.reference.clearLayers();
      cg.wgsTiles = cg.wgsTiles.filter((t) => !t.cgReference);
      if (!L.vectorGrid) return;
      const mvt = (name, style, extra) => {
        const t = new SafeGrid(`/api/v1/tiles/${name}/{z}/{x}/{y}.mvt` + q(), Object.assign({
          rendererFactory: L.canvas.tile, interactive: false, maxNativeZoom: 20, maxZoom: 22,
          fetchOptions: { credentials: "same-origin" }, vectorTileLayerStyles: { [name]: style },
        }, extra || {}));
        t.cgReference = true;
        cg.wgsTiles.push(t);
        cg.reference.addLayer(t);
        return t;
      };
      mvt("admin_areas", (p) => AREA_STYLE[p.level] || AREA_STYLE.community, { attribution: "本市区划 city areas" });
      mvt("grid_cells", { color: "#90a4ae", weight: 0.5, opacity: 0.8, fill: false }, { minZoom: 15 });
      const labels = { district: L.layerGroup(), street: L.layerGroup(), community: L.layerGroup(), zone: L.layerGroup() };
      const label = (level, name, lat, lon) => L.marker([lat, lon], { pane: "cgLabels", interactive: false, keyboard: false,
        icon: L.divIcon({ className: "cg-label cg-label-" + level, html: `<span>${esc(name)}</span>`, iconSize: [0, 0] }) });
      try {
        const r = await fetch("/api/v1/basemaps/reference/labels" + q(), { credentials: "same-origin" });
        if (r.ok) (await r.json()).labels.forEach((x) => labels[x.level] && labels[x.level].addLayer(label(x.level, x.name, x.lat, x.lon)));
      } catch (e) { /* the base map stays without names */ }
      try {  // key zones: only for those who may read them (the catalog says so: no refused request)
        const hdrs = (() => { try { return cg.headers() || {}; } catch (e) { return {}; } })();
        const cat = await fetch("/api/v1/layers" + q(), { credentials: "same-origin", headers: hdrs });
        const may = cat.ok && (await cat.json()).layers.some((l) => l.name === "key_zones");
        const r = may ? await fetch("/api/v1/zones" + q(), { credentials: "same-origin", headers: hdrs }) : null;
        if (r && r.ok) {
          const fc = await r.json();
          const zones = L.geoJSON(fc, { interactive: false, style: { color: "#e67e22", weight: 1.5, dashArray: "4 3", fillOpacity: 0.06 },
            pointToLayer: (f, ll) => L.circleMarker(ll, { radius: 5, color: "#e67e22", weight: 1.5, fillOpacity: 0.2, interactive: false }) });
          zones.eachLayer((z) => {
            const c = z.getLatLng ? z.getLatLng() : z.getBounds().getCenter();
            labels.zone.addLayer(label("zone", z.feature.properties.name, c.lat, c.lng));
          });
          cg.reference.addLayer(zones);
        }
      } catch (e) { /* no zones */ }
      const show = () => {
        const z = map.getZoom();
        const want = { district: z <= 12, street: z >= 11 && z <= 15, community: z >= 14, zone: z >= 14 };
        for (const k of Object.keys(labels)) {
          if (want[k] && !cg.reference.hasLayer(labels[k])) cg.reference.addLayer(labels[k]);
          if (!want[k] && cg.reference.hasLayer(labels[k])) cg.reference.removeLayer(labels[k]);
        }
      };
      if (cg.showLabels) map.off("zoomend", cg.showLabels);
      cg.showLabels = show;
      map.on("zoomend", show);
      show();
      shiftTiles();
    }

    async function loadOutline() {
      cg.outline.clearLayers();
      try {
        const r = await fetch("/api/v1/basemaps/outline" + q(), { credentials: "same-origin" });
        if (r.ok) cg.outline.addData(await r.json());
      } catch (e) { /* no outline */ }
    }

    function fitCity(animate) {
      const c = (cg.config.cities || []).find((x) => x.slug === cg.city) || (cg.config.cities || [])[0];
      if (c) map.fitBounds([[c.bbox[1], c.bbox[0]], [c.bbox[3], c.bbox[2]]], { animate: !!animate });
    }

    // Another city (the planner's city picker): its outline, names and tiles, and the city in view.
    cg.setCity = async function (slug, fit) {
      cg.city = slug;
      await Promise.all([loadOutline(), buildReference()]);
      if (fit !== false) fitCity(false);
    };
    cg.fitCity = () => fitCity(true);
    // A WGS-84 position in the datum of the shown base map ([lon, lat]): what a user sees and picks.
    cg.toShown = (lon, lat) => (cg.crs === "GCJ-02" ? wgs2gcj(lon, lat) : [lon, lat]);
    cg.fromShown = (lon, lat) => (cg.crs === "GCJ-02" ? gcj2wgs(lon, lat) : [lon, lat]);

    cg.ready = sources().then(async ({ basemaps, config }) => {
      cg.config = config;
      cg.sources = basemaps;
      cg.city = cg.city || config.default_city || ((config.cities || [])[0] || {}).slug;
      const bases = {};
      for (const s of basemaps) {
        const layer = s.kind === "reference" ? L.layerGroup() : tileLayers(s);
        layer.cgSource = s;
        bases[esc(s.title)] = layer;
        cg.bases[s.name] = layer;
      }
      const overlays = { "城市轮廓 City outline": cg.outline, "区划·网格·地名 Areas, grid, names": cg.reference };
      map.on("baselayerchange", (e) => {
        const s = e.layer.cgSource;
        if (!s) return;
        cg.source = s;
        map.getContainer().dataset.cgBasemap = s.name;
        setCrs(s.crs);
        if (s.kind === "reference" && !map.hasLayer(cg.reference)) map.addLayer(cg.reference);
      });
      if (own.switcher !== false) cg.control = L.control.layers(bases, overlays, { collapsed: true, position: "topright" }).addTo(map);
      const first = basemaps[0];
      cg.source = first;
      setCrs(first.crs);
      map.getContainer().dataset.cgBasemap = first.name;
      cg.bases[first.name].addTo(map);
      cg.outline.addTo(map);
      if (first.kind === "reference") cg.reference.addTo(map);
      if (own.fit !== false) fitCity(false);
      await Promise.all([loadOutline(), buildReference()]);
      map.getContainer().dataset.cgReady = "1";
      return map;
    });
    // A tile layer of the page in WGS-84 Web Mercator (vector tiles of a layer): kept on its place under a
    // GCJ-02 base map like the reference map's tiles.
    cg.track = function (layer) {
      cg.wgsTiles.push(layer);
      layer.once("remove", () => { cg.wgsTiles = cg.wgsTiles.filter((t) => t !== layer); });
      shiftTiles();
      return layer;
    };
    // Choose a base map by name (the layer switcher does the same).
    cg.use = function (name) {
      const layer = cg.bases[name];
      if (!layer) return false;
      for (const l of Object.values(cg.bases)) if (l !== layer && map.hasLayer(l)) map.removeLayer(l);
      if (!map.hasLayer(layer)) map.addLayer(layer);
      map.fire("baselayerchange", { layer, name: layer.cgSource.title });
      return true;
    };
    return map;
  }

  window.CGMap = { create, wgs2gcj, gcj2wgs, GCJ_CRS, VectorTiles: SafeGrid };
})();
