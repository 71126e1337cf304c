// The app shell: routes (#/inbox, #/t/{ref}, #/ask, #/me, #/join, #/signin),
// navigation and start-up.
import {startTicker, toast} from './dom.js';
import {setRerender} from './router.js';
import {on, start, store, unlockAudio} from './store.js';
import {inbox} from './views/inbox.js';
import {thread} from './views/thread.js';
import {ask} from './views/ask.js';
import {me} from './views/me.js';
import {join, signin} from './views/join.js';

const view = document.getElementById('view');
const nav = document.getElementById('nav');
let current = null; // {el, destroy?}
let currentKey = '';

function parse() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
  return {name: parts[0] || 'inbox', args: parts.slice(1)};
}

const routes = {inbox, t: thread, ask, me, join, signin};
const open = new Set(['join', 'signin']);

function route() {
  let {name, args} = parse();
  if (!routes[name]) name = 'inbox';
  if (!store.cred && !open.has(name)) name = 'join';
  const key = name + '/' + args.join('/');
  if (key === currentKey) return;
  currentKey = key;
  current?.destroy?.();
  current = routes[name](args);
  view.replaceChildren(current.el);
  nav.hidden = !store.cred;
  document.getElementById('exchange').textContent = store.cred ? `${store.cred.exchange} · ${store.me?.display_name || store.cred.id}` : '';
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.nav === (name === 't' ? 'inbox' : name)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  // Move focus to the new screen's heading so screen readers announce it.
  const h1 = view.querySelector('h1');
  if (h1 && document.activeElement !== document.body) {
    h1.tabIndex = -1;
    h1.focus({preventScroll: true});
  }
  window.scrollTo(0, 0);
}

setRerender(() => { currentKey = ''; route(); });

addEventListener('hashchange', route);
addEventListener('mess-auth', () => toast('The exchange no longer accepts this key. Sign in again.'));
addEventListener('pointerdown', unlockAudio, {once: true});
// Announce new requests through the polite live region, for screen readers too.
addEventListener('mess-alert', (e) => { if (e.detail) toast(`New request: ${e.detail.intent}`); });
on(() => {
  const x = document.getElementById('exchange');
  if (store.cred) x.textContent = `${store.cred.exchange} · ${store.me?.display_name || store.cred.id}`;
  const n = [...store.threads.values()].filter((t) => t.status === 'pending' && t.requestor_id !== store.cred?.id).length;
  document.title = n ? `(${n}) MESS` : 'MESS';
});

startTicker();
if (store.cred) start();
route();

if ('serviceWorker' in navigator) {
  addEventListener('load', () => navigator.serviceWorker.register('sw.js').catch(() => {}));
}
