// Measurements for the README (not part of `make test`: ~2 minutes, 50
// browser contexts). Usage, from the repository root:
//
//   cargo build --release --bin pollgate --example demo_upstream
//   BROWSER_TEST_PROFILE=release node tests/browser/measure.js [tabs|storm|latency ...]
//   BROWSER_TEST_PROFILE=release MEASURE_DOWN_MS=30000 node tests/browser/measure.js storm
//
// Prints markdown tables; every figure has its baseline measured in the same run.
import { performance } from "node:perf_hooks";
import { clientPage, launchBrowser, openPage, startPollgate, startProxy, startUpstream, until } from "./harness.js";

const only = process.argv.slice(2);
const want = (name) => only.length === 0 || only.includes(name);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
const r = (x) => (x === undefined ? "-" : Math.round(x));

async function env({ args = [] } = {}) {
  const up = await startUpstream();
  const pg = await startPollgate({ upstream: up.url, args });
  const px = await startProxy(pg.public);
  const browser = await launchBrowser();
  return {
    up, pg, proxy: px, browser,
    origin: px.url,
    async close() {
      await browser.close().catch(() => {});
      await px.stop();
      await pg.stop();
      await up.stop();
    },
  };
}

/** Browser connections held for N tabs of one browser: the client vs one connection per tab. */
async function tabs() {
  console.log("\n### Push connections for N tabs of one browser\n");
  console.log("| tabs | pollgate client (shared) | one connection per tab (`shareTabs: false`) | ratio |");
  console.log("| ---: | ---: | ---: | ---: |");
  for (const n of [1, 4, 16]) {
    const row = [];
    for (const shared of [true, false]) {
      const e = await env();
      await e.pg.publish("p1 1\n");
      const context = await e.browser.newContext();
      let stalled = null;
      for (let i = 0; i < n && !stalled; i++) {
        try {
          const page = await openPage(context, e.origin, clientPage(`{ shareTabs: ${shared} }`));
          await page.waitForFunction(() => window.ready, null, { timeout: 10000 });
          await page.evaluate(() => watch("p1", 1));
          await until(async () => (await e.pg.metric("pollgate_push_connections")) >= (shared ? 1 : i + 1), "connected", 10000);
        } catch {
          // HTTP/1.1: Chromium opens at most 6 connections per host and
          // profile; with 6 streams open the next tab cannot even load.
          stalled = i + 1;
        }
      }
      await sleep(2000); // settled: nothing more opens
      const conns = await e.pg.metric("pollgate_push_connections");
      row.push(stalled ? `${conns} (tab ${stalled} never loaded)` : conns);
      await e.close();
    }
    const ratio = typeof row[1] === "number" ? (row[0] / row[1]).toFixed(3) : "-";
    console.log(`| ${n} | ${row[0]} | ${row[1]} | ${ratio} |`);
  }
}

const plainPage = (i) => `<!doctype html><title>plain EventSource</title><script>
window.got = {};
const es = new EventSource("/pollgate/v1/watch?keys=p1:1,c${i}:0");
es.addEventListener("stale", (e) => { const n = JSON.parse(e.data); (got[n.key] ||= []).push([n.version]); });
window.ready = true;
</script>`;

/**
 * 50 browser contexts, pollgate SIGKILLed, down 5 s, restarted (with the
 * default admission rate, then with a low one): when do they come back?
 */
