use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn env(name: &str) -> Option<String> {
    match name {
        "HMAC_SHARED_SECRET" => Some(SECRET.to_string()),
        "OLD_SECRET" => Some(format!("old-{SECRET}")),
        "SHORT_SECRET" => Some("too-short".to_string()),
        _ => None,
    }
}

fn load(json: &str) -> Result<Config, ConfigError> {
    Config::from_json(json.as_bytes(), &env)
}

const DEFAULT: &str = r#"{
  "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
  "policies": [
    {"name": "health", "match": {"path_prefix": "/health", "methods": ["GET", "HEAD"]}, "signature": false},
    {"name": "api", "signature": true}
  ]
}"#;

#[test]
fn the_default_configuration_loads() {
    let c = load(DEFAULT).unwrap();
    assert_eq!(c.keys.len(), 1);
    assert_eq!(c.window_seconds, 300);
    assert_eq!(c.key_id_header, "x-edge-warden-key-id");
    assert_eq!(c.policies[1].max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert!(!c.uses_route_names);
}

#[test]
fn policies_select_by_segment_prefix_method_and_route() {
    let c = load(DEFAULT).unwrap();
    let name = |m, p| c.select(None, m, p).map(|p| p.name.as_str());
    assert_eq!(name("GET", "/health"), Some("health"));
    assert_eq!(name("GET", "/health/live?x=1"), Some("health"));
    assert_eq!(name("GET", "/healthz"), Some("api"));
    assert_eq!(name("POST", "/health"), Some("api"));
    assert_eq!(name("GET", "/api/x"), Some("api"));

    let c = load(
        r#"{"policies": [
            {"name": "r", "match": {"route": "public"}, "signature": false},
            {"name": "exact", "match": {"path": "/a"}, "signature": false}
        ]}"#,
    )
    .unwrap();
    assert!(c.uses_route_names);
    assert_eq!(c.select(Some("public"), "GET", "/x").unwrap().name, "r");
    assert_eq!(
        c.select(Some("other"), "GET", "/a?q").unwrap().name,
        "exact"
    );
    assert!(c.select(Some("other"), "GET", "/a/b").is_none());
}

#[test]
fn invalid_configurations_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"policies": [], "bogus": 1}"#, "bogus"),
        (r#"{"policies": []}"#, "policies"),
        (
            r#"{"policies": [{"name": "a", "signature": "yes"}]}"#,
            "policies[0].signature",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "match": {"prefix": "/"}}]}"#,
            "policies[0].match.prefix",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "match": {"path_prefix": "api"}}]}"#,
            "policies[0].match.path_prefix",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "match": {"methods": ["get"]}}]}"#,
            "policies[0].match.methods[0]",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false}, {"name": "a", "signature": false}]}"#,
            "policies[1].name",
        ),
        (r#"{"policies": [{"name": "a"}]}"#, "signature.secrets"),
        (
            r#"{"policies": [{"name": "a", "signature": false, "api_key": {}}]}"#,
            "api_keys.keys",
        ),
        (
            r#"{"max_body_bytes": 0, "policies": [{"name": "a", "signature": false}]}"#,
            "max_body_bytes",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "max_body_bytes": -1}]}"#,
            "policies[0].max_body_bytes",
        ),
    ];
    for (json, field) in cases {
        let e = load(json).expect_err(json);
        assert_eq!(&e.field, field, "{json}: {e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn the_secret_never_shows_in_a_config_dump() {
    let c = load(DEFAULT).unwrap();
    assert!(!format!("{c:?}").contains(SECRET));
}

#[test]
fn not_json_is_refused_with_a_reason() {
    let e = load("{not json").unwrap_err();
    assert!(e.reason.contains("line 1"), "{e}");
}

#[test]
fn policies_with_keys_count_as_credentialed() {
    let c = load(&format!(
        r#"{{"api_keys": {{"keys": [{{"id": "k", "sha256": "{}", "role": "admin", "expires_at": "2030-01-01T00:00:00Z"}}]}},
            "policies": [{{"name": "keyed", "signature": false, "api_key": {{"roles": ["admin"]}}}},
                         {{"name": "open", "signature": false}}]}}"#,
        "c".repeat(64)
    ))
    .unwrap();
    assert!(c.policies[0].requires_credential());
    assert!(!c.policies[1].requires_credential());
    assert_eq!(c.api_keys[0].expires_at, Some(1_893_456_000));
    assert!(c.lockout.is_some());
}

