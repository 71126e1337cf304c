// The service worker keeps the app shell for offline use. Shell files are
// fetched from the network first (the server answers 304 when unchanged),
// so a new version of the app is picked up on the next load; the cache is
// the fallback when the network is away. The API is never touched.
const CACHE = 'mess-shell-v1';
const SHELL = [
  './',
  'manifest.webmanifest',
  'app/app.css',
  'app/main.js',
  'app/router.js',
  'app/dom.js',
  'app/status.js',
  'app/api.js',
  'app/sse.js',
  'app/store.js',
  'app/mess.js',
  'app/image.js',
  'app/views/common.js',
  'app/views/inbox.js',
  'app/views/thread.js',
  'app/views/ask.js',
  'app/views/me.js',
  'app/views/join.js',
  'app/icon.svg',
  'app/icon-192.png',
  'app/icon-512.png',
];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

const scope = new URL(self.registration.scope);
const shell = new Set(SHELL.map((p) => new URL(p, scope).pathname));

self.addEventListener('fetch', (e) => {
  const req = e.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== scope.origin) return;
  const isShell = req.mode === 'navigate' || shell.has(url.pathname);
  if (!isShell) return; // the API, attachments and QR codes go straight to the server
  const key = req.mode === 'navigate' ? new URL('./', scope).href : req;
  e.respondWith(fetch(req).then((res) => {
    if (res.ok) {
      const copy = res.clone();
      caches.open(CACHE).then((c) => c.put(key, copy));
    }
    return res;
  }).catch(() => caches.match(key, {ignoreVary: true, ignoreSearch: req.mode === 'navigate'}).then((hit) => hit || Response.error())));
});
