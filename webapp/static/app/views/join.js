// Joining an exchange (with an invite link, or as its first member) and
// signing in with a key from another device.
import {Api} from '../api.js';
import {field, h, toast} from '../dom.js';
import {go} from '../router.js';
import {API_BASE, DEFAULT_EXCHANGE, signIn, store} from '../store.js';
import {busy, errorBox} from './common.js';

// slug derives an executor id from a name: 1-64 letters, digits, - or _.
export function slug(name) {
  const s = name.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40);
  return s || '';
}

const ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

// parseInvite reads an invite link or a bare token.
export function parseInvite(s) {
  s = s.trim();
  const m = s.match(/#\/join\/([^/]+)\/([^/?#\s]+)/);
  if (m) return {exchange: decodeURIComponent(m[1]), token: decodeURIComponent(m[2])};
  return {exchange: '', token: s};
}

export function join(args) {
  const [xArg, tokenArg] = args;
  const invited = !!tokenArg;
  const err = errorBox();
  const exchange = h('input', {id: 'join-exchange', name: 'exchange', value: xArg || DEFAULT_EXCHANGE, required: true, autocapitalize: 'none', autocomplete: 'off', spellcheck: 'false', pattern: '[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}'});
  const name = h('input', {id: 'join-name', name: 'name', required: true, maxlength: 200, autocomplete: 'name', placeholder: 'Alex'});
  const idIn = h('input', {id: 'join-id', name: 'executor_id', required: true, maxlength: 64, autocapitalize: 'none', autocomplete: 'username', spellcheck: 'false', pattern: '[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}'});
  const invite = h('input', {id: 'join-invite', name: 'invite', autocapitalize: 'none', autocomplete: 'off', spellcheck: 'false', placeholder: 'Paste an invite link'});
  let idEdited = false;
  name.addEventListener('input', () => { if (!idEdited) idIn.value = slug(name.value); });
  idIn.addEventListener('input', () => { idEdited = true; });

  const form = h('form', {class: 'form card', id: 'join-form', onsubmit: async (e) => {
    e.preventDefault();
    err.show(null);
    let x = exchange.value.trim(), token = tokenArg || '';
    if (!invited && invite.value.trim()) {
      const inv = parseInvite(invite.value);
      token = inv.token;
      if (inv.exchange) x = inv.exchange;
    }
    const id = idIn.value.trim() || slug(name.value);
    if (!ID.test(x)) { err.show(new Error('The exchange name may use letters, digits, - and _.')); return; }
    if (!ID.test(id)) { err.show(new Error('Your id may use letters, digits, - and _ (up to 64).')); idIn.focus(); return; }
    const reg = {executor_id: id, display_name: name.value.trim() || id};
    if (token) reg.invite_token = token;
    await busy(form, async () => {
      try {
        const api = new Api(API_BASE, {exchange: x});
        const res = await api.register(reg);
        signIn({exchange: x, id: res.executor_id, key: res.api_key, owner: !!res.owner});
        toast(res.owner ? `You created ${x} and own it.` : `Welcome to ${x}!`);
        go(res.owner ? '#/me' : '#/inbox');
      } catch (e2) {
        err.show(e2);
      }
    });
  }},
  invited ? null : field('Exchange', exchange, 'The first person to join a new exchange owns it.'),
  field('Your name', name),
  field('Your id', idIn, 'How the exchange knows you: letters, digits, - and _.'),
  invited ? null : field('Invite (if you have one)', invite),
  err,
  h('button', {type: 'submit', class: 'btn primary wide', id: 'join-submit'}, invited ? `Join ${xArg}` : 'Join'));

  const signedIn = store.cred ? h('p', {class: 'card warn'}, `This device is signed in as ${store.cred.id} in ${store.cred.exchange}. Joining signs it in as someone new.`) : null;
  return {el: h('section', null,
    h('h1', null, invited ? `You're invited to ${xArg}` : 'Join an exchange'),
    h('p', {class: 'muted'}, 'Agents and people post requests for help here; you see them, take the ones you can do, and answer from your phone.'),
    signedIn, form,
    h('p', {class: 'center'}, 'Already a member? ', h('a', {href: '#/signin', id: 'to-signin'}, 'Sign in with your key')))};
}

// keyExchange reads the exchange out of a key: mess_{exchange}_{32 hex}.
export function keyExchange(key) {
  const m = key.match(/^mess_(.+)_[0-9a-f]{32}$/);
  return m ? m[1] : '';
}

export function signin() {
  const err = errorBox();
  const key = h('input', {id: 'signin-key', name: 'key', required: true, autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', placeholder: 'mess_home_…'});
  const form = h('form', {class: 'form card', id: 'signin-form', onsubmit: async (e) => {
    e.preventDefault();
    err.show(null);
    const k = key.value.trim();
    const x = keyExchange(k);
    if (!x) { err.show(new Error('That is not an API key: keys look like mess_home_ followed by 32 hex digits.')); return; }
    await busy(form, async () => {
      try {
        const api = new Api(API_BASE, {exchange: x, key: k});
        // GET /me names the key's executor and shows its own profile.
        const {executor: me} = await api.me();
        const id = me.id;
        signIn({exchange: x, id, key: k, owner: !!me.owner});
        toast(`Signed in as ${me.display_name || id}.`);
        go('#/inbox');
      } catch (e2) {
        err.show(e2);
      }
    });
  }},
  field('API key', key, 'Find it on your other device under Me → Your key.'),
  err,
  h('button', {type: 'submit', class: 'btn primary wide', id: 'signin-submit'}, 'Sign in'));
  return {el: h('section', null, h('h1', null, 'Sign in with your key'), form,
    h('p', {class: 'center'}, h('a', {href: '#/join'}, 'Join an exchange instead')))};
}
