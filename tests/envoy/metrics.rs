//! What an operator scrapes: per-decision series with their labels in `/stats/prometheus`, the
//! same on both runtimes; the configuration's hash; the shipped stats tags and alert rules.

use std::process::Command;

use edge_warden::metrics::{config_hash, STATS_TAGS};

use crate::harness::{label_set, parse_series, repo, Envoy, Options, Runtime, Signed, SECRET};
use crate::packaging::yaml_docs;
use crate::tooling::readme_snippet;

/// Two policies, an allowed origin on `open`, and a lockout after two failures.
const CONFIG: &str = r#"{
  "signature": { "secrets": [{ "id": "primary", "env": "HMAC_SHARED_SECRET" }] },
  "lockout": { "max_failures": 2 },
  "policies": [
    { "name": "open", "match": { "path_prefix": "/open" }, "signature": false,
      "cors": { "allow_origins": ["https://app.example.com"], "allow_methods": ["GET"] } },
    { "name": "signed", "signature": true }
  ]
}"#;

const ORIGIN: &str = "https://app.example.com";

/// The same traffic for every test: each request's expected status and code.
fn traffic(envoy: &Envoy) {
    let expect = |r: crate::harness::Resp, status: u16, code: &str| {
        let got = if r.status < 400 {
            "-".to_string()
        } else {
            r.code()
        };
        assert_eq!((r.status, got.as_str()), (status, code));
    };
    expect(envoy.request("GET", "/open/items", &[], b""), 200, "-");
    let preflight = [("origin", ORIGIN), ("access-control-request-method", "GET")];
    expect(
        envoy.request("OPTIONS", "/open/items", &preflight, b""),
        204,
        "-",
    );
    let evil = [("origin", "https://evil.example.com")];
    expect(
        envoy.request("GET", "/open/items", &evil, b""),
        403,
        "origin_not_allowed",
    );
    expect(
        envoy.request("GET", "/open/%252e%252e/admin", &[], b""),
        400,
        "invalid_path",
    );
    expect(
        envoy.request("GET", "/orders", &[], b""),
        401,
        "missing_signature",
    );
    let first = Signed::new(SECRET, b"");
    expect(
        envoy.request("GET", "/orders", &first.headers(), b""),
        200,
        "-",
    );
    expect(envoy.signed("GET", "/orders", b""), 200, "-");
    expect(
        envoy.request("GET", "/orders", &first.headers(), b""),
        401,
        "nonce_replayed",
    );
    // Two wrong signatures: the second starts this address's lockout...
    for _ in 0..2 {
        let forged = Signed::new("not-the-secret-0123456789abcdef-01234", b"");
        expect(
            envoy.request("GET", "/orders", &forged.headers(), b""),
            401,
            "invalid_signature",
        );
    }
    // ...which refuses even a good one.
    expect(
        envoy.signed("GET", "/orders", b""),
        429,
        "too_many_auth_failures",
    );
}

fn start(runtime: Option<Runtime>) -> Envoy {
    Envoy::start(Options {
        runtime,
        ..Options::with_config(CONFIG)
    })
}

#[test]
fn decisions_are_counted_by_code_and_policy_in_prometheus() {
    let envoy = start(None);
    traffic(&envoy);
    assert_eq!(envoy.settled_total("edge_warden_rejected_total"), Some(7));
    let value = |family: &str, labels: &[(&str, &str)]| envoy.series_value(family, labels);
    let rejected = |code: &str, policy: &str| {
        value(
            "edge_warden_rejected_total",
            &[("code", code), ("policy", policy)],
        )
    };
    assert_eq!(rejected("invalid_signature", "signed"), Some(2));
    assert_eq!(rejected("missing_signature", "signed"), Some(1));
    assert_eq!(rejected("nonce_replayed", "signed"), Some(1));
    assert_eq!(rejected("too_many_auth_failures", "signed"), Some(1));
    assert_eq!(rejected("origin_not_allowed", "open"), Some(1));
    // Refused before a policy was chosen: `policy="-"`.
    assert_eq!(rejected("invalid_path", "-"), Some(1));
    // Series a request can reach exist before anything counts them, so a rate sees the first.
    assert_eq!(rejected("invalid_signature", "open"), Some(0));
    assert_eq!(rejected("state_unavailable", "signed"), Some(0));
    assert_eq!(
        value("edge_warden_allowed_total", &[("policy", "open")]),
        Some(1)
    );
    assert_eq!(
        value("edge_warden_allowed_total", &[("policy", "signed")]),
        Some(2)
    );
    assert_eq!(
        value("edge_warden_preflights_total", &[("policy", "open")]),
        Some(1)
    );
    assert_eq!(
        value("edge_warden_nonces_claimed_total", &[("policy", "signed")]),
        Some(2)
    );
    assert_eq!(value("edge_warden_lockouts_started_total", &[]), Some(1));
    assert_eq!(value("edge_warden_state_unavailable", &[]), Some(0));
    assert_eq!(
        value(
            "edge_warden_config_info",
            &[("hash", &config_hash(CONFIG.as_bytes()))]
        ),
        Some(1)
    );
    // `/stats` shows the names with the labels in them, on both runtimes.
    assert_eq!(
        envoy.stat("edge_warden_rejected_total.code.invalid_signature.policy.signed"),
        Some(2)
    );
    // The README's sample scrape is this one: every series that is not 0 (from the wasm
    // runtime; the native one's differ only in `runtime`).
    let scraped: Vec<String> = edge_warden_lines(&envoy)
        .into_iter()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .map(|l| l.replace("runtime=\"dynamicmodules\"", "runtime=\"wasm\""))
        .collect();
    let sample = readme_snippet("sample-scrape");
    assert_eq!(
        sample.lines().collect::<Vec<_>>(),
        scraped,
        "README sample scrape"
    );
}

