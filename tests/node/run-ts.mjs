// Runs a TypeScript file with Node: transpile with the TypeScript compiler (no type check), then
// import the result as an ES module. Usage: node run-ts.mjs FILE.ts
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import ts from "typescript";

const source = readFileSync(process.argv[2], "utf8");
const { outputText } = ts.transpileModule(source, {
  compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
});
const out = join(mkdtempSync(join(tmpdir(), "edge-warden-ts-")), "snippet.mjs");
writeFileSync(out, outputText);
await import(pathToFileURL(out).href);
