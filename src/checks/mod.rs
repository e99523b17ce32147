//! One pure module per concern: plain inputs in, a verdict out. Nothing here calls the host.

pub mod api_key;
pub mod cors;
pub mod digest;
pub mod host;
pub mod ip;
pub mod path;
pub mod response_headers;
pub mod rfc9421;
pub mod shape;
pub mod signature;
pub mod upload;
