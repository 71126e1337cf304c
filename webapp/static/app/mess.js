// MESS messages (protocol v1): a list of single-key blocks. This module
// writes the blocks a person sends and renders the blocks anyone sent.
import {h, icon} from './dom.js';
import {statusInfo} from './status.js';

// statusBlock is the status block that goes with a status change.
export function statusBlock(ref, code, extra = {}) {
  return {status: {re: ref, code, ...extra}};
}

// response builds the response content: text, a photo (a data: URI, which
// the exchange serves back as attachment att-{message}-{n}.jpg) and a
// location.
export function responseContent({text, photo, location}) {
  const content = [];
  if (text) content.push(text);
  if (photo) content.push({image: photo});
  if (location) content.push({location});
  return content;
}

// safe keeps links to the web, maps and phones; anything else (javascript:,
// data: documents) is shown as text, not followed.
const safe = (u) => /^(https?:|geo:|mailto:|tel:)/i.test(String(u).trim());
const link = (u, text = u) => (safe(u) ? h('a', {href: String(u).trim(), target: '_blank', rel: 'noopener noreferrer'}, String(text)) : h('code', null, String(u)));

const isData = (s) => typeof s === 'string' && s.startsWith('data:');
const mimeOf = (s) => (s.match(/^data:([^;,]+)/) || [])[1] || '';

// Ctx gives renderers what they need to fetch attachments: the thread's ref
// and fetchAttachment(name) → Promise<Blob>.
function attachmentImg(ctx, name, alt) {
  const img = h('img', {class: 'att', alt: alt || name, loading: 'lazy'});
  ctx.fetchAttachment(name).then((blob) => {
    img.src = URL.createObjectURL(blob);
  }).catch((e) => img.replaceWith(h('span', {class: 'error'}, `Could not load ${name}: ${e.message}`)));
  return img;
}

function download(ctx, name, data) {
  return h('button', {type: 'button', class: 'link', onclick: async (ev) => {
    const b = ev.currentTarget;
    try {
      const blob = data ? await (await fetch(data)).blob() : await ctx.fetchAttachment(name);
      const url = URL.createObjectURL(blob);
      const a = h('a', {href: url, download: name});
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      b.after(h('span', {class: 'error', role: 'alert'}, ` ${e.message}`));
    }
  }}, icon('download'), ` ${name}`);
}

// media renders an image, audio, video or file entry's value.
function media(kind, v, ctx) {
  if (isData(v)) {
    const mime = mimeOf(v);
    if (kind === 'image' || mime.startsWith('image/')) return h('img', {class: 'att', src: v, alt: 'Photo', loading: 'lazy'});
    if (kind === 'audio' || mime.startsWith('audio/')) return h('audio', {controls: true, src: v});
    if (kind === 'video' || mime.startsWith('video/')) return h('video', {controls: true, src: v, class: 'att'});
    return download(ctx, `${kind}.${(mime.split('/')[1] || 'bin')}`, v);
  }
  if (typeof v === 'string') return link(v);
  if (v && typeof v === 'object') {
    // {name, data} (kept inline, served by name) or {file} (an attachment
    // name): both are fetched from the attachments endpoint with the key.
    const name = v.name || v.file;
    if (name && typeof name === 'string') {
      const mime = v.mime || '';
      if (kind === 'image' || mime.startsWith('image/') || /\.(jpe?g|png|gif|webp)$/i.test(name)) return attachmentImg(ctx, name, v.description);
      return download(ctx, name);
    }
    if (v.uri || v.url) return media(kind, v.uri || v.url, ctx);
  }
  return h('pre', null, JSON.stringify(v, null, 1));
}

