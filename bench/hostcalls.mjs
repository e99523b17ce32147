// Counts what a proxy-wasm filter asks of its host per request: host calls by name, callbacks
// into the module (lifecycle calls plus the allocations the host makes for data it returns),
// and bytes copied each way. Shared data starts empty, so the replay cache is nearly empty here:
// with a full cache each nonce shard read and write copies up to 1 KiB more. It drives the .wasm through a signed 1 KiB POST the way Envoy
// does (context create, request headers, body, response headers, body, done, log, delete)
// against a mock host in Node's V8, so the counts are exact and the wasm-side time is measured
// without Envoy's share.
//
// Usage: node bench/hostcalls.mjs FILTER.wasm CONFIG.json [REQUESTS]
// Environment: BENCH_SECRET (the signing secret the config names), BENCH_API_KEY, BENCH_ORIGIN.
// Prints one JSON object: per-request averages plus the statuses the filter produced.
import { createHmac, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [file, configFile, countArg] = process.argv.slice(2);
const REQUESTS = Number(countArg ?? 20000);
const SECRET = process.env.BENCH_SECRET ?? "";
const API_KEY = process.env.BENCH_API_KEY ?? "";
const ORIGIN = process.env.BENCH_ORIGIN ?? "https://app.example.com";
const OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8;
const PLUGIN_CONFIGURATION = 7, REQUEST_BODY = 0, REQUEST_HEADERS = 0, RESPONSE_HEADERS = 2;

const config = await readFile(configFile);
const wasi = new WASI({ version: "preview1", args: [file], env: { BENCH_SECRET: SECRET } });
const module = await WebAssembly.compile(await readFile(file));

let counting = false;
const calls = new Map(); // host call name -> count
const callbacks = new Map(); // export name -> count
let bytesIn = 0, bytesOut = 0; // host -> wasm, wasm -> host
const count = (map, name) => counting && map.set(name, (map.get(name) ?? 0) + 1);

let exports;
const mem = () => new Uint8Array(exports.memory.buffer);
const view = () => new DataView(exports.memory.buffer);
const read = (ptr, len) => {
  if (counting) bytesOut += len;
  return mem().slice(ptr, ptr + len);
};
const call = (name, ...args) => {
  count(callbacks, name);
  return exports[name](...args);
};
// Data the host returns lives in memory the module allocates (a callback into the module).
const give = (bytes, ptrPtr, sizePtr) => {
  const ptr = bytes.length ? call("proxy_on_memory_allocate", bytes.length) : 0;
  if (bytes.length) mem().set(bytes, ptr);
  if (counting) bytesIn += bytes.length;
  view().setUint32(ptrPtr, ptr, true);
  view().setUint32(sizePtr, bytes.length, true);
  return OK;
};

const enc = new TextEncoder();
const dec = new TextDecoder();
function serializeMap(pairs) {
  const parts = pairs.map(([k, v]) => [enc.encode(k), typeof v === "string" ? enc.encode(v) : v]);
  let size = 4 + parts.length * 8;
  for (const [k, v] of parts) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, parts.length, true);
  let at = 4 + parts.length * 8;
  parts.forEach(([k, v], i) => {
    dv.setUint32(4 + i * 8, k.length, true);
    dv.setUint32(8 + i * 8, v.length, true);
    out.set(k, at); at += k.length + 1;
    out.set(v, at); at += v.length + 1;
  });
  return out;
}
function parseMap(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getUint32(0, true);
  let at = 4 + n * 8;
  const pairs = [];
  for (let i = 0; i < n; i++) {
    const kl = dv.getUint32(4 + i * 8, true), vl = dv.getUint32(8 + i * 8, true);
    const k = dec.decode(bytes.subarray(at, at + kl)); at += kl + 1;
    pairs.push([k, bytes.slice(at, at + vl)]); at += vl + 1;
  }
  return pairs;
}

// The state of the request in flight.
const shared = new Map(); // key -> { value, cas }
let casSeq = 1;
let maps = {};
let body = new Uint8Array();
let localStatus = null;
const properties = {
  "source\0address": "127.0.0.1:40000",
  "response\0code_details": "via_upstream",
  "xds\0route_name": "bench",
};

