//! Leases with fencing (invariant 2) and at-least-once delivery with an
//! exactly-once effect (invariant 3), at the storage layer.

mod support;

use std::time::Duration;

use kiln::store::attempts::{StoredAnswer, TokenUsage};
use kiln::store::jobs::{Activity, JobOutcome};
use kiln::store::liveness::{Reclaimed, Registration};
use kiln::store::{Store, StoreError};
use serde_json::json;
use support::{TestEnv, add_spec};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30);

fn generation(response: &str) -> StoredAnswer<'_> {
    StoredAnswer {
        response,
        finish_reason: Some("stop"),
        usage: TokenUsage::default(),
        cost_usd: None,
        llm_ms: 1,
    }
}

async fn one_job(store: &Store) -> Uuid {
    support::store_batch(store, json!({"specs": [add_spec(1)]}))
        .await
        .job_ids[0]
}

async fn expire_lease(store: &Store, job_id: Uuid) {
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(job_id)
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_live_workers_lease_is_not_taken_over() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let a = env
        .store
        .claim(job, "worker-a", TTL)
        .await
        .unwrap()
        .expect("first claim succeeds");
    assert_eq!((a.lease.epoch, a.crashes), (1, 0));
    for _ in 0..3 {
        assert!(
            env.store.claim(job, "worker-b", TTL).await.unwrap().is_none(),
            "live lease refused"
        );
        env.store.heartbeat(&a.lease, TTL).await.unwrap();
    }
    // The holder can still write.
    let attempt = env
        .store
        .start_attempt(&a.lease, 1, 1, "m", &json!([]), kiln::prompt::PROMPT_VERSION)
        .await
        .unwrap();
    env.store
        .record_generation(&a.lease, attempt.id, &generation("answer"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_cannot_write() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let a = env.store.claim(job, "worker-a", TTL).await.unwrap().unwrap();
    let attempt = env
        .store
        .start_attempt(&a.lease, 1, 1, "m", &json!([]), kiln::prompt::PROMPT_VERSION)
        .await
        .unwrap();
    expire_lease(&env.store, job).await;

    let b = env
        .store
        .claim(job, "worker-b", TTL)
        .await
        .unwrap()
        .expect("expired lease is taken over");
    assert_eq!(b.lease.epoch, 2);
    assert_eq!(
        b.crashes, 1,
        "a takeover from a worker that never released counts a crash"
    );

    assert!(matches!(
        env.store.heartbeat(&a.lease, TTL).await,
        Err(StoreError::LeaseLost)
    ));
    let write = env
        .store
        .record_generation(&a.lease, attempt.id, &generation("stale"))
        .await;
    assert!(matches!(write, Err(StoreError::LeaseLost)), "{write:?}");
    let finish = env
        .store
        .finish_job(&a.lease, JobOutcome::Succeeded { attempt_id: attempt.id })
        .await;
    assert!(matches!(finish, Err(StoreError::LeaseLost)));
    // The new holder resumes the same attempt row rather than making another.
    let resumed = env
        .store
        .start_attempt(&b.lease, 1, 1, "m", &json!([]), kiln::prompt::PROMPT_VERSION)
        .await
        .unwrap();
    assert_eq!(resumed.id, attempt.id);
    assert_eq!(env.count("attempts").await, 1);
    let job_row = env.store.job(job).await.unwrap();
    assert_eq!(job_row.state, "running");
}

#[tokio::test]
async fn a_job_reaches_succeeded_at_most_once_per_run() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let a = env.store.claim(job, "worker-a", TTL).await.unwrap().unwrap();
    let attempt = env
        .store
        .start_attempt(&a.lease, 1, 1, "m", &json!([]), kiln::prompt::PROMPT_VERSION)
        .await
        .unwrap();
    env.store
        .finish_job(&a.lease, JobOutcome::Succeeded { attempt_id: attempt.id })
        .await
        .unwrap();
    // A duplicate finisher (same lease) and any later claim are refused.
    let again = env
        .store
        .finish_job(&a.lease, JobOutcome::Succeeded { attempt_id: attempt.id })
        .await;
    assert!(matches!(again, Err(StoreError::LeaseLost)));
    assert!(env.store.claim(job, "worker-b", TTL).await.unwrap().is_none());
}

#[tokio::test]
async fn cancelling_a_running_job_fences_its_worker_out() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let a = env.store.claim(job, "worker-a", TTL).await.unwrap().unwrap();
    assert_eq!(env.store.cancel_job(job).await.unwrap(), 1);
    assert!(matches!(
        env.store.heartbeat(&a.lease, TTL).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(env.store.claim(job, "worker-b", TTL).await.unwrap().is_none());
    assert_eq!(env.store.job(job).await.unwrap().state, "cancelled");
}

#[tokio::test]
async fn a_released_job_is_claimed_again_without_counting_a_crash() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let a = env.store.claim(job, "worker-a", TTL).await.unwrap().unwrap();
    env.store.release(&a.lease, None).await.unwrap();
    let b = env.store.claim(job, "worker-b", TTL).await.unwrap().unwrap();
    assert_eq!(b.crashes, 0);
}

/// Ends the server session holding a worker's liveness lock, as a network
/// blip or a server-side kill would.
async fn drop_liveness_connection(store: &Store) {
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'kiln-worker-liveness') t",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(ended, 1);
    // The session ends (and its locks go) a moment after the signal.
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'kiln-worker-liveness'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Longer than any test: the reconciler only notes a missing lock.
const LONG_GRACE: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_dead_workers_jobs_are_handed_back_once_its_liveness_lock_is_gone_and_the_takeover_names_the_cause() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let options = env.store.pool().connect_options();
    let mut registration = Registration::register(&options, "worker-a").await.unwrap();
    let a = env.store.claim(job, "worker-a", TTL).await.unwrap().unwrap();
    env.store.set_activity(&a.lease, Activity::Model).await.unwrap();
    // Alive: nothing happens however often the reconciler looks.
    for _ in 0..2 {
        let r = env.store.reclaim_from_dead_workers(Duration::ZERO).await.unwrap();
        assert_eq!(r, Reclaimed::default());
    }

    drop_liveness_connection(&env.store).await;
    // The first look notes the missing lock, a later one (past the grace)
    // declares the worker dead and hands its job back.
    let noted = env.store.reclaim_from_dead_workers(LONG_GRACE).await.unwrap();
    assert_eq!(noted, Reclaimed::default());
    let dead = env.store.reclaim_from_dead_workers(Duration::ZERO).await.unwrap();
    assert_eq!(dead, Reclaimed { workers: 1, jobs: 1 });
    assert!(matches!(
        env.store.heartbeat(&a.lease, TTL).await,
        Err(StoreError::LeaseLost)
    ));
    // The live process notices, takes its lock again and learns it was
    // declared dead: whatever it was running is no longer its own.
    assert!(!registration.alive().await);
    assert!(registration.reacquire(&options).await.unwrap());
    assert_eq!(
        env.store.reclaim_from_dead_workers(Duration::ZERO).await.unwrap(),
        Reclaimed::default()
    );

    let b = env.store.claim(job, "worker-b", TTL).await.unwrap().unwrap();
    assert_eq!((b.crashes, b.blamed_crashes, b.isolate), (1, 0, false));
    let takeovers = env.store.takeovers(job).await.unwrap();
    assert_eq!(takeovers.len(), 1);
    let t = &takeovers[0];
    assert_eq!(
        (
            t.cause.as_str(),
            t.activity.as_deref(),
            t.blamed,
            t.lost_by.as_str(),
            t.taken_by.as_deref()
        ),
        ("worker_died", Some("model"), false, "worker-a", Some("worker-b"))
    );
}

