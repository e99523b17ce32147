//! STUB: replaced by the rfc9421 branch (interface only, so the engine builds meanwhile).
#![allow(dead_code, unused_variables, clippy::ptr_arg)]

use serde::Deserialize;

use crate::checks::signature::{SignatureVerified, SigningKey};
use crate::config::ConfigError;
use crate::headers::RequestHeaders;
use crate::reject::Reject;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRfc9421 {
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub require_nonce: Option<bool>,
    #[serde(default)]
    pub window_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Rfc9421Settings {
    window: u64,
}

pub(crate) fn compile(
    raw: &RawRfc9421,
    field: &str,
    default_window: u64,
    warnings: &mut Vec<String>,
) -> Result<Rfc9421Settings, ConfigError> {
    Ok(Rfc9421Settings {
        window: raw.window_seconds.unwrap_or(default_window),
    })
}

impl Rfc9421Settings {
    pub fn window_seconds(&self) -> u64 {
        self.window
    }
    pub fn covers_content_digest(&self) -> bool {
        false
    }
}

pub struct Message<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub headers: &'a RequestHeaders,
}

pub struct Verified {
    pub proof: SignatureVerified,
    pub created: u64,
    pub expires: Option<u64>,
    pub replay_id: String,
    pub covers_content_digest: bool,
}

pub fn verify(
    settings: &Rfc9421Settings,
    keys: &[SigningKey],
    message: &Message,
    now: u64,
) -> Result<Verified, Reject> {
    Err(Reject::Internal)
}
