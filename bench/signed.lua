-- wrk script for make bench: replays pre-signed requests, one nonce per request.
-- BENCH_SIGNED: a file whose first line is the timestamp and every further line "nonce signature".
-- BENCH_BODY: the body file. BENCH_PATH: the path. BENCH_HEADERS: extra "name: value" lines.
-- BENCH_TAMPER=1 flips the signature (a flood of invalid signatures).
-- BENCH_DELAY_MS > 0: each connection waits that long after a response before its next request,
-- for latency at a fixed, unsaturated rate (connections / (delay + latency)).
local entries, body, ts = {}, "", nil
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
  local nonce, sig = entry:match("^(%S+) (%S+)$")
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
