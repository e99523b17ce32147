"""Signs a request the way each provider's own package does, for edge-warden's Envoy tests.

Usage: .venv/bin/python tests/signers/sign.py SCHEME < input.json
SCHEME is one of stripe, slack, standard-webhooks, rfc9421. The input is a JSON object (the
fields each scheme reads are listed on its function below); the body is `body` (text) or
`body_b64` (bytes, base64). Prints the headers to send as one JSON object, name to value.
The packages come from `make signer-deps`; a missing one exits 3 naming that target.

Only the packages compute signatures here: this script turns JSON into their arguments and
their results into headers, so a test passes only if edge-warden agrees with the provider.
"""

import base64
import datetime
import json
import sys

INSTALL = "make signer-deps"


def need(module, package):
    """Imports `module`, or exits 3 saying which package to install and how."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        print(
            f"sign.py: the Python package `{package}` is not installed in .venv ({e}); "
            f"run `{INSTALL}`",
            file=sys.stderr,
        )
        sys.exit(3)


def body_bytes(spec):
    if "body_b64" in spec:
        return base64.b64decode(spec["body_b64"])
    return spec.get("body", "").encode()


def body_text(spec):
    """Stripe's and Standard Webhooks' packages sign text: the body must be UTF-8."""
    return body_bytes(spec).decode("utf-8")


def utc(seconds):
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.timezone.utc)


def stripe(spec):
    """secret (the whole whsec_… string), timestamp (Unix seconds), body.

    stripe.WebhookSignature.generate_signature_header, the helper the stripe package documents
    for signing payloads in tests: `t={timestamp},v1={hex HMAC-SHA256 of "{t}.{body}"}`.
    """
    lib = need("stripe", "stripe")
    header = lib.WebhookSignature.generate_signature_header(
        body_text(spec), spec["secret"], timestamp=int(spec["timestamp"])
    )
    return {"Stripe-Signature": header}


def slack(spec):
    """secret, timestamp (Unix seconds), body.

    slack_sdk.signature.SignatureVerifier(secret).generate_signature: `v0={hex HMAC-SHA256 of
    "v0:{timestamp}:{body}"}`.
    """
    lib = need("slack_sdk.signature", "slack-sdk")
    timestamp = str(int(spec["timestamp"]))
    verifier = lib.SignatureVerifier(signing_secret=spec["secret"])
    signature = verifier.generate_signature(timestamp=timestamp, body=body_bytes(spec))
    return {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": timestamp}


def standard_webhooks(spec):
    """secret (`whsec_` + base64), id (webhook-id), timestamp (Unix seconds), body.

    standardwebhooks.Webhook(secret).sign(msg_id, timestamp, data): `v1,{base64 HMAC-SHA256 of
    "{id}.{timestamp}.{body}"}` under the base64-decoded secret.
    """
    lib = need("standardwebhooks", "standardwebhooks")
    timestamp = int(spec["timestamp"])
    signature = lib.Webhook(spec["secret"]).sign(
        msg_id=spec["id"], timestamp=utc(timestamp), data=body_text(spec)
    )
    return {
        "webhook-id": spec["id"],
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def rfc9421(spec):
    """url, method, body, key_id, secret_b64 (the HMAC key, base64), components (list),
    created (Unix seconds), optional nonce, label, headers (sent too, and signable).

    http_message_signatures.HTTPMessageSigner with algorithms.HMAC_SHA256 signs a requests
    PreparedRequest for `url`. When `content-digest` is among the components the package makes
    the Content-Digest header itself (sign(body=...), sha-256) and covers it; otherwise the
    package's ContentDigest adds the same header uncovered, so the request still carries one.
    Content-Length is left out of the output: the client that sends the body sets it.
    """
    hms = need("http_message_signatures", "http-message-signatures")
    requests = need("requests", "requests")
    from http_message_signatures import algorithms
    from http_message_signatures.digests import ContentDigest

    class Keys(hms.HTTPSignatureKeyResolver):
        def __init__(self, key_id, key):
            self.keys = {key_id: key}

        def resolve_public_key(self, key_id):
            return self.keys.get(key_id)

        def resolve_private_key(self, key_id):
            return self.keys[key_id]

    body = body_bytes(spec)
    request = requests.Request(
        spec.get("method", "POST"), spec["url"], data=body, headers=spec.get("headers", {})
    ).prepare()
    components = spec["components"]
    covers_digest = "content-digest" in components
    if not covers_digest:
        ContentDigest.add(request.headers, body)
    signer = hms.HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=Keys(spec["key_id"], base64.b64decode(spec["secret_b64"])),
    )
    signer.sign(
        request,
        key_id=spec["key_id"],
        created=utc(spec["created"]),
        nonce=spec.get("nonce"),
        label=spec.get("label"),
        covered_component_ids=components,
        body=body if covers_digest else None,
        # The uncovered digest added above stays as it is.
        use_existing_digest=not covers_digest,
    )
    return {k: v for k, v in request.headers.items() if k.lower() != "content-length"}


SCHEMES = {
    "stripe": stripe,
    "slack": slack,
    "standard-webhooks": standard_webhooks,
    "rfc9421": rfc9421,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in SCHEMES:
        print(f"usage: sign.py {{{','.join(SCHEMES)}}} < input.json", file=sys.stderr)
        sys.exit(2)
    spec = json.load(sys.stdin)
    json.dump(SCHEMES[sys.argv[1]](spec), sys.stdout)
    print()


if __name__ == "__main__":
    main()
