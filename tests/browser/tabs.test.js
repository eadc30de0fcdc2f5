// Tabs of one browser share one push connection; the leader's successor
// takes over; hidden tabs hold notices until shown.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromiumOrSkip, clientPage, openPage, screenshot, start, until } from "./harness.js";

const opts = chromiumOrSkip();

/** Opens `n` tabs of one context, each watching `p1` at version 1. */
async function tabs(env, context, n) {
  const pages = [];
  for (let i = 0; i < n; i++) {
    const page = await openPage(context, env.origin, clientPage());
    await page.waitForFunction(() => window.ready);
    await page.evaluate(() => watch("p1", 1));
    pages.push(page);
  }
  return pages;
}

const roles = (pages) => Promise.all(pages.map((p) => p.evaluate(() => pg.info.role)));
const gotVersion = (page, key, v) => page.evaluate(([k, v]) => (got[k] || []).some((n) => n[0] === v), [key, v]);

test("four tabs hold one push connection; a publish reaches all four within a second", opts, async (t) => {
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  const pages = await tabs(env, context, 4);
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "one connection");
  await until(async () => (await roles(pages)).filter((r) => r === "leader").length === 1, "one leader");
  const t0 = Date.now();
  await env.pg.publish("p1 2\n");
  await until(async () => (await Promise.all(pages.map((p) => gotVersion(p, "p1", 2)))).every(Boolean), "all four notified", 1000, 10);
  const ms = Date.now() - t0;
  assert.ok(ms < 1000, `${ms} ms`);
  assert.equal(await env.pg.metric("pollgate_push_connections"), 1, "still one connection");
  await screenshot(pages[3], "tabs-four-follower");
});

test("closing the leader tab: another leads within 5 s, one connection, notices still arrive", opts, async (t) => {
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  const pages = await tabs(env, context, 3);
  await until(async () => (await roles(pages)).includes("leader"), "a leader");
  const leader = pages[(await roles(pages)).indexOf("leader")];
  const rest = pages.filter((p) => p !== leader);
  const t0 = Date.now();
  await leader.close();
  await until(async () => (await roles(rest)).includes("leader"), "a new leader", 5000);
  const tookMs = Date.now() - t0;
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "one connection again", 5000);
  await env.pg.publish("p1 3\n");
  await until(async () => (await Promise.all(rest.map((p) => gotVersion(p, "p1", 3)))).every(Boolean), "notices after the takeover", 2000);
  assert.equal(await env.pg.metric("pollgate_push_connections"), 1);
  assert.ok(tookMs < 5000, `${tookMs} ms`);
  await screenshot(rest[0], "tabs-after-leader-closed");
});

test("a hidden tab gets no callback until shown, then exactly one per key", opts, async (t) => {
  const env = await start();
  t.after(env.close);
  await env.pg.publish("p1 1\np2 1\n");
  const context = await env.browser.newContext();
  const [leader] = await tabs(env, context, 1);
  await until(async () => (await roles([leader]))[0] === "leader", "the leader");
  const page = await openPage(context, env.origin, clientPage());
  await page.waitForFunction(() => window.ready);
  // Emulate a background tab: visibilityState is read by the client; the
  // event tells it the state changed (as Chromium fires on a tab switch).
  const setVisibility = (state) =>
    page.evaluate((s) => {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => s });
      Object.defineProperty(document, "hidden", { configurable: true, get: () => s === "hidden" });
      document.dispatchEvent(new Event("visibilitychange"));
    }, state);
  await setVisibility("hidden");
  await page.evaluate(() => (watch("p1", 1), watch("p2", 1)));
  await until(async () => (await env.pg.metric("pollgate_push_watched_keys")) === 2, "both keys watched");
  for (const v of [2, 3, 4]) await env.pg.publish(`p1 ${v}\np2 ${v}\n`);
  await until(() => gotVersion(leader, "p1", 4), "the visible tab saw p1 → 4");
  // The visible tab's notices went through the same channel; give the hidden one as long.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await page.evaluate(() => callbacks), 0, "no callback while hidden");
  await setVisibility("visible");
  await until(() => page.evaluate(() => callbacks === 2), "the held notices");
  await new Promise((r) => setTimeout(r, 300));
  const got = await page.evaluate(() => got);
  assert.deepEqual(Object.keys(got).sort(), ["p1", "p2"]);
  assert.deepEqual(got.p1.map((n) => [n[0], n[2]]), [[4, "visible"]], "one callback, newest version");
  assert.deepEqual(got.p2.map((n) => [n[0], n[2]]), [[4, "visible"]]);
  await screenshot(page, "hidden-tab-shown");
});
