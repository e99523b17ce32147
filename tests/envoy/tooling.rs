//! The user's tooling: `warden`, and the README's signing snippets, run against a real Envoy.

use std::path::Path;
use std::process::{Command, Output};

use edge_warden::checks::digest;
use edge_warden::checks::rfc9421::{self, Message, RawRfc9421, Rfc9421Settings};
use edge_warden::checks::signature::SigningKey;
use edge_warden::engine::body::BodyInspector;
use edge_warden::headers::RequestHeaders;
use edge_warden::secret::Secret;

use crate::harness::{
    certs, default_plugin_config, repo, runtime, Envoy, Options, Runtime, Signed, SECRET,
};

/// The code block that follows `<!-- snippet: NAME -->` in README.md.
pub fn readme_snippet(name: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let marker = format!("<!-- snippet: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let block = after.split_once("```").expect("code block").1;
    let block = block.split_once('\n').expect("fence line").1;
    block
        .split_once("```")
        .expect("closing fence")
        .0
        .to_string()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A snippet's output: it exited well and printed `200 ` and the upstream's echo of `path`,
/// signed with the `primary` secret.
fn assert_reached_upstream(out: &Output, path: &str) {
    let all = text(out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("200 "), "{all}");
    assert!(
        stdout.contains(r#""x-edge-warden-key-id": "primary""#),
        "{all}"
    );
    assert!(stdout.contains(&format!(r#""path": "{path}""#)), "{all}");
}

/// The README's Python snippet `name`, run by `python` against `envoy`.
fn run_python_snippet(python: &Path, name: &str, envoy: &Envoy) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sign.py");
    std::fs::write(&file, readme_snippet(name)).unwrap();
    Command::new(python)
        .arg(&file)
        .env("HMAC_SHARED_SECRET", SECRET)
        .env(
            "EDGE_WARDEN_URL",
            format!("http://127.0.0.1:{}", envoy.port),
        )
        .output()
        .unwrap_or_else(|e| panic!("{} ({e})", python.display()))
}

#[test]
fn the_readme_python_snippet_signs_requests_that_pass() {
    let envoy = Envoy::start(Options::default());
    let out = run_python_snippet(Path::new("python3"), "sign-python", &envoy);
    assert_reached_upstream(&out, "/process-clips");
}

/// The README's RFC 9421 client (PyPI http-message-signatures, as `make signer-deps` installs
/// it) against the shipped configuration's `partners` policy, which requires method, host, path
/// and the body's digest to be covered.
#[test]
fn the_readme_rfc9421_python_snippet_signs_requests_the_shipped_config_accepts() {
    let envoy = Envoy::start(Options::default());
    // The venv's Python: `make signer-deps` installs http-message-signatures there.
    let python = repo().join(".venv/bin/python");
    let out = run_python_snippet(&python, "sign-rfc9421-python", &envoy);
    assert_reached_upstream(&out, "/partner/orders");
    let unsigned = envoy.request("POST", "/partner/orders", &[], br#"{"item": 42}"#);
    assert_eq!(unsigned.status, 401);
    assert_eq!(unsigned.code(), "missing_signature");

    // The README's CLI line, and the same signature without the body's digest covered.
    let url = format!("http://127.0.0.1:{}/partner/orders", envoy.port);
    let cli = |components: &str| {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["sign", "--scheme", "rfc9421", "--key-id", "primary", "-i"])
            .args(["--url", &url, "-d", r#"{"item": 42}"#])
            .args(["--components", components])
            .env("HMAC_SHARED_SECRET", SECRET)
            .output()
            .unwrap()
    };
    let out = cli("@method @authority @path content-digest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 200"), "{}", text(&out));
    assert!(
        stdout.contains(r#""x-edge-warden-key-id": "primary""#),
        "{}",
        text(&out)
    );
    let out = cli("@method @authority @path");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 401"), "{}", text(&out));
    assert!(
        stdout.contains("missing_signed_components"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("content-digest"), "{}", text(&out));
}

#[test]
fn the_readme_typescript_snippet_signs_requests_that_pass() {
    let envoy = Envoy::start(Options::default());
    // Inside tests/node, so `npx` finds the tsx that `make node-deps` installed there.
    let dir = tempfile::Builder::new()
        .prefix(".snippet-")
        .tempdir_in(repo().join("tests/node"))
        .unwrap();
    std::fs::write(
        dir.path().join("sign.mts"),
        readme_snippet("sign-typescript"),
    )
    .unwrap();
    // The command exactly as the README gives it.
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &readme_snippet("run-typescript")])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .env("HMAC_SHARED_SECRET", SECRET)
        .env(
            "EDGE_WARDEN_URL",
            format!("http://127.0.0.1:{}", envoy.port),
        )
        .output()
        .expect("bash (run `make node-deps` first)");
    assert_reached_upstream(&out, "/process-clips");
}

#[test]
fn the_readme_warden_commands_sign_requests_that_pass() {
    let envoy = Envoy::start(Options::default());
    let script = readme_snippet("sign-shell")
        .replace("target/release/warden", env!("CARGO_BIN_EXE_warden"))
        .replace("127.0.0.1:10000", &format!("127.0.0.1:{}", envoy.port));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("HMAC_SHARED_SECRET", SECRET)
        .output()
        .expect("bash");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // First command: the three headers; second: the upstream's echo of the signed request.
    assert!(stdout.contains("X-Request-Signature: "), "{all}");
    assert!(
        stdout.contains(r#""x-edge-warden-key-id": "primary""#),
        "{all}"
    );
    assert!(
        stdout.contains(r#""content-type": "application/json""#),
        "{all}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 200"),
        "{all}"
    );
}

#[test]
fn the_readme_idempotency_retry_is_answered_once_by_the_upstream() {
    let envoy = Envoy::start(Options::default());
    let script = readme_snippet("idempotency-retry")
        .replace(
            "edge-warden-development-secret-do-not-use-in-production",
            SECRET,
        )
        .replace("target/release/warden", env!("CARGO_BIN_EXE_warden"))
        .replace("127.0.0.1:10000", &format!("127.0.0.1:{}", envoy.port));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert_eq!(
        stdout.matches("idempotent-replayed: true").count(),
        1,
        "{all}"
    );
    let receipts: Vec<&str> = stdout.matches(r#""receipt": 1"#).collect();
    assert_eq!(receipts.len(), 2, "the same echo twice: {all}");
}

#[test]
fn warden_sign_headers_match_the_filter_and_reproduce_with_fixed_inputs() {
    let envoy = Envoy::start(Options::default());
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["sign", "-d", "hello"])
        .env("HMAC_SHARED_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let headers: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(headers.len(), 3, "{stdout}");
    assert_eq!(
        envoy.request("POST", "/api", &headers, b"hello").status,
        200
    );

    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "sign",
            "-d",
            "hello",
            "--timestamp",
            "1700000000",
            "--nonce",
            "nonce-0123456789abcdef",
        ])
        .env("HMAC_SHARED_SECRET", SECRET)
        .output()
        .unwrap();
    let expected = Signed::at(SECRET, b"hello", 1_700_000_000, "nonce-0123456789abcdef");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&expected.signature),
        "{}",
        text(&out)
    );
}

#[test]
fn warden_sign_refuses_a_missing_or_short_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["sign", "-d", "x"])
        .env_remove("HMAC_SHARED_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HMAC_SHARED_SECRET is not set"));
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["sign", "-d", "x"])
        .env("HMAC_SHARED_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("short\n"));
}

#[test]
fn warden_sign_rfc9421_headers_pass_the_filters_own_verification() {
    let body = br#"{"clip_ids": ["clip123"]}"#;
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["sign", "--scheme", "rfc9421", "--key-id", "primary"])
        .args(["--for", "https://API.example.com/process-clips?id=7"])
        .args(["-d", std::str::from_utf8(body).unwrap()])
        .args([
            "--created",
            "1700000000",
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "--components",
            "@method @authority @path @query content-digest content-type",
        ])
        .env("HMAC_SHARED_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut pairs: Vec<(String, Vec<u8>)> = stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect();
    let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["content-digest", "signature-input", "signature"],
        "{stdout}"
    );
    pairs.push(("content-type".into(), b"application/json".to_vec()));
    let headers = RequestHeaders::new(pairs);

    let settings = Rfc9421Settings::from_raw(
        &RawRfc9421 {
            components: vec!["@method".into(), "@path".into(), "content-digest".into()],
            ..RawRfc9421::default()
        },
        300,
    )
    .unwrap();
    let keys = [SigningKey {
        id: "primary".into(),
        secret: Secret::new(SECRET.as_bytes().to_vec()),
    }];
    let message = Message {
        method: "POST",
        scheme: "https",
        authority: "api.example.com",
        path: "/process-clips?id=7",
        headers: &headers,
    };
    let verified = rfc9421::verify(&settings, &keys, &message, 1_700_000_010).unwrap();
    assert!(verified.replay_id.starts_with("rfc9421:n:primary:"));
    let mut digest = digest::parse(&headers).unwrap().expect("a Content-Digest");
    digest.feed(body).unwrap();
    digest.finish().unwrap();

    // Without a key id or a URL there is nothing to sign.
    for missing in [["--for", "https://a.example/"], ["--key-id", "primary"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["sign", "--scheme", "rfc9421"])
            .args(missing)
            .env("HMAC_SHARED_SECRET", SECRET)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
}

#[test]
fn warden_check_config_accepts_the_shipped_config_and_names_bad_fields() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, default_plugin_config()).unwrap();
    let warden = env!("CARGO_BIN_EXE_warden");

    let out = Command::new(warden)
        .arg("check-config")
        .arg(&good)
        .env("HMAC_SHARED_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("ok: 3 policies (health, partners, signed)"));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "warning: policy `signed`: CORS origin wildcard `*.workers.dev` covers a public suffix"
    ));

    // Without the secret in the environment: refused, unless only the structure is checked.
    let out = Command::new(warden)
        .arg("check-config")
        .arg(&good)
        .env_remove("HMAC_SHARED_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature.secrets[0].env"));
    let out = Command::new(warden)
        .args(["check-config", "--skip-secrets"])
        .arg(&good)
        .env_remove("HMAC_SHARED_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"policies": [{"name": "a", "signature": false, "match": {"path_prefix": "api"}}]}"#,
    )
    .unwrap();
    let out = Command::new(warden)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("field `policies[0].match.path_prefix`"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_readme_configuration_example_is_valid() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split_once("## Plugin configuration reference")
        .unwrap()
        .1;
    let json = section
        .split_once("```json\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    let env = |name: &str| match name {
        "HMAC_SHARED_SECRET" | "HMAC_PREVIOUS_SECRET" => Some(SECRET.to_string()),
        _ => None,
    };
    let config = edge_warden::config::Config::from_json(json.as_bytes(), &env)
        .unwrap_or_else(|e| panic!("README example: {e}"));
    assert_eq!(config.policies.len(), 3);
}

