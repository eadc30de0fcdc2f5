-- wrk script for pollgate's hit path: every request polls a random one of
-- 100k keys that were all published at version 1, claiming version 1, so a
-- correct pollgate answers every one with 304 from memory.
--
-- Any other status is counted and reported: a load test that silently
-- measures 404s or 502s is worthless. run.sh reads the `hit.lua:` line.
-- LT_EXPECT_STATUS (default 304) names the correct status instead, for a
-- peer whose hit is a 200 with the version as body (nginx + memcached).

local nkeys = 100000
-- Requests are formatted once in init(), not per request, so wrk's own Lua
-- cost stays small and the client is less likely to be the bottleneck.
local npaths = 100000
local requests = {}

local expect = tonumber(os.getenv("LT_EXPECT_STATUS") or "304")
-- LT_AUTHORIZATION: sent as the Authorization header (pollgate with auth on).
local authorization = os.getenv("LT_AUTHORIZATION")
local headers = authorization and { ["Authorization"] = authorization } or nil
-- LT_SINCE (default 1): the version claimed; 0 is behind every key, so each
-- poll is forwarded (scripts/build-pgo.sh trains the forward path with it).
local since = os.getenv("LT_SINCE") or "1"
non304 = 0
first_bad = 0
id = 0 -- set per thread by setup(), so threads draw different keys

function init(args)
  math.randomseed(os.time() * 1000 + id)
  for i = 1, npaths do
    local key = math.random(0, nkeys - 1)
    requests[i] = wrk.format("GET", "/projects/p" .. key .. "/changes?since=" .. since, headers)
  end
end

function request()
  return requests[math.random(1, npaths)]
end

function response(status, headers, body)
  if status ~= expect then
    non304 = non304 + 1
    if first_bad == 0 then
      first_bad = status
    end
  end
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local bad, status = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non304")
    if status == 0 then
      status = t:get("first_bad")
    end
  end
  io.write(string.format("hit.lua: requests=%d non304=%d first_non304_status=%d\n",
    summary.requests, bad, status))
end
