//! `warden`: the command-line companion of the edge-warden filter.
//!
//! - `warden sign`: the signature headers for a body (the reference scheme's three, or RFC 9421's
//!   Signature-Input and Signature with a Content-Digest), or the signed request itself.
//! - `warden check-config FILE`: the filter's own configuration validation, offline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use edge_warden::checks::api_key::hash_key;
use edge_warden::checks::digest::{self, Algorithm};
use edge_warden::checks::rfc9421::{self, Message};
use edge_warden::checks::signature::{
    sign, Encoding, RawPolicySignature, RawScheme, RawSecret, MIN_SECRET_LEN,
};
use edge_warden::config::{parse_raw, Config, ConfigError, RawConfig};
use edge_warden::config_locate::{
    locate_field, parse_error_position, plugin_configs, without_json_position, Position,
};
use edge_warden::headers::RequestHeaders;

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Companion CLI of the edge-warden Envoy filter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign a request: print the signature headers, or send the request with --url.
    Sign(Box<SignArgs>),
    /// Generate new API keys and the config entries (hashes only) to paste into `api_keys.keys`.
    Keygen(KeygenArgs),
    /// Hash an existing API key (read from standard input) for `api_keys.keys`.
    HashKey {
        /// Also print a complete config entry with this id.
        #[arg(long)]
        id: Option<String>,
        /// Role for the entry: client or admin.
        #[arg(long, default_value = "client")]
        role: String,
    },
    /// Validate plugin configurations exactly as the filter does at load time: a plugin JSON
    /// file, or every edge-warden filter's configuration in an Envoy YAML file. Errors name the
    /// file's line (`file:line:column: field `x`: reason`).
    CheckConfig {
        /// The plugin configuration JSON, or an Envoy config (`.yaml` / `.yml`) whose edge-warden
        /// wasm filter carries it in `configuration: { "@type": …StringValue, value: | … }`.
        file: PathBuf,
        /// Check structure only: do not require the secrets' environment variables to be set.
        #[arg(long)]
        skip_secrets: bool,
    },
}

/// The signature schemes `warden sign` produces.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scheme {
    /// X-Request-Signature, -Timestamp and -Nonce: HMAC-SHA256 of body ‖ timestamp ‖ nonce.
    Reference,
    /// RFC 9421 Signature-Input and Signature (hmac-sha256), with an RFC 9530 Content-Digest.
    Rfc9421,
}

