//! STUB: replaced by the rfc9421 branch (interface only, so the engine builds meanwhile).
#![allow(dead_code, unused_variables)]

use crate::engine::body::BodyInspector;
use crate::headers::RequestHeaders;
use crate::reject::Reject;

pub struct DigestCheck;

pub fn parse(headers: &RequestHeaders) -> Result<Option<DigestCheck>, Reject> {
    Ok(None)
}

impl BodyInspector for DigestCheck {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), Reject> {
        Err(Reject::ContentDigestMismatch)
    }
}
