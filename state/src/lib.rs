//! edge-warden-state: the stateless gRPC service between edge-warden filters and Redis.
//!
//! A proxy-wasm filter has no sockets, so the filter in every Envoy calls this service (any
//! number of instances, all alike) to claim replay nonces once fleet-wide, to count failed
//! authentications for lockouts, and to keep idempotency records (a request with a key goes
//! upstream once; a retry gets the stored response). The API is `proto/edge_warden_state.proto`; the semantics and
//! the durability statement are in `state/README.md` and on [`store::Store`].

pub mod config;
pub mod service;
pub mod stats;
pub mod store;

/// The prost/tonic code generated from `proto/edge_warden_state.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("edgewarden.state.v1");
}
