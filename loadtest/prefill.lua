-- wrk script: requests /projects/p0 .. p<keys-1>/changes?since=1 once each,
-- in order, then stops; peers.sh uses it to fill Varnish's cache before a
-- measured run. Prints how many answers were not 200/304 (a failed fetch is
-- not cached). Usage: wrk -t1 ... -s prefill.lua <url> -- <keys>
local keys = 100000
local next_key = 0
local answered = 0
failed = 0

function init(args)
  keys = tonumber(args[1]) or keys
end

function request()
  local key = next_key % keys
  next_key = next_key + 1
  return wrk.format("GET", "/projects/p" .. key .. "/changes?since=1")
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 and status ~= 304 then
    failed = failed + 1
  end
  if answered >= keys then
    wrk.thread:stop()
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("failed")
  end
  io.write(string.format("prefill.lua: requests=%d failed=%d\n", summary.requests, bad))
end
