// Ask: a person posts a request of their own.
import {field, h, toast} from '../dom.js';
import {go} from '../router.js';
import {PRIORITIES} from '../status.js';
import {store, upsert} from '../store.js';
import {busy, errorBox} from './common.js';

const HINTS = [['text', 'Text'], ['image', 'Photo'], ['location', 'Location'], ['confirmation', 'Yes / no']];

// localInput turns a Date into the value of a datetime-local input.
const localInput = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);

export function ask() {
  const err = errorBox();
  const intent = h('input', {id: 'ask-intent', name: 'intent', required: true, maxlength: 4096, autocomplete: 'off', placeholder: 'Check whether the front door is locked'});
  const context = h('textarea', {id: 'ask-context', name: 'context', rows: 3, maxlength: 4000, placeholder: 'Anything that helps: where, what to look for'});
  const prio = h('select', {id: 'ask-priority', name: 'priority'}, PRIORITIES.map((p) => h('option', {value: p, selected: p === 'normal'}, p[0].toUpperCase() + p.slice(1))));
  const needed = h('input', {id: 'ask-needed', name: 'needed_by', type: 'datetime-local', min: localInput(new Date())});
  const confirm = h('input', {id: 'ask-confirm', type: 'checkbox', name: 'confirm_before'});
  const hints = HINTS.map(([v, label]) => {
    const cb = h('input', {type: 'checkbox', id: 'ask-hint-' + v, value: v, checked: v === 'text'});
    return h('label', {class: 'check', for: cb.id}, cb, ' ', label);
  });
  let idem = crypto.randomUUID?.() || String(Math.random()).slice(2);

  const form = h('form', {class: 'form card', id: 'ask-form', onsubmit: async (e) => {
    e.preventDefault();
    err.show(null);
    const req = {intent: intent.value.trim(), priority: prio.value};
    if (!req.intent) { err.show(new Error('Say what you need.')); intent.focus(); return; }
    if (context.value.trim()) req.context = [context.value.trim()];
    const rh = hints.map((l) => l.querySelector('input')).filter((c) => c.checked).map((c) => c.value);
    if (rh.length) req.response_hint = rh;
    if (needed.value) {
      const d = new Date(needed.value);
      if (Number.isNaN(+d)) { err.show(new Error('That date is not valid.')); return; }
      req.needed_by = d.toISOString();
    }
    if (confirm.checked) req.confirm_before = true;
    await busy(form, async () => {
      try {
        const res = await store.api.create(req, idem);
        idem = crypto.randomUUID?.() || String(Math.random()).slice(2);
        toast('Request posted.');
        try { upsert(await store.api.thread(res.ref)); } catch { /* the stream brings it */ }
        go('#/t/' + encodeURIComponent(res.ref));
      } catch (e2) {
        err.show(e2);
      }
    });
  }},
  field('What do you need?', intent),
  field('Details', context),
  h('div', {class: 'grid2 wide'}, field('Priority', prio), field('Needed by', needed, 'Optional. Unclaimed requests expire then.')),
  h('fieldset', null, h('legend', null, 'What should they send back?'), h('div', {class: 'checks'}, hints)),
  h('label', {class: 'check', for: 'ask-confirm'}, confirm, ' Ask me to confirm before it is done'),
  err,
  h('button', {type: 'submit', class: 'btn primary wide', id: 'ask-submit'}, 'Post request'));

  return {el: h('section', null, h('h1', null, 'Ask for help'), h('p', {class: 'muted'}, `Posted to ${store.cred.exchange}. People who can help are told at once.`), form)};
}
