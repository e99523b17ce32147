//! Webhook presets (issue #15) through a real Envoy: Stripe, GitHub, Slack and Standard
//! Webhooks deliveries, each signed by the provider's own package.

use serde_json::json;

use crate::harness::{fresh_nonce, now};
use crate::schemes::{
    self, assert_passed, assert_passes_once, assert_post_passes, assert_refused, detail, Headers,
    GITHUB_SECRET, SLACK_SECRET, STRIPE_SECRET_NEW, STRIPE_SECRET_OLD, SWH_SECRET,
};

/// A Stripe event: JSON with a non-ASCII character, signed as the UTF-8 bytes that are sent.
const STRIPE_EVENT: &str = r#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"amount":1099,"currency":"eur","description":"café"}}}"#;

fn stripe(secret: &str, timestamp: u64, body: &str) -> Headers {
    schemes::python(
        "stripe",
        &json!({"secret": secret, "timestamp": timestamp, "body": body}),
    )
}

/// `body` with its byte at `at` changed.
fn one_byte_changed(body: &str, at: usize) -> Vec<u8> {
    let mut changed = body.as_bytes().to_vec();
    changed[at] ^= 0x01;
    changed
}

#[test]
fn stripe_events_pass_under_either_secret_and_name_the_one_that_matched() {
    let envoy = schemes::start();
    let body = STRIPE_EVENT.as_bytes();
    let t = now();
    let h = stripe(STRIPE_SECRET_NEW, t, STRIPE_EVENT);
    assert_post_passes(&envoy, "/hooks/stripe", &h, body, "stripe-new");

    // Rotation: events still signed with the previous secret pass, named after it. Another
    // second: the same event at the same second is the same delivery, whichever secret signed
    // it, and is refused as a replay.
    let h = stripe(STRIPE_SECRET_OLD, t - 1, STRIPE_EVENT);
    assert_post_passes(&envoy, "/hooks/stripe", &h, body, "stripe-old");
}

#[test]
fn a_stripe_header_passes_when_any_of_its_v1_signatures_matches() {
    let envoy = schemes::start();
    let t = now();
    let wrong = stripe("whsec_some_other_account_0123456789abcd", t, STRIPE_EVENT);
    let right = stripe(STRIPE_SECRET_NEW, t, STRIPE_EVENT);
    let v1 = |h: &Headers| {
        h.get("Stripe-Signature")
            .split_once(",v1=")
            .expect("t=…,v1=…")
            .1
            .to_string()
    };
    // As Stripe sends it while an endpoint's secret is being rolled: the first v1 is not ours.
    let header = format!("t={t},v1={},v1={}", v1(&wrong), v1(&right));
    let r = envoy.request(
        "POST",
        "/hooks/stripe",
        &[("Stripe-Signature", header.as_str())],
        STRIPE_EVENT.as_bytes(),
    );
    assert_passed(&r, "stripe-new", STRIPE_EVENT.as_bytes());
}

#[test]
fn stripe_requests_without_or_with_a_garbled_header_are_refused() {
    let envoy = schemes::start();
    let body = STRIPE_EVENT.as_bytes();
    let r = envoy.request("POST", "/hooks/stripe", &[], body);
    assert_refused(&r, 401, "missing_signature");

    let h = stripe(STRIPE_SECRET_NEW, now(), STRIPE_EVENT);
    let good = h.get("Stripe-Signature");
    let v1 = good.split_once(",v1=").expect("t=…,v1=…").1;
    for garbled in [
        "garbage".to_string(),
        format!("t=yesterday,v1={v1}"),
        format!("t={},v1=not-hex", now()),
    ] {
        let r = envoy.request(
            "POST",
            "/hooks/stripe",
            &[("Stripe-Signature", garbled.as_str())],
            body,
        );
        assert_refused(&r, 400, "malformed_header");
    }
}

// ---------------------------------------------------------------------------------------------
// GitHub: X-Hub-Signature-256 over the raw body; X-GitHub-Delivery names the delivery.

