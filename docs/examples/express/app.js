// An Express app behind pollgate (docs/integrate.md). pollgate is configured
// with the route /projects/{key}/changes?since={version} and forwards to
// this app the polls it cannot answer from memory.
import express from "express";

const POLLGATE = process.env.POLLGATE_URL ?? "http://127.0.0.1:8081"; // internal listener
const TOKEN = process.env.POLLGATE_PUBLISH_TOKEN;
const projects = new Map(); // key -> { version, events }; your database in real life

const app = express();
app.use(express.json());

// 1. Every poll answer carries the key's current version.
app.get("/projects/:key/changes", (req, res) => {
  const p = projects.get(req.params.key) ?? { version: 0, events: [] };
  const since = Number(req.query.since ?? 0);
  res.set("X-Pollgate-Version", String(p.version));
  if (since >= p.version) return res.status(304).end();
  res.json({ version: p.version, events: p.events.slice(since) });
});

// 2. A change is committed first, then published.
app.post("/projects/:key/events", async (req, res) => {
  const p = projects.get(req.params.key) ?? { version: 0, events: [] };
  p.events.push(req.body);
  p.version += 1;
  projects.set(req.params.key, p); // the commit: only now may anyone see the version
  await publish(req.params.key, p.version);
  res.status(201).json({ version: p.version });
});

// 3. A failed publish is logged, never fatal: pollgate revalidates the key
//    within max_age (60 s) anyway, and the next publish carries the newer version.
async function publish(key, version) {
  try {
    const r = await fetch(`${POLLGATE}/v1/versions`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "text/plain" },
      body: `${key} ${version}\n`,
      signal: AbortSignal.timeout(2000),
    });
    if (!r.ok) console.warn(`pollgate publish: ${r.status} ${await r.text()}`);
  } catch (e) {
    console.warn(`pollgate publish failed: ${e.message}`);
  }
}

const server = app.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