/// `warden check-config` run from the repository root, as the README shows it.
fn check_config(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("check-config")
        .arg(file)
        .current_dir(repo())
        .env("HMAC_SHARED_SECRET", SECRET)
        .output()
        .unwrap()
}

/// envoy/envoy.yaml with `from` (which must occur exactly once) replaced, written to `dir`.
fn broken_envoy_yaml(dir: &Path, name: &str, from: &str, to: &str) -> (std::path::PathBuf, String) {
    let yaml = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    assert_eq!(yaml.matches(from).count(), 1, "envoy/envoy.yaml: `{from}`");
    let yaml = yaml.replacen(from, to, 1);
    let path = dir.join(name);
    std::fs::write(&path, &yaml).unwrap();
    (path, yaml)
}

/// The 1-based line of the only line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = (1..)
        .zip(text.lines())
        .filter(|(_, l)| l.contains(needle))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(lines.len(), 1, "`{needle}` on lines {lines:?}");
    lines[0]
}

#[test]
fn warden_check_config_reads_the_shipped_envoy_yaml_files() {
    for file in [
        "envoy/envoy.yaml",
        "envoy/envoy-tls.yaml",
        "envoy/envoy-fleet.yaml",
        "envoy/envoy-fleet-local.yaml",
    ] {
        let out = check_config(Path::new(file));
        assert!(out.status.success(), "{file}: {}", text(&out));
        // The first line of the embedded JSON, the one after `value: |`.
        let yaml = std::fs::read_to_string(repo().join(file)).unwrap();
        let block = line_of(&yaml, "value: |") + 1;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .collect::<Vec<_>>(),
            [format!(
                "{file}:{block}: ok: 3 policies (health, partners, signed), 1 signing secrets, replay cache \
                 of 7000000 nonces"
            )],
            "{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "{file}:{block}: warning: policy `signed`: CORS origin wildcard `*.workers.dev`"
            )),
            "{}",
            text(&out)
        );
    }
    // A YAML file without the filter says what it looked for.
    let out = check_config(Path::new("envoy/docker-compose.yaml"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no edge-warden plugin configuration found"),
        "{}",
        text(&out)
    );
}

