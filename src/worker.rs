//! The worker process: takes `{job_id}` messages off the queue, claims each
//! job's lease, heartbeats it, and runs the [`Pipeline`] on it, many jobs at
//! once (model calls are I/O-bound).
//!
//! A message is acknowledged once Postgres holds what happens to the job
//! next: its outcome, its release (interrupted, deferred, panicked) for the
//! feeder to send again, a lease that another worker holds or that will
//! expire (a run a storage error aborted), or a finished state that refuses
//! the claim. Postgres, not the message, is what a job's resumption relies
//! on; a message goes back to the queue only while the worker drains or
//! when claiming failed.
//! On shutdown the worker stops taking messages, lets in-flight jobs run for
//! the grace period, then interrupts them and releases their leases so other
//! workers resume them at once from their last persisted phase.
//!
//! Liveness: the process holds its liveness lock ([`Registration`]) for as
//! long as it runs, so the reconciler sees its death within about a second.
//! If the lock's connection drops while the process lives, the worker takes
//! the lock again; if it had been declared dead meanwhile, its leases were
//! taken back, and it stops every job it was running.
//!
//! Crashes: a job whose pipeline panics is a crash of that job alone: its
//! heartbeat stops with it, the panic is recorded on its attempt and the job
//! handed back at once (other workers first). A job a death was blamed on
//! runs its in-worker steps alone (see [`Pipeline`]), so its next death is
//! its own.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};
use uuid::Uuid;

use crate::config::Settings;
use crate::llm::LlmClient;
use crate::llm::guard::Guard;
use crate::pipeline::{Backoff, JobEnd, Pipeline, PipelineSettings};
use crate::queue::guard_state::GuardState;
use crate::queue::{self, Handler};
use crate::sandbox::{RunLimits, Sandbox, Slots};
use crate::store::liveness::Registration;
use crate::store::{Store, StoreError};

/// Errors that stop a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // The cause is in the message, not also a `source` (it would print twice).
    #[error("model client: {0}")]
    Llm(crate::llm::LlmError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error("{0}")]
    Config(String),
}

impl From<crate::llm::LlmError> for WorkerError {
    fn from(e: crate::llm::LlmError) -> WorkerError {
        WorkerError::Llm(e)
    }
}

/// Most time between lease heartbeats. Short, because a missed heartbeat is
/// also how a running job learns it was cancelled.
const MAX_HEARTBEAT: Duration = Duration::from_secs(2);

/// Longest a starting worker waits for its sandbox to warm up before it
/// takes jobs ([`crate::sandbox::Sandbox::warmed`]).
const SANDBOX_WARM_WAIT: Duration = Duration::from_secs(60);

/// How often the liveness lock's connection is checked.
const LIVENESS_CHECK: Duration = Duration::from_millis(500);

/// How long a worker that fetched back a job that panicked in it waits
/// before pushing the job's message again: long enough for the fetch apalis
/// makes right after an ack (that one must come back empty), and doubled
/// each time the job comes back all the same.
const HAND_BACK_WAIT: Duration = Duration::from_millis(10);

/// How long a worker leaves a job that panicked in it to other workers.
const AFTER_PANIC_ELSEWHERE: Duration = Duration::from_secs(5);

/// A worker process's shared state; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    /// Unique per process (apalis-redis misbehaves when names repeat).
    id: String,
    redis_url: String,
    queue: String,
    concurrency: usize,
    lease_ttl: Duration,
    grace: Duration,
    /// Jobs in flight, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Parent of every job's cancel token: cancelled when the grace period
    /// ends, interrupting what is still running.
    interrupt: CancellationToken,
    /// Set once shutdown starts: new messages are handed back, not claimed.
    draining: AtomicBool,
    /// Parent of the cancel tokens of jobs claimed under the current
    /// liveness registration; cancelled (and replaced) when the worker
    /// learns it was declared dead.
    registration: Mutex<CancellationToken>,
    /// Jobs that panicked here lately, left to other workers for a while:
    /// when each panicked, and how often it has come back here since.
    panicked: Mutex<HashMap<Uuid, (Instant, u32)>>,
    /// Pushes the messages of those jobs back; connected on first use.
    hand_back: tokio::sync::OnceCell<queue::Producer>,
    /// Where `/metrics` is served (`KILN_WORKER_METRICS_ADDR`), bound at
    /// build so a taken port stops start-up; taken by `run_until_stopped`.
    metrics: Mutex<Option<tokio::net::TcpListener>>,
}

