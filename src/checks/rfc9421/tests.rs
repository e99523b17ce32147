//! RFC 9421 against the RFC's own examples, then every rule of [`verify`] one at a time.

use base64::Engine as _;

use super::*;
use crate::secret::Secret;

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// RFC 9421 Appendix B.1.5, "test-shared-secret" (base64 in the RFC).
const RFC_SECRET_B64: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
/// Appendix B.2.5.
const B25_INPUT: &str =
    r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
const B25_SIGNATURE: &str = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
const B25_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
                        \"@authority\": example.com\n\
                        \"content-type\": application/json\n\
                        \"@signature-params\": (\"date\" \"@authority\" \"content-type\")\
                        ;created=1618884473;keyid=\"test-shared-secret\"";
const B25_CREATED: u64 = 1_618_884_473;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";
const NOW: u64 = 1_700_000_000;
const NONCE: &str = "n-0123456789abcdef";

fn rfc_secret() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(RFC_SECRET_B64)
        .unwrap()
}

fn key(id: &str, secret: &[u8]) -> SigningKey {
    SigningKey {
        id: id.to_string(),
        secret: Secret::new(secret.to_vec()),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// A request: pseudo-headers apart, headers as the host hands them over.
#[derive(Clone)]
struct Request {
    method: String,
    scheme: String,
    authority: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// RFC 9421 Appendix B.2's test-request.
    fn rfc() -> Self {
        Self {
            method: "POST".into(),
            scheme: "https".into(),
            authority: "example.com".into(),
            path: "/foo?param=Value&Pet=dog".into(),
            headers: pairs(&[
                ("host", "example.com"),
                ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
                ("content-type", "application/json"),
                (
                    "content-digest",
                    "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BN\
                     NyealdVLvRwEmTHWXvJwew==:",
                ),
                ("content-length", "18"),
            ]),
        }
    }

    /// RFC 9421 §2.2's example: `POST /path?param=value HTTP/1.1`, `Host: www.example.com`.
    fn section_2_2(path: &str) -> Self {
        Self {
            method: "POST".into(),
            scheme: "https".into(),
            authority: "www.example.com".into(),
            path: path.into(),
            headers: pairs(&[("host", "www.example.com")]),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    /// With these signature headers instead of any it had.
    fn signed(mut self, input: &str, signature: &str) -> Self {
        self.headers
            .retain(|(n, _)| n != "signature-input" && n != "signature");
        self.header("signature-input", input)
            .header("signature", signature)
    }

    fn with<T>(&self, f: impl FnOnce(&Message) -> T) -> T {
        let headers = RequestHeaders::new(self.headers.clone());
        let message = Message {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            headers: &headers,
        };
        f(&message)
    }

    fn verify(
        &self,
        settings: &Rfc9421Settings,
        keys: &[SigningKey],
        now: u64,
    ) -> Result<Verified, Reject> {
        self.with(|m| verify(settings, keys, m, now))
    }

    /// With the default policy and keys at `NOW`: the replay record, or the rejection.
    fn outcome(&self) -> Result<String, Reject> {
        self.outcome_with(&default_settings())
    }

    fn outcome_with(&self, settings: &Rfc9421Settings) -> Result<String, Reject> {
        self.verify(settings, &keys(), NOW).map(|v| v.replay_id)
    }

    fn base(&self, input: &str) -> Result<String, &'static str> {
        self.with(|m| base_for(input, m))
    }
}

/// What the client side of a test signs with.
#[derive(Clone, Copy)]
struct Signer<'a> {
    secret: &'a [u8],
    key_id: &'a str,
    label: &'a str,
    components: &'a [&'a str],
    created: u64,
    expires: Option<u64>,
    nonce: Option<&'a str>,
    tag: Option<&'a str>,
}

impl Default for Signer<'_> {
    fn default() -> Self {
        Self {
            secret: SECRET,
            key_id: "k1",
            label: "sig1",
            components: &["@method", "@authority", "@path"],
            created: NOW,
            expires: None,
            nonce: Some(NONCE),
            tag: None,
        }
    }
}

impl Signer<'_> {
    fn headers(&self, request: &Request) -> (String, String) {
        request
            .with(|m| {
                sign(
                    self.secret,
                    self.key_id,
                    self.label,
                    self.components,
                    m,
                    self.created,
                    self.expires,
                    self.nonce,
                    self.tag,
                )
            })
            .unwrap()
    }

    fn sign(&self, request: Request) -> Request {
        let (input, signature) = self.headers(&request);
        request.signed(&input, &signature)
    }
}

fn settings(raw: RawRfc9421) -> Rfc9421Settings {
    compile(&raw, "policies[0].signature", 300, &mut Vec::new()).unwrap()
}

/// The section with the components most of these tests sign: the defaults but for `@query`.
fn three() -> RawRfc9421 {
    RawRfc9421 {
        components: vec!["@method".into(), "@authority".into(), "@path".into()],
        ..RawRfc9421::default()
    }
}

