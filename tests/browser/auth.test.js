// The browser client against a pollgate that wants tokens: when its token
// expires the stream ends (`event: expired`), the client asks the page's
// `token()` for a fresh one and reconnects, and notices keep arriving.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { chromiumOrSkip, clientPage, openPage, screenshot, start, until } from "./harness.js";

const opts = chromiumOrSkip();
const SECRET = "browser-auth-secret-browser-auth-secret";

const b64 = (s) => Buffer.from(s).toString("base64url");

/** An HS256 JWT as the app would issue it, for `keys`, valid until `exp`. */
function mint(keys, exp) {
  const head = `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify({ keys, exp }))}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

test("an expiring token is refreshed through token() and the stream resumes", opts, async (t) => {
  const env = await start({ pollgateArgs: ["--auth-jwt-secret", SECRET] });
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  // The first token is past `exp` but inside pollgate's 5 s leeway: good
  // for 3–4 more seconds (enough for a loaded machine to connect with it).
  // The ones after it are good for an hour.
  const issued = [];
  await context.exposeFunction("issueToken", () => {
    const now = Math.floor(Date.now() / 1000);
    const exp = issued.length === 0 ? now - 1 : now + 3600;
    issued.push(exp);
    return mint(["p1"], exp);
  });
  const page = await openPage(context, env.origin, clientPage("{ token: () => window.issueToken() }"));
  await page.waitForFunction(() => window.ready);
  await page.evaluate(() => watch("p1", 1));
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "connected with the first token");

  await until(async () => issued.length >= 2, "a fresh token asked for after expiry", 15000);
  await until(async () => (await env.pg.metric("pollgate_push_connections")) === 1, "reconnected", 10000);
  await env.pg.publish("p1 2\n");
  await until(
    () => page.evaluate(() => (got.p1 || []).some((n) => n[0] === 2)),
    "a notice on the refreshed connection",
    5000,
  );
  assert.ok((await env.pg.metric('pollgate_auth_total{result="ok"}')) >= 2, "both tokens verified");
  await screenshot(page, "auth-token-refreshed");
});

test("without a token the client gets no push stream, and pollgate counts the refusal", opts, async (t) => {
  const env = await start({ pollgateArgs: ["--auth-jwt-secret", SECRET] });
  t.after(env.close);
  await env.pg.publish("p1 1\n");
  const context = await env.browser.newContext();
  const page = await openPage(context, env.origin, clientPage());
  await page.waitForFunction(() => window.ready);
  await page.evaluate(() => watch("p1", 1));
  await until(async () => (await env.pg.metric('pollgate_auth_total{result="missing"}')) >= 1, "refused for want of a token");
  assert.equal(await env.pg.metric("pollgate_push_connections"), 0, "no stream without a token");
});
