"""Scenario 5 of `make bench`: the approach of the reference services, as ASGI middleware.

The same checks edge-warden makes by default, done the way the Python services did them:
HMAC-SHA256 over body + timestamp + nonce with an in-memory nonce cache, CORS for one origin,
and security headers on the response, in front of a trivial handler. `app` is the handler
alone; `protected` is the handler behind the middleware. Run with uvicorn, one worker.
"""
import hashlib
import hmac
import json
import os
import time

SECRET = os.environ.get("BENCH_SECRET", "").encode()
ORIGIN = os.environ.get("BENCH_ORIGIN", "https://app.example.com")
WINDOW = 300
SECURITY_HEADERS = [
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), geolocation=(), microphone=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-xss-protection", b"0"),
]


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope, receive, send):
    """The trivial handler: read the body, answer a small JSON document."""
    body = await read_body(receive)
    payload = json.dumps({"ok": True, "body_length": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def reject(status, code):
    body = json.dumps({"status": status, "code": code}).encode()

    async def respond(send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/problem+json")] + SECURITY_HEADERS})
        await send({"type": "http.response.body", "body": body})
    return respond


class SecurityMiddleware:
    def __init__(self, inner):
        self.inner = inner
        self.nonces = {}  # nonce -> expiry; purged as it grows, like the reference's dict

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is not None and origin.decode() != ORIGIN:
            return await reject(403, "origin_not_allowed")(send)
        sig = headers.get(b"x-request-signature", b"").decode()
        ts = headers.get(b"x-request-timestamp", b"").decode()
        nonce = headers.get(b"x-request-nonce", b"").decode()
        if not (sig and ts and nonce) or not ts.isdigit():
            return await reject(401, "missing_signature")(send)
        now = time.time()
        if abs(int(ts) - now) > WINDOW:
            return await reject(401, "timestamp_out_of_window")(send)
        body = await read_body(receive)
        expected = hmac.new(SECRET, body + ts.encode() + nonce.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            return await reject(401, "invalid_signature")(send)
        if self.nonces.get(nonce, 0) > now:
            return await reject(401, "nonce_replayed")(send)
        if len(self.nonces) > 100_000:
            self.nonces = {n: e for n, e in self.nonces.items() if e > now}
        self.nonces[nonce] = int(ts) + WINDOW

        replayed = False

        async def replay_body():
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if origin is not None:
                    extra += [(b"access-control-allow-origin", origin),
                              (b"access-control-allow-credentials", b"true"),
                              (b"vary", b"Origin")]
                message = dict(message, headers=list(message["headers"]) + extra)
            await send(message)

        await self.inner(scope, replay_body, send_with_headers)


protected = SecurityMiddleware(app)
