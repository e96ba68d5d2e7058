//! Health and status endpoints served by `pgctl run` on `PGBACKUP_HTTP_ADDR`.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use chrono_tz::Tz;
use tokio::sync::watch;

use crate::discovery::Shared;
use crate::status;

#[derive(Clone)]
struct AppState {
    shared: Shared,
    tz: Tz,
}

pub const STATUS_PATH: &str = "/v1/status";

/// Binds first (so a port conflict fails start-up with a clear message), then serves until
/// shutdown.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    tz: Tz,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route(STATUS_PATH, get(status_json))
        .with_state(AppState { shared, tz });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let d = s.shared.docker.read().await.clone();
    if d.connected {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "docker not connected: {}\n",
                d.last_error.unwrap_or_else(|| "not synced yet".into())
            ),
        )
    }
}

async fn status_json(State(s): State<AppState>) -> impl IntoResponse {
    let targets = s.shared.registry.read().await.targets();
    let docker = s.shared.docker.read().await.clone();
    Json(status::report(
        "controller",
        &targets,
        docker.into(),
        Utc::now(),
        s.tz,
    ))
}
