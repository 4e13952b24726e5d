// The administration page (/admin, administrators only): users — list, add (role, department, area,
// password), change role and scope, reset password, disable/enable, revoke or renew the bearer token
// (shown once) — and the roles, departments and areas to choose from. Everything through
// /api/v1/admin/… with the session (static/common/session.js); the API is the gate.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const st = { me: null, users: [], roles: [], departments: [], areas: [], target: null };
  const TOKEN_STATE = { valid: ["有效 valid", "ok"], expired: ["已过期 expired", "warn"], revoked: ["已吊销 revoked", "bad"] };
  const LEVEL = { district: "区县 district", street: "街道/镇 street", community: "社区/村 community" };

  function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function fmt(t) { return t ? new Date(t).toLocaleString("zh-CN", { hour12: false }) : "—"; }
  function showError(msg) { $("error").textContent = msg || ""; $("error").hidden = !msg; }
  function notice(msg) { $("notice").textContent = msg || ""; $("notice").hidden = !msg; }

  async function api(path, opts) {
    opts = opts || {};
    const init = { method: opts.method || "GET", headers: {} };
    if (opts.json !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(opts.json); }
    const r = await cgSession.fetch(path, init);
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      let d = data && (data.message || data.detail);
      if (typeof d !== "string") d = r.statusText || "HTTP " + r.status;
      const e = new Error(d);
      e.status = r.status;
      throw e;
    }
    return data;
  }

  const roleLabel = (r) => (st.roles.find((x) => x.role === r) || { label: "—" }).label;
  function deptLabel(code) {
    if (!code) return "—";
    const d = st.departments.find((x) => x.code === code || x.name === code);
    return d ? d.name : code;
  }
  function areaLabel(code) {
    if (!code) return "全市 whole city";
    const a = st.areas.find((x) => x.code === code);
    return a ? `${a.name}（${code}）` : code;
  }

  function fillSelect(sel, items, empty) {
    sel.innerHTML = (empty ? `<option value="">${esc(empty)}</option>` : "") +
      items.map(([v, label]) => `<option value="${esc(v)}">${esc(label)}</option>`).join("");
  }

  function fillChoices() {
    const roles = st.roles.map((r) => [r.role, r.label]);
    const depts = st.departments.map((d) => [d.code, d.name]);
    const areas = st.areas.map((a) => [a.code, `${a.name}（${(LEVEL[a.level] || "").split(" ")[0]}）`]);
    fillSelect($("add-role"), roles);
    fillSelect($("add-dept"), depts, "— 无 none");
    fillSelect($("add-area"), areas, "全市 whole city");
    fillSelect($("role-role"), roles);
    fillSelect($("role-dept"), depts, "— 无 none");
    fillSelect($("role-area"), areas, "全市 whole city");
    $("roles").innerHTML = st.roles.map((r) => `<li>${esc(r.label)}</li>`).join("");
    $("departments").innerHTML = st.departments.map((d) => `<li>${esc(d.name)}</li>`).join("") || "<li>—</li>";
    $("areas").innerHTML = st.areas.map((a) => `<li>${esc(a.name)} <small>${esc(a.code)} · ${esc(LEVEL[a.level] || "")}</small></li>`).join("");
    $("area-count").textContent = `${st.areas.length} 个`;
  }

  function renderUsers() {
    const rows = st.users.map((u) => {
      const [tok, cls] = TOKEN_STATE[u.token_state] || ["—", ""];
      const self = st.me && u.id === st.me.id;
      const buttons = [
        `<button type="button" data-act="password" data-id="${u.id}">重置密码 <span>Password</span></button>`,
        `<button type="button" data-act="role" data-id="${u.id}">修改 <span>Edit</span></button>`,
        u.active
          ? `<button type="button" data-act="disable" data-id="${u.id}"${self ? " disabled" : ""}>停用 <span>Disable</span></button>`
          : `<button type="button" data-act="enable" data-id="${u.id}">启用 <span>Enable</span></button>`,
        `<button type="button" data-act="revoke" data-id="${u.id}"${self || u.token_state === "revoked" ? " disabled" : ""}>吊销令牌 <span>Revoke</span></button>`,
        `<button type="button" data-act="token" data-id="${u.id}">重发令牌 <span>New token</span></button>`,
      ].join("");
      return `<tr data-user="${esc(u.name)}" class="${u.active ? "" : "disabled"}">
        <td>${esc(u.name)}${self ? " <small>(本人 you)</small>" : ""}</td><td>${esc(roleLabel(u.role))}</td>
        <td>${esc(deptLabel(u.department))}</td><td>${esc(areaLabel(u.area_code))}</td>
        <td data-field="status">${u.active ? '<span class="tag ok">启用 active</span>' : '<span class="tag bad">已停用 disabled</span>'}</td>
        <td data-field="password">${u.has_password ? `已设置 set <small>${esc(fmt(u.password_changed_at))}</small>` : '<span class="tag warn">未设置 none</span>'}</td>
        <td data-field="token"><span class="tag ${cls}">${esc(tok)}</span> <small>至 ${esc(fmt(u.token_expires_at))}</small></td>
        <td>${esc(fmt(u.last_used_at))}</td><td class="actions">${buttons}</td></tr>`;
    });
    document.querySelector("#users tbody").innerHTML = rows.join("");
    $("user-count").textContent = `${st.users.length} 人`;
  }

  async function loadUsers() {
    st.users = await api("/api/v1/admin/users");
    renderUsers();
  }

  const byId = (id) => st.users.find((u) => u.id === id);

  document.querySelector("#users tbody").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-act]");
    if (!b) return;
    const id = Number(b.dataset.id), u = byId(id), act = b.dataset.act;
    showError(""); notice("");
    if (act === "password") {
      st.target = id; $("pw-user").textContent = u.name; $("pw-panel").hidden = false; $("pw-new").value = ""; $("pw-new").focus();
      return;
    }
    if (act === "role") {
      st.target = id; $("role-user").textContent = u.name; $("role-panel").hidden = false;
      $("role-role").value = u.role; $("role-dept").value = u.department || ""; $("role-area").value = u.area_code || "";
      return;
    }
    b.disabled = true;
    try {
      if (act === "token") {
        const out = await api(`/api/v1/admin/users/${id}/token`, { method: "POST", json: {} });
        notice("");
        $("add-result").innerHTML = `<div class="ok">${esc(u.name)} 的新令牌（只显示这一次，旧令牌已失效）New token, shown once: ` +
          `<code class="token" id="new-token">${esc(out.token)}</code></div>`;
      } else {
        await api(`/api/v1/admin/users/${id}/${act}`, { method: "POST" });
        notice({ disable: `已停用 ${u.name} disabled`, enable: `已启用 ${u.name} enabled`, revoke: `已吊销 ${u.name} 的令牌 token revoked` }[act]);
      }
      await loadUsers();
    } catch (e) { showError(e.message); b.disabled = false; }
  });

  $("pw-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const u = byId(st.target);
    try {
      await api(`/api/v1/admin/users/${st.target}/password`, { method: "POST", json: { password: $("pw-new").value } });
      $("pw-new").value = ""; $("pw-panel").hidden = true;
      notice(`已为 ${u.name} 设置新密码 password set`);
      await loadUsers();
    } catch (e) { showError(e.message); }
  });
  $("pw-cancel").onclick = () => { $("pw-new").value = ""; $("pw-panel").hidden = true; };

  $("role-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const u = byId(st.target);
    const dept = $("role-dept").value, area = $("role-area").value;
    const body = { role: $("role-role").value, clear: [] };
    if (dept) body.department = dept; else body.clear.push("department");
    if (area) body.area_code = area; else body.clear.push("area_code");
    try {
      await api(`/api/v1/admin/users/${st.target}`, { method: "PATCH", json: body });
      $("role-panel").hidden = true;
      notice(`已修改 ${u.name} updated`);
      await loadUsers();
    } catch (e) { showError(e.message); }
  });
  $("role-cancel").onclick = () => { $("role-panel").hidden = true; };

  $("add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(""); notice("");
    const body = { name: $("add-name").value.trim(), role: $("add-role").value };
    if ($("add-dept").value) body.department = $("add-dept").value;
    if ($("add-area").value) body.area_code = $("add-area").value;
    if ($("add-password").value) body.password = $("add-password").value;
    try {
      const out = await api("/api/v1/admin/users", { method: "POST", json: body });
      $("add-password").value = ""; $("add-name").value = "";
      $("add-result").innerHTML = `<div class="ok">已新建 ${esc(out.name)}（${esc(roleLabel(out.role))}）Added. ` +
        `令牌只显示这一次 Token, shown once: <code class="token" id="new-token">${esc(out.token)}</code></div>`;
      await loadUsers();
    } catch (e) { $("add-result").innerHTML = `<div class="err">${esc(e.message)}</div>`; }
  });

  $("logout").onclick = () => cgSession.signOut();

  async function start() {
    const me = await cgSession.ready;
    if (!me) { $("signin").hidden = false; showError("请先登录 Please sign in."); document.body.dataset.ready = "1"; return; }
    st.me = me;
    $("who").textContent = `${me.name} · ${me.role_label || ""}`;
    $("logout").hidden = false;
    if (me.role !== "admin") { showError("仅系统管理员可用 Administrators only."); document.body.dataset.ready = "1"; return; }
    try {
      const [roles, depts, areas] = await Promise.all([api("/api/v1/admin/roles"), api("/api/v1/departments"),
                                                        api("/api/v1/admin/areas")]);
      st.roles = roles.roles; st.departments = depts.departments; st.areas = areas.areas;
      fillChoices();
      await loadUsers();
      $("main").hidden = false;
    } catch (e) { showError(e.message); }
    document.body.dataset.ready = "1";
  }
  start();
})();
