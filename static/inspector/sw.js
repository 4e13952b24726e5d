// The inspector page's service worker (served at /inspector-sw.js, scope /inspector): the page, its
// scripts and styles, and the day's worklist stay available offline. Network first (the newest code and
// tasks whenever there is a connection), the cached copy when there is none; a cached API answer says
// so in the header "X-Citygrid-Cached" (when it was fetched). Reports made offline are the page's
// IndexedDB outbox's business, not this worker's.
"use strict";
const VERSION = "inspector-v3";
const SHELL = [
  "/inspector",
  "/static/inspector/inspector.js",
  "/static/inspector/inspector.css",
  "/static/common/photos.js",
  "/static/common/map.js",
  "/static/common/session.js",
  "/static/vendor/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js",
  "/static/vendor/leaflet/leaflet.js",
  "/static/vendor/leaflet/leaflet.css",
];
// API answers kept for offline use: the worklist, the class catalog, the page's configuration.
const API = ["/api/v1/worklist", "/api/v1/catalog", "/api/v1/config", "/api/v1/basemaps"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(VERSION).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== VERSION).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

async function networkFirst(request, key, api) {
  const cache = await caches.open(VERSION);
  try {
    const fresh = await fetch(request);
    if (fresh.ok) {
      const copy = fresh.clone();
      const headers = new Headers(copy.headers);
      headers.set("X-Citygrid-Fetched", new Date().toISOString());
      await cache.put(key, new Response(await copy.blob(), { status: copy.status, statusText: copy.statusText, headers }));
    }
    return fresh;
  } catch (err) {
    const hit = await cache.match(key, { ignoreSearch: !api });
    if (!hit) throw err;
    if (!api) return hit;
    const headers = new Headers(hit.headers);
    headers.set("X-Citygrid-Cached", hit.headers.get("X-Citygrid-Fetched") || "1");
    return new Response(await hit.blob(), { status: hit.status, statusText: hit.statusText, headers });
  }
}

// Sign-out or another user: the page asks to forget the saved API answers (the page and scripts stay).
self.addEventListener("message", (event) => {
  if (event.data !== "forget") return;
  event.waitUntil(caches.open(VERSION).then(async (cache) => {
    for (const r of await cache.keys()) if (API.includes(new URL(r.url).pathname)) await cache.delete(r);
    if (event.source) event.source.postMessage("forgotten");
  }));
});

async function userKey(req) {
  const cred = req.headers.get("Authorization") || "session";
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(cred));
  return Array.from(new Uint8Array(d).slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  if (req.mode === "navigate" && url.pathname === "/inspector") {
    event.respondWith(networkFirst(req, "/inspector", false));
  } else if (SHELL.includes(url.pathname) || url.pathname.startsWith("/static/vendor/leaflet/")) {
    event.respondWith(networkFirst(req, url.pathname, false));
  } else if (API.includes(url.pathname)) {
    // Kept per signed-in user (a digest of the credentials, never the token itself): another user of the
    // same device never gets this one's worklist offline.
    event.respondWith(userKey(req).then((who) => networkFirst(req, `${url.pathname}?u=${who}`, true)));
  }
});
