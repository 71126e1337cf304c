// One request: what is asked, what happened, and what this person may do.
import {agoEl, dueEl, field, h, icon, toast, when} from '../dom.js';
import {downscale} from '../image.js';
import {entries, message, responseContent, statusBlock} from '../mess.js';
import {actions, normStatus, statusInfo} from '../status.js';
import {on, store, upsert} from '../store.js';
import {busy, errorBox, prioBadge, statusBadge} from './common.js';

// Each action: its button label, whether it opens a form, and its style.
const ACTIONS = {
  claim: {label: 'Claim', primary: true},
  complete: {label: 'Complete', form: true, primary: true},
  request_confirmation: {label: 'Ask to confirm', form: true, primary: true},
  answer: {label: 'Answer', form: true, primary: true},
  confirm: {label: 'Confirm', form: true, primary: true},
  note: {label: 'Progress note', form: true},
  ask: {label: 'Ask a question', form: true},
  release: {label: 'Release'},
  decline: {label: 'Decline', form: true},
  fail: {label: "Can't do it", form: true, danger: true},
  cancel: {label: 'Cancel request', form: true, danger: true},
};

export function thread(args) {
  const ref = args[0] || '';
  const me = store.cred.id;
  let t = null;
  let openForm = null; // the action whose form is open
  let loading = null;
  let again = false;

  const head = h('div', {class: 'thread-head'});
  const who = h('p', {class: 'who', id: 'who'});
  const err = errorBox();
  err.id = 'action-error';
  const bar = h('div', {class: 'actions', role: 'group', 'aria-label': 'Actions'});
  const panel = h('div', {class: 'panel', hidden: true});
  const details = h('section', {class: 'details', 'aria-labelledby': 'details-h'});
  const timeline = h('ol', {class: 'timeline', 'aria-label': 'Timeline'});
  const root = h('article', {class: 'thread', dataset: {ref}},
    h('a', {class: 'back', href: '#/inbox'}, '← Inbox'),
    head, who, err, bar, panel, details,
    h('h2', {id: 'timeline-h'}, 'Timeline'), timeline);

  const ctx = {fetchAttachment: (name) => store.api.attachment(ref, name)};

  async function load() {
    if (loading) { again = true; return loading; }
    loading = (async () => {
      try {
        do {
          again = false;
          const fresh = await store.api.thread(ref);
          if (!t || fresh.seq !== t.seq) {
            t = fresh;
            upsert(t);
            render();
          }
        } while (again);
      } catch (e) {
        if (!t) {
          head.replaceChildren(h('h1', null, 'Request not found'));
          err.show(e);
        }
      } finally {
        loading = null;
      }
    })();
    return loading;
  }

  function render() {
    const st = normStatus(t.status);
    const req = t.request || {};
    head.replaceChildren(...[
      h('h1', {id: 'intent'}, t.intent),
      h('p', {class: 'badges'}, prioBadge(t.priority), statusBadge(st), h('span', {class: 'ref'}, t.ref)),
      t.needed_by ? h('p', {class: 'needed'}, 'Needed by ', h('strong', null, when(t.needed_by)), ' · ', dueEl(t.needed_by)) : null,
    ].filter(Boolean));
    who.replaceChildren(...[
      'Asked by ', h('strong', null, t.requestor_id === me ? 'you' : t.requestor_id), ' · ', agoEl(t.created_at),
      t.executor_id ? h('span', {class: 'claim', id: 'claimant'}, t.executor_id === me ? ' · You have this' : ` · Claimed by ${t.executor_id}`) : null,
    ].filter(Boolean));

    const allowed = actions(t, me);
    bar.replaceChildren(...allowed.map((a) => {
      const spec = ACTIONS[a];
      return h('button', {type: 'button', class: `btn${spec.primary ? ' primary' : ''}${spec.danger ? ' danger' : ''}`, dataset: {action: a},
        'aria-expanded': spec.form ? String(openForm === a) : null,
        onclick: () => (spec.form ? toggle(a) : act(a))}, spec.label);
    }));
    if (openForm && !allowed.includes(openForm)) close();
    bar.hidden = allowed.length === 0;

    details.replaceChildren(...detailRows(t, req));
    renderTimeline();
  }

  function detailRows(t, req) {
    const rows = [h('h2', {id: 'details-h'}, 'Details')];
    const ctxEntries = entries(req.context, ctx);
    if (ctxEntries.length) rows.push(h('h3', null, 'Context'), h('div', {class: 'context'}, ctxEntries));
    const dl = h('dl', null);
    const row = (k, v) => { if (v != null && v !== '' && !(Array.isArray(v) && !v.length)) dl.append(h('dt', null, k), h('dd', null, v)); };
    const hints = (Array.isArray(req.response_hint) ? req.response_hint : []).map((x) => (typeof x === 'string' ? x : Object.keys(x || {})[0]));
    row('Send back', hints.length ? hints.map((x) => h('span', {class: 'chip'}, x)) : null);
    const reqs = (Array.isArray(req.requires) ? req.requires : []).map((x) => (typeof x === 'string' ? x : Object.keys(x || {})[0]));
    row('Requires', reqs.map((x) => h('span', {class: 'chip'}, x)));
    row('Needed by', t.needed_by ? when(t.needed_by) : null);
    const comp = req.compensation;
    if (comp) row('Compensation', typeof comp === 'object' ? [comp.shells != null ? `${comp.shells} shells` : '', comp.note ? ` ${comp.note}` : ''].join('').trim() || JSON.stringify(comp) : String(comp));
    row('Precision', req.precision);
    if (req.constraints) row('Constraints', h('pre', null, JSON.stringify(req.constraints, null, 1)));
    if (req.confirm_before) row('Confirmation', 'The requestor confirms before it is completed.');
    if (req.id) row('Their id', req.id);
    rows.push(dl);
    return rows;
  }

  // renderTimeline shows what happened, oldest first: a status change and
  // the message sent with it (same actor, same moment) are one entry.
  function renderTimeline() {
    const groups = new Map();
    const group = (actor, ts, order) => {
      const k = actor + '|' + ts;
      if (!groups.has(k)) groups.set(k, {actor, ts, order, changes: [], notes: [], messages: []});
      return groups.get(k);
    };
    for (const e of t.history || []) {
      if (e.type !== 'status') continue;
      const g = group(e.actor_id, e.ts, e.seq);
      g.changes.push(e);
      if (e.message) g.notes.push(e.message);
    }
    (t.messages || []).forEach((m, i) => {
      if (i === 0 && Array.isArray(m.mess) && m.mess.length === 1 && m.mess[0]?.request) return; // the request itself, shown above
      group(m.from, m.ts, Infinity).messages.push(m);
    });
    const items = [...groups.values()].sort((a, b) => Date.parse(a.ts) - Date.parse(b.ts) || a.order - b.order);
    timeline.replaceChildren(...items.map((g) => {
      const body = [];
      for (const e of g.changes) body.push(h('p', {class: 'st'}, statusInfo(e.old_status).label, ' → ', statusBadge(normStatus(e.new_status))));
      const shown = g.messages.flatMap((m) => message(m.mess, ctx, !!g.changes.length)).filter(Boolean);
      if (!g.messages.length) for (const n of g.notes) body.push(h('p', {class: 'text'}, n));
      body.push(...shown);
      const cls = 'ev' + (g.messages.length ? ' msg' : ' status') + (g.actor === me ? ' mine' : '');
      return h('li', {class: cls}, h('span', {class: 'ev-who'}, g.actor === me ? 'You' : g.actor, ' · ', h('time', {datetime: g.ts, title: when(g.ts)}, when(g.ts))), body);
    }));
    if (!items.length) timeline.append(h('li', {class: 'muted'}, 'Nothing has happened yet.'));
  }

  function close() {
    openForm = null;
    panel.hidden = true;
    panel.replaceChildren();
    for (const b of bar.querySelectorAll('[aria-expanded]')) b.setAttribute('aria-expanded', 'false');
  }

  function toggle(a) {
    err.show(null);
    if (openForm === a) { close(); return; }
    openForm = a;
    panel.replaceChildren(form(a));
    panel.hidden = false;
    for (const b of bar.querySelectorAll('[aria-expanded]')) b.setAttribute('aria-expanded', String(b.dataset.action === a));
    panel.querySelector('textarea, input, button')?.focus();
  }

  // send applies a change; a refusal shows the server's reason and the
  // thread is reloaded to show what is true now.
  async function send(change, done, formEl) {
    err.show(null);
    const run = async () => {
      try {
        await store.api.update(ref, change);
        toast(done);
        close();
      } catch (e) {
        err.show(e);
        err.scrollIntoView?.({block: 'nearest'});
      }
      await load();
    };
    return formEl ? busy(formEl, run) : run();
  }

  function act(a) {
    if (a === 'claim') return send({status: 'claimed', mess: [statusBlock(ref, 'claimed')]}, 'Claimed. It is yours.', bar);
    if (a === 'release') return send({status: 'pending', message: 'released', mess: [statusBlock(ref, 'pending', {message: 'Released; someone else can take it.'})]}, 'Released.', bar);
  }

  // textForm is a form with one text box and a submit button.
  function textForm(a, label, button, opts, submit) {
    const ta = h('textarea', {id: 'f-' + a, name: 'text', rows: 3, required: !!opts.required, maxlength: 4000, placeholder: opts.placeholder || ''});
    const f = h('form', {class: 'form', dataset: {form: a}, onsubmit: (e) => {
      e.preventDefault();
      const v = ta.value.trim();
      if (opts.required && !v) { err.show(new Error(`${label} is needed.`)); ta.focus(); return; }
      submit(v, f);
    }}, field(label, ta, opts.hint), h('div', {class: 'row'},
      h('button', {type: 'submit', class: 'btn primary' + (opts.danger ? ' danger' : ''), dataset: {submit: a}}, button),
      h('button', {type: 'button', class: 'btn', onclick: close}, 'Back')));
    return f;
  }

  function form(a) {
    switch (a) {
      case 'complete': return completeForm();
      case 'note': return textForm(a, 'Progress note', 'Post note', {required: true, placeholder: 'On my way, there in 10 minutes'}, (v, f) => {
        const change = {mess: [statusBlock(ref, 'in_progress', {message: v})]};
        if (normStatus(t.status) === 'claimed') Object.assign(change, {status: 'in_progress', message: v});
        send(change, 'Note posted.', f);
      });
      case 'ask': return textForm(a, 'Your question', 'Send question', {required: true, hint: 'The requestor is asked to answer; the request waits until they do.'}, (v, f) =>
        send({status: 'needs_input', message: v, mess: [statusBlock(ref, 'needs_input', {questions: [{question: v}]})]}, 'Question sent.', f));
      case 'request_confirmation': return textForm(a, 'What will you do?', 'Ask to confirm', {required: true, hint: 'This request must be confirmed before you complete it.'}, (v, f) =>
        send({status: 'needs_confirmation', message: v, mess: [statusBlock(ref, 'needs_confirmation', {action: v})]}, 'Asked for confirmation.', f));
      case 'decline': return textForm(a, 'Why are you declining? (optional)', 'Decline', {}, (v, f) =>
        send({status: 'declined', message: v, mess: [statusBlock(ref, 'declined', v ? {reason: v} : {})]}, 'Declined.', f));
      case 'fail': return textForm(a, "What went wrong?", "Mark as failed", {required: true, danger: true}, (v, f) =>
        send({status: 'failed', message: v, mess: [statusBlock(ref, 'failed', {reason: v})]}, 'Marked as failed.', f));
      case 'answer': return textForm(a, 'Your answer', 'Send answer', {required: true, hint: lastQuestion()}, (v, f) =>
        send({status: 'in_progress', message: v, mess: [{answer: {re: ref, value: v}}]}, 'Answer sent.', f));
      case 'confirm': return textForm(a, 'Note (optional)', 'Confirm', {hint: lastAction()}, (v, f) =>
        send({status: 'in_progress', message: v || 'confirmed', mess: [{reply: {re: ref, confirm: true, ...(v ? {reason: v} : {})}}]}, 'Confirmed.', f));
      case 'cancel': return textForm(a, 'Why cancel? (optional)', 'Cancel request', {danger: true}, (v, f) =>
        send({status: 'cancelled', message: v, mess: [{cancel: {re: ref, ...(v ? {reason: v} : {})}}]}, 'Request cancelled.', f));
    }
    return h('p', null, a);
  }

  const lastOf = (pick) => {
    for (let i = (t.messages || []).length - 1; i >= 0; i--) {
      for (const b of [].concat(t.messages[i].mess || [])) {
        const v = pick(b);
        if (v) return v;
      }
    }
    return '';
  };
  const lastQuestion = () => { const q = lastOf((b) => b?.status?.questions?.[0]?.question || (normStatus(b?.status?.code) === 'needs_input' && b.status.message)); return q ? 'They asked: ' + q : ''; };
  const lastAction = () => { const q = lastOf((b) => normStatus(b?.status?.code) === 'needs_confirmation' && (b.status.action || b.status.message)); return q ? 'They will: ' + q : ''; };

  function completeForm() {
    let photo = null, loc = null;
    const text = h('textarea', {id: 'f-answer', name: 'text', rows: 4, maxlength: 4000, placeholder: 'What did you find?'});
    const file = h('input', {type: 'file', id: 'f-photo', accept: 'image/*', capture: 'environment', class: 'file'});
    const preview = h('div', {class: 'preview', 'aria-live': 'polite'});
    const locOut = h('p', {class: 'muted', id: 'f-loc-out', 'aria-live': 'polite'});
    file.addEventListener('change', async () => {
      photo = null;
      preview.replaceChildren();
      const f = file.files[0];
      if (!f) return;
      preview.append(h('span', {class: 'muted'}, 'Preparing photo…'));
      try {
        const img = await downscale(f);
        photo = img.dataURL;
        preview.replaceChildren(h('img', {src: img.dataURL, alt: 'Photo to send', class: 'att', id: 'f-photo-preview'}),
          h('span', {class: 'muted'}, `${img.width}×${img.height}, ${Math.round(img.bytes / 1024)} KB`));
      } catch (e) {
        preview.replaceChildren(h('span', {class: 'error', role: 'alert'}, e.message));
      }
    });
    const locBtn = h('button', {type: 'button', class: 'btn', id: 'f-loc', onclick: () => {
      if (!navigator.geolocation) { locOut.textContent = 'This device cannot tell its location.'; return; }
      locOut.textContent = 'Finding you…';
      navigator.geolocation.getCurrentPosition((p) => {
        loc = {lat: p.coords.latitude, lng: p.coords.longitude, accuracy: Math.round(p.coords.accuracy)};
        locOut.textContent = `${loc.lat.toFixed(5)}, ${loc.lng.toFixed(5)} (±${loc.accuracy} m) will be sent.`;
      }, (e) => { loc = null; locOut.textContent = 'Location not available: ' + e.message; }, {enableHighAccuracy: true, timeout: 20000, maximumAge: 60000});
    }}, icon('pin'), 'Add my location');
    const f = h('form', {class: 'form', dataset: {form: 'complete'}, onsubmit: (e) => {
      e.preventDefault();
      const v = text.value.trim();
      if (!v && !photo && !loc) { err.show(new Error('Add an answer, a photo or your location.')); text.focus(); return; }
      const content = responseContent({text: v, photo, location: loc});
      send({status: 'completed', mess: [statusBlock(ref, 'completed'), {response: {re: ref, content}}]}, 'Completed. Thank you!', f);
    }},
    field('Your answer', text),
    h('div', {class: 'field'}, file, h('label', {for: 'f-photo', class: 'btn file-btn'}, icon('camera'), 'Add a photo'), preview),
    h('div', {class: 'field'}, locBtn, locOut),
    h('div', {class: 'row'}, h('button', {type: 'submit', class: 'btn primary', dataset: {submit: 'complete'}}, 'Send and complete'),
      h('button', {type: 'button', class: 'btn', onclick: close}, 'Back')));
    return f;
  }

  // Reload when the stream says the thread moved on (its summary's seq).
  const off = on((r) => {
    if (r !== undefined && r !== ref) return;
    const s = store.threads.get(ref);
    if (t && (!s || s.seq <= t.seq)) return;
    load();
  });
  head.append(h('h1', null, 'Loading…'));
  load();
  return {el: root, destroy: off};
}
