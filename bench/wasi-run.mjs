// Runs a wasm32-wasip1 program under Node's WASI (V8, the engine Envoy embeds).
// Usage: node bench/wasi-run.mjs PROGRAM.wasm [ARGS...]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [file, ...args], env: {} });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
wasi.start(instance);
