// The signed-in session of every page (issue 13). Load it before the page's own script:
//   <script src="/static/common/session.js"></script>
// window.cgSession:
//   ready            a Promise of the signed-in user ({id, name, role, role_label, department, area_code}) or null
//   offline          true when the server could not be reached while getting ready (the page may work from its cache)
//   tokenError       the refusal ({status, detail}) of a #token=… link that did not open a session, else null
//   fetch(url, opts) fetch() with the session: credentials same-origin, X-CSRF-Token on writes, a 401 sends the
//                    user to /login?next=… (unless opts.noRedirect or a refused token link is being shown)
//   headers()        {"X-CSRF-Token": …} for a page's own fetch() (GET or write; the cookie goes by itself)
//   refresh()        ask the server again who is signed in (and the CSRF token); a Promise of the user or null
//   signOut()        end the session on the server and go to /login
//   signIn()         go to /login?next=<this page>
//   loginUrl()       that address
//   useToken(token)  exchange a bearer token typed into a page for a session (the token is not kept)
// Plain fetch() calls to this site get the same treatment (see below): code that still builds
// "Authorization: Bearer " + token() with no token left works by the cookie.
// The session itself is an HttpOnly cookie the page never sees; a device or demo link /page#token=… is
// exchanged for it (POST /api/v1/auth/login {token}) and taken out of the address bar and of storage.
(function () {
  "use strict";
  const WRITES = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const CSRF_KEY = "cg_csrf";
  const s = { user: null, csrf: null, offline: false, tokenError: null };
  const nativeFetch = window.fetch.bind(window);

  function dropEmptyBearer(h) {
    const a = h.get("Authorization");
    if (a !== null && /^bearer\s*(null|undefined)?\s*$/i.test(a.trim())) h.delete("Authorization");
  }

  // Every same-origin fetch() of the page goes with the session, whoever wrote it (map layers, photo
  // viewers, code written before the session): an empty "Authorization: Bearer " (no token any more) is
  // dropped, so the cookie counts, and a write gets the CSRF token. A real bearer token is left alone.
  window.fetch = function (input, init) {
    try {
      const isReq = typeof Request !== "undefined" && input instanceof Request;
      const url = new URL(isReq ? input.url : String(input), location.href);
      if (url.origin === location.origin) {
        init = Object.assign({}, init || {});
        const h = new Headers(init.headers || (isReq ? input.headers : undefined));
        dropEmptyBearer(h);
        const method = String(init.method || (isReq ? input.method : "GET")).toUpperCase();
        if (WRITES.has(method) && !h.has("Authorization") && s.csrf && !h.has("X-CSRF-Token")) h.set("X-CSRF-Token", s.csrf);
        init.headers = h;
        if (!init.credentials) init.credentials = "same-origin";
      }
    } catch (_) { /* not a URL we know: as it was */ }
    return nativeFetch(input, init);
  };
  try { s.csrf = sessionStorage.getItem(CSRF_KEY); } catch (_) { /* storage refused */ }

  function keepCsrf(value) {
    s.csrf = value || null;
    try { if (s.csrf) sessionStorage.setItem(CSRF_KEY, s.csrf); else sessionStorage.removeItem(CSRF_KEY); } catch (_) { /* */ }
  }

  function loginUrl() {
    return "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  function detailOf(data, status) {
    if (data && typeof data.message === "string") return data.message;
    if (data && typeof data.detail === "string") return data.detail;
    return "HTTP " + status;
  }

  // A token from the address (#token=…) or left in storage by an older version of the pages: exchanged
  // for a session cookie once, then forgotten.
  function takeToken() {
    let token = null;
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("token")) {
      token = hash.get("token");
      hash.delete("token");
      const rest = hash.toString();
      history.replaceState(history.state, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    for (const store of [window.localStorage, window.sessionStorage]) {
      for (const key of ["citygrid_token", "cg_token"]) {
        try {
          const v = store.getItem(key);
          if (v) { token = token || v.trim(); store.removeItem(key); }
        } catch (_) { /* storage refused */ }
      }
    }
    return token;
  }

  async function exchange(given) {
    const token = given || takeToken();
    if (!token) return;
    s.tokenError = null;
    let r;
    try {
      r = await nativeFetch("/api/v1/auth/login", {
        method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token }),
      });
    } catch (e) {
      s.offline = true;
      s.tokenError = { status: 0, detail: "网络错误 network error: " + e.message };
      return;
    }
    const data = await r.json().catch(() => null);
    if (r.ok) { s.user = data.user; keepCsrf(data.csrf_token); }
    else s.tokenError = { status: r.status, detail: detailOf(data, r.status) };
  }

  async function refresh() {
    let r;
    try {
      r = await nativeFetch("/api/v1/auth/me", { credentials: "same-origin", cache: "no-store" });
    } catch (_) {
      s.offline = true;
      return s.user;  // unknown: what was known stays
    }
    s.offline = false;
    const data = await r.json().catch(() => null);
    if (!r.ok || !data) return s.user;
    s.user = data.user;  // null: nobody signed in
    keepCsrf(data.user ? data.csrf_token : null);
    return s.user;
  }

  const exchanged = exchange();
  const ready = exchanged.then(() => (s.user && s.csrf ? s.user : refresh()));

  function headers() {
    return s.csrf ? { "X-CSRF-Token": s.csrf } : {};
  }

  function signIn() {
    if (s.leaving) return;
    s.leaving = true;
    location.assign(loginUrl());
  }

  async function sessionFetch(url, opts) {
    opts = Object.assign({}, opts || {});
    await exchanged;
    const method = (opts.method || "GET").toUpperCase();
    const hdrs = new Headers(opts.headers || {});
    dropEmptyBearer(hdrs);
    const bearer = hdrs.has("Authorization");
    if (WRITES.has(method) && !bearer) {
      if (!s.csrf) await refresh();
      if (s.csrf) hdrs.set("X-CSRF-Token", s.csrf);
    }
    const init = Object.assign({}, opts, { headers: hdrs, credentials: "same-origin" });
    delete init.noRedirect;
    let r = await nativeFetch(url, init);
    if (r.status === 403 && WRITES.has(method) && !bearer) {
      // the CSRF token may have changed (signed in again in another tab): ask once more, retry once
      const before = s.csrf;
      await refresh();
      if (s.csrf && s.csrf !== before) {
        hdrs.set("X-CSRF-Token", s.csrf);
        r = await nativeFetch(url, init);
      }
    }
    if (r.status === 401 && !bearer && !opts.noRedirect && !s.tokenError && !s.leaving) {
      keepCsrf(null);
      signIn();
    }
    return r;
  }

  async function signOut() {
    s.leaving = true;  // requests still under way get 401 now: no second trip to /login
    if (!s.csrf) await refresh();  // (opened offline: the CSRF token is needed to end the session)
    try {
      await nativeFetch("/api/v1/auth/logout", { method: "POST", credentials: "same-origin", headers: headers() });
    } catch (_) { /* the cookie ends with the session on the server; offline: it ends by itself */ }
    keepCsrf(null);
    s.user = null;
    location.assign("/login");
  }

  // A bearer token typed into a page (a device's or an API client's): exchanged for a session, never kept.
  async function useToken(token) {
    await exchange((token || "").trim());
    if (s.tokenError) return null;
    return refresh();
  }

  window.addEventListener("online", () => { refresh(); });

  window.cgSession = {
    ready,
    fetch: sessionFetch,
    headers,
    refresh,
    signOut,
    signIn,
    loginUrl,
    useToken,
    get user() { return s.user; },
    get offline() { return s.offline; },
    get tokenError() { return s.tokenError; },
  };
})();