const GITHUB_PUSH: &str = r#"{"ref":"refs/heads/main","repository":{"full_name":"octo-org/octo-repo"},"pusher":{"name":"monalisa"}}"#;

fn github(secret: &str, delivery: &str) -> Headers {
    schemes::github(&json!({"secret": secret, "body": GITHUB_PUSH, "delivery": delivery}))
}

#[test]
fn github_deliveries_signed_by_octokit_pass_once_per_delivery_id() {
    let envoy = schemes::start();
    let body = GITHUB_PUSH.as_bytes();
    let h = github(GITHUB_SECRET, &fresh_nonce());
    assert_passes_once(&envoy, "/hooks/github", &h, body, "gh");

    // GitHub signs the body alone: the delivery id is not covered, so the same body and
    // signature under a new id is indistinguishable from a genuine redelivery and passes. That
    // is all GitHub's format allows; the dedupe stops only a request sent again as it was.
    let again = h.with("X-GitHub-Delivery", &fresh_nonce());
    assert_post_passes(&envoy, "/hooks/github", &again, body, "gh");
}

#[test]
fn github_deliveries_without_an_id_or_a_valid_signature_are_refused() {
    let envoy = schemes::start();
    let body = GITHUB_PUSH.as_bytes();
    let post = |h: &Headers| envoy.request("POST", "/hooks/github", &h.pairs(), body);
    let h = github(GITHUB_SECRET, &fresh_nonce());

    let r = post(&h.without("X-GitHub-Delivery"));
    assert_refused(&r, 400, "missing_header");
    let d = detail(&r);
    assert!(d.to_ascii_lowercase().contains("x-github-delivery"), "{d}");

    let r = post(&h.without("X-Hub-Signature-256"));
    assert_refused(&r, 401, "missing_signature");

    let r = post(&github("another-github-secret-0123456789", &fresh_nonce()));
    assert_refused(&r, 401, "invalid_signature");
}

// ---------------------------------------------------------------------------------------------
// Slack: X-Slack-Signature over "v0:{X-Slack-Request-Timestamp}:{body}" (its tests are the
// shared ones at the end).

/// A slash command, form-encoded as Slack sends it.
const SLACK_COMMAND: &str =
    "token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&command=%2Fdeploy&text=prod&user_id=U2147483697";

fn slack(timestamp: u64, body: &str) -> Headers {
    schemes::python(
        "slack",
        &json!({"secret": SLACK_SECRET, "timestamp": timestamp, "body": body}),
    )
    .with("Content-Type", "application/x-www-form-urlencoded")
}

// ---------------------------------------------------------------------------------------------
// Standard Webhooks: webhook-signature over "{webhook-id}.{webhook-timestamp}.{body}".

const SWH_EVENT: &str =
    r#"{"type":"invoice.paid","timestamp":"2026-01-01T00:00:00Z","data":{"id":"inv_1"}}"#;

fn standard(secret: &str, id: &str, timestamp: u64, body: &str) -> Headers {
    schemes::python(
        "standard-webhooks",
        &json!({"secret": secret, "id": id, "timestamp": timestamp, "body": body}),
    )
}

fn message_id() -> String {
    format!("msg_{}", fresh_nonce())
}

#[test]
fn standard_webhooks_signed_by_the_package_pass_and_any_listed_signature_may_match() {
    let envoy = schemes::start();
    let body = SWH_EVENT.as_bytes();
    let h = standard(SWH_SECRET, &message_id(), now(), SWH_EVENT);
    assert_post_passes(&envoy, "/hooks/standard", &h, body, "swh");

    // Several signatures, space-separated, as a sender rotating its secret sends them: the
    // first is under another key, the second under ours.
    let (id, t) = (message_id(), now());
    let other = "whsec_c29tZS1vdGhlci1zdGFuZGFyZC13ZWJob29rcy1rZXk=";
    let wrong = standard(other, &id, t, SWH_EVENT);
    let right = standard(SWH_SECRET, &id, t, SWH_EVENT);
    let both = format!(
        "{} {}",
        wrong.get("webhook-signature"),
        right.get("webhook-signature")
    );
    let h = right.with("webhook-signature", &both);
    assert_post_passes(&envoy, "/hooks/standard", &h, body, "swh");
}

