// The sign-in page (/login?next=/operator): a user name and password open a session (an HttpOnly cookie,
// POST /api/v1/auth/login), then the page named by ?next= (only a path of this site), else the page of
// the user's role. A refusal is shown as the API words it (429: how long to wait).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const HOME = { operator: "/operator", department: "/operator", inspector: "/inspector", supervisor: "/supervisor",
                 planner: "/planner", admin: "/admin" };

  function nextPath(user) {
    const next = new URLSearchParams(location.search).get("next") || "";
    // only a path of this site: never //other.host or a scheme (an open redirect)
    if (/^\/(?![\/\\])[^\s]*$/.test(next) && !next.startsWith("/login")) return next;
    return (user && HOME[user.role]) || "/";
  }

  function show(cls, text) {
    const m = $("msg");
    m.className = "msg " + cls;
    m.textContent = text;
    m.hidden = !text;
  }

  function signedIn(user) {
    $("who").textContent = `${user.name} · ${user.role_label || ""}` + (user.department ? ` · ${user.department}` : "");
    $("continue").href = nextPath(user);
    $("signed-in").hidden = false;
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim(), password = $("password").value;
    if (!name || !password) { show("err", "请输入用户名和密码 Enter your user name and password."); return; }
    $("submit").disabled = true;
    show("", "");
    let r, data = null;
    try {
      r = await fetch("/api/v1/auth/login", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name, password }) });
      data = await r.json().catch(() => null);
    } catch (e) {
      show("err", "网络错误，请稍后再试 Network error: " + e.message);
      $("submit").disabled = false;
      return;
    }
    $("password").value = "";
    if (r.ok) {
      try { sessionStorage.setItem("cg_csrf", data.csrf_token); } catch (_) { /* */ }
      show("ok", "登录成功，正在跳转… Signed in, opening the page…");
      document.body.dataset.signedIn = "1";
      location.assign(nextPath(data.user));
      return;
    }
    let text = data && (data.message || data.detail);
    if (typeof text !== "string") text = r.status === 422 ? "请输入用户名和密码 Enter your user name and password." : "HTTP " + r.status;
    if (r.status === 429) {
      const wait = parseInt(r.headers.get("Retry-After") || "0", 10);
      if (wait && !/分钟/.test(text)) text += `（约 ${Math.ceil(wait / 60)} 分钟后再试）`;
    }
    show("err", text);
    $("submit").disabled = false;
    $("password").focus();
  });

  $("logout").addEventListener("click", () => window.cgSession.signOut());

  // A failed SSO sign-in comes back here with its reason (in words, never the code).
  const SSO_ERRORS = {
    unknown_user: "该统一身份账号未在本系统开通，请联系管理员。This SSO account has no user here: ask your administrator.",
    provider: "统一身份认证服务暂时无法访问，请稍后再试。The SSO provider cannot be reached: try again later.",
    state: "登录已超时或不是从本页发起，请重新登录。The sign-in expired or was not started here: try again.",
  };
  const ssoError = new URLSearchParams(location.search).get("sso_error");
  if (ssoError) show("err", SSO_ERRORS[ssoError] || "统一身份认证登录失败，请重试或使用密码登录。SSO sign-in failed: try again or use your password.");

  // Already signed in (a session cookie): say so, offer to go on or sign out.
  window.cgSession.ready.then((user) => { if (user) signedIn(user); });

  // Optional OpenID Connect sign-in (a government SSO), when the server has it configured.
  fetch("/api/v1/auth/oidc", { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : null)).then((cfg) => {
    if (!cfg || !cfg.enabled) return;
    $("oidc").hidden = false;
    if (cfg.label) $("oidc").textContent = cfg.label;
    $("oidc").onclick = () => { location.assign("/api/v1/auth/oidc/start?next=" + encodeURIComponent(nextPath(null))); };
  }).catch(() => { /* no SSO */ });
  document.body.dataset.ready = "1";
})();
