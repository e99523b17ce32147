//! Security events: one JSON object per rejected request (and per request an admin-role API key
//! made), written through the `log` facade at `info`, so each runtime's logger puts it in Envoy's
//! log. An event names what was decided and about whom (code, policy, client address, key or
//! secret id), never what the client proved it with: no secret, signature, API key, nonce,
//! idempotency key value, query value or body is ever a field.
//!
//! Flood control: after an event is written, identical ones (same client, code, policy and
//! enforcement) are only counted until `events.suppress_seconds` (default
//! [`DEFAULT_SUPPRESS_SECONDS`]) have passed since it; then one
//! `events_suppressed` line gives the count. Windows are kept in a table of at most
//! [`CAPACITY`] entries, so memory is bounded whatever the number of clients; events that find
//! no room share one window of their own. The table belongs to one [`crate::engine::Engine`]:
//! one per VM (each worker) in wasm, one per configuration for the whole process natively.
//!
//! Summaries are written when a window has ended and [`Events::tick`] is called: from the wasm
//! root context's tick (once a second) and, on both runtimes, from the header checks of any
//! request, which already read the clock; an identical event after the window also writes its
//! summary first. What is left is written when the table goes away (configuration unloaded).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::{err, ConfigError};

/// How long identical events from one client are counted instead of written, by default.
pub const DEFAULT_SUPPRESS_SECONDS: u64 = 10;
/// Suppression windows kept at most (one per client, code, policy and enforcement).
pub const CAPACITY: usize = 4096;
/// The longest path an event carries, in bytes (longer ones are cut at a character boundary).
pub const MAX_PATH: usize = 256;
/// The request header that tells the upstream, in report mode, which codes would have
/// rejected the request. Client copies are removed like the identity headers.
pub const WOULD_REJECT_HEADER: &str = "x-edge-warden-would-reject";

/// The `events` section of the plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// Seconds during which identical events from one client are counted instead of written
    /// (1–3600, default 10).
    #[serde(default = "default_suppress_seconds")]
    pub suppress_seconds: u64,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            suppress_seconds: DEFAULT_SUPPRESS_SECONDS,
        }
    }
}

fn default_suppress_seconds() -> u64 {
    DEFAULT_SUPPRESS_SECONDS
}

/// Checks the `events` section at `field`; the suppression interval in seconds.
pub(crate) fn compile_events(raw: &RawEvents, field: &str) -> Result<u64, ConfigError> {
    if !(1..=3600).contains(&raw.suppress_seconds) {
        return Err(err(
            format!("{field}.suppress_seconds"),
            format!(
                "must be between 1 and 3600 seconds, got {}",
                raw.suppress_seconds
            ),
        ));
    }
    Ok(raw.suppress_seconds)
}

/// One security event, as written.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// `request_rejected` or `admin_key_used`.
    pub event: &'static str,
    /// The rejection's stable code (`None`: not a rejection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// The status the rejection answers (or, not enforced, would have answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// The selected policy (`None`: refused before one was selected).
    pub policy: Option<&'a str>,
    /// Envoy's route name, when it has one.
    pub route: Option<&'a str>,
    /// The client address Envoy determined.
    pub client: Option<IpAddr>,
    /// The id of the API key that authenticated.
    pub key_id: Option<&'a str>,
    /// The id of the signing secret that verified the signature.
    pub secret_id: Option<&'a str>,
    pub method: &'a str,
    /// The path with query values removed (see [`loggable_path`]).
    pub path: &'a str,
    pub request_id: Option<&'a str>,
    /// Unix time in seconds.
    pub timestamp: u64,
    /// Whether the request was refused (`false`: report mode let it through).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
}

/// The line that stands for suppressed events.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    event: &'static str,
    /// `None`: events of clients that found no room in the table, whatever their code.
    code: Option<&'static str>,
    policy: Option<&'a str>,
    client: Option<IpAddr>,
    enforced: bool,
    /// Events not written since the last one that was.
    count: u64,
    interval_seconds: u64,
    timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client: Option<IpAddr>,
    code: &'static str,
    policy: Option<String>,
    enforced: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: u64,
    suppressed: u64,
}

