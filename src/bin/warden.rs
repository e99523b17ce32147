//! `warden`: the command-line companion of the edge-warden filter.
//!
//! - `warden sign`: the three signature headers for a body, or the signed request itself.
//! - `warden check-config FILE`: the filter's own configuration validation, offline.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use edge_warden::checks::signature::sign;
use edge_warden::config::{parse_raw, Config, MIN_SECRET_LEN};

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
    /// Sign a request: print the X-Request-* headers, or send the request with --url.
    Sign(SignArgs),
    /// Validate a plugin configuration (JSON) exactly as the filter does at load time.
    CheckConfig {
        /// The JSON plugin configuration (the `configuration` value of the Envoy wasm filter).
        file: PathBuf,
        /// Check structure only: do not require the secrets' environment variables to be set.
        #[arg(long)]
        skip_secrets: bool,
    },
}

#[derive(clap::Args)]
struct SignArgs {
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
    /// Unix timestamp in seconds (default: now).
    #[arg(long)]
    timestamp: Option<u64>,
    /// Nonce (default: 32 random hex characters). Use a fresh one for every transmission.
    #[arg(long)]
    nonce: Option<String>,
    /// Send the signed request to this URL and print the response body.
    #[arg(long)]
    url: Option<String>,
    /// HTTP method with --url (default: POST with a body, GET without).
    #[arg(short = 'X', long)]
    method: Option<String>,
    /// Extra header for --url, as `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sign(args) => run_sign(args),
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
    let timestamp = match args.timestamp {
        Some(t) => t,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_string())?
            .as_secs(),
    }
    .to_string();
    let nonce = match args.nonce {
        Some(n) => n,
        None => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| format!("no randomness available: {e}"))?;
            hex::encode(bytes)
        }
    };
    let signature = sign(secret.as_bytes(), &body, &timestamp, &nonce);
    let signed = [
        ("X-Request-Signature", signature),
        ("X-Request-Timestamp", timestamp),
        ("X-Request-Nonce", nonce),
    ];

    let Some(url) = args.url else {
        for (name, value) in &signed {
            println!("{name}: {value}");
        }
        return Ok(ExitCode::SUCCESS);
    };

    let method = args
        .method
        .unwrap_or_else(|| if body.is_empty() { "GET" } else { "POST" }.to_string());
    let mut request = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(&url);
    for (name, value) in &signed {
        request = request.header(*name, value.as_str());
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` must look like `Name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    let request = request
        .body(body)
        .map_err(|e| format!("building the request: {e}"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.run(request).map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading the response: {e}"))?;
    eprintln!("HTTP {}", status.as_u16());
    println!("{text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_check_config(file: &PathBuf, skip_secrets: bool) -> Result<ExitCode, String> {
    let json = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let raw = match parse_raw(&json) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    // With --skip-secrets the secrets' variables read as placeholders of the minimum length, so
    // only the structure is checked; other variables (e.g. an allowed origin) are read as usual.
    let secret_vars: Vec<String> = raw
        .signature
        .secrets
        .iter()
        .map(|s| s.env.clone())
        .collect();
    let placeholder = "x".repeat(MIN_SECRET_LEN);
    let lookup = |name: &str| match std::env::var(name) {
        Err(_) if skip_secrets && secret_vars.iter().any(|v| v == name) => {
            Some(placeholder.clone())
        }
        value => value.ok(),
    };
    match Config::compile(raw, &lookup) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "ok: {} policies ({}), {} signing secrets, replay cache of {} nonces",
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
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}
