// The home page: links to the pages and the service's state, in words (static/common/i18n.js).
(function () {
  "use strict";
  const T = (zh, en) => I18N.t(zh, en);
  const KIND = { regular: ["规则网格", "regular grid"], imported: ["导入网格", "imported grid"] };
  let health = null, failed = null;

  function draw() {
    const box = document.getElementById("health");
    if (failed) { box.textContent = T("服务不可用：", "Unavailable: ") + failed; return; }
    if (!health) { box.textContent = T("加载中…", "loading…"); return; }
    const ok = health.database === "ok";
    const lines = [T("数据库：", "Database: ") + (ok ? T("正常", "up") : T("不可用", "down"))];
    if (health.postgis) lines.push(`PostGIS: ${health.postgis}`);
    for (const c of health.cities || []) {
      const name = I18N.lang === "en" ? (c.name_en || c.name) : c.name;
      let g = T("无网格", "no grid");
      if (c.grid) {
        const kind = KIND[c.grid.kind] ? T(...KIND[c.grid.kind]) : T("网格", "grid");
        g = T(`${c.grid.cells.toLocaleString()} 个单元网格（${kind}，${c.grid.cell_size ?? "—"} 米）`,
              `${c.grid.cells.toLocaleString()} grid cells (${kind}, ${c.grid.cell_size ?? "—"} m)`);
      }
      lines.push(`${name} · ${c.working_crs} · ${g}`);
    }
    box.textContent = lines.join("\n");
    box.dataset.state = "ready";
  }

  I18N.toggle(document.getElementById("lang"));
  I18N.onChange(draw);
  I18N.ready.then(() => { I18N.apply(document); draw(); });
  fetch("/api/v1/health").then((r) => r.json()).then((h) => { health = h; })
    .catch((e) => { failed = String(e.message || e); })
    .then(() => I18N.ready).then(draw);
})();
