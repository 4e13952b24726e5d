// 智能分拨 + 文本定位 (issue 15): on the operator's page, (a) the top 3 classes of the call's text with
// their probabilities and the proposed department, under the description (#text-suggest), a click
// picks the class in #category; (b) in the needs-location tab (#text-place), the places found in each
// queued case's text with the matched words and a confidence, and its top classes; the operator confirms
// a place (POST /api/v1/text/cases/{id}/place). Self-contained: needs only the two containers.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const pct = (p) => `${Math.round(p * 100)}%`;
  // Signed in by the session cookie: static/common/session.js sends it, with the CSRF token on writes.
  async function call(path, body) {
    const r = await fetch(path, {
      method: body ? "POST" : "GET",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    let d = null;
    try { d = await r.json(); } catch (e) { d = null; }
    if (!r.ok) {
      const det = d && (d.message || d.detail);
      throw new Error(typeof det === "string" ? det : `HTTP ${r.status}`);
    }
    return d;
  }
  function classChips(classes, pickable) {
    return classes.map((c, i) => {
      const dep = c.department ? ` → ${esc(c.department.name)}` : "";
      const path = esc((c.path || [c.name]).join(" / "));
      return `<button type="button" class="text-class${i === 0 ? " first" : ""}" data-code="${esc(c.code)}" title="${path}"
        ${pickable ? "" : "disabled"}>${esc(c.name)} <b>${pct(c.probability)}</b>${dep}</button>`;
    }).join(" ");
  }
  function marked(text, span) {
    if (!span) return esc(text);
    return esc(text.slice(0, span[0])) + `<mark>${esc(text.slice(span[0], span[1]))}</mark>` + esc(text.slice(span[1]));
  }

  // (a) the call form
  const box = $("text-suggest");
  let timer = null, seq = 0;
  async function suggest() {
    const d = ($("description") || {}).value || "";
    if (!box) return;
    if (d.trim().length < 4) { box.innerHTML = ""; return; }
    const my = ++seq;
    try {
      const r = await call("/api/v1/text/suggest", { description: d.trim(), address: (($("address") || {}).value || "").trim() || null });
      if (my !== seq) return;
      const conf = r.confident ? `<span class="ok">置信度高 confident (≥ ${pct(r.threshold)})</span>`
        : `<span class="muted">低于自动派遣阈值 ${pct(r.threshold)}: 请人工确认 below the automatic-dispatch threshold: confirm by hand</span>`;
      const pl = (r.places || []).filter((p) => p.kind !== "mention").slice(0, 2)
        .map((p) => `${esc(p.name)} (${esc(p.kind_label)} ${pct(p.confidence)})`).join("，");
      box.innerHTML = `<div class="text-suggest">建议类别 <span>Suggested classes</span>: ${classChips(r.classes, true)}<br>${conf}` +
        (pl ? `<br>文中地点 <span>Places in the text</span>: ${pl}` : "") + `</div>`;
      box.querySelectorAll("button[data-code]").forEach((b) => {
        b.onclick = () => {
          const sel = $("category");
          if (!sel) return;
          const opt = Array.from(sel.options).find((o) => o.value === b.dataset.code) ||
                      Array.from(sel.options).find((o) => o.value.startsWith(b.dataset.code));
          if (opt) { sel.value = opt.value; sel.dispatchEvent(new Event("change")); }
        };
      });
    } catch (e) {
      if (my === seq) box.innerHTML = `<div class="muted">分类建议不可用 No class suggestion: ${esc(e.message)}</div>`;
    }
  }
  if (box) {
    for (const id of ["description", "address"]) {
      const el = $(id);
      if (el) el.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(suggest, 500); });
    }
  }

  // (b) the needs-location queue
  const qbox = $("text-place");
  async function loadPlaces() {
    if (!qbox || (window.cgSession && !(await cgSession.ready))) return;
    try {
      const r = await call("/api/v1/text/needs-location?limit=50");
      const rows = r.cases.filter((c) => c.proposals.length || (c.classes && c.classes.length));
      qbox.innerHTML = `<h3>文本定位建议 <span>Places found in the text</span></h3>` + (rows.map((c) => {
        const props = c.proposals.map((p, i) => `<li>${esc(p.name)} <small>${esc(p.kind_label)}</small> 置信度 <b>${pct(p.confidence)}</b>
            ${p.cell_code ? `· 网格 ${esc(p.cell_code)}` : ""}
            <button type="button" class="text-confirm" data-id="${c.id}" data-name="${esc(p.name)}" data-kind="${esc(p.kind)}">确认定位 <span>Confirm</span></button></li>`).join("");
        const first = c.proposals[0];
        const cls = c.classes ? `<div>建议类别 <span>Classes</span>: ${classChips(c.classes, false)}</div>` : "";
        return `<div class="text-case" data-id="${c.id}"><b>${esc(c.case_no)}</b> ${esc(c.category_name || "")}
          <div class="muted">${marked(c.text.slice(0, 300), first && first.span[1] <= 300 ? first.span : null)}</div>
          ${props ? `<ol>${props}</ol>` : `<div class="muted">文中没有地名库中的地点 no gazetteer place in the text</div>`}${cls}</div>`;
      }).join("") || `<p class="muted">没有可从文本定位的案卷 no queued case names a known place</p>`);
      qbox.querySelectorAll("button.text-confirm").forEach((b) => {
        b.onclick = async () => {
          b.disabled = true;
          try {
            const res = await call(`/api/v1/text/cases/${b.dataset.id}/place`, { name: b.dataset.name, kind: b.dataset.kind });
            b.closest(".text-case").innerHTML = `<div class="ok">已定位 Placed: ${esc(res.case_no)} → 网格 cell ${esc(res.cell_code)} (${esc(res.name)})</div>`;
            const tab = document.querySelector('[data-tab="queue"]');
            if (tab) tab.click();  // the operator page reloads its queue
          } catch (e) {
            b.disabled = false;
            b.insertAdjacentHTML("afterend", ` <span class="err">${esc(e.message)}</span>`);
          }
        };
      });
    } catch (e) {
      qbox.innerHTML = `<div class="muted">文本定位不可用 Places from the text unavailable: ${esc(e.message)}</div>`;
    }
  }
  if (qbox) {
    const tab = document.querySelector('[data-tab="queue"]');
    if (tab) tab.addEventListener("click", () => setTimeout(loadPlaces, 50));
    window.citygridTextPlaces = loadPlaces;
  }
})();
