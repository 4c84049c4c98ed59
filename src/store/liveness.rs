//! Liveness of worker processes, seen in about a second instead of a lease TTL.
//!
//! Each worker process registers a row in `workers` and holds the
//! session-level advisory lock `(LOCK_CLASS, lock_key)` on a connection of
//! its own ([`Registration`]). Postgres releases a session's locks the moment
//! its connection ends, and the connection of a dead process ends with it, so
//! the reconciler ([`Store::reclaim_from_dead_workers`]) finds a dead worker
//! by its missing lock in `pg_locks`, releases all its leases in one statement
//! and lets the feeder send its jobs again in the same tick.
//!
//! A lock missing for less than a grace is only noted: a Postgres restart
//! drops every lock at once, and live workers take theirs again within
//! moments. A worker whose lock connection dropped takes the lock again
//! ([`Registration::reacquire`]) and learns whether it was declared dead in
//! the meantime (then its leases are gone and it stops those jobs). Lease
//! expiry stays the fallback for what locks cannot see (a partition between
//! a live worker and Postgres, a registration that could not be made).
//! Registrations of dead workers are deleted an hour after their death
//! ([`Store::forget_dead_workers`]); a clean exit deletes its own at once.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};

use super::{Store, StoreError};

/// First key of every worker's advisory lock (`'kiln'` in ASCII), so the
/// locks cannot be confused with other advisory locks in the database.
pub const LOCK_CLASS: i32 = 0x6b69_6c6e;

/// A worker process's registration and the connection holding its lock.
pub struct Registration {
    conn: PgConnection,
    pub worker_id: String,
    pub lock_key: i32,
    /// Job slots of the process, shown by `GET /v1/workers` (see
    /// [`Registration::record_capacity`]); kept to register it again after a
    /// reconnect.
    concurrency: Option<i32>,
}

/// What the reconciler did in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Registrations declared dead.
    pub workers: u64,
    /// Running jobs of theirs handed back to the queue.
    pub jobs: u64,
}

