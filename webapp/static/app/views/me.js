// Me and my exchange: profile, capabilities, how I am told of requests, my
// key, and for the owner, members and invites.
import {agoEl, field, h, toast, when} from '../dom.js';
import {go} from '../router.js';
import {capIds, PRIORITIES} from '../status.js';
import {alertNew, on, refreshMe, replaceKey, setAlert, signOut, store, unlockAudio} from '../store.js';
import {busy, errorBox} from './common.js';


let installPrompt = null;
addEventListener('beforeinstallprompt', (e) => { e.preventDefault(); installPrompt = e; });

function section(title, id, ...kids) {
  return h('section', {class: 'card', 'aria-labelledby': id}, h('h2', {id}, title), kids);
}

function saver(form, err, fn, done) {
  return async (e) => {
    e.preventDefault();
    err.show(null);
    await busy(form, async () => {
      try {
        await fn();
        toast(done);
        await refreshMe();
      } catch (e2) {
        err.show(e2);
      }
    });
  };
}

function profile(me) {
  const err = errorBox();
  const name = h('input', {id: 'me-name', value: me.display_name || '', required: true, maxlength: 200, autocomplete: 'name'});
  const form = h('form', {class: 'form', id: 'me-profile'}, field('Display name', name), err,
    h('button', {type: 'submit', class: 'btn primary'}, 'Save name'));
  form.onsubmit = saver(form, err, () => store.api.updateMe({display_name: name.value.trim()}), 'Name saved.');
  return section('Profile', 'me-profile-h', h('p', {class: 'muted'}, `You are `, h('strong', null, me.id), ` in ${store.cred.exchange}${me.owner ? ', its owner' : ''}.`), form);
}

function capabilities(me) {
  const err = errorBox();
  const mine = capIds(me.capabilities);
  // Entries with metadata ({id: meta}) are kept as they are.
  const objects = (Array.isArray(me.capabilities) ? me.capabilities : []).filter((c) => c && typeof c === 'object');
  const boxes = h('div', {class: 'checks', id: 'me-caps'});
  const other = h('input', {id: 'me-caps-other', autocapitalize: 'none', spellcheck: 'false', placeholder: 'photo:capture, drive'});
  const known = new Set();
  store.api.capabilities().then((cat) => {
    for (const c of cat) {
      known.add(c.id);
      const cb = h('input', {type: 'checkbox', id: 'cap-' + c.id, value: c.id, checked: mine.includes(c.id)});
      boxes.append(h('label', {class: 'check', for: cb.id, title: c.description || ''}, cb, ' ', c.id, c.description ? h('small', {class: 'muted'}, ' — ' + c.description) : null));
    }
    other.value = mine.filter((c) => !known.has(c) && !objects.some((o) => c in o)).join(', ');
  }).catch(() => { other.value = mine.filter((c) => !objects.some((o) => c in o)).join(', '); });
  const form = h('form', {class: 'form', id: 'me-caps-form'}, boxes, field('Other capabilities', other, 'Comma-separated. Requests that require a capability go only to people who have it.'), err,
    h('button', {type: 'submit', class: 'btn primary'}, 'Save capabilities'));
  form.onsubmit = saver(form, err, () => {
    const ids = [...boxes.querySelectorAll('input:checked')].map((c) => c.value)
      .concat(other.value.split(',').map((s) => s.trim()).filter(Boolean));
    const list = [...new Set(ids)].filter((c) => !objects.some((o) => c in o));
    return store.api.updateMe({capabilities: [...list, ...objects]});
  }, 'Capabilities saved.');
  return section('What I can do', 'me-caps-h', form);
}

function alerts() {
  const vib = h('input', {type: 'checkbox', id: 'alert-vibrate', checked: store.alert.vibrate});
  const chime = h('input', {type: 'checkbox', id: 'alert-chime', checked: store.alert.chime});
  const save = () => { setAlert({vibrate: vib.checked, chime: chime.checked}); toast('Saved on this device.'); };
  vib.onchange = save;
  chime.onchange = save;
  return section('Alerts on this device', 'me-alert-h',
    h('p', {class: 'muted'}, 'When a request you can take arrives while the app is open.'),
    h('label', {class: 'check', for: vib.id}, vib, ' Vibrate'),
    h('label', {class: 'check', for: chime.id}, chime, ' Chime'),
    h('button', {type: 'button', class: 'btn', onclick: () => { unlockAudio(); alertNew(); }}, 'Try it'));
}

