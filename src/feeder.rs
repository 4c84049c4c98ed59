//! The feeder and reconciler, run by the dispatcher.
//!
//! The backlog lives in Postgres; the feeder keeps at most `window` ready
//! jobs waiting in Redis (invariant 6), by priority and round-robin across
//! batches. Each tick it also reconciles Postgres with what Redis may have
//! lost (invariant 1):
//! - Redis lost its data (restart without persistence, `FLUSHALL`): every
//!   queued job is sent again;
//! - a worker process died (its liveness lock is gone, see
//!   [`crate::store::liveness`]): all its running jobs go back to the queue
//!   and are sent again in the same tick; their next claims record the
//!   takeovers and decide on blame;
//! - a running job's lease expired (the fallback, for what liveness locks
//!   cannot see): it goes back to the queue the same way;
//! - a job waited in Redis longer than `redeliver_after`: sent again, in case
//!   its message was lost some other way;
//! - a worker was declared dead more than [`FORGET_DEAD_WORKERS_AFTER`] ago:
//!   its registration is deleted, so `workers` does not grow forever.
//!
//! Re-sending is always safe: a duplicate message is refused by the claim.
//! Several dispatchers may run; an advisory lock lets one feed at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::FeederSettings;
use crate::queue::Producer;
use crate::store::Store;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct FeederStats {
    pub pushed: AtomicU64,
    pub redis_losses: AtomicU64,
    pub expired_leases: AtomicU64,
    pub dead_workers: AtomicU64,
    pub dead_worker_jobs: AtomicU64,
}

pub struct Feeder {
    pub store: Store,
    pub producer: Producer,
    pub queue: String,
    pub settings: FeederSettings,
    /// Notified when jobs become ready (new batch, retry), to feed at once.
    pub wake: Arc<Notify>,
    pub stats: Arc<FeederStats>,
}

/// How long a worker's liveness lock may be missing before the worker is
/// declared dead. Long enough for live workers to take their locks again
/// after a Postgres restart (which drops them all), short enough that a dead
/// worker's jobs move on within two seconds.
pub const DEAD_AFTER: Duration = Duration::from_secs(1);

/// How often stale window entries and old registrations are looked for.
const STALE_SCAN_EVERY: Duration = Duration::from_secs(30);

/// How long the registration of a dead worker is kept (to show which
/// workers died lately) before it is deleted.
pub const FORGET_DEAD_WORKERS_AFTER: Duration = Duration::from_secs(3600);

impl Feeder {
    pub async fn run(self, shutdown: CancellationToken) {
        info!(queue = %self.queue, window = self.settings.window, "feeder started");
        let mut last_stale_scan = Instant::now();
        loop {
            let stale_scan = last_stale_scan.elapsed() >= STALE_SCAN_EVERY;
            if stale_scan {
                last_stale_scan = Instant::now();
            }
            let started = Instant::now();
            let ticked = self.tick(stale_scan).await;
            crate::metrics::METRICS
                .feeder_tick_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = ticked {
                warn!(error = %e, "feeder tick failed; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.tick) => {}
            }
        }
        info!("feeder stopped");
    }

    /// One round of reconciliation and feeding.
    pub async fn tick(&self, stale_scan: bool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.producer.check_lost().await? {
            let n = self.store.forget_dispatched(None).await?;
            self.stats.redis_losses.fetch_add(1, Ordering::Relaxed);
            if n > 0 {
                warn!(jobs = n, "Redis lost its data; re-sending every queued job");
            }
        }
        let dead = self.store.reclaim_from_dead_workers(DEAD_AFTER).await?;
        if dead.workers > 0 {
            self.stats.dead_workers.fetch_add(dead.workers, Ordering::Relaxed);
            self.stats.dead_worker_jobs.fetch_add(dead.jobs, Ordering::Relaxed);
            warn!(
                workers = dead.workers,
                jobs = dead.jobs,
                "workers died (liveness lock gone); their jobs re-queued"
            );
        }
        let expired = self.store.requeue_expired_leases().await?;
        if expired > 0 {
            self.stats.expired_leases.fetch_add(expired, Ordering::Relaxed);
            info!(jobs = expired, "leases expired (workers died?); jobs re-queued");
        }
        if stale_scan {
            let n = self
                .store
                .forget_dispatched(Some(self.settings.redeliver_after))
                .await?;
            if n > 0 {
                warn!(jobs = n, "jobs waited in Redis too long; re-sending");
            }
            let forgotten = self.store.forget_dead_workers(FORGET_DEAD_WORKERS_AFTER).await?;
            if forgotten > 0 {
                debug!(workers = forgotten, "registrations of long-dead workers deleted");
            }
        }
        while let Some(round) = self.store.begin_feed(&self.queue, self.settings.window).await? {
            let n = round.job_ids.len();
            self.producer.push(&round.job_ids).await?;
            round.mark_dispatched().await?;
            self.stats.pushed.fetch_add(n as u64, Ordering::Relaxed);
            debug!(jobs = n, "fed jobs into the queue");
        }
        Ok(())
    }
}