fn default_settings() -> Rfc9421Settings {
    settings(three())
}

fn keys() -> Vec<SigningKey> {
    vec![key("k1", SECRET), key("k2", OTHER)]
}

fn plain_request() -> Request {
    Request::section_2_2("/orders?id=7").header("content-type", "application/json")
}

// ---------------------------------------------------------------------------------------------
// The RFC's examples.

#[test]
fn the_rfc_b_2_5_hmac_example_verifies_and_its_base_is_the_printed_one() {
    let request = Request::rfc().signed(B25_INPUT, B25_SIGNATURE);
    let raw = B25_INPUT.split_once('=').unwrap().1;
    assert_eq!(request.base(&format!("sig-b25={raw}")).unwrap(), B25_BASE);

    let settings = settings(RawRfc9421 {
        components: vec!["date".into(), "@authority".into(), "content-type".into()],
        require_nonce: false,
        window_seconds: Some(MAX_WINDOW),
        ..three()
    });
    let keys = [key("test-shared-secret", &rfc_secret())];
    let verified = request.verify(&settings, &keys, B25_CREATED + 30).unwrap();
    assert_eq!(verified.proof.key_index, 0);
    assert_eq!(verified.created, B25_CREATED);
    assert_eq!(verified.expires, None);
    // No nonce: the replay record is named after the signature bytes.
    let digest = Sha256::digest(
        base64::engine::general_purpose::STANDARD
            .decode("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=")
            .unwrap(),
    );
    assert_eq!(
        verified.replay_id,
        format!("rfc9421:s:{}", hex::encode(&digest[..16]))
    );
}

#[test]
fn sign_reproduces_the_rfc_b_2_5_headers_exactly() {
    let (input, signature) = Request::rfc()
        .with(|m| {
            sign(
                &rfc_secret(),
                "test-shared-secret",
                "sig-b25",
                &["date", "@authority", "content-type"],
                m,
                B25_CREATED,
                None,
                None,
                None,
            )
        })
        .unwrap();
    assert_eq!(input, B25_INPUT);
    assert_eq!(signature, B25_SIGNATURE);
}

#[test]
fn the_rfc_b_2_5_example_is_refused_with_todays_clock_and_the_default_window() {
    let request = Request::rfc().signed(B25_INPUT, B25_SIGNATURE);
    let settings = settings(RawRfc9421 {
        components: vec!["date".into()],
        require_nonce: false,
        ..three()
    });
    let keys = [key("test-shared-secret", &rfc_secret())];
    assert!(matches!(
        request.verify(&settings, &keys, NOW),
        Err(Reject::TimestampOutOfWindow { window: 300, .. })
    ));
}

/// The base lines (without the `@signature-params` line) for `components` of `request`.
fn lines(request: &Request, components: &str) -> Vec<String> {
    let base = request
        .base(&format!("s=({components});created=1"))
        .unwrap();
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    lines.pop();
    lines
}

