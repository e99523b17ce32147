//! RFC 9421 HTTP Message Signatures, with the one symmetric algorithm the RFC registers:
//! `hmac-sha256` over the signature base (§3.3.3).
//!
//! A client lists what it signs in `Signature-Input` (a Dictionary: label → inner list of
//! component identifiers, with `created`, `keyid`, `nonce`... as parameters) and sends the MAC in
//! `Signature` under the same label. The verifier rebuilds the signature base (§2.5) from the
//! request as it arrived — one `"<identifier>": <value>` line per covered component, then the
//! `@signature-params` line — and compares MACs. Every structured field is parsed and serialised
//! by `sfv`: the base must hold the canonical serialisation, and a hand-written parser would be
//! one more place for the signer and the verifier to disagree.
//!
//! Pure: the request comes in as a [`Message`], the clock as `now`, the keys as a slice. The body
//! is not read here; a signature that covers `content-digest` says so in [`Verified`], and the
//! engine checks the body against that header as it streams (`crate::checks::digest`).

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sfv::{BareItem, FieldType, Item, KeyRef, ListEntry, Parameters, Parser, StringRef};
use sha2::{Digest, Sha256};

use crate::checks::signature::{check_window_of, SignatureVerified, SigningKey};
use crate::config::{err, ConfigError};
use crate::headers::{trim_ows, RequestHeaders};
use crate::reject::Reject;

type HmacSha256 = Hmac<Sha256>;

/// What a route expects, for the details of `missing_signature` and `invalid_signature`.
pub const SCHEME: &str = "an RFC 9421 HTTP message signature (hmac-sha256)";
/// The only `alg` accepted (RFC 9421 §3.3.3).
pub const ALGORITHM: &str = "hmac-sha256";
/// What a stale `created` is called in the detail.
pub const CREATED: &str = "signature's created parameter";
/// At most this many labels in `Signature-Input` or `Signature`: each candidate may cost an HMAC,
/// and a client has no reason to send more than a few (one per signer on the path).
pub const MAX_LABELS: usize = 8;
/// Longest Signature-Input or Signature (all its lines combined), in bytes.
pub const MAX_FIELD_BYTES: usize = 8192;
/// The signature parameters RFC 9421 registers (§6.3); any other is refused.
const PARAMETERS: [&str; 6] = ["created", "expires", "nonce", "alg", "keyid", "tag"];
/// At most this many components in one signature; each costs a pass over the headers.
pub const MAX_COMPONENTS: usize = 32;
/// Longest nonce accepted, in characters.
pub const NONCE_MAX: usize = 256;
/// Largest `window_seconds`: ten years, so that a conformance test can accept the RFC's own
/// vector (created in 2021). Anything above an hour only makes sense with a nonce.
pub const MAX_WINDOW: u64 = 315_360_000;

/// Header fields `;sf` may re-serialise: the registered structured fields whose type is known.
/// `;sf` on any other field cannot be done right (the type is not in the message), so it is
/// refused instead of guessed.
const STRUCTURED_FIELDS: &[(&str, SfType)] = &[
    ("accept-signature", SfType::Dictionary),
    ("cache-status", SfType::List),
    ("cdn-cache-control", SfType::Dictionary),
    ("client-cert", SfType::Item),
    ("client-cert-chain", SfType::List),
    ("content-digest", SfType::Dictionary),
    ("priority", SfType::Dictionary),
    ("proxy-status", SfType::List),
    ("repr-digest", SfType::Dictionary),
    ("signature", SfType::Dictionary),
    ("signature-input", SfType::Dictionary),
    ("want-content-digest", SfType::Dictionary),
    ("want-repr-digest", SfType::Dictionary),
];

