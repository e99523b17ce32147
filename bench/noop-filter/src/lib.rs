//! The do-nothing filter: every callback continues at once. For profiling, its plugin
//! configuration may name host calls to make per request (the calls edge-warden makes), so
//! `bench/profile.py` can price each one: ["request_headers", "source_address",
//! "set_request_headers", "response_headers", "set_response_headers", "shared_data", "time",
//! "shared_data_cas", "read_body"]. `shared_data_cas` is a read and a compare-and-swap write, as
//! for a nonce. `pause_for_body` holds the request headers until the body has arrived (what a
//! body signature needs), without reading it.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { calls: Vec::new() }));
}}

const SHARD: [u8; 64] = [0x5a; 64];

struct Root {
    calls: Vec<String>,
}
impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        if let Ok(Some(bytes)) =
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        {
            let text = String::from_utf8_lossy(&bytes);
            self.calls = text
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        // Values the size edge-warden's are in a bench run: the lockout summary (8 bytes) and a
        // replay-cache shard holding 4 records of 16 bytes (a fresh Envoy per scenario).
        let _ = hostcalls::set_shared_data("noop/summary", Some(&[0u8; 8]), None);
        let _ = hostcalls::set_shared_data("noop/shard", Some(&SHARD), None);
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            calls: self.calls.clone(),
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    calls: Vec<String>,
}
impl Context for Stream {}
impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let mut action = Action::Continue;
        for call in &self.calls {
            match call.as_str() {
                "request_headers" => {
                    let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
                }
                "source_address" => {
                    let _ = hostcalls::get_property(vec!["source", "address"]);
                }
                "set_request_headers" => {
                    rewrite(MapType::HttpRequestHeaders);
                }
                "shared_data" => {
                    let _ = hostcalls::get_shared_data("noop/summary");
                }
                "time" => {
                    let _ = hostcalls::get_current_time();
                }
                "shared_data_cas" => {
                    if let Ok((_, cas)) = hostcalls::get_shared_data("noop/shard") {
                        let _ = hostcalls::set_shared_data("noop/shard", Some(&SHARD), cas);
                    }
                }
                "pause_for_body" if !end_of_stream => action = Action::Pause,
                _ => {}
            }
        }
        action
    }
    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let asked = |name: &str| self.calls.iter().any(|c| c == name);
        if end_of_stream && asked("read_body") {
            let _ = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size);
        }
        if asked("pause_for_body") && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for call in &self.calls {
            match call.as_str() {
                "response_headers" => {
                    let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
                }
                "set_response_headers" => {
                    rewrite(MapType::HttpResponseHeaders);
                }
                _ => {}
            }
        }
        Action::Continue
    }
}

/// Reads a header map and writes it back unchanged: one read and one write, as edge-warden does.
fn rewrite(map: MapType) {
    if let Ok(pairs) = hostcalls::get_map_bytes(map) {
        let pairs: Vec<(&str, &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let _ = hostcalls::set_map_bytes(map, pairs);
    }
}