const host = {
  proxy_log: (level, ptr, len) => {
    const line = read(ptr, len);
    if (level >= 3 && !counting) console.error(`filter log: ${dec.decode(line)}`);
    return OK;
  },
  proxy_get_current_time_nanoseconds: (ptr) => {
    view().setBigUint64(ptr, BigInt(Date.now()) * 1000000n, true);
    return OK;
  },
  proxy_set_tick_period_milliseconds: () => OK,
  proxy_get_buffer_bytes: (type, start, max, ptrPtr, sizePtr) => {
    const source = type === PLUGIN_CONFIGURATION ? config : type === REQUEST_BODY ? body : null;
    if (!source) return NOT_FOUND;
    // Sizes are u32 on the wasm side (usize::MAX arrives as -1).
    const end = Math.min(source.length, (start >>> 0) + (max >>> 0));
    return give(source.subarray(start >>> 0, end), ptrPtr, sizePtr);
  },
  proxy_set_buffer_bytes: (type, start, size, ptr, len) => (read(ptr, len), OK),
  // Maps are kept serialized (the wire format of the ABI), so the mock costs little.
  proxy_get_header_map_pairs: (type, ptrPtr, sizePtr) =>
    give(maps[type] ?? serializeMap([]), ptrPtr, sizePtr),
  proxy_set_header_map_pairs: (type, ptr, len) => {
    maps[type] = read(ptr, len);
    return OK;
  },
  proxy_get_header_map_value: (type, kp, kl, ptrPtr, sizePtr) => {
    const name = dec.decode(read(kp, kl));
    const hit = parseMap(maps[type] ?? serializeMap([])).find(([k]) => k === name);
    return hit ? give(hit[1], ptrPtr, sizePtr) : NOT_FOUND;
  },
  proxy_replace_header_map_value: (type, kp, kl, vp, vl) => (read(kp, kl), read(vp, vl), OK),
  proxy_add_header_map_value: (type, kp, kl, vp, vl) => (read(kp, kl), read(vp, vl), OK),
  proxy_remove_header_map_value: (type, kp, kl) => (read(kp, kl), OK),
  proxy_get_property: (pp, pl, ptrPtr, sizePtr) => {
    const path = dec.decode(read(pp, pl)).replace(/\0$/, "");
    const value = properties[path];
    return value === undefined ? NOT_FOUND : give(enc.encode(value), ptrPtr, sizePtr);
  },
  proxy_get_shared_data: (kp, kl, ptrPtr, sizePtr, casPtr) => {
    const entry = shared.get(dec.decode(read(kp, kl)));
    if (!entry) return NOT_FOUND;
    view().setUint32(casPtr, entry.cas, true);
    return give(entry.value, ptrPtr, sizePtr);
  },
  proxy_set_shared_data: (kp, kl, vp, vl, cas) => {
    const key = dec.decode(read(kp, kl));
    const entry = shared.get(key);
    if (entry && cas !== 0 && entry.cas !== cas) return CAS_MISMATCH;
    shared.set(key, { value: read(vp, vl), cas: casSeq++ });
    return OK;
  },
  proxy_define_metric: (type, np, nl, idPtr) => {
    read(np, nl);
    view().setUint32(idPtr, casSeq++, true);
    return OK;
  },
  proxy_increment_metric: () => OK,
  proxy_record_metric: () => OK,
  proxy_send_local_response: (status, dp, dl, bp, bl, hp, hl) => {
    read(dp, dl); read(bp, bl); read(hp, hl);
    localStatus = status;
    return OK;
  },
  proxy_continue_stream: () => OK,
};
const env = {};
for (const { module: m, name } of WebAssembly.Module.imports(module)) {
  if (m !== "env") continue;
  const impl = host[name];
  env[name] = (...args) => {
    count(calls, name);
    if (!impl) throw new Error(`the mock host does not implement ${name}`);
    return impl(...args);
  };
}
const instance = await WebAssembly.instantiate(module, {
  env,
  wasi_snapshot_preview1: wasi.getImportObject().wasi_snapshot_preview1,
});
exports = instance.exports;
wasi.initialize(instance);

