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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(ServerError::Serve)
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
    tracing::info!("shutting down");
}
