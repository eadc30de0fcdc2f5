// pollgate browser client: one push connection per browser, jittered
// reconnects, hidden tabs quiet. Dependency-free ES module; pollgate serves
// this exact file at GET /pollgate/v1/client.js.
//
//   import { connect } from "/pollgate/v1/client.js";
//   const pg = connect({ pollUrl: (key, v) => `/projects/${key}/changes?since=${v}` });
//   const w = pg.watch("p1", 3, ({ key, version }) => refetch(key));
//   w.seen(5); w.close(); pg.on("state", (s) => show(s)); pg.close();
//
// How it behaves (see client/README.md):
// - Tabs of one origin elect a leader with the Web Locks API and talk over a
//   BroadcastChannel; only the leader holds a push connection, for the union
//   of every tab's keys at the highest version any tab holds. Without Web
//   Locks each tab connects on its own.
// - Transports in order: SSE (read with fetch, so status codes, Retry-After
//   and heartbeats are visible), WebSocket, long-poll; then polling the app's
//   own route (`pollUrl`) at the X-Poll-Interval hint. A transport is left
//   only when the server says it is unavailable (404/405) or it keeps failing
//   while plain HTTP works; an unreachable server is retried on the same one.
// - Reconnects: full jitter (first retry uniform 0–1 s, doubling to 30 s),
//   never sooner than the server asked (`retry:`, Retry-After, close 1012).
// - Hidden tabs hold notices (newest version per key) until shown; when
//   polling and every tab is hidden, polls are at most every 5 minutes.

/** The transports tried in order before falling back to polling. */
export const TRANSPORTS = ["sse", "ws", "wait"];

const DEFAULTS = {
  /** Push endpoints' base URL; default: where this module was served from. */
  url: undefined,
  /** async () => token, sent as `Authorization: Bearer` (`?token=` on WebSocket). */
  token: undefined,
  /** (key, version) => URL of the app's own poll route, for when push is off. */
  pollUrl: undefined,
  /** Name of the lock and BroadcastChannel the tabs share. */
  channel: "pollgate",
  /** false: this tab connects on its own, even where Web Locks exist. */
  shareTabs: true,
  /** Transports to try, in order (tests narrow this). */
  transports: TRANSPORTS,
  /** The server's heartbeat interval; no byte for twice this reconnects. */
  heartbeatMs: 25000,
  /** Backoff: the first retry waits uniformly 0..firstMs, doubling up to maxMs. */
  firstRetryMs: 1000,
  maxRetryMs: 30000,
  /** Long-poll `timeout` in seconds. */
  waitSeconds: 25,
  /** Poll interval when the server gives no X-Poll-Interval hint. */
  pollMs: 5000,
  /** Poll interval floor while every tab is hidden. */
  hiddenPollMs: 300000,
  /** While polling, how often push is tried again (jittered ×[0.5, 1.5)). */
  pushProbeMs: 60000,
  /** How long a new leader waits for the other tabs' keys before connecting. */
  settleMs: 150,
  /** Test seam: replaces globals (fetch, WebSocket, locks, BroadcastChannel, document, window, random, now, makeLink). */
  env: undefined,
};

/**
 * Exponential backoff with full jitter: attempt n waits uniformly
 * [0, min(max, first·2^n)), and never less than what the server asked.
 */
export class Backoff {
  constructor({ firstMs = 1000, maxMs = 30000, random = Math.random } = {}) {
    this.firstMs = firstMs;
    this.maxMs = maxMs;
    this.random = random;
    this.attempt = 0;
  }

  /** The ceiling of the next delay's range. */
  cap() {
    return Math.min(this.maxMs, this.firstMs * 2 ** Math.min(this.attempt, 30));
  }

  /** The delay before the next attempt, in ms; `atLeastMs`: the server's hint. */
  next(atLeastMs = 0) {
    const delay = this.random() * this.cap();
    this.attempt += 1;
    return Math.max(delay, atLeastMs || 0);
  }

  reset() {
    this.attempt = 0;
  }
}

