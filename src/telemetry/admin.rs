//! The admin HTTP server (axum): `/live`, `/ready`, `/metrics` on `admin.listen` (loopback by
//! default; `""` disables it).
//!
//! - `/live`: 200 while the process runs (the runtime answers).
//! - `/ready`: 200 while the pipeline streams (slot held, producer initialised, checkpoint read);
//!   503 while connecting, standing by for the slot, or draining.
//! - `/metrics`: Prometheus/OpenMetrics text (names in [`super::metrics`]).
//!
//! The server is auxiliary: if the address is taken (a second relay on the same host, e.g. a
//! standby), the relay keeps publishing, logs the error once and retries binding every few
//! seconds; Prometheus sees the target down, which the `OutboxRelayDown` alert reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Status;

/// Content type of the OpenMetrics text exposition (what prometheus-client writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Pause between attempts to bind a taken address.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// The routes, for [`spawn`] and tests.
pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(status)
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(status): State<Arc<Status>>) -> impl IntoResponse {
    if status.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if status.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if status
        .standing_by
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        (StatusCode::SERVICE_UNAVAILABLE, "standing by\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(status): State<Arc<Status>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        status.render_metrics(),
    )
}

/// Serves the admin endpoints on `addr` in the background, for the life of the process.
pub fn spawn(addr: SocketAddr, status: Arc<Status>) {
    tokio::spawn(async move {
        let mut logged = false;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    if !logged {
                        tracing::error!(
                            %addr,
                            error = %e,
                            "admin.listen: cannot listen; /live, /ready and /metrics are unavailable until the address is free (retrying)"
                        );
                        logged = true;
                    }
                    tokio::time::sleep(BIND_RETRY).await;
                }
            }
        };
        tracing::info!(%addr, "admin server listening: /live /ready /metrics");
        if let Err(e) = axum::serve(listener, router(status)).await {
            tracing::error!(%addr, error = %e, "admin server stopped");
        }
    });
}
