//! Webhook presets: the signatures four common senders put on their deliveries, verified in
//! their exact formats, so a webhook endpoint needs no verification code of its own.
//!
//! | preset              | header(s)                                              | HMAC-SHA256 over          | key                    |
//! |---------------------|--------------------------------------------------------|---------------------------|------------------------|
//! | `stripe`            | `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`    | `{t}.{body}`              | the whole `whsec_...`  |
//! | `github`            | `X-Hub-Signature-256: sha256=<hex>`, `X-GitHub-Delivery`| `{body}`                  | the secret as is       |
//! | `slack`             | `X-Slack-Signature: v0=<hex>`, `X-Slack-Request-Timestamp` | `v0:{ts}:{body}`      | the signing secret     |
//! | `standard_webhooks` | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> ...` | `{id}.{ts}.{body}` | base64 after `whsec_` |
//!
//! Each format puts what the MAC covers before the body, so the MAC starts with that prefix at
//! the headers and is fed the body as it arrives ([`crate::checks::signature::Verifier`]).
//!
//! Replays: a sender's retry is signed anew (a new timestamp), so a second delivery of the same
//! verified MAC within the tolerance is a replay: Stripe and Slack requests are deduplicated on
//! their MAC. Standard Webhooks names each message (`webhook-id`, the same on every retry):
//! deduplicated on that. GitHub signs the body alone, with no timestamp: the only thing that
//! tells deliveries apart is `X-GitHub-Delivery`, deduplicated for `dedupe_seconds`; a captured
//! delivery sent again with a new delivery id verifies, which is all the format allows.

use base64::Engine as _;
use serde::Deserialize;

use crate::checks::signature::{self, Encoding, Keyring, RawSecret, SigningKey};
use crate::config::{err, ConfigError};
use crate::headers::RequestHeaders;
use crate::reject::Reject;
use crate::secret::Secret;

/// Shortest webhook secret accepted, in bytes (after decoding, for Standard Webhooks).
pub const MIN_WEBHOOK_SECRET_LEN: usize = 24;
/// At most this many signatures in one header are compared (each against every key).
pub const MAX_CANDIDATES: usize = 8;

/// The webhook formats edge-warden verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Stripe,
    Github,
    Slack,
    StandardWebhooks,
}

impl Preset {
    /// The header that carries the signature, as the sender spells it.
    pub fn signature_header(self) -> &'static str {
        match self {
            Preset::Stripe => "Stripe-Signature",
            Preset::Github => "X-Hub-Signature-256",
            Preset::Slack => "X-Slack-Signature",
            Preset::StandardWebhooks => "webhook-signature",
        }
    }

    /// What the signature is, for a rejection's detail.
    pub fn describes(self) -> &'static str {
        match self {
            Preset::Stripe => "a Stripe webhook signature (Stripe-Signature: t=...,v1=...)",
            Preset::Github => "a GitHub webhook signature (X-Hub-Signature-256: sha256=...)",
            Preset::Slack => "a Slack request signature (X-Slack-Signature: v0=...)",
            Preset::StandardWebhooks => {
                "a Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)"
            }
        }
    }

    /// The signed timestamp, as the detail of a stale one names it.
    pub fn timestamp_name(self) -> &'static str {
        match self {
            Preset::Stripe => "Stripe-Signature timestamp (t=)",
            Preset::Github => "delivery",
            Preset::Slack => "X-Slack-Request-Timestamp",
            Preset::StandardWebhooks => "webhook-timestamp",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Preset::Stripe => "stripe",
            Preset::Github => "github",
            Preset::Slack => "slack",
            Preset::StandardWebhooks => "standard_webhooks",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// The sender's signing secrets (several during a rotation), each from the environment.
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
    /// Allowed distance between the signed timestamp and Envoy's clock (default 300 s, the
    /// senders' own recommendation). Not for GitHub, whose deliveries carry no timestamp.
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    /// GitHub only: how long a delivery id is remembered, so the same delivery is refused a
    /// second time (default 3600 s).
    #[serde(default)]
    pub dedupe_seconds: Option<u64>,
}

/// A compiled preset.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub preset: Preset,
    pub keys: Vec<SigningKey>,
    pub keyring: Keyring,
    /// Seconds a timestamp may be off (timestamped presets).
    pub tolerance: u64,
    /// Seconds a GitHub delivery id is remembered.
    pub dedupe: u64,
}