impl Worker {
    /// Builds a worker from configuration: connects to Postgres, the model
    /// provider and the sandbox.
    pub async fn build(settings: &Settings) -> Result<Worker, WorkerError> {
        let store = Store::connect(&settings.database_url, settings.worker.db_connections).await?;
        let llm = crate::llm::build(&settings.llm)?;
        let shared = GuardState::connect(&settings.redis_url, &settings.queue).await?;
        let sandbox = crate::sandbox::build(&settings.sandbox).await?;
        let worker = Worker::from_parts(settings, store, llm, Guard::new(shared, &settings.llm), sandbox);
        if let Some(addr) = settings.worker.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| WorkerError::Config(format!("KILN_WORKER_METRICS_ADDR: binding {addr}: {e}")))?;
            *worker.inner.metrics.lock().expect("not poisoned") = Some(listener);
        }
        Ok(worker)
    }

    /// Assembles a worker from its parts; the seam tests use to run a worker
    /// in-process against real services.
    pub fn from_parts(
        settings: &Settings,
        store: Store,
        llm: Arc<dyn LlmClient>,
        guard: Guard,
        sandbox: Arc<dyn Sandbox>,
    ) -> Worker {
        let id = settings.worker.worker_id.clone().unwrap_or_else(default_worker_id);
        let pipeline = Pipeline {
            store,
            llm: Arc::new(crate::llm::Measured {
                inner: llm,
                prices: settings.llm.prices.clone(),
            }),
            guard,
            sandbox: Arc::new(Slots::new(sandbox, settings.sandbox.slots)),
            in_worker: Arc::new(tokio::sync::RwLock::new(())),
            settings: PipelineSettings {
                default_model: settings.llm.model.clone(),
                max_tokens: settings.llm.max_tokens,
                temperature: settings.llm.temperature,
                llm_max_retries: settings.llm.max_retries,
                sandbox_max_retries: settings.worker.sandbox_max_retries,
                llm_backoff: Backoff {
                    base: settings.llm.backoff_base,
                    max: settings.llm.backoff_max,
                },
                sandbox_backoff: Backoff {
                    base: settings.worker.sandbox_backoff_base,
                    max: settings.worker.sandbox_backoff_max,
                },
                llm_max_wait: settings.llm.max_wait,
                crash_limit: settings.worker.crash_limit,
                limits: RunLimits::from_settings(&settings.sandbox),
                prices: settings.llm.prices.clone(),
            },
        };
        let interrupt = CancellationToken::new();
        Worker {
            inner: Arc::new(Inner {
                pipeline,
                id,
                redis_url: settings.redis_url.clone(),
                queue: settings.queue.clone(),
                concurrency: settings.worker.concurrency,
                lease_ttl: settings.worker.lease_ttl,
                grace: settings.worker.shutdown_grace,
                tracker: TaskTracker::new(),
                registration: Mutex::new(interrupt.child_token()),
                interrupt,
                draining: AtomicBool::new(false),
                panicked: Mutex::new(HashMap::new()),
                hand_back: tokio::sync::OnceCell::new(),
                metrics: Mutex::new(None),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Consumes the queue until `shutdown` is cancelled, then drains: waits
    /// up to the grace period for in-flight jobs, interrupts the rest and
    /// releases their leases.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        info!(worker_id = %self.inner.id, concurrency = self.inner.concurrency, "worker started");
        // No claim before the liveness lock is held: every lease this worker
        // takes is then watched by the reconciler.
        // Nor before the sandbox is warm: a worker that takes jobs while its
        // warm servers start spends their time (and the machine's CPU) on
        // the start-up. A sandbox that cannot warm up does not stop it.
        tokio::select! {
            () = shutdown.cancelled() => {
                info!("worker stopped before its sandbox was warm");
                return;
            }
            warm = self.inner.pipeline.sandbox.warmed(SANDBOX_WARM_WAIT) => if !warm {
                warn!(within = ?SANDBOX_WARM_WAIT, "the sandbox did not warm up; taking jobs anyway");
            }
        }
        let options = (*self.inner.pipeline.store.pool().connect_options()).clone();
        let Some(registration) = self.register(&options, &shutdown).await else {
            info!("worker stopped before it registered");
            return;
        };
        let metrics_listener = self.inner.metrics.lock().expect("not poisoned").take();
        if let Some(listener) = metrics_listener {
            info!(addr = ?listener.local_addr().ok(), "serving /metrics");
            tokio::spawn(serve_metrics(listener, shutdown.clone()));
        }
        let stop_liveness = CancellationToken::new();
        let liveness = tokio::spawn(self.clone().keep_alive(registration, options, stop_liveness.clone()));
        let stop_consuming = CancellationToken::new();
        let consumer = tokio::spawn(self.clone().consume(stop_consuming.clone()));
        shutdown.cancelled().await;

        let deadline = tokio::time::Instant::now() + self.inner.grace;
        info!(in_flight = self.inner.tracker.len(), grace = ?self.inner.grace, "shutting down: no new jobs");
        self.inner.draining.store(true, Ordering::SeqCst);
        stop_consuming.cancel();
        self.inner.tracker.close();
        // Jobs may finish until shortly before the deadline; the rest of the
        // grace period is for checkpointing: interrupting them (their last
        // persisted phase is what the next worker resumes from) and
        // releasing their leases so others take them at once.
        let checkpoint = (self.inner.grace / 4).min(Duration::from_secs(2));
        if tokio::time::timeout_at(deadline - checkpoint, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = self.inner.tracker.len(),
                "grace period ending: interrupting jobs and releasing their leases"
            );
            self.inner.interrupt.cancel();
            self.inner.tracker.wait().await;
        }
        // In-flight handlers have returned; the consumer winds down on its own.
        let _ = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + Duration::from_millis(200)),
            consumer,
        )
        .await;
        // Containers or processes prepared for runs that will not come.
        self.inner.pipeline.sandbox.shutdown().await;
        // Every lease is released: a clean exit, not a death.
        stop_liveness.cancel();
        if let Ok(Some(registration)) = liveness.await {
            registration.deregister().await;
        }
        info!("worker stopped");
    }

    /// Registers the worker and takes its liveness lock, retrying while the
    /// database is unavailable; `None` if shutdown came first.
    async fn register(&self, options: &PgConnectOptions, shutdown: &CancellationToken) -> Option<Registration> {
        loop {
            match Registration::register(options, &self.inner.id).await {
                Ok(mut registration) => {
                    info!(lock_key = registration.lock_key, "liveness lock taken");
                    // Only the workers listing reads it: not worth a retry.
                    let concurrency = i32::try_from(self.inner.concurrency).unwrap_or(i32::MAX);
                    if let Err(e) = registration.record_capacity(concurrency).await {
                        warn!(error = %e, "recording the worker's capacity failed");
                    }
                    return Some(registration);
                }
                Err(e) => warn!(error = %e, "registering the worker's liveness failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Watches the liveness lock's connection until `stop`; when it drops,
    /// takes the lock again. Returns the registration for a clean exit.
    async fn keep_alive(
        self,
        mut registration: Registration,
        options: PgConnectOptions,
        stop: CancellationToken,
    ) -> Option<Registration> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Some(registration),
                () = tokio::time::sleep(LIVENESS_CHECK) => {}
            }
            if registration.alive().await {
                continue;
            }
            warn!("the liveness lock's connection dropped; taking the lock again");
            loop {
                match registration.reacquire(&options).await {
                    Ok(false) => {
                        info!("liveness lock taken again before anyone noticed");
                        break;
                    }
                    Ok(true) => {
                        // The reconciler handed our jobs to others: stop them
                        // now rather than at their next heartbeat.
                        warn!("this worker was declared dead meanwhile; stopping the jobs it was running");
                        let fresh = self.inner.interrupt.child_token();
                        let old = std::mem::replace(&mut *self.inner.registration.lock().unwrap(), fresh);
                        old.cancel();
                        break;
                    }
                    Err(e) => debug!(error = %e, "taking the liveness lock again failed; retrying"),
                }
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }

    /// Runs apalis consumers one after another: if one stops by itself (for
    /// example because Redis lost its registration), a new one starts under a
    /// new name.
    async fn consume(self, stop: CancellationToken) {
        let handler: Handler = {
            let worker = self.clone();
            Handler::new(move |job_id| {
                let worker = worker.clone();
                Box::pin(async move { worker.deliver(job_id).await })
            })
        };
        let mut generation = 0u32;
        while !stop.is_cancelled() {
            generation += 1;
            let name = format!("{}-{generation}", self.inner.id);
            let result = queue::consume(
                &self.inner.redis_url,
                &self.inner.queue,
                &name,
                self.inner.concurrency,
                handler.clone(),
                stop.clone(),
            )
            .await;
            if let Err(e) = result {
                error!(error = %e, "queue consumer stopped; restarting");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Handles one message; returns false to hand it back to the queue
    /// (the worker is draining).
    async fn deliver(&self, job_id: Uuid) -> bool {
        if self.inner.draining.load(Ordering::SeqCst) {
            return false;
        }
        if let Some(returns) = self.panicked_lately(job_id) {
            // Left to another worker (after a while this one takes it too:
            // it may be alone). The message is acked now and pushed again
            // in a moment, see `hand_back`.
            let worker = self.clone();
            self.inner
                .tracker
                .spawn(async move { worker.hand_back(job_id, returns).await });
            return true;
        }
        let worker = self.clone();
        // `batch_id` and `run` are known once the job is claimed (`process`
        // records them): then every line logged for the job names them.
        let span = tracing::info_span!(
            "job",
            %job_id,
            worker_id = %self.inner.id,
            batch_id = tracing::field::Empty,
            run = tracing::field::Empty
        );
        // Spawned, not awaited inline: if apalis drops this handler (its
        // worker stopping), the job still runs to an outcome.
        let task = self
            .inner
            .tracker
            .spawn(async move { worker.process(job_id).await }.instrument(span));
        match task.await {
            Ok(handled) => handled,
            Err(e) => {
                // A panic outside the pipeline (which catches its own): the
                // lease expires and the next claim records the takeover.
                error!(%job_id, error = %e, "job task panicked");
                true
            }
        }
    }

    /// Claims and runs one job. Public so tests can drive a worker without Redis.
    pub async fn process(&self, job_id: Uuid) -> bool {
        let inner = &self.inner;
        let store = &inner.pipeline.store;
        let claimed = crate::store::retry_while_unavailable(
            Duration::from_secs(1),
            Duration::from_secs(1),
            || !inner.draining.load(Ordering::SeqCst),
            || store.claim(job_id, &inner.id, inner.lease_ttl),
        )
        .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                error!(error = %e, "claiming the job failed");
                return false;
            }
        };
        let Some(job) = claimed else {
            debug!("claim refused: the job is finished or leased by a live worker");
            return true;
        };
        tracing::Span::current()
            .record("batch_id", tracing::field::display(job.batch_id))
            .record("run", job.run);
        info!(
            epoch = job.lease.epoch,
            kind = job.spec.kind().as_str(),
            crashes = job.crashes,
            blamed_crashes = job.blamed_crashes,
            isolated = job.isolate,
            "claimed"
        );

        let cancel = inner.registration.lock().unwrap().child_token();
        let lease_lost = Arc::new(AtomicBool::new(false));
        // Aborted when dropped, so it also stops if this task unwinds.
        let heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
            store.clone(),
            job.lease.clone(),
            inner.lease_ttl,
            cancel.clone(),
            lease_lost.clone(),
        )));
        if job.isolate {
            info!("running isolated: a worker death was blamed on this job before");
        }
        let end = AssertUnwindSafe(inner.pipeline.run(&job, &cancel)).catch_unwind().await;
        drop(heartbeat);
        let end = match end {
            Ok(end) => end,
            Err(panic) => {
                self.panicked(&job.lease, panic_message(panic.as_ref())).await;
                return true;
            }
        };

        match end {
            Ok(JobEnd::Succeeded) => info!("job succeeded"),
            Ok(JobEnd::AwaitingReview) => info!("job passed; awaiting review"),
            Ok(JobEnd::Failed { code }) => info!(%code, "job failed"),
            Ok(JobEnd::LeaseLost) => info!("lease lost (cancelled, retried or taken over); stopped"),
            Ok(JobEnd::Interrupted) if lease_lost.load(Ordering::SeqCst) => {
                info!("lease lost (cancelled, retried or taken over); stopped");
            }
            Ok(JobEnd::Deferred(wait)) => match store.release(&job.lease, Some(wait)).await {
                Ok(()) => info!(
                    ?wait,
                    "provider's circuit breaker is open; job handed back to the queue"
                ),
                Err(e) => warn!(error = %e, "deferring the job failed (its lease will expire)"),
            },
            Ok(JobEnd::Interrupted) => match store.release(&job.lease, None).await {
                Ok(()) => info!("interrupted; lease released for another worker"),
                Err(StoreError::LeaseLost) => info!("interrupted; the lease had been taken back already"),
                Err(e) => warn!(error = %e, "interrupted; releasing the lease failed (it will expire)"),
            },
            Err(e) => {
                error!(error = %e, "job aborted by a storage error; its lease will expire and it will be re-delivered");
            }
        }
        true
    }
}

