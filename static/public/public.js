// /public: the citizen's page (zh-CN first, English beside). Report a problem with its place picked on a map
// (tap, drag the pin, or search an address through the gazetteer), follow it, rate it; public notices.
//
// The place is sent in the datum of the base map shown: GCJ-02 on a GCJ-02 map (AMap/Tencent, as WeChat
// gives positions), WGS-84 otherwise (crs=EPSG:4326). For tests and embedding: window.CGPublic.pick(lat, lon)
// puts the pin at a WGS-84 position exactly as a tap there would; window.CGPublic.map is the Leaflet map
// (map.latLngToContainerPoint gives the pixel to click); window.CGPublic.picked() the values to be sent.
(function () {
  "use strict";
  const API = "/api/v1/public";
  const $ = (id) => document.getElementById(id);
  function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function fmt(t) { return t ? new Date(t).toLocaleString("zh-CN", { hour12: false }) : "—"; }
  async function call(path, opts) {
    const r = await fetch(API + path, opts);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      let detail = body && body.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || "").join("；");
      const e = new Error((body && body.message) || detail || ("HTTP " + r.status));
      e.status = r.status;
      throw e;
    }
    return body;
  }

  // ---- tabs ---------------------------------------------------------------------------------------
  const TABS = { report: "tab-report", lookup: "tab-lookup", notices: "tab-notices" };
  function showTab(name) {
    for (const [panel, tab] of Object.entries(TABS)) {
      $(panel).hidden = panel !== name;
      $(tab).setAttribute("aria-selected", panel === name ? "true" : "false");
    }
    if (name === "report" && map) setTimeout(() => map.invalidateSize(), 0);
  }
  for (const [panel, tab] of Object.entries(TABS)) $(tab).addEventListener("click", () => { showTab(panel); history.replaceState(null, "", "#" + panel); });

  // ---- the map picker ---------------------------------------------------------------------------
  const map = CGMap.create("pick-map", { zoomControl: true });
  let pin = null;
  function setPicked(latlng, how) {
    if (!pin) {
      pin = L.marker(latlng, { draggable: true, autoPan: true, title: "问题位置 The place", alt: "问题位置" }).addTo(map);
      pin.on("dragend", () => setPicked(pin.getLatLng(), "drag"));
    } else {
      pin.setLatLng(latlng);
    }
    const shown = map.cg.toShown(latlng.lng, latlng.lat);  // GCJ-02 on a GCJ-02 map, else WGS-84
    $("lon").value = shown[0].toFixed(7);
    $("lat").value = shown[1].toFixed(7);
    $("crs").value = map.cg.crs;
    $("picked").className = "picked ok";
    $("picked").textContent = (how === "search" ? "已定位到搜索结果，可拖动标记微调 " : "已选定位置，可拖动标记微调 ") +
      "Place picked; drag the pin to adjust";
    $("pick-map").dataset.picked = "1";
  }
  function clearPicked() {
    if (pin) { map.removeLayer(pin); pin = null; }
    $("lon").value = ""; $("lat").value = ""; $("crs").value = map.cg.crs;
    $("picked").className = "picked";
    $("picked").textContent = "请在地图上点击问题所在位置，可拖动标记微调 Tap the map where the problem is; drag the pin to adjust";
    delete $("pick-map").dataset.picked;
  }
  map.on("click", (e) => setPicked(e.latlng, "tap"));
  const wanted = location.hash.replace("#", "");
  if (wanted.startsWith("notice-")) showTab("notices");
  else if (TABS[wanted]) showTab(wanted);
  // A different base map (another datum): the pin stays on its place, its values follow the datum.
  map.on("baselayerchange", () => { if (pin) setPicked(pin.getLatLng(), "tap"); else $("crs").value = map.cg.crs; });

  $("locate").addEventListener("click", () => {
    if (!navigator.geolocation) { $("picked").textContent = "此浏览器无法定位 This browser cannot locate you"; return; }
    navigator.geolocation.getCurrentPosition((p) => {  // the browser gives WGS-84
      const ll = L.latLng(p.coords.latitude, p.coords.longitude);
      setPicked(ll, "gps");
      map.setView(ll, Math.max(map.getZoom(), 16));
    }, () => { $("picked").textContent = "无法获取当前位置，请在地图上点击 Could not get your position: tap the map"; });
  });

  // ---- address search (the gazetteer) ---------------------------------------------------------------
  async function searchPlaces() {
    const q = $("place-q").value.trim();
    const out = $("place-results");
    if (!q) { out.innerHTML = ""; return; }
    out.innerHTML = "<li>搜索中… Searching…</li>";
    try {
      const d = await call("/places?" + new URLSearchParams({ q, crs: "EPSG:4326", city: map.cg.city || "" }));
      if (!d.places.length) { out.innerHTML = "<li>未找到该地名，请在地图上点击 Nothing found: tap the map</li>"; return; }
      out.innerHTML = d.places.map((p, i) =>
        `<li><button type="button" data-i="${i}">${esc(p.name)} <small>${esc(p.kind)}</small></button></li>`).join("");
      out.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => {
        const p = d.places[+b.dataset.i];
        const ll = L.latLng(p.lat, p.lon);
        setPicked(ll, "search");
        map.setView(ll, Math.max(map.getZoom(), 16));
        if (!$("address").value.trim()) $("address").value = p.name;
        out.innerHTML = "";
      }));
      out.dataset.count = String(d.places.length);
    } catch (e) { out.innerHTML = `<li class="err">搜索失败 Search failed: ${esc(e.message)}</li>`; }
  }
  $("place-search").addEventListener("click", searchPlaces);
  $("place-q").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); searchPlaces(); } });

  // ---- submit ---------------------------------------------------------------------------------------
  $("report-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("report-result");
    if (!$("category").value) {
      out.className = "msg err"; out.textContent = "请选择问题类别 Choose the kind of problem"; $("category").focus(); return;
    }
    if (!$("description").value.trim()) {
      out.className = "msg err"; out.textContent = "请填写问题描述 Please describe the problem"; $("description").focus(); return;
    }
    if (!$("lon").value && !$("address").value.trim()) {
      out.className = "msg err"; out.textContent = "请在地图上选择位置或填写地址 Pick the place on the map or give an address"; return;
    }
    const fd = new FormData($("report-form"));
    for (const k of ["lon", "lat", "address", "name", "phone"]) if (!fd.get(k)) fd.delete(k);
    if (!fd.get("lon")) fd.delete("crs");
    if (!$("photo").files.length) fd.delete("photo");
    $("submit").disabled = true;
    try {
      const d = await call("/requests", { method: "POST", body: fd });
      out.className = "msg ok";
      out.innerHTML = `已受理 Received. 案卷编号 Case number: <span class="code" id="new-case-no">${esc(d.case_no)}</span><br>
        查询码 Query code: <span class="code" id="new-query-code">${esc(d.query_code)}</span>
        <br><small>请保存编号和查询码，用于在“进度查询”中查询 Keep both to follow your request.</small>`;
      $("case-no").value = d.case_no; $("query-code").value = d.query_code;
      // The form is cleared for the next report (the category stays; the place and the personal data go).
      const category = $("category").value;
      $("report-form").reset();
      $("category").value = category;
      $("place-q").value = ""; $("place-results").innerHTML = "";
      clearPicked();
      $("report-form").dataset.cleared = "1";
    } catch (e) {
      out.className = "msg err"; out.textContent = "提交失败 Not sent: " + e.message;
    } finally { $("submit").disabled = false; }
  });

  // ---- look-up and rating --------------------------------------------------------------------------
  // A refusal of the look-up: 429 = too many wrong query codes (the message says when to retry).
  function showRefusal(e, what) {
    $("status").className = "msg err";
    $("rate-form").hidden = true;
    if (e.status === 429) {
      $("status").innerHTML = "<strong>查询已暂停 Look-ups paused</strong><div id=\"limit-msg\"></div>";
      $("limit-msg").textContent = e.message;
    } else {
      $("status").textContent = what + e.message;
    }
  }
  function showStatus(d) {
    $("status").className = "msg ok";
    $("status").innerHTML = `<div>案卷 Case <strong>${esc(d.case_no)}</strong> · ${esc(d.category || "")}</div>
      <div>状态 Status: <strong id="status-text">${esc(d.status)}</strong></div>
      <div>受理 Received ${fmt(d.received_at)} · 办结时限 Due ${fmt(d.due_at)}${d.closed_at ? " · 办结 Closed " + fmt(d.closed_at) : ""}</div>
      ${d.rating ? `<div>评价 Rating: <span id="rating-text">${esc(d.rating)}</span></div>` : ""}
      ${d.merged_into ? `<div>已并入 Merged into ${esc(d.merged_into)}</div>` : ""}
      <ol class="steps">${d.steps.map((s) => `<li>${fmt(s.at)} — ${esc(s.step)}</li>`).join("")}</ol>`;
    $("rate-form").hidden = !d.can_rate;
  }
  $("lookup-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      showStatus(await call("/status", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ case_no: $("case-no").value.trim(), query_code: $("query-code").value.trim() }) }));
    } catch (e) { showRefusal(e, "查询失败 Not found: "); }
  });
  $("rate-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      showStatus(await call("/rate", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ case_no: $("case-no").value.trim(), query_code: $("query-code").value.trim(),
          rating: $("rating").value, comment: $("comment").value || null }) }));
    } catch (e) {
      if (e.status === 429) showRefusal(e, "");
      else { $("status").className = "msg err"; $("status").textContent = "评价失败 Not rated: " + e.message; }
    }
  });

  // ---- notices, categories, the WeChat sign-in ------------------------------------------------------
  async function loadNotices() {
    try {
      const d = await call("/notices");
      $("notice-list").innerHTML = d.notices.length ? d.notices.map((n) =>
        `<div class="notice" id="notice-${esc(n.id)}"><strong>${esc(n.title)}</strong> <time>${fmt(n.published_at)}</time><div>${esc(n.body)}</div></div>`
      ).join("") : "暂无公告 No notices";
    } catch (e) { $("notice-list").textContent = "公告加载失败 Could not load notices: " + e.message; }
  }
  async function loadCategories() {
    const d = await call("/categories");
    // No class chosen for the citizen: the list starts empty and the form needs a choice.
    $("category").innerHTML = `<option value="">请选择问题类别 Choose the kind of problem</option>` + d.categories.map((c) =>
      `<option value="${esc(c.code)}">${esc(c.path.join(" / "))} ${esc(c.name_en || "")}</option>`).join("");
    $("category").dataset.loaded = "1";
  }
  // Opened from the WeChat account's menu: signed in by WeChat web authorisation (snsapi_base), the
  // citizen's own cases are listed without a query code. Outside WeChat nothing changes.
  async function loadMyCases() {
    let d;
    try { d = await call("/wechat/me"); } catch (e) { return; }
    if (!d.signed_in) {
      if (d.authorize && /MicroMessenger/i.test(navigator.userAgent) && !sessionStorage.getItem("cg_wx_tried")) {
        sessionStorage.setItem("cg_wx_tried", "1");  // once: a refused sign-in never loops
        location.href = d.authorize;
      }
      return;
    }
    $("my-cases").hidden = false;
    $("my-case-list").innerHTML = d.cases.length ? d.cases.map((c) =>
      `<div class="notice my-case"><strong class="code">${esc(c.case_no)}</strong> · ${esc(c.category || "")}
        <div>状态 Status: <strong>${esc(c.status)}</strong> · 受理 Received ${fmt(c.received_at)}</div>
        ${c.reply ? `<div>答复 Reply: ${esc(c.reply)}</div>` : ""}
        ${c.rating ? `<div>评价 Rating: ${esc(c.rating)}</div>` : (c.can_rate ? "<div>可在公众号回复“满意”“基本满意”或“不满意”评价 Rate it in the chat</div>" : "")}
      </div>`).join("") : "暂无诉求 No requests yet";
  }

  window.CGPublic = {
    map,
    /** Put the pin at a WGS-84 position (as a tap there would). */
    pick(lat, lon) { setPicked(L.latLng(lat, lon), "tap"); },
    /** What the form will send: {lon, lat, crs} (strings; empty when nothing is picked). */
    picked() { return { lon: $("lon").value, lat: $("lat").value, crs: $("crs").value }; },
    showTab,
  };
  map.cg.ready.then(() => { $("crs").value = map.cg.crs; document.body.dataset.mapReady = "1"; });

  loadMyCases();
  loadNotices();
  loadCategories().catch((e) => { $("report-result").className = "msg err"; $("report-result").textContent = e.message; });
})();
