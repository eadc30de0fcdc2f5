// The operator's status page (GET / on the internal listener) in Chromium:
// it loads nothing from elsewhere, its numbers are /metrics' numbers, and
// during an incident (upstream down) it shows the breaker open.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromiumOrSkip, screenshot, start, until } from "./harness.js";

const opts = chromiumOrSkip();

/** The page's value for `data-k="key"`. */
const shown = (page, key) => page.locator(`[data-k="${key}"]`).first().textContent();
/** One sample of /metrics, e.g. `pollgate_requests_total{outcome="hit"}`. */
async function sample(pg, series) {
  const text = await (await fetch(`${pg.internalUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  assert.ok(line, `${series} in /metrics`);
  return Number(line.slice(series.length + 1));
}
const refreshes = (page) => page.evaluate(() => Number(document.body.dataset.refreshes || 0));
/** Waits for the page to finish a refresh that started after now. */
async function nextRefresh(page) {
  const n = await refreshes(page);
  await until(async () => (await refreshes(page)) >= n + 2, "two more refreshes", 8000, 50);
}
const num = (text) => Number(text.replace(/,/g, ""));

test("status page: self-contained, numbers match /metrics, breaker shown open", opts, async (t) => {
  const env = await start({ pollgateArgs: ["--breaker-failures", "3", "--breaker-open", "60s"] });
  t.after(env.close);
  const { pg } = env;
  await pg.publish("s1 1\ns2 1\ns3 4\n");
  for (let i = 0; i < 5; i++) {
    const r = await fetch(`${pg.url}/projects/s1/changes?since=1`);
    assert.equal(r.headers.get("x-pollgate"), "hit");
  }
  // One SSE watcher, held open by this test.
  const watch = new AbortController();
  const sse = await fetch(`${pg.url}/pollgate/v1/watch?keys=s1:1`, { signal: watch.signal });
  t.after(() => watch.abort());
  await until(async () => (await pg.metric("pollgate_push_connections")) === 1, "SSE counted");

  const context = await env.browser.newContext({ viewport: { width: 1280, height: 820 } });
  const page = await context.newPage();
  const elsewhere = [];
  page.on("request", (r) => { if (!r.url().startsWith(pg.internalUrl)) elsewhere.push(r.url()); });
  page.on("pageerror", (e) => assert.fail(`page error: ${e.message}`));
  const res = await page.goto(`${pg.internalUrl}/`);
  assert.equal(res.status(), 200);
  assert.match(res.headers()["content-security-policy"], /default-src 'none'/);
  await nextRefresh(page);

  // Quiet phase: what the page shows is what /metrics says.
  assert.equal(num(await shown(page, "keys")), await sample(pg, "pollgate_keys"));
  assert.equal(num(await shown(page, "keys")), 3);
  assert.equal(num(await shown(page, "hits_total")), await sample(pg, 'pollgate_requests_total{outcome="hit"}'));
  assert.equal(num(await shown(page, "push_sse")), await sample(pg, 'pollgate_push_connections{transport="sse"}'));
  assert.equal(num(await shown(page, "push_sse")), 1);
  assert.equal(num(await shown(page, "node_id_clashes")), await sample(pg, "pollgate_cluster_node_id_clashes"));
  assert.equal(await page.locator("#ready").textContent(), "ready");
  assert.equal(await page.locator("#breaker").textContent(), "closed");
  const config = await (await fetch(`${pg.internalUrl}/v1/config`)).json();
  assert.equal(await shown(page, "tunable_poll_interval_hint_s"), String(config.poll_interval_hint_s));
  const build = (await (await fetch(`${pg.internalUrl}/metrics`)).text()).match(/pollgate_build_info\{version="([^"]+)",commit="([^"]+)"\}/);
  assert.equal(await shown(page, "version"), `${build[1]} (${build[2]})`);

  // Incident: hits keep coming, the app goes away, stale polls fail until
  // the breaker opens. The page must say so.
  const load = setInterval(() => fetch(`${pg.url}/projects/s2/changes?since=1`).catch(() => {}), 20);
  t.after(() => clearInterval(load));
  await env.up.stop();
  for (let i = 0; i < 3; i++) await fetch(`${pg.url}/projects/s3/changes?since=0`);
  await until(async () => (await sample(pg, "pollgate_breaker_open")) === 1, "breaker open");
  await nextRefresh(page);
  assert.equal(await page.locator("#breaker").textContent(), "OPEN");
  assert.equal(num(await shown(page, "upstream_failed_total")),
    await sample(pg, 'pollgate_upstream_requests_total{result="error"}')
      + await sample(pg, 'pollgate_upstream_requests_total{result="server_error"}')
      + await sample(pg, 'pollgate_upstream_requests_total{result="timeout"}'));
  assert.match(await shown(page, "hit_ratio"), /^\d+(\.\d)? %$/, "a hit ratio while hits flow");
  assert.ok(num(await shown(page, "polls_per_s")) > 0, "polls/s while hits flow");

  await screenshot(page, "status-page-breaker-open");
  assert.deepEqual(elsewhere, [], "the page loads nothing from anywhere else");
});
