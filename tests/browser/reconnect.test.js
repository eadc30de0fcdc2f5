// When pollgate goes away, refuses, or has push off: the client waits as it
// should, spreads its reconnects, and falls back to polling the app.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromiumOrSkip, clientPage, openPage, screenshot, start, startPollgate, until } from "./harness.js";

const opts = chromiumOrSkip();

/** The context id a watch request names (each context watches `c<i>`). */
const ctxOf = (line) => /[=,]c(\d+):/.exec(line || "")?.[1];

test("pollgate SIGKILLed and restarted under 12 contexts: spread reconnects, one transport, every context notified", opts, async (t) => {
  const N = 12;
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const pages = [];
  for (let i = 0; i < N; i++) {
    const context = await env.browser.newContext();
    const page = await openPage(context, env.origin, clientPage());
    await page.waitForFunction(() => window.ready);
    await page.evaluate((i) => (watch("p1", 1), watch(`c${i}`, 0)), i);
    pages.push(page);
  }
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === N, `${N} connections`, 10000);
  const killedAt = performance.now();
  await env.pg.kill("SIGKILL");
  // Down for 3 s, then back (on a new port: the proxy is the stable address).
  await new Promise((r) => setTimeout(r, 3000));
  const pg2 = await startPollgate({ upstream: env.up.url });
  t.after(() => pg2.stop());
  env.proxy.target = pg2.public;
  const backAt = performance.now();
  await until(async () => (await pg2.metric("pollgate_push_connections")) === N, `${N} reconnected`, 20000);
  await pg2.publish("p1 2\n");
  for (const p of pages) await until(() => p.evaluate(() => (got.p1 || []).some((n) => n[0] === 2)), "the next notice", 3000);

  const attempts = env.proxy.log.filter((e) => e.at > killedAt && e.line?.startsWith("GET /pollgate/"));
  assert.ok(attempts.every((e) => e.line.startsWith("GET /pollgate/v1/watch?")), "SSE only: no transport hopping, no probes");
  const byCtx = new Map();
  for (const e of attempts) {
    const c = ctxOf(e.line);
    assert.ok(c !== undefined, `attempt names its context: ${e.line}`);
    if (!byCtx.has(c)) byCtx.set(c, []);
    byCtx.get(c).push(e.at - killedAt);
  }
  assert.equal(byCtx.size, N, "every context came back");
  const firsts = [...byCtx.values()].map((a) => a[0]).sort((a, b) => a - b);
  const spread = firsts.at(-1) - firsts[0];
  assert.ok(spread > 1000, `first attempts spread over ${Math.round(spread)} ms: ${firsts.map(Math.round)}`);
  // At most a few per 250 ms window, where a synchronised storm puts all 12 in one.
  const perWindow = new Map();
  firsts.forEach((ms) => perWindow.set(Math.floor(ms / 250), (perWindow.get(Math.floor(ms / 250)) || 0) + 1));
  assert.ok(Math.max(...perWindow.values()) <= N / 2, `first attempts per 250 ms: ${[...perWindow.values()]}`);
  // Backoff: while down (~3 s) no context retries in a tight loop. The first
  // attempt waits for the server's 1–5 s `retry:` hint, then full jitter
  // below ceilings of 2, 4, 8 s: four attempts in 3 s happen (~0.3 % of
  // contexts, so ~3 % of runs: an earlier bound of 3 flaked), six have odds
  // of ~1e-5 per context even if the outage stretches to 4 s under load.
  // A client without backoff would make dozens.
  const downMs = backAt - killedAt;
  for (const [c, times] of byCtx) {
    const whileDown = times.filter((ms) => ms < downMs).length;
    assert.ok(whileDown <= 5, `context c${c}: ${whileDown} attempts in ${Math.round(downMs)} ms down`);
  }
  await screenshot(pages[0], "reconnect-after-crash");
});

test("admission refusal (503, Retry-After: 3): the client waits at least 3 s, then connects", opts, async (t) => {
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  const tries = [];
  // The first watch is refused as pollgate's admission does (503 +
  // Retry-After); the next go to pollgate itself.
  await context.route(/\/pollgate\/v1\/watch\?/, (route) => {
    tries.push(performance.now());
    if (tries.length === 1) return route.fulfill({ status: 503, headers: { "retry-after": "3" }, body: "busy" });
    return route.continue();
  });
  const page = await openPage(context, env.origin, clientPage());
  await page.waitForFunction(() => window.ready);
  await page.evaluate(() => watch("p1", 1));
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "connected after the wait", 10000);
  assert.equal(tries.length, 2, "one refused, one admitted: no attempt in between");
  assert.ok(tries[1] - tries[0] >= 3000, `waited ${Math.round(tries[1] - tries[0])} ms`);
  const states = await page.evaluate(() => states.map((s) => s[1]));
  assert.deepEqual(states, ["offline", "push"], "a refusal is a wait, then push");
  await env.pg.publish("p1 2\n");
  await until(() => page.evaluate(() => (got.p1 || []).length === 1), "a notice after admission");
});

