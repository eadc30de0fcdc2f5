// The connection loop against real HTTP servers on 127.0.0.1:0: which
// transport it uses, how long it waits, when it falls back to polling.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { connect } from "../pollgate.js";

function serve(handler) {
  return new Promise((resolve) => {
    const hits = [];
    const s = http.createServer((req, res) => {
      hits.push({ at: Date.now(), path: req.url.split("?")[0], url: req.url });
      handler(req, res, hits);
    });
    s.listen(0, "127.0.0.1", () => {
      const base = `http://127.0.0.1:${s.address().port}`;
      resolve({ base, hits, close: () => new Promise((r) => (s.closeAllConnections(), s.close(r))) });
    });
  });
}

async function until(cond, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const solo = (o) => connect({ shareTabs: false, env: { window: undefined, document: undefined }, ...o });

test("503 with Retry-After: waits at least that long on the same transport, then streams", async (t) => {
  const srv = await serve((req, res, hits) => {
    if (hits.length === 1) {
      res.writeHead(503, { "retry-after": "1" }).end();
      return;
    }
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write('retry: 1000\n\nevent: stale\ndata: {"key":"a","version":2}\n\n');
  });
  t.after(srv.close);
  const states = [];
  const got = [];
  const pg = solo({ url: `${srv.base}/pollgate/v1/` });
  t.after(() => pg.close());
  pg.on("state", (s) => states.push(s));
  pg.watch("a", 1, (n) => got.push(n.version));
  await until(() => got.length === 1, "the notice");
  assert.equal(srv.hits.length, 2);
  assert.ok(srv.hits[1].at - srv.hits[0].at >= 1000, `waited ${srv.hits[1].at - srv.hits[0].at} ms`);
  assert.deepEqual(srv.hits.map((h) => h.path), ["/pollgate/v1/watch", "/pollgate/v1/watch"]);
  assert.deepEqual(states, ["offline", "push"]);
});

test("an unreachable server is retried on SSE alone, with growing waits", async (t) => {
  const srv = await serve(() => {});
  const url = `${srv.base}/pollgate/v1/`;
  await srv.close();
  const seen = [];
  const fetch = (u, o) => (seen.push({ at: Date.now(), u }), globalThis.fetch(u, o));
  // The jitter pinned at half the ceiling: with Math.random, ten attempts
  // fit in 1.5 s about once in 70 runs (full jitter can draw ~0 repeatedly).
  const random = () => 0.5;
  const env = { fetch, random, window: undefined, document: undefined };
  const pg = solo({ url, firstRetryMs: 100, maxRetryMs: 800, env });
  t.after(() => pg.close());
  pg.watch("a", 1, () => {});
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(seen.length >= 3, `${seen.length} attempts`);
  assert.ok(seen.every((s) => s.u.includes("/watch?")), "never WebSocket, long-poll or a probe");
  // Ceilings 100, 200, 400, 800, 800...: each wait at least half its ceiling,
  // so at most 6 attempts in 1.5 s, far fewer than a fixed 100 ms retry's 15.
  seen.slice(1).forEach((s, i) => {
    const wait = s.at - seen[i].at;
    const least = 0.5 * Math.min(100 * 2 ** i, 800);
    assert.ok(wait >= least - 2, `wait ${i + 1}: ${wait} ms, expected at least ${least}`);
  });
  assert.ok(seen.length <= 6, `${seen.length} attempts in 1.5 s`);
});

test("push off (404): long-poll tried once, then the app's route polled at the hint", async (t) => {
  let polls = 0;
  const srv = await serve((req, res) => {
    if (req.url.startsWith("/pollgate/")) return res.writeHead(404).end();
    polls++;
    const v = polls >= 3 ? 2 : 1;
    res.writeHead(v === 2 ? 200 : 304, { "x-poll-interval": "1", "x-pollgate-version": String(v) }).end();
  });
  t.after(srv.close);
  const states = [];
  const got = [];
  const pg = solo({
    url: `${srv.base}/pollgate/v1/`,
    transports: ["sse", "wait"],
    pollUrl: (k, v) => `${srv.base}/projects/${k}/changes?since=${v}`,
  });
  t.after(() => pg.close());
  pg.on("state", (s) => states.push(s));
  pg.watch("a", 1, (n) => got.push(n.version));
  await until(() => got.length === 1, "the poll's notice", 6000);
  const paths = srv.hits.map((h) => h.path);
  assert.deepEqual(paths.slice(0, 2), ["/pollgate/v1/watch", "/pollgate/v1/wait"]);
  const pollTimes = srv.hits.filter((h) => h.path.startsWith("/projects/")).map((h) => h.at);
  assert.ok(pollTimes[1] - pollTimes[0] >= 900, "polled at the 1 s hint");
  assert.equal(states.at(-1), "polling");
  assert.deepEqual(got, [2]);
  await until(() => srv.hits.at(-1).url.endsWith("since=2"), "the next poll from the new version", 3000);
});

test("a missed heartbeat reconnects; a slower server heartbeat is learnt, not fought", async (t) => {
  const srv = await serve((req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write("retry: 0\n\n"); // then silence: no heartbeat
  });
  t.after(srv.close);
  const pg = solo({ url: `${srv.base}/pollgate/v1/`, heartbeatMs: 100, firstRetryMs: 1, maxRetryMs: 1 });
  t.after(() => pg.close());
  pg.watch("a", 1, () => {});
  await until(() => srv.hits.length >= 3, "three streams", 5000);
  const [a, b, c] = srv.hits.map((h) => h.at);
  assert.ok(b - a >= 190 && b - a < 400, `first stream cut after ${b - a} ms (2 × 100)`);
  assert.ok(c - b >= 390, `second after ${c - b} ms: the wait doubled`);
  assert.ok(srv.hits.every((h) => h.path === "/pollgate/v1/watch"), "same transport: the server answers");
});

test("an SSE answer that never sends a byte (a buffering proxy) moves to long-poll after 3 tries", async (t) => {
  const srv = await serve((req, res) => {
    if (req.url.startsWith("/pollgate/v1/watch")) return res.writeHead(200, { "content-type": "text/event-stream" }).flushHeaders();
    res.writeHead(200, { "content-type": "application/json" }).end('{"stale":[{"key":"a","version":2}]}');
  });
  t.after(srv.close);
  const got = [];
  const pg = solo({ url: `${srv.base}/pollgate/v1/`, transports: ["sse", "wait"], heartbeatMs: 50, firstRetryMs: 1, maxRetryMs: 1 });
  t.after(() => pg.close());
  pg.watch("a", 1, (n) => got.push(n.version));
  await until(() => got.length === 1, "a notice over long-poll");
  const paths = srv.hits.map((h) => h.path);
  assert.deepEqual(paths.slice(0, 4), ["/pollgate/v1/watch", "/pollgate/v1/watch", "/pollgate/v1/watch", "/pollgate/v1/wait"]);
});

test("a stream's last retry: (pollgate's shutdown hint) is waited out before reconnecting", async (t) => {
  const srv = await serve((req, res, hits) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    if (hits.length === 1) return res.end("retry: 800\n: server shutting down, reconnect later\n\n");
    res.write("retry: 1000\n\n");
  });
  t.after(srv.close);
  const pg = solo({ url: `${srv.base}/pollgate/v1/` });
  t.after(() => pg.close());
  pg.watch("a", 1, () => {});
  await until(() => srv.hits.length === 2, "the reconnect");
  assert.ok(srv.hits[1].at - srv.hits[0].at >= 800, `${srv.hits[1].at - srv.hits[0].at} ms`);
});

