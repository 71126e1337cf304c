// Small DOM and formatting helpers shared by the views.

const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'required', 'multiple', 'readOnly', 'open']);

// h builds an element: h('button', {class: 'x', onclick: fn}, 'text', child).
// Children may be strings, nodes, arrays or null.
export function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  if (props) {
    for (const k in props) {
      const v = props[k];
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (PROPS.has(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
  }
  add(el, kids);
  return el;
}

function add(el, kids) {
  for (const k of kids) {
    if (k == null || k === false) continue;
    if (Array.isArray(k)) add(el, k);
    else el.append(k instanceof Node ? k : String(k));
  }
}

let uid = 0;
// id returns a fresh element id for label/control pairs.
export const id = (p = 'f') => `${p}-${++uid}`;

// field is a labelled control: the label names it for screen readers.
export function field(label, control, hint) {
  if (!control.id) control.id = id();
  const kids = [h('label', {for: control.id}, label), control];
  if (hint) {
    const hid = id('hint');
    control.setAttribute('aria-describedby', hid);
    kids.push(h('small', {id: hid, class: 'hint'}, hint));
  }
  return h('div', {class: 'field'}, kids);
}

const units = [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]];

// span formats a duration in seconds as "2h 13m" (two largest units).
export function span(sec) {
  sec = Math.max(0, Math.round(sec));
  const parts = [];
  for (const [u, n] of units) {
    if (sec >= n || (u === 's' && parts.length === 0)) {
      parts.push(Math.floor(sec / n) + u);
      sec %= n;
    }
    if (parts.length === 2) break;
  }
  return parts.join(' ');
}

// countdown says how long until due: "in 2h 13m", or "overdue 5m".
export function countdown(due, now = Date.now()) {
  const d = (Date.parse(due) - now) / 1000;
  if (Number.isNaN(d)) return '';
  return d >= 0 ? 'in ' + span(d) : 'overdue ' + span(-d);
}

// ago says how long since t: "5m ago", "just now".
export function ago(t, now = Date.now()) {
  const d = (now - Date.parse(t)) / 1000;
  if (Number.isNaN(d)) return '';
  if (d < 45) return 'just now';
  return span(d).split(' ')[0] + ' ago';
}

const dtf = new Intl.DateTimeFormat(undefined, {weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit'});
// when formats a timestamp in the person's locale and time zone.
export const when = (t) => { const d = new Date(t); return Number.isNaN(+d) ? '' : dtf.format(d); };

// timeEl is a <time> the global ticker keeps current (data-due or data-ago).
export function dueEl(due, cls = 'due') {
  const el = h('time', {class: cls, datetime: due, dataset: {due}, title: when(due)}, countdown(due));
  if (Date.parse(due) < Date.now()) el.classList.add('late');
  return el;
}

export function agoEl(t) {
  return h('time', {datetime: t, dataset: {ago: t}, title: when(t)}, ago(t));
}

// tick refreshes every countdown and "ago" on the page, once a second.
export function startTicker() {
  const run = () => {
    if (document.hidden) return;
    const now = Date.now();
    for (const el of document.querySelectorAll('[data-due]')) {
      const s = countdown(el.dataset.due, now);
      if (el.textContent !== s) el.textContent = s;
      if (s.startsWith('overdue')) el.classList.add('late');
    }
    for (const el of document.querySelectorAll('[data-ago]')) {
      const s = ago(el.dataset.ago, now);
      if (el.textContent !== s) el.textContent = s;
    }
  };
  return setInterval(run, 1000);
}

let toastTimer;
// toast shows a short message in the polite live region.
export function toast(msg) {
  const el = document.getElementById('toast');
  el.textContent = msg;
  el.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove('show'), 4000);
}

const ICONS = {
  camera: 'M4 8h3l2-3h6l2 3h3v11H4z M12 17a4 4 0 1 0 0-8 4 4 0 0 0 0 8z',
  pin: 'M12 21s-7-6.2-7-11.5a7 7 0 0 1 14 0C19 14.8 12 21 12 21z M12 12a2.5 2.5 0 1 0 0-5 2.5 2.5 0 0 0 0 5z',
  download: 'M12 4v11 M7 10l5 5 5-5 M5 20h14',
};

// icon is a decorative inline SVG: no emoji font is needed on the device.
export function icon(name) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  p.setAttribute('d', ICONS[name]);
  svg.append(p);
  return svg;
}