#[test]
fn warden_check_config_reports_errors_at_the_envoy_yaml_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A serde error: an unknown field, found while parsing.
        (
            r#""signature": true,"#,
            r#""sigature": true,"#,
            r#""sigature""#,
            "field `policies[2].sigature`: unknown field `sigature`, expected one of `name`, `match`",
        ),
        // Compile errors, which only name the field: the line of that key or list entry.
        (
            r#""window_seconds": 300"#,
            r#""window_seconds": 0"#,
            r#""window_seconds""#,
            "field `signature.window_seconds`: must be between 1 and 3600 seconds, got 0",
        ),
        (
            r#""allow_origins": ["https://*.workers.dev"],"#,
            "\"allow_origins\": [\n  \"https://app.example.com\",\n  \"*\"\n],",
            r#"  "*""#,
            "field `policies[2].cors.allow_origins[1]`: `*` is not supported as an origin: list \
             the allowed origins, or use a subdomain wildcard such as https://*.example.com",
        ),
    ];
    for (i, (from, to, key, message)) in cases.into_iter().enumerate() {
        // Keep the block's indentation on added lines, as an editor would.
        let indent = " ".repeat(24);
        let to = to.replace('\n', &format!("\n{indent}"));
        let (path, yaml) = broken_envoy_yaml(dir.path(), &format!("envoy-{i}.yaml"), from, &to);
        let out = check_config(&path);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!("{}:{}:", path.display(), line_of(&yaml, key));
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&expected))
            .unwrap_or_else(|| panic!("no line starting {expected}\n{}", text(&out)));
        assert!(line.contains(message), "{line}");
        // The embedded JSON's own line numbers would mislead: they are not reported.
        assert!(!line.contains(" at line "), "{line}");
    }
}

