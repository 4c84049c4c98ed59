//! Postgres, the system of record (architecture invariant 1).
//!
//! Every fact Kiln knows is written here before it is acted on: batches and
//! their jobs, the lease that says which worker owns a job, every attempt's
//! phases, and the files each attempt produced. Redis only carries `{job_id}`
//! messages, so losing Redis loses nothing.
//!
//! # Fencing
//!
//! A worker owns a job only through its [`Lease`] (owner, epoch). Every write a
//! worker makes is in a transaction begun by [`Store::fenced`], whose
//! [`Lease::fence`] locks the job row and checks that the epoch is still the
//! current one and the job still running.
//! A takeover, a cancel or a retry bumps the epoch, so a worker that lost its
//! lease gets [`StoreError::LeaseLost`] instead of writing (invariant 2).
//!
//! # Text the database cannot hold
//!
//! Postgres refuses U+0000 in `text` and `jsonb`. The API rejects it in
//! requests; text from the model and the sandbox goes through [`storable`]
//! and [`storable_json`], which write it as U+FFFD, so a NUL is never a
//! storage error that would retry the job (and pay the model) in a loop.
//! Files keep their exact bytes (`bytea`); a NUL in a generated file or path
//! is the model's failure, reported by validation.
//!
//! # Layout
//! - [`batches`]: creating batches (one bulk insert) and reading their status.
//! - [`jobs`]: claiming, heartbeating, finishing, cancelling and retrying jobs.
//! - [`reviews`]: a person's decision on a passing job of a review batch.
//! - [`attempts`]: the phases of each attempt and their artifacts.
//! - [`feed`]: what the dispatcher's feeder and reconciler read and mark.
//! - [`tokens`]: the API's bearer tokens (hashes only).
//! - [`liveness`]: worker processes' liveness locks and dead-worker detection.
//! - [`overview`]: the batch listing and the live workers, for operators.
//! - [`report`]: a batch's pass rates per attempt, cost per success, phase
//!   times and failures.

pub mod attempts;
pub mod batches;
pub mod feed;
pub mod jobs;
pub mod liveness;
pub mod overview;
pub mod report;
pub mod reviews;
pub mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The embedded migrations, applied at start-up by every process.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What U+0000 is stored as.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` with every U+0000 replaced by [`NUL_REPLACEMENT`].
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', &NUL_REPLACEMENT.to_string()))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// `value` with U+0000 replaced by [`NUL_REPLACEMENT`] in every string and key.
pub fn storable_json(value: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    use serde_json::Value;
    fn has_nul(value: &Value) -> bool {
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) if s.contains('\0') => return true,
                Value::Array(items) => stack.extend(items),
                Value::Object(map) => {
                    if map.keys().any(|k| k.contains('\0')) {
                        return true;
                    }
                    stack.extend(map.values());
                }
                _ => {}
            }
        }
        false
    }
    fn scrub(value: &mut Value) {
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    if let std::borrow::Cow::Owned(clean) = storable(s) {
                        *s = clean;
                    }
                }
                Value::Array(items) => stack.extend(items.iter_mut()),
                Value::Object(map) => {
                    if map.keys().any(|k| k.contains('\0')) {
                        *map = std::mem::take(map)
                            .into_iter()
                            .map(|(k, v)| (storable(&k).into_owned(), v))
                            .collect();
                    }
                    stack.extend(map.values_mut());
                }
                _ => {}
            }
        }
    }
    if !has_nul(value) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut owned = value.clone();
    scrub(&mut owned);
    std::borrow::Cow::Owned(owned)
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // Causes are in the messages, so they are not also `source`s: printed
    // as a chain (`error_chain`, anyhow) they would read twice.
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The caller's lease was taken over, cancelled or retried: it must stop
    /// working on the job without writing anything more.
    #[error("lease lost: the job was taken over, cancelled or retried")]
    LeaseLost,
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with the stored state (message says how).
    #[error("{0}")]
    Conflict(String),
    /// A stored value this build cannot read (an unknown state, phase or
    /// code): refused rather than read as a default.
    #[error("unreadable stored value: {0}")]
    Corrupt(crate::domain::UnknownName),
    /// A stored JSON document this build cannot read (a format it does not
    /// know, a hand edit): refused rather than read as defaults, which
    /// would drop what it says (a batch's budget, say).
    #[error("unreadable stored {what}: {error}")]
    Unreadable { what: String, error: serde_json::Error },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(e)
    }
}

impl From<crate::domain::UnknownName> for StoreError {
    fn from(e: crate::domain::UnknownName) -> StoreError {
        StoreError::Corrupt(e)
    }
}

impl StoreError {
    /// True when the same call may succeed later: the database blinked
    /// (restart, failover, network) rather than refusing the statement.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // 08: connection exception; 57P0x: server shutting down or
                    // starting; 40001/40P01: serialisation failure, deadlock.
                    code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01"
                }),
                _ => false,
            },
            StoreError::Migrate(_)
            | StoreError::LeaseLost
            | StoreError::NotFound(_)
            | StoreError::Conflict(_)
            | StoreError::Corrupt(_)
            | StoreError::Unreadable { .. } => false,
        }
    }
}

/// Calls `call` again while the database cannot answer it
/// ([`StoreError::is_transient`]: a restart, a failover) and `keep_trying()`
/// allows, pausing `pause` after the first failure and twice as long after
/// each next one, up to `max_pause`. Returns the first result that is not
/// such a failure, or the last failure when `keep_trying()` said to stop.
pub async fn retry_while_unavailable<T, Fut>(
    pause: Duration,
    max_pause: Duration,
    mut keep_trying: impl FnMut() -> bool,
    mut call: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut pause = pause;
    loop {
        match call().await {
            Err(e) if e.is_transient() && keep_trying() => {
                tracing::warn!(error = %e, "database unavailable; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(max_pause);
            }
            other => return other,
        }
    }
}

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects, creating the database if it does not exist, and applies the
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        if !Postgres::database_exists(url).await? {
            // Two processes may race to create it; losing the race is fine.
            if let Err(e) = Postgres::create_database(url).await
                && !Postgres::database_exists(url).await?
            {
                return Err(e.into());
            }
        }
        let options = PgConnectOptions::from_str(url)?.application_name("kiln");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction fenced by `lease` (see [`Lease::fence`] for
    /// why): every write a worker makes on a job's behalf is in one. The
    /// caller commits it; dropping it, on an error or an early return, rolls
    /// it back.
    pub(crate) async fn fenced(&self, lease: &Lease) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lease.fence(&mut tx).await?;
        Ok(tx)
    }

    /// `SELECT 1`, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query_scalar!("SELECT 1 AS \"one!\"")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}

/// A worker's claim on a job. Every write made on the job's behalf is fenced
/// by it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: Uuid,
    pub owner: String,
    pub epoch: i64,
}

impl Lease {
    /// Locks the job row for the rest of `tx` if this lease is still current
    /// and the job still running; otherwise [`StoreError::LeaseLost`].
    ///
    /// The row lock is what makes fencing airtight: a takeover or cancel that
    /// races with this write waits for `tx` to end, and a write that comes
    /// after them sees the new epoch and is refused.
    async fn fence(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        let held = sqlx::query_scalar!(
            "SELECT 1 AS \"held!\" FROM jobs WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 AND state = 'running' FOR UPDATE",
            self.job_id,
            self.epoch,
            self.owner,
        )
        .fetch_optional(&mut **tx)
        .await?;
        held.map(|_| ()).ok_or(StoreError::LeaseLost)
    }
}
