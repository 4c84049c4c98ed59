//! Durability with real worker processes: shutdown hand-over, crash loops,
//! cancellation, Redis losing its data, the bounded Redis window, and the
//! feeder's priority and fairness.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, Proc, TestEnv, add_spec, eventually, mock, wait_for_batch};

/// An `add_{i}` spec whose pytest test takes `seconds` in the sandbox.
fn slow_spec(i: usize, seconds: f64) -> Value {
    json!({
        "kind": "function",
        "task_description": format!("Return a + b (variant {i})."),
        "entry_point": format!("add_{i}"),
        "test_code": format!(
            "import time\nfrom solution import add_{i}\n\ndef test_add():\n    time.sleep({seconds})\n    assert add_{i}(1, 2) == 3\n"
        ),
    })
}

async fn phases(env: &TestEnv) -> Vec<(String, String)> {
    sqlx::query_as("SELECT phase, worker_id FROM attempts")
        .fetch_all(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_exits_within_its_grace_and_another_finishes_its_jobs_without_new_model_requests() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let grace = Duration::from_secs(3);
    let first = env.vars(
        &llm.base_url(),
        &[
            ("KILN_WORKER_ID", "first"),
            ("KILN_SHUTDOWN_GRACE_S", "3"),
            ("KILN_WORKER_CONCURRENCY", "8"),
        ],
    );
    let mut a = Proc::spawn("kiln-worker", &first);
    let specs: Vec<Value> = (0..4).map(|i| slow_spec(i, 20.0)).collect();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();

    // Wait until every job is in the sandbox: its answer is stored.
    eventually(Duration::from_secs(60), "all four jobs in the sandbox", || async {
        let p = phases(&env).await;
        p.len() == 4
            && p.iter()
                .all(|(phase, worker)| phase == "validated" && worker == "first")
    })
    .await;
    let sent = Instant::now();
    let status = a.terminate();
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took <= grace + Duration::from_millis(500),
        "exited after {took:?}, grace {grace:?}"
    );
    // Released, not crashed: back in the queue at once, no crash counted.
    let (queued, crashes): (i64, i64) =
        sqlx::query_as("SELECT count(*) FILTER (WHERE state = 'queued'), coalesce(sum(crashes), 0)::int8 FROM jobs")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((queued, crashes), (4, 0));

    let second = env.vars(
        &llm.base_url(),
        &[("KILN_WORKER_ID", "second"), ("KILN_WORKER_CONCURRENCY", "8")],
    );
    let _b = Proc::spawn("kiln-worker", &second);
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(batch["counts"]["succeeded"], 4, "{batch}");
    assert_eq!(llm.requests().len(), 4, "no answer was requested again");
    let attempts: Vec<(i32, String)> = sqlx::query_as("SELECT n, worker_id FROM attempts")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|(n, started_by)| *n == 1 && started_by == "first"),
        "{attempts:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_ends_as_crash_loop_while_the_rest_of_its_batch_succeeds() {
    let env = TestEnv::new().await;
    let script = format!(
        "{ADD_SCRIPT}\n- name: poison\n  match: \"`poison`\"\n  latency_ms: 1500\n  responses:\n    - content: \"never seen\"\n"
    );
    let llm = mock(&script).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_LEASE_TTL_S", "1")]);
    let d = Dispatcher::start(&settings).await;
    let mut specs: Vec<Value> = (0..4).map(add_spec).collect();
    specs.push(
        json!({"kind": "function", "task_description": "Crash every worker.", "entry_point": "poison",
                      "test_cases": [{"input": 1, "expected": 1}]}),
    );
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let poison = created["job_ids"][4].as_str().unwrap().to_owned();

    // One job at a time per worker, so killing the poison job's worker
    // kills nothing else. Whoever runs the poison job dies.
    let mut kills = 0;
    for generation in 0..10 {
        let id = format!("w{generation}");
        let vars = env.vars(
            &llm.base_url(),
            &[
                ("KILN_WORKER_ID", &id),
                ("KILN_WORKER_CONCURRENCY", "1"),
                ("KILN_LEASE_TTL_S", "1"),
            ],
        );
        let mut worker = Proc::spawn("kiln-worker", &vars);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = d.client.job(&poison).await.unwrap();
            if job["state"] == "failed" {
                break;
            }
            // (A claim that counted the third crash fails the job at once: that
            // worker is left alone.)
            let running: Option<(Option<String>, i32)> =
                sqlx::query_as("SELECT lease_owner, crashes FROM jobs WHERE id = $1::uuid AND state = 'running'")
                    .bind(&poison)
                    .fetch_optional(env.store.pool())
                    .await
                    .unwrap();
            if let Some((Some(owner), crashes)) = running
                && owner == id
                && crashes < 3
            {
                worker.kill();
                kills += 1;
                break;
            }
            assert!(Instant::now() < deadline, "the poison job was never picked up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if d.client.job(&poison).await.unwrap()["state"] == "failed" {
            break;
        }
    }
    let _last = Proc::spawn("kiln-worker", &env.vars(&llm.base_url(), &[("KILN_LEASE_TTL_S", "1")]));
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    let job = d.client.job(&poison).await.unwrap();
    assert_eq!(job["error"]["code"], "crash_loop", "{job}");
    assert_eq!(job["crashes"], 3);
    assert_eq!(kills, 3);
    assert_eq!(batch["counts"]["succeeded"], 4, "{batch}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_sandbox_run_within_seconds() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let vars = env.vars(&llm.base_url(), &[("KILN_WORKER_CONCURRENCY", "1")]);
    let _worker = Proc::spawn("kiln-worker", &vars);
    let created = d
        .client
        .submit(&json!({"specs": [slow_spec(0, 120.0), add_spec(1)]}), None)
        .await
        .unwrap();
    let slow = created["job_ids"][0].as_str().unwrap();
    eventually(Duration::from_secs(60), "the slow job in its sandbox", || async {
        phases(&env).await.iter().any(|(phase, _)| phase == "validated")
    })
    .await;
    let cancelled_at = Instant::now();
    assert_eq!(d.client.cancel_job(slow).await.unwrap()["cancelled"], 1);
    // The worker's one slot frees up only when the sandbox run is gone: the
    // other job then runs and finishes.
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    let took = cancelled_at.elapsed();
    assert!(took < Duration::from_secs(15), "the slot was freed after {took:?}");
    assert_eq!(
        (
            batch["counts"]["cancelled"].as_i64(),
            batch["counts"]["succeeded"].as_i64()
        ),
        (Some(1), Some(1))
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_loses_no_work() {
    let env = TestEnv::new().await;
    let script = ADD_SCRIPT.replace("  responses:", "  latency_ms: 300\n  responses:");
    let llm = mock(&script).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let vars = env.vars(&llm.base_url(), &[("KILN_WORKER_CONCURRENCY", "4")]);
    let _worker = Proc::spawn("kiln-worker", &vars);
    let specs: Vec<Value> = (0..40).map(add_spec).collect();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    eventually(Duration::from_secs(60), "some jobs done", || async {
        d.client.batch(batch_id).await.unwrap()["counts"]["succeeded"]
            .as_i64()
            .unwrap()
            >= 5
    })
    .await;

    // Everything this deployment had in Redis disappears (a restart without
    // persistence or a FLUSHALL, limited to this test's namespace).
    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", env.queue))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();

    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(120)).await;
    assert_eq!(batch["counts"]["succeeded"], 40, "{batch}");
    let metrics = d.metrics().await;
    let losses: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_feeder_redis_losses_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(losses >= 2, "the start-up check and the loss: {losses}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_window_never_holds_more_than_its_bound_while_a_large_batch_completes() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let window = 40;
    let settings = env.settings(&llm.base_url(), &[("KILN_QUEUE_WINDOW", "40")]);
    let d = Dispatcher::start(&settings).await;
    let vars = env.vars(&llm.base_url(), &[("KILN_WORKER_CONCURRENCY", "16")]);
    let _workers = [Proc::spawn("kiln-worker", &vars), Proc::spawn("kiln-worker", &vars)];
    let specs: Vec<Value> = (0..600).map(add_spec).collect();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap().to_owned();

    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (active, scheduled) = (
        format!("{}:jobs:active", env.queue),
        format!("{}:jobs:scheduled", env.queue),
    );
    let mut most = 0;
    let mut samples = 0;
    loop {
        let (a, s): (i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg(&active)
            .cmd("ZCARD")
            .arg(&scheduled)
            .query_async(&mut conn)
            .await
            .unwrap();
        most = most.max(a + s);
        samples += 1;
        let batch = d.client.batch(&batch_id).await.unwrap();
        if batch["finished_at"].is_string() {
            assert_eq!(batch["counts"]["succeeded"], 600, "{batch}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("most messages waiting in Redis: {most} over {samples} samples");
    assert!(most > 0 && most <= window, "{most} waiting, window {window}");
    d.stop().await;
}

#[tokio::test]
async fn the_feeder_sends_higher_priority_first_and_round_robins_across_batches() {
    let env = TestEnv::new().await;
    let mut batches = Vec::new();
    for (n, priority) in [(30, 0), (3, 0), (2, 5)] {
        let specs: Vec<Value> = (0..n).map(add_spec).collect();
        batches
            .push(support::store_batch(&env.store, json!({"specs": specs, "options": {"priority": priority}})).await);
    }
    let round = env.store.begin_feed(&env.queue, 9).await.unwrap().unwrap();
    let owner = |id: &uuid::Uuid| batches.iter().position(|b| b.job_ids.contains(id)).unwrap();
    let order: Vec<usize> = round.job_ids.iter().map(owner).collect();
    // The priority-5 batch first, then the two priority-0 batches in turn
    // until the small one runs out, then the big one.
    assert_eq!(order, [2, 2, 0, 1, 0, 1, 0, 1, 0]);
    round.mark_dispatched().await.unwrap();
    // The window is full: nothing more is sent until jobs are claimed.
    assert!(env.store.begin_feed(&env.queue, 9).await.unwrap().is_none());
}