/** `Retry-After` (seconds or an HTTP date) in ms, or 0. */
export function retryAfterMs(value, now = Date.now()) {
  if (!value) return 0;
  const s = Number(value);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - now) : 0;
}

/** The `retry_ms=N` a WebSocket close 1012 carries, or 0. */
export function closeRetryMs(reason) {
  const m = /retry_ms=(\d+)/.exec(reason || "");
  return m ? Number(m[1]) : 0;
}

/** `a:3,b:7` for a Map of key → version. */
export function keysParam(keys) {
  return [...keys].map(([k, v]) => `${k}:${v}`).join(",");
}

/**
 * Incremental SSE parser (the subset pollgate sends): calls
 * `onEvent(type, data)`, `onRetry(ms)`; comments are only bytes (heartbeats).
 */
export class SseParser {
  constructor(onEvent, onRetry) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.buf = "";
    this.type = "";
    this.data = [];
  }

  push(text) {
    this.buf += text;
    let nl;
    while ((nl = this.buf.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buf.slice(0, nl);
      const len = this.buf.startsWith("\r\n", nl) ? 2 : 1;
      this.buf = this.buf.slice(nl + len);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent(this.type || "message", this.data.join("\n"));
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
  }
}

function defaultUrl(env) {
  const here = import.meta.url;
  if (/\/pollgate\/v1\/client\.js(\?.*)?$/.test(here)) return new URL(".", here).href;
  const origin = env.window?.location?.origin;
  return origin ? `${origin}/pollgate/v1/` : "/pollgate/v1/";
}

function globalEnv() {
  const g = globalThis;
  return {
    fetch: g.fetch?.bind(g),
    WebSocket: g.WebSocket,
    BroadcastChannel: g.BroadcastChannel,
    locks: g.navigator?.locks,
    document: g.document,
    window: g.window,
    navigator: g.navigator,
    random: Math.random,
    now: () => Date.now(),
  };
}

/** A sleep that `wake()` can end early; resolves true when woken. */
function sleeper() {
  let wake = () => {};
  const sleep = (ms) =>
    new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), Math.max(0, ms));
      wake = () => {
        clearTimeout(t);
        resolve(true);
      };
    });
  return { sleep, wake: () => wake() };
}

/** Outcome of one connection attempt, deciding what the loop does next. */
const Out = {
  /** The key set changed: reconnect now, no backoff step. */
  rekey: "rekey",
  /** Long-poll answered: ask again at once. */
  again: "again",
  /** The stream ended (server shutdown, restart, proxy timeout). */
  ended: "ended",
  /** Network error: the server is unreachable. Same transport, backoff. */
  down: "down",
  /** 503: wait what the server asked (and the backoff), same transport. */
  busy: "busy",
  /** 401/403/expired token: fetch a fresh token, backoff. */
  auth: "auth",
  /** 404/405/not SSE: this transport is not served here; next one. */
  unavailable: "unavailable",
  /** Fails although plain HTTP works (a proxy in the way): counts toward moving on. */
  flaky: "flaky",
  /** Closed by us. */
  closed: "closed",
};

/** After this many flaky failures in a row, the next transport is tried. */
const FLAKY_LIMIT = 3;
/** A connection that stayed up this long resets the backoff. */
const STABLE_MS = 10000;
/** The longest heartbeat interval the client learns to wait for. */
const MAX_HEARTBEAT_MS = 300000;

/**
 * The one push connection (of the leader tab, or of a tab on its own):
 * watches `keys` and reports notices; owns transport choice and backoff.
 */
export class Link {
  constructor(opts, env, { onNotice, onState }) {
    this.o = opts;
    this.env = env;
    this.onNotice = onNotice;
    this.onState = onState;
    this.keys = new Map();
    this.backoff = new Backoff({ firstMs: opts.firstRetryMs, maxMs: opts.maxRetryMs, random: env.random });
    this.ti = 0;
    this.flaky = 0;
    this.hintMs = 0;
    this.hidden = false;
    this.closed = false;
    this.abort = null;
    this.ws = null;
    this.z = sleeper();
    this.transport = null;
    this.connections = 0;
    this.base = opts.url || defaultUrl(env);
    this.heartbeatMs = opts.heartbeatMs;
  }

