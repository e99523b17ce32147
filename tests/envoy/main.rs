//! Integration tests: a real Envoy loads the built .wasm (run `make test`, which builds it).

mod harness;
mod schemes;

mod browser;
mod config;
mod events;
mod failure;
mod fleet;
mod hardening;
mod hostcalls;
mod idempotency;
mod identity;
mod metrics;
mod packaging;
mod ratelimit;
mod reload;
mod replay_cache;
mod rfc9421;
mod shape;
mod signature;
mod tls;
mod tooling;
mod uploads;
mod webhooks;
