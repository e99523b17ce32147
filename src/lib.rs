//! edge-warden: API-edge security as a proxy-wasm filter for Envoy.
//!
//! The security logic lives in plain modules that native tests reach; only `plugin` and `stream`
//! talk to the host, and they are compiled for wasm only.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod checks;
pub mod config;
pub mod config_locate;
pub mod engine;
pub mod events;
pub mod headers;
pub mod idempotency;
pub mod metrics;
pub mod reject;
pub mod remote;
pub mod secret;
pub mod store;

#[cfg(test)]
mod robustness;

/// The native runtime (an Envoy dynamic module): built with `--features native` into
/// `libedge_warden.so`. Off by default, so the CLI and the tests link no Envoy symbols.
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;

#[cfg(target_arch = "wasm32")]
mod plugin;
#[cfg(target_arch = "wasm32")]
mod stream;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    plugin::start();
}}