  start() {
    this.loop().catch((e) => console.error("pollgate client loop", e));
  }

  /** New union of keys; a key not watched yet needs a (re)subscription. */
  setKeys(keys) {
    const added = [...keys.keys()].some((k) => !this.keys.has(k));
    const removed = [...this.keys.keys()].filter((k) => !keys.has(k));
    this.keys = new Map(keys);
    // Nothing left to watch: drop the connection (the loop idles until a key comes).
    if (keys.size === 0 && (this.abort || this.ws)) return this.interrupt(Out.rekey);
    if (this.ws && this.ws.readyState === 1) {
      if (removed.length) this.ws.send(JSON.stringify({ op: "unwatch", keys: removed }));
      if (added) this.ws.send(JSON.stringify({ op: "watch", keys: Object.fromEntries(this.keys) }));
      return;
    }
    if (added && this.abort) this.interrupt(Out.rekey);
    else if (added && this.idle) this.z.wake();
  }

  /** Whether every tab is hidden (polling slows down). */
  setHidden(hidden) {
    this.hidden = hidden;
  }

  /** Raises a key's version (a notice relayed, or a tab's `seen`). */
  raise(key, version) {
    if (this.keys.has(key) && this.keys.get(key) < version) this.keys.set(key, version);
  }

  online() {
    this.z.wake();
  }

  offline() {
    this.interrupt(Out.down);
  }

  close() {
    this.closed = true;
    this.interrupt(Out.closed);
    this.z.wake();
  }

  interrupt(why) {
    this.why = why;
    this.abort?.abort();
    if (this.ws) {
      try {
        this.ws.close(1000);
      } catch {}
    }
  }

  state(s) {
    if (s === this.lastState && this.connections === this.lastConns) return;
    this.lastState = s;
    this.lastConns = this.connections;
    this.onState(s, { transport: this.transport, connections: this.connections });
  }

  isOnline() {
    return this.env.navigator?.onLine !== false;
  }

  async loop() {
    while (!this.closed) {
      if (!this.isOnline() || this.keys.size === 0) {
        const wasOffline = !this.isOnline();
        if (wasOffline) this.state("offline");
        this.idle = true;
        await this.z.sleep(3600000);
        this.idle = false;
        // Back online: a whole office comes back at once, so spread out.
        if (wasOffline && this.isOnline()) await this.z.sleep(this.env.random() * this.o.firstRetryMs);
        continue;
      }
      const t = this.o.transports[this.ti];
      this.why = null;
      const started = this.env.now();
      let out;
      try {
        out = t ? await this.attempt(t) : await this.poll();
      } catch (e) {
        // A bug or a browser refusing outright (a bad URL): wait, never spin.
        console.error("pollgate client", e);
        out = Out.down;
      }
      if (this.closed) break;
      await this.after(this.why || out, this.env.now() - started);
    }
    this.connections = 0;
  }

  /** Waits as the outcome says, and picks the transport for the next attempt. */
  async after(out, lastedMs) {
    if (out === Out.rekey || out === Out.again) return;
    if (lastedMs >= STABLE_MS && (out === Out.ended || out === Out.down)) this.backoff.reset();
    if (out === Out.unavailable || (out === Out.flaky && ++this.flaky >= FLAKY_LIMIT)) {
      this.ti += 1;
      this.flaky = 0;
      this.backoff.reset();
      return;
    }
    if (out !== Out.flaky) this.flaky = 0;
    if (out !== Out.ended) this.state("offline");
    const hint = this.hintMs;
    this.hintMs = 0;
    await this.z.sleep(this.backoff.next(hint));
  }

  async attempt(t) {
    let token;
    try {
      token = this.o.token ? await this.o.token() : undefined;
    } catch {
      return Out.auth;
    }
    if (t === "sse") return this.sse(token);
    if (t === "ws") return this.websocket(token);
    return this.wait(token);
  }