#[test]
fn a_policy_after_one_that_covers_it_is_warned_about() {
    let c = load(
        r#"{"policies": [
            {"name": "api", "match": {"path_prefix": "/api"}, "signature": false},
            {"name": "api-orders", "match": {"path_prefix": "/api/orders"}, "signature": false},
            {"name": "posts", "match": {"methods": ["POST"]}, "signature": false},
            {"name": "post-put", "match": {"methods": ["POST", "PUT"]}, "signature": false},
            {"name": "all", "signature": false},
            {"name": "health", "match": {"path": "/health"}, "signature": false}
        ]}"#,
    )
    .unwrap();
    let never: Vec<&str> = c
        .warnings
        .iter()
        .filter_map(|w| w.strip_prefix("policy `")?.split('`').next())
        .collect();
    // `post-put` is not covered (PUT is not in `posts`), but `all` catches it afterwards.
    assert_eq!(never, ["api-orders", "health"], "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("the earlier policy `api`"),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[1].contains("the earlier policy `all`"));
    // The shipped shape (a narrow policy, then a catch-all) has nothing to warn about.
    assert!(load(DEFAULT).unwrap().warnings.is_empty());
}

/// One mistake per configuration, in every section, and several at once to pin which one is
/// reported first. The fields are those the single-file config.rs reported before each section's
/// compile step moved beside its check.
#[test]
fn every_section_reports_its_mistakes_at_the_same_path() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"signature": {"secrets": [{"id": "a", "env": "HMAC_SHARED_SECRET"}, {"id": "b", "env": "HMAC_SHARED_SECRET"}, {"id": "c", "env": "HMAC_SHARED_SECRET"}, {"id": "d", "env": "HMAC_SHARED_SECRET"}, {"id": "e", "env": "HMAC_SHARED_SECRET"}, {"id": "f", "env": "HMAC_SHARED_SECRET"}, {"id": "g", "env": "HMAC_SHARED_SECRET"}, {"id": "h", "env": "HMAC_SHARED_SECRET"}, {"id": "i", "env": "HMAC_SHARED_SECRET"}]}, "policies": [{"name": "a"}]}"#,
            "signature.secrets",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "bad id", "env": "HMAC_SHARED_SECRET"}]}, "policies": [{"name": "a"}]}"#,
            "signature.secrets[0].id",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "k", "env": "NOT-A-NAME"}]}, "policies": [{"name": "a"}]}"#,
            "signature.secrets[0].env",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "k", "env": "MISSING"}]}, "policies": [{"name": "a"}]}"#,
            "signature.secrets[0].env",
        ),
        (
            r#"{"signature": {"window_seconds": 3601}, "policies": [{"name": "a", "signature": false}]}"#,
            "signature.window_seconds",
        ),
        (
            r#"{"signature": {"key_id_header": "x-request-key"}, "policies": [{"name": "a", "signature": false}]}"#,
            "signature.key_id_header",
        ),
        (
            r#"{"replay": {"capacity": 16777280}, "policies": [{"name": "a", "signature": false}]}"#,
            "replay.capacity",
        ),
        (
            r#"{"lockout": {"window_seconds": 0}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.window_seconds",
        ),
        (
            r#"{"lockout": {"max_failures": 1001}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.max_failures",
        ),
        (
            r#"{"lockout": {"capacity": 64, "ipv6_prefix": 8}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.ipv6_prefix",
        ),
        (
            r#"{"lockout": {"bogus": 1}, "policies": [{"name": "a", "signature": false}]}"#,
            "lockout.bogus",
        ),
        (
            r#"{"api_keys": {"header": "X-Api-Key"}, "policies": [{"name": "a", "signature": false}]}"#,
            "api_keys.header",
        ),
        (
            r#"{"api_keys": {"keys": [{"id": "", "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "role": "client"}]}, "policies": [{"name": "a", "signature": false}]}"#,
            "api_keys.keys[0].id",
        ),
        (
            r#"{"api_keys": {"keys": [{"id": "a", "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "role": "client"}, {"id": "b", "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "role": "client"}]}, "policies": [{"name": "a", "signature": false}]}"#,
            "api_keys.keys[1].sha256",
        ),
        (
            r#"{"api_keys": {"keys": [{"id": "a", "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "role": "client", "not_before": "soon"}]}, "policies": [{"name": "a", "signature": false}]}"#,
            "api_keys.keys[0].not_before",
        ),
        (
            r#"{"api_keys": {"keys": [{"id": "a", "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "role": "client"}]}, "policies": [{"name": "a", "signature": false, "api_key": {"roles": ["root"]}}]}"#,
            "policies[0].api_key.roles[0]",
        ),
        (
            r#"{"identity": {"api_key_id_header": "X-Id"}, "policies": [{"name": "a", "signature": false}]}"#,
            "identity.api_key_id_header",
        ),
        (
            r#"{"identity": {"role_header": "x-request-role"}, "policies": [{"name": "a", "signature": false}]}"#,
            "identity.role_header",
        ),
        (
            r#"{"identity": {"client_header": ""}, "policies": [{"name": "a", "signature": false}]}"#,
            "identity.client_header",
        ),
        (
            r#"{"security_headers": {"headers": {"x a": "remove"}}, "policies": [{"name": "a", "signature": false}]}"#,
            "security_headers.headers.x a",
        ),
        (
            r#"{"security_headers": {"headers": {"x-a": {"set": "a\nb"}}}, "policies": [{"name": "a", "signature": false}]}"#,
            "security_headers.headers.x-a",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "cors": {"allow_origin_env": "BAD-NAME"}}]}"#,
            "policies[1].cors.allow_origin_env",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "cors": {"allow_methods": ["GET", "get"]}}]}"#,
            "policies[1].cors.allow_methods[1]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "cors": {"allow_headers": ["content-type", "bad header"]}}]}"#,
            "policies[1].cors.allow_headers[1]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "cors": {"expose_headers": ["x:y"]}}]}"#,
            "policies[1].cors.expose_headers[0]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "cors": {"max_age": 86401}}]}"#,
            "policies[1].cors.max_age",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "cors": {"allow_credentials": "yes"}}]}"#,
            "policies[1].cors.allow_credentials",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "trusted_hosts": ["api.example.com", "*."]}]}"#,
            "policies[1].trusted_hosts[1]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "ip": {"allow": ["10.0.0.1"], "deny": ["::1", "300.1.1.1"]}}]}"#,
            "policies[1].ip.deny[1]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "ip": {"other": []}}]}"#,
            "policies[1].ip.other",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "request": {"required_headers": [{"name": "x-ok"}, {"name": "x-device-id", "pattern": "[A-Z"}]}}]}"#,
            "policies[1].request.required_headers[1].pattern",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "request": {"max_body_bytes": 0}}]}"#,
            "policies[1].request.max_body_bytes",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "request": {"content_types": ["json"]}}]}"#,
            "policies[1].request.content_types[0]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "request": {"methods": ["get"]}}]}"#,
            "policies[1].request.methods[0]",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "request": {"max_bytes": 1}}]}"#,
            "policies[1].request.max_bytes",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "api_key": {"required": true}}]}"#,
            "api_keys.keys",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "match": {"path": "/a", "path_prefix": "/b"}}]}"#,
            "policies[1].match",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": "a", "signature": false, "match": {"route": ""}}]}"#,
            "policies[1].match.route",
        ),
        (
            r#"{"policies": [{"name": "ok", "signature": false}, {"name": " ", "signature": false}]}"#,
            "policies[1].name",
        ),
        (
            r#"{"max_body_bytes": 67108865, "policies": [{"name": "a", "signature": false}]}"#,
            "max_body_bytes",
        ),
        (
            r#"{"signature": {"window_seconds": 0}, "max_body_bytes": 0, "replay": {"capacity": 1}, "lockout": {"capacity": 1}, "policies": [{"name": "a", "signature": false}]}"#,
            "signature.window_seconds",
        ),
        (
            r#"{"max_body_bytes": 0, "replay": {"capacity": 1}, "policies": [{"name": "a", "signature": false}]}"#,
            "max_body_bytes",
        ),
        (
            r#"{"replay": {"capacity": 1}, "signature": {"secrets": [{"id": "k", "env": "MISSING"}]}, "policies": [{"name": "a"}]}"#,
            "replay.capacity",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "k", "env": "MISSING"}]}, "api_keys": {"header": "X"}, "policies": [{"name": "a"}]}"#,
            "signature.secrets[0].env",
        ),
        (
            r#"{"api_keys": {"header": "X", "keys": [{"id": "k", "sha256": "zz", "role": "client"}]}, "identity": {"role_header": "X"}, "policies": [{"name": "a", "signature": false}]}"#,
            "api_keys.keys[0].sha256",
        ),
        (
            r#"{"api_keys": {"header": "X"}, "identity": {"role_header": "X"}, "lockout": {"capacity": 1}, "policies": []}"#,
            "api_keys.header",
        ),
        (
            r#"{"identity": {"role_header": "X"}, "lockout": {"capacity": 1}, "policies": []}"#,
            "identity.role_header",
        ),
        (
            r#"{"lockout": {"capacity": 1}, "security_headers": {"headers": {"x a": "remove"}}, "policies": []}"#,
            "lockout.capacity",
        ),
        (
            r#"{"security_headers": {"headers": {"x a": "remove"}}, "policies": []}"#,
            "policies",
        ),
        (
            r#"{"security_headers": {"headers": {"x a": "remove"}}, "policies": [{"name": "", "signature": true}]}"#,
            "security_headers.headers.x a",
        ),
        (
            r#"{"policies": [{"name": "a", "max_body_bytes": 0, "cors": {"max_age": 86401}, "trusted_hosts": ["*."], "api_key": {}, "ip": {"deny": ["x"]}, "match": {"route": ""}}]}"#,
            "policies[0].max_body_bytes",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": true, "cors": {"max_age": 86401}, "trusted_hosts": ["*."], "api_key": {}, "ip": {"deny": ["x"]}, "match": {"route": ""}}]}"#,
            "signature.secrets",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "cors": {"max_age": 86401}, "trusted_hosts": ["*."], "api_key": {}, "ip": {"deny": ["x"]}, "match": {"route": ""}}]}"#,
            "policies[0].cors.max_age",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "trusted_hosts": ["*."], "api_key": {}, "ip": {"deny": ["x"]}, "match": {"route": ""}}]}"#,
            "policies[0].trusted_hosts[0]",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "api_key": {}, "ip": {"deny": ["x"]}, "match": {"route": ""}}]}"#,
            "api_keys.keys",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": false, "ip": {"deny": ["x"]}, "match": {"route": ""}}]}"#,
            "policies[0].ip.deny[0]",
        ),
    ];
    for (json, field) in cases {
        let e = load(json).expect_err(json);
        assert_eq!(&e.field, field, "{json}: {e}");
        assert!(e.to_string().contains(&format!("field `{field}`")), "{e}");
    }
}

