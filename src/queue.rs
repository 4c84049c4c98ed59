//! Delivery of job messages over Redis with apalis-redis 1.0, and (in
//! [`guard_state`]) the model guard's state, shared by workers through
//! Redis; the only module that names apalis or Redis.
//!
//! Redis only delivers. A message is `{job_id}` and nothing else: the job's
//! spec, state and history are read from Postgres, and an undecodable
//! payload (which kills an apalis worker) can never be produced by a schema
//! change. Delivery is at least once; duplicates are refused by the lease
//! claim, and the feeder re-sends whatever Redis loses.
//!
//! apalis-redis 1.0 settings, from behaviour measured against it:
//! - `batch_size(1)`: with larger batches a busy worker stops heartbeating
//!   and a peer re-runs its jobs concurrently.
//! - `poll_with_interval(250 ms)`: otherwise an idle worker only polls on its
//!   heartbeat (~30 s).
//! - unique worker names: a restart that reuses a name fails silently.
//! - Kiln's retry and crash accounting live in Postgres; the handler acks
//!   (returns `Ok`) once Postgres holds the job's next step (see
//!   [`crate::worker`]), and never asks apalis to retry (its counter
//!   ignores `max_attempts`).

pub mod guard_state;

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The whole queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: Uuid,
}

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    // The cause is in the message, so it is not also a `source`: printed
    // as a chain it would read twice.
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    #[error("pushing to the queue: {0}")]
    Push(String),
    #[error("queue worker stopped: {0}")]
    Worker(String),
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> QueueError {
        QueueError::Redis(e)
    }
}

/// How often an idle consumer polls Redis.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// apalis' own heartbeat. Kiln's leases (in Postgres) decide job ownership;
/// this heartbeat only tells apalis which messages are orphans: a message a
/// dead worker had fetched but not yet claimed is re-queued by a live
/// worker after `APALIS_HEARTBEAT × MISSED_HEARTBEATS`.
const APALIS_HEARTBEAT: Duration = Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 3;

fn apalis_config(queue: &str) -> Config {
    Config::default()
        .queue(format!("{queue}:jobs"))
        .batch_size(1)
        .heartbeat_interval(APALIS_HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

/// Sends job messages; used by the dispatcher's feeder.
#[derive(Clone)]
pub struct Producer {
    storage: RedisStorage<JobMessage>,
    conn: ConnectionManager,
    marker_key: String,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("marker_key", &self.marker_key)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub async fn connect(redis_url: &str, queue: &str) -> Result<Producer, QueueError> {
        let conn = apalis_redis::connect(redis_url).await?;
        Ok(Producer {
            storage: RedisStorage::new(conn.clone()).with_config(apalis_config(queue)),
            conn,
            marker_key: format!("{queue}:kiln:marker"),
        })
    }

    /// Pushes one message per job in one round trip.
    pub async fn push(&self, job_ids: &[Uuid]) -> Result<(), QueueError> {
        let messages = job_ids.iter().map(|&job_id| JobMessage { job_id }).collect();
        let mut storage = self.storage.clone();
        storage
            .push_bulk(messages)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// `PING`, for readiness probes.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// Detects that Redis lost its data (restart without persistence,
    /// `FLUSHALL`, failover to an empty replica): sets a marker key if it is
    /// missing and reports whether it was missing. The first call after
    /// start-up reports `true`, which is harmless: re-sending is idempotent.
    pub async fn check_lost(&self) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let created: bool = redis::cmd("SET")
            .arg(&self.marker_key)
            .arg(1)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await?
            .is_some();
        Ok(created)
    }
}

/// What the consumer calls for each message. Resolves to `true` once
/// Postgres holds the job's next step or a duplicate was refused (the
/// message is acked), `false` to hand the message back (the worker is
/// draining, or claiming the job failed).
#[derive(Clone)]
pub struct Handler(Arc<dyn Fn(Uuid) -> BoxFuture<'static, bool> + Send + Sync + 'static>);

impl Handler {
    pub fn new(f: impl Fn(Uuid) -> BoxFuture<'static, bool> + Send + Sync + 'static) -> Handler {
        Handler(Arc::new(f))
    }
}

/// Consumes messages until `shutdown` is cancelled, calling `handler` for each
/// with at most `concurrency` in flight. Returns an error when the apalis
/// worker stops by itself (for example after Redis lost its registration);
/// the caller restarts it under a new name.
pub async fn consume(
    redis_url: &str,
    queue: &str,
    worker_name: &str,
    concurrency: usize,
    handler: Handler,
    shutdown: CancellationToken,
) -> Result<(), QueueError> {
    let conn = apalis_redis::connect(redis_url).await?;
    let backend = RedisStorage::<JobMessage>::new(conn)
        .with_config(apalis_config(queue))
        .poll_with_interval(POLL_INTERVAL);
    let worker = WorkerBuilder::new(worker_name)
        .backend(backend)
        .data(handler)
        .concurrency(concurrency)
        .build(deliver);
    let stop = shutdown.clone();
    worker
        .run_until(async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| QueueError::Worker(e.to_string()))?;
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        Err(QueueError::Worker("stopped without a shutdown request".into()))
    }
}

/// The apalis task function. Acks once Kiln is done with the message: the
/// outcome is in Postgres, and anything left undone is re-delivered from
/// there. A message handed back (shutdown) is returned as an error, which
/// apalis-redis re-schedules for another worker a second later.
async fn deliver(message: JobMessage, handler: Data<Handler>) -> Result<(), BoxDynError> {
    if (handler.0.0)(message.job_id).await {
        Ok(())
    } else {
        Err("worker shutting down; message handed back".into())
    }
}
