//! TLS termination by Envoy (envoy/envoy-tls.yaml): protocol versions, the chain served, ALPN,
//! and the plain listener's redirect. Clients are openssl s_client and curl.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{certs, plugin_config_of, Envoy, Options, Signed, SECRET};

fn tls_envoy(dir: &Path) -> Envoy {
    certs(dir);
    Envoy::start(Options {
        config_file: "envoy/envoy-tls.yaml",
        certs_dir: Some(dir.to_path_buf()),
        ..Options::default()
    })
}

fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out: Output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success() && !text.contains("Cipher is (NONE)"),
        text,
    )
}

#[test]
fn tls_1_1_is_refused_and_1_2_and_1_3_are_accepted_with_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = tls_envoy(dir.path());
    let port = envoy.port_of("https");
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();

    let (ok, text) = s_client(port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok, "TLS 1.1 was accepted:\n{text}");

    let (ok, text) = s_client(
        port,
        &[
            "-tls1_2",
            "-CAfile",
            ca,
            "-verify_return_error",
            "-showcerts",
        ],
    );
    assert!(ok && text.contains("New, TLSv1.2"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "server + CA"
    );
    // A TLS 1.2 suite outside the intermediate list (no forward secrecy) is refused.
    let (ok, _) = s_client(port, &["-tls1_2", "-cipher", "AES128-SHA"]);
    assert!(!ok, "a non-ECDHE TLS 1.2 cipher was accepted");

    let (ok, text) = s_client(port, &["-tls1_3", "-CAfile", ca, "-alpn", "h2"]);
    assert!(ok && text.contains("New, TLSv1.3"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn https_reaches_the_filter_and_plain_http_redirects_keeping_path_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = tls_envoy(dir.path());
    let ca = dir.path().join("ca.pem");
    let https = format!("https://localhost:{}", envoy.port_of("https"));
    let answer = curl(&["--cacert", ca.to_str().unwrap(), &format!("{https}/health")]);
    assert!(answer.starts_with("HTTP/2 200"), "{answer}");
    assert!(
        answer.contains("strict-transport-security: max-age=31536000"),
        "{answer}"
    );
    let answer = curl(&["--cacert", ca.to_str().unwrap(), &format!("{https}/orders")]);
    assert!(
        answer.starts_with("HTTP/2 401") && answer.contains("missing_signature"),
        "{answer}"
    );

    let http = format!("http://127.0.0.1:{}", envoy.port_of("http_redirect"));
    let answer = curl(&[&format!("{http}/orders/42?expand=items&x=1")]);
    assert!(answer.starts_with("HTTP/1.1 301"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("location: https://127.0.0.1:10443/orders/42?expand=items&x=1"),
        "{answer}"
    );
    let answer = curl(&[&format!("{http}/health")]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn every_shipped_envoy_config_carries_the_same_plugin_configuration() {
    let main = plugin_config_of("envoy/envoy.yaml");
    assert_eq!(plugin_config_of("envoy/envoy-tls.yaml"), main);
}

#[test]
fn a_signed_post_over_http2_is_verified_and_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = tls_envoy(dir.path());
    let ca = dir.path().join("ca.pem");
    let url = format!("https://localhost:{}/orders", envoy.port_of("https"));
    // 100 KiB: HTTP/2 delivers it in several DATA frames, so the body arrives in pieces.
    let body = "h2".repeat(50 * 1024);
    let s = Signed::new(SECRET, body.as_bytes());
    let signed = |sig: &str| {
        curl(&[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("X-Request-Signature: {sig}"),
            "-H",
            &format!("X-Request-Timestamp: {}", s.timestamp),
            "-H",
            &format!("X-Request-Nonce: {}", s.nonce),
            "--data-binary",
            &body,
            &url,
        ])
    };
    let answer = signed(&"0".repeat(64));
    assert!(
        answer.starts_with("HTTP/2 401") && answer.contains("invalid_signature"),
        "{}",
        &answer[..answer.len().min(400)]
    );
    let answer = signed(&s.signature);
    assert!(
        answer.starts_with("HTTP/2 200"),
        "{}",
        &answer[..answer.len().min(400)]
    );
    assert!(
        answer.contains(r#""body_length": 102400"#),
        "{}",
        &answer[..answer.len().min(800)]
    );
    assert!(answer.contains(r#""x-edge-warden-key-id": "primary""#));
}
