// The exchange's HTTP API (protocol v1). Every error the server answers is
// JSON {"error": message, "code": code}; ApiError carries it, so the views
// can show the server's own reason ("thread is claimed by alice").

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `The server answered ${status}`);
    this.status = status;
    this.code = body?.code;
    this.body = body;
  }
}

// Api talks to one exchange as one executor. base is the API prefix
// (/api/v1); cred is {exchange, id, key}.
export class Api {
  constructor(base, cred) {
    this.base = base;
    this.cred = cred;
  }

  get root() { return `${this.base}/exchanges/${encodeURIComponent(this.cred.exchange)}`; }

  async call(method, path, body, headers = {}) {
    const h = {...headers};
    if (this.cred?.key) h.Authorization = 'Bearer ' + this.cred.key;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(this.root + path, {method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store'});
    } catch (e) {
      throw new ApiError(0, {error: 'Cannot reach the exchange. Check your connection and try again.', code: 'offline'});
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) throw new ApiError(res.status, data && typeof data === 'object' ? data : {error: text.slice(0, 200) || res.statusText});
    return data;
  }

  // blob fetches a file with the key (attachments need it), as a Blob.
  async blob(path) {
    const res = await fetch(this.root + path, {headers: {Authorization: 'Bearer ' + this.cred.key}});
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch { body = null; }
      throw new ApiError(res.status, body);
    }
    return res.blob();
  }

  register(reg) { return this.call('POST', '/register', reg); }
  list(query) { return this.call('GET', '/requests?' + query); }
  thread(ref) { return this.call('GET', '/requests/' + encodeURIComponent(ref)).then((r) => r.thread); }
  create(req, idemKey) { return this.call('POST', '/requests', req, {'Idempotency-Key': idemKey}); }
  update(ref, change) { return this.call('PATCH', '/requests/' + encodeURIComponent(ref), change); }
  attachment(ref, name) { return this.blob(`/requests/${encodeURIComponent(ref)}/attachments/${encodeURIComponent(name)}`); }
  me() { return this.call('GET', '/me'); }
  executors() { return this.call('GET', '/executors').then((r) => r.executors || []); }
  executor(id) { return this.call('GET', '/executors/' + encodeURIComponent(id)).then((r) => r.executor); }
  updateMe(change) { return this.call('PATCH', '/executors/' + encodeURIComponent(this.cred.id), change); }
  rotateKey() { return this.call('POST', `/executors/${encodeURIComponent(this.cred.id)}/keys`, {revoke_others: true}); }
  invite(maxUses, expiresIn) { return this.call('POST', '/invites', {max_uses: maxUses, expires_in: expiresIn}); }
  invites() { return this.call('GET', '/invites').then((r) => r.invites || []); }
  revokeInvite(id) { return this.call('DELETE', '/invites/' + encodeURIComponent(id)); }
  capabilities() { return this.call('GET', '/capabilities').then((r) => r.capabilities || []); }
  testNotification() { return this.call('POST', '/notifications/test'); }
  deliveries() { return this.call('GET', '/notifications/deliveries'); }
}
