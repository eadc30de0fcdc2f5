// The demo board of `make run`: served by the demo upstream through
// pollgate's pass-through, live in every tab.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromiumOrSkip, launchBrowser, screenshot, startPollgate, startProxy, startUpstream, until } from "./harness.js";

const opts = chromiumOrSkip();

test("demo board: an event posted in one tab shows in the other; one connection for both", opts, async (t) => {
  // The upstream publishes to pollgate's internal listener, which is only
  // known once pollgate is up: a proxy stands in for it until then.
  const internal = await startProxy("127.0.0.1:9");
  t.after(internal.stop);
  const up = await startUpstream({ publishUrl: internal.url, seed: 3 });
  t.after(up.stop);
  const pg = await startPollgate({ upstream: up.url });
  t.after(pg.stop);
  internal.target = pg.internal;
  await pg.publish("p1 1\np2 1\np3 1\n");
  const browser = await launchBrowser();
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1100, height: 520 } });
  const tabs = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
    await page.goto(`${pg.url}/`);
    await page.waitForFunction(() => window.boardReady);
    tabs.push(page);
  }
  await until(async () => (await pg.metric("pollgate_push_connections")) === 1, "one connection for two tabs");
  await until(() => tabs[1].evaluate(() => document.getElementById("conns").textContent === "1"), "the board shows it");
  const card = (page, key) => page.locator("section.project", { hasText: key }).first();
  await card(tabs[0], "p1").locator("input").fill("first event from tab one");
  await card(tabs[0], "p1").locator("button").click();
  for (const page of tabs) {
    await until(() => card(page, "p1").locator("li", { hasText: "first event from tab one" }).count(), "the event in every tab", 3000);
  }
  assert.equal(await card(tabs[1], "p1").locator(".v").textContent(), "2");
  assert.equal(await tabs[1].locator("#state").textContent(), "push");
  await screenshot(tabs[1], "demo-board");
});
