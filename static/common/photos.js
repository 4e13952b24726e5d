// Case photos in every case detail: thumbnails with their kind (上报照片 / 处置前 / 处置后 / 核查照片) and a
// viewer (click to enlarge, previous / next, arrow keys, Esc); the department's 处置反馈 with before/after
// photos (multipart POST /api/v1/cases/{id}/feedback). One global: window.CasePhotos.
//
//   CasePhotos.show(box, caseId, {headers, city})   list GET /api/v1/cases/{id}/photos into the element box
//   CasePhotos.render(box, photos, {headers})       draw a list already fetched (the citizen's look-up: signed URLs)
//   CasePhotos.feedbackFields()                     HTML of the before/after file inputs (#cp-before, #cp-after)
//   CasePhotos.sendFeedback(caseId, note, {headers, city})  → the answer; throws Error(status: message)
//   CasePhotos.verifyFields() / sendVerify(caseId, "ok"|"fail", note, opts)  核查 with photos (#cp-verify)
//
// Pictures are fetched with the caller's headers (a bearer token, or none with the session cookie) and shown
// as blobs. Everything served is a re-encoded copy without EXIF.
"use strict";
(function () {
  const KIND = {
    report: ["上报照片", "Reported"], before: ["处置前", "Before"], after: ["处置后", "After"],
    verification: ["核查照片", "On-site check"],
  };
  const STEP = {
    received: ["上报", "reported"], feedback: ["处置反馈", "feedback"], verify_ok: ["核查通过", "check passed"],
    verify_fail: ["核查不通过", "check failed"], onsite_check: ["核实", "confirmed on site"],
  };
  const CSS = `
.cp-strip{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0}
.cp-fig{margin:0;width:96px;text-align:center;font-size:12px;color:#334}
.cp-thumb{width:96px;height:72px;object-fit:cover;border-radius:4px;border:1px solid #c8d0d8;cursor:zoom-in;background:#eef2f5;display:block}
.cp-fig figcaption{margin-top:2px;line-height:1.2}
.cp-kind-before figcaption b{color:#8a5a00}.cp-kind-after figcaption b{color:#1d6b2f}.cp-kind-verification figcaption b{color:#0d4f8b}
.cp-empty{color:#667;font-size:13px}
#cp-viewer{position:fixed;inset:0;background:rgba(10,16,24,.92);z-index:10000;display:flex;flex-direction:column;align-items:center;justify-content:center}
#cp-viewer[hidden]{display:none}
#cp-viewer img{max-width:94vw;max-height:78vh;object-fit:contain;background:#222}
#cp-viewer-caption{color:#fff;margin:10px 8px;font-size:15px;text-align:center}
#cp-viewer button{position:absolute;background:rgba(255,255,255,.15);color:#fff;border:0;border-radius:6px;font-size:22px;padding:10px 14px;cursor:pointer}
#cp-prev{left:8px;top:45%}#cp-next{right:8px;top:45%}#cp-close{right:8px;top:8px}
.cp-fields label{display:block;margin:4px 0}
`;
  function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function fmt(t) { return t ? new Date(t).toLocaleString("zh-CN", { hour12: false }) : ""; }
  function style() {
    if (document.getElementById("cp-style")) return;
    const s = document.createElement("style");
    s.id = "cp-style";
    s.textContent = CSS;
    document.head.appendChild(s);
  }
  function hdrs(opts) {
    const h = opts && opts.headers;
    return (typeof h === "function" ? h() : h) || {};
  }
  function withCity(url, opts) {
    if (!opts || !opts.city) return url;
    return url + (url.includes("?") ? "&" : "?") + "city=" + encodeURIComponent(opts.city);
  }
  // zh-CN first; English when the page is switched to it (<html lang="en">).
  function en() { return (document.documentElement.lang || "").toLowerCase().startsWith("en"); }
  function kindLabel(p) { const k = KIND[p.kind] || [p.kind_label || "照片", p.kind_label_en || "Photo"]; return en() ? k[1] : k[0]; }
  function caption(p, i, n) {
    const step = STEP[p.step] ? STEP[p.step][en() ? 1 : 0] : (p.step_label || "");
    return `${kindLabel(p)} · ${step}${p.at ? " · " + fmt(p.at) : ""}${n ? ` · ${i + 1}/${n}` : ""}`;
  }

  const blobs = new Map();  // url → object URL (a photo is immutable)
  async function picture(url, opts) {
    if (blobs.has(url)) return blobs.get(url);
    const r = await fetch(withCity(url, opts), { headers: hdrs(opts), credentials: "same-origin" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const u = URL.createObjectURL(await r.blob());
    blobs.set(url, u);
    return u;
  }

  // ---- the viewer ------------------------------------------------------------------------------
  const view = { list: [], i: 0, opts: null };
  function viewer() {
    let v = document.getElementById("cp-viewer");
    if (v) return v;
    v = document.createElement("div");
    v.id = "cp-viewer";
    v.hidden = true;
    v.setAttribute("role", "dialog");
    v.setAttribute("aria-label", "照片 Photo");
    v.innerHTML = `<button type="button" id="cp-close" title="关闭 Close">✕</button>
      <button type="button" id="cp-prev" title="上一张 Previous">‹</button>
      <img id="cp-viewer-img" alt="">
      <div id="cp-viewer-caption"></div>
      <button type="button" id="cp-next" title="下一张 Next">›</button>`;
    document.body.appendChild(v);
    v.querySelector("#cp-close").onclick = close;
    v.querySelector("#cp-prev").onclick = () => step(-1);
    v.querySelector("#cp-next").onclick = () => step(1);
    v.addEventListener("click", (e) => { if (e.target === v) close(); });
    document.addEventListener("keydown", (e) => {
      if (v.hidden) return;
      if (e.key === "Escape") close();
      else if (e.key === "ArrowLeft") step(-1);
      else if (e.key === "ArrowRight") step(1);
    });
    return v;
  }
  function close() { viewer().hidden = true; }
  function step(d) {
    if (!view.list.length) return;
    view.i = (view.i + d + view.list.length) % view.list.length;
    draw();
  }
  async function draw() {
    const v = viewer();
    const p = view.list[view.i];
    const img = v.querySelector("#cp-viewer-img");
    v.querySelector("#cp-viewer-caption").textContent = caption(p, view.i, view.list.length);
    v.dataset.kind = p.kind;
    v.dataset.index = String(view.i);
    img.alt = kindLabel(p);
    img.removeAttribute("src");
    const many = view.list.length > 1;
    v.querySelector("#cp-prev").hidden = !many;
    v.querySelector("#cp-next").hidden = !many;
    try {
      const u = await picture(p.url, view.opts);
      if (view.list[view.i] === p) img.src = u;
    } catch (e) {
      v.querySelector("#cp-viewer-caption").textContent = caption(p, view.i, view.list.length) + " · 无法加载 cannot load";
    }
  }
  function open(list, i, opts) {
    Object.assign(view, { list, i, opts });
    viewer().hidden = false;
    draw();
  }

  // ---- thumbnails ------------------------------------------------------------------------------
  function render(box, photos, opts) {
    style();
    box.innerHTML = "";
    box.classList.add("cp-photos");
    const shown = (photos || []).filter((p) => p.thumb_url || p.external_url);
    box.dataset.count = String(shown.filter((p) => p.thumb_url).length);
    if (!shown.length) {
      const e = document.createElement("div");
      e.className = "cp-empty";
      e.textContent = "暂无照片 No photos";
      box.appendChild(e);
      return;
    }
    const strip = document.createElement("div");
    strip.className = "cp-strip";
    box.appendChild(strip);
    const viewable = shown.filter((p) => p.thumb_url);
    for (const p of shown) {
      const fig = document.createElement("figure");
      fig.className = `cp-fig cp-kind-${p.kind}`;
      fig.dataset.kind = p.kind;
      if (p.external_url) {  // an Open311 client's address: a link, never fetched here
        fig.innerHTML = `<a href="${esc(p.external_url)}" target="_blank" rel="noopener noreferrer">外部照片链接 External photo</a>
          <figcaption><b>${esc(kindLabel(p))}</b></figcaption>`;
        strip.appendChild(fig);
        continue;
      }
      const img = document.createElement("img");
      img.className = "cp-thumb";
      img.dataset.kind = p.kind;
      img.alt = kindLabel(p);
      img.title = caption(p);
      img.tabIndex = 0;
      const i = viewable.indexOf(p);
      img.onclick = () => open(viewable, i, opts);
      img.onkeydown = (e) => { if (e.key === "Enter") open(viewable, i, opts); };
      fig.appendChild(img);
      const cap = document.createElement("figcaption");
      cap.innerHTML = `<b>${esc(kindLabel(p))}</b>${p.merged_from ? "<br>并单 merged" : ""}`;
      fig.appendChild(cap);
      strip.appendChild(fig);
      picture(p.thumb_url, opts).then((u) => { img.src = u; img.dataset.loaded = "1"; })
        .catch(() => { img.alt = kindLabel(p) + " (无法加载)"; });
    }
  }

  async function show(box, caseId, opts) {
    if (!box) return null;
    box.dataset.caseId = String(caseId);
    let d;
    try {
      const r = await fetch(withCity(`/api/v1/cases/${caseId}/photos`, opts), { headers: hdrs(opts), credentials: "same-origin" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      d = await r.json();
    } catch (e) {
      box.innerHTML = `<div class="cp-empty">照片无法加载 Photos unavailable (${esc(e.message)})</div>`;
      return null;
    }
    if (box.dataset.caseId !== String(caseId)) return d;  // another case was opened meanwhile
    render(box, d.photos, opts);
    return d;
  }

  // ---- the department's feedback with photos -------------------------------------------------------
  function feedbackFields() {
    style();
    return `<div class="cp-fields">
      <label>处置前照片 <span>Before (可选 optional)</span> <input type="file" id="cp-before" accept="image/*" multiple></label>
      <label>处置后照片 <span>After</span> <input type="file" id="cp-after" accept="image/*" capture="environment" multiple></label>
    </div>`;
  }
  function files(fd, pairs) {
    for (const [field, id] of pairs) {
      const input = document.getElementById(id);
      for (const f of (input && input.files) || []) fd.append(field, f, f.name);
    }
  }
  async function sendFeedback(caseId, note, opts) {
    const fd = new FormData();
    if (note) fd.append("note", note);
    files(fd, [["before", "cp-before"], ["after", "cp-after"]]);
    return post(`/api/v1/cases/${caseId}/feedback`, fd, opts);
  }
  // 核查 from the back office (a supervisor on the operator page): photos of the site, as the inspector's.
  function verifyFields() {
    style();
    return `<div class="cp-fields"><label>核查照片 <span>Photos of the site (1–9)</span>
      <input type="file" id="cp-verify" accept="image/*" multiple></label></div>`;
  }
  const verifyKeys = new Map();  // one Idempotency-Key per case, result and note: a resend is never twice
  async function sendVerify(caseId, result, note, opts) {
    const fd = new FormData();
    fd.append("result", result);
    if (note) fd.append("note", note);
    files(fd, [["photos", "cp-verify"]]);
    const k = `${caseId}:${result}:${note || ""}`;
    if (!verifyKeys.has(k)) verifyKeys.set(k, crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
    return post(`/api/v1/cases/${caseId}/verify`, fd, opts, { "Idempotency-Key": verifyKeys.get(k) });
  }
  async function post(url, fd, opts, extra) {
    const r = await fetch(withCity(url, opts), {
      method: "POST", body: fd, headers: { ...hdrs(opts), ...(extra || {}) }, credentials: "same-origin" });
    let j = null;
    try { j = await r.json(); } catch (_) { j = null; }
    if (!r.ok) {
      let d = j && j.detail !== undefined ? j.detail : r.statusText;
      if (j && j.message) d = j.message;
      if (typeof d !== "string") d = JSON.stringify(d);
      const err = new Error(`${r.status}: ${d}`);
      err.status = r.status;
      throw err;
    }
    return j;
  }

  window.CasePhotos = { show, render, open, feedbackFields, sendFeedback, verifyFields, sendVerify, KIND };
})();