pub(crate) fn compile(
    preset: Preset,
    raw: &RawWebhook,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<WebhookSettings, ConfigError> {
    let (tolerance, dedupe) = match preset {
        Preset::Github => {
            if raw.tolerance_seconds.is_some() {
                return Err(err(
                    format!("{field}.tolerance_seconds"),
                    "GitHub deliveries carry no timestamp; use dedupe_seconds",
                ));
            }
            (0, raw.dedupe_seconds.unwrap_or(3600))
        }
        _ => {
            if raw.dedupe_seconds.is_some() {
                return Err(err(
                    format!("{field}.dedupe_seconds"),
                    format!(
                        "only the github preset takes it; {} requests are deduplicated for \
                         tolerance_seconds",
                        preset.name()
                    ),
                ));
            }
            (raw.tolerance_seconds.unwrap_or(300), 0)
        }
    };
    let (name, value) = match preset {
        Preset::Github => ("dedupe_seconds", dedupe),
        _ => ("tolerance_seconds", tolerance),
    };
    if !(1..=86_400).contains(&value) {
        return Err(err(
            format!("{field}.{name}"),
            format!("must be between 1 and 86400 seconds, got {value}"),
        ));
    }
    let secrets_field = format!("{field}.secrets");
    if raw.secrets.is_empty() {
        return Err(err(
            &secrets_field,
            format!("the {} preset needs at least one secret", preset.name()),
        ));
    }
    let mut keys = signature::compile_secrets(&raw.secrets, &secrets_field, env, 1)?;
    for (i, (key, raw)) in keys.iter_mut().zip(&raw.secrets).enumerate() {
        let at = format!("{secrets_field}[{i}].env");
        if preset == Preset::StandardWebhooks {
            if raw.encoding != Encoding::Raw {
                return Err(err(
                    format!("{secrets_field}[{i}].encoding"),
                    "a Standard Webhooks secret is always `whsec_` and base64: leave encoding out",
                ));
            }
            key.secret = standard_key(key.secret.expose()).ok_or_else(|| {
                err(
                    &at,
                    format!(
                        "the secret in {} is not a Standard Webhooks secret (`whsec_` followed \
                         by base64)",
                        raw.env
                    ),
                )
            })?;
        }
        let len = key.secret.expose().len();
        if len < MIN_WEBHOOK_SECRET_LEN {
            return Err(err(
                at,
                format!(
                    "the secret in {} is {len} bytes; at least {MIN_WEBHOOK_SECRET_LEN} are \
                     required",
                    raw.env
                ),
            ));
        }
    }
    let keyring = Keyring::new(&keys);
    Ok(WebhookSettings {
        preset,
        keys,
        keyring,
        tolerance,
        dedupe,
    })
}

/// A Standard Webhooks key: the base64 after `whsec_` (the prefix is optional, as in the
/// reference libraries).
fn standard_key(secret: &[u8]) -> Option<Secret> {
    let text = std::str::from_utf8(secret).ok()?;
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .map(Secret::new)
}

/// A delivery's signature headers, parsed and well-formed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// What the MAC covers before the body.
    pub prefix: Vec<u8>,
    /// The MACs the header carries (several during a sender's rotation).
    pub candidates: Vec<Vec<u8>>,
    /// The signed timestamp, checked against the tolerance (not GitHub).
    pub timestamp: Option<u64>,
    /// The sender's name for this delivery (GitHub, Standard Webhooks): what is deduplicated.
    pub delivery: Option<String>,
}

