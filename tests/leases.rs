//! Leases with fencing (invariant 2) and at-least-once delivery with an
//! exactly-once effect (invariant 3), at the storage layer.

mod support;

use std::time::Duration;

use kiln::store::attempts::{Generation, TokenUsage};
use kiln::store::jobs::JobOutcome;
use kiln::store::{Store, StoreError};
use serde_json::json;
use support::{TestEnv, add_spec};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30);

fn generation(response: &str) -> Generation<'_> {
    Generation {
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
    let attempt = env.store.start_attempt(&a.lease, 1, 1, "m", &json!([])).await.unwrap();
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
    let attempt = env.store.start_attempt(&a.lease, 1, 1, "m", &json!([])).await.unwrap();
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
    let resumed = env.store.start_attempt(&b.lease, 1, 1, "m", &json!([])).await.unwrap();
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
    let attempt = env.store.start_attempt(&a.lease, 1, 1, "m", &json!([])).await.unwrap();
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
