//! The binding to Envoy's dynamic-module ABI (`source/extensions/dynamic_modules/abi.h`, ABI
//! version "v0.2.0", the one Envoy 1.40 expects): the only module of edge-warden with `unsafe`.
//!
//! - `#[repr(C)]` mirrors of the ABI types, and the Envoy callbacks we call, declared by hand
//!   from the header (Envoy checks neither names' signatures nor types when it loads a module,
//!   so a wrong declaration would be silent undefined behaviour: every one used here is
//!   exercised by the Envoy integration tests against the real binary);
//! - [`Stream`], a safe handle over Envoy's per-stream filter pointer;
//! - the exported event hooks, each behind [`guard`], which turns a panic into a log line and,
//!   on the request path, a fail-closed 500 reply: a panic must never unwind into C++ (undefined
//!   behaviour) nor abort Envoy.
//!
//! C enums are `int`-sized: they are passed as `u32`. A `{ptr, length}` struct passed by value
//! occupies two integer registers in the x86-64 and AArch64 C calling conventions, exactly as
//! the pointer and length would as separate arguments.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::{Filter, FilterConfig};
use crate::engine::LocalReply;

/// Memory owned by Envoy, valid until the hook returns or a call that changes what it points
/// into (a header or body write).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// Memory owned by the module, read by Envoy only during the call it is passed to.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The null buffer: `set_header` with it removes the header.
    const NULL: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header handed to Envoy (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// Headers as Envoy reads them; they point into `headers`, which must outlive their use.
fn module_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<ModuleHeader> {
    headers
        .map(|(n, v)| ModuleHeader {
            key_ptr: n.as_ptr(),
            key_length: n.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect()
}

/// A header handed out by Envoy (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

const EMPTY: EnvoyBuffer = EnvoyBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

type FilterEnvoyPtr = *mut c_void;
type FilterConfigEnvoyPtr = *mut c_void;
type FilterModulePtr = *const c_void;
type FilterConfigModulePtr = *const c_void;

#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[derive(Clone, Copy)]
#[repr(u32)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

#[derive(Clone, Copy)]
#[repr(u32)]
enum BodyKind {
    ReceivedRequest = 0,
    BufferedRequest = 1,
    ReceivedResponse = 2,
    BufferedResponse = 3,
}

#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Attribute {
    ResponseCodeDetails = 16,
    SourceAddress = 24,
    XdsRouteName = 61,
}

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status` (response likewise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeadersStatus {
    Continue = 0,
    StopIteration = 1,
}

/// `envoy_dynamic_module_type_on_http_filter_request_body_status` (response likewise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BodyStatus {
    Continue = 0,
    StopIterationAndBuffer = 1,
    StopIterationNoBuffer = 3,
}

/// `envoy_dynamic_module_type_on_http_filter_request_trailers_status` (response likewise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TrailersStatus {
    Continue = 0,
    StopIteration = 1,
}

extern "C" {
    fn envoy_dynamic_module_callback_log_v2(
        level: u32,
        message: ModuleBuffer,
        source_file: ModuleBuffer,
        source_line: u32,
    );
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        map: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        map: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status: u32,
        headers: *mut ModuleHeader,
        headers_count: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        kind: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        kind: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterEnvoyPtr, kind: u32)
        -> usize;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: FilterEnvoyPtr,
        kind: u32,
        bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: FilterEnvoyPtr,
        kind: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: FilterEnvoyPtr,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_count: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_count: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_count: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_count: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_count: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_count: usize,
        value: u64,
    ) -> u32;
}

extern "C" {
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_count: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterEnvoyPtr);
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success` (and `..._result_Success` of a
/// finished callout).
const CALLOUT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// Copies `length` bytes Envoy handed out. Null or empty gives an empty vector.
fn copy(ptr: *const u8, length: usize) -> Vec<u8> {
    borrow(ptr, length).to_vec()
}

/// Borrows bytes Envoy handed out, for as long as the hook runs and no write touches them.
fn borrow<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: Envoy guarantees the buffer holds `length` readable bytes until the current hook
    // returns or a write to the same map or body happens (abi.h). Every caller either copies at
    // once or uses the slice before making any such write, and never keeps it past the hook.
    // Null was checked above (`from_raw_parts` must never see it, even for length 0).
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

/// Writes a line to Envoy's log (logger `dynamic_modules`), if that level is enabled.
pub fn log(level: LogLevel, message: &str, file: &str, line: u32) {
    // SAFETY: both callbacks may be called from any thread and only read the buffers during the
    // call; the buffers are live `&str`s.
    unsafe {
        if envoy_dynamic_module_callback_log_enabled(level as u32) {
            envoy_dynamic_module_callback_log_v2(
                level as u32,
                ModuleBuffer::of(message.as_bytes()),
                ModuleBuffer::of(file.as_bytes()),
                line,
            );
        }
    }
}

/// Whether Envoy logs at `level` (cheap: lets `log` skip formatting).
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: a thread-safe query with no arguments that point anywhere.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// Envoy's per-configuration handle, valid only inside `on_http_filter_config_new`.
pub struct ConfigHandle {
    ptr: FilterConfigEnvoyPtr,
}

impl ConfigHandle {
    /// Defines a counter (or a gauge) of this filter configuration with these label names; its
    /// id, or `None` when Envoy refuses.
    pub fn define(&self, name: &str, labels: &[&str], gauge: bool) -> Option<usize> {
        let labels = Labels::new(labels)?;
        let mut id = usize::MAX;
        // SAFETY: `ptr` is the configuration pointer Envoy passed to the running
        // `config_new`; the name and the label names (null when there are none) are read
        // during the call only; `id` is a valid out-pointer.
        let result = unsafe {
            let define = if gauge {
                envoy_dynamic_module_callback_http_filter_config_define_gauge
            } else {
                envoy_dynamic_module_callback_http_filter_config_define_counter
            };
            define(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                labels.ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == METRICS_SUCCESS && id != usize::MAX).then_some(id)
    }

    /// Sets the gauge `id` with these label values.
    pub fn set_gauge(&self, id: usize, labels: &[&str], value: u64) {
        let Some(labels) = Labels::new(labels) else {
            return;
        };
        // SAFETY: `ptr` is the configuration pointer of the running `config_new`, `id` came
        // from `define` on it; the label values are read during the call only. The declaration
        // (configuration pointer, id, label values, their count, value) is the one Envoy 1.40's
        // `envoy_dynamic_module_callback_http_filter_set_gauge` has with a filter pointer; a
        // test reads the gauge back at 1.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.ptr,
                id,
                labels.ptr(),
                labels.len(),
                value,
            );
        }
    }
}

/// At most two label values (a metric's labels), as the ABI takes them: an array of buffers,
/// null when empty. No allocation: it is built on every count.
struct Labels<'a> {
    buffers: [ModuleBuffer; 2],
    len: usize,
    _values: std::marker::PhantomData<&'a str>,
}

impl<'a> Labels<'a> {
    fn new(values: &[&'a str]) -> Option<Self> {
        let mut buffers = [ModuleBuffer::NULL; 2];
        if values.len() > buffers.len() {
            return None;
        }
        for (buffer, value) in buffers.iter_mut().zip(values) {
            *buffer = ModuleBuffer::of(value.as_bytes());
        }
        Some(Self {
            buffers,
            len: values.len(),
            _values: std::marker::PhantomData,
        })
    }

    fn ptr(&self) -> *const ModuleBuffer {
        if self.len == 0 {
            std::ptr::null()
        } else {
            self.buffers.as_ptr()
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Envoy's per-stream filter, valid inside the hooks of that stream, on its worker thread.
/// Not `Send`: it holds a raw pointer, and never leaves the hook that received it.
pub struct Stream {
    ptr: FilterEnvoyPtr,
}

impl Stream {
    /// All headers of a map (pseudo-headers included, one entry per value), copied; `None` when
    /// Envoy has none to give (a request or response always has pseudo-headers) or fails.
    pub fn headers(&self, map: HeaderMap) -> Option<Vec<(String, Vec<u8>)>> {
        // SAFETY: `ptr` is the live filter of the running hook.
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.ptr, map as u32) };
        if count == 0 {
            return None;
        }
        let mut raw = vec![
            EnvoyHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            count
        ];
        // SAFETY: `raw` has exactly the `get_headers_size` entries Envoy requires.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.ptr, map as u32, raw.as_mut_ptr())
        };
        if !ok {
            return None;
        }
        Some(
            raw.iter()
                .map(|h| {
                    (
                        String::from_utf8_lossy(borrow(h.key_ptr, h.key_length)).into_owned(),
                        copy(h.value_ptr, h.value_length),
                    )
                })
                .collect(),
        )
    }

    /// Sets every value of `name` to `value` (`None` removes the header).
    pub fn set_header(&self, map: HeaderMap, name: &str, value: Option<&[u8]>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: buffers are read during the call only; a null value is abi.h's "remove".
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map as u32,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Adds one more value of `name`.
    pub fn add_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // SAFETY: buffers are read during the call only.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                map as u32,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Sends a local reply. Envoy may call back into this module (stream completion) before
    /// this returns; the hooks hold no borrow of the filter's state across it.
    pub fn send_response(&self, status: u32, headers: &[(String, Vec<u8>)], body: &[u8]) {
        let mut raw = module_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        let details = b"edge_warden";
        // SAFETY: the header array, its keys and values, the body and the details all outlive
        // the call, and Envoy only reads them during it.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details),
            )
        }
    }

    /// Calls `each` with the slices of a body buffer, in order, without copying them.
    fn body_slices(&self, kind: BodyKind, each: &mut dyn FnMut(&[u8])) {
        // SAFETY: `ptr` is the live filter of the running hook.
        let count = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, kind as u32)
        };
        if count == 0 {
            return;
        }
        let mut chunks = vec![EMPTY; count];
        // SAFETY: `chunks` has exactly the `get_body_chunks_size` entries Envoy requires.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.ptr,
                kind as u32,
                chunks.as_mut_ptr(),
            )
        };
        if ok {
            // No write to the body happens while `each` runs (it only hashes), so the slices
            // stay valid (see `borrow`).
            for chunk in &chunks {
                each(borrow(chunk.ptr, chunk.length));
            }
        }
    }

    /// The request body bytes this hook brought, as slices. When an earlier filter buffered the
    /// body and resumed, the received body *is* the buffered one: then only what lies past
    /// `seen` bytes is new.
    pub fn new_request_body(&self, seen: usize, each: &mut dyn FnMut(&[u8])) {
        // SAFETY: a plain query on the live filter of the running hook.
        let received_is_buffered =
            unsafe { envoy_dynamic_module_callback_http_received_buffered_request_body(self.ptr) };
        if !received_is_buffered {
            return self.body_slices(BodyKind::ReceivedRequest, each);
        }
        let mut skip = seen;
        self.body_slices(BodyKind::BufferedRequest, &mut |slice| {
            if skip >= slice.len() {
                skip -= slice.len();
            } else {
                each(&slice[skip..]);
                skip = 0;
            }
        });
    }

    /// The response body bytes this hook brought (each earlier chunk went on when its hook
    /// returned Continue).
    pub fn received_response_body(&self, each: &mut dyn FnMut(&[u8])) {
        self.body_slices(BodyKind::ReceivedResponse, each);
    }

    /// Replaces the whole response body (what earlier calls buffered and what this one
    /// received) with `body`.
    pub fn replace_response_body(&self, body: &[u8]) -> bool {
        // SAFETY: plain calls on the live filter; `body` is read during the call only.
        unsafe {
            for kind in [BodyKind::BufferedResponse, BodyKind::ReceivedResponse] {
                let size = envoy_dynamic_module_callback_http_get_body_size(self.ptr, kind as u32);
                if size > 0 {
                    envoy_dynamic_module_callback_http_drain_body(self.ptr, kind as u32, size);
                }
            }
            envoy_dynamic_module_callback_http_append_body(
                self.ptr,
                BodyKind::ReceivedResponse as u32,
                ModuleBuffer::of(body),
            )
        }
    }

    /// A string attribute (`source.address`, `xds.route_name`, ...), copied.
    pub fn attribute(&self, attribute: Attribute) -> Option<Vec<u8>> {
        let mut out = EMPTY;
        // SAFETY: `out` is a valid out-pointer; the bytes it points to are copied at once.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                attribute as u32,
                &mut out,
            )
        };
        ok.then(|| copy(out.ptr, out.length))
    }

    /// Adds `delta` to a metric defined by this stream's configuration, with these label values
    /// (a gauge may go down).
    pub fn add_to_metric(&self, id: usize, gauge: bool, labels: &[&str], delta: i64) {
        let Some(labels) = Labels::new(labels) else {
            return;
        };
        let value = delta.unsigned_abs();
        // SAFETY: `id` came from `ConfigHandle::define` on the configuration of this stream; the
        // label values are read during the call only.
        unsafe {
            let call = match (gauge, delta < 0) {
                (false, _) => envoy_dynamic_module_callback_http_filter_increment_counter,
                (true, false) => envoy_dynamic_module_callback_http_filter_increment_gauge,
                (true, true) => envoy_dynamic_module_callback_http_filter_decrement_gauge,
            };
            call(self.ptr, id, labels.ptr(), labels.len(), value);
        }
    }
}