/// Every `envoy_edge_warden_*` line of a scrape, `# TYPE` lines included, sorted.
fn edge_warden_lines(envoy: &Envoy) -> Vec<String> {
    let (_, text) = envoy.admin("/stats/prometheus");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("envoy_edge_warden_") || l.starts_with("# TYPE envoy_edge_warden_")
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn both_runtimes_export_the_same_series_with_the_same_labels_and_counts() {
    let wasm = start(Some(Runtime::Wasm));
    let native = start(Some(Runtime::Native));
    traffic(&wasm);
    traffic(&native);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let from_wasm = edge_warden_lines(&wasm);
    let from_native = edge_warden_lines(&native);
    let expected = "envoy_edge_warden_rejected_total\
                    {code=\"invalid_signature\",policy=\"signed\",runtime=\"wasm\"} 2";
    assert!(from_wasm.iter().any(|l| l == expected), "{from_wasm:#?}");
    // Line for line, but for the runtime's own label.
    let native_as_wasm: Vec<String> = from_native
        .iter()
        .map(|l| l.replace("runtime=\"dynamicmodules\"", "runtime=\"wasm\""))
        .collect();
    assert_eq!(from_wasm, native_as_wasm);
    assert!(from_native
        .iter()
        .all(|l| l.starts_with('#') || l.contains("runtime=\"dynamicmodules\"")));
}

/// Rendered with `Options::lds`: the gauge follows a configuration delivered to a running Envoy.
/// The old configuration serves the connections opened under it until they drain (1 s here,
/// `--drain-time-s`), then its series goes.
#[test]
fn the_configuration_gauge_names_the_configuration_loaded_and_changes_on_reload() {
    let mut options = Options {
        lds: true,
        ..Options::with_config(CONFIG)
    };
    options
        .args
        .extend(["--drain-time-s".to_string(), "1".to_string()]);
    let mut envoy = Envoy::start(options);
    let before = config_hash(CONFIG.as_bytes());
    assert!(envoy
        .log_once_it_has("config hash")
        .contains(&format!("config hash {before}")));
    let gauge = |envoy: &Envoy, hash: &str| {
        envoy.series_value("edge_warden_config_info", &[("hash", hash)])
    };
    assert_eq!(gauge(&envoy, &before), Some(1));
    assert_eq!(envoy.series("edge_warden_config_info").len(), 1);

    let changed = CONFIG.replace("\"max_failures\": 2", "\"max_failures\": 3");
    let after = config_hash(changed.as_bytes());
    assert_ne!(before, after);
    envoy.update_plugin_config(&changed);
    assert_eq!(gauge(&envoy, &after), Some(1));
    assert!(envoy
        .log_once_it_has(&format!("config hash {after}"))
        .contains(&format!("config hash {after}")));
    // Once the old configuration is gone, only the new one shows 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while gauge(&envoy, &before).unwrap_or(0) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            envoy.series("edge_warden_config_info")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(gauge(&envoy, &after), Some(1));
}

#[test]
fn every_shipped_envoy_config_extracts_the_labels_of_the_wasm_metric_names() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("static_resources:") {
            continue;
        }
        let doc = &yaml_docs(&path)[0];
        let tags: Vec<(String, String)> = doc["stats_config"]["stats_tags"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no stats_config.stats_tags", path.display()))
            .iter()
            .map(|t| {
                (
                    t["tag_name"].as_str().unwrap_or_default().to_string(),
                    t["regex"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = STATS_TAGS
            .iter()
            .map(|(t, r)| (t.to_string(), r.to_string()))
            .collect();
        assert_eq!(tags, expected, "{}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 5);
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("envoy/prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; make deps installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_shipped_alert_rules_load_and_fire_on_the_series_edge_warden_exports() {
    let checked = promtool(&["check", "rules", "edge-warden-alerts.yaml"]);
    assert!(checked.contains("SUCCESS: 2 rules found"), "{checked}");
    promtool(&["test", "rules", "edge-warden-alerts.test.yaml"]);

    // The test's input series are ones a real Envoy shows (less the scrape's `instance`).
    let envoy = start(None);
    traffic(&envoy);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, scrape) = envoy.admin("/stats/prometheus");
    let tests = yaml_docs(&repo().join("envoy/prometheus/edge-warden-alerts.test.yaml"));
    let inputs = tests[0]["tests"][0]["input_series"].as_array().unwrap();
    assert!(!inputs.is_empty());
    for input in inputs {
        let series = input["series"].as_str().unwrap();
        let (family, labels) = series.split_once('{').unwrap();
        let labels: Vec<String> = label_set(labels.trim_end_matches('}'))
            .into_iter()
            .filter(|l| !l.starts_with("instance="))
            .collect();
        let exported = parse_series(&scrape, family);
        assert!(
            exported.iter().any(|(l, _)| label_set(l) == labels),
            "{series} is not exported: {exported:?}"
        );
    }
}
