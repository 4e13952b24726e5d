// 热点问题 (issue 15) on the supervisor's page: fills <section id="recurring"> with the hottest recurring
// problems (same problem, same place, same period) of the last run, their heat index and its parts, a
// representative text and a 专报 button, and per class whether it is 共性 (shared) or 个性 (local).
(function () {
  "use strict";
  const box = document.getElementById("recurring");
  if (!box) return;
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const city = new URLSearchParams(location.search).get("city");
  // Signed in by the session cookie: static/common/session.js sends it, with the CSRF token on writes.
  async function call(path, method) {
    const u = new URL(path, location.origin);
    if (city) u.searchParams.set("city", city);
    const r = await fetch(u, { method: method || "GET" });
    if (!r.ok) {
      let m = `HTTP ${r.status}`;
      try { const d = await r.json(); m = d.message || (typeof d.detail === "string" ? d.detail : m); } catch (e) { /* not JSON */ }
      throw new Error(m);
    }
    return (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
  }
  box.innerHTML = `<h2>热点问题 Recurring problems <button type="button" id="recurring-run" title="group the last 90 days' cases">挖掘 Mine</button></h2>
    <div id="recurring-status" class="status"></div>
    <table id="recurring-table"><thead><tr><th>热度 Heat</th><th>案件 Cases</th><th>天数 Days</th><th>重复来电 Repeat</th>
      <th>增长 Growth</th><th>类别 Class</th><th>代表性诉求 Representative text</th><th></th></tr></thead><tbody></tbody></table>
    <h3>共性/个性 Shared or local, per class</h3><div id="spread-measure" class="status"></div>
    <table id="spread-table"><thead><tr><th>类别 Class</th><th>案件 Cases</th><th>街道占比 Street share</th>
      <th>归一化熵 Entropy</th><th>判定 Verdict</th></tr></thead><tbody></tbody></table>
    <h3>答复质量待改进 Weak department replies</h3><div id="weak-status" class="status"></div><ul id="weak-replies"></ul>`;
  async function load() {
    try {
      // A #token=… link is exchanged for the session cookie asynchronously: ask only once it is set
      // (asking before raced the exchange and the section stayed "unavailable" on a 401).
      if (window.cgSession && !(await cgSession.ready)) {
        box.querySelector("#recurring-status").textContent = "请先登录 sign in first";
        window.recurringReady = true;
        return;
      }
      const r = await call("/api/v1/text/recurring?limit=10");
      const tb = box.querySelector("#recurring-table tbody");
      box.querySelector("#recurring-status").textContent = r.window_start
        ? `时段 Period ${r.window_start} – ${r.window_end}` : "尚未挖掘 not mined yet: press 挖掘";
      tb.innerHTML = r.groups.map((g) => `<tr data-id="${g.id}"><td><b>${g.heat.toFixed(2)}</b></td><td>${g.n_cases}</td>
        <td>${g.days}</td><td>${g.repeat_callers}</td><td>${g.growth}</td><td>${esc(g.category_name || g.category_code)}</td>
        <td>${esc(g.representative.slice(0, 80))}</td><td><button type="button" class="recurring-report">专报 report</button></td></tr>`).join("")
        || `<tr><td colspan="8">暂无热点问题 No recurring problems</td></tr>`;
      tb.querySelectorAll("button.recurring-report").forEach((b) => {
        b.onclick = async () => {
          let html;
          try { html = await call(`/api/v1/text/recurring/${b.closest("tr").dataset.id}/report`); } catch (e) {
            window.lastRecurringReportError = e.message; box.querySelector("#recurring-status").textContent = "专报失败 " + e.message; return;
          }
          window.lastRecurringReport = html;
          const w = window.open("", "_blank"); if (w) w.document.write(html);
        };
      });
      // 共性/个性 over the period of the groups shown (else the 90 days up to the newest case)
      const days = r.window_end ? Math.round((Date.parse(r.window_end) - Date.parse(r.window_start)) / 864e5) + 1 : 90;
      const s = await call(`/api/v1/text/spread?days=${days}` + (r.window_end ? `&until=${r.window_end}` : ""));
      box.querySelector("#spread-measure").textContent = `${s.window_start} – ${s.window_end} · ${s.measure}`;
      box.querySelector("#spread-table tbody").innerHTML = s.classes.slice(0, 15).map((c) => `<tr><td>${esc(c.category_name || c.category_code)}</td>
        <td>${c.cases}</td><td>${(c.street_share * 100).toFixed(0)}%</td><td>${c.entropy.toFixed(2)}</td><td>${esc(c.label)}</td></tr>`).join("");
      const w = await call("/api/v1/text/replies?limit=10");
      box.querySelector("#weak-status").textContent =
        `${w.scored} 条答复已评分, ${w.weak} 条低于 ${w.threshold} · ${w.scored} replies scored, ${w.weak} below ${w.threshold}`;
      box.querySelector("#weak-replies").innerHTML = w.replies.map((x) => `<li data-case="${esc(x.case_no)}"><b>${esc(x.case_no)}</b>
        ${esc(x.department || "")} · 得分 score ${x.score.toFixed(2)} (相关 ${x.relevance.toFixed(2)} / 完整 ${x.completeness.toFixed(2)} /
        及时 ${x.timeliness == null ? "—" : x.timeliness.toFixed(2)}) · ${esc(x.reasons)}<br><span class="status">${esc(x.reply.slice(0, 80))}</span></li>`).join("")
        || "<li>暂无 none</li>";
      window.recurringReady = true;
    } catch (e) {
      box.querySelector("#recurring-status").textContent = "热点问题不可用 unavailable: " + e.message;
      window.recurringReady = true;
    }
  }
  box.querySelector("#recurring-run").onclick = async () => {
    box.querySelector("#recurring-status").textContent = "挖掘中 mining…";
    try { await call("/api/v1/text/recurring/run?days=90", "POST"); } catch (e) { box.querySelector("#recurring-status").textContent = e.message; return; }
    window.recurringReady = false;
    load();
  };
  load();
})();