  headers(token) {
    return token ? { authorization: `Bearer ${token}` } : {};
  }

  /** Maps a refusal status to an outcome (and the server's wait). */
  refused(res) {
    if (res.status === 404 || res.status === 405) return Out.unavailable;
    if (res.status === 401 || res.status === 403) return Out.auth;
    if (res.status === 503 || res.status === 429) {
      this.hintMs = retryAfterMs(res.headers.get("retry-after"), this.env.now());
      return Out.busy;
    }
    return res.status >= 500 ? Out.down : Out.flaky;
  }

  opened(t) {
    this.transport = t;
    this.connections = 1;
    this.state("push");
  }

  dropped() {
    this.connections = 0;
  }

  /** SSE over fetch: sees status, Retry-After and heartbeat comments. */
  async sse(token) {
    const ctl = new AbortController();
    this.abort = ctl;
    const url = `${this.base}watch?keys=${keysParam(this.keys)}`;
    let res;
    try {
      res = await this.env.fetch(url, { headers: this.headers(token), signal: ctl.signal, cache: "no-store" });
    } catch {
      this.abort = null;
      return Out.down;
    }
    if (!res.ok) {
      this.abort = null;
      res.body?.cancel().catch(() => {});
      return this.refused(res);
    }
    if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
      this.abort = null;
      res.body?.cancel().catch(() => {});
      return Out.unavailable;
    }
    this.opened("sse");
    try {
      return await this.readSse(res, ctl);
    } finally {
      this.abort = null;
      this.dropped();
    }
  }

  async readSse(res, ctl) {
    let expired = false;
    let bytes = 0;
    const parser = new SseParser(
      (type, data) => {
        if (type === "stale") this.notice(JSON.parse(data));
        if (type === "expired") expired = true;
      },
      (ms) => (this.hintMs = ms),
    );
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let timer;
    let missed = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => ((missed = true), ctl.abort()), 2 * this.heartbeatMs);
    };
    arm();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        bytes += value.length;
        arm();
        parser.push(dec.decode(value, { stream: true }));
        if (expired) return Out.auth;
      }
      return Out.ended;
    } catch {
      // A missed heartbeat, an abort by us, or the connection broke. If the
      // server's heartbeat is slower than we were told (a cluster-wide
      // tunable raised), wait twice as long next time instead of cutting
      // healthy streams forever.
      if (missed && bytes > 0) this.heartbeatMs = Math.min(2 * this.heartbeatMs, MAX_HEARTBEAT_MS);
      return bytes === 0 ? Out.flaky : Out.down;
    } finally {
      clearTimeout(timer);
    }
  }

  notice(n) {
    if (!n || typeof n.key !== "string" || !Number.isSafeInteger(n.version)) return;
    this.raise(n.key, n.version);
    this.onNotice(n.key, n.version);
  }

  wsUrl(token) {
    const u = new URL(`${this.base}ws`, this.env.window?.location?.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    if (token) u.searchParams.set("token", token);
    return u.href;
  }

  async websocket(token) {
    const ws = new this.env.WebSocket(this.wsUrl(token));
    this.ws = ws;
    let open = false;
    const ev = await new Promise((resolve) => {
      ws.onopen = () => {
        open = true;
        ws.send(JSON.stringify({ op: "watch", keys: Object.fromEntries(this.keys) }));
        this.opened("ws");
      };
      ws.onmessage = (m) => {
        try {
          const msg = JSON.parse(m.data);
          if (msg.op === "stale") this.notice(msg);
        } catch {}
      };
      ws.onclose = resolve;
    });
    this.ws = null;
    this.dropped();
    if (!open) return this.probe("ws", token);
    if (ev.code === 1012) this.hintMs = closeRetryMs(ev.reason);
    if (ev.code === 4001) return Out.auth;
    return Out.ended;
  }

  /**
   * A WebSocket that never opened hides why. Ask over plain HTTP: no answer →
   * the server is down (same transport); 404/405 → not served here; an answer
   * → the upgrade is refused in between (flaky, counts toward moving on).
   */
  async probe(path, token) {
    let res;
    try {
      res = await this.env.fetch(`${this.base}${path}`, { headers: this.headers(token), cache: "no-store" });
    } catch {
      return Out.down;
    }
    res.body?.cancel().catch(() => {});
    if (res.status === 503) return this.refused(res);
    if (res.status === 404 || res.status === 405 || res.status === 401 || res.status === 403) return this.refused(res);
    return Out.flaky;
  }

  async wait(token) {
    const ctl = new AbortController();
    this.abort = ctl;
    const secs = this.o.waitSeconds;
    const url = `${this.base}wait?keys=${keysParam(this.keys)}&timeout=${secs}`;
    const timer = setTimeout(() => ctl.abort(), secs * 1000 + 2 * this.heartbeatMs);
    // A long-poll says nothing until something changes: held for a second
    // without a refusal, it counts as connected.
    const held = setTimeout(() => this.opened("wait"), 1000);
    try {
      const res = await this.env.fetch(url, { headers: this.headers(token), signal: ctl.signal, cache: "no-store" });
      if (res.status === 200) {
        this.opened("wait");
        const body = await res.json();
        (body.stale || []).forEach((n) => this.notice(n));
        return Out.again;
      }
      if (res.status === 304) {
        this.opened("wait");
        const hint = retryAfterMs(res.headers.get("retry-after"), this.env.now());
        if (!hint) return Out.again;
        this.hintMs = hint;
        return Out.ended;
      }
      return this.refused(res);
    } catch {
      return Out.down;
    } finally {
      clearTimeout(timer);
      clearTimeout(held);
      this.abort = null;
    }
  }

  /** Push is refused or off: poll the app's own route, then try push again later. */
  async poll() {
    if (!this.o.pollUrl) {
      this.state("offline");
      await this.z.sleep(this.jitter(this.o.pushProbeMs));
      this.ti = 0;
      return Out.rekey;
    }
    this.transport = "poll";
    this.connections = 0;
    const until = this.env.now() + this.jitter(this.o.pushProbeMs);
    while (!this.closed && this.env.now() < until) {
      const hintMs = await this.pollRound();
      this.state("polling");
      const wait = this.hidden ? Math.max(hintMs, this.o.hiddenPollMs) : hintMs;
      const woken = await this.z.sleep(Math.min(wait, Math.max(0, until - this.env.now())));
      if (woken && !this.isOnline()) return Out.down;
    }
    this.ti = 0;
    return Out.rekey;
  }

  jitter(ms) {
    return ms * (0.5 + this.env.random());
  }

  /** Polls every key once; returns the interval the server hinted. */
  async pollRound() {
    let hintMs = this.o.pollMs;
    await Promise.all(
      [...this.keys].map(async ([key, version]) => {
        try {
          const res = await this.env.fetch(this.o.pollUrl(key, version), { cache: "no-store" });
          const hint = Number(res.headers.get("x-poll-interval"));
          if (hint > 0) hintMs = hint * 1000;
          res.body?.cancel().catch(() => {});
          if (res.status !== 200) return;
          const v = versionOf(res);
          this.notice({ key, version: v ?? version });
        } catch {}
      }),
    );
    return hintMs;
  }
}

