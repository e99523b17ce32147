//! One pure module per concern: plain inputs in, a verdict out. Nothing here calls the host.

pub mod signature;