impl Stream {
    /// Starts an HTTP request to `cluster` through Envoy's async client; its id, or `None` when
    /// Envoy would not start it (no such cluster, no healthy host). The answer comes to
    /// `on_http_filter_http_callout_done` on this stream's worker.
    pub fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u64> {
        let mut raw = module_headers(headers.iter().copied());
        let mut id = 0u64;
        // SAFETY: `ptr` is the live filter of the running hook; the cluster name, the header
        // array and its strings and the body outlive the call, and Envoy copies them during it;
        // `id` is a valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.ptr,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        (result == CALLOUT_SUCCESS).then_some(id)
    }

    /// Resumes a request held by an earlier hook (after a callout's answer). Envoy may run
    /// other hooks of this stream, even destroy it, before this returns.
    pub fn continue_decoding(&self) {
        // SAFETY: `ptr` is the live filter of the running callout hook.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr) }
    }

    /// Resumes a response held by an earlier hook, as [`Stream::continue_decoding`] does a
    /// request.
    pub fn continue_encoding(&self) {
        // SAFETY: `ptr` is the live filter of the running callout hook.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_encoding(self.ptr) }
    }
}

/// Runs a hook, turning a panic into a log line, `on_panic()` (a fail-closed reply where a
/// request is waiting) and `fallback`. A panic must never unwind into Envoy's C++ (undefined
/// behaviour), nor abort the process.
fn guard<R>(hook: &str, fallback: R, on_panic: impl FnOnce(), body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(_) => {
            // The panic's message went to the log through the panic hook (see `install`);
            // nothing from the request is in this line.
            log(
                LogLevel::Error,
                &format!("edge-warden: internal error in {hook}; the request was refused"),
                file!(),
                line!(),
            );
            // A second panic while refusing is swallowed: the fallback still goes back.
            let _ = catch_unwind(AssertUnwindSafe(on_panic));
            fallback
        }
    }
}

