//! edge-warden-state: see `state/README.md` and `edge-warden-state --help`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tonic::transport::Server;

use edge_warden_state::config::Config;
use edge_warden_state::pb::state_server::StateServer;
use edge_warden_state::service::{StateService, MAX_REQUEST_BYTES};
use edge_warden_state::stats::Stats;
use edge_warden_state::store::Store;

/// How often the counters are logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// After SIGTERM, how long calls in flight (and clients slow to close their connections) get.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let config = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let store = Arc::new(Store::connect(&config)?);
    let stats = Arc::new(Stats::default());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StateServer<StateService>>().await;

    let state = StateServer::new(StateService::new(store.clone(), stats.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);

    tokio::spawn(summaries(stats));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen socket: {e}"))?;
    log::info!(
        "edge-warden-state {} listening on {local} (gRPC State + Health); state in {}, key prefix {:?}, require replicas {}",
        env!("CARGO_PKG_VERSION"),
        store.describe(),
        config.key_prefix,
        config.require_replicas,
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    let server = Server::builder()
        .add_service(health_service)
        .add_service(state)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown().await;
            let _ = stopping.send(true);
        });
    // A graceful stop waits for every client to close its connection; do not wait forever.
    let grace = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| format!("gRPC server: {e}"))?,
        _ = grace => log::warn!("connections still open {}s after the signal: stopping anyway", SHUTDOWN_GRACE.as_secs()),
    }
    log::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM: in-flight calls finish, then the server stops.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    log::info!("shutting down");
}

/// One info line a minute with the counts of the last minute (no identifiers).
async fn summaries(stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = stats.snapshot();
    loop {
        tick.tick().await;
        let now = stats.snapshot();
        log::info!(
            "last {}s: {}",
            SUMMARY_EVERY.as_secs(),
            now.since(&last).line()
        );
        last = now;
    }
}
