//! The HTTP service: image-to-video and portrait jobs (submit, status, events, result,
//! cancel) run by one worker thread per device, which owns the models of the families placed
//! there; liveness, readiness, a machine report, Prometheus metrics, model unloading and the
//! OpenAPI document.

mod admission;
mod config;
mod config_instantid;
mod devices;
mod error;
mod face_service;
mod families;
mod family;
mod host_memory;
mod instantid_request;
mod jobs;
mod jobs_api;
mod metrics;
mod model_facts;
mod request;
mod residency;
mod retention;
mod routes;
mod service_i2v;
mod service_instantid;
mod system;
mod worker;
#[cfg(test)]
mod worker_tests;

pub use config::{Limits, ServeConfig};
pub use config_instantid::InstantIdConfig;
pub use error::{ApiError, ServerError};
pub use routes::{openapi, router, AppState};

use std::net::SocketAddr;
use std::time::Duration;

/// Binds, serves until ctrl-c/SIGTERM, then drains in-flight requests.
pub async fn serve(config: ServeConfig) -> Result<(), ServerError> {
    config.check()?;
    let state = AppState::new(&config)?;
    let addr: SocketAddr = (config.host, config.port).into();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    tracing::info!(%local, "listening");
    let sweeper = tokio::spawn(sweep_results(
        state.clone(),
        sweep_interval(config.result_max_age_s),
    ));
    let on_signal = state.clone();
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Unfinished jobs are cancelled first, so waiting requests answer and the
            // running job stops at its next step instead of holding the shutdown.
            let n = on_signal.cancel_all();
            tracing::info!("shutting down: cancelled {n} unfinished job(s)");
        })
        .await
        .map_err(ServerError::Serve)?;
    sweeper.abort();
    let grace = Duration::from_secs(config.shutdown_grace_s);
    if !state.wait_idle(grace).await {
        tracing::warn!("the running job did not stop within {grace:?}");
    }
    Ok(())
}

/// Sweeps often enough that a result outlives its age limit by at most a tenth of it (within
/// 1 s to 60 s).
fn sweep_interval(max_age_s: u64) -> Duration {
    Duration::from_secs((max_age_s / 10).clamp(1, 60))
}

async fn sweep_results(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.sweep_results()).await {
            Ok(swept) if swept.deleted > 0 => tracing::info!(
                deleted = swept.deleted,
                freed_bytes = swept.freed_bytes,
                kept = swept.kept,
                kept_bytes = swept.kept_bytes,
                "result retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("result retention sweep: {e}"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
