//! The root context: parses and compiles the configuration once per VM, prepares the replay
//! cache, and hands each HTTP stream what it needs. With `stream.rs`, the only code that calls
//! the host.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MetricType, Status};

use crate::config::Config;
use crate::engine::{Engine, LocalState, Metric};
use crate::store::{SetError, SharedStore};
use crate::stream::Stream;

pub fn start() {
    // Envoy filters by its own log level (`--component-log-level wasm:…`); let it decide.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}

/// How often each VM hands its metric deltas to Envoy.
const METRICS_FLUSH: Duration = Duration::from_secs(1);

/// Counters and gauges, summed by Envoy across VMs; `/stats/prometheus` shows them by name.
/// Requests add to plain in-VM numbers, and the root context hands the deltas to Envoy once
/// per [`METRICS_FLUSH`]: a host call per metric per request would cost more than the rest of
/// the bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    ids: [Option<u32>; Metric::COUNT],
    pending: [Cell<i64>; Metric::COUNT],
    /// The root context is gone (no more ticks): streams still in flight hand over at once.
    closed: Cell<bool>,
}

impl Metrics {
    fn define() -> Self {
        Self {
            ids: Metric::ALL.map(|(_, name, gauge)| {
                let kind = if gauge {
                    MetricType::Gauge
                } else {
                    MetricType::Counter
                };
                hostcalls::define_metric(kind, name).ok()
            }),
            pending: Default::default(),
            closed: Cell::new(false),
        }
    }

    pub fn add(&self, metric: Metric, delta: i64) {
        let pending = &self.pending[metric as usize];
        pending.set(pending.get().saturating_add(delta));
        if self.closed.get() {
            self.flush();
        }
    }

    /// The last flush from the root context: later additions are flushed as they come.
    fn close(&self) {
        self.closed.set(true);
        self.flush();
    }

    /// Metrics are observability, never a reason to fail a request: errors are ignored.
    fn flush(&self) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let delta = pending.replace(0);
            if let (Some(id), true) = (id, delta != 0) {
                let _ = hostcalls::increment_metric(*id, delta);
            }
        }
    }
}

/// What every stream of this VM shares.
pub(crate) struct Shared {
    pub engine: Engine,
    pub metrics: Metrics,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {
    /// The plugin is going away (a configuration update or shutdown): hand over what was
    /// counted since the last tick.
    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.metrics.close();
            shared.engine.events.close();
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let json = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(json)) => json,
            _ => {
                log::error!(
                    "invalid edge-warden configuration: the plugin `configuration` is empty; \
                     it must hold the JSON configuration"
                );
                return false;
            }
        };
        // Returning false makes Envoy refuse the plugin: fail closed on any config error.
        let config = match Config::from_json(&json, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        if !config.warnings.is_empty() && first_to_warn(&json) {
            for warning in &config.warnings {
                log::warn!("edge-warden: {warning}");
            }
        }
        // Fixed shard keys are created before any request can use them; see store.rs for why.
        let state = LocalState::new(&config, HostStore);
        if let Err(why) = state.prepare() {
            log::error!("edge-warden: {why} in shared data");
            return false;
        }
        log::info!("edge-warden configured: {}", state.describe(&config));
        self.shared = Some(Rc::new(Shared {
            engine: Engine::new(config, Box::new(state)),
            metrics: Metrics::define(),
        }));
        self.set_tick_period(METRICS_FLUSH);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.metrics.flush();
            // Summaries of suppressed security events are due even when no request comes.
            let now = hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            shared.engine.events.tick(now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so always hand out a stream; without a configuration it
        // refuses every request (fail closed).
        Some(Box::new(Stream::new(self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Whether this VM is the first to load this configuration, so that a warning is logged once
/// per configuration rather than once per VM (worker threads plus the main thread). Shared data
/// has no atomic create, so two VMs starting at the same instant may both log: harmless.
fn first_to_warn(json: &[u8]) -> bool {
    use sha2::Digest;
    const KEY: &str = "edge-warden/warned-config";
    let digest = sha2::Sha256::digest(json);
    match HostStore.get(KEY) {
        Ok((Some(seen), _)) if seen == digest.as_slice() => false,
        Ok((_, cas)) => HostStore.set(KEY, &digest, cas).is_ok(),
        Err(_) => true,
    }
}

/// Envoy's shared data (one store for all VMs of this `vm_id`).
pub(crate) struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SetError> {
        hostcalls::get_shared_data(key).map_err(|_| SetError::Failed)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Failed),
        }
    }
}
