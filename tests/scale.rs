//! Throughput with real processes: a large batch through two worker
//! processes of the built binary.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{ADD_SCRIPT, Dispatcher, Proc, TestEnv, add_spec, mock, wait_for_batch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_1000_function_specs_succeeds_on_two_worker_processes() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let vars = env.vars(&llm.base_url(), &[]);
    let _workers = [Proc::spawn("kiln-worker", &vars), Proc::spawn("kiln-worker", &vars)];

    let specs: Vec<_> = (0..1000).map(add_spec).collect();
    let started = Instant::now();
    let created = d
        .client
        .submit(&json!({"name": "thousand", "specs": specs}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_mins(20)).await;
    eprintln!("1000 jobs in {:?}", started.elapsed());

    assert_eq!(batch["state"], "succeeded", "{batch}");
    assert_eq!(batch["counts"]["succeeded"], 1000, "{batch}");
    let jobs = d.client.all_jobs(batch_id, Some("succeeded")).await.unwrap();
    assert_eq!(jobs.len(), 1000);
    // Both processes took part, and no job needed a second model call.
    let workers: i64 = sqlx::query_scalar("SELECT count(DISTINCT worker_id) FROM attempts")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(workers, 2);
    assert_eq!(llm.requests().len(), 1000);
    d.stop().await;
}