function notifications(me) {
  const err = errorBox();
  const chans = Array.isArray(me.notifications) ? me.notifications : [];
  const ntfy = chans.find((c) => c?.type === 'ntfy') || {};
  const prefs = me.preferences && typeof me.preferences === 'object' ? me.preferences : {};
  const qh = prefs.quiet_hours || {};
  const topic = h('input', {id: 'ntfy-topic', value: ntfy.topic || '', pattern: '[-_A-Za-z0-9]{1,64}', autocapitalize: 'none', spellcheck: 'false', placeholder: 'my-secret-topic'});
  const server = h('input', {id: 'ntfy-server', type: 'url', value: ntfy.server || '', placeholder: 'default of the exchange'});
  const minP = h('select', {id: 'min-priority'}, PRIORITIES.slice().reverse().map((p) => h('option', {value: p, selected: (prefs.min_priority || 'normal') === p}, p === 'background' ? 'Everything' : `${p[0].toUpperCase()}${p.slice(1)} and above`)));
  const qOn = h('input', {type: 'checkbox', id: 'quiet-on', checked: !!(qh.start && qh.end && qh.enabled !== false)});
  const qStart = h('input', {type: 'time', id: 'quiet-start', value: qh.start || '22:00'});
  const qEnd = h('input', {type: 'time', id: 'quiet-end', value: qh.end || '07:00'});
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const tz = h('input', {id: 'quiet-tz', value: qh.timezone || zone, list: 'tz-list', autocapitalize: 'none', spellcheck: 'false'});
  const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf('timeZone') : [zone];
  const tzList = h('datalist', {id: 'tz-list'}, zones.map((z) => h('option', {value: z})));
  // Secrets come back redacted ("[redacted]"); sent back so, the exchange
  // keeps the stored ones (per channel type, in order), so every channel
  // is saved as it came.
  const form = h('form', {class: 'form', id: 'me-notify'},
    h('fieldset', null, h('legend', null, 'ntfy push'),
      field('Topic', topic, 'Install the ntfy app and subscribe to this topic. Empty turns ntfy off.'),
      field('Server', server)),
    field('Tell me about', minP, 'Requests below this priority are not pushed.'),
    h('fieldset', null, h('legend', null, 'Quiet hours'),
      h('label', {class: 'check', for: qOn.id}, qOn, ' Only urgent requests during quiet hours'),
      h('div', {class: 'grid2'}, field('From', qStart), field('To', qEnd)),
      field('Time zone', tz), tzList),
    h('div', {class: 'row'}, h('button', {type: 'button', class: 'btn', id: 'notify-test', onclick: async (e) => {
      err.show(null);
      const out = form.querySelector('#notify-test-out');
      out.replaceChildren();
      await busy(e.target.parentElement, async () => {
        try {
          const res = await store.api.testNotification();
          const chans = res.channels || [];
          out.replaceChildren(...chans.map((c) => h('div', {class: c.status === 'sent' ? '' : 'error', dataset: {status: c.status}},
            `${c.type}${c.destination ? ' (' + c.destination + ')' : ''}: ${c.status === 'sent' ? 'sent' : c.status === 'failed' ? 'failed' : 'not sent yet'}${c.error ? ' — ' + c.error : ''}`)));
          toast(chans.every((c) => c.status === 'sent') ? 'Test notification sent.' : 'The test did not reach every channel.');
          showDeliveries();
        } catch (e2) {
          err.show(e2);
        }
      });
    }}, 'Send a test'), h('span', {class: 'muted'}, ' to the channels saved on the exchange.')),
    h('div', {id: 'notify-test-out', role: 'status'}),
    h('div', {id: 'deliveries', class: 'muted'}),
    err,
    h('button', {type: 'submit', class: 'btn primary'}, 'Save notifications'));
  const showDeliveries = () => store.api.deliveries().then((d) => {
    const el = form.querySelector('#deliveries');
    const fails = d.failures || [];
    el.replaceChildren(`${(d.pending || []).length} waiting to be sent; ${fails.length} failed recently.`,
      ...fails.slice(-3).map((f) => h('div', {class: 'error'}, `${f.channel || f.type || ''} ${f.error || f.last_error || ''}`.trim())));
  }).catch(() => {});
  showDeliveries();
  form.onsubmit = saver(form, err, () => {
    const change = {};
    const t = topic.value.trim();
    const n = chans.filter((c) => c !== ntfy);
    if (t) {
      const c = {...ntfy, type: 'ntfy', topic: t, server: server.value.trim() || undefined};
      const i = chans.indexOf(ntfy);
      n.splice(i < 0 ? 0 : i, 0, c); // where it was, so nothing else moves
    }
    change.notifications = JSON.parse(JSON.stringify(n));
    const p = {...prefs, min_priority: minP.value};
    p.quiet_hours = {enabled: qOn.checked, start: qStart.value, end: qEnd.value, timezone: tz.value.trim() || 'UTC'};
    change.preferences = p;
    return store.api.updateMe(change);
  }, 'Notifications saved.');
  return section('Notifications', 'me-notify-h', form);
}

