//! The dispatcher's HTTP API v1 (see `ARCHITECTURE.md`): axum routes over
//! the store, plus the feeder that moves ready jobs into Redis.
//!
//! # Layout
//! - [`error`]: [`ApiError`], the only error type handlers return.
//! - [`batches`]: create, status, job listing, retry and cancel of batches.
//! - [`jobs`]: job status, attempts, artifacts, files, retry and cancel.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batches;
pub mod error;
pub mod jobs;
pub mod ops;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

pub use error::ApiError;

use crate::config::{ApiSettings, Settings};
use crate::feeder::{Feeder, FeederStats};
use crate::queue::{Producer, QueueError};
use crate::store::{Store, StoreError};

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub producer: Producer,
    pub limits: ApiSettings,
    /// Wakes the feeder when a batch or retry makes jobs ready.
    pub feeder_wake: Arc<Notify>,
    pub feeder_stats: Arc<FeederStats>,
}

/// Errors that stop the dispatcher from starting.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// The dispatcher: the HTTP API and the feeder, built and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    feeder: Feeder,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database if needed)
    /// and Redis, and binds the listen address (port 0 picks a free port).
    pub async fn build(settings: &Settings) -> Result<Application, DispatcherError> {
        let store = Store::connect(&settings.database_url, 16).await?;
        let producer = Producer::connect(&settings.redis_url, &settings.queue).await?;
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .map_err(|source| DispatcherError::Bind {
                addr: settings.http_addr,
                source,
            })?;
        let feeder_wake = Arc::new(Notify::new());
        let feeder_stats = Arc::new(FeederStats::default());
        let state = AppState {
            store: store.clone(),
            producer: producer.clone(),
            limits: settings.api.clone(),
            feeder_wake: feeder_wake.clone(),
            feeder_stats: feeder_stats.clone(),
        };
        let feeder = Feeder {
            store,
            producer,
            queue: settings.queue.clone(),
            settings: settings.feeder.clone(),
            wake: feeder_wake,
            stats: feeder_stats,
        };
        Ok(Application {
            listener,
            router: router(state),
            feeder,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), DispatcherError> {
        let feeder = tokio::spawn(self.feeder.run(shutdown.clone()));
        let stop = shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(DispatcherError::Serve);
        shutdown.cancel();
        let _ = feeder.await;
        served
    }
}

/// All routes of API v1.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/batches", post(batches::create))
        .route("/v1/batches/{id}", get(batches::status).patch(batches::update))
        .route("/v1/batches/{id}/jobs", get(batches::jobs))
        .route("/v1/batches/{id}/retry", post(batches::retry))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/jobs/{id}", get(jobs::status))
        .route("/v1/jobs/{id}/attempts", get(jobs::attempts))
        .route("/v1/jobs/{id}/artifacts", get(jobs::artifacts))
        .route("/v1/jobs/{id}/files/{*path}", get(jobs::file))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // Bodies are read with Kiln's own limit, which answers 413 in the
        // API's error format.
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Parses an id from the path, naming it when it is not a UUID.
pub(crate) fn parse_id(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid(field, format!("{raw:?} is not a UUID")))
}