/** The version a 200 carries: X-Pollgate-Version, else a numeric ETag. */
function versionOf(res) {
  const h = res.headers.get("x-pollgate-version") || (res.headers.get("etag") || "").replace(/^W\//, "").replace(/"/g, "");
  return /^\d+$/.test(h || "") ? Number(h) : null;
}

/** One tab's client. */
class Client {
  constructor(opts) {
    this.o = { ...DEFAULTS, ...opts };
    this.env = { ...globalEnv(), ...(this.o.env || {}) };
    this.id = Math.floor(this.env.random() * 2 ** 48).toString(36);
    this.watchers = new Map();
    this.pending = new Map();
    this.listeners = new Map();
    this.info = { role: "starting", leader: null, state: null, transport: null, connections: 0 };
    this.closed = false;
    const shared = this.o.shareTabs && this.env.locks && this.env.BroadcastChannel;
    this.tabs = shared ? new Tabs(this) : null;
    this.link = null;
    if (!shared) this.startLink("solo");
    this.listenPage();
  }

  // ----- the public API -----

  /** Calls `cb({ key, version })` when `key` passes `version`; returns { seen, close }. */
  watch(key, version, cb) {
    if (!/^[A-Za-z0-9._:-]{1,128}$/.test(key)) throw new TypeError(`pollgate: bad key ${JSON.stringify(key)}`);
    const w = { key, version: Number(version) || 0, cb };
    if (!this.watchers.has(key)) this.watchers.set(key, new Set());
    this.watchers.get(key).add(w);
    this.keysChanged();
    return {
      seen: (v) => {
        if (v > w.version) w.version = v;
        this.keysChanged();
      },
      close: () => {
        const set = this.watchers.get(key);
        set?.delete(w);
        if (set && set.size === 0) this.watchers.delete(key);
        this.keysChanged();
      },
    };
  }

  /** `on("state", fn)`: "push" | "polling" | "offline"; `on("info", fn)`: role, leader, connections. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    if (event === "state" && this.info.state) fn(this.info.state);
    if (event === "info") fn({ ...this.info });
    return () => this.listeners.get(event)?.delete(fn);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.link?.close();
    this.tabs?.close();
    this.unlisten?.();
  }

  // ----- internals -----

  emit(event, value) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(value);
      } catch (e) {
        console.error(e);
      }
    }
  }

  setInfo(patch) {
    const before = this.info.state;
    this.info = { ...this.info, ...patch };
    if (this.info.state && this.info.state !== before) this.emit("state", this.info.state);
    this.emit("info", { ...this.info });
  }

  /** This tab's keys at the version it holds (lowest over its watchers). */
  ownKeys() {
    const keys = new Map();
    for (const [key, set] of this.watchers) {
      keys.set(key, Math.min(...[...set].map((w) => w.version)));
    }
    return keys;
  }

  keysChanged() {
    if (this.tabs) this.tabs.keysChanged();
    else this.link?.setKeys(this.ownKeys());
  }

  hidden() {
    return this.env.document?.visibilityState === "hidden";
  }

  /** A notice for this tab: delivered now, or held (newest only) while hidden. */
  deliver(key, version) {
    if (!this.watchers.has(key)) return;
    if (this.hidden()) {
      this.pending.set(key, Math.max(version, this.pending.get(key) || 0));
      return;
    }
    for (const w of [...(this.watchers.get(key) || [])]) {
      if (version <= w.version) continue;
      w.version = version;
      try {
        w.cb({ key, version });
      } catch (e) {
        console.error(e);
      }
    }
  }

  flushPending() {
    const held = [...this.pending];
    this.pending.clear();
    held.forEach(([k, v]) => this.deliver(k, v));
  }

  startLink(role) {
    const make = this.env.makeLink || ((o, env, cbs) => new Link(o, env, cbs));
    this.link = make(this.o, this.env, {
      onNotice: (key, version) => (this.tabs ? this.tabs.relay(key, version) : this.deliver(key, version)),
      onState: (state, extra) => {
        this.setInfo({ state, ...extra });
        this.tabs?.announce();
      },
    });
    this.setInfo({ role, leader: this.id });
    this.link.setKeys(role === "solo" ? this.ownKeys() : this.tabs.union());
    this.link.setHidden?.(this.hidden());
    this.link.start();
  }

  listenPage() {
    const doc = this.env.document;
    const win = this.env.window;
    const onVis = () => {
      if (!this.hidden()) this.flushPending();
      if (this.tabs) this.tabs.keysChanged();
      else this.link?.setHidden?.(this.hidden());
    };
    const onOnline = () => this.link?.online();
    const onOffline = () => this.link?.offline();
    const onHide = () => this.close();
    doc?.addEventListener?.("visibilitychange", onVis);
    win?.addEventListener?.("online", onOnline);
    win?.addEventListener?.("offline", onOffline);
    win?.addEventListener?.("pagehide", onHide);
    this.unlisten = () => {
      doc?.removeEventListener?.("visibilitychange", onVis);
      win?.removeEventListener?.("online", onOnline);
      win?.removeEventListener?.("offline", onOffline);
      win?.removeEventListener?.("pagehide", onHide);
    };
  }
}

/**
 * Leader election and relay between the tabs of one origin. Messages:
 * `keys` (a tab's keys, version and visibility), `who` (a new leader asks
 * every tab for its keys), `stale` (a notice, from the leader), `info`
 * (the leader's state), `bye` (a tab leaves).
 */
class Tabs {
  constructor(client) {
    this.c = client;
    this.env = client.env;
    this.name = `pollgate:${client.o.channel}`;
    this.ch = new this.env.BroadcastChannel(this.name);
    this.ch.onmessage = (e) => this.onMessage(e.data);
    this.others = new Map();
    this.known = new Map();
    this.release = null;
    this.leading = false;
    this.scheduled = false;
    this.c.setInfo({ role: "follower" });
    this.env.locks
      .request(this.name, () => new Promise((resolve) => {
        this.release = resolve;
        if (this.c.closed) return resolve();
        this.lead();
      }))
      .catch(() => {});
    this.post({ t: "keys", ...this.mine() });
  }

  post(msg) {
    try {
      this.ch.postMessage({ from: this.c.id, ...msg });
    } catch {}
  }

  mine() {
    return { keys: [...this.c.ownKeys()], visible: !this.c.hidden() };
  }

  lead() {
    this.leading = true;
    this.post({ t: "who" });
    setTimeout(() => {
      if (this.c.closed) return;
      this.c.startLink("leader");
      this.announce();
    }, this.c.o.settleMs);
  }

  /** The union of every tab's keys at the highest version any tab holds. */
  union() {
    const all = new Map();
    const add = (k, v) => all.set(k, Math.max(v, all.get(k) ?? 0, this.known.get(k) ?? 0));
    this.c.ownKeys().forEach((v, k) => add(k, v));
    this.others.forEach((o) => o.keys.forEach(([k, v]) => add(k, v)));
    return all;
  }

  anyVisible() {
    return !this.c.hidden() || [...this.others.values()].some((o) => o.visible);
  }

  /** Coalesces bursts of watch/seen/close into one update per task. */
  keysChanged() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      if (this.c.closed) return;
      if (this.leading) this.update();
      else this.post({ t: "keys", ...this.mine() });
    });
  }

  update() {
    if (!this.c.link) return;
    this.c.link.setKeys(this.union());
    this.c.link.setHidden?.(!this.anyVisible());
  }

  relay(key, version) {
    this.known.set(key, Math.max(version, this.known.get(key) ?? 0));
    this.post({ t: "stale", key, version });
    this.c.deliver(key, version);
  }

  announce() {
    const { state, transport, connections } = this.c.info;
    this.post({ t: "info", state, transport, connections });
  }

  onMessage(m) {
    if (!m || m.from === this.c.id || this.c.closed) return;
    if (m.t === "stale") this.c.deliver(m.key, m.version);
    else if (m.t === "who") this.post({ t: "keys", ...this.mine() });
    else if (m.t === "info" && !this.leading) {
      this.c.setInfo({ role: "follower", leader: m.from, state: m.state, transport: m.transport, connections: m.connections });
    } else if (m.t === "keys" && this.leading) {
      this.others.set(m.from, { keys: m.keys, visible: m.visible });
      this.update();
      this.announce();
    } else if (m.t === "bye" && this.leading) {
      this.others.delete(m.from);
      this.update();
    }
  }

  close() {
    this.post({ t: "bye" });
    this.leading = false;
    this.release?.();
    this.ch.close();
  }
}

/** Starts this tab's client. See the top of this file and client/README.md. */
export function connect(options = {}) {
  return new Client(options);
}