impl Registration {
    /// Opens a dedicated connection, takes a fresh lock key and its lock, and
    /// registers the worker (in that order: a registered worker always holds
    /// its lock, unless it died).
    pub async fn register(options: &PgConnectOptions, worker_id: &str) -> Result<Registration, StoreError> {
        let mut conn = connect(options).await?;
        let lock_key: i32 = sqlx::query_scalar!(r#"SELECT nextval('worker_lock_keys')::int4 AS "key!""#)
            .fetch_one(&mut conn)
            .await?;
        lock(&mut conn, lock_key).await?;
        sqlx::query!(
            "INSERT INTO workers (lock_key, id) VALUES ($1, $2)",
            lock_key,
            worker_id
        )
        .execute(&mut conn)
        .await?;
        Ok(Registration {
            conn,
            worker_id: worker_id.to_owned(),
            lock_key,
            concurrency: None,
        })
    }

    /// Records how many jobs the process runs at once, for the workers
    /// listing; liveness does not depend on it.
    pub async fn record_capacity(&mut self, concurrency: i32) -> Result<(), StoreError> {
        self.concurrency = Some(concurrency);
        sqlx::query!(
            "UPDATE workers SET concurrency = $2 WHERE lock_key = $1",
            self.lock_key,
            concurrency
        )
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// True while the lock's connection answers.
    pub async fn alive(&mut self) -> bool {
        self.conn.execute("SELECT 1").await.is_ok()
    }

    /// After the lock's connection dropped: connects again, takes the same
    /// lock and revives the registration. Returns true when the reconciler
    /// had declared the worker dead meanwhile: its leases were taken back,
    /// so whatever it was running is no longer its own.
    pub async fn reacquire(&mut self, options: &PgConnectOptions) -> Result<bool, StoreError> {
        let mut conn = connect(options).await?;
        lock(&mut conn, self.lock_key).await?;
        let mut tx = conn.begin().await?;
        let died = sqlx::query_scalar!(
            r#"SELECT died_at IS NOT NULL AS "died!" FROM workers WHERE lock_key = $1 FOR UPDATE"#,
            self.lock_key
        )
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query!(
            r#"INSERT INTO workers (lock_key, id, concurrency) VALUES ($1, $2, $3)
               ON CONFLICT (lock_key) DO UPDATE SET lock_missing_since = NULL, died_at = NULL"#,
            self.lock_key,
            self.worker_id,
            self.concurrency,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.conn = conn;
        // A missing row was removed as long dead: treat it as declared dead.
        Ok(died.unwrap_or(true))
    }

    /// A clean exit: the worker released its leases; forget the registration.
    pub async fn deregister(mut self) {
        let _ = sqlx::query!("DELETE FROM workers WHERE lock_key = $1", self.lock_key)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, StoreError> {
    let options = options.clone().application_name("kiln-worker-liveness");
    Ok(
        tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??,
    )
}

/// Takes the worker's lock, waiting while a previous session of the same
/// process (whose death the server has not noticed yet) still holds it.
async fn lock(conn: &mut PgConnection, lock_key: i32) -> Result<(), StoreError> {
    for _ in 0..50 {
        let taken = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock($1, $2) AS "taken!""#,
            LOCK_CLASS,
            lock_key
        )
        .fetch_one(&mut *conn)
        .await?;
        if taken {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(StoreError::Conflict(format!(
        "the liveness lock {lock_key} stayed held by another session"
    )))
}

impl Store {
    /// One pass of dead-worker detection (the reconciler's, every feeder
    /// tick): notes registrations whose lock went missing, clears the note
    /// when it is back, and declares dead those whose lock has been missing
    /// for longer than `grace`, handing every running job they hold back to
    /// the queue at once. The lease owner is kept, so the claim that takes a
    /// job over records the takeover and decides on blame.
    pub async fn reclaim_from_dead_workers(&self, grace: Duration) -> Result<Reclaimed, StoreError> {
        // `held` below: the registration's lock is in this database's lock table.
        sqlx::query!(
            r#"UPDATE workers w SET lock_missing_since = CASE WHEN w.lock_missing_since IS NULL THEN now() END
               WHERE w.died_at IS NULL
                 AND (w.lock_missing_since IS NULL) = NOT EXISTS (
                     SELECT 1 FROM pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND l.classid = $1::int4::oid AND l.objid = w.lock_key::oid)"#,
            LOCK_CLASS,
        )
        .execute(&self.pool)
        .await?;
        // A registration revived by its worker meanwhile no longer matches
        // `lock_missing_since < …` when this update re-checks its row.
        let row = sqlx::query!(
            r#"WITH dead AS (
                   UPDATE workers w SET died_at = now()
                   WHERE w.died_at IS NULL AND w.lock_missing_since < now() - make_interval(secs => $2)
                     AND NOT EXISTS (
                         SELECT 1 FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid = $1::int4::oid AND l.objid = w.lock_key::oid)
                   RETURNING w.id, w.lock_key
               ), released AS (
                   UPDATE jobs j
                   SET state = 'queued', dispatched_at = NULL, lost_cause = 'worker_died', updated_at = now()
                   FROM dead
                   WHERE j.lease_owner = dead.id AND j.state = 'running'
                     -- Another live registration under the same id (a
                     -- misconfigured pair of workers) keeps its jobs.
                     AND NOT EXISTS (
                         SELECT 1 FROM workers o
                         WHERE o.id = dead.id AND o.lock_key <> dead.lock_key
                           AND o.died_at IS NULL AND o.lock_missing_since IS NULL)
                   RETURNING j.id
               )
               SELECT (SELECT count(*) FROM dead) AS "workers!", (SELECT count(*) FROM released) AS "jobs!""#,
            LOCK_CLASS,
            grace.as_secs_f64(),
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Reclaimed {
            workers: row.workers as u64,
            jobs: row.jobs as u64,
        })
    }

    /// Deletes the registrations declared dead more than `retention` ago
    /// (the reconciler's, now and then), so that `workers` holds the live
    /// workers and the recent deaths, not every process that ever ran. A
    /// worker whose row is gone yet still lives learns it was declared dead
    /// when it takes its lock again ([`Registration::reacquire`]); takeovers
    /// keep naming dead workers by id. Returns how many were deleted.
    pub async fn forget_dead_workers(&self, retention: Duration) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            "DELETE FROM workers WHERE died_at < now() - make_interval(secs => $1)",
            retention.as_secs_f64(),
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
