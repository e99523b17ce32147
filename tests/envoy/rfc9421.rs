//! RFC 9421 HTTP Message Signatures and RFC 9530 Content-Digest (issue #15) through a real
//! Envoy: the RFC's own example request, then requests signed by an independent
//! implementation (PyPI `http-message-signatures`).

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};

use crate::harness::{fresh_nonce, now, Envoy};
use crate::schemes::{
    self, assert_passed, assert_passes_once, assert_refused, detail, Headers, RFC_SECRET_B64,
};

/// RFC 9421 Appendix B.2's `test-request` body (and RFC 9530's example).
const RFC_BODY: &str = r#"{"hello": "world"}"#;

/// The `test-request` of RFC 9421 Appendix B.2 with the Appendix B.2.5 signature
/// (hmac-sha256 over `date`, `@authority` and `content-type` under `test-shared-secret`).
/// `Host` is sent as the RFC has it, so Envoy's `:authority` is `example.com`; the route
/// accepts any host (`domains: ["*"]`).
const B25_REQUEST: [(&str, &str); 7] = [
    ("Host", "example.com"),
    ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("Content-Type", "application/json"),
    (
        "Content-Digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    ),
    ("Content-Length", "18"),
    (
        "Signature-Input",
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
    ),
    (
        "Signature",
        "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    ),
];

const B25_TARGET: &str = "/foo?param=Value&Pet=dog";

#[test]
fn the_rfc_9421_b25_example_request_reaches_the_upstream() {
    let envoy = schemes::start();
    let r = envoy.request("POST", B25_TARGET, &B25_REQUEST, RFC_BODY.as_bytes());
    assert_passed(&r, "test-shared-secret", RFC_BODY.as_bytes());
    let echo = r.json();
    // What the signature covered is what Envoy saw: the RFC's authority and target.
    assert_eq!(echo["headers"]["host"], "example.com", "{echo}");
    assert_eq!(echo["path"], B25_TARGET, "{echo}");
}

#[test]
fn the_b25_example_with_a_covered_component_changed_is_refused() {
    let envoy = schemes::start();
    for (name, changed) in [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Date", "Tue, 20 Apr 2021 02:07:56 GMT"),
        ("Host", "example.org"),
    ] {
        eprintln!("---- {name}: {changed}");
        let headers: Vec<(&str, &str)> = B25_REQUEST
            .iter()
            .map(|&(n, v)| if n == name { (n, changed) } else { (n, v) })
            .collect();
        let r = envoy.request("POST", B25_TARGET, &headers, RFC_BODY.as_bytes());
        assert_refused(&r, 401, "invalid_signature");
    }
}

// ---------------------------------------------------------------------------------------------
// Round trip: `http-message-signatures` signs, the `rfc` policy verifies.

const ORDER: &str = r#"{"order": 1042, "items": [{"sku": "A-1", "quantity": 2}]}"#;
const REQUIRED: [&str; 4] = ["@method", "@authority", "@path", "content-digest"];

/// The headers `http-message-signatures` adds to a POST of `body` to `/rfc/orders` on this
/// Envoy (so `@authority` is `127.0.0.1:PORT`, the Host the test client sends), covering
/// `components`, with a fresh nonce.
fn rfc_signed(envoy: &Envoy, body: &str, components: &[&str], created: u64) -> Headers {
    rfc_signed_as(envoy, body, components, created, None)
}

/// [`rfc_signed`] under `label` (the package's own, `pyhms`, when `None`).
fn rfc_signed_as(
    envoy: &Envoy,
    body: &str,
    components: &[&str],
    created: u64,
    label: Option<&str>,
) -> Headers {
    schemes::python(
        "rfc9421",
        &json!({
            "label": label,
            "url": format!("http://127.0.0.1:{}/rfc/orders", envoy.port),
            "method": "POST",
            "body": body,
            "headers": {"Content-Type": "application/json"},
            "key_id": "test-shared-secret",
            "secret_b64": RFC_SECRET_B64,
            "components": components,
            "created": created,
            "nonce": fresh_nonce(),
        }),
    )
}

#[test]
fn requests_signed_by_http_message_signatures_pass_once_and_not_with_another_body() {
    let envoy = schemes::start();
    let h = rfc_signed(&envoy, ORDER, &REQUIRED, now());
    // The signed Content-Digest no longer matches the body.
    let changed = ORDER.replace("1042", "9042");
    let r = envoy.request("POST", "/rfc/orders", &h.pairs(), changed.as_bytes());
    assert_refused(&r, 400, "content_digest_mismatch");
    // The refusal used nothing up: the request as signed passes, once.
    let body = ORDER.as_bytes();
    assert_passes_once(&envoy, "/rfc/orders", &h, body, "test-shared-secret");
}

#[test]
fn a_signature_that_leaves_out_required_components_is_refused_naming_them() {
    let envoy = schemes::start();
    // A valid signature over `@method @path` only; the request still carries a correct
    // (uncovered) Content-Digest, so coverage is the one thing wrong.
    let h = rfc_signed(&envoy, ORDER, &["@method", "@path"], now());
    assert!(h.get("Signature-Input").contains(r#"("@method" "@path")"#));
    let r = envoy.request("POST", "/rfc/orders", &h.pairs(), ORDER.as_bytes());
    assert_refused(&r, 401, "missing_signed_components");
    let d = detail(&r);
    assert!(
        d.contains("@authority") && d.contains("content-digest"),
        "{d}"
    );
}

#[test]
fn old_or_absent_signatures_are_refused() {
    let envoy = schemes::start();
    let old = rfc_signed(&envoy, ORDER, &REQUIRED, now() - 600);
    let r = envoy.request("POST", "/rfc/orders", &old.pairs(), ORDER.as_bytes());
    assert_refused(&r, 401, "timestamp_out_of_window");

    let h = rfc_signed(&envoy, ORDER, &REQUIRED, now());
    let bare = h.without("Signature").without("Signature-Input");
    let r = envoy.request("POST", "/rfc/orders", &bare.pairs(), ORDER.as_bytes());
    assert_refused(&r, 401, "missing_signature");
}

// ---------------------------------------------------------------------------------------------
// RFC 9530 Content-Digest alone (`"content_digest": true`, no signature).

fn digest_header(algorithm: &str, digest: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("{algorithm}=:{b64}:")
}

#[test]
fn a_content_digest_matching_the_body_passes_in_sha_256_or_sha_512() {
    let envoy = schemes::start();
    let text = RFC_BODY.as_bytes().to_vec();
    // Bytes that are not text, over more than one read.
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let cases = [
        // RFC 9530 section 2's sha-256 example and RFC 9421 B.2's sha-512, as printed there.
        (
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:".to_string(),
            &text,
        ),
        (
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:".to_string(),
            &text,
        ),
        (digest_header("sha-256", &Sha256::digest(&binary)), &binary),
        (digest_header("sha-512", &Sha512::digest(&binary)), &binary),
    ];
    for (header, body) in cases {
        let r = envoy.request("POST", "/digest", &[("Content-Digest", &header)], body);
        assert_eq!(
            r.status,
            200,
            "{header}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.json()["body_sha256"],
            hex::encode(Sha256::digest(body)),
            "{header}"
        );
    }
}

#[test]
fn a_wrong_or_absent_content_digest_is_refused() {
    let envoy = schemes::start();
    let wrong = digest_header("sha-256", &Sha256::digest(br#"{"hello": "World"}"#));
    let r = envoy.request(
        "POST",
        "/digest",
        &[("Content-Digest", &wrong)],
        RFC_BODY.as_bytes(),
    );
    assert_refused(&r, 400, "content_digest_mismatch");
    let r = envoy.request("POST", "/digest", &[], RFC_BODY.as_bytes());
    assert_refused(&r, 400, "missing_header");
}

/// At most one signature by a key of this service: only the one used is claimed, so with two
/// (two nonces) a copy without it would pass on the other. A wrong MAC behind another label's
/// early refusal is what is answered (it counts toward the lockout), and parameters RFC 9421
/// does not register are refused.
#[test]
fn one_signature_per_key_of_ours_and_a_wrong_one_is_never_hidden_behind_another() {
    let envoy = schemes::start();
    let body = ORDER.as_bytes();
    let a = rfc_signed_as(&envoy, ORDER, &REQUIRED, now(), Some("a"));
    let b = rfc_signed_as(&envoy, ORDER, &REQUIRED, now(), Some("b"));
    let both = b
        .with(
            "Signature-Input",
            &format!("{}, {}", a.get("Signature-Input"), b.get("Signature-Input")),
        )
        .with(
            "Signature",
            &format!("{}, {}", a.get("Signature"), b.get("Signature")),
        );
    let r = envoy.request("POST", "/rfc/orders", &both.pairs(), body);
    assert_refused(&r, 400, "malformed_header");

    // Someone else's signature that fails early, then ours with a's MAC under label b.
    let a_mac = a.get("Signature").trim_start_matches("a=");
    let hidden = b
        .with(
            "Signature-Input",
            &format!(
                r#"x=("@method");keyid="proxy", {}"#,
                b.get("Signature-Input")
            ),
        )
        .with("Signature", &format!("x=:AAAA:, b={a_mac}"));
    let r = envoy.request("POST", "/rfc/orders", &hidden.pairs(), body);
    assert_refused(&r, 401, "invalid_signature");

    let extended = b.with(
        "Signature-Input",
        &format!("{};x-extension=?1", b.get("Signature-Input")),
    );
    let r = envoy.request("POST", "/rfc/orders", &extended.pairs(), body);
    assert_refused(&r, 401, "signature_not_accepted");

    // None of that spent anything: each signature alone passes once.
    assert_passes_once(&envoy, "/rfc/orders", &a, body, "test-shared-secret");
    assert_passes_once(&envoy, "/rfc/orders", &b, body, "test-shared-secret");
}
