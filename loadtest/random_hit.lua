-- wrk script: polls a uniformly random key of `p0 .. p<keys-1>` with a
-- version far ahead of any published one, so every poll is a hit (304).
-- Usage: wrk ... -s random_hit.lua <url> -- <keys>
local keys = 1000000

function init(args)
  keys = tonumber(args[1]) or keys
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
end

function request()
  return wrk.format("GET", "/projects/p" .. math.random(0, keys - 1) .. "/changes?since=999999999999")
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d rps=%.0f p50_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