// ---------------------------------------------------------------------------------------------
// Configuration: a policy's `signature` section when it asks for RFC 9421.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRfc9421 {
    /// Component identifiers the signature must cover, as written in Signature-Input without
    /// quotes around the name: "@method", "@authority", "@path", "content-digest",
    /// "@query-param;name=\"id\"" ... Default: ["@method", "@authority", "@path"].
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Only the signature with this label is verified; absent: any label whose signature passes.
    #[serde(default)]
    pub label: Option<String>,
    /// When set, the signature's `tag` parameter must equal it (RFC 9421 §2.3: an application
    /// tag, so a signature made for one purpose is not accepted for another).
    #[serde(default)]
    pub tag: Option<String>,
    /// Whether the signature must carry a `nonce` (default true): without one, a replay is
    /// recognised only by the signature bytes.
    #[serde(default = "default_true")]
    pub require_nonce: bool,
    /// Allowed |created - now| in seconds; default: the top-level `signature.window_seconds`.
    #[serde(default)]
    pub window_seconds: Option<u64>,
}

impl Default for RawRfc9421 {
    fn default() -> Self {
        Self {
            components: default_components(),
            label: None,
            tag: None,
            require_nonce: true,
            window_seconds: None,
        }
    }
}

fn default_components() -> Vec<String> {
    // The query too: a signature over `/transfer` alone would also hold for `?to=someone-else`.
    ["@method", "@authority", "@path", "@query"]
        .iter()
        .map(|c| c.to_string())
        .collect()
}

fn default_true() -> bool {
    true
}

/// The compiled section: every required component parsed and known to be supported.
#[derive(Debug, Clone)]
pub struct Rfc9421Settings {
    required: Vec<Required>,
    label: Option<String>,
    tag: Option<String>,
    require_nonce: bool,
    window_seconds: u64,
}

/// One component the policy requires: as the operator wrote it (for the rejection detail) and
/// parsed (for comparing with what a signature covers).
#[derive(Debug, Clone)]
struct Required {
    written: String,
    item: Item,
}

/// Compiles the section at `field` (e.g. `policies[2].signature`). `default_window` is the
/// top-level `signature.window_seconds`, already checked.
pub(crate) fn compile(
    raw: &RawRfc9421,
    field: &str,
    default_window: u64,
    warnings: &mut Vec<String>,
) -> Result<Rfc9421Settings, ConfigError> {
    if raw.components.is_empty() {
        return Err(err(
            format!("{field}.components"),
            "must name at least one component, e.g. [\"@method\", \"@authority\", \"@path\"]",
        ));
    }
    if raw.components.len() > MAX_COMPONENTS {
        return Err(err(
            format!("{field}.components"),
            format!(
                "at most {MAX_COMPONENTS} components, got {}",
                raw.components.len()
            ),
        ));
    }
    let mut required: Vec<Required> = Vec::with_capacity(raw.components.len());
    for (i, written) in raw.components.iter().enumerate() {
        let at = format!("{field}.components[{i}]");
        let item = parse_identifier(written).map_err(|reason| err(&at, reason))?;
        classify(&item).map_err(|reason| err(&at, format!("`{written}` {reason}")))?;
        if let Some(first) = required.iter().find(|r| same_component(&r.item, &item)) {
            return Err(err(
                &at,
                format!(
                    "`{written}` names the same component as `{}`",
                    first.written
                ),
            ));
        }
        required.push(Required {
            written: written.clone(),
            item,
        });
    }
    if let Some(label) = &raw.label {
        if KeyRef::from_str(label).is_err() {
            return Err(err(
                format!("{field}.label"),
                "must be a structured-field key: lowercase letters, digits, `_`, `-`, `.` and \
                 `*`, starting with a letter or `*`",
            ));
        }
    }
    if let Some(tag) = &raw.tag {
        if StringRef::from_str(tag).is_err() {
            return Err(err(
                format!("{field}.tag"),
                "must be printable ASCII (a structured-field string)",
            ));
        }
    }
    let window_seconds = match raw.window_seconds {
        None => default_window,
        Some(w) if (1..=MAX_WINDOW).contains(&w) => w,
        Some(w) => {
            return Err(err(
                format!("{field}.window_seconds"),
                format!("must be between 1 and {MAX_WINDOW} seconds (ten years), got {w}"),
            ))
        }
    };
    if window_seconds > 3600 {
        warnings.push(format!(
            "{field}.window_seconds is {window_seconds} s: a replayed signature is refused only \
             while the replay store still holds its record, which may be for less time than that"
        ));
    }
    Ok(Rfc9421Settings {
        required,
        label: raw.label.clone(),
        tag: raw.tag.clone(),
        require_nonce: raw.require_nonce,
        window_seconds,
    })
}

