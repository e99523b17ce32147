//! The presets against MACs computed from each sender's documented formula (Python's `hmac`,
//! independently of this code); tests/envoy/webhooks.rs signs with the senders' own packages.

use super::*;
use crate::checks::signature::Verifier;

const BODY: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
const STRIPE: &str = "whsec_test_0123456789abcdefghijklmnopqrstuv";
const GITHUB: &str = "github-webhook-secret-0123456789";
const SLACK: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const STANDARD: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const MSG_ID: &str = "msg_2Lh9KRb0pzN4LePd3XiA4dy";

fn env(name: &str) -> Option<String> {
    match name {
        "STRIPE" => Some(STRIPE.into()),
        "GITHUB" => Some(GITHUB.into()),
        "SLACK" => Some(SLACK.into()),
        "STANDARD" => Some(STANDARD.into()),
        "OTHER" => Some("another-secret-another-secret-0123".into()),
        "SHORT" => Some("short-secret".into()),
        _ => None,
    }
}

fn settings(preset: Preset, envs: &[&str]) -> WebhookSettings {
    let raw = RawWebhook {
        secrets: envs
            .iter()
            .enumerate()
            .map(|(i, e)| RawSecret {
                id: format!("k{i}"),
                env: e.to_string(),
                encoding: Encoding::Raw,
            })
            .collect(),
        tolerance_seconds: None,
        dedupe_seconds: None,
    };
    compile(preset, &raw, "policies[0].signature", &env).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
    RequestHeaders::from_text(pairs)
}

/// Parses and verifies: the index of the key that matched.
fn verify(s: &WebhookSettings, h: &RequestHeaders, body: &[u8]) -> Result<usize, Reject> {
    let signed = parse(s, h)?;
    let mut v = Verifier::with_prefix(&s.keyring, &signed.prefix);
    v.update(body);
    let wrong = Reject::WrongSignature {
        scheme: s.preset.describes(),
    };
    v.finish_any(b"", &signed.candidates, wrong)
        .map(|(proof, _)| proof.key_index)
}

fn wrong(preset: Preset) -> Reject {
    Reject::WrongSignature {
        scheme: preset.describes(),
    }
}

#[test]
fn stripe_matches_its_documented_formula() {
    let s = settings(Preset::Stripe, &["STRIPE"]);
    let mac = "c908f8f5c089e617fd9520cdc68cbf5533575be5784f3764e7be055c6b1f91a4";
    let h = headers(&[("stripe-signature", &format!("t=1700000000,v1={mac}"))]);
    assert_eq!(verify(&s, &h, BODY), Ok(0));
    assert_eq!(parse(&s, &h).unwrap().timestamp, Some(1_700_000_000));
    // Another signature first (a rotation on Stripe's side), and a v0 that is not checked.
    let h = headers(&[(
        "stripe-signature",
        &format!("t=1700000000,v1={},v0=abc,v1={mac}", "0".repeat(64)),
    )]);
    assert_eq!(verify(&s, &h, BODY), Ok(0));
    let h = headers(&[("stripe-signature", &format!("t=1700000001,v1={mac}"))]);
    assert_eq!(verify(&s, &h, BODY), Err(wrong(Preset::Stripe)));
    assert_eq!(
        sign(Preset::Stripe, STRIPE.as_bytes(), BODY, 1_700_000_000, "")[0].1,
        format!("t=1700000000,v1={mac}")
    );
}

