//! The HTTP service: image-to-video jobs (submit, status, result, cancel) run by one worker
//! thread that owns the model, liveness (`/health`) and a machine report (`/v1/system`).

mod config;
mod error;
mod jobs;
mod jobs_api;
mod request;
mod routes;
mod worker;

pub use config::{Limits, ServeConfig};
pub use error::{ApiError, ServerError};
pub use routes::{router, AppState};

use std::net::SocketAddr;

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
    if !state.wait_idle(SHUTDOWN_GRACE).await {
        tracing::warn!("the running job did not stop within {SHUTDOWN_GRACE:?}");
    }
    Ok(())
}

/// How long shutdown waits for the running job to reach a step boundary.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

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