#[test]
fn a_standard_webhook_id_is_accepted_once() {
    let envoy = schemes::start();
    let body = SWH_EVENT.as_bytes();
    let id = message_id();
    let h = standard(SWH_SECRET, &id, now() - 5, SWH_EVENT);
    assert_passes_once(&envoy, "/hooks/standard", &h, body, "swh");
    // The id is the message's idempotency key (the spec's webhook-id): signed afresh, at
    // another time, it is still the same message.
    let resigned = standard(SWH_SECRET, &id, now(), SWH_EVENT);
    let r = envoy.request("POST", "/hooks/standard", &resigned.pairs(), body);
    assert_refused(&r, 401, "nonce_replayed");
}

// ---------------------------------------------------------------------------------------------
// What the three timestamped presets share: a tolerance, one delivery per signature, and
// refusals that record nothing.

/// A timestamped preset: where it is configured, the id of the secret it signs with, and its
/// package's signature of a body at a time.
struct Preset {
    path: &'static str,
    key_id: &'static str,
    body: &'static str,
    sign: fn(u64, &str) -> Headers,
}

const PRESETS: [Preset; 3] = [
    Preset {
        path: "/hooks/stripe",
        key_id: "stripe-new",
        body: STRIPE_EVENT,
        sign: |t, body| stripe(STRIPE_SECRET_NEW, t, body),
    },
    Preset {
        path: "/hooks/slack",
        key_id: "slack",
        body: SLACK_COMMAND,
        sign: slack,
    },
    Preset {
        path: "/hooks/standard",
        key_id: "swh",
        body: SWH_EVENT,
        sign: |t, body| standard(SWH_SECRET, &message_id(), t, body),
    },
];

#[test]
fn a_delivery_passes_once_within_the_tolerance_and_stale_or_changed_copies_are_refused() {
    let envoy = schemes::start();
    for p in &PRESETS {
        eprintln!("---- {}", p.path);
        let body = p.body.as_bytes();
        // Correctly signed ten minutes ago: outside the 300 s tolerance.
        let stale = (p.sign)(now() - 600, p.body);
        let r = envoy.request("POST", p.path, &stale.pairs(), body);
        assert_refused(&r, 401, "timestamp_out_of_window");

        // Four minutes old: inside it.
        let h = (p.sign)(now() - 240, p.body);
        let changed = one_byte_changed(p.body, p.body.len() / 2);
        let r = envoy.request("POST", p.path, &h.pairs(), &changed);
        assert_refused(&r, 401, "invalid_signature");
        // The delivery as signed passes (the refusals used nothing up), and only once.
        assert_passes_once(&envoy, p.path, &h, body, p.key_id);
    }
}

/// During a rotation Stripe signs each event with both secrets; a copy that keeps only one of
/// the two signatures is the same delivery, not a new one.
#[test]
fn a_stripe_delivery_signed_with_both_secrets_passes_once_whichever_signature_a_copy_keeps() {
    let envoy = schemes::start();
    let body = STRIPE_EVENT.as_bytes();
    let t = now();
    let new = stripe(STRIPE_SECRET_NEW, t, STRIPE_EVENT);
    let old = stripe(STRIPE_SECRET_OLD, t, STRIPE_EVENT);
    let v1 = |h: &Headers| {
        h.get("Stripe-Signature")
            .split_once(",v1=")
            .unwrap()
            .1
            .to_string()
    };
    let both = new.with(
        "Stripe-Signature",
        &format!("t={t},v1={},v1={}", v1(&new), v1(&old)),
    );
    assert_post_passes(&envoy, "/hooks/stripe", &both, body, "stripe-new");
    for copy in [&old, &new] {
        let r = envoy.request("POST", "/hooks/stripe", &copy.pairs(), body);
        assert_refused(&r, 401, "nonce_replayed");
    }
}