impl Rfc9421Settings {
    /// [`compile`] for callers outside the configuration (the fuzz targets, tools): warnings
    /// are dropped and errors name the section `signature`.
    pub fn from_raw(raw: &RawRfc9421, default_window: u64) -> Result<Self, ConfigError> {
        compile(raw, "signature", default_window, &mut Vec::new())
    }

    pub fn window_seconds(&self) -> u64 {
        self.window_seconds
    }
}

/// Parses a component identifier as a policy or the CLI writes it: the name unquoted, then its
/// parameters (`@query-param;name="id"`, `example-dict;key="a"`). A quoted name is accepted too.
fn parse_identifier(written: &str) -> Result<Item, String> {
    let quoted;
    let text = if written.starts_with('"') {
        written
    } else {
        let (name, params) = match written.find(';') {
            Some(i) => written.split_at(i),
            None => (written, ""),
        };
        let name = StringRef::from_str(name)
            .map_err(|_| format!("`{written}`: the name must be printable ASCII"))?;
        quoted = sfv::ItemSerializer::new().bare_item(name).finish() + params;
        &quoted
    };
    let item: Item = Parser::new(text).parse().map_err(|_| {
        format!(
            "`{written}` is not a component identifier: a name, then `;parameter` or \
             `;parameter=\"value\"` (RFC 9421 §2)"
        )
    })?;
    if item.bare_item.as_string().is_none() {
        return Err(format!("`{written}`: the name must be a string"));
    }
    Ok(item)
}

// ---------------------------------------------------------------------------------------------
// Component identifiers: which ones are supported, and how two are compared.

/// A component edge-warden knows how to produce a value for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Method,
    TargetUri,
    Authority,
    Scheme,
    RequestTarget,
    Path,
    Query,
    /// The parameter name, percent-encoded as the identifier carries it (§2.2.8).
    QueryParam(String),
    Field {
        name: String,
        form: Form,
    },
}

/// How a header field's value enters the base (§2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// The field lines, trimmed, joined with ", ".
    Plain,
    /// `;sf`: parsed as its known structured type and serialised again.
    Structured(SfType),
    /// `;key="k"`: the field parsed as a Dictionary, member `k` serialised.
    Member(String),
    /// `;bs`: each field line as a byte sequence.
    ByteSequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SfType {
    Dictionary,
    List,
    Item,
}

fn component_name(item: &Item) -> Option<&str> {
    item.bare_item.as_string().map(StringRef::as_str)
}

/// Same name and the same parameters, in any order (§2: parameters are part of the identifier,
/// but their order carries no meaning).
fn same_component(a: &Item, b: &Item) -> bool {
    component_name(a) == component_name(b)
        && a.params.len() == b.params.len()
        && a.params.iter().all(|(k, v)| b.params.get(k) == Some(v))
}

fn flag(params: &Parameters, key: &str) -> Result<bool, &'static str> {
    match params.get(key) {
        None => Ok(false),
        Some(BareItem::Boolean(true)) => Ok(true),
        Some(_) => Err("has a flag parameter with a value (write `;sf` or `;bs` alone)"),
    }
}