#[test]
fn github_matches_its_documented_formula_and_needs_a_delivery_id() {
    let s = settings(Preset::Github, &["GITHUB"]);
    let mac = "0931c7d73805bd4ec48c61bab4643b554c6fc3bb4666d22f0b06e963e911e63b";
    let sig = format!("sha256={mac}");
    let h = headers(&[
        ("x-hub-signature-256", &sig),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ]);
    assert_eq!(verify(&s, &h, BODY), Ok(0));
    let signed = parse(&s, &h).unwrap();
    assert_eq!(signed.timestamp, None);
    let (id, until) = s.replay_claim("hooks", &signed, &[0; 32], 1_000);
    assert_eq!(id, "github:hooks:72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(until, 1_000 + 3600);
    let h = headers(&[("x-hub-signature-256", &sig)]);
    assert_eq!(
        parse(&s, &h),
        Err(Reject::MissingHeader {
            header: "X-GitHub-Delivery".into()
        })
    );
    let h = headers(&[("x-hub-signature-256", mac), ("x-github-delivery", "1")]);
    assert!(matches!(
        parse(&s, &h),
        Err(Reject::MalformedHeader {
            header: "X-Hub-Signature-256",
            ..
        })
    ));
}

#[test]
fn slack_matches_its_documented_formula() {
    let s = settings(Preset::Slack, &["SLACK"]);
    let mac = "113d0ad1213849ac6ca740d444007f661b28e56772997c714e30e2e2ba5b6e22";
    let sig = format!("v0={mac}");
    let h = headers(&[
        ("x-slack-signature", &sig),
        ("x-slack-request-timestamp", "1700000000"),
    ]);
    assert_eq!(verify(&s, &h, BODY), Ok(0));
    let h = headers(&[("x-slack-signature", &sig)]);
    assert_eq!(
        parse(&s, &h),
        Err(Reject::NoSignature {
            header: "X-Slack-Request-Timestamp",
            scheme: Preset::Slack.describes()
        })
    );
    let h = headers(&[
        ("x-slack-signature", &sig),
        ("x-slack-request-timestamp", "1700000000"),
    ]);
    assert_eq!(verify(&s, &h, b"{}"), Err(wrong(Preset::Slack)));
}

#[test]
fn standard_webhooks_decodes_its_key_and_takes_several_signatures() {
    let s = settings(Preset::StandardWebhooks, &["STANDARD"]);
    assert_eq!(s.keys[0].secret.expose(), (0u8..32).collect::<Vec<_>>());
    let mac = "yyTLHjP6ufdPwaWZ+LwCjf9U523Bed1ilJodAkZEYf0=";
    let sig = format!("v1a,AAAA v1,{} v1,{mac}", "A".repeat(43) + "=");
    let h = headers(&[
        ("webhook-id", MSG_ID),
        ("webhook-timestamp", "1700000000"),
        ("webhook-signature", &sig),
    ]);
    assert_eq!(verify(&s, &h, BODY), Ok(0));
    let signed = parse(&s, &h).unwrap();
    assert_eq!(signed.candidates.len(), 2);
    let (id, until) = s.replay_claim("hooks", &signed, &[0; 32], 1_700_000_100);
    assert_eq!(id, format!("standard-webhooks:hooks:{MSG_ID}"));
    assert_eq!(until, 1_700_000_300);
    let signed_headers = sign(
        Preset::StandardWebhooks,
        STANDARD.as_bytes(),
        BODY,
        1_700_000_000,
        MSG_ID,
    );
    assert_eq!(signed_headers[2].1, format!("v1,{mac}"));
    // A dot in the id could move the timestamp: refused.
    let h = headers(&[
        ("webhook-id", "msg.1"),
        ("webhook-timestamp", "1700000000"),
        ("webhook-signature", &sig),
    ]);
    assert!(parse(&s, &h).is_err());
}

#[test]
fn rotation_reports_the_key_that_matched() {
    let s = settings(Preset::Stripe, &["OTHER", "STRIPE"]);
    let mac = "c908f8f5c089e617fd9520cdc68cbf5533575be5784f3764e7be055c6b1f91a4";
    let h = headers(&[("stripe-signature", &format!("t=1700000000,v1={mac}"))]);
    assert_eq!(verify(&s, &h, BODY), Ok(1));
}

#[test]
fn body_chunks_verify_like_the_whole_body() {
    let s = settings(Preset::Slack, &["SLACK"]);
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let h = headers(
        &sign(Preset::Slack, SLACK.as_bytes(), &body, 1_700_000_000, "")
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    let signed = parse(&s, &h).unwrap();
    let mut v = Verifier::with_prefix(&s.keyring, &signed.prefix);
    for chunk in body.chunks(13) {
        v.update(chunk);
    }
    assert_eq!(v.body_len(), 5000);
    assert!(v
        .finish_any(b"", &signed.candidates, wrong(Preset::Slack))
        .is_ok());
}

#[test]
fn stripe_and_slack_replays_are_keyed_on_the_mac_that_matched() {
    let s = settings(Preset::Stripe, &["STRIPE"]);
    let mac = "c908f8f5c089e617fd9520cdc68cbf5533575be5784f3764e7be055c6b1f91a4";
    // A junk v1 added to a captured header changes the header, not the claim.
    let plain = headers(&[("stripe-signature", &format!("t=1700000000,v1={mac}"))]);
    let padded = headers(&[(
        "stripe-signature",
        &format!("t=1700000000,v1={},v1={mac}", "1".repeat(64)),
    )]);
    let claim = |h: &RequestHeaders| {
        let signed = parse(&s, h).unwrap();
        let mut v = Verifier::with_prefix(&s.keyring, &signed.prefix);
        v.update(BODY);
        let (_, matched) = v
            .finish_any(b"", &signed.candidates, wrong(Preset::Stripe))
            .unwrap();
        s.replay_claim("p", &signed, &matched, 1_700_000_000)
    };
    assert_eq!(claim(&plain), claim(&padded));
    assert_eq!(claim(&plain).1, 1_700_000_300);
}

#[test]
fn malformed_headers_are_refused_before_the_body() {
    let s = settings(Preset::Stripe, &["STRIPE"]);
    let hex = "a".repeat(64);
    for bad in [
        "".to_string(),
        "garbage".to_string(),
        format!("v1={hex}"),
        "t=1700000000".to_string(),
        format!("t=1700000000,t=1700000001,v1={hex}"),
        format!("t=17e8,v1={hex}"),
        "t=1700000000,v1=zz".to_string(),
        format!("t=1700000000{}", format!(",v1={hex}").repeat(9)),
    ] {
        let h = headers(&[("stripe-signature", &bad)]);
        let got = parse(&s, &h);
        assert!(
            matches!(
                got,
                Err(Reject::MalformedHeader { .. } | Reject::NoSignature { .. })
            ),
            "{bad}: {got:?}"
        );
    }
    let h = headers(&[
        ("stripe-signature", &format!("t=1,v1={hex}")),
        ("stripe-signature", &format!("t=1,v1={hex}")),
    ]);
    assert_eq!(
        parse(&s, &h),
        Err(Reject::DuplicatedHeader {
            header: "Stripe-Signature"
        })
    );
}

#[test]
fn settings_errors_name_the_field() {
    let raw = |env: &str, tolerance, dedupe| RawWebhook {
        secrets: vec![RawSecret {
            id: "k".into(),
            env: env.into(),
            encoding: Encoding::Raw,
        }],
        tolerance_seconds: tolerance,
        dedupe_seconds: dedupe,
    };
    let at = "policies[1].signature";
    let cases = [
        (
            Preset::Stripe,
            raw("SHORT", None, None),
            "policies[1].signature.secrets[0].env",
        ),
        (
            Preset::Stripe,
            raw("STRIPE", Some(0), None),
            "policies[1].signature.tolerance_seconds",
        ),
        (
            Preset::Slack,
            raw("SLACK", None, Some(60)),
            "policies[1].signature.dedupe_seconds",
        ),
        (
            Preset::Github,
            raw("GITHUB", Some(60), None),
            "policies[1].signature.tolerance_seconds",
        ),
        (
            Preset::StandardWebhooks,
            raw("GITHUB", None, None),
            "policies[1].signature.secrets[0].env",
        ),
        (
            Preset::Github,
            raw("MISSING", None, None),
            "policies[1].signature.secrets[0].env",
        ),
    ];
    for (preset, raw, field) in cases {
        let e = compile(preset, &raw, at, &env).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let none = RawWebhook {
        secrets: Vec::new(),
        tolerance_seconds: None,
        dedupe_seconds: None,
    };
    assert_eq!(
        compile(Preset::Github, &none, at, &env).unwrap_err().field,
        "policies[1].signature.secrets"
    );
}

#[test]
fn a_delivery_signed_with_both_secrets_claims_the_same_whichever_signature_is_kept() {
    // Rotation: the sender signs with the new and the old secret, and edge-warden has both.
    let s = settings(Preset::Stripe, &["OTHER", "STRIPE"]);
    let both = {
        let mut v = sign(
            Preset::Stripe,
            b"another-secret-another-secret-0123",
            BODY,
            1_700_000_000,
            "",
        );
        let old = sign(Preset::Stripe, STRIPE.as_bytes(), BODY, 1_700_000_000, "");
        let old_mac = old[0].1.split("v1=").nth(1).unwrap().to_string();
        v[0].1 = format!("{},v1={old_mac}", v[0].1);
        v
    };
    let claim = |value: &str| {
        let h = headers(&[("stripe-signature", value)]);
        let signed = parse(&s, &h).unwrap();
        let mut v = Verifier::with_prefix(&s.keyring, &signed.prefix);
        v.update(BODY);
        let (proof, fingerprint) = v
            .finish_any(b"", &signed.candidates, wrong(Preset::Stripe))
            .unwrap();
        (
            proof.key_index,
            s.replay_claim("p", &signed, &fingerprint, 0).0,
        )
    };
    let full = &both[0].1;
    let (t, rest) = full.split_once(",v1=").unwrap();
    let (first, second) = rest.split_once(",v1=").unwrap();
    let (key_a, claim_a) = claim(&format!("{t},v1={first}"));
    let (key_b, claim_b) = claim(&format!("{t},v1={second}"));
    assert_eq!((key_a, key_b), (0, 1));
    assert_eq!(
        claim_a, claim_b,
        "a copy keeping either signature is the same delivery"
    );
    assert_eq!(claim(full).1, claim_a);
}