test("pollgate's own refusal: the next attempt is never sooner than its Retry-After", opts, async (t) => {
  // One admission token and one a second: of two contexts starting together, one is refused.
  const env = await start({ pollgateArgs: ["--push-admission-burst", "1", "--push-admission-per-s", "1"] });
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  // Each page logs its own watch requests: the start, and the status and
  // Retry-After of the answer. Logged in the page, not from Playwright's
  // request/response events: a refusal whose body the client cancels at once
  // can reach Playwright as a failed request with no response, which made
  // the two lists disagree about which request was refused.
  const pages = await Promise.all(
    [0, 1].map(async () => {
      const context = await env.browser.newContext();
      await context.addInitScript(() => {
        const real = window.fetch.bind(window);
        window.watchLog = [];
        window.fetch = async (url, init) => {
          if (!String(url).includes("/pollgate/v1/watch")) return real(url, init);
          const entry = { start: performance.now() };
          window.watchLog.push(entry);
          const res = await real(url, init);
          entry.status = res.status;
          entry.retryAfter = Number(res.headers.get("retry-after"));
          return res;
        };
      });
      const page = await openPage(context, env.origin, clientPage());
      await page.waitForFunction(() => window.ready);
      return page;
    }),
  );
  await Promise.all(pages.map((p, i) => p.evaluate((i) => (watch("p1", 1), watch(`c${i}`, 0)), i)));
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 2, "both connected", 15000);
  const logs = await Promise.all(pages.map((p) => p.evaluate(() => window.watchLog)));
  const refusals = logs.flatMap((log) => log.map((e, i) => ({ ...e, next: log[i + 1] })).filter((e) => e.status === 503));
  assert.ok(refusals.length >= 1, `pollgate refused one: ${JSON.stringify(logs)}`);
  for (const r of refusals) {
    assert.ok(r.retryAfter >= 1, `a refusal names its wait: ${JSON.stringify(r)}`);
    assert.ok(r.next, `a refused client tried again: ${JSON.stringify(logs)}`);
    const gap = r.next.start - r.start;
    assert.ok(gap >= r.retryAfter * 1000, `retried after ${Math.round(gap)} ms, asked ${r.retryAfter} s`);
  }
});

test("push off (--push false): the client polls the app's route at the X-Poll-Interval hint", opts, async (t) => {
  const env = await start({ pollgateArgs: ["--push", "false", "--poll-interval", "1s"], seed: 1 });
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  const page = await openPage(context, env.origin, clientPage("{ pollUrl: (k, v) => `/projects/${k}/changes?since=${v}` }"));
  await page.waitForFunction(() => window.ready);
  await page.evaluate(() => watch("p1", 1));
  await until(() => page.evaluate(() => pg.info.state === "polling"), "polling", 10000);
  const polls = () =>
    page.evaluate(() => performance.getEntriesByType("resource").filter((e) => e.name.includes("/projects/p1/changes")).map((e) => e.startTime));
  await until(async () => (await polls()).length >= 3, "three polls", 6000);
  const times = await polls();
  const gaps = times.slice(1).map((x, i) => x - times[i]);
  assert.ok(gaps.every((g) => g >= 900 && g < 2500), `poll gaps at the 1 s hint: ${gaps.map(Math.round)}`);
  // A change in the app (its event publishes nowhere here; tell pollgate as the app would).
  const res = await fetch(`${env.up.url}/projects/p1/events`, { method: "POST", body: "hello" });
  assert.equal(res.status, 201);
  await env.pg.publish("p1 2\n");
  await until(() => page.evaluate(() => (got.p1 || []).some((n) => n[0] === 2)), "the poll saw version 2", 5000);
  assert.equal(await env.pg.metric("pollgate_push_connections"), 0);
  const tried = await page.evaluate(() => performance.getEntriesByType("resource").map((e) => new URL(e.name).pathname));
  assert.ok(tried.includes("/pollgate/v1/watch") && tried.includes("/pollgate/v1/wait"), "push was tried first");
  await screenshot(page, "push-off-polling");
});

test("SSE not served (404): the client uses the WebSocket and notices arrive", opts, async (t) => {
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  await context.route(/\/pollgate\/v1\/watch\?/, (route) => route.fulfill({ status: 404, body: "not here" }));
  const page = await openPage(context, env.origin, clientPage());
  await page.waitForFunction(() => window.ready);
  await page.evaluate(() => watch("p1", 1));
  await until(() => page.evaluate(() => pg.info.transport === "ws" && pg.info.state === "push"), "on the WebSocket", 5000);
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "one connection");
  await env.pg.publish("p1 2\n");
  await until(() => page.evaluate(() => (got.p1 || []).some((n) => n[0] === 2)), "a notice over the WebSocket", 2000);
  const text = await (await fetch(`${env.pg.internalUrl}/metrics`)).text();
  assert.match(text, /pollgate_push_connections\{transport="ws"\} 1/);
});

test("offline pauses (the connection is dropped), online resumes within about a second", opts, async (t) => {
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  const page = await openPage(context, env.origin, clientPage());
  await page.waitForFunction(() => window.ready);
  await page.evaluate(() => watch("p1", 1));
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "connected");
  await context.setOffline(true);
  await until(() => page.evaluate(() => pg.info.state === "offline"), "offline", 2000);
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 0, "the connection dropped", 3000);
  const before = env.proxy.log.length;
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(env.proxy.log.length, before, "no attempts while offline");
  const t0 = Date.now();
  await context.setOffline(false);
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "back online", 3000);
  const ms = Date.now() - t0;
  await env.pg.publish("p1 2\n");
  await until(() => page.evaluate(() => (got.p1 || []).some((n) => n[0] === 2)), "a notice after resuming", 2000);
  assert.ok(ms < 2500, `resumed after ${ms} ms`);
});