#[derive(clap::Args)]
struct SignArgs {
    /// Which signature to make.
    #[arg(long, value_enum, default_value_t = Scheme::Reference)]
    scheme: Scheme,
    /// Environment variable that holds the shared secret (the secret itself is never an argument,
    /// so it stays out of shell history and process lists).
    #[arg(long, default_value = "HMAC_SHARED_SECRET")]
    secret_env: String,
    /// Request body, exactly as it will be sent.
    #[arg(short = 'd', long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Read the body from a file (`-` for standard input).
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Unix timestamp in seconds (default: now). Reference scheme; RFC 9421 uses --created.
    #[arg(long)]
    timestamp: Option<u64>,
    /// Nonce (default: 32 random hex characters). Use a fresh one for every transmission.
    #[arg(long, conflicts_with = "no_nonce")]
    nonce: Option<String>,
    /// RFC 9421: sign without a nonce parameter.
    #[arg(long)]
    no_nonce: bool,
    /// Send the signed request to this URL and print the response body.
    #[arg(long, conflicts_with = "sign_for")]
    url: Option<String>,
    /// RFC 9421: the URL the signature is for, when the request is not sent from here (its
    /// scheme, authority, path and query are what @scheme, @authority, @path... cover). With
    /// --scheme rfc9421, one of --url and --for is required.
    #[arg(long = "for", value_name = "URL")]
    sign_for: Option<String>,
    /// RFC 9421: the key id (`keyid`) that names the secret in the filter's configuration.
    #[arg(long)]
    key_id: Option<String>,
    /// RFC 9421: the signature's label in Signature-Input and Signature.
    #[arg(long, default_value = "sig1")]
    label: String,
    /// RFC 9421: the covered components, space-separated, as in the filter's configuration
    /// (e.g. `@method @path @query-param;name="id" content-type`). Header fields other than
    /// Content-Digest must be given with -H.
    #[arg(long, default_value = "@method @authority @path content-digest")]
    components: String,
    /// RFC 9421: the `created` parameter, unix seconds (default: now).
    #[arg(long)]
    created: Option<u64>,
    /// RFC 9421: an `expires` parameter, unix seconds.
    #[arg(long)]
    expires: Option<u64>,
    /// RFC 9421: a `tag` parameter (the application the signature is meant for).
    #[arg(long)]
    tag: Option<String>,
    /// HTTP method of the request --url sends or --for signs (default: POST with a body, GET
    /// without).
    #[arg(short = 'X', long)]
    method: Option<String>,
    /// Extra header, as `Name: value` (repeatable): sent with --url, and covered by an RFC 9421
    /// signature when --components lists it.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Trust the CA certificates in this PEM file, instead of the public roots, for an https
    /// --url (e.g. certs/ca.pem for `make run-tls`).
    #[arg(long, value_name = "FILE", requires = "url")]
    cacert: Option<PathBuf>,
    /// Print the response's status line and headers before the body (like curl -i).
    #[arg(short = 'i', long, requires = "url")]
    include: bool,
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Keys with the admin role (default: client).
    #[arg(long)]
    admin: bool,
    /// How many keys.
    #[arg(short = 'n', default_value_t = 1)]
    count: u32,
    /// Prefix of every key, so keys are recognisable in secret scanners.
    #[arg(long, default_value = "ew_")]
    prefix: String,
    /// Valid from now for this many days (sets not_before and expires_at), e.g. 90 for rotation.
    #[arg(long)]
    valid_days: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sign(args) => run_sign(*args),
        Command::Keygen(args) => run_keygen(args),
        Command::HashKey { id, role } => run_hash_key(id, &role),
        Command::CheckConfig { file, skip_secrets } => run_check_config(&file, skip_secrets),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("warden: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_sign(args: SignArgs) -> Result<ExitCode, String> {
    let secret = std::env::var(&args.secret_env).map_err(|_| {
        format!(
            "environment variable {} is not set; export the shared secret there",
            args.secret_env
        )
    })?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret in {} is {} bytes; edge-warden requires at least {MIN_SECRET_LEN}",
            args.secret_env,
            secret.len()
        ));
    }
    let body = match (&args.data, &args.data_file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading standard input: {e}"))?;
            buf
        }
        (None, Some(p)) => std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?,
        (None, None) => Vec::new(),
    };
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if body.is_empty() { "GET" } else { "POST" }.to_string());
    let signed = match args.scheme {
        Scheme::Reference => sign_reference(&args, secret.as_bytes(), &body)?,
        Scheme::Rfc9421 => sign_rfc9421(&args, secret.as_bytes(), &body, &method)?,
    };

    let Some(url) = args.url else {
        for (name, value) in &signed {
            println!("{name}: {value}");
        }
        return Ok(ExitCode::SUCCESS);
    };

    let mut request = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(&url);
    for (name, value) in &signed {
        request = request.header(*name, value.as_str());
    }
    for (name, value) in extra_headers(&args.headers)? {
        request = request.header(name, value);
    }
    let request = request
        .body(body)
        .map_err(|e| format!("building the request: {e}"))?;
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    if let Some(file) = &args.cacert {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(root_certs(file)?)
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let mut response = agent.run(request).map_err(|e| {
        // rustls's refusal reaches ureq as its own variant or inside an I/O error.
        let certificate = matches!(e, ureq::Error::Rustls(_))
            || e.to_string().contains("invalid peer certificate");
        let hint = match (certificate, &args.cacert) {
            (false, _) => "",
            (true, None) => {
                "; if the server's certificate comes from a private CA, pass it with --cacert \
                 (make run-tls: --cacert certs/ca.pem)"
            }
            (true, Some(_)) => {
                "; check that --cacert holds the CA that issued the server's certificate and \
                 that the URL's host is in it"
            }
        };
        format!("{url}: {e}{hint}")
    })?;
    let status = response.status();
    if args.include {
        println!(
            "{:?} {} {}",
            response.version(),
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        );
        for (name, value) in response.headers() {
            println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
        println!();
    }
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading the response: {e}"))?;
    if !args.include {
        eprintln!("HTTP {}", status.as_u16());
    }
    println!("{text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The -H arguments as (name, value) pairs.
fn extra_headers(headers: &[String]) -> Result<Vec<(&str, &str)>, String> {
    headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(name, value)| (name.trim(), value.trim()))
                .ok_or_else(|| format!("header `{h}` must look like `Name: value`"))
        })
        .collect()
}