/// Reads a delivery's signature headers. Absent, duplicated or malformed headers are refused
/// here, before any body is read.
pub fn parse(settings: &WebhookSettings, headers: &RequestHeaders) -> Result<Signed, Reject> {
    let preset = settings.preset;
    let header = preset.signature_header();
    let missing = |header| Reject::NoSignature {
        header,
        scheme: preset.describes(),
    };
    let value = unique(headers, header)?.ok_or(missing(header))?;
    match preset {
        Preset::Stripe => parse_stripe(value),
        Preset::Github => {
            let hex = value
                .strip_prefix(b"sha256=")
                .ok_or(malformed(header, "must be sha256= and 64 hex characters"))?;
            let mac = hex_mac(hex, header, "must be sha256= and 64 hex characters")?;
            let delivery = unique(headers, "X-GitHub-Delivery")?.ok_or(Reject::MissingHeader {
                header: "X-GitHub-Delivery".to_string(),
            })?;
            Ok(Signed {
                prefix: Vec::new(),
                candidates: vec![mac],
                timestamp: None,
                delivery: Some(delivery_id(delivery, "X-GitHub-Delivery")?),
            })
        }
        Preset::Slack => {
            let hex = value
                .strip_prefix(b"v0=")
                .ok_or(malformed(header, "must be v0= and 64 hex characters"))?;
            let mac = hex_mac(hex, header, "must be v0= and 64 hex characters")?;
            let ts_header = "X-Slack-Request-Timestamp";
            let ts = unique(headers, ts_header)?.ok_or(missing(ts_header))?;
            let timestamp = unix_seconds(ts, ts_header)?;
            let mut prefix = b"v0:".to_vec();
            prefix.extend_from_slice(ts);
            prefix.push(b':');
            Ok(Signed {
                prefix,
                candidates: vec![mac],
                timestamp: Some(timestamp),
                delivery: None,
            })
        }
        Preset::StandardWebhooks => {
            let id_header = "webhook-id";
            let ts_header = "webhook-timestamp";
            let id = unique(headers, id_header)?.ok_or(missing(id_header))?;
            let id = delivery_id(id, id_header)?;
            let ts = unique(headers, ts_header)?.ok_or(missing(ts_header))?;
            let timestamp = unix_seconds(ts, ts_header)?;
            let mut candidates = Vec::new();
            for entry in value.split(|b| *b == b' ').filter(|e| !e.is_empty()) {
                // Other versions (`v1a`, asymmetric) are for other verifiers: skipped.
                let Some(encoded) = entry.strip_prefix(b"v1,") else {
                    continue;
                };
                let mac = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
                    .filter(|m| m.len() == 32)
                    .ok_or(malformed(
                        header,
                        "holds a v1 signature that is not base64 of 32 bytes",
                    ))?;
                candidates.push(mac);
            }
            if candidates.is_empty() {
                return Err(malformed(header, "must hold v1,<base64> signatures"));
            }
            too_many(&candidates, header)?;
            let mut prefix = id.as_bytes().to_vec();
            prefix.push(b'.');
            prefix.extend_from_slice(ts);
            prefix.push(b'.');
            Ok(Signed {
                prefix,
                candidates,
                timestamp: Some(timestamp),
                delivery: Some(id),
            })
        }
    }
}

fn parse_stripe(value: &[u8]) -> Result<Signed, Reject> {
    let header = Preset::Stripe.signature_header();
    let form = "must be t=<unix time>,v1=<hex>[,v1=<hex>...]";
    let mut t = None;
    let mut candidates = Vec::new();
    for item in value.split(|b| *b == b',') {
        let item = item.trim_ascii();
        let (name, v) = match item.iter().position(|b| *b == b'=') {
            Some(at) => item.split_at(at),
            None => return Err(malformed(header, form)),
        };
        let v = &v[1..];
        match name {
            b"t" if t.is_none() => t = Some(v),
            b"t" => return Err(malformed(header, "must hold one t=")),
            b"v1" => candidates.push(hex_mac(v, header, form)?),
            // v0 (test mode's old scheme) and future schemes are not verified here.
            _ => {}
        }
    }
    let t = t.ok_or(malformed(header, form))?;
    if candidates.is_empty() {
        return Err(malformed(header, form));
    }
    too_many(&candidates, header)?;
    let timestamp = unix_seconds(t, header)?;
    let mut prefix = t.to_vec();
    prefix.push(b'.');
    Ok(Signed {
        prefix,
        candidates,
        timestamp: Some(timestamp),
        delivery: None,
    })
}

fn malformed(header: &'static str, reason: &'static str) -> Reject {
    Reject::MalformedHeader { header, reason }
}

fn unique<'h>(
    headers: &'h RequestHeaders,
    header: &'static str,
) -> Result<Option<&'h [u8]>, Reject> {
    match headers.unique(&header.to_ascii_lowercase()) {
        Err(_) => Err(Reject::DuplicatedHeader { header }),
        Ok(Some([])) | Ok(None) => Ok(None),
        Ok(Some(v)) => Ok(Some(v)),
    }
}

