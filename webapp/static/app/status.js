// Statuses and priorities of MESS protocol v1, and the transition table the
// exchange enforces, seen from one person: which tab a thread belongs in and
// which actions to offer.

export const STATUSES = {
  pending: {label: 'Pending', tone: 'open'},
  claimed: {label: 'Claimed', tone: 'active'},
  in_progress: {label: 'In progress', tone: 'active'},
  waiting: {label: 'Waiting', tone: 'paused'},
  held: {label: 'On hold', tone: 'paused'},
  needs_input: {label: 'Needs input', tone: 'ask'},
  needs_confirmation: {label: 'Needs confirmation', tone: 'ask'},
  partial: {label: 'Partly done', tone: 'active'},
  completed: {label: 'Completed', tone: 'done', terminal: true},
  failed: {label: 'Failed', tone: 'bad', terminal: true},
  declined: {label: 'Declined', tone: 'off', terminal: true},
  delegated: {label: 'Delegated', tone: 'off', terminal: true},
  cancelled: {label: 'Cancelled', tone: 'off', terminal: true},
  expired: {label: 'Expired', tone: 'off', terminal: true},
  superseded: {label: 'Superseded', tone: 'off', terminal: true},
};

const ALIASES = {rejected: 'declined', canceled: 'cancelled', received: 'pending'};

// normStatus accepts the spellings of other clients: in-progress,
// Needs-Input, canceled, rejected, received.
export function normStatus(s) {
  const n = String(s ?? '').trim().toLowerCase().replace(/[-\s]+/g, '_');
  return ALIASES[n] || n;
}

// statusInfo gives a label and tone for any status, even one this app does
// not know (shown as it came).
export function statusInfo(s) {
  const n = normStatus(s);
  return STATUSES[n] || {label: n ? n.replace(/_/g, ' ') : 'unknown', tone: 'off', unknown: true};
}

export const isTerminal = (s) => !!STATUSES[normStatus(s)]?.terminal;

export const PRIORITIES = ['urgent', 'elevated', 'normal', 'background'];
const RANK = {background: 0, normal: 1, elevated: 2, urgent: 3};
export const prioRank = (p) => RANK[String(p || 'normal').toLowerCase()] ?? 1;

// capIds returns the capability ids of a requires or capabilities list:
// plain strings and the keys of {id: metadata} objects.
export function capIds(list) {
  const out = [];
  for (const c of Array.isArray(list) ? list : []) {
    if (typeof c === 'string') out.push(c);
    else if (c && typeof c === 'object') out.push(...Object.keys(c));
  }
  return out;
}

// matches says whether an executor with caps may take a request needing
// requires; unknown requires (a thread not seen yet) count as a match.
export const matches = (requires, caps) => !requires || requires.every((c) => caps.includes(c));

// tabOf places a thread summary in one of the inbox tabs, or none.
export function tabOf(t, me, fits = true) {
  const st = normStatus(t.status);
  const mineExec = t.executor_id === me;
  const mineReq = t.requestor_id === me;
  if (isTerminal(st)) return mineExec || mineReq ? 'done' : null;
  if (mineExec) return 'mine';
  if (mineReq) return 'asked';
  if (st === 'pending' && !t.executor_id && fits) return 'available';
  return null;
}

// waitsOnMe says whether the thread waits for this person's answer.
export function waitsOnMe(t, me) {
  const st = normStatus(t.status);
  return t.requestor_id === me && (st === 'needs_input' || st === 'needs_confirmation');
}

const time = (s, dflt) => { const v = Date.parse(s); return Number.isNaN(v) ? dflt : v; };

// compare orders a tab: what waits on me first, then priority, then the
// nearest needed_by, then newest. Done is newest update first.
export function compare(tab, me) {
  if (tab === 'done') return (a, b) => time(b.updated_at, 0) - time(a.updated_at, 0) || (a.ref < b.ref ? -1 : 1);
  return (a, b) => {
    const w = (waitsOnMe(b, me) ? 1 : 0) - (waitsOnMe(a, me) ? 1 : 0);
    if (w) return w;
    const p = prioRank(b.priority) - prioRank(a.priority);
    if (p) return p;
    const da = time(a.needed_by, Infinity), db = time(b.needed_by, Infinity);
    if (da !== db) return da < db ? -1 : 1;
    return time(b.created_at, 0) - time(a.created_at, 0) || (a.ref < b.ref ? -1 : 1);
  };
}

// confirmed says whether the requestor has answered a needs_confirmation.
export function confirmed(thread) {
  return (thread.history || []).some((e) => e.type === 'status' &&
    normStatus(e.old_status) === 'needs_confirmation' && normStatus(e.new_status) === 'in_progress' &&
    e.actor_id === thread.requestor_id);
}

// actions lists what this person may do to a thread, following the
// exchange's transition table (README "Statuses and who may set them").
// Decline is offered on pending requests: the protocol lets an executor
// turn a request down without claiming it first.
export function actions(thread, me) {
  const st = normStatus(thread.status);
  const out = [];
  if (isTerminal(st)) return out;
  const isReq = thread.requestor_id === me;
  const isExec = !!thread.executor_id && thread.executor_id === me;
  if (st === 'pending' && !thread.executor_id) {
    if (!isReq) out.push('claim', 'decline');
  } else if (isExec) {
    const needConfirm = thread.request?.confirm_before && !confirmed(thread);
    if (needConfirm) {
      if (st !== 'needs_confirmation') out.push('request_confirmation');
    } else {
      out.push('complete');
    }
    out.push('note', 'ask', 'release', 'fail', 'decline');
  }
  if (isReq) {
    if (st === 'needs_input') out.push('answer');
    if (st === 'needs_confirmation') out.push('confirm');
    out.push('cancel');
  }
  return out;
}
