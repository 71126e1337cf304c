// The app's state: who is signed in, the threads the person cares about,
// and the live event stream that keeps them current.
import {Api} from './api.js';
import {LiveStream} from './sse.js';
import {capIds, matches, normStatus, tabOf} from './status.js';

const CRED = 'mess.cred';
const ALERT = 'mess.alert';

export const API_BASE = document.querySelector('meta[name="mess-api"]')?.content || '/api/v1';
export const DEFAULT_EXCHANGE = document.querySelector('meta[name="mess-exchange"]')?.content || 'home';

function load(k, dflt) {
  try { return JSON.parse(localStorage.getItem(k)) ?? dflt; } catch { return dflt; }
}

export const store = {
  cred: load(CRED, null), // {exchange, id, key, owner}
  api: null,
  me: null, // the executor profile
  caps: [],
  threads: new Map(), // ref → summary
  requires: new Map(), // ref → capability ids
  live: 'offline',
  loaded: false,
  alert: load(ALERT, {vibrate: true, chime: false}),
  listeners: new Set(),
  stream: null,
};
store.api = store.cred ? new Api(API_BASE, store.cred) : null;

// on subscribes fn(ref?) to changes; it returns the unsubscribe func.
export function on(fn) {
  store.listeners.add(fn);
  return () => store.listeners.delete(fn);
}

function emit(ref) {
  for (const fn of [...store.listeners]) fn(ref);
}

export function setAlert(a) {
  store.alert = a;
  localStorage.setItem(ALERT, JSON.stringify(a));
}

// signIn keeps a key on this device and starts following the exchange.
export function signIn(cred) {
  store.cred = cred;
  localStorage.setItem(CRED, JSON.stringify(cred));
  store.api = new Api(API_BASE, cred);
  start();
}

export function signOut() {
  store.stream?.stop();
  store.stream = null;
  localStorage.removeItem(CRED);
  Object.assign(store, {cred: null, api: null, me: null, caps: [], loaded: false});
  store.threads.clear();
  store.requires.clear();
  setLive('offline');
  emit();
}

// replaceKey stores a rotated key.
export function replaceKey(key) {
  signIn({...store.cred, key});
}

function setLive(s) {
  store.live = s;
  const el = document.getElementById('live');
  if (!el) return;
  el.dataset.state = s;
  el.querySelector('.live-text').textContent = {live: 'Live', connecting: 'Connecting…', offline: 'Offline'}[s];
}

export const fits = (t) => matches(store.requires.get(t.ref), store.caps);
export const tab = (t) => tabOf(t, store.cred?.id, fits(t));

export async function refreshMe() {
  const me = await store.api.executor(store.cred.id);
  store.me = me;
  store.caps = capIds(me?.capabilities);
  emit();
  return me;
}

const summaryOf = (t) => ({
  ref: t.ref, status: normStatus(t.status), intent: t.intent, requestor_id: t.requestor_id,
  executor_id: t.executor_id ?? null, priority: t.priority, created_at: t.created_at,
  updated_at: t.updated_at, seq: t.seq, needed_by: t.needed_by,
});

let gen = 0; // counts changes, so a listing does not undo newer events
const touched = new Map(); // ref → gen of the last event applied

function put(s) {
  const old = store.threads.get(s.ref);
  if (old && old.seq > s.seq) return false;
  store.threads.set(s.ref, s);
  return true;
}

// upsert takes a thread or summary fetched from the server.
export function upsert(t) {
  // A thread's request and a listing's summary both carry requires.
  store.requires.set(t.ref, capIds(t.request ? t.request.requires : t.requires));
  if (put(summaryOf(t))) emit(t.ref);
}

async function listAll(query) {
  const out = [];
  let cursor = '';
  for (let page = 0; page < 5; page++) {
    const r = await store.api.list(`${query}&limit=1000${cursor ? '&cursor=' + encodeURIComponent(cursor) : ''}`);
    out.push(...r.threads);
    if (!r.next_cursor) break;
    cursor = r.next_cursor;
  }
  return out;
}

// relist loads the threads the person can see in a tab: pending ones, and
// those they execute or requested.
let listing = null;
export function relist() {
  listing ??= doRelist().finally(() => { listing = null; });
  return listing;
}