/// What a component identifier means, or why it is not supported. Shared by the configuration
/// (which refuses at load time) and verification (which refuses the signature).
fn classify(item: &Item) -> Result<Kind, &'static str> {
    let name = component_name(item).ok_or("is not a quoted component name")?;
    let params = &item.params;
    if let Some(derived) = name.strip_prefix('@') {
        let kind = match derived {
            "method" => Kind::Method,
            "target-uri" => Kind::TargetUri,
            "authority" => Kind::Authority,
            "scheme" => Kind::Scheme,
            "request-target" => Kind::RequestTarget,
            "path" => Kind::Path,
            "query" => Kind::Query,
            "query-param" => {
                let wanted = match params.get("name") {
                    Some(BareItem::String(s)) if params.len() == 1 => s.as_str().to_string(),
                    _ => return Err("needs exactly one parameter, `name` (a string)"),
                };
                return Ok(Kind::QueryParam(wanted));
            }
            "status" => return Err("is a response component; requests have no status"),
            "signature-params" => {
                return Err("cannot be covered: it is the signature's own last line")
            }
            _ => return Err("is not a derived component edge-warden supports"),
        };
        if !params.is_empty() {
            return Err("takes no parameters");
        }
        return Ok(kind);
    }
    let token = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if !token {
        return Err("is not a lowercase header field name");
    }
    if params.contains_key("req") || params.contains_key("tr") {
        return Err(
            "uses `req` or `tr`, which edge-warden does not support (requests only, no \
                    trailers)",
        );
    }
    if params
        .keys()
        .any(|k| !matches!(k.as_str(), "sf" | "bs" | "key"))
    {
        return Err("has a parameter other than `sf`, `bs` and `key`");
    }
    let sf = flag(params, "sf")?;
    let bs = flag(params, "bs")?;
    let key = match params.get("key") {
        None => None,
        Some(BareItem::String(s)) => Some(s.as_str().to_string()),
        Some(_) => return Err("has a `key` parameter that is not a string"),
    };
    if bs && (sf || key.is_some()) {
        return Err("combines `bs` with `sf` or `key` (RFC 9421 §2.1.3 forbids it)");
    }
    let form = if bs {
        Form::ByteSequence
    } else if let Some(key) = key {
        // `key` means the field is a Dictionary; `sf` with it adds nothing.
        Form::Member(key)
    } else if sf {
        let known = STRUCTURED_FIELDS.iter().find(|(n, _)| *n == name);
        match known {
            Some((_, ty)) => Form::Structured(*ty),
            None => {
                return Err(
                    "uses `sf` on a field whose structured type edge-warden does not \
                            know (it knows the registered dictionary and list fields such as \
                            content-digest, signature-input, priority, cache-status)",
                )
            }
        }
    } else {
        Form::Plain
    };
    Ok(Kind::Field {
        name: name.to_string(),
        form,
    })
}

// ---------------------------------------------------------------------------------------------
// The request, and the component values taken from it.

/// The request as the signature base needs it. `path` is Envoy's `:path` (path and query, as
/// sent).
pub struct Message<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub headers: &'a RequestHeaders,
}

impl Message<'_> {
    /// `:path` without a fragment (Envoy normally strips it; if one got through it is not part
    /// of the target URI).
    fn target(&self) -> &str {
        self.path.split('#').next().unwrap_or_default()
    }

    fn path_and_query(&self) -> (&str, Option<&str>) {
        match self.target().split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.target(), None),
        }
    }
}

/// Why a covered component has no value in this request.
const ABSENT_FIELD: &str = "it covers a header field the request does not have";
const ABSENT_MEMBER: &str = "it covers a dictionary member the header field does not have";
const ABSENT_PARAM: &str = "it covers a query parameter the request does not have";
const BAD_STRUCTURE: &str = "it covers a field with `sf` or `key` that does not parse as its \
                             structured type";
const CONTROL: &str = "a component it covers holds a line break or another control character";

/// The value lines of one component (several only for a repeated query parameter).
fn values(kind: &Kind, message: &Message) -> Result<Vec<Vec<u8>>, &'static str> {
    let one = |v: String| Ok(vec![v.into_bytes()]);
    match kind {
        Kind::Method => one(message.method.to_string()),
        Kind::Authority => one(message.authority.to_ascii_lowercase()),
        Kind::Scheme => one(message.scheme.to_ascii_lowercase()),
        Kind::TargetUri => {
            let target = message.target();
            // `OPTIONS *` has no path in its target URI.
            let target = if target.starts_with('/') { target } else { "" };
            one(format!(
                "{}://{}{target}",
                message.scheme.to_ascii_lowercase(),
                message.authority.to_ascii_lowercase()
            ))
        }
        Kind::RequestTarget => one(message.path.to_string()),
        Kind::Path => {
            let (path, _) = message.path_and_query();
            one(if path.is_empty() { "/" } else { path }.to_string())
        }
        Kind::Query => {
            let (_, query) = message.path_and_query();
            one(format!("?{}", query.unwrap_or_default()))
        }
        Kind::QueryParam(wanted) => {
            let (_, query) = message.path_and_query();
            let found: Vec<Vec<u8>> = form_pairs(query.unwrap_or_default())
                .filter(|(name, _)| name == wanted)
                .map(|(_, value)| value.into_bytes())
                .collect();
            if found.is_empty() {
                return Err(ABSENT_PARAM);
            }
            Ok(found)
        }
        Kind::Field { name, form } => field_value(message.headers, name, form).map(|v| vec![v]),
    }
}