impl Worker {
    /// How often a job that panicked here lately has come back since, or
    /// `None` if it did not panic here lately; counts this return.
    fn panicked_lately(&self, job_id: Uuid) -> Option<u32> {
        let mut panicked = self.inner.panicked.lock().unwrap();
        panicked.retain(|_, (at, _)| at.elapsed() < AFTER_PANIC_ELSEWHERE);
        panicked.get_mut(&job_id).map(|(_, returns)| {
            *returns += 1;
            *returns - 1
        })
    }

    /// Pushes the message of a job that panicked here back to the queue,
    /// for another worker. Every consumer polls Redis on a fixed period, and
    /// also at once when one of its messages is acked; so the message is
    /// pushed just after this worker acked it and polled: the next consumer
    /// to poll is then another worker (this one polls again only a period
    /// later). Left to the feeder, it would be pushed at the feeder's tick,
    /// whose phase can favour this worker at every tick. Postgres still
    /// says the job was sent, so the feeder does not send it twice.
    async fn hand_back(&self, job_id: Uuid, returns: u32) {
        tokio::time::sleep(HAND_BACK_WAIT * 2u32.pow(returns.min(5))).await;
        match self.push_again(job_id).await {
            Ok(()) => info!(%job_id, returns, "a job that panicked here lately came back; handed to other workers"),
            Err(e) => {
                warn!(%job_id, error = %e, "pushing a panicked job back failed; leaving it to the feeder");
                if let Err(e) = self.inner.pipeline.store.redispatch(job_id).await {
                    warn!(%job_id, error = %e, "leaving a panicked job to the feeder failed (it is sent again once stale)");
                }
            }
        }
    }