#[test]
fn validate_script_checks_the_plugin_config_and_envoy_with_the_development_secret() {
    let validate = |config: &Path| {
        Command::new(repo().join("scripts/validate.sh"))
            .arg(config)
            .env("WARDEN", env!("CARGO_BIN_EXE_warden"))
            .env_remove("HMAC_SHARED_SECRET")
            .output()
            .unwrap()
    };
    let out = validate(Path::new("envoy/envoy.yaml"));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HMAC_SHARED_SECRET is not set: using the development secret"),
        "{all}"
    );
    assert!(
        stdout.contains("ok: 3 policies (health, partners, signed)"),
        "{all}"
    );
    assert!(
        stdout.contains("configuration 'envoy/envoy.yaml' OK"),
        "{all}"
    );
    assert!(
        !all.contains("edge-warden-development-secret-do-not-use-in-production"),
        "the secret was printed:\n{all}"
    );

    // A configuration the filter refuses fails the target with check-config's message.
    let dir = tempfile::tempdir().unwrap();
    let (path, yaml) = broken_envoy_yaml(
        dir.path(),
        "envoy.yaml",
        r#""window_seconds": 300"#,
        r#""window_seconds": 0"#,
    );
    let out = validate(&path);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{}:{}:",
            path.display(),
            line_of(&yaml, "window_seconds")
        )),
        "{}",
        text(&out)
    );
}