#[test]
fn derived_components_have_the_values_of_the_rfc_section_2_2_examples() {
    let request = Request::section_2_2("/path?param=value");
    let cases = [
        ("@method", "POST"),
        ("@target-uri", "https://www.example.com/path?param=value"),
        ("@authority", "www.example.com"),
        ("@scheme", "https"),
        ("@request-target", "/path?param=value"),
        ("@path", "/path"),
        ("@query", "?param=value"),
    ];
    for (name, value) in cases {
        assert_eq!(
            lines(&request, &format!("\"{name}\"")),
            [format!("\"{name}\": {value}")],
            "{name}"
        );
    }
    let mut http = request.clone();
    http.scheme = "HTTP".into();
    http.authority = "WWW.Example.com".into();
    assert_eq!(
        lines(&http, r#""@scheme" "@authority""#),
        ["\"@scheme\": http", "\"@authority\": www.example.com"]
    );
}

#[test]
fn the_query_and_its_absence_are_as_in_rfc_section_2_2_7() {
    let q = |path: &str| lines(&Request::section_2_2(path), r#""@query""#);
    assert_eq!(
        q("/path?param=value&foo=bar&baz=batman"),
        ["\"@query\": ?param=value&foo=bar&baz=batman"]
    );
    assert_eq!(q("/path?queryString"), ["\"@query\": ?queryString"]);
    assert_eq!(q("/path"), ["\"@query\": ?"]);
    assert_eq!(q("/path?"), ["\"@query\": ?"]);
    // An empty path is "/" (RFC 9110 §4.2.3).
    assert_eq!(
        lines(&Request::section_2_2("?a=1"), r#""@path""#),
        ["\"@path\": /"]
    );
}

#[test]
fn query_parameters_are_as_in_rfc_section_2_2_8() {
    let request = Request::section_2_2("/path?param=value&foo=bar&baz=batman&qux=");
    assert_eq!(
        lines(
            &request,
            r#""@query-param";name="baz" "@query-param";name="qux" "@query-param";name="param""#
        ),
        [
            "\"@query-param\";name=\"baz\": batman",
            "\"@query-param\";name=\"qux\": ",
            "\"@query-param\";name=\"param\": value",
        ]
    );
    let request = Request::section_2_2(
        "/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace\
         &fa%C3%A7ade%22%3A%20=something",
    );
    assert_eq!(
        lines(
            &request,
            r#""@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20""#
        ),
        [
            "\"@query-param\";name=\"var\": this%20is%20a%20big%0Amultiline%20value",
            "\"@query-param\";name=\"bar\": with%20plus%20whitespace",
            "\"@query-param\";name=\"fa%C3%A7ade%22%3A%20\": something",
        ]
    );
}

#[test]
fn a_repeated_query_parameter_gives_one_line_per_occurrence_in_order() {
    let request = Request::section_2_2("/p?id=1&x=y&id=2&id");
    assert_eq!(
        lines(&request, r#""@query-param";name="id""#),
        [
            "\"@query-param\";name=\"id\": 1",
            "\"@query-param\";name=\"id\": 2",
            "\"@query-param\";name=\"id\": ",
        ]
    );
    assert_eq!(
        request.base(r#"s=("@query-param";name="nope");created=1"#),
        Err(ABSENT_PARAM)
    );
}

#[test]
fn header_fields_combine_their_lines_and_sf_bs_key_follow_rfc_section_2_1() {
    let request = Request::section_2_2("/")
        .header("example-header", "value, with, lots")
        .header("example-header", " of, commas ")
        .header("example-dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)")
        .header("priority", "u=1,   i");
    assert_eq!(
        lines(&request, r#""example-header""#),
        ["\"example-header\": value, with, lots, of, commas"]
    );
    assert_eq!(
        lines(&request, r#""example-header";bs"#),
        ["\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:"]
    );
    assert_eq!(
        lines(
            &request,
            r#""example-dict";key="a" "example-dict";key="b" "example-dict";key="c""#
        ),
        [
            "\"example-dict\";key=\"a\": 1",
            "\"example-dict\";key=\"b\": 2;x=1;y=2",
            "\"example-dict\";key=\"c\": (a b c)",
        ]
    );
    assert_eq!(
        lines(&request, r#""priority";sf"#),
        ["\"priority\";sf: u=1, i"]
    );
    assert_eq!(
        request.base(r#"s=("example-dict";key="zz");created=1"#),
        Err(ABSENT_MEMBER)
    );
    // Its structured type is not known, so `;sf` cannot be done right.
    assert!(request.base(r#"s=("example-dict";sf);created=1"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// Sign, then verify.

#[test]
fn a_signed_request_verifies_and_names_its_replay_record_after_the_nonce() {
    let request = Signer::default().sign(plain_request());
    let verified = request
        .verify(&default_settings(), &keys(), NOW + 5)
        .unwrap();
    assert_eq!(verified.proof.key_index, 0);
    assert_eq!(verified.created, NOW);
    assert_eq!(verified.replay_id, format!("rfc9421:n:k1:{NONCE}"));
}

/// One way to change a request after it was signed.
type Change = Box<dyn Fn(&mut Request)>;

#[test]
fn tampering_with_any_covered_component_fails() {
    let components = [
        "@method",
        "@authority",
        "@path",
        "@query",
        "@query-param;name=\"id\"",
        "content-type",
        "content-digest",
        "@target-uri",
    ];
    let signer = Signer {
        components: &components,
        ..Signer::default()
    };
    let request = signer.sign(plain_request().header(
        "content-digest",
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
    ));
    let settings = default_settings();
    request.verify(&settings, &keys(), NOW).unwrap();

    let wrong = Err(Reject::WrongSignature { scheme: SCHEME });
    let tampered: Vec<(&str, Change)> = vec![
        ("method", Box::new(|r| r.method = "PUT".into())),
        (
            "authority",
            Box::new(|r| r.authority = "evil.example.com".into()),
        ),
        ("scheme", Box::new(|r| r.scheme = "http".into())),
        ("path", Box::new(|r| r.path = "/orders/x?id=7".into())),
        ("query", Box::new(|r| r.path = "/orders?id=8".into())),
        (
            "query kept, param added",
            Box::new(|r| r.path = "/orders?id=7&id=8".into()),
        ),
        (
            "content-type",
            Box::new(|r| {
                for (n, v) in &mut r.headers {
                    if n == "content-type" {
                        *v = b"text/plain".to_vec();
                    }
                }
            }),
        ),
        (
            "a second content-digest line",
            Box::new(|r| {
                r.headers
                    .push(("content-digest".into(), b"sha-256=:AAAA:".to_vec()))
            }),
        ),
    ];
    for (what, change) in tampered {
        let mut r = request.clone();
        change(&mut r);
        assert_eq!(r.outcome_with(&settings), wrong.clone(), "{what}");
    }
    // The parameters are signed too.
    let (input, signature) = signer.headers(&request);
    let moved = input.replace(&format!("created={NOW}"), &format!("created={}", NOW + 1));
    let r = request.clone().signed(&moved, &signature);
    assert_eq!(r.outcome_with(&settings), wrong);
    let other_nonce = input.replace(NONCE, "n-another-nonce-000");
    let r = request.clone().signed(&other_nonce, &signature);
    assert_eq!(r.outcome_with(&settings), wrong);
    // Each MAC byte matters.
    let mac = signature.split_once('=').unwrap().1;
    for i in 1..mac.len() - 2 {
        let mut bytes = mac.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let changed = format!("sig1={}", String::from_utf8(bytes).unwrap());
        let r = request.clone().signed(&input, &changed);
        assert!(r.verify(&settings, &keys(), NOW).is_err(), "byte {i}");
    }
}

#[test]
fn a_covered_header_that_is_absent_refuses_the_signature() {
    let signer = Signer {
        components: &["@method", "@authority", "@path", "content-type"],
        ..Signer::default()
    };
    let mut request = signer.sign(plain_request());
    request.headers.retain(|(n, _)| n != "content-type");
    assert_eq!(
        request.outcome(),
        Err(Reject::SignatureNotAccepted {
            reason: ABSENT_FIELD
        })
    );
    // And sign refuses to cover it.
    let err = request
        .with(|m| {
            sign(
                SECRET,
                "k1",
                "s",
                &["content-type"],
                m,
                NOW,
                None,
                None,
                None,
            )
        })
        .unwrap_err();
    assert!(
        err.contains("header field the request does not have"),
        "{err}"
    );
}

#[test]
fn sign_refuses_a_component_listed_twice() {
    let err = plain_request()
        .with(|m| {
            sign(
                SECRET,
                "k1",
                "s",
                &["@path", "\"@path\""],
                m,
                NOW,
                None,
                None,
                None,
            )
        })
        .unwrap_err();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn a_covered_value_with_a_line_break_refuses_the_signature() {
    let request = plain_request().header("x-note", "a\nb");
    let err = request
        .with(|m| sign(SECRET, "k1", "s", &["x-note"], m, NOW, None, None, None))
        .unwrap_err();
    assert!(err.contains("control character"), "{err}");
    let signer = Signer {
        components: &["@method", "@authority", "@path", "x-note"],
        ..Signer::default()
    };
    let mut request = signer.sign(plain_request().header("x-note", "ab"));
    for (n, v) in &mut request.headers {
        if n == "x-note" {
            *v = b"a\r\n\"@method\": GET".to_vec();
        }
    }
    assert_eq!(
        request.outcome(),
        Err(Reject::SignatureNotAccepted { reason: CONTROL })
    );
}

#[test]
fn missing_required_components_are_named_as_the_policy_wrote_them() {
    let request = Signer {
        components: &["@method", "@path"],
        ..Signer::default()
    }
    .sign(plain_request());
    let settings = settings(RawRfc9421 {
        components: vec![
            "@method".into(),
            "@authority".into(),
            "@query-param;name=\"id\"".into(),
            "@path".into(),
        ],
        ..three()
    });
    assert_eq!(
        request.outcome_with(&settings),
        Err(Reject::MissingSignedComponents {
            missing: "@authority @query-param;name=\"id\"".into()
        })
    );
}

#[test]
fn components_compare_by_name_and_parameters_in_any_order() {
    let request = Signer {
        components: &["@method", "@authority", "@path", "priority;key=\"u\";sf"],
        ..Signer::default()
    }
    .sign(plain_request().header("priority", "u=1, i"));
    let wants = |component: &str| {
        settings(RawRfc9421 {
            components: vec!["@method".into(), component.into()],
            ..three()
        })
    };
    assert!(request
        .verify(&wants("priority;sf;key=\"u\""), &keys(), NOW)
        .is_ok());
    assert!(request
        .verify(&wants("\"priority\";key=\"u\";sf"), &keys(), NOW)
        .is_ok());
    for other in ["priority", "priority;sf", "priority;key=\"i\""] {
        assert_eq!(
            request
                .verify(&wants(other), &keys(), NOW)
                .map(|v| v.replay_id),
            Err(Reject::MissingSignedComponents {
                missing: other.into()
            }),
            "{other}"
        );
    }
}

#[test]
fn the_configured_label_alone_is_verified() {
    let a = Signer {
        label: "a",
        secret: OTHER,
        key_id: "k1",
        ..Signer::default()
    }
    .headers(&plain_request());
    let b = Signer {
        label: "b",
        ..Signer::default()
    }
    .headers(&plain_request());
    let request =
        plain_request().signed(&format!("{}, {}", a.0, b.0), &format!("{}, {}", a.1, b.1));
    let only = |label: &str| {
        settings(RawRfc9421 {
            label: Some(label.into()),
            ..three()
        })
    };
    assert!(request.verify(&only("b"), &keys(), NOW).is_ok());
    assert_eq!(
        request
            .verify(&only("a"), &keys(), NOW)
            .map(|v| v.replay_id),
        Err(Reject::WrongSignature { scheme: SCHEME })
    );
    assert_eq!(
        request
            .verify(&only("c"), &keys(), NOW)
            .map(|v| v.replay_id),
        Err(Reject::NoSignature {
            header: "Signature-Input",
            scheme: SCHEME
        })
    );
}

/// Signature headers of `plain_request` under a key id the filter does not have (another
/// signer's on the path, say).
fn foreign(label: &str) -> (String, String) {
    Signer {
        label,
        key_id: "unknown",
        ..Signer::default()
    }
    .headers(&plain_request())
}

#[test]
fn without_a_label_the_first_passing_signature_wins_and_else_the_first_refusal_counts() {
    // The first signature is made with a key the filter does not have; the second passes.
    let first = foreign("proxy");
    let second = Signer {
        label: "client",
        key_id: "k2",
        secret: OTHER,
        ..Signer::default()
    }
    .headers(&plain_request());
    let both = plain_request().signed(
        &format!("{}, {}", first.0, second.0),
        &format!("{}, {}", first.1, second.1),
    );
    let verified = both.verify(&default_settings(), &keys(), NOW).unwrap();
    assert_eq!(verified.proof.key_index, 1);
    assert_eq!(verified.replay_id, format!("rfc9421:n:k2:{NONCE}"));

    let expired = Signer {
        label: "late",
        expires: Some(NOW - 1),
        ..Signer::default()
    }
    .headers(&plain_request());
    let neither = plain_request().signed(
        &format!("{}, {}", expired.0, first.0),
        &format!("{}, {}", expired.1, first.1),
    );
    assert_eq!(
        neither.outcome(),
        Err(Reject::SignatureNotAccepted {
            reason: "it has expired"
        })
    );
}

#[test]
fn rotation_picks_the_key_the_keyid_names() {
    for (key_id, secret, index) in [("k1", SECRET, 0), ("k2", OTHER, 1)] {
        let request = Signer {
            key_id,
            secret,
            ..Signer::default()
        }
        .sign(plain_request());
        assert_eq!(
            request
                .verify(&default_settings(), &keys(), NOW)
                .unwrap()
                .proof
                .key_index,
            index
        );
    }
    // The right secret under the other key's id does not verify.
    let request = Signer {
        key_id: "k2",
        secret: SECRET,
        ..Signer::default()
    }
    .sign(plain_request());
    assert_eq!(
        request.outcome(),
        Err(Reject::WrongSignature { scheme: SCHEME })
    );
}

#[test]
fn signature_parameters_are_checked_one_by_one() {
    let settings = settings(RawRfc9421 {
        tag: Some("orders-api".into()),
        window_seconds: Some(60),
        ..three()
    });
    let tagged = Signer {
        tag: Some("orders-api"),
        ..Signer::default()
    };
    let not_accepted = |reason| Err(Reject::SignatureNotAccepted { reason });
    let wrong_tag = not_accepted("its tag is not the one this route expects");
    let window = |skew| {
        Err(Reject::TimestampOutOfWindow {
            skew,
            window: 60,
            what: CREATED,
        })
    };
    // What the signer changes, when the filter checks, and the verdict.
    let cases: Vec<(&str, Signer, u64, Result<(), Reject>)> = vec![
        ("as required", Signer { ..tagged }, NOW, Ok(())),
        (
            "other tag",
            Signer {
                tag: Some("other-api"),
                ..tagged
            },
            NOW,
            wrong_tag.clone(),
        ),
        (
            "no tag",
            Signer {
                tag: None,
                ..tagged
            },
            NOW,
            wrong_tag,
        ),
        (
            "no nonce",
            Signer {
                nonce: None,
                ..tagged
            },
            NOW,
            not_accepted("it has no nonce parameter"),
        ),
        (
            "expired",
            Signer {
                expires: Some(NOW + 10),
                ..tagged
            },
            NOW + 11,
            not_accepted("it has expired"),
        ),
        (
            "expires now",
            Signer {
                expires: Some(NOW + 10),
                ..tagged
            },
            NOW + 10,
            Ok(()),
        ),
        (
            "created too early",
            Signer {
                created: NOW - 61,
                ..tagged
            },
            NOW,
            window(-61),
        ),
        (
            "created too late",
            Signer {
                created: NOW + 61,
                ..tagged
            },
            NOW,
            window(61),
        ),
        (
            "created at the edge",
            Signer {
                created: NOW - 60,
                ..tagged
            },
            NOW,
            Ok(()),
        ),
        (
            "unknown key id",
            Signer {
                key_id: "nobody",
                ..tagged
            },
            NOW,
            Err(Reject::WrongSignature { scheme: SCHEME }),
        ),
    ];
    for (what, signer, now, expected) in cases {
        let got = signer
            .sign(plain_request())
            .verify(&settings, &keys(), now)
            .map(|_| ());
        assert_eq!(got, expected, "{what}");
    }
}

#[test]
fn a_signature_without_a_nonce_passes_where_none_is_required() {
    let settings = settings(RawRfc9421 {
        require_nonce: false,
        ..three()
    });
    let request = Signer {
        nonce: None,
        ..Signer::default()
    }
    .sign(plain_request());
    let verified = request.verify(&settings, &keys(), NOW).unwrap();
    assert!(verified.replay_id.starts_with("rfc9421:s:"));
    assert_eq!(verified.replay_id.len(), "rfc9421:s:".len() + 32);
}

/// A hand-written Signature-Input member for `plain_request`, signed with `SECRET`.
fn hand_signed(params: &str) -> Request {
    let input = format!(r#"sig1=("@method" "@authority" "@path"){params}"#);
    let request = plain_request();
    let base = request.base(&input).unwrap();
    let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
    mac.update(base.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    request.signed(&input, &format!("sig1=:{signature}:"))
}

#[test]
fn hand_written_parameters_are_refused_for_what_they_are() {
    let check = |params: &str| hand_signed(params).outcome();
    let good = format!(r#";created={NOW};keyid="k1";nonce="{NONCE}""#);
    assert!(check(&good).is_ok());
    assert!(check(&format!(r#"{good};alg="hmac-sha256""#)).is_ok());
    let not_accepted = |reason| Err(Reject::SignatureNotAccepted { reason });
    // Only registered parameters: an unknown one could end the base in bytes that another
    // scheme under the same secret signs (a reference timestamp and nonce).
    assert_eq!(
        check(&format!(r#"{good};x-extension=?1"#)),
        not_accepted("it has a parameter other than created, expires, nonce, alg, keyid and tag")
    );
    assert_eq!(
        check(&format!(r#"{good};alg="rsa-pss-sha512""#)),
        not_accepted("its alg is not hmac-sha256")
    );
    assert_eq!(
        check(&format!(r#"{good};alg=hmac-sha256"#)),
        not_accepted("its alg is not hmac-sha256")
    );
    assert_eq!(
        check(&format!(r#";keyid="k1";nonce="{NONCE}""#)),
        not_accepted("it has no created parameter")
    );
    assert_eq!(
        check(&format!(r#";created="{NOW}";keyid="k1";nonce="{NONCE}""#)),
        not_accepted("it has no created parameter")
    );
    assert_eq!(
        check(&format!(r#";created=-1;keyid="k1";nonce="{NONCE}""#)),
        not_accepted("it has no created parameter")
    );
    let bad_nonce = not_accepted("its nonce must be a string of 1 to 256 visible ASCII characters");
    for nonce in [
        r#""""#,
        r#""has space""#,
        "token",
        &format!("\"{}\"", "n".repeat(257)),
    ] {
        assert_eq!(
            check(&format!(r#";created={NOW};keyid="k1";nonce={nonce}"#)),
            bad_nonce,
            "{nonce}"
        );
    }
    assert!(check(&format!(
        r#";created={NOW};keyid="k1";nonce="{}""#,
        "n".repeat(256)
    ))
    .is_ok());
    assert_eq!(
        check(&format!(r#";created={NOW};nonce="{NONCE}""#)),
        Err(Reject::WrongSignature { scheme: SCHEME })
    );
    assert_eq!(
        check(&format!(r#";created={NOW};keyid=k1;nonce="{NONCE}""#)),
        Err(Reject::WrongSignature { scheme: SCHEME })
    );
}

#[test]
fn unsupported_or_repeated_components_in_a_signature_are_refused() {
    let settings = default_settings();
    for extra in [
        r#""@status""#,
        r#""@signature-params""#,
        r#""@unknown""#,
        r#""Content-Type""#,
        r#""content-type";tr"#,
        r#""content-type";req"#,
        r#""content-type";sf"#,
        r#""content-type";bs;sf"#,
        r#""@query-param""#,
        r#""@method";x"#,
    ] {
        let input = format!(
            r#"sig1=("@method" "@authority" "@path" {extra});created={NOW};keyid="k1";nonce="{NONCE}""#
        );
        let request = plain_request().signed(&input, "sig1=:AAAA:");
        assert_eq!(
            request.outcome_with(&settings),
            Err(Reject::SignatureNotAccepted {
                reason: "it covers a component edge-warden does not support"
            }),
            "{extra}"
        );
    }
    let input = format!(
        r#"sig1=("@method" "@authority" "@path" "@method");created={NOW};keyid="k1";nonce="{NONCE}""#
    );
    let request = plain_request().signed(&input, "sig1=:AAAA:");
    assert_eq!(
        request.outcome_with(&settings),
        Err(Reject::SignatureNotAccepted {
            reason: "it covers the same component twice"
        })
    );
}

#[test]
fn absent_or_malformed_signature_headers_are_named() {
    let settings = default_settings();
    let verify = |request: &Request| request.outcome_with(&settings);
    let no = |header| {
        Err(Reject::NoSignature {
            header,
            scheme: SCHEME,
        })
    };
    assert_eq!(verify(&plain_request()), no("Signature-Input"));
    let (input, signature) = Signer::default().headers(&plain_request());
    assert_eq!(
        verify(&plain_request().header("signature-input", &input)),
        no("Signature")
    );
    assert_eq!(
        verify(&plain_request().header("signature", &signature)),
        no("Signature-Input")
    );
    assert_eq!(
        verify(&plain_request().signed("", &signature)),
        no("Signature-Input")
    );

    let malformed = |request: Request, header: &str| match verify(&request) {
        Err(Reject::MalformedHeader { header: got, .. }) => assert_eq!(got, header),
        other => panic!("expected malformed {header}: {other:?}"),
    };
    malformed(
        plain_request().signed("sig1=(", &signature),
        "Signature-Input",
    );
    malformed(plain_request().signed(&input, "sig1=:AA"), "Signature");
    malformed(plain_request().signed(&input, "sig2=:AAAA:"), "Signature");
    malformed(plain_request().signed(&input, "sig1=\"AAAA\""), "Signature");
    malformed(
        plain_request().signed("sig1=\"@method\"", &signature),
        "Signature-Input",
    );
    malformed(
        plain_request().signed("sig1=(\"@method\" 1);created=1", "sig1=:AAAA:"),
        "Signature-Input",
    );
    let many: Vec<String> = (0..9).map(|i| format!("s{i}=();created=1")).collect();
    malformed(
        plain_request().signed(&many.join(", "), &signature),
        "Signature-Input",
    );
    let components: Vec<String> = (0..33).map(|i| format!("\"x-h{i}\"")).collect();
    malformed(
        plain_request().signed(
            &format!("sig1=({});created=1", components.join(" ")),
            &signature,
        ),
        "Signature-Input",
    );
}

#[test]
fn signature_headers_sent_as_several_lines_are_combined() {
    let first = foreign("a");
    let second = Signer {
        label: "b",
        ..Signer::default()
    }
    .headers(&plain_request());
    let request = plain_request()
        .header("signature-input", &first.0)
        .header("signature", &first.1)
        .header("signature-input", &second.0)
        .header("signature", &second.1);
    assert!(request.verify(&default_settings(), &keys(), NOW).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Configuration.

fn compile_err(raw: RawRfc9421) -> ConfigError {
    compile(&raw, "policies[2].signature", 300, &mut Vec::new()).unwrap_err()
}

fn with_components(components: &[&str]) -> RawRfc9421 {
    RawRfc9421 {
        components: components.iter().map(|c| c.to_string()).collect(),
        ..three()
    }
}

#[test]
fn unsupported_components_in_the_configuration_name_their_field() {
    for bad in [
        "@status",
        "@signature-params",
        "@unknown",
        "@query-param",
        "@query-param;name=1",
        "@query-param;name=\"a\";x",
        "@method;req",
        "Content-Type",
        "content type",
        "content-type;tr",
        "content-type;sf",
        "content-type;bs;key=\"a\"",
        "content-type;sf=?0",
        "content-type;x",
        "content-type;key=a",
        "content-type;",
        "",
        "café",
    ] {
        let e = compile_err(with_components(&["@path", bad]));
        assert_eq!(e.field, "policies[2].signature.components[1]", "{bad}: {e}");
    }
    let e = compile_err(with_components(&["@path", "content-type;sf"]));
    assert!(e.reason.contains("structured type"), "{e}");
    let e = compile_err(with_components(&["@path", "\"@path\""]));
    assert!(e.reason.contains("same component"), "{e}");
    let e = compile_err(with_components(&[]));
    assert_eq!(e.field, "policies[2].signature.components");
}

#[test]
fn supported_components_compile() {
    settings(with_components(&[
        "@method",
        "@target-uri",
        "@authority",
        "@scheme",
        "@request-target",
        "@path",
        "@query",
        "@query-param;name=\"id\"",
        "\"@query-param\";name=\"page\"",
        "content-type",
        "content-digest;sf",
        "example-dict;key=\"a\"",
        "x-binary;bs",
        "priority;sf;key=\"u\"",
    ]));
}

#[test]
fn label_tag_and_window_are_checked() {
    let e = compile_err(RawRfc9421 {
        label: Some("Sig1".into()),
        ..three()
    });
    assert_eq!(e.field, "policies[2].signature.label");
    let e = compile_err(RawRfc9421 {
        tag: Some("tag\u{7f}".into()),
        ..three()
    });
    assert_eq!(e.field, "policies[2].signature.tag");
    for window in [0, MAX_WINDOW + 1] {
        let e = compile_err(RawRfc9421 {
            window_seconds: Some(window),
            ..three()
        });
        assert_eq!(e.field, "policies[2].signature.window_seconds");
    }
    assert_eq!(default_settings().window_seconds(), 300);

    let mut warnings = Vec::new();
    let long = compile(
        &RawRfc9421 {
            window_seconds: Some(MAX_WINDOW),
            ..three()
        },
        "policies[2].signature",
        300,
        &mut warnings,
    )
    .unwrap();
    assert_eq!(long.window_seconds(), MAX_WINDOW);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("policies[2].signature.window_seconds"));
    assert!(warnings[0].contains("replay store"));
    let mut warnings = Vec::new();
    compile(
        &RawRfc9421 {
            window_seconds: Some(3600),
            ..three()
        },
        "s",
        300,
        &mut warnings,
    )
    .unwrap();
    assert!(warnings.is_empty());
}

#[test]
fn the_raw_section_reads_from_json_with_its_defaults_and_refuses_unknown_fields() {
    let raw: RawRfc9421 = serde_json::from_str("{}").unwrap();
    assert_eq!(raw.components, ["@method", "@authority", "@path", "@query"]);
    assert!(raw.require_nonce);
    assert!(raw.label.is_none() && raw.tag.is_none() && raw.window_seconds.is_none());
    assert!(serde_json::from_str::<RawRfc9421>(r#"{"component": []}"#).is_err());
}

#[test]
fn rejections_never_carry_the_nonce_the_signature_or_the_secret() {
    let request = Signer {
        expires: Some(NOW - 1),
        ..Signer::default()
    }
    .sign(plain_request());
    let (_, signature) = Signer::default().headers(&plain_request());
    let why = request
        .verify(&default_settings(), &keys(), NOW)
        .unwrap_err();
    let detail = why.detail();
    assert!(!detail.contains(NONCE));
    assert!(!detail.contains(signature.split_once('=').unwrap().1));
    assert!(!detail.contains(std::str::from_utf8(SECRET).unwrap()));
}

#[test]
fn two_signatures_by_our_keys_are_refused_so_dropping_one_cannot_replay_the_other() {
    // Each with its own nonce: only the one that passed would be claimed, and a copy with it
    // dropped would pass on the other.
    let a = Signer {
        label: "a",
        ..Signer::default()
    }
    .headers(&plain_request());
    let b = Signer {
        label: "b",
        key_id: "k2",
        secret: OTHER,
        nonce: Some("another-nonce-0123456789"),
        ..Signer::default()
    }
    .headers(&plain_request());
    let both = plain_request().signed(&format!("{}, {}", a.0, b.0), &format!("{}, {}", a.1, b.1));
    assert!(matches!(
        both.outcome(),
        Err(Reject::MalformedHeader {
            header: "Signature-Input",
            ..
        })
    ));
    // Someone else's signature beside ours is fine.
    let theirs = foreign("proxy");
    let mixed = plain_request().signed(
        &format!("{}, {}", theirs.0, a.0),
        &format!("{}, {}", theirs.1, a.1),
    );
    assert!(mixed.outcome().is_ok());
}

#[test]
fn a_wrong_mac_is_not_hidden_behind_another_signatures_refusal() {
    // A foreign signature that fails early (no created) first, ours with a wrong MAC second:
    // the wrong MAC is what is answered, so the guess counts toward the lockout.
    let early = r#"x=("@method");keyid="unknown""#;
    let ours = Signer {
        label: "guess",
        secret: OTHER,
        ..Signer::default()
    }
    .headers(&plain_request());
    let request = plain_request().signed(
        &format!("{early}, {}", ours.0),
        &format!("x=:AAAA:, {}", ours.1),
    );
    let refusal = request.outcome().unwrap_err();
    assert_eq!(refusal, Reject::WrongSignature { scheme: SCHEME });
    assert!(refusal.is_auth_failure());
}

#[test]
fn an_oversized_signature_input_is_refused_before_it_is_parsed() {
    let long = format!(
        r#"sig1=("@method");keyid="k1";nonce="{}""#,
        "n".repeat(MAX_FIELD_BYTES)
    );
    let request = plain_request().signed(&long, "sig1=:AAAA:");
    assert!(matches!(
        request.outcome(),
        Err(Reject::MalformedHeader {
            header: "Signature-Input",
            ..
        })
    ));
}
