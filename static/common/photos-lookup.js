// The citizen's photos under the answer of the look-up on /public (case number + query code): what the
// publication policy lets the reporter see (layers/core/publication.py: lookup_photo_kinds), at signed
// addresses from POST /api/v1/public/photos, drawn by static/common/photos.js. It watches #status: when
// an answer (#status-text) appears there, the photos of the same case number and code follow it.
"use strict";
(function () {
  const status = document.getElementById("status");
  if (!status || !window.CasePhotos) return;
  let asked = "";
  async function load() {
    if (!document.getElementById("status-text")) return;  // a refusal, not an answer
    const body = { case_no: document.getElementById("case-no").value.trim(),
                   query_code: document.getElementById("query-code").value.trim() };
    let box = document.getElementById("lookup-photos");
    if (!box) {
      status.insertAdjacentHTML("afterend", `<div id="lookup-photos-wrap"><h3>照片 <span>Photos</span></h3><div id="lookup-photos"></div></div>`);
      box = document.getElementById("lookup-photos");
    }
    const key = JSON.stringify(body) + status.textContent;
    if (key === asked) return;
    asked = key;
    try {
      const r = await fetch("/api/v1/public/photos", { method: "POST", headers: { "Content-Type": "application/json" },
                                                       body: JSON.stringify(body) });
      if (!r.ok) throw new Error("HTTP " + r.status);
      CasePhotos.render(box, (await r.json()).photos, {});
    } catch (e) {
      box.textContent = "照片暂不可用 Photos unavailable";
    }
  }
  new MutationObserver(load).observe(status, { childList: true });
})();
