// The inbox: tabs of requests available to me, mine, asked by me and done.
import {agoEl, dueEl, h} from '../dom.js';
import {compare, waitsOnMe} from '../status.js';
import {on, store, tab} from '../store.js';
import {prioBadge, statusBadge} from './common.js';

const TABS = [
  ['available', 'Available', 'Requests you can take'],
  ['mine', 'Mine', 'Requests you have claimed'],
  ['asked', 'Asked', 'Requests you asked for'],
  ['done', 'Done', 'Finished requests you took part in'],
];

const EMPTY = {
  available: 'Nothing to do right now. New requests appear here as they arrive.',
  mine: 'You have not claimed anything. Claim a request from Available.',
  asked: 'You have not asked for anything. Use Ask to post a request.',
  done: 'Nothing finished yet.',
};

const cache = new Map(); // ref → {key, el}: unchanged items are reused

function item(t) {
  const key = `${store.cred.id}|${t.seq}|${t.status}|${t.executor_id}|${t.priority}`;
  const c = cache.get(t.ref);
  if (c && c.key === key) return c.el;
  const by = waitsOnMe(t, store.cred.id) ? ' · waiting for your answer'
    : t.executor_id && t.executor_id !== store.cred.id && t.requestor_id === store.cred.id ? ` · taken by ${t.executor_id}` : '';
  const el = h('li', {class: 'item'}, h('a', {href: '#/t/' + encodeURIComponent(t.ref), dataset: {ref: t.ref, status: t.status}},
    h('span', {class: 'item-top'}, prioBadge(t.priority), statusBadge(t.status), t.needed_by ? dueEl(t.needed_by) : null),
    h('span', {class: 'intent'}, t.intent),
    h('span', {class: 'meta'}, `${t.requestor_id === store.cred.id ? 'you' : t.requestor_id} · `, agoEl(t.created_at), by)));
  cache.set(t.ref, {key, el});
  return el;
}

export function inbox(args) {
  let current = TABS.some(([k]) => k === args[0]) ? args[0] : 'available';
  const tabs = h('div', {class: 'tabs', role: 'tablist', 'aria-label': 'Requests'});
  const list = h('ul', {class: 'list', id: 'inbox-list', role: 'tabpanel', 'aria-live': 'off'});
  const empty = h('p', {class: 'empty', hidden: true});
  const buttons = {};
  for (const [k, label, desc] of TABS) {
    const b = h('button', {type: 'button', role: 'tab', id: 'tab-' + k, 'aria-controls': 'inbox-list', title: desc, dataset: {tab: k},
      onclick: () => select(k, true)}, h('span', null, label), h('span', {class: 'count', 'aria-label': ''}, ''));
    buttons[k] = b;
    tabs.append(b);
  }
  tabs.addEventListener('keydown', (e) => {
    const i = TABS.findIndex(([k]) => k === current);
    const j = {ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1}[e.key];
    if (j === undefined) return;
    e.preventDefault();
    const k = TABS[(j + TABS.length) % TABS.length][0];
    select(k, true);
    buttons[k].focus();
  });

  function select(k, user) {
    current = k;
    if (user) history.replaceState(null, '', '#/inbox/' + k);
    render();
  }

  let frame = 0;
  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  function render() {
    performance.mark('mess-render-start');
    const groups = {available: [], mine: [], asked: [], done: []};
    for (const t of store.threads.values()) {
      const k = tab(t);
      if (k) groups[k].push(t);
    }
    for (const [k, label] of TABS) {
      const b = buttons[k];
      const on = k === current;
      b.setAttribute('aria-selected', on);
      b.tabIndex = on ? 0 : -1;
      const n = groups[k].length;
      b.querySelector('.count').textContent = n ? String(n) : '';
      b.setAttribute('aria-label', `${label}, ${n}`);
    }
    list.setAttribute('aria-labelledby', 'tab-' + current);
    const rows = groups[current].sort(compare(current, store.cred.id));
    // Move only what changed: a new request is one insertion, not 500.
    let cur = list.firstChild;
    for (const el of rows.map(item)) {
      if (cur === el) { cur = cur.nextSibling; continue; }
      list.insertBefore(el, cur);
    }
    while (cur) { const next = cur.nextSibling; cur.remove(); cur = next; }
    empty.hidden = rows.length > 0 || !store.loaded;
    empty.textContent = EMPTY[current];
    list.dataset.count = rows.length;
    list.dataset.loaded = store.loaded;
    performance.mark('mess-render-end');
    performance.measure('mess-render', 'mess-render-start', 'mess-render-end');
  }

  const off = on(schedule);
  render();
  return {
    el: h('section', {class: 'inbox'}, h('h1', {class: 'sr-only'}, 'Inbox'), tabs, empty, list),
    destroy: () => { off(); cancelAnimationFrame(frame); },
  };
}