function key() {
  const err = errorBox();
  const out = h('div', {id: 'key-out'});
  const show = (k, note) => out.replaceChildren(h('p', {class: 'warn'}, note),
    h('div', {class: 'copy'}, h('input', {id: 'key-value', readOnly: true, value: k, 'aria-label': 'Your API key'}),
      h('button', {type: 'button', class: 'btn', onclick: () => navigator.clipboard?.writeText(k).then(() => toast('Copied.'))}, 'Copy')));
  const box = h('div', {class: 'row wrap'},
    h('button', {type: 'button', class: 'btn', id: 'show-key', onclick: () => show(store.cred.key, 'Anyone with this key can act as you. Use it to sign in on another device.')}, 'Show my key'),
    h('button', {type: 'button', class: 'btn', id: 'rotate-key', onclick: async (e) => {
      if (!confirm('Make a new key? Every other device signed in as you is signed out.')) return;
      await busy(box, async () => {
        try {
          const r = await store.api.rotateKey();
          replaceKey(r.api_key);
          show(r.api_key, 'Your new key. The old one no longer works.');
          toast('Key rotated.');
        } catch (e2) {
          err.show(e2);
        }
      });
    }}, 'Rotate key'),
    h('button', {type: 'button', class: 'btn danger', id: 'sign-out', onclick: () => {
      if (!confirm('Sign out on this device? You need your key, or a new invite, to come back.')) return;
      signOut();
      go('#/join');
    }}, 'Sign out'));
  const install = installPrompt ? h('button', {type: 'button', class: 'btn', onclick: () => installPrompt.prompt()}, 'Install the app') : null;
  return section('Your key', 'me-key-h', h('p', {class: 'muted'}, 'Your key is kept on this device only.'), box, err, out, install);
}

function inviteLink(inv) {
  const base = location.href.split('#')[0];
  return `${base}#/join/${encodeURIComponent(store.cred.exchange)}/${encodeURIComponent(inv.token)}`;
}

function inviteCard(inv) {
  const link = inviteLink(inv);
  const qr = h('img', {class: 'qr', id: 'invite-qr', width: 240, height: 240, alt: 'QR code of the invite link', src: 'app/qr.png?size=480&data=' + encodeURIComponent(link)});
  return h('div', {class: 'invite', dataset: {invite: inv.id}}, qr,
    h('div', {class: 'copy'}, h('input', {readOnly: true, value: link, id: 'invite-link', 'aria-label': 'Invite link'}),
      h('button', {type: 'button', class: 'btn', onclick: () => navigator.clipboard?.writeText(link).then(() => toast('Link copied.'))}, 'Copy')),
    navigator.share ? h('button', {type: 'button', class: 'btn', onclick: () => navigator.share({title: `Join ${store.cred.exchange}`, url: link}).catch(() => {})}, 'Share') : null,
    h('p', {class: 'muted'}, `For ${inv.max_uses} ${inv.max_uses === 1 ? 'person' : 'people'}, until ${when(inv.expires_at)}.`));
}