impl Window {
    fn ended(&self, now: u64, interval: u64) -> bool {
        now >= self.started.saturating_add(interval)
    }
}

#[derive(Debug, Default)]
struct Table {
    /// `events.suppress_seconds`.
    interval: u64,
    windows: HashMap<Key, Window>,
    /// The window shared by events that found the table full.
    overflow: Option<Window>,
    /// The last clock seen, for summaries written when the table goes away.
    last_now: u64,
    /// When a full table was last searched for ended windows (at most once a second, so a
    /// flood from many addresses does not search it on every event).
    full_searched: Option<u64>,
}

/// The events of one engine, with their suppression table.
#[derive(Debug)]
pub struct Events {
    table: Mutex<Table>,
    /// Do not look at the table for ended windows before this time (most requests need not).
    next_tick: AtomicU64,
}

impl Events {
    /// A table whose identical events are suppressed for `interval` seconds.
    pub fn new(interval: u64) -> Self {
        Self {
            table: Mutex::new(Table {
                interval,
                ..Table::default()
            }),
            next_tick: AtomicU64::new(0),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table that is still consistent (plain
        // counters): keep using it rather than lose events.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a rejection event, unless an identical one from the same client was written less
    /// than the interval ago (then it is counted for the summary).
    pub fn rejected(&self, event: &Event) {
        let key = Key {
            client: event.client,
            code: event.code.unwrap_or("-"),
            policy: event.policy.map(str::to_string),
            enforced: event.enforced.unwrap_or(true),
        };
        let mut lines = Vec::new();
        let write = self.table().admit(key, event.timestamp, &mut lines);
        if write {
            lines.push(to_line(event));
        }
        emit(&lines);
    }

    /// Writes an event that is never suppressed (an admin key's use is audited every time).
    pub fn always(&self, event: &Event) {
        emit(&[to_line(event)]);
    }

    /// Writes the summaries of windows that have ended by `now`. Cheap when none can have.
    pub fn tick(&self, now: u64) {
        if now < self.next_tick.load(Ordering::Relaxed) {
            return;
        }
        self.next_tick
            .store(now.saturating_add(1), Ordering::Relaxed);
        let mut lines = Vec::new();
        self.table().expire(now, now, &mut lines);
        emit(&lines);
    }

    /// Writes every summary still open (the configuration is going away).
    pub fn close(&self) {
        let mut lines = Vec::new();
        {
            let mut table = self.table();
            let last = table.last_now;
            table.expire(u64::MAX, last, &mut lines);
        }
        emit(&lines);
    }

    /// Suppression windows open now (for tests and the memory bound).
    pub fn open_windows(&self) -> usize {
        let table = self.table();
        table.windows.len() + usize::from(table.overflow.is_some())
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.close();
    }
}

impl Table {
    /// Whether an event with `key` is written now; summaries that are due go to `lines`.
    fn admit(&mut self, key: Key, now: u64, lines: &mut Vec<String>) -> bool {
        self.last_now = self.last_now.max(now);
        let interval = self.interval;
        if let Some(window) = self.windows.get_mut(&key) {
            if !window.ended(now, interval) {
                window.suppressed = window.suppressed.saturating_add(1);
                return false;
            }
            if window.suppressed > 0 {
                lines.push(summary(Some(&key), window.suppressed, interval, now));
            }
            *window = Window {
                started: now,
                suppressed: 0,
            };
            return true;
        }
        if self.windows.len() >= CAPACITY && self.full_searched != Some(now) {
            self.full_searched = Some(now);
            self.expire(now, now, lines);
        }
        if self.windows.len() < CAPACITY {
            self.windows.insert(
                key,
                Window {
                    started: now,
                    suppressed: 0,
                },
            );
            return true;
        }
        // No room: every such event shares one window, so a flood from many addresses is
        // bounded too.
        match &mut self.overflow {
            Some(window) if !window.ended(now, interval) => {
                window.suppressed = window.suppressed.saturating_add(1);
                false
            }
            overflow => {
                if let Some(window) = overflow.filter(|w| w.suppressed > 0) {
                    lines.push(summary(None, window.suppressed, interval, now));
                }
                *overflow = Some(Window {
                    started: now,
                    suppressed: 0,
                });
                true
            }
        }
    }

    /// Drops the windows that have ended by `now`, with a summary (stamped `stamp`) for each
    /// that suppressed something.
    fn expire(&mut self, now: u64, stamp: u64, lines: &mut Vec<String>) {
        self.last_now = self.last_now.max(stamp);
        let interval = self.interval;
        self.windows.retain(|key, window| {
            if !window.ended(now, interval) {
                return true;
            }
            if window.suppressed > 0 {
                lines.push(summary(Some(key), window.suppressed, interval, stamp));
            }
            false
        });
        if let Some(window) = self.overflow.filter(|w| w.ended(now, interval)) {
            if window.suppressed > 0 {
                lines.push(summary(None, window.suppressed, interval, stamp));
            }
            self.overflow = None;
        }
    }
}

fn summary(key: Option<&Key>, count: u64, interval: u64, now: u64) -> String {
    let line = Summary {
        event: "events_suppressed",
        code: key.map(|k| k.code),
        policy: key.and_then(|k| k.policy.as_deref()),
        client: key.and_then(|k| k.client),
        enforced: key.is_none_or(|k| k.enforced),
        count,
        interval_seconds: interval,
        timestamp: now,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

fn to_line(event: &Event) -> String {
    // Serialising plain strings and numbers cannot fail; an empty line is never written.
    serde_json::to_string(event).unwrap_or_default()
}

fn emit(lines: &[String]) {
    for line in lines.iter().filter(|l| !l.is_empty()) {
        log::info!("{line}");
    }
}

/// The path as an event carries it: the query keeps its parameter names but loses every value
/// (a key or token sent in the query must not reach the log), the fragment goes, and the
/// result is at most [`MAX_PATH`] bytes.
pub fn loggable_path(path: &str) -> String {
    let path = path.split('#').next().unwrap_or_default();
    let mut out = match path.split_once('?') {
        None => path.to_string(),
        Some((before, query)) => {
            let names: Vec<&str> = query
                .split('&')
                .map(|pair| pair.split('=').next().unwrap_or_default())
                .collect();
            format!("{before}?{}", names.join("&"))
        }
    };
    if out.len() > MAX_PATH {
        let mut end = MAX_PATH;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str, code: &'static str) -> Key {
        Key {
            client: client.parse().ok(),
            code,
            policy: Some("signed".to_string()),
            enforced: true,
        }
    }

    fn parsed(lines: &[String]) -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    }

    #[test]
    fn identical_events_are_counted_until_the_window_ends_then_summarised_once() {
        let mut table = Table {
            interval: 10,
            ..Table::default()
        };
        let mut lines = Vec::new();
        assert!(table.admit(key("192.0.2.1", "invalid_signature"), 100, &mut lines));
        for t in 100..110 {
            assert!(!table.admit(key("192.0.2.1", "invalid_signature"), t, &mut lines));
        }
        assert!(lines.is_empty());
        // Another client and another code are other events.
        assert!(table.admit(key("192.0.2.2", "invalid_signature"), 101, &mut lines));
        assert!(table.admit(key("192.0.2.1", "invalid_api_key"), 101, &mut lines));
        table.expire(109, 109, &mut lines);
        assert!(lines.is_empty(), "the window is still open: {lines:?}");
        table.expire(110, 110, &mut lines);
        let summaries = parsed(&lines);
        assert_eq!(summaries.len(), 1, "{lines:?}");
        assert_eq!(summaries[0]["event"], "events_suppressed");
        assert_eq!(summaries[0]["count"], 10);
        assert_eq!(summaries[0]["client"], "192.0.2.1");
        assert_eq!(summaries[0]["code"], "invalid_signature");
        assert_eq!(summaries[0]["interval_seconds"], 10);
        // Windows without suppressed events ended silently; the table is empty again.
        table.expire(200, 200, &mut lines);
        assert_eq!(lines.len(), 1);
        assert!(table.windows.is_empty());
    }

    #[test]
    fn an_event_after_its_window_writes_the_summary_first_and_is_written() {
        let mut table = Table {
            interval: 10,
            ..Table::default()
        };
        let mut lines = Vec::new();
        assert!(table.admit(key("192.0.2.1", "x"), 0, &mut lines));
        assert!(!table.admit(key("192.0.2.1", "x"), 5, &mut lines));
        assert!(table.admit(key("192.0.2.1", "x"), 10, &mut lines));
        assert_eq!(parsed(&lines)[0]["count"], 1);
    }

    #[test]
    fn a_flood_from_many_addresses_stays_within_the_table_and_shares_one_window() {
        let mut table = Table {
            interval: 10,
            ..Table::default()
        };
        let mut lines = Vec::new();
        let mut written = 0;
        for i in 0..(CAPACITY as u32 + 1000) {
            let client = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            if table.admit(key(&client, "invalid_api_key"), 50, &mut lines) {
                written += 1;
            }
        }
        assert_eq!(table.windows.len(), CAPACITY);
        // One event for each window, one for the overflow window; the rest counted.
        assert_eq!(written, CAPACITY + 1);
        table.expire(60, 60, &mut lines);
        let summaries = parsed(&lines);
        assert_eq!(summaries.len(), 1, "{lines:?}");
        assert_eq!(summaries[0]["count"], 999);
        assert!(summaries[0]["client"].is_null());
        assert!(table.windows.is_empty() && table.overflow.is_none());
    }

    #[test]
    fn tick_and_close_write_what_is_due() {
        let events = Events::new(10);
        let event = |timestamp| Event {
            event: "request_rejected",
            code: Some("invalid_signature"),
            status: Some(401),
            policy: Some("signed"),
            route: None,
            client: "192.0.2.9".parse().ok(),
            key_id: None,
            secret_id: None,
            method: "POST",
            path: "/orders",
            request_id: None,
            timestamp,
            enforced: Some(true),
        };
        events.rejected(&event(10));
        events.rejected(&event(11));
        assert_eq!(events.open_windows(), 1);
        events.tick(12);
        assert_eq!(events.open_windows(), 1);
        events.tick(20);
        assert_eq!(events.open_windows(), 0);
        events.rejected(&event(100));
        events.close();
        assert_eq!(events.open_windows(), 0);
    }

    #[test]
    fn paths_keep_query_names_and_lose_values_and_fragments() {
        assert_eq!(loggable_path("/orders"), "/orders");
        assert_eq!(
            loggable_path("/orders?api_key=ew_secret&page=2&flag"),
            "/orders?api_key&page&flag"
        );
        assert_eq!(loggable_path("/a?x=1#frag=2"), "/a?x");
        assert_eq!(loggable_path("/a#x"), "/a");
        let long = format!("/{}", "é".repeat(300));
        let cut = loggable_path(&long);
        assert!(cut.len() <= MAX_PATH && cut.starts_with("/é"));
    }

    #[test]
    fn an_event_serialises_without_credential_fields() {
        let line = to_line(&Event {
            event: "admin_key_used",
            code: None,
            status: None,
            policy: Some("admin"),
            route: Some("r"),
            client: "2001:db8::1".parse().ok(),
            key_id: Some("ops-1"),
            secret_id: None,
            method: "DELETE",
            path: "/admin/users",
            request_id: Some("abc"),
            timestamp: 1,
            enforced: None,
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "event",
            "policy",
            "route",
            "client",
            "key_id",
            "secret_id",
            "method",
            "path",
            "request_id",
            "timestamp",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["client"], "2001:db8::1");
    }
}