async function storm() {
  const N = 50;
  // MEASURE_DOWN_MS=30000 for a longer outage (then only the default admission).
  const DOWN_MS = Number(process.env.MEASURE_DOWN_MS || 5000);
  const ADMISSION = ["--push-admission-per-s", "10", "--push-admission-burst", "10"];
  const rows = [];
  const runs = [["client", []], ["plain", []], ["client", ADMISSION], ["plain", ADMISSION]];
  for (const [kind, restartArgs] of DOWN_MS > 5000 ? runs.slice(0, 2) : runs) {
    const e = await env();
    await e.pg.publish("p1 1\n");
    const pages = [];
    for (let i = 0; i < N; i++) {
      const context = await e.browser.newContext();
      const html = kind === "client" ? clientPage() : plainPage(i);
      const page = await openPage(context, e.origin, html);
      await page.waitForFunction(() => window.ready);
      if (kind === "client") await page.evaluate((i) => (watch("p1", 1), watch(`c${i}`, 0)), i);
      pages.push(page);
    }
    await until(async () => (await e.pg.metric("pollgate_push_connections")) === N, `${N} connections`, 60000);
    await sleep(1000);
    const killedAt = performance.now();
    await e.pg.kill("SIGKILL");
    await sleep(DOWN_MS);
    const pg2 = await startPollgate({ upstream: e.up.url, args: restartArgs });
    e.proxy.target = pg2.public;
    const backAt = performance.now();
    await until(async () => (await pg2.metric("pollgate_push_connections")) === N, `${N} back`, 30000, 100).catch((x) => console.error(String(x)));
    const allBackMs = performance.now() - backAt;
    await pg2.publish("p1 2\n");
    await sleep(2000);
    let notified = 0;
    for (const p of pages) notified += (await p.evaluate(() => (got.p1 || []).some((n) => n[0] === 2))) ? 1 : 0;
    const attempts = e.proxy.log.filter((x) => x.at > killedAt && x.line?.startsWith("GET /pollgate/v1/"));
    const ctx = (l) => /[=,]c(\d+):/.exec(l)?.[1];
    const first = new Map();
    attempts.forEach((a) => first.has(ctx(a.line)) || first.set(ctx(a.line), a.at - killedAt));
    const firsts = [...first.values()];
    const after = attempts.filter((a) => a.at >= backAt);
    const perSec = (xs, from) => {
      const b = new Map();
      xs.forEach((a) => b.set(Math.floor((a.at - from) / 1000), (b.get(Math.floor((a.at - from) / 1000)) || 0) + 1));
      return Math.max(0, ...b.values());
    };
    const per100 = (xs, from) => {
      const b = new Map();
      xs.forEach((a) => b.set(Math.floor((a.at - from) / 100), (b.get(Math.floor((a.at - from) / 100)) || 0) + 1));
      return Math.max(0, ...b.values());
    };
    rows.push({
      kind,
      admission: restartArgs.length ? "10/s" : "default",
      p50: pct(firsts, 50), p99: pct(firsts, 99), max: Math.max(...firsts),
      whileDown: attempts.length - after.length,
      peakDown: perSec(attempts.filter((a) => a.at < backAt), killedAt),
      peakUp: perSec(after, backAt),
      peakUp100: per100(after, backAt),
      allBackMs, notified,
    });
    await pg2.stop();
    await e.close();
  }
  console.log(`\n### Reconnects after pollgate is SIGKILLed under ${N} browser contexts (down ${DOWN_MS / 1000} s, then restarted)\n`);
  console.log("| client | restarted with admission | first attempt after the kill: p50 / p99 / max (ms) | attempts while down | peak attempts/s while down | peak attempts/s pollgate sees after restart (per 100 ms) | all back after restart (ms) | contexts that got the next notice |");
  console.log("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const x of rows) {
    const name = x.kind === "client" ? "pollgate client" : "plain `EventSource`";
    const back = x.allBackMs >= 30000 ? "not within 30 s" : r(x.allBackMs);
    console.log(`| ${name} | ${x.admission} | ${r(x.p50)} / ${r(x.p99)} / ${r(x.max)} | ${x.whileDown} | ${x.peakDown} | ${x.peakUp} (${x.peakUp100}) | ${back} | ${x.notified}/${N} |`);
  }
}

/** publish → callback, in the leader tab and in a follower tab (relayed over BroadcastChannel). */
async function latency() {
  const ROUNDS = 200;
  const e = await env();
  await e.pg.publish("p1 1\n");
  const context = await e.browser.newContext();
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await openPage(context, e.origin, clientPage());
    await page.waitForFunction(() => window.ready);
    await page.evaluate(() => watch("p1", 1));
    pages.push(page);
  }
  await until(async () => (await Promise.all(pages.map((p) => p.evaluate(() => pg.info.role)))).includes("leader"), "a leader");
  await until(async () => (await e.pg.metric("pollgate_push_connections")) === 1, "connected");
  const roles = await Promise.all(pages.map((p) => p.evaluate(() => pg.info.role)));
  const leader = pages[roles.indexOf("leader")];
  const follower = pages[roles.indexOf("follower")];
  const lat = { leader: [], follower: [] };
  for (let v = 2; v < ROUNDS + 2; v++) {
    const t0 = performance.timeOrigin + performance.now();
    await e.pg.publish(`p1 ${v}\n`);
    for (const [name, p] of [["leader", leader], ["follower", follower]]) {
      const at = await until(() => p.evaluate((v) => (got.p1 || []).find((n) => n[0] === v)?.[1], v), "the notice", 5000, 1);
      lat[name].push(at - t0);
    }
  }
  await e.close();
  console.log(`\n### Notice latency, publish → callback (${ROUNDS} publishes, one at a time)\n`);
  console.log("| tab | p50 (ms) | p99 (ms) | max (ms) |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const name of ["leader", "follower"]) {
    const xs = lat[name];
    console.log(`| ${name} | ${pct(xs, 50).toFixed(1)} | ${pct(xs, 99).toFixed(1)} | ${Math.max(...xs).toFixed(1)} |`);
  }
}

if (want("tabs")) await tabs();
if (want("storm")) await storm();
if (want("latency")) await latency();
