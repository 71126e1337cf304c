// Pieces several screens share.
import {h} from '../dom.js';
import {statusInfo} from '../status.js';

export function statusBadge(s) {
  const i = statusInfo(s);
  return h('span', {class: 'badge tone-' + i.tone, dataset: {status: s}}, i.label);
}

const PRIO = {urgent: 'Urgent', elevated: 'Elevated', normal: 'Normal', background: 'Background'};
export function prioBadge(p) {
  const k = String(p || 'normal').toLowerCase();
  return h('span', {class: 'badge prio prio-' + k}, PRIO[k] || k);
}

// errorBox is an alert region for the server's reason of a refusal.
export function errorBox() {
  const el = h('p', {class: 'error', role: 'alert', hidden: true});
  el.show = (e) => {
    el.textContent = e ? (e.message || String(e)) : '';
    el.hidden = !e;
  };
  return el;
}

// busy disables a form's controls while its request is in flight.
export async function busy(form, fn) {
  const ctl = [...form.querySelectorAll('button, input, select, textarea')].filter((c) => !c.disabled);
  ctl.forEach((c) => { c.disabled = true; });
  form.setAttribute('aria-busy', 'true');
  try {
    return await fn();
  } finally {
    ctl.forEach((c) => { c.disabled = false; });
    form.removeAttribute('aria-busy');
  }
}