/// The stream's filter, or `None` when `on_http_filter_new` failed (returned null; Envoy calls
/// the hooks all the same).
fn filter<'a>(ptr: FilterModulePtr) -> Option<&'a Filter> {
    // SAFETY: a non-null `ptr` is what `on_http_filter_new` returned (`Box::into_raw`); Envoy
    // hands it back until `on_http_filter_destroy`, which `send_response` can run before it
    // returns: so every hook makes its last use of the reference before it sends a reply (see
    // `finish`). Only shared references are made.
    unsafe { (ptr as *const Filter).as_ref() }
}

/// Sends the reply a request hook decided on, after its last use of the filter (Envoy may
/// destroy the filter inside `send_response`).
fn finish<S>(stream: &Stream, (status, reply): (S, Option<LocalReply>)) -> S {
    if let Some(reply) = reply {
        stream.send_response(reply.status, &reply.headers, &reply.body);
    }
    status
}

fn config<'a>(ptr: FilterConfigModulePtr) -> &'a Arc<FilterConfig> {
    // SAFETY: `ptr` is what `on_http_filter_config_new` returned (a boxed `Arc`); Envoy hands
    // it back only until `on_http_filter_config_destroy`. Each filter holds its own `Arc`.
    unsafe { &*(ptr as *const Arc<FilterConfig>) }
}

