// Shared harness for pollgate's browser tests: real processes on ephemeral
// ports (pollgate, the demo upstream, a logging TCP proxy) and Debian's
// Chromium driven by playwright-core. See README.md beside this file.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, "target");
const PROFILE = process.env.BROWSER_TEST_PROFILE || "debug";

/** Binaries under test: built by `cargo test` / `cargo build --bin pollgate --example demo_upstream`. */
export const BIN = {
  pollgate: process.env.BROWSER_TEST_POLLGATE || path.join(TARGET, PROFILE, "pollgate"),
  upstream: process.env.BROWSER_TEST_UPSTREAM || path.join(TARGET, PROFILE, "examples", "demo_upstream"),
};

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** The flags every test browser gets (Playwright's own browser download cannot work here). */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export const PUBLISH_TOKEN = "browser-test-token";

/** Where screenshots go (look at them: they are the evidence a page really rendered). */
export const SHOTS = process.env.BROWSER_TEST_SHOTS || path.join(ROOT, "target", "browser-shots");

/**
 * `{ skip }` for node:test when Chromium is missing, outside CI only: in CI
 * (CI=true) a missing browser must fail the run, never pass it silently.
 */
export function chromiumOrSkip() {
  if (existsSync(CHROMIUM)) return {};
  const why = `${CHROMIUM} missing: run scripts/install-deps.sh (apt-get install chromium)`;
  if (process.env.CI === "true") throw new Error(why);
  return { skip: why };
}

/** Waits for `cond()` (sync or async) to be truthy; the value, or a failure naming `what`. */
export async function until(cond, what, ms = 5000, every = 25) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** A child process whose stdout/stderr lines are kept; `line(re)` waits for one. */
class Proc {
  constructor(bin, args, env = {}) {
    if (!existsSync(bin)) throw new Error(`${bin} missing: run cargo build --bin pollgate --example demo_upstream`);
    this.lines = [];
    this.waiters = [];
    // pollgate reads POLLGATE_* (and refuses unknown ones): the test's flags alone configure it.
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("POLLGATE_")));
    this.child = spawn(bin, args, { env: { ...base, RUST_LOG: "info", NO_COLOR: "1", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((r) => this.child.on("exit", (code, sig) => r({ code, sig })));
    for (const s of [this.child.stdout, this.child.stderr]) {
      let buf = "";
      s.on("data", (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
    }
  }

  onLine(l) {
    this.lines.push(l);
    this.waiters = this.waiters.filter((w) => !(w.re.test(l) && (w.resolve(l), true)));
  }

  line(re, ms = 20000) {
    const seen = this.lines.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no line ${re} after ${ms} ms:\n${this.lines.join("\n")}`)), ms);
      this.waiters.push({ re, resolve: (l) => (clearTimeout(t), resolve(l)) });
      this.exited.then(({ code, sig }) => reject(new Error(`exited (${code ?? sig}) before ${re}:\n${this.lines.join("\n")}`)));
    });
  }

  async kill(sig = "SIGTERM") {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(sig);
    return this.exited;
  }
}

/** The demo app server (examples/demo_upstream.rs) on 127.0.0.1:0. */
export async function startUpstream({ publishUrl = "http://127.0.0.1:9", seed = 0 } = {}) {
  const p = new Proc(BIN.upstream, ["--listen", "127.0.0.1:0", "--publish-url", publishUrl, "--publish-token", PUBLISH_TOKEN, "--seed", String(seed)]);
  const line = await p.line(/listening on /);
  const addr = line.split("listening on ")[1].trim();
  return { proc: p, addr, url: `http://${addr}`, stop: () => p.kill() };
}

/**
 * pollgate on ephemeral ports in front of `upstream`. `listen` pins the
 * public address (a restart on the same port). `args`: extra flags.
 */
export async function startPollgate({ upstream, args = [], listen = "127.0.0.1:0" } = {}) {
  const p = new Proc(BIN.pollgate, [
    "--listen", listen,
    "--internal-listen", "127.0.0.1:0",
    "--upstream", upstream,
    "--publish-token", PUBLISH_TOKEN,
    ...args,
  ]);
  const line = await p.line(/pollgate listening/);
  const pick = (k) => new RegExp(`${k}=(\\S+)`).exec(line)[1];
  const pg = {
    proc: p,
    public: pick("public"),
    internal: pick("internal"),
    get url() {
      return `http://${this.public}`;
    },
    get internalUrl() {
      return `http://${this.internal}`;
    },
    /** Publishes `key version` lines; resolves with the JSON answer. */
    async publish(lines) {
      const res = await fetch(`${pg.internalUrl}/v1/versions`, {
        method: "POST",
        headers: { authorization: `Bearer ${PUBLISH_TOKEN}`, "content-type": "text/plain" },
        body: lines,
      });
      if (!res.ok) throw new Error(`publish: ${res.status} ${await res.text()}`);
      return res.json();
    },
    /** Sum of a metric over its labels (e.g. `pollgate_push_connections`). */
    async metric(name) {
      const text = await (await fetch(`${pg.internalUrl}/metrics`)).text();
      const re = new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, "gm");
      return [...text.matchAll(re)].reduce((s, m) => s + Number(m[2]), 0);
    },
    kill: (sig) => p.kill(sig),
    stop: () => p.kill("SIGTERM"),
  };
  return pg;
}

/**
 * A TCP proxy on 127.0.0.1:0 that logs every connection attempt (time and
 * request line) and forwards it to `proxy.target` (changeable: a restarted
 * pollgate may sit elsewhere). It connects onward only once the request
 * line is in, so an attempt against a dead target is logged with its line
 * too; the client then sees the connection close, as with the server gone.
 * A request for a page registered by `openPage` is answered by the proxy
 * itself, whichever request of a keep-alive connection it is.
 */
export async function startProxy(target) {
  const log = [];
  const sockets = new Set();
  const server = net.createServer((client) => {
    sockets.add(client);
    let up = null;
    const end = () => {
      client.destroy();
      up?.destroy();
      sockets.delete(client);
      if (up) sockets.delete(up);
    };
    client.on("error", end).on("close", end);
    client.on("data", (chunk) => {
      // Chromium reuses an idle keep-alive connection for the next page load,
      // so every chunk that starts a request for a test page is answered here
      // (and the connection closed), not only a connection's first request.
      const line = chunk.toString("latin1").split("\r\n")[0];
      const page = proxy.pages.get(line.split(" ")[1]);
      if (page !== undefined) {
        if (up) {
          up.unpipe(client);
          up.removeAllListeners("close");
          up.on("error", () => {});
          up.destroy();
          sockets.delete(up);
          up = null;
        }
        return servePage(client, page);
      }
      if (up) return up.write(chunk);
      const entry = { at: performance.now(), line, ok: false };
      log.push(entry);
      up = net.connect(...hostPort(proxy.target));
      sockets.add(up);
      up.on("connect", () => (entry.ok = true));
      up.on("error", end).on("close", end);
      up.write(chunk);
      up.pipe(client);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const proxy = {
    target,
    log,
    /** path → HTML the proxy answers itself (see `openPage`). */
    pages: new Map(),
    url: `http://127.0.0.1:${server.address().port}`,
    stop: () => new Promise((r) => (PROXIES.delete(proxy.url), sockets.forEach((s) => s.destroy()), server.close(r))),
  };
  PROXIES.set(proxy.url, proxy);
  return proxy;
}

/** Proxies by origin, so `openPage` can have one serve a test page. */
const PROXIES = new Map();
let pageSeq = 0;

function servePage(socket, html) {
  const body = Buffer.from(html);
  socket.end(
    Buffer.concat([
      Buffer.from(`HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`),
      body,
    ]),
  );
}

function hostPort(addr) {
  const i = addr.lastIndexOf(":");
  return [Number(addr.slice(i + 1)), addr.slice(0, i)];
}

/** Debian's Chromium, headless, on a fresh temporary profile (Playwright makes a new --user-data-dir per launch). */
export async function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    timeout: 60000,
  });
}

/**
 * A page at `origin + path` whose HTML is `html` (served by the test, not by
 * pollgate), so every other request — /pollgate/v1/client.js, the push
 * endpoints, polls — goes to the real server at `origin`.
 *
 * When `origin` is a `startProxy` proxy (as `start()` gives), the proxy
 * serves the page over the network. Otherwise it is fulfilled by Playwright,
 * which Chromium treats as a page of unknown address: its WebSockets to
 * 127.0.0.1 are then blocked (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS).
 */
export async function openPage(context, origin, html, pagePath = `/__test__${++pageSeq}.html`) {
  const url = origin + pagePath;
  const proxy = PROXIES.get(origin);
  if (proxy) proxy.pages.set(pagePath, html);
  else await context.route(url, (r) => r.fulfill({ status: 200, contentType: "text/html", body: html }));
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  await page.goto(url);
  return page;
}

/**
 * The usual test page: imports the client from pollgate, exposes it as
 * `window.pg`, records notices per key in `window.got` and states in
 * `window.states`, and shows them so a screenshot tells what happened.
 * `options` is a JS object literal passed to `connect`.
 */
export function clientPage(options = "{}") {
  return `<!doctype html><meta charset="utf-8"><title>pollgate test</title>
<style>body{font:14px sans-serif;margin:16px} pre{background:#f4f4f4;padding:8px}</style>
<h1>pollgate client test</h1><div>state: <b id="state">-</b> · role: <b id="role">-</b> · connections: <b id="conns">-</b></div>
<pre id="log"></pre>
<script type="module">
import { connect } from "/pollgate/v1/client.js";
window.got = {}; window.states = []; window.callbacks = 0;
const log = (s) => { document.getElementById("log").textContent += s + "\\n"; };
window.pg = connect(${options});
pg.on("state", (s) => { states.push([Math.round(performance.now()), s]); document.getElementById("state").textContent = s; });
pg.on("info", (i) => { document.getElementById("role").textContent = i.role; document.getElementById("conns").textContent = i.connections; });
window.watch = (key, version) => pg.watch(key, version, (n) => {
  window.callbacks++;
  (got[n.key] ||= []).push([n.version, performance.timeOrigin + performance.now(), document.visibilityState]);
  log(\`\${new Date().toISOString().slice(11, 23)} \${n.key} → \${n.version} (\${document.visibilityState})\`);
});
window.ready = true;
</script>`;
}

/** Saves a screenshot under target/browser-shots/ and returns its path. */
export async function screenshot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** A scratch directory removed by `cleanup()`. */
export function tempDir(prefix = "pollgate-browser-") {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The common setup: demo upstream + pollgate + a logging proxy in front of
 * it (the pages' origin: it serves the test pages and logs each connection)
 * + Chromium. Returns handles and a `close()` that stops everything (use
 * `t.after(env.close)`).
 */
export async function start({ pollgateArgs = [], seed = 0 } = {}) {
  const up = await startUpstream({ seed });
  const pg = await startPollgate({ upstream: up.url, args: pollgateArgs });
  const px = await startProxy(pg.public);
  const browser = await launchBrowser();
  return {
    up,
    pg,
    proxy: px,
    browser,
    origin: px.url,
    async close() {
      await browser.close().catch(() => {});
      await px?.stop();
      await pg.stop();
      await up.stop();
    },
  };
}
