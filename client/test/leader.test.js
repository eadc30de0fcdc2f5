// Leader election and relay between tabs, with several clients in one node
// process: node's BroadcastChannel, a small in-process Web Locks stand-in
// (same queueing semantics: one holder, the next waiter gets it on release)
// and a recording link in place of the network.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../pollgate.js";

class Locks {
  constructor() {
    this.queues = new Map();
  }
  request(name, cb) {
    return new Promise((resolve, reject) => {
      const q = this.queues.get(name) || [];
      this.queues.set(name, q);
      q.push({ cb, resolve, reject });
      if (q.length === 1) this.run(name);
    });
  }
  async run(name) {
    const q = this.queues.get(name);
    const e = q[0];
    try {
      e.resolve(await e.cb({ name }));
    } catch (x) {
      e.reject(x);
    }
    q.shift();
    if (q.length) this.run(name);
  }
}

/** A page stand-in: visibilityState and its listeners. */
class Doc {
  constructor() {
    this.visibilityState = "visible";
    this.fns = [];
  }
  addEventListener(_, fn) {
    this.fns.push(fn);
  }
  removeEventListener() {}
  set(state) {
    this.visibilityState = state;
    this.fns.forEach((f) => f());
  }
}

/** Records what the leader would connect for, instead of connecting. */
function recorder(links) {
  return (o, env, cbs) => {
    const link = { keys: new Map(), hidden: false, closed: false, cbs, starts: 0 };
    link.setKeys = (k) => (link.keys = new Map(k));
    link.setHidden = (h) => (link.hidden = h);
    link.start = () => {
      link.starts++;
      cbs.onState("push", { transport: "sse", connections: 1 });
    };
    link.close = () => (link.closed = true);
    link.online = link.offline = () => {};
    links.push(link);
    return link;
  };
}

async function until(cond, what, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

let n = 0;
function tabs(count, links, locks = new Locks()) {
  const channel = `t${++n}`;
  return Array.from({ length: count }, () => {
    const document = new Doc();
    const env = { locks, document, window: undefined, makeLink: recorder(links) };
    const c = connect({ channel, settleMs: 20, env });
    c.doc = document;
    return c;
  });
}

const live = (links) => links.filter((l) => !l.closed);

test("one leader connects for the union of every tab's keys at the highest version", async (t) => {
  const links = [];
  const [a, b, c] = tabs(3, links);
  t.after(() => [a, b, c].forEach((x) => x.close()));
  a.watch("p1", 3, () => {});
  b.watch("p1", 5, () => {});
  b.watch("p2", 1, () => {});
  c.watch("p3", 0, () => {});
  await until(() => live(links)[0]?.keys.size === 3, "the union");
  assert.equal(links.length, 1, "only the leader made a link");
  assert.deepEqual([...live(links)[0].keys].sort(), [["p1", 5], ["p2", 1], ["p3", 0]]);
});

test("a notice reaches the watchers of that key in every tab, once", async (t) => {
  const links = [];
  const [a, b] = tabs(2, links);
  t.after(() => [a, b].forEach((x) => x.close()));
  const got = { a: [], b: [] };
  a.watch("p1", 1, (n) => got.a.push(n.version));
  b.watch("p1", 1, (n) => got.b.push(n.version));
  b.watch("p2", 1, () => assert.fail("p2 did not change"));
  await until(() => links[0]?.keys.size === 2, "the leader's keys");
  links[0].cbs.onNotice("p1", 4);
  links[0].cbs.onNotice("p1", 4); // a duplicate (reconnect) is not a second callback
  await until(() => got.a.length && got.b.length, "both tabs notified");
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(got, { a: [4], b: [4] });
});

test("when the leader leaves, another tab leads and resubscribes at current versions", async (t) => {
  const links = [];
  const [a, b, c] = tabs(3, links);
  t.after(() => [a, b, c].forEach((x) => x.close()));
  a.watch("p1", 1, () => {});
  b.watch("p2", 1, () => {});
  c.watch("p1", 1, () => {});
  await until(() => links[0]?.keys.size === 2, "first leader's keys");
  const first = links[0];
  first.cbs.onNotice("p1", 9);
  await new Promise((r) => setTimeout(r, 20));
  const leaderTab = [a, b, c].find((x) => x.info.role === "leader");
  leaderTab.close();
  await until(() => links.length === 2 && links[1].keys.size >= 1, "a second leader");
  const rest = [a, b, c].filter((x) => x !== leaderTab);
  await until(() => rest.some((x) => x.info.role === "leader"), "a new leader role");
  const want = new Map();
  rest.forEach((x) => x.watchers.forEach((_, k) => want.set(k, true)));
  await until(() => links[1].keys.size === want.size, "the union of the remaining tabs");
  assert.ok(first.closed, "the old leader's connection is closed");
  if (links[1].keys.has("p1")) assert.equal(links[1].keys.get("p1"), 9, "resubscribed at the version the tabs hold");
  assert.equal(live(links).length, 1, "still one connection");
  const follower = rest.find((x) => x.info.role === "follower");
  await until(() => follower.info.connections === 1 && follower.info.state === "push", "followers see the leader's state");
});

test("a hidden tab holds notices and gets one callback per key when shown", async (t) => {
  const links = [];
  const [a, b] = tabs(2, links);
  t.after(() => [a, b].forEach((x) => x.close()));
  await until(() => a.info.role === "leader" || b.info.role === "leader", "a leader");
  const follower = a.info.role === "leader" ? b : a;
  const got = [];
  follower.watch("p1", 1, (n) => got.push(n));
  follower.watch("p2", 1, (n) => got.push(n));
  await until(() => links[0]?.keys.size === 2, "keys at the leader");
  follower.doc.set("hidden");
  links[0].cbs.onNotice("p1", 3);
  links[0].cbs.onNotice("p1", 5);
  links[0].cbs.onNotice("p2", 4);
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(got, [], "nothing while hidden");
  assert.equal(links[0].hidden, false, "one tab is still visible: polling keeps its pace");
  const leader = a === follower ? b : a;
  leader.doc.set("hidden");
  await until(() => links[0].hidden, "every tab hidden: the link is told");
  follower.doc.set("visible");
  assert.deepEqual(
    got.map((n) => [n.key, n.version]),
    [["p1", 5], ["p2", 4]],
    "one callback per key, newest version",
  );
});
