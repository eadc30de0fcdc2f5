// Backoff, hint parsing and the SSE parser: pure logic, no network.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, retryAfterMs, closeRetryMs, keysParam, SseParser } from "../pollgate.js";

test("first retry is uniform in 0..1 s, then the ceiling doubles to 30 s", () => {
  const caps = [];
  const b = new Backoff({ firstMs: 1000, maxMs: 30000, random: () => 0.999999 });
  for (let i = 0; i < 8; i++) caps.push(Math.round(b.next()));
  assert.deepEqual(caps, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  const low = new Backoff({ random: () => 0 });
  assert.equal(low.next(), 0, "full jitter reaches 0");
});

test("full jitter spreads 1000 clients over the whole first second", () => {
  const delays = Array.from({ length: 1000 }, () => new Backoff().next());
  assert.ok(delays.every((d) => d >= 0 && d < 1000));
  const buckets = new Array(10).fill(0);
  delays.forEach((d) => buckets[Math.floor(d / 100)]++);
  // Uniform: each 100 ms bucket holds about 100; none is empty or a spike.
  assert.ok(buckets.every((n) => n > 50 && n < 150), `buckets ${buckets}`);
});

test("never sooner than the server asked; reset starts over", () => {
  const b = new Backoff({ random: () => 0.5 });
  assert.equal(b.next(3000), 3000, "Retry-After: 3 beats a 500 ms jitter");
  assert.equal(b.next(0), 1000, "second step: half of 2 s");
  b.reset();
  assert.equal(b.next(), 500);
  const big = new Backoff({ random: () => 1 - 1e-9 });
  for (let i = 0; i < 100; i++) big.next();
  assert.ok(big.next() <= 30000, "no overflow after many attempts");
});

test("server hints: Retry-After seconds or date, close 1012 retry_ms", () => {
  assert.equal(retryAfterMs("3"), 3000);
  assert.equal(retryAfterMs(null), 0);
  assert.equal(retryAfterMs("garbage"), 0);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(retryAfterMs("Thu, 01 Jan 2026 00:00:07 GMT", now), 7000);
  assert.equal(closeRetryMs("retry_ms=4200"), 4200);
  assert.equal(closeRetryMs("ping timeout"), 0);
  assert.equal(keysParam(new Map([["a", 3], ["b:x", 7]])), "a:3,b:x:7");
});

test("SSE parser: events across chunk boundaries, retry, heartbeat comments", () => {
  const events = [];
  const retries = [];
  const p = new SseParser((t, d) => events.push([t, d]), (ms) => retries.push(ms));
  p.push("retry: 2500\n\n: hb\n\nevent: st");
  p.push('ale\ndata: {"key":"a","version":5}\n');
  assert.deepEqual(events, [], "not dispatched before the blank line");
  p.push("\nevent: expired\ndata: x\n\n");
  assert.deepEqual(events, [
    ["stale", '{"key":"a","version":5}'],
    ["expired", "x"],
  ]);
  assert.deepEqual(retries, [2500]);
});
