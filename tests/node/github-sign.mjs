// Signs a GitHub webhook delivery with GitHub's own package, @octokit/webhooks-methods, for
// edge-warden's Envoy tests. Usage (from tests/node, after `make node-deps`):
//   node github-sign.mjs < input.json
// The input is {"secret": "...", "body": "..."} (the payload as text, which is what sign()
// takes) and optionally "delivery" (the X-GitHub-Delivery id; a fresh UUID otherwise) and
// "event" (X-GitHub-Event, default "push"). Prints the headers to send as one JSON object.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

let sign;
try {
  ({ sign } = await import("@octokit/webhooks-methods"));
} catch (e) {
  console.error(
    `github-sign.mjs: @octokit/webhooks-methods is not installed in tests/node (${e.message}); ` +
      "run `make node-deps`",
  );
  process.exit(3);
}

const input = JSON.parse(readFileSync(0, "utf8"));
// sign(secret, payload): "sha256=" and the hex HMAC-SHA256 of the payload under the secret.
const signature = await sign(input.secret, input.body);
console.log(
  JSON.stringify({
    "X-Hub-Signature-256": signature,
    "X-GitHub-Delivery": input.delivery ?? randomUUID(),
    "X-GitHub-Event": input.event ?? "push",
  }),
);
