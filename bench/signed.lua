-- wrk script for make bench: replays pre-signed requests, one nonce per request.
-- BENCH_SIGNED: a file whose first line is the timestamp and every further line "nonce signature",
-- or, after a first line "timeline", lines "timestamp nonce signature": each request takes the next
-- unused line of the current second, so its timestamp is current whatever the rate.
-- BENCH_BODY: the body file. BENCH_PATH: the path. BENCH_HEADERS: extra "name: value" lines.
-- BENCH_TAMPER=1 flips the signature (a flood of invalid signatures).
-- BENCH_DELAY_MS > 0: each connection waits that long after a response before its next request,
-- for latency at a fixed, unsaturated rate (connections / (delay + latency)).
local entries, body, ts = {}, "", nil
local timeline, used, last_second = nil, nil, nil
local headers = {}
local path = os.getenv("BENCH_PATH") or "/api/orders"
local tamper = os.getenv("BENCH_TAMPER") == "1"
local i = 0
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

if pause > 0 then
  delay = function() return pause end
end

init = function(args)
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  for line in io.lines(os.getenv("BENCH_SIGNED")) do
    if ts == nil then ts = line else entries[#entries + 1] = line end
  end
  -- A timeline: lines "timestamp nonce signature", grouped by their second.
  if ts == "timeline" then
    timeline, used = {}, {}
    for _, line in ipairs(entries) do
      local second = tonumber(line:match("^(%d+) "))
      timeline[second] = timeline[second] or {}
      table.insert(timeline[second], line)
      last_second = math.max(last_second or second, second)
    end
  end
  for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  headers["X-Request-Timestamp"] = ts
  headers["Content-Type"] = "application/json"
end

request = function()
  i = i + 1
  local entry = entries[((i - 1) % #entries) + 1]
  local nonce, sig
  if timeline then
    -- The next unused line signed for the current second (the last second's once past it).
    local now = os.time()
    local second = timeline[now] and now or last_second
    local bucket = timeline[second]
    used[second] = (used[second] or 0) + 1
    local own
    own, nonce, sig = bucket[((used[second] - 1) % #bucket) + 1]:match("^(%d+) (%S+) (%S+)$")
    headers["X-Request-Timestamp"] = own
  else
    nonce, sig = entry:match("^(%S+) (%S+)$")
  end
  if tamper then sig = "0" .. sig:sub(2) end
  headers["X-Request-Nonce"] = nonce
  headers["X-Request-Signature"] = sig
  return wrk.format("POST", path, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non_2xx": %d, "errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