const ROOT = 1;
call("proxy_on_context_create", ROOT, 0);
if (!call("proxy_on_vm_start", ROOT, 0) || !call("proxy_on_configure", ROOT, config.length)) {
  throw new Error("the filter refused its configuration");
}

const payload = enc.encode('{"order": "' + "x".repeat(1011) + '"}');
const statuses = {};
// Requests are signed before the clock starts, so the timing is the filter's and the mock's.
function signed() {
  const ts = String(Math.floor(Date.now() / 1000));
  const nonce = randomBytes(12).toString("hex");
  const signature = createHmac("sha256", SECRET).update(payload).update(ts + nonce).digest("hex");
  const headers = [
    [":authority", "bench"], [":path", "/api/orders"], [":method", "POST"], [":scheme", "http"],
    ["content-type", "application/json"], ["content-length", String(payload.length)],
    ["user-agent", "wrk"], ["x-api-key", API_KEY], ["origin", ORIGIN],
    ["x-request-timestamp", ts], ["x-request-nonce", nonce], ["x-request-signature", signature],
    ["x-forwarded-proto", "http"], ["x-request-id", "3f0c5a52-5a8e-4e0b-9a4c-7d1c2b9e8f10"],
  ];
  return { headers: serializeMap(headers), count: headers.length };
}
const responseHeaders = [
  [":status", "200"], ["content-type", "application/json"], ["content-length", "17"],
  ["date", "Tue, 24 Nov 2026 00:00:00 GMT"], ["server", "demo-upstream"],
  ["x-envoy-upstream-service-time", "0"],
];
const responseMap = serializeMap(responseHeaders);
function request(id, { headers, count }) {
  maps = { [REQUEST_HEADERS]: headers, [RESPONSE_HEADERS]: responseMap };
  body = payload;
  localStatus = null;
  call("proxy_on_context_create", id, ROOT);
  call("proxy_on_request_headers", id, count, 0);
  // Envoy hands every body frame to the filter, whether the headers paused or went on.
  if (localStatus === null) {
    const action = call("proxy_on_request_body", id, payload.length, 1);
    if (localStatus === null && action !== 0) throw new Error("the filter held a complete request");
  }
  if (localStatus === null) {
    call("proxy_on_response_headers", id, responseHeaders.length, 0);
    call("proxy_on_response_body", id, 17, 1);
  }
  call("proxy_on_done", id);
  call("proxy_on_log", id);
  call("proxy_on_delete", id);
  const status = localStatus ?? 200;
  statuses[status] = (statuses[status] ?? 0) + 1;
}

// Warm up (V8 tiers the hot code up), then count and time.
for (let i = 0; i < 2000; i++) request(10 + i, signed());
for (const k of Object.keys(statuses)) delete statuses[k];
const requests = Array.from({ length: REQUESTS }, signed);
counting = true;
const start = process.hrtime.bigint();
for (let i = 0; i < REQUESTS; i++) request(100000 + i, requests[i]);
const elapsed = Number(process.hrtime.bigint() - start) / 1000;
const per = (map) => Object.fromEntries([...map].sort().map(([k, v]) => [k, v / REQUESTS]));
const sum = (map) => [...map.values()].reduce((a, b) => a + b, 0) / REQUESTS;
console.log(JSON.stringify({
  requests: REQUESTS,
  statuses,
  host_calls: sum(calls),
  callbacks: sum(callbacks),
  bytes_in: bytesIn / REQUESTS,
  bytes_out: bytesOut / REQUESTS,
  us_per_request: elapsed / REQUESTS,
  host_call_counts: per(calls),
  callback_counts: per(callbacks),
  // The request headers the upstream would get, for the last request.
  upstream_headers: Object.fromEntries(
    parseMap(maps[REQUEST_HEADERS]).map(([k, v]) => [k, dec.decode(v)])),
}));