#[test]
fn an_upload_section_is_compiled_at_its_policy_s_path() {
    let json = |upload: &str| {
        format!(
            r#"{{"policies": [{{"name": "a", "signature": false}}, {{"name": "b", "signature": false}},
                {{"name": "uploads", "signature": false, "upload": {upload}}}]}}"#
        )
    };
    let e = load(&json(r#"{"allowed_extensions": ["exe"]}"#)).unwrap_err();
    assert_eq!(e.field, "policies[2].upload.allowed_extensions[0]");
    let e = load(&json(r#"{"allowed_extensions": ["mp3"], "max_size": 1}"#)).unwrap_err();
    assert!(e.field.contains("policies[2].upload"), "{e}");
    let c = load(&json(r#"{"allowed_extensions": ["mp3", "wav"]}"#)).unwrap();
    assert_eq!(
        c.policies[2].upload.map(|u| u.allowed_list()),
        Some("mp3, wav".to_string())
    );
    assert!(c.policies[0].upload.is_none());
}

#[test]
fn the_streamed_and_the_buffered_limit_combine_to_the_smaller_on_signed_routes() {
    let c = load(
        r#"{
      "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
      "max_body_bytes": 1000,
      "policies": [
        {"name": "up", "match": {"path_prefix": "/up"}, "signature": false, "request": {"max_body_bytes": 10737418240}},
        {"name": "open", "match": {"path_prefix": "/open"}, "signature": false},
        {"name": "small", "match": {"path_prefix": "/small"}, "request": {"max_body_bytes": 10}},
        {"name": "signed"}
      ]
    }"#,
    )
    .unwrap();
    let limits: Vec<Option<u64>> = c.policies.iter().map(Policy::body_limit).collect();
    assert_eq!(limits, [Some(10_737_418_240), None, Some(10), Some(1000)]);
}

#[test]
fn a_policy_enforces_unless_its_mode_is_report_and_other_modes_are_refused_naming_the_field() {
    let c = load(DEFAULT).unwrap();
    assert!(c.policies.iter().all(|p| p.mode == Mode::Enforce));
    let c = load(&DEFAULT.replacen(
        r#""signature": true"#,
        r#""signature": true, "mode": "report""#,
        1,
    ))
    .unwrap();
    assert_eq!(c.policies[1].mode, Mode::Report);
    let e = load(&DEFAULT.replacen(
        r#""signature": true"#,
        r#""signature": true, "mode": "audit""#,
        1,
    ))
    .unwrap_err();
    assert_eq!(e.field, "policies[1].mode", "{e}");
    assert!(e.reason.contains("`enforce`"), "{e}");
}

#[test]
fn the_event_suppression_interval_is_checked_naming_the_field() {
    assert_eq!(load(DEFAULT).unwrap().event_suppress_seconds, 10);
    let with = |n: u64| {
        DEFAULT.replacen(
            '{',
            &format!(r#"{{"events": {{"suppress_seconds": {n}}},"#),
            1,
        )
    };
    assert_eq!(load(&with(60)).unwrap().event_suppress_seconds, 60);
    for bad in [0, 3601] {
        let e = load(&with(bad)).unwrap_err();
        assert_eq!(e.field, "events.suppress_seconds", "{e}");
    }
}

#[test]
fn a_policy_names_its_signature_scheme() {
    let json = r#"{
      "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
      "policies": [
        {"name": "ref", "match": {"path": "/a"}, "signature": {"scheme": "reference"}},
        {"name": "rfc", "match": {"path": "/b"}, "signature": {"scheme": "rfc9421"}},
        {"name": "hook", "match": {"path": "/c"}, "signature": {"scheme": "github", "secrets": [{"id": "gh", "env": "OLD_SECRET"}]}},
        {"name": "digest", "match": {"path": "/d"}, "signature": false, "content_digest": true},
        {"name": "default"}
      ]
    }"#;
    let c = load(json).unwrap();
    let scheme = |i: usize| c.policies[i].signature.as_ref();
    assert!(matches!(scheme(0), Some(Scheme::Reference)));
    assert!(matches!(scheme(1), Some(Scheme::Rfc9421(_))));
    assert!(matches!(scheme(2), Some(Scheme::Webhook(w)) if w.keys[0].id == "gh"));
    assert!(scheme(3).is_none() && c.policies[3].content_digest);
    assert!(matches!(scheme(4), Some(Scheme::Reference)));
}

#[test]
fn signature_scheme_mistakes_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"policies": [{"name": "a", "signature": {"scheme": "hmac"}}]}"#,
            "policies[0].signature.scheme",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": {"secrets": []}}]}"#,
            "policies[0].signature",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": {"scheme": "stripe", "secrets": [{"id": "s", "env": "OLD_SECRET"}], "tolerance": 5}}]}"#,
            "policies[0].signature",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": {"scheme": "stripe", "secrets": [{"id": "s", "env": "OLD_SECRET"}], "tolerance_seconds": 0}}]}"#,
            "policies[0].signature.tolerance_seconds",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": {"scheme": "slack", "secrets": [{"id": "s", "env": "NOT_SET"}]}}]}"#,
            "policies[0].signature.secrets[0].env",
        ),
        (
            r#"{"policies": [{"name": "a", "signature": {"scheme": "rfc9421"}}]}"#,
            "signature.secrets",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "k", "env": "HMAC_SHARED_SECRET", "encoding": "base64"}]}, "policies": [{"name": "a"}]}"#,
            "signature.secrets[0].env",
        ),
        (
            r#"{"signature": {"secrets": [{"id": "k", "env": "SHORT_SECRET", "encoding": "hex"}]}, "policies": [{"name": "a"}]}"#,
            "signature.secrets[0].encoding",
        ),
    ];
    for (json, field) in cases {
        let e = load(json).expect_err(json);
        assert_eq!(&e.field, field, "{json}: {e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn a_secret_can_be_given_in_base64_or_hex() {
    let env = |name: &str| match name {
        "B64" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
        "HEX" => Some("3031323334353637383961626364656630313233343536373839616263646566".into()),
        _ => None,
    };
    for (var, encoding) in [("B64", "base64"), ("HEX", "hex")] {
        let json = format!(
            r#"{{"signature": {{"secrets": [{{"id": "k", "env": "{var}", "encoding": "{encoding}"}}]}}, "policies": [{{"name": "a"}}]}}"#
        );
        let c = Config::from_json(json.as_bytes(), &env).unwrap();
        assert_eq!(c.keys[0].secret.expose(), SECRET.as_bytes());
    }
}
