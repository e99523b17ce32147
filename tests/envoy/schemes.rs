//! The signature schemes of issue #15 (webhook presets, RFC 9421, RFC 9530): one plugin
//! configuration with a policy per scheme, its secrets in Envoy's environment, and the
//! providers' own packages to sign with (tests/signers/sign.py, tests/node/github-sign.mjs).
//! Nothing here computes a signature: a test passes only if edge-warden agrees with the
//! provider's package.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{repo, Envoy, Options, Resp};

/// Stripe's secrets are the whole `whsec_…` string, used as the HMAC key as it is.
pub const STRIPE_SECRET_NEW: &str = "whsec_test_new_0123456789abcdefghijklmn";
pub const STRIPE_SECRET_OLD: &str = "whsec_test_old_0123456789abcdefghijklmn";
pub const GITHUB_SECRET: &str = "github-webhook-secret-0123456789";
pub const SLACK_SECRET: &str = "slack-signing-secret-0123456789ab";
/// `whsec_` and base64: the key is the 32 decoded bytes (`standard-webhooks-key-0123456789`).
pub const SWH_SECRET: &str = "whsec_c3RhbmRhcmQtd2ViaG9va3Mta2V5LTAxMjM0NTY3ODk=";
/// RFC 9421 Appendix B.1.5 `test-shared-secret`: 64 bytes, base64 as the RFC prints it, and
/// so given to Envoy (`"encoding": "base64"`).
pub const RFC_SECRET_B64: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

/// One policy per scheme. `rfc-b25` is RFC 9421 Appendix B.2.5's signature as the RFC made it:
/// no nonce, and a window that reaches back to its `created` (2021).
pub const CONFIG: &str = r#"{
  "signature": {"secrets": [{"id": "test-shared-secret", "env": "RFC_SECRET", "encoding": "base64"}]},
  "policies": [
    {"name": "stripe", "match": {"path": "/hooks/stripe"}, "signature": {"scheme": "stripe",
      "secrets": [{"id": "stripe-new", "env": "STRIPE_SECRET_NEW"}, {"id": "stripe-old", "env": "STRIPE_SECRET_OLD"}],
      "tolerance_seconds": 300}},
    {"name": "github", "match": {"path": "/hooks/github"}, "signature": {"scheme": "github",
      "secrets": [{"id": "gh", "env": "GITHUB_SECRET"}], "dedupe_seconds": 3600}},
    {"name": "slack", "match": {"path": "/hooks/slack"}, "signature": {"scheme": "slack",
      "secrets": [{"id": "slack", "env": "SLACK_SECRET"}], "tolerance_seconds": 300}},
    {"name": "swh", "match": {"path": "/hooks/standard"}, "signature": {"scheme": "standard_webhooks",
      "secrets": [{"id": "swh", "env": "SWH_SECRET"}], "tolerance_seconds": 300}},
    {"name": "rfc", "match": {"path_prefix": "/rfc/"}, "signature": {"scheme": "rfc9421",
      "components": ["@method", "@authority", "@path", "content-digest"], "label": null, "tag": null,
      "require_nonce": true, "window_seconds": 300}},
    {"name": "rfc-b25", "match": {"path": "/foo"}, "signature": {"scheme": "rfc9421",
      "components": ["date", "@authority", "content-type"], "require_nonce": false,
      "window_seconds": 315360000}},
    {"name": "digest-only", "match": {"path": "/digest"}, "signature": false, "content_digest": true}
  ]
}"#;

/// Envoy with [`CONFIG`], each secret in its environment and readable by the VM.
pub fn start() -> Envoy {
    let mut opts = Options::with_config(CONFIG);
    for (name, value) in [
        ("RFC_SECRET", RFC_SECRET_B64),
        ("STRIPE_SECRET_NEW", STRIPE_SECRET_NEW),
        ("STRIPE_SECRET_OLD", STRIPE_SECRET_OLD),
        ("GITHUB_SECRET", GITHUB_SECRET),
        ("SLACK_SECRET", SLACK_SECRET),
        ("SWH_SECRET", SWH_SECRET),
    ] {
        opts.env.push((name.into(), value.into()));
        opts.host_env_keys.push(name.into());
    }
    Envoy::start(opts)
}

/// The headers a signer printed (in name order: a JSON object's order is not kept).
#[derive(Clone, Debug)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// The value of `name` (any case); the signer must have printed it.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the signer printed no {name}: {:?}", self.0))
    }

    /// These headers with `name` set to `value` (replaced if present, else added).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut out = self.without(name);
        out.0.push((name.to_string(), value.to_string()));
        out
    }

    pub fn without(&self, name: &str) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
                .cloned()
                .collect(),
        )
    }
}

/// `.venv/bin/python tests/signers/sign.py SCHEME` with `input` on standard input.
pub fn python(scheme: &str, input: &Value) -> Headers {
    let mut cmd = Command::new(repo().join(".venv/bin/python"));
    cmd.arg(repo().join("tests/signers/sign.py")).arg(scheme);
    run(cmd, input, "make signer-deps")
}

/// `node tests/node/github-sign.mjs` (@octokit/webhooks-methods) with `input` on standard input.
pub fn github(input: &Value) -> Headers {
    let mut cmd = Command::new("node");
    cmd.arg("github-sign.mjs")
        .current_dir(repo().join("tests/node"));
    run(cmd, input, "make node-deps")
}

/// Runs a signer, failing with its standard error and the make target that installs what it
/// needs when it does not print a JSON object of headers.
fn run(mut cmd: Command, input: &Value, install: &str) -> Headers {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} did not start ({e}): run `{install}`"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("signer input");
    let out = child.wait_with_output().expect("signer output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}); if a package is missing, `{install}` installs it:\n{stderr}",
        out.status
    );
    let printed: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| {
            panic!(
                "{what} printed no JSON object ({e}):\n{}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    Headers(
        printed
            .into_iter()
            .map(|(n, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: header {n} is not a string: {v}"));
                (n, v.to_string())
            })
            .collect(),
    )
}

/// The request reached the upstream with `body` intact, named as signed with `key_id`.
pub fn assert_passed(r: &Resp, key_id: &str, body: &[u8]) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echo = r.json();
    assert_eq!(echo["headers"]["x-edge-warden-key-id"], key_id, "{echo}");
    assert_eq!(echo["body_length"], body.len(), "{echo}");
    assert_eq!(
        echo["body_sha256"],
        hex::encode(Sha256::digest(body)),
        "{echo}"
    );
}

/// `headers` and `body` POSTed to `path` pass, as [`assert_passed`].
pub fn assert_post_passes(envoy: &Envoy, path: &str, headers: &Headers, body: &[u8], key_id: &str) {
    let r = envoy.request("POST", path, &headers.pairs(), body);
    assert_passed(&r, key_id, body);
}

/// [`assert_post_passes`], and the same request sent again is refused as a replay.
pub fn assert_passes_once(envoy: &Envoy, path: &str, headers: &Headers, body: &[u8], key_id: &str) {
    assert_post_passes(envoy, path, headers, body, key_id);
    let r = envoy.request("POST", path, &headers.pairs(), body);
    assert_refused(&r, 401, "nonce_replayed");
}

/// The problem+json rejection's status and code.
pub fn assert_refused(r: &Resp, status: u16, code: &str) {
    assert_eq!((r.status, r.code()), (status, code.to_string()));
}

/// The `detail` of a problem+json rejection.
pub fn detail(r: &Resp) -> String {
    r.json()["detail"].as_str().unwrap_or_default().to_string()
}