#[tokio::test]
async fn a_worker_that_takes_its_lock_again_within_the_grace_keeps_its_jobs() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let options = env.store.pool().connect_options();
    let mut registration = Registration::register(&options, "worker-a").await.unwrap();
    let a = env.store.claim(job, "worker-a", TTL).await.unwrap().unwrap();
    drop_liveness_connection(&env.store).await;
    env.store.reclaim_from_dead_workers(LONG_GRACE).await.unwrap();
    let missing: i64 = sqlx::query_scalar("SELECT count(*) FROM workers WHERE lock_missing_since IS NOT NULL")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(missing, 1, "the missing lock is noted");
    assert!(!registration.alive().await);
    assert!(!registration.reacquire(&options).await.unwrap(), "not declared dead");
    let after = env.store.reclaim_from_dead_workers(Duration::ZERO).await.unwrap();
    assert_eq!(after, Reclaimed::default());
    env.store.heartbeat(&a.lease, TTL).await.unwrap();
}

#[tokio::test]
async fn a_live_worker_whose_registration_was_forgotten_learns_it_was_declared_dead_when_it_takes_its_lock_again() {
    let env = TestEnv::new().await;
    let options = env.store.pool().connect_options();
    let mut registration = Registration::register(&options, "worker-a").await.unwrap();
    drop_liveness_connection(&env.store).await;
    env.store.reclaim_from_dead_workers(LONG_GRACE).await.unwrap();
    let dead = env.store.reclaim_from_dead_workers(Duration::ZERO).await.unwrap();
    assert_eq!(dead.workers, 1);
    // Dead longer than the retention (here none): the row is deleted.
    assert_eq!(env.store.forget_dead_workers(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(env.count("workers").await, 0);
    assert!(!registration.alive().await);
    assert!(
        registration.reacquire(&options).await.unwrap(),
        "a forgotten registration counts as declared dead"
    );
    let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM workers WHERE id = 'worker-a' AND died_at IS NULL")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(alive, 1, "registered again");
    // A live registration is never forgotten, whatever the retention.
    assert_eq!(env.store.forget_dead_workers(Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test]
async fn a_takeover_is_blamed_only_when_the_job_was_running_inside_the_worker() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;
    let mut owner = "worker-0".to_owned();
    let mut expected = (0, 0);
    for (i, activity) in [
        Activity::Claimed,
        Activity::Model,
        Activity::Sandbox,
        Activity::Validating,
        Activity::Preparing,
        Activity::Reporting,
        Activity::Finishing,
    ]
    .into_iter()
    .enumerate()
    {
        let claimed = env.store.claim(job, &owner, TTL).await.unwrap().unwrap();
        assert_eq!((claimed.crashes, claimed.blamed_crashes), expected);
        assert_eq!(claimed.isolate, expected.1 > 0, "isolated once blamed");
        env.store.set_activity(&claimed.lease, activity).await.unwrap();
        expire_lease(&env.store, job).await;
        expected = (expected.0 + 1, expected.1 + i32::from(activity.in_worker()));
        owner = format!("worker-{}", i + 1);
    }
    env.store.claim(job, &owner, TTL).await.unwrap().unwrap();
    let blamed: Vec<(String, bool)> = env
        .store
        .takeovers(job)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.activity.unwrap(), t.blamed))
        .collect();
    assert_eq!(
        blamed,
        [
            ("claimed".to_owned(), false),
            ("model".to_owned(), false),
            ("sandbox".to_owned(), false),
            ("validating".to_owned(), true),
            ("preparing".to_owned(), true),
            ("reporting".to_owned(), true),
            ("finishing".to_owned(), false),
        ]
    );
    let view = env.store.job(job).await.unwrap();
    assert_eq!((view.crashes, view.blamed_crashes, view.isolated), (7, 3, true));
}

#[tokio::test]
async fn a_death_during_a_step_begun_before_postgres_restarted_is_counted_not_blamed() {
    let env = TestEnv::new().await;
    let job = one_job(&env.store).await;

    // A step inside the worker, recorded before Postgres last started: the
    // worker may have sat on the step's closing write through the outage.
    let claimed = env.store.claim(job, "worker-0", TTL).await.unwrap().unwrap();
    env.store
        .set_activity(&claimed.lease, Activity::Validating)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET activity_since = pg_postmaster_start_time() - interval '1 second' WHERE id = $1")
        .bind(job)
        .execute(env.store.pool())
        .await
        .unwrap();
    expire_lease(&env.store, job).await;
    let claimed = env.store.claim(job, "worker-1", TTL).await.unwrap().unwrap();
    assert_eq!((claimed.crashes, claimed.blamed_crashes), (1, 0), "counted, not blamed");
    assert!(!claimed.isolate);

    // The same step begun since the restart is evidence again.
    env.store
        .set_activity(&claimed.lease, Activity::Validating)
        .await
        .unwrap();
    expire_lease(&env.store, job).await;
    let claimed = env.store.claim(job, "worker-2", TTL).await.unwrap().unwrap();
    assert_eq!((claimed.crashes, claimed.blamed_crashes), (2, 1));

    let takeovers = env.store.takeovers(job).await.unwrap();
    assert_eq!(takeovers.iter().map(|t| t.blamed).collect::<Vec<_>>(), [false, true]);
    assert!(
        takeovers[0].reason.contains("before Postgres last restarted"),
        "the takeover says why it was not blamed: {}",
        takeovers[0].reason
    );
}