fn too_many(candidates: &[Vec<u8>], header: &'static str) -> Result<(), Reject> {
    if candidates.len() > MAX_CANDIDATES {
        return Err(malformed(header, "holds more than 8 signatures"));
    }
    Ok(())
}

fn hex_mac(value: &[u8], header: &'static str, form: &'static str) -> Result<Vec<u8>, Reject> {
    signature::hex_mac(value)
        .map(|mac| mac.to_vec())
        .ok_or(malformed(header, form))
}

/// Unix seconds as plain digits. Each format separates the timestamp from the body, so leading
/// zeros cannot move bytes between them.
fn unix_seconds(value: &[u8], header: &'static str) -> Result<u64, Reject> {
    signature::unix_seconds(value)
        .ok_or(malformed(header, "must be the unix time in whole seconds"))
}

/// A delivery id: 1 to 256 visible ASCII characters without `.` (Standard Webhooks signs
/// `{id}.{timestamp}.`, so a dot in the id could shift the timestamp).
fn delivery_id(value: &[u8], header: &'static str) -> Result<String, Reject> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && value.iter().all(|b| b.is_ascii_graphic() && *b != b'.');
    if !ok {
        return Err(malformed(
            header,
            "must be 1 to 256 visible ASCII characters without '.'",
        ));
    }
    String::from_utf8(value.to_vec()).map_err(|_| malformed(header, "must be ASCII"))
}

impl WebhookSettings {
    /// What the replay store claims for a verified delivery (`mac`: its MAC under the first
    /// key, the same whichever key matched), and until when (unix seconds). `policy` scopes it: two endpoints may share a sender.
    pub fn replay_claim(
        &self,
        policy: &str,
        signed: &Signed,
        mac: &[u8],
        now: u64,
    ) -> (String, u64) {
        match (self.preset, &signed.delivery) {
            (Preset::Github, Some(id)) => (
                format!("github:{policy}:{id}"),
                now.saturating_add(self.dedupe),
            ),
            (Preset::StandardWebhooks, Some(id)) => (
                format!("standard-webhooks:{policy}:{id}"),
                signed
                    .timestamp
                    .unwrap_or(now)
                    .saturating_add(self.tolerance),
            ),
            // Stripe, Slack: the MAC covers the timestamp and the body; the same message means
            // replayed, however many of its signatures the copy carries.
            _ => (
                format!(
                    "{}:{policy}:{}",
                    self.preset.name(),
                    hex::encode(&mac[..mac.len().min(16)])
                ),
                signed
                    .timestamp
                    .unwrap_or(now)
                    .saturating_add(self.tolerance),
            ),
        }
    }
}

/// The headers a sender puts on a delivery (for the tests and `warden`): name and value.
pub fn sign(
    preset: Preset,
    secret: &[u8],
    body: &[u8],
    timestamp: u64,
    id: &str,
) -> Vec<(String, String)> {
    use hmac::{Hmac, KeyInit, Mac};
    let key = match preset {
        Preset::StandardWebhooks => match standard_key(secret) {
            Some(key) => key.expose().to_vec(),
            None => return Vec::new(),
        },
        _ => secret.to_vec(),
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&key) else {
        return Vec::new();
    };
    let prefix = match preset {
        Preset::Stripe => format!("{timestamp}."),
        Preset::Github => String::new(),
        Preset::Slack => format!("v0:{timestamp}:"),
        Preset::StandardWebhooks => format!("{id}.{timestamp}."),
    };
    mac.update(prefix.as_bytes());
    mac.update(body);
    let mac = mac.finalize().into_bytes();
    let h = |n: &str, v: String| (n.to_string(), v);
    match preset {
        Preset::Stripe => vec![h(
            "stripe-signature",
            format!("t={timestamp},v1={}", hex::encode(mac)),
        )],
        Preset::Github => vec![
            h(
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(mac)),
            ),
            h("x-github-delivery", id.to_string()),
        ],
        Preset::Slack => vec![
            h("x-slack-signature", format!("v0={}", hex::encode(mac))),
            h("x-slack-request-timestamp", timestamp.to_string()),
        ],
        Preset::StandardWebhooks => vec![
            h("webhook-id", id.to_string()),
            h("webhook-timestamp", timestamp.to_string()),
            h(
                "webhook-signature",
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac)
                ),
            ),
        ],
    }
}

#[cfg(test)]
mod tests;