/// The system clock in unix seconds.
fn now() -> Result<u64, String> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?
        .as_secs())
}

/// 32 random hex characters, the default nonce of both schemes.
fn fresh_nonce() -> Result<String, String> {
    random_bytes::<16>().map(hex::encode)
}

/// X-Request-Signature, -Timestamp and -Nonce.
fn sign_reference(
    args: &SignArgs,
    secret: &[u8],
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, String> {
    let rfc9421_only = [
        ("--for", args.sign_for.is_some()),
        ("--key-id", args.key_id.is_some()),
        ("--created", args.created.is_some()),
        ("--expires", args.expires.is_some()),
        ("--tag", args.tag.is_some()),
        ("--no-nonce", args.no_nonce),
    ];
    if let Some((flag, _)) = rfc9421_only.iter().find(|(_, given)| *given) {
        return Err(format!("{flag} applies to --scheme rfc9421 only"));
    }
    let timestamp = match args.timestamp {
        Some(t) => t,
        None => now()?,
    }
    .to_string();
    let nonce = match &args.nonce {
        Some(n) => n.clone(),
        None => fresh_nonce()?,
    };
    let signature = sign(secret, body, &timestamp, &nonce);
    Ok(vec![
        ("X-Request-Signature", signature),
        ("X-Request-Timestamp", timestamp),
        ("X-Request-Nonce", nonce),
    ])
}

/// RFC 9421 Signature-Input and Signature over the request --url or --for describes, with a
/// Content-Digest (sha-256) whenever it is covered or there is a body.
fn sign_rfc9421(
    args: &SignArgs,
    secret: &[u8],
    body: &[u8],
    method: &str,
) -> Result<Vec<(&'static str, String)>, String> {
    if args.timestamp.is_some() {
        return Err("--timestamp is for the reference scheme; RFC 9421 uses --created".into());
    }
    let key_id = args.key_id.as_deref().ok_or(
        "--scheme rfc9421 needs --key-id, the id of the secret in the filter's configuration",
    )?;
    let url = args.url.as_deref().or(args.sign_for.as_deref()).ok_or(
        "--scheme rfc9421 needs the URL it signs: --url to send the request, or --for URL",
    )?;
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!(
            "{url}: an absolute URL is needed (scheme and host)"
        ));
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let components: Vec<&str> = args.components.split_whitespace().collect();
    let mut signed = Vec::new();
    let mut headers: Vec<(String, Vec<u8>)> = extra_headers(&args.headers)?
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_bytes().to_vec()))
        .collect();
    let covers_digest = components.iter().any(|c| c.starts_with("content-digest"));
    if covers_digest || !body.is_empty() {
        let value = digest::header_value(body, Algorithm::Sha256);
        headers.push(("content-digest".into(), value.clone().into_bytes()));
        signed.push(("Content-Digest", value));
    }
    let nonce = match (&args.nonce, args.no_nonce) {
        (_, true) => None,
        (Some(n), false) => Some(n.clone()),
        (None, false) => Some(fresh_nonce()?),
    };
    let created = match args.created {
        Some(t) => t,
        None => now()?,
    };
    let headers = RequestHeaders::new(headers);
    let message = Message {
        method,
        scheme,
        authority: authority.as_str(),
        path,
        headers: &headers,
    };
    let (input, signature) = rfc9421::sign(
        secret,
        key_id,
        &args.label,
        &components,
        &message,
        created,
        args.expires,
        nonce.as_deref(),
        args.tag.as_deref(),
    )?;
    signed.push(("Signature-Input", input));
    signed.push(("Signature", signature));
    Ok(signed)
}