fn field_value(headers: &RequestHeaders, name: &str, form: &Form) -> Result<Vec<u8>, &'static str> {
    if *form == Form::ByteSequence {
        let mut lines = Vec::new();
        for (n, v) in headers.iter() {
            if n.eq_ignore_ascii_case(name) {
                lines.push(sfv::ItemSerializer::new().bare_item(trim_ows(v)).finish());
            }
        }
        if lines.is_empty() {
            return Err(ABSENT_FIELD);
        }
        return Ok(lines.join(", ").into_bytes());
    }
    let value = headers.combined(name).ok_or(ABSENT_FIELD)?;
    let parser = Parser::new(&value);
    let serialised = match form {
        Form::Plain | Form::ByteSequence => return Ok(value),
        Form::Member(key) => {
            let dict: sfv::Dictionary = parser.parse().map_err(|_| BAD_STRUCTURE)?;
            let member = dict.get(key.as_str()).ok_or(ABSENT_MEMBER)?;
            let mut ser = sfv::ListSerializer::new();
            ser.members(std::iter::once(member));
            ser.finish()
        }
        Form::Structured(SfType::Dictionary) => parser
            .parse::<sfv::Dictionary>()
            .map_err(|_| BAD_STRUCTURE)?
            .serialize(),
        Form::Structured(SfType::List) => parser
            .parse::<sfv::List>()
            .map_err(|_| BAD_STRUCTURE)?
            .serialize(),
        Form::Structured(SfType::Item) => Some(
            parser
                .parse::<Item>()
                .map_err(|_| BAD_STRUCTURE)?
                .serialize(),
        ),
    };
    // An empty dictionary or list serialises to nothing (RFC 9651 §4.1).
    Ok(serialised.unwrap_or_default().into_bytes())
}

/// The query's name/value pairs as RFC 9421 §2.2.8 wants them: parsed as
/// application/x-www-form-urlencoded (WHATWG URL §5.1: split on `&`, first `=`, `+` is a space,
/// percent-decode, UTF-8 with replacement), then each name and value percent-encoded again with
/// the form-urlencoded set, but a space as `%20` rather than `+`.
fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (reencode(name), reencode(value))
    })
}

