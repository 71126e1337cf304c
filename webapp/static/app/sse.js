// Server-sent events over fetch(). EventSource cannot send the API's
// Authorization header, so the app reads the stream itself.

// SSEParser turns chunks of an event stream into events, following the
// HTML standard's rules: lines end in CRLF, LF or CR; "data" lines join
// with LF; "id" sets the last event id (kept across events); comments and
// events without data are dropped.
export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = '';
    this.data = [];
    this.type = '';
    this.lastId = '';
    this.retry = null;
    this.started = false;
  }

  push(chunk) {
    this.buf += chunk;
    if (!this.started && this.buf) {
      if (this.buf[0] === '\ufeff') this.buf = this.buf.slice(1);
      this.started = true;
    }
    let start = 0;
    const b = this.buf;
    for (let i = 0; i < b.length; i++) {
      const c = b[i];
      if (c !== '\n' && c !== '\r') continue;
      if (c === '\r' && i === b.length - 1) break; // an LF may follow in the next chunk
      this.line(b.slice(start, i));
      if (c === '\r' && b[i + 1] === '\n') i++;
      start = i + 1;
    }
    this.buf = b.slice(start);
  }

  line(line) {
    if (line === '') return this.dispatch();
    if (line[0] === ':') return;
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value[0] === ' ') value = value.slice(1);
    switch (field) {
      case 'data': this.data.push(value); break;
      case 'event': this.type = value; break;
      case 'id': if (!value.includes('\0')) this.lastId = value; break;
      case 'retry': if (/^\d+$/.test(value)) this.retry = Number(value); break;
    }
  }

  dispatch() {
    const type = this.type || 'message';
    this.type = '';
    if (this.data.length === 0) return;
    const data = this.data.join('\n');
    this.data = [];
    this.onEvent({type, data, id: this.lastId});
  }
}

const sleep = (ms, signal) => new Promise((res) => {
  const t = setTimeout(res, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); res(); }, {once: true});
});

// LiveStream keeps a stream open: it reconnects with backoff, sends
// Last-Event-ID so the server replays what was missed, and gives up only
// when the key is refused.
export class LiveStream {
  // opts: url, key, onEvent(ev), onOpen(resumed) (may be async),
  // onState('connecting'|'live'|'offline'), onAuthError(status), onFail(err),
  // idleMs: reconnect when nothing (not even a keep-alive) arrived for this long.
  constructor(opts) {
    this.o = {idleMs: 45000, ...opts};
    this.lastId = '';
    this.running = false;
    this.wake = new AbortController();
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop();
  }

  stop() {
    this.running = false;
    this.ctrl?.abort();
    this.wake.abort();
  }

  // retryNow cuts a backoff wait short (the device came back online).
  retryNow() {
    this.wake.abort();
    this.wake = new AbortController();
  }

  async loop() {
    let backoff = 1000;
    while (this.running) {
      this.o.onState?.('connecting');
      const ctrl = this.ctrl = new AbortController();
      let idle;
      const arm = () => { clearTimeout(idle); idle = setTimeout(() => ctrl.abort(), this.o.idleMs); };
      try {
        const headers = {Authorization: 'Bearer ' + this.o.key, Accept: 'text/event-stream'};
        if (this.lastId) headers['Last-Event-ID'] = this.lastId;
        arm();
        const res = await fetch(this.o.url, {headers, signal: ctrl.signal, cache: 'no-store'});
        if (res.status === 401 || res.status === 403) {
          this.running = false;
          this.o.onAuthError?.(res.status);
          break;
        }
        if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
        this.o.onState?.('live');
        backoff = 1000;
        const parser = new SSEParser((ev) => {
          if (ev.id) this.lastId = ev.id;
          this.o.onEvent(ev);
        });
        await this.o.onOpen?.(!!this.lastId);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          arm();
          parser.push(value);
        }
      } catch (e) {
        // Network errors and aborts end this connection; the loop retries.
        if (this.running) this.o.onFail?.(e);
      } finally {
        clearTimeout(idle);
      }
      if (!this.running) break;
      this.o.onState?.('offline');
      await sleep(backoff + Math.random() * 500, this.wake.signal);
      backoff = Math.min(backoff * 2, 30000);
    }
  }
}