async function doRelist() {
  const me = encodeURIComponent(store.cred.id);
  const started = gen;
  const lists = await Promise.all([listAll('status=pending'), listAll('executor_id=' + me), listAll('requestor_id=' + me)]);
  const fresh = new Map();
  for (const t of lists.flat()) {
    fresh.set(t.ref, summaryOf(t));
    store.requires.set(t.ref, capIds(t.requires));
  }
  for (const [ref, old] of store.threads) {
    const f = fresh.get(ref);
    if (f ? old.seq > f.seq : (touched.get(ref) || 0) > started) fresh.set(ref, old);
  }
  store.threads = fresh;
  store.loaded = true;
  performance.mark('mess-listed');
  emit();
}

async function fetchOne(ref) {
  try {
    upsert(await store.api.thread(ref));
  } catch { /* gone or not visible: nothing to show */ }
}

// apply folds one event of the exchange's stream into the state.
function apply(ev) {
  if (ev.type === 'reset') { relist().catch(() => {}); return; }
  let e;
  try { e = JSON.parse(ev.data); } catch { return; }
  const ref = e.thread_ref;
  const me = store.cred?.id;
  if (!ref) {
    if (e.actor_id === me && e.event_type === 'executor_updated') refreshMe().catch(() => {});
    return;
  }
  gen++;
  touched.set(ref, gen);
  const p = e.payload || {};
  const old = store.threads.get(ref);
  switch (e.event_type) {
    case 'thread_created': {
      store.requires.set(ref, capIds(p.requires));
      const s = {ref, status: 'pending', intent: p.intent, requestor_id: p.requestor_id, executor_id: null,
        priority: p.priority || 'normal', created_at: e.ts, updated_at: e.ts, seq: e.seq, needed_by: p.needed_by};
      put(s);
      if (p.requestor_id !== me && tab(s) === 'available') alertNew(s);
      break;
    }
    case 'status_changed':
      if (!old) {
        const st = normStatus(p.new_status);
        if (p.executor_id === me || st === 'pending') fetchOne(ref);
        return;
      }
      if (e.seq <= old.seq) return;
      put({...old, status: normStatus(p.new_status), executor_id: p.executor_id ?? null, seq: e.seq, updated_at: e.ts});
      break;
    default:
      if (!old || e.seq <= old.seq) { if (old) emit(ref); return; }
      put({...old, seq: e.seq, updated_at: e.ts});
  }
  emit(ref);
}

let audio;
// unlockAudio prepares sound on the first tap: browsers allow audio only
// after a gesture.
export function unlockAudio() {
  if (!audio && window.AudioContext) audio = new AudioContext();
  if (audio?.state === 'suspended') audio.resume();
}

// alertNew tells the person a request they can take has arrived, as they
// chose on this device.
export function alertNew(t) {
  if (store.alert.vibrate && navigator.vibrate) navigator.vibrate([180, 90, 180]);
  if (store.alert.chime && audio) {
    const t = audio.currentTime;
    for (const [i, f] of [880, 1320].entries()) {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = f;
      g.gain.setValueAtTime(0.0001, t + i * 0.16);
      g.gain.exponentialRampToValueAtTime(0.25, t + i * 0.16 + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.16 + 0.3);
      o.connect(g).connect(audio.destination);
      o.start(t + i * 0.16);
      o.stop(t + i * 0.16 + 0.32);
    }
  }
  window.dispatchEvent(new CustomEvent('mess-alert', {detail: t}));
}

// start follows the exchange: profile, threads, then the live stream.
export function start() {
  store.stream?.stop();
  const cred = store.cred;
  refreshMe().catch(() => {});
  store.stream = new LiveStream({
    url: store.api.root + '/events',
    key: cred.key,
    onEvent: apply,
    onOpen: (resumed) => (resumed ? null : relist().catch(() => {})),
    onState: setLive,
    // Without the stream the threads are still listed once.
    onFail: () => { if (!store.loaded) relist().catch(() => {}); },
    onAuthError: () => { setLive('offline'); window.dispatchEvent(new CustomEvent('mess-auth')); },
  });
  store.stream.start();
}

addEventListener('online', () => store.stream?.retryNow());