fn reencode(raw: &str) -> String {
    let decoded = percent_decode(raw.as_bytes());
    let text = String::from_utf8_lossy(&decoded);
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        // What the form-urlencoded percent-encode set leaves alone (WHATWG URL §1.3).
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let high = input.get(i + 1).copied().and_then(hex);
            let low = input.get(i + 2).copied().and_then(hex);
            if let (Some(h), Some(l)) = (high, low) {
                // Both are hex digits, so this is below 256.
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The signature base (§2.5).

/// The signature base for the inner list `entry` (from Signature-Input, or built by [`sign`]).
/// Components that cannot be produced fail with a fixed reason.
fn signature_base(entry: &ListEntry, message: &Message) -> Result<Vec<u8>, &'static str> {
    let ListEntry::InnerList(list) = entry else {
        return Err("its Signature-Input member is not an inner list");
    };
    let mut base = Vec::new();
    for item in &list.items {
        let kind = classify(item)?;
        let identifier = item.serialize();
        for value in values(&kind, message)? {
            // A line break inside a value would let one base stand for another message.
            if value
                .iter()
                .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
            {
                return Err(CONTROL);
            }
            base.extend_from_slice(identifier.as_bytes());
            base.extend_from_slice(b": ");
            base.extend_from_slice(&value);
            base.push(b'\n');
        }
    }
    let mut params = sfv::ListSerializer::new();
    params.members(std::iter::once(entry));
    base.extend_from_slice(b"\"@signature-params\": ");
    base.extend_from_slice(params.finish().unwrap_or_default().as_bytes());
    Ok(base)
}

fn mac(secret: &[u8], base: &[u8]) -> Option<HmacSha256> {
    // HMAC takes keys of any length, so this does not fail.
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(base);
    Some(mac)
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// A signature that verified, and what the engine needs next.
#[derive(Debug)]
pub struct Verified {
    /// `key_index` is an index into the `keys` slice given to [`verify`].
    pub proof: SignatureVerified,
    pub created: u64,
    pub expires: Option<u64>,
    /// What the replay store claims for this signature: "rfc9421:n:{keyid}:{nonce}" when it has
    /// a nonce, else "rfc9421:s:" + hex of the first 16 bytes of SHA-256(signature bytes).
    pub replay_id: String,
}

fn malformed(header: &'static str, reason: &'static str) -> Reject {
    Reject::MalformedHeader { header, reason }
}

fn not_accepted(reason: &'static str) -> Reject {
    Reject::SignatureNotAccepted { reason }
}

/// Parses the field `name` (every line, combined) as a Dictionary. Absent or empty: the request
/// is not signed.
fn dictionary(
    headers: &RequestHeaders,
    name: &str,
    display: &'static str,
) -> Result<sfv::Dictionary, Reject> {
    let missing = Reject::NoSignature {
        header: display,
        scheme: SCHEME,
    };
    let value = headers.combined(name).ok_or(missing.clone())?;
    // Bounds the parsing, and the signature bases built from it (a covered `;key` member
    // re-reads its field), whatever Envoy's own header limits are.
    if value.len() > MAX_FIELD_BYTES {
        return Err(malformed(display, "is longer than 8192 bytes"));
    }
    let dict: sfv::Dictionary = Parser::new(&value).parse().map_err(|_| {
        malformed(
            display,
            "is not a valid structured-field dictionary (RFC 8941)",
        )
    })?;
    if dict.is_empty() {
        return Err(missing);
    }
    if dict.len() > MAX_LABELS {
        return Err(malformed(display, "holds more than 8 signatures"));
    }
    Ok(dict)
}

/// One signature the request sent: its label, its Signature-Input member, its MAC.
struct Candidate<'a> {
    entry: &'a ListEntry,
    signature: &'a [u8],
}

/// Verifies the request's RFC 9421 signature against `keys` (selected by `keyid`). With a
/// configured label only that signature counts; otherwise the first that passes, and when none
/// does, the rejection of the one by a key of ours (a wrong MAC counts toward the lockout),
/// else the first one's.
///
/// At most one of the request's signatures may name a key of ours: only the one that passes is
/// claimed in the replay store, so a request carrying two (with two nonces) could otherwise be
/// replayed once more with the first one dropped.
pub fn verify(
    settings: &Rfc9421Settings,
    keys: &[SigningKey],
    message: &Message,
    now: u64,
) -> Result<Verified, Reject> {
    let inputs = dictionary(message.headers, "signature-input", "Signature-Input")?;
    let signatures = dictionary(message.headers, "signature", "Signature")?;
    let mut candidates = Vec::with_capacity(inputs.len());
    for (label, entry) in &inputs {
        if !matches!(entry, ListEntry::InnerList(_)) {
            return Err(malformed(
                "Signature-Input",
                "must map each label to an inner list of covered components",
            ));
        }
        let signature = match signatures.get(label.as_str()) {
            Some(ListEntry::Item(item)) => item.bare_item.as_byte_sequence(),
            _ => None,
        }
        .ok_or(malformed(
            "Signature",
            "must hold a byte sequence for every label in Signature-Input",
        ))?;
        if settings
            .label
            .as_deref()
            .is_none_or(|l| l == label.as_str())
        {
            candidates.push(Candidate { entry, signature });
        }
    }
    let ours = |c: &Candidate| match c.entry {
        ListEntry::InnerList(list) => string(&list.params, "keyid")
            .ok()
            .flatten()
            .is_some_and(|id| keys.iter().any(|k| k.id == id)),
        ListEntry::Item(_) => false,
    };
    if candidates.iter().filter(|c| ours(c)).count() > 1 {
        return Err(malformed(
            "Signature-Input",
            "holds more than one signature by a key of this service; send one",
        ));
    }
    // The refusal of the signature by one of our keys, if there is one, else the first: a
    // wrong MAC is never hidden behind another signature's refusal (it counts toward the
    // lockout).
    let mut refusal = None;
    for candidate in &candidates {
        match check(settings, keys, message, now, candidate) {
            Ok(verified) => return Ok(verified),
            Err(why) if ours(candidate) => refusal = Some(why),
            Err(why) => {
                refusal.get_or_insert(why);
            }
        }
    }
    Err(refusal.unwrap_or(Reject::NoSignature {
        header: "Signature-Input",
        scheme: SCHEME,
    }))
}

fn integer(params: &Parameters, key: &str) -> Result<Option<u64>, ()> {
    match params.get(key) {
        None => Ok(None),
        Some(BareItem::Integer(i)) => u64::try_from(i64::from(*i)).map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn string<'a>(params: &'a Parameters, key: &str) -> Result<Option<&'a str>, ()> {
    match params.get(key) {
        None => Ok(None),
        Some(BareItem::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(()),
    }
}

/// Every rule for one candidate, cheap ones first: the HMAC is computed last.
fn check(
    settings: &Rfc9421Settings,
    keys: &[SigningKey],
    message: &Message,
    now: u64,
    candidate: &Candidate,
) -> Result<Verified, Reject> {
    let ListEntry::InnerList(list) = candidate.entry else {
        return Err(malformed(
            "Signature-Input",
            "must map each label to an inner list of covered components",
        ));
    };
    if list.items.len() > MAX_COMPONENTS {
        return Err(malformed(
            "Signature-Input",
            "covers more than 32 components in one signature",
        ));
    }
    if list.items.iter().any(|i| component_name(i).is_none()) {
        return Err(malformed(
            "Signature-Input",
            "must list each covered component as a quoted string",
        ));
    }
    let missing: Vec<&str> = settings
        .required
        .iter()
        .filter(|r| !list.items.iter().any(|i| same_component(i, &r.item)))
        .map(|r| r.written.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Reject::MissingSignedComponents {
            missing: missing.join(" "),
        });
    }
    for (i, item) in list.items.iter().enumerate() {
        if list
            .items
            .iter()
            .skip(i + 1)
            .any(|other| same_component(item, other))
        {
            return Err(not_accepted("it covers the same component twice"));
        }
        classify(item)
            .map_err(|_| not_accepted("it covers a component edge-warden does not support"))?;
    }
    let params = &list.params;
    // Only the registered parameters: the base then always ends in a quote or a short integer,
    // never in bytes that could be another scheme's timestamp and nonce under the same secret.
    if params.keys().any(|k| !PARAMETERS.contains(&k.as_str())) {
        return Err(not_accepted(
            "it has a parameter other than created, expires, nonce, alg, keyid and tag",
        ));
    }
    match string(params, "alg") {
        Ok(None) => {}
        Ok(Some(alg)) if alg == ALGORITHM => {}
        _ => return Err(not_accepted("its alg is not hmac-sha256")),
    }
    if let Some(tag) = &settings.tag {
        if string(params, "tag") != Ok(Some(tag.as_str())) {
            return Err(not_accepted("its tag is not the one this route expects"));
        }
    }
    let created = match integer(params, "created") {
        Ok(Some(created)) => created,
        _ => return Err(not_accepted("it has no created parameter")),
    };
    check_window_of(created, now, settings.window_seconds, CREATED)?;
    let expires = integer(params, "expires")
        .map_err(|_| not_accepted("its expires parameter is not a unix time"))?;
    if expires.is_some_and(|e| e < now) {
        return Err(not_accepted("it has expired"));
    }
    let nonce = string(params, "nonce")
        .ok()
        .flatten()
        .filter(|n| (1..=NONCE_MAX).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_graphic()));
    if params.contains_key("nonce") && nonce.is_none() {
        return Err(not_accepted(
            "its nonce must be a string of 1 to 256 visible ASCII characters",
        ));
    }
    if settings.require_nonce && nonce.is_none() {
        return Err(not_accepted("it has no nonce parameter"));
    }
    let wrong = Reject::WrongSignature { scheme: SCHEME };
    let keyid = string(params, "keyid")
        .ok()
        .flatten()
        .ok_or(wrong.clone())?;
    let (key_index, key) = keys
        .iter()
        .enumerate()
        .find(|(_, k)| k.id == keyid)
        .ok_or(wrong.clone())?;
    let base = signature_base(candidate.entry, message).map_err(not_accepted)?;
    let mac = mac(key.secret.expose(), &base).ok_or(wrong.clone())?;
    // verify_slice compares in constant time (and refuses another length).
    mac.verify_slice(candidate.signature).map_err(|_| wrong)?;
    let replay_id = match nonce {
        Some(nonce) => format!("rfc9421:n:{keyid}:{nonce}"),
        None => {
            let digest = Sha256::digest(candidate.signature);
            format!(
                "rfc9421:s:{}",
                hex::encode(digest.get(..16).unwrap_or_default())
            )
        }
    };
    Ok(Verified {
        proof: SignatureVerified::by(key_index),
        created,
        expires,
        replay_id,
    })
}