/// `warden sign --url URL` with more arguments, signing with `secret`.
fn warden_sign(url: &str, secret: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["sign", "--url", url, "-d", r#"{"clip_ids": ["clip123"]}"#])
        .args(args)
        .env("HMAC_SHARED_SECRET", secret)
        .output()
        .unwrap()
}

#[test]
fn warden_sign_reaches_https_with_cacert_and_include_prints_status_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let envoy = Envoy::start(Options {
        config_file: "envoy/envoy-tls.yaml",
        certs_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    });
    let url = format!("https://localhost:{}/process-clips", envoy.port_of("https"));
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();

    // The development CA is not a public root: refused, and told what to pass.
    let out = warden_sign(&url, SECRET, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass it with --cacert"),
        "{}",
        text(&out)
    );

    let out = warden_sign(&url, SECRET, &["--cacert", ca, "-i"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(SECRET), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (head, body) = stdout
        .split_once("\n\n")
        .expect("headers, blank line, body");
    let mut head = head.lines();
    assert_eq!(head.next(), Some("HTTP/1.1 200 OK"), "{all}");
    let headers: Vec<&str> = head.collect();
    assert!(
        headers.contains(&"strict-transport-security: max-age=31536000; includeSubDomains"),
        "{all}"
    );
    let echo: serde_json::Value = serde_json::from_str(body.trim()).expect("the echo as JSON");
    assert_eq!(echo["headers"]["x-edge-warden-key-id"], "primary", "{all}");
    assert_eq!(echo["path"], "/process-clips", "{all}");
    // The status is on standard output with -i, not repeated on standard error.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("HTTP "),
        "{all}"
    );

    // A rejection shows its status and headers too, and exits 1.
    let wrong = "another-secret-0123456789abcdef-0123456789";
    let out = warden_sign(&url, wrong, &["--cacert", ca, "--include"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 401 Unauthorized\n"), "{all}");
    assert!(
        stdout.contains("\nwww-authenticate: HMAC-SHA256 realm=\"edge-warden\""),
        "{all}"
    );
    assert!(
        stdout.contains("\ncontent-type: application/problem+json\n"),
        "{all}"
    );
    assert!(stdout.contains(r#""code":"invalid_signature""#), "{all}");

    // Another CA than the server's, or a file without certificates: refused, saying why.
    let other = tempfile::tempdir().unwrap();
    certs(other.path());
    let other_ca = other.path().join("ca.pem");
    let out = warden_sign(&url, SECRET, &["--cacert", other_ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("check that --cacert holds the CA"),
        "{}",
        text(&out)
    );
    let key = dir.path().join("server.key");
    let out = warden_sign(&url, SECRET, &["--cacert", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no PEM certificate"),
        "{}",
        text(&out)
    );
}

/// The README's sample lines appear verbatim in Envoy's log (after its own timestamp prefix).
/// The native runtime logs the same message under Envoy's `dynamic_modules` logger, after the
/// source location instead of the `wasm log …:` prefix (README "Logs and metrics").
fn assert_logged(log: &str, sample: &str) {
    let found = match runtime() {
        Runtime::Wasm => log.lines().any(|l| l.ends_with(sample)),
        Runtime::Native => {
            let message = sample.split_once(": ").map_or(sample, |(_, m)| m);
            log.lines()
                .any(|l| l.contains("[dynamic_modules]") && l.ends_with(message))
        }
    };
    assert!(
        found,
        "README sample not in Envoy's log:\n  {sample}\nlog lines from edge-warden:\n{}",
        log.lines()
            .filter(|l| l.contains("edge-warden"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_readme_config_error_sample_is_what_envoy_logs() {
    let input = readme_snippet("config-error-input");
    let sample = readme_snippet("config-error");
    let refused = match Envoy::try_start(Options::with_config(input.trim())) {
        Ok(_) => panic!("Envoy accepted the README's invalid configuration: {input}"),
        Err(refused) => refused,
    };
    assert!(!refused.success, "{}", refused.log);
    assert_logged(&refused.log, sample.trim());
}

#[test]
fn the_readme_rejection_log_sample_is_what_envoy_logs() {
    let sample = readme_snippet("rejection-log");
    let sample = sample.trim();
    let json_at = sample.find('{').expect("a JSON event in the README sample");
    let (prefix, json) = sample.split_at(json_at);
    let expected: serde_json::Value = serde_json::from_str(json).expect("the sample is JSON");
    let envoy = Envoy::start(Options::default());
    let mut signed = Signed::new(SECRET, b"{}");
    signed.signature = "0".repeat(64);
    let r = envoy.request("POST", "/orders", &signed.headers(), b"{}");
    assert_eq!(r.code(), "invalid_signature");
    let id = r.json()["request_id"]
        .as_str()
        .expect("request_id")
        .to_string();
    let needle = format!("\"request_id\":\"{id}\"");
    let log = envoy.log_once_it_has(&needle);
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no event for {id}:\n{log}"));
    let logged_json = &line[line.find("{\"event\"").expect("an event")..];
    let logged: serde_json::Value = serde_json::from_str(logged_json).expect("JSON");
    let (expected, logged_fields) = (expected.as_object().unwrap(), logged.as_object().unwrap());
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        logged_fields.keys().collect::<Vec<_>>(),
        "the README sample has other fields than Envoy's log:\n{line}"
    );
    for (field, value) in expected {
        match field.as_str() {
            // Different for every request.
            "request_id" | "timestamp" => {}
            _ => assert_eq!(&logged[field], value, "field {field}: {line}"),
        }
    }
    assert!(logged["timestamp"]
        .as_u64()
        .is_some_and(|t| t >= crate::harness::now() - 60));
    // The line as a whole, prefix included, as each runtime writes it.
    assert_logged(&log, &format!("{prefix}{logged_json}"));
}

#[test]
fn the_readme_errors_table_documents_rate_limited_as_the_filter_answers_it() {
    use edge_warden::reject::Reject;
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let why = Reject::RateLimited;
    let row = readme
        .lines()
        .find(|l| l.starts_with(&format!("| `{}` |", why.code())))
        .expect("a rate_limited row in the README's Errors table");
    assert!(row.contains(&format!("| {} |", why.status())), "{row}");
    assert!(row.contains(&format!("\"{}\"", why.title())), "{row}");
    assert!(row.contains(&format!("\"{}\"", why.detail())), "{row}");
}

#[test]
fn the_readme_run_fleet_commands_are_the_ones_run_fleet_prints() {
    // README "Running a fleet locally" and what scripts/run-fleet.sh prints agree: the secret
    // line is the development secret (dev-secret.sh), the rest is verbatim.
    let script = std::fs::read_to_string(repo().join("scripts/run-fleet.sh")).unwrap();
    let dev = std::fs::read_to_string(repo().join("scripts/dev-secret.sh")).unwrap();
    let snippet = readme_snippet("run-fleet-replay");
    let mut lines = snippet.lines();
    let export = lines.next().unwrap();
    let secret = export
        .strip_prefix("export HMAC_SHARED_SECRET=")
        .expect("the snippet starts with the secret");
    assert!(dev.contains(&format!("DEV_SECRET=\"{secret}\"")));
    assert!(script.contains("secret_line=\"export HMAC_SHARED_SECRET=$DEV_SECRET\""));
    let commands: Vec<&str> = lines.collect();
    assert_eq!(commands.len(), 3);
    for line in commands {
        assert!(
            script.contains(&format!("\n  {line}\n")),
            "run-fleet.sh does not print: {line}"
        );
    }
}