test("401: a fresh token is asked for and sent on the next attempt", async (t) => {
  const auths = [];
  const srv = await serve((req, res) => {
    auths.push(req.headers.authorization);
    if (req.headers.authorization !== "Bearer t2") return res.writeHead(401).end();
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write('retry: 1000\n\nevent: stale\ndata: {"key":"a","version":2}\n\n');
  });
  t.after(srv.close);
  let n = 0;
  const got = [];
  const pg = solo({ url: `${srv.base}/pollgate/v1/`, token: async () => `t${++n}`, firstRetryMs: 50 });
  t.after(() => pg.close());
  pg.watch("a", 1, (x) => got.push(x.version));
  await until(() => got.length === 1, "the notice with the second token");
  assert.deepEqual(auths, ["Bearer t1", "Bearer t2"]);
});

test("polling with every tab hidden: at most one round per hiddenPollMs", async (t) => {
  const srv = await serve((req, res) => {
    if (req.url.startsWith("/pollgate/")) return res.writeHead(404).end();
    res.writeHead(304, { "x-poll-interval": "1" }).end();
  });
  t.after(srv.close);
  const document = { visibilityState: "hidden", addEventListener() {}, removeEventListener() {} };
  const pg = connect({
    shareTabs: false,
    env: { window: undefined, document },
    url: `${srv.base}/pollgate/v1/`,
    transports: ["sse"],
    hiddenPollMs: 1500,
    pollUrl: (k, v) => `${srv.base}/projects/${k}/changes?since=${v}`,
  });
  t.after(() => pg.close());
  pg.watch("a", 1, () => {});
  await until(() => srv.hits.filter((h) => h.path.startsWith("/projects/")).length >= 2, "two polls", 5000);
  const polls = srv.hits.filter((h) => h.path.startsWith("/projects/")).map((h) => h.at);
  assert.ok(polls[1] - polls[0] >= 1450, `hidden: ${polls[1] - polls[0]} ms apart, not the 1 s hint`);
});
