//! The dispatcher process, the twin of [`crate::worker`]: the HTTP API
//! ([`crate::http`]) and the [`Feeder`] that moves ready jobs into Redis,
//! built from the settings and run until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::{AuthMode, Settings};
use crate::feeder::{Feeder, FeederStats};
use crate::http::{AppState, router};
use crate::queue::{Producer, QueueError};
use crate::store::{Store, StoreError};

/// Errors that stop the dispatcher from starting.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(
        "KILN_AUTH=off is only allowed on a loopback address, but KILN_HTTP_ADDR is {addr}: \
         set KILN_AUTH=required and make a token with `kiln-dispatcher token create --scope submit`, \
         or listen on 127.0.0.1"
    )]
    AuthOffNotLoopback { addr: SocketAddr },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    // The cause is in the message, so the field is not named `source`
    // (which would make it the error's source too, printed twice in a chain).
    #[error("binding {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// The dispatcher: the HTTP API and the feeder, built and ready to run.
pub struct Dispatcher {
    listener: TcpListener,
    router: Router,
    feeder: Feeder,
}

impl Dispatcher {
    /// Connects to Postgres (creating and migrating the database if needed)
    /// and Redis, and binds the listen address (port 0 picks a free port).
    /// Refuses `KILN_AUTH=off` unless that address is loopback.
    pub async fn build(settings: &Settings) -> Result<Dispatcher, DispatcherError> {
        // `::ffff:127.0.0.1` is loopback too.
        if settings.auth == AuthMode::Off && !settings.http_addr.ip().to_canonical().is_loopback() {
            return Err(DispatcherError::AuthOffNotLoopback {
                addr: settings.http_addr,
            });
        }
        let store = Store::connect(&settings.database_url, 16).await?;
        let producer = Producer::connect(&settings.redis_url, &settings.queue).await?;
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .map_err(|error| DispatcherError::Bind {
                addr: settings.http_addr,
                error,
            })?;
        let feeder_wake = Arc::new(Notify::new());
        let feeder_stats = Arc::new(FeederStats::default());
        let state = AppState {
            store: store.clone(),
            producer: producer.clone(),
            limits: settings.api.clone(),
            auth: Authenticator::new(settings.auth, store.clone()),
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
        Ok(Dispatcher {
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