function owner() {
  const err = errorBox();
  const members = h('ul', {class: 'members', id: 'members'});
  store.api.executors().then((list) => members.replaceChildren(...list.map((x) => h('li', null,
    h('strong', null, x.display_name || x.id), ` (${x.id})`, x.owner ? h('span', {class: 'chip'}, 'owner') : null,
    h('small', {class: 'muted'}, ' · seen ', x.last_seen ? agoEl(x.last_seen) : 'never',
      capIds(x.capabilities).length ? ' · ' + capIds(x.capabilities).join(', ') : ''))))).catch((e) => err.show(e));
  const uses = h('input', {type: 'number', id: 'invite-uses', min: 1, max: 10000, value: 1, inputmode: 'numeric'});
  const ttl = h('select', {id: 'invite-ttl'}, [['3600', '1 hour'], ['86400', '1 day'], ['604800', '7 days'], ['2592000', '30 days']].map(([v, l]) => h('option', {value: v, selected: v === '604800'}, l)));
  const out = h('div', {id: 'invite-out'});
  // The exchange lists its invites without their tokens (a link is shown
  // once, when it is made); the owner revokes those no longer wanted.
  const invites = h('ul', {class: 'members', id: 'invites'});
  const listErr = errorBox();
  const loadList = () => store.api.invites().then((list) => invites.replaceChildren(...(list.length ? list.map((i) => h('li', {dataset: {invite: i.id}},
    h('code', null, i.id), ` · used ${i.uses} of ${i.max_uses} · `,
    Date.parse(i.expires_at) > Date.now() && i.uses < i.max_uses ? `until ${when(i.expires_at)} ` : h('span', {class: 'muted'}, 'no longer usable '),
    h('button', {type: 'button', class: 'btn danger', dataset: {revoke: i.id}, onclick: async (e) => {
      if (!confirm('Revoke this invite? Its link will no longer admit anyone.')) return;
      listErr.show(null);
      await busy(e.target.closest('li'), async () => {
        try {
          await store.api.revokeInvite(i.id);
          toast('Invite revoked.');
          await loadList();
        } catch (e2) {
          listErr.show(e2);
        }
      });
    }}, 'Revoke'))) : [h('li', {class: 'muted'}, 'No invites.')]))).catch((e) => listErr.show(e));
  loadList();
  const form = h('form', {class: 'form', id: 'invite-form'}, h('div', {class: 'grid2'}, field('People', uses), field('Valid for', ttl)), err,
    h('button', {type: 'submit', class: 'btn primary', id: 'invite-create'}, 'Create invite'));
  form.onsubmit = async (e) => {
    e.preventDefault();
    err.show(null);
    await busy(form, async () => {
      try {
        const inv = await store.api.invite(Number(uses.value) || 1, Number(ttl.value));
        out.replaceChildren(inviteCard(inv));
        loadList();
        toast('Invite created.');
      } catch (e2) {
        err.show(e2);
      }
    });
  };
  return {
    invite: section('Invite people', 'me-invite-h', h('p', {class: 'muted'}, 'They open the link or scan the code on their phone and join with their name.'), form, out, h('h3', null, 'Invites'), listErr, invites),
    members: section('Members', 'me-members-h', members),
  };
}

export function me() {
  const body = h('div', {class: 'stack'});
  const el = h('section', null, h('h1', null, 'Me and my exchange'), body);
  let shownFor = null;
  function render() {
    const m = store.me;
    if (!m) { body.replaceChildren(h('p', {class: 'loading'}, 'Loading…')); return; }
    if (shownFor === m) return;
    // Re-render only on first load: saving refreshes the profile, and the
    // forms keep what the person typed.
    if (shownFor) return;
    shownFor = m;
    const o = m.owner ? owner() : {};
    body.replaceChildren(...[profile(m), o.invite, capabilities(m), alerts(), notifications(m), key(), o.members].filter(Boolean));
  }
  const off = on(render);
  render();
  if (!store.me) refreshMe().catch(() => {});
  return {el, destroy: off};
}