/// The ABI version this binding was written against; Envoy 1.40 expects it.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guard(
        "program_init",
        std::ptr::null(),
        || (),
        || {
            super::install();
            ABI_VERSION.as_ptr()
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_ptr: FilterConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> FilterConfigModulePtr {
    guard(
        "http_filter_config_new",
        std::ptr::null(),
        || (),
        || {
            let handle = ConfigHandle { ptr: config_ptr };
            // Null refuses the configuration; the reason is logged by `FilterConfig::new`.
            match FilterConfig::new(
                borrow(name.ptr, name.length),
                borrow(config.ptr, config.length),
                &handle,
            ) {
                Some(c) => Box::into_raw(Box::new(Arc::new(c))) as FilterConfigModulePtr,
                None => std::ptr::null(),
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: FilterConfigModulePtr) {
    guard(
        "http_filter_config_destroy",
        (),
        || (),
        || {
            if !ptr.is_null() {
                // SAFETY: `ptr` came from `Box::into_raw` in `config_new`; Envoy destroys it once.
                // Filters still alive keep the configuration through their own `Arc`.
                drop(unsafe { Box::from_raw(ptr as *mut Arc<FilterConfig>) });
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: FilterConfigModulePtr,
    _filter_ptr: FilterEnvoyPtr,
) -> FilterModulePtr {
    guard(
        "http_filter_new",
        std::ptr::null(),
        || (),
        || Box::into_raw(Box::new(FilterConfig::new_filter(config(config_ptr)))) as FilterModulePtr,
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: FilterModulePtr) {
    guard(
        "http_filter_destroy",
        (),
        || (),
        || {
            if !ptr.is_null() {
                // SAFETY: `ptr` came from `Box::into_raw` in `filter_new`; Envoy destroys it once,
                // when no hook of it runs.
                drop(unsafe { Box::from_raw(ptr as *mut Filter) });
            }
        },
    )
}

/// The 500 reply of a request whose hook panicked (or that has no filter).
fn refuse(stream: &Stream) {
    let reply = super::refusal();
    stream.send_response(reply.status, &reply.headers, &reply.body);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    let stream = Stream { ptr: envoy };
    guard(
        "request_headers",
        HeadersStatus::StopIteration,
        || refuse(&stream),
        || match filter(module) {
            Some(f) => finish(&stream, f.on_request_headers(&stream, end_of_stream)),
            None => finish(
                &stream,
                (HeadersStatus::StopIteration, Some(super::refusal())),
            ),
        },
    ) as u32
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    let stream = Stream { ptr: envoy };
    guard(
        "request_body",
        BodyStatus::StopIterationNoBuffer,
        || refuse(&stream),
        || match filter(module) {
            Some(f) => finish(&stream, f.on_request_body(&stream, end_of_stream)),
            None => finish(
                &stream,
                (BodyStatus::StopIterationNoBuffer, Some(super::refusal())),
            ),
        },
    ) as u32
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
) -> u32 {
    let stream = Stream { ptr: envoy };
    guard(
        "request_trailers",
        TrailersStatus::StopIteration,
        || refuse(&stream),
        || match filter(module) {
            Some(f) => finish(&stream, f.on_request_trailers(&stream)),
            None => finish(
                &stream,
                (TrailersStatus::StopIteration, Some(super::refusal())),
            ),
        },
    ) as u32
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    let stream = Stream { ptr: envoy };
    // The request has been decided by now: a failure here leaves the response as it is.
    guard(
        "response_headers",
        HeadersStatus::Continue,
        || (),
        || {
            filter(module).map_or(HeadersStatus::Continue, |f| {
                f.on_response_headers(&stream, end_of_stream)
            })
        },
    ) as u32
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    let stream = Stream { ptr: envoy };
    guard(
        "response_body",
        BodyStatus::Continue,
        || (),
        || {
            filter(module).map_or(BodyStatus::Continue, |f| {
                f.on_response_body(&stream, end_of_stream)
            })
        },
    ) as u32
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
) -> u32 {
    let stream = Stream { ptr: envoy };
    guard(
        "response_trailers",
        TrailersStatus::Continue,
        || (),
        || {
            filter(module).map_or(TrailersStatus::Continue, |f| {
                f.on_response_trailers(&stream)
            })
        },
    ) as u32
}

/// The stream is done (answered, or reset): a claim it still holds is given up.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
) {
    let stream = Stream { ptr: envoy };
    guard(
        "stream_complete",
        (),
        || (),
        || {
            if let Some(f) = filter(module) {
                f.on_stream_complete(&stream);
            }
        },
    )
}

// Hooks Envoy 1.40 requires a module to export (it refuses the configuration otherwise) but
// edge-warden has no use for (it starts no streams or timers; callouts are answered below).

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _event: u64,
) {
}

/// A callout to the state service finished (or failed): the engine decides what happens to
/// the held request.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    callout: u64,
    result: u32,
    headers: *mut EnvoyHeader,
    headers_count: usize,
    body: *mut EnvoyBuffer,
    body_count: usize,
) {
    let stream = Stream { ptr: envoy };
    guard(
        "http_callout_done",
        (),
        || refuse(&stream),
        || {
            let Some(f) = filter(module) else { return };
            let answer = (result == CALLOUT_SUCCESS).then(|| {
                let headers: Vec<(String, Vec<u8>)> = entries(headers, headers_count)
                    .iter()
                    .map(|h| {
                        let name = borrow(h.key_ptr, h.key_length);
                        (
                            String::from_utf8_lossy(name).to_ascii_lowercase(),
                            copy(h.value_ptr, h.value_length),
                        )
                    })
                    .collect();
                let mut bytes = Vec::new();
                for chunk in entries(body, body_count) {
                    bytes.extend_from_slice(borrow(chunk.ptr, chunk.length));
                }
                (headers, bytes)
            });
            let (resume, reply) = f.on_callout_done(&stream, callout, answer);
            // The filter is not used after this point: resuming or replying may destroy it.
            match (reply, resume) {
                (Some(reply), _) => stream.send_response(reply.status, &reply.headers, &reply.body),
                (None, super::Resume::Request) => stream.continue_decoding(),
                (None, super::Resume::Response) => stream.continue_encoding(),
                (None, super::Resume::No) => {}
            }
        },
    )
}

/// An array Envoy handed to a hook, as a slice (empty for null).
fn entries<'a, T>(ptr: *const T, count: usize) -> &'a [T] {
    if ptr.is_null() || count == 0 {
        return &[];
    }
    // SAFETY: Envoy passes `count` initialised entries that stay valid while the hook runs;
    // the slice is used only inside it.
    unsafe { std::slice::from_raw_parts(ptr, count) }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream: u64,
    _headers: *mut EnvoyHeader,
    _headers_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream: u64,
    _trailers: *mut EnvoyHeader,
    _trailers_count: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _stream: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}
