/* citygrid — one message catalog for every page: zh-CN by default, English behind a toggle.
 *
 * The words of every code a page shows (states, events, actions, roles, sources, urgencies, flags,
 * ratings, channels, classes, admin areas, departments, error codes) come from GET /api/v1/i18n,
 * generated from the Python vocabularies (layers/cases/labels.py): a page never shows a raw code.
 *
 *   <script src="/static/common/i18n.js"></script>
 *   await I18N.ready;                         // the catalog is loaded (a failed load leaves it empty)
 *   I18N.word("states", "dispatched")         // "派遣" (zh) / "Dispatched" (en)
 *   I18N.word("areas", "street-320614001")    // the admin area's name, also for street-<code> slugs
 *   I18N.t("已受理", "Recorded")               // a page's own sentence in both languages
 *   I18N.error(err)                           // an API error (thrown with .body) in the chosen language
 *   I18N.apply(document)                      // elements with data-en (data-en-placeholder, data-en-title)
 *   I18N.toggle(button)                       // the 中文/EN switch; I18N.onChange(fn) to redraw
 *
 * The language is kept in localStorage "citygrid_lang" ("zh" or "en"), shared by all pages.
 */
(function () {
  "use strict";
  const KEY = "citygrid_lang";
  let stored = null;
  try { stored = localStorage.getItem(KEY); } catch (e) { /* storage blocked: zh-CN */ }
  const listeners = [];
  const I18N = {
    lang: stored === "en" ? "en" : "zh",
    catalog: {},
  };

  function cityParam() {
    const m = /[?&]city=([^&#]+)/.exec(location.search);
    return m ? "?city=" + m[1] : "";
  }

  I18N.load = function (city) {
    const q = city ? "?city=" + encodeURIComponent(city) : cityParam();
    I18N.ready = fetch("/api/v1/i18n" + q, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : {}))
      .catch(() => ({}))
      .then((c) => { I18N.catalog = c || {}; return I18N; });
    return I18N.ready;
  };

  /** The entry of ``code`` in ``kind`` ({zh, en}) or null. */
  I18N.entry = function (kind, code) {
    if (code === null || code === undefined || code === "") return null;
    const table = I18N.catalog[kind] || {};
    let e = table[code];
    if (!e && (kind === "areas" || kind === "departments")) {
      const m = /^(?:street-|ST)(\d{6,12})$/.exec(String(code));
      if (m && kind === "areas") e = table[m[1]];
      if (!e && kind === "departments" && m) {
        const a = (I18N.catalog.areas || {})[m[1]];
        if (a) e = { zh: a.zh + "办事处", en: a.en + " office" };
      }
      if (!e && kind === "areas") {  // a cell or a community: its street or community by prefix
        const s = String(code);
        for (const n of [12, 9, 6]) if (s.length > n && /^\d+$/.test(s) && table[s.slice(0, n)]) { e = table[s.slice(0, n)]; break; }
      }
    }
    return e || null;
  };

  /** The word of ``code`` in ``kind`` in the chosen language; ``fallback`` (default: the code) when unknown. */
  I18N.word = function (kind, code, fallback) {
    const e = I18N.entry(kind, code);
    if (e) return I18N.lang === "en" ? (e.en || e.zh) : (e.zh || e.en);
    if (code === null || code === undefined || code === "") return fallback === undefined ? "—" : fallback;
    return fallback === undefined ? String(code) : fallback;
  };

  /** The other language's word (for a title attribute). */
  I18N.other = function (kind, code) {
    const e = I18N.entry(kind, code);
    return e ? (I18N.lang === "en" ? e.zh : e.en) || "" : "";
  };

  /** A page's own sentence: Chinese, or English in English mode. */
  I18N.t = function (zh, en) { return I18N.lang === "en" && en !== undefined ? en : zh; };

  /** An error in the chosen language: an API answer ({code, message, message_en, detail}), an Error
   * carrying it as .body, or any Error. */
  I18N.error = function (err) {
    const b = (err && (err.body || (err.code && err.message_en !== undefined ? err : null))) || null;
    if (b && typeof b === "object") {
      if (I18N.lang === "en") return b.message_en || b.detail || (err && err.message) || "error";
      if (b.message) return b.message;
      const e = b.code && (I18N.catalog.errors || {})[b.code];
      if (e) return e.zh;
    }
    if (err && err.name === "TypeError") return I18N.t("网络连接失败，请稍后再试", "Network error: try again later");
    return (err && err.message) || I18N.t("出错了", "Something went wrong");
  };

  /** Date-time in the page's language. */
  I18N.time = function (iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toLocaleString(I18N.lang === "en" ? "en-GB" : "zh-CN", { hour12: false, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
  };

  /** Elements with data-en get their text (and data-en-placeholder, data-en-title) in the chosen language;
   * the Chinese is what the HTML holds (kept in data-zh on the first pass). */
  I18N.apply = function (root) {
    root = root || document;
    document.documentElement.lang = I18N.lang === "en" ? "en" : "zh-CN";
    root.querySelectorAll("[data-en]").forEach((el) => {
      if (el.dataset.zh === undefined) el.dataset.zh = el.textContent;
      el.textContent = I18N.lang === "en" ? el.dataset.en : el.dataset.zh;
    });
    for (const attr of ["placeholder", "title", "aria-label"]) {
      root.querySelectorAll(`[data-en-${attr}]`).forEach((el) => {
        const zhKey = "zh" + attr.replace(/(^|-)(\w)/g, (_, __, c) => c.toUpperCase());
        if (el.dataset[zhKey] === undefined) el.dataset[zhKey] = el.getAttribute(attr) || "";
        el.setAttribute(attr, I18N.lang === "en" ? el.getAttribute(`data-en-${attr}`) : el.dataset[zhKey]);
      });
    }
  };

  I18N.setLang = function (lang) {
    I18N.lang = lang === "en" ? "en" : "zh";
    try { localStorage.setItem(KEY, I18N.lang); } catch (e) { /* not kept */ }
    I18N.apply(document);
    listeners.forEach((fn) => { try { fn(I18N.lang); } catch (e) { console.error(e); } });
  };

  I18N.onChange = function (fn) { listeners.push(fn); };

  /** Make ``button`` the language switch (its text: the language it switches to). */
  I18N.toggle = function (button) {
    const label = () => { button.textContent = I18N.lang === "en" ? "中文" : "EN"; button.title = I18N.lang === "en" ? "切换到中文" : "Switch to English"; };
    label();
    button.addEventListener("click", () => { I18N.setLang(I18N.lang === "en" ? "zh" : "en"); label(); });
  };

  I18N.load();
  window.I18N = I18N;
})();