function location(v) {
  const lat = Number(v.lat), lng = Number(v.lng ?? v.lon);
  const label = [v.name, v.address, v.description].filter(Boolean).join(' — ');
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) return h('p', {class: 'loc'}, icon('pin'), ' ', label || JSON.stringify(v));
  const coords = `${lat.toFixed(5)}, ${lng.toFixed(5)}`;
  return h('p', {class: 'loc'}, icon('pin'), ' ',
    h('a', {href: `geo:${lat},${lng}`}, label || coords),
    v.accuracy ? ` (±${Math.round(v.accuracy)} m)` : '', ' · ',
    h('a', {href: `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lng}#map=17/${lat}/${lng}`, target: '_blank', rel: 'noopener noreferrer'}, 'map'));
}

// entry renders one context or content entry.
export function entry(e, ctx) {
  if (typeof e === 'string') return h('p', {class: 'text'}, e);
  if (!e || typeof e !== 'object') return h('p', null, String(e));
  const [k] = Object.keys(e);
  const v = e[k];
  switch (k) {
    case 'text': return h('p', {class: 'text'}, String(v));
    case 'image': case 'audio': case 'video': case 'file': case 'attachment': return h('div', {class: 'media'}, media(k, v, ctx));
    case 'url': return h('p', null, link(v));
    case 'location': return location(v || {});
    case 'confirmation': {
      const ok = typeof v === 'object' ? v?.confirmed : v;
      return h('p', null, ok ? '✔ Confirmed' : '✘ Not confirmed', v?.details ? ` — ${v.details}` : '');
    }
    case 'error': return h('p', {class: 'error'}, `${v?.code ? v.code + ': ' : ''}${v?.message || JSON.stringify(v)}`);
    case 'ref': return h('p', null, 'See ', h('code', null, String(v)));
  }
  return h('pre', null, JSON.stringify(e, null, 1));
}

// entries renders a list of entries.
export const entries = (list, ctx) => (Array.isArray(list) ? list : list == null ? [] : [list]).map((e) => entry(e, ctx));

// block renders one block of a message. With quiet set, a status block
// shows only its words: the status change is shown beside it.
function block(b, ctx, quiet) {
  if (!b || typeof b !== 'object') return h('p', null, String(b));
  const [k] = Object.keys(b);
  const v = b[k] ?? {};
  switch (k) {
    case 'v': return null;
    case 'request': return h('p', {class: 'muted'}, 'Posted the request.');
    case 'status': {
      const kids = quiet ? [] : [h('p', {class: 'st'}, h('span', {class: 'badge tone-' + statusInfo(v.code).tone}, statusInfo(v.code).label))];
      for (const t of [v.message, v.reason, v.action, v.note]) if (t) kids.push(h('p', {class: 'text'}, String(t)));
      for (const q of Array.isArray(v.questions) ? v.questions : []) kids.push(h('p', {class: 'text question'}, 'Question: ', q.question || q.text || JSON.stringify(q)));
      return kids;
    }
    case 'response': return entries(v.content, ctx).concat(v.notes ? [h('p', {class: 'muted'}, String(v.notes))] : []);
    case 'answer': return h('p', {class: 'text answer'}, 'Answer: ', typeof v.value === 'string' ? v.value : JSON.stringify(v.value));
    case 'reply': {
      if (v.confirm !== undefined) return h('p', {class: 'text'}, v.confirm ? '✔ Confirmed' : '✘ Not confirmed', v.reason ? ` — ${v.reason}` : '');
      if (v.answers) return Object.entries(v.answers).map(([q, a]) => h('p', {class: 'text answer'}, 'Answer: ', typeof a === 'string' ? a : JSON.stringify(a)));
      break;
    }
    case 'cancel': return h('p', {class: 'text'}, 'Cancelled', v.reason ? `: ${v.reason}` : '.');
  }
  return h('details', null, h('summary', null, k), h('pre', null, JSON.stringify(v, null, 1)));
}

// message renders a message's blocks (a list, or one block object).
export function message(mess, ctx, quiet = false) {
  const list = Array.isArray(mess) ? mess : [mess];
  return list.flatMap((b) => block(b, ctx, quiet));
}
