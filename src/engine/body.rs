//! What the engine does with request body bytes, apart from verifying a signature: count them
//! against the route's limit and hand them to inspectors, chunk by chunk, as they pass.
//!
//! A [`BodyWatch`] sees every body byte exactly once, whether the request is held (a signed
//! request, buffered by Envoy until it is verified) or streams on to the upstream at once (an
//! unsigned one: the filter buffers nothing). It refuses as soon as a chunk breaks a rule, so a
//! streamed body can be cut mid-way: the upstream has then seen part of it, and Envoy resets
//! that upstream request when the local reply goes to the client.

use crate::reject::Reject;

/// Something that looks at a request body as it passes (an upload inspector, say). It is fed
/// every chunk in order, then told the body ended, exactly once (also for a request without a
/// body: then `finish` comes with no `feed` before it). An `Err` refuses the request at once.
pub trait BodyInspector {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject>;
    fn finish(&mut self) -> Result<(), Reject>;
}

/// The body rules of one request.
pub struct BodyWatch {
    /// Bytes seen so far.
    received: u64,
    /// The largest body allowed, in bytes.
    limit: Option<u64>,
    inspectors: Vec<Box<dyn BodyInspector>>,
    finished: bool,
}

impl BodyWatch {
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            received: 0,
            limit,
            inspectors: Vec::new(),
            finished: false,
        }
    }

    /// Adds an inspector that is fed every chunk after the size check.
    pub fn with(mut self, inspector: Box<dyn BodyInspector>) -> Self {
        self.inspectors.push(inspector);
        self
    }

    /// Whether the watch has anything to do (else the engine does not read the body).
    pub fn is_idle(&self) -> bool {
        self.limit.is_none() && self.inspectors.is_empty()
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether an inspector needs the bytes (else only their number matters).
    pub fn inspects(&self) -> bool {
        !self.inspectors.is_empty()
    }

    /// `length` more bytes, when only their number matters ([`BodyWatch::inspects`] is false).
    pub fn count(&mut self, length: usize) -> Result<(), Reject> {
        self.received = self.received.saturating_add(length as u64);
        match self.limit {
            Some(limit) if self.received > limit => Err(Reject::BodyTooLarge { limit }),
            _ => Ok(()),
        }
    }

    /// One chunk of the body, only what is new since the last call.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject> {
        self.count(chunk.len())?;
        if chunk.is_empty() {
            return Ok(());
        }
        for inspector in &mut self.inspectors {
            inspector.feed(chunk)?;
        }
        Ok(())
    }

    /// The body ended (its last chunk, or trailers). Later calls do nothing.
    pub fn finish(&mut self) -> Result<(), Reject> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        for inspector in &mut self.inspectors {
            inspector.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it was fed; refuses a chunk holding `!`.
    struct Recorder {
        fed: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
        finished: std::rc::Rc<std::cell::Cell<u32>>,
    }

    impl BodyInspector for Recorder {
        fn feed(&mut self, chunk: &[u8]) -> Result<(), Reject> {
            if chunk.contains(&b'!') {
                return Err(Reject::Internal);
            }
            self.fed.borrow_mut().extend_from_slice(chunk);
            Ok(())
        }
        fn finish(&mut self) -> Result<(), Reject> {
            self.finished.set(self.finished.get() + 1);
            Ok(())
        }
    }

    #[test]
    fn the_limit_counts_every_chunk_and_allows_exactly_the_limit() {
        let mut watch = BodyWatch::new(Some(10));
        assert_eq!(watch.feed(b"1234"), Ok(()));
        assert_eq!(watch.feed(b"567890"), Ok(()));
        assert_eq!(watch.received(), 10);
        assert_eq!(watch.feed(b"x"), Err(Reject::BodyTooLarge { limit: 10 }));
    }

    #[test]
    fn inspectors_see_each_byte_once_and_finish_once() {
        let fed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let finished = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut watch = BodyWatch::new(None).with(Box::new(Recorder {
            fed: fed.clone(),
            finished: finished.clone(),
        }));
        assert!(!watch.is_idle());
        watch.feed(b"ab").unwrap();
        watch.feed(b"").unwrap();
        watch.feed(b"cd").unwrap();
        watch.finish().unwrap();
        watch.finish().unwrap();
        assert_eq!(&*fed.borrow(), b"abcd");
        assert_eq!(finished.get(), 1);
        assert_eq!(watch.feed(b"!"), Err(Reject::Internal));
    }

    #[test]
    fn counting_lengths_enforces_the_same_limit() {
        let mut watch = BodyWatch::new(Some(10));
        assert!(!watch.inspects());
        assert_eq!(watch.count(6), Ok(()));
        assert_eq!(watch.feed(b"1234"), Ok(()));
        assert_eq!(watch.count(1), Err(Reject::BodyTooLarge { limit: 10 }));
    }

    #[test]
    fn a_watch_without_limit_or_inspector_is_idle() {
        assert!(BodyWatch::new(None).is_idle());
        assert!(!BodyWatch::new(Some(1)).is_idle());
    }
}