/// Every certificate in a PEM file, as the only roots to trust (like curl's --cacert).
fn root_certs(file: &Path) -> Result<ureq::tls::RootCerts, String> {
    let pem =
        std::fs::read(file).map_err(|e| format!("reading --cacert {}: {e}", file.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(format!("--cacert {}: {e}", file.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "--cacert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness available: {e}"))?;
    Ok(bytes)
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}

fn run_keygen(args: KeygenArgs) -> Result<ExitCode, String> {
    use base64::Engine;
    if args.count == 0 || args.count > 1000 {
        return Err("-n must be between 1 and 1000".to_string());
    }
    if !args
        .prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("--prefix may only hold letters, digits, '_' and '-'".to_string());
    }
    let role = if args.admin { "admin" } else { "client" };
    let now = now()?;
    // The raw keys go to standard error, once; standard output is only the paste-ready block,
    // so `warden keygen > entries.json` never writes a key to a file.
    let mut entries = Vec::new();
    eprintln!("API keys (shown once: hand each to its client through a secret store; edge-warden keeps only the hash):");
    for _ in 0..args.count {
        let key = format!(
            "{}{}",
            args.prefix,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
        );
        let id = format!("{role}-{}", hex::encode(random_bytes::<4>()?));
        eprintln!("  {id}  {key}");
        let mut entry = vec![
            ("id", id),
            ("role", role.to_string()),
            ("sha256", hash_key(&key)),
        ];
        if let Some(days) = args.valid_days {
            entry.push(("not_before", rfc3339(now)));
            entry.push(("expires_at", rfc3339(now + days * 86_400)));
        }
        entries.push(entry);
    }
    eprintln!(
        "Paste the \"api_keys\" block (standard output) into the plugin configuration's \
         top-level object, with a comma after it if more members follow; or copy its entry \
         lines into an existing \"keys\" list."
    );
    println!("{}", api_keys_block(&entries));
    Ok(ExitCode::SUCCESS)
}

/// The `"api_keys"` member with one key entry per line, each line ending in a comma but the
/// last, so both the whole block and single lines paste as they are.
fn api_keys_block(entries: &[Vec<(&str, String)>]) -> String {
    let lines: Vec<String> = entries
        .iter()
        .map(|entry| {
            let members: Vec<String> = entry
                .iter()
                .map(|(name, value)| {
                    format!("\"{name}\": {}", serde_json::Value::from(value.as_str()))
                })
                .collect();
            format!("    {{ {} }}", members.join(", "))
        })
        .collect();
    format!(
        "\"api_keys\": {{\n  \"keys\": [\n{}\n  ]\n}}",
        lines.join(",\n")
    )
}

fn run_hash_key(id: Option<String>, role: &str) -> Result<ExitCode, String> {
    if role != "client" && role != "admin" {
        return Err(format!("--role must be client or admin, not {role}"));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the key from standard input: {e}"))?;
    let key = line.trim();
    if key.is_empty() {
        return Err(
            "no key on standard input (e.g. `printenv MY_KEY | warden hash-key`)".to_string(),
        );
    }
    let hash = hash_key(key);
    match id {
        None => println!("{hash}"),
        Some(id) => println!(
            "{}",
            serde_json::json!({"id": id, "sha256": hash, "role": role})
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_check_config(file: &Path, skip_secrets: bool) -> Result<ExitCode, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let name = file.display();
    if !is_envoy_config(file) {
        let place = |p: Position| (format!("{name}:{}", p.line), Some(p));
        let ok = check_plugin_config(&text, skip_secrets, &place, None);
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let configs = plugin_configs(&text).map_err(|e| format!("{name}:{e}"))?;
    if configs.is_empty() {
        return Err(format!(
            "{name}: no edge-warden plugin configuration found; expected an \
             envoy.extensions.filters.http.wasm.v3.Wasm filter with root_id edge_warden (or code \
             …/edge_warden.wasm) whose `configuration` is a google.protobuf.StringValue"
        ));
    }
    let mut all_ok = true;
    for config in &configs {
        let place = |p: Position| {
            let p = config.yaml_position(p);
            // A quoted (not `value: |`) string has no line of its own per JSON line: name only
            // the line where the value starts.
            let column = config.line_for_line.then_some(p);
            (format!("{name}:{}", p.line), column)
        };
        let block = format!("{name}:{}", config.start.line);
        all_ok &= check_plugin_config(&config.json, skip_secrets, &place, Some(&block));
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Envoy configurations are YAML (`.yaml` / `.yml`); anything else is the plugin JSON itself.
fn is_envoy_config(file: &Path) -> bool {
    file.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Every secret's variable with a placeholder value of the minimum length in the form its
/// setting expects (raw, base64, hex, a Standard Webhooks `whsec_`), for `--skip-secrets`.
fn secret_placeholders(raw: &RawConfig) -> Vec<(String, String)> {
    use base64::Engine as _;
    let bytes = "x".repeat(MIN_SECRET_LEN);
    let base64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let value = |s: &RawSecret, standard: bool| match (standard, s.encoding) {
        (true, _) => format!("whsec_{base64}"),
        (false, Encoding::Raw) => bytes.clone(),
        (false, Encoding::Base64) => base64.clone(),
        (false, Encoding::Hex) => hex::encode(&bytes),
    };
    let mut out: Vec<(String, String)> = raw
        .signature
        .secrets
        .iter()
        .map(|s| (s.env.clone(), value(s, false)))
        .collect();
    for policy in &raw.policies {
        let (secrets, standard) = match &policy.signature {
            RawPolicySignature::Scheme(
                RawScheme::Stripe(w) | RawScheme::Github(w) | RawScheme::Slack(w),
            ) => (&w.secrets, false),
            RawPolicySignature::Scheme(RawScheme::StandardWebhooks(w)) => (&w.secrets, true),
            _ => continue,
        };
        out.extend(secrets.iter().map(|s| (s.env.clone(), value(s, standard))));
    }
    out
}

/// Validates one plugin configuration exactly as the filter does at load time (`parse_raw`, then
/// `Config::compile`) and prints the outcome. `place` turns a position in `json` into what
/// precedes each message: `file:line` and, when it is exact, the column. `block` names the
/// configuration on its `ok` and warning lines when a file holds several. Returns whether it passed.
fn check_plugin_config(
    json: &str,
    skip_secrets: bool,
    place: &dyn Fn(Position) -> (String, Option<Position>),
    block: Option<&str>,
) -> bool {
    let prefix = |p: Position| match place(p) {
        (at, Some(exact)) => format!("{at}:{}:", exact.column),
        (at, None) => format!("{at}:"),
    };
    let report = |at: Option<Position>, e: &ConfigError, reason: &str| {
        let at = prefix(at.unwrap_or(Position { line: 1, column: 1 }));
        if e.field.is_empty() {
            eprintln!("{at} {reason}");
        } else {
            eprintln!("{at} field `{}`: {reason}", e.field);
        }
    };
    let raw = match parse_raw(json.as_bytes()) {
        Ok(raw) => raw,
        Err(e) => {
            // serde_json's own position, as data; the reason then loses its embedded-JSON suffix.
            match parse_error_position(json.as_bytes()) {
                Some(p) => report(Some(p), &e, without_json_position(&e.reason, p)),
                None => report(locate_field(json, &e.field), &e, &e.reason),
            }
            if block.is_none() && e.field.is_empty() {
                eprintln!(
                    "(check-config reads a plugin configuration JSON file, or an Envoy config \
                     named *.yaml / *.yml)"
                );
            }
            return false;
        }
    };
    // With --skip-secrets the secrets' variables read as placeholders of the minimum length, so
    // only the structure is checked; other variables (e.g. an allowed origin) are read as usual.
    let placeholders = secret_placeholders(&raw);
    let lookup = |name: &str| match std::env::var(name) {
        Err(_) if skip_secrets => placeholders
            .iter()
            .find(|(var, _)| var == name)
            .map(|(_, value)| value.clone()),
        value => value.ok(),
    };
    match Config::compile(raw, &lookup) {
        Ok(config) => {
            let at = block.map_or(String::new(), |b| format!("{b}: "));
            for warning in &config.warnings {
                eprintln!("{at}warning: {warning}");
            }
            println!(
                "{at}ok: {} policies ({}), {} signing secrets, replay cache of {} nonces",
                config.policies.len(),
                config
                    .policies
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                config.keys.len(),
                config.replay_capacity
            );
            true
        }
        Err(e) => {
            report(locate_field(json, &e.field), &e, &e.reason);
            false
        }
    }
}
