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
use crate::metrics::{Catalog, Series};
use crate::store::{SetError, SharedStore};
use crate::stream::Stream;

pub fn start() {
    // Envoy filters by its own log level (`--component-log-level wasm:…`); let it decide.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}

/// How often each VM hands its metric deltas to Envoy.
const METRICS_FLUSH: Duration = Duration::from_secs(1);

/// Counters and gauges, summed by Envoy across VMs; `/stats/prometheus` shows them by family
/// with their labels (see `metrics.rs` for how the labels travel in the names). Requests add to
/// plain in-VM numbers, and the root context hands the deltas to Envoy once per
/// [`METRICS_FLUSH`]: a host call per metric per request would cost more than the rest of the
/// bookkeeping.
pub(crate) struct Metrics {
    catalog: Catalog,
    /// Each series' Envoy id, defined at configure time (again at a flush that has something
    /// for it, should Envoy have refused it then; never on a request).
    ids: Vec<Cell<Option<u32>>>,
    pending: Vec<Cell<i64>>,
    /// The root context is gone (no more ticks): streams still in flight hand over at once.
    closed: Cell<bool>,
}

/// The shared-data key holding the hash of the configuration loaded last, so that a plugin
/// going away clears its `edge_warden_config_info` only when another configuration took over.
const CONFIG_HASH_KEY: &str = "edge-warden/config-hash";

fn define(series: &Series) -> Option<u32> {
    let kind = if series.family.gauge {
        MetricType::Gauge
    } else {
        MetricType::Counter
    };
    hostcalls::define_metric(kind, &series.dotted_name()).ok()
}

impl Metrics {
    fn define(catalog: Catalog) -> Self {
        let ids = catalog
            .series()
            .iter()
            .map(|s| Cell::new(define(s)))
            .collect();
        let pending = catalog.series().iter().map(|_| Cell::new(0)).collect();
        Self {
            catalog,
            ids,
            pending,
            closed: Cell::new(false),
        }
    }

    pub fn add(&self, metric: Metric, delta: i64) {
        if let Some(pending) = self.pending.get(self.catalog.index(metric)) {
            pending.set(pending.get().saturating_add(delta));
        }
        if self.closed.get() {
            self.flush();
        }
    }

    /// Sets `edge_warden_config_info{hash}` to 1 (every VM sets the same value: it is not
    /// summed) and records this configuration as the one loaded last.
    fn announce(&self) {
        if let Some(Some(id)) = self.ids.get(self.catalog.config_info()).map(Cell::get) {
            let _ = hostcalls::record_metric(id, 1);
        }
        let hash = self.catalog.hash().as_bytes();
        if let Ok((_, cas)) = HostStore.get(CONFIG_HASH_KEY) {
            let _ = HostStore.set(CONFIG_HASH_KEY, hash, cas);
        }
    }

    /// The last flush from the root context: later additions are flushed as they come. The
    /// configuration's gauge goes to 0 unless the configuration loaded since has the same hash.
    fn close(&self) {
        self.closed.set(true);
        self.flush();
        let current = HostStore.get(CONFIG_HASH_KEY).ok().and_then(|(v, _)| v);
        if current.as_deref() != Some(self.catalog.hash().as_bytes()) {
            if let Some(Some(id)) = self.ids.get(self.catalog.config_info()).map(Cell::get) {
                let _ = hostcalls::record_metric(id, 0);
            }
        }
    }

    /// Metrics are observability, never a reason to fail a request: errors are ignored.
    fn flush(&self) {
        let series = self.catalog.series();
        for ((pending, id), series) in self.pending.iter().zip(&self.ids).zip(series) {
            let delta = pending.replace(0);
            if delta == 0 {
                continue;
            }
            let known = match id.get() {
                Some(known) => Some(known),
                None => {
                    let defined = define(series);
                    id.set(defined);
                    defined
                }
            };
            if let Some(known) = known {
                let _ = hostcalls::increment_metric(known, delta);
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
        let catalog = Catalog::new(&config, &json);
        log::info!(
            "edge-warden configured: {}, config hash {}",
            state.describe(&config),
            catalog.hash()
        );
        let metrics = Metrics::define(catalog);
        metrics.announce();
        self.shared = Some(Rc::new(Shared {
            engine: Engine::new(config, Box::new(state)),
            metrics,
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