// ---------------------------------------------------------------------------------------------
// Signing: the CLI and the tests, never the filter's request path.

/// For the CLI and the tests: Signature-Input and Signature header values for one signature.
/// Components are written as in the configuration (`@query-param;name="id"`).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    secret: &[u8],
    key_id: &str,
    label: &str,
    components: &[&str],
    message: &Message,
    created: u64,
    expires: Option<u64>,
    nonce: Option<&str>,
    tag: Option<&str>,
) -> Result<(String, String), String> {
    let label = KeyRef::from_str(label)
        .map_err(|_| format!("label `{label}` is not a structured-field key"))?;
    let mut items = Vec::with_capacity(components.len());
    for written in components {
        let item = parse_identifier(written)?;
        let kind = classify(&item).map_err(|reason| format!("`{written}` {reason}"))?;
        if items.iter().any(|other| same_component(other, &item)) {
            return Err(format!("`{written}` is listed twice"));
        }
        // Resolved here too, so that an error names the component.
        values(&kind, message).map_err(|reason| {
            format!(
                "cannot cover `{written}` in this request: {}",
                reason.replacen("it covers", "the signature would cover", 1)
            )
        })?;
        items.push(item);
    }
    let mut params = Parameters::new();
    let key = |k: &str| sfv::Key::from_string(k.to_string()).map_err(|_| format!("bad key {k}"));
    let unix = |t: u64| {
        sfv::Integer::try_from(t)
            .map(BareItem::Integer)
            .map_err(|_| format!("{t} is too large for a structured-field integer"))
    };
    let text = |name: &str, v: &str| {
        sfv::String::from_string(v.to_string())
            .map(BareItem::String)
            .map_err(|_| format!("the {name} must be printable ASCII"))
    };
    params.insert(key("created")?, unix(created)?);
    if let Some(expires) = expires {
        params.insert(key("expires")?, unix(expires)?);
    }
    if let Some(nonce) = nonce {
        params.insert(key("nonce")?, text("nonce", nonce)?);
    }
    params.insert(key("keyid")?, text("key id", key_id)?);
    if let Some(tag) = tag {
        params.insert(key("tag")?, text("tag", tag)?);
    }
    let entry = ListEntry::InnerList(sfv::InnerList::with_params(items, params));
    let base = signature_base(&entry, message)
        .map_err(|reason| format!("cannot sign this request: {reason}"))?;
    let signature = mac(secret, &base)
        .ok_or("HMAC refused the key")?
        .finalize()
        .into_bytes();
    let mut input = sfv::DictSerializer::new();
    input.members(std::iter::once((label, &entry)));
    let mut output = sfv::DictSerializer::new();
    output.bare_item(label, &signature[..]);
    Ok((
        input.finish().unwrap_or_default(),
        output.finish().unwrap_or_default(),
    ))
}

/// The signature base a signature over `components` would have, for the tests (and for
/// debugging a client): exactly the bytes the MAC covers.
#[cfg(test)]
fn base_for(signature_input_member: &str, message: &Message) -> Result<String, &'static str> {
    let dict: sfv::Dictionary = Parser::new(signature_input_member)
        .parse()
        .map_err(|_| "unparseable")?;
    let (_, entry) = dict.first().ok_or("empty")?;
    signature_base(entry, message).map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests;