    async fn push_again(&self, job_id: Uuid) -> Result<(), queue::QueueError> {
        let inner = &self.inner;
        let producer = inner
            .hand_back
            .get_or_try_init(|| queue::Producer::connect(&inner.redis_url, &inner.queue))
            .await?;
        producer.push(&[job_id]).await
    }

    /// A job's pipeline panicked: its heartbeat has stopped; record the
    /// panic and hand the job back at once, blamed on it.
    async fn panicked(&self, lease: &crate::store::Lease, message: String) {
        error!(panic = %message, "the job panicked; handing it back");
        self.inner
            .panicked
            .lock()
            .unwrap()
            .insert(lease.job_id, (Instant::now(), 0));
        let store = &self.inner.pipeline.store;
        let mut tries = 1;
        let recorded = crate::store::retry_while_unavailable(
            Duration::from_millis(500),
            Duration::from_millis(500),
            || {
                tries += 1;
                tries <= 20
            },
            || store.release_after_panic(lease, &message),
        )
        .await;
        match recorded {
            Ok(blamed) => info!(blamed_crashes = blamed, "panic recorded; job handed back"),
            Err(e) => warn!(error = %e, "recording the panic failed (the lease will expire)"),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease until aborted. On loss (takeover, cancel, retry) it
/// cancels the job so it stops within one heartbeat.
async fn heartbeat(
    store: Store,
    lease: crate::store::Lease,
    ttl: Duration,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let every = (ttl / 3).min(MAX_HEARTBEAT);
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&lease, ttl).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost) => {
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "heartbeat failed; retrying"),
        }
    }
}

fn default_worker_id() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "worker".into(), |h| h.trim().to_owned());
    let suffix = &Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// Serves the worker's `/metrics` until `shutdown`.
async fn serve_metrics(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                crate::metrics::encode(crate::metrics::worker_registry()),
            )
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        error!(error = %e, "the /metrics server stopped");
    }
}
