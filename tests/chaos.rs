//! The chaos test: hundreds of jobs while worker processes are SIGKILLed at
//! random and restarted, Redis is flushed and Postgres restarts — and at the
//! end every job is terminal, every one succeeded, no attempt was generated
//! twice, no stored answer was requested again, and the API agrees with SQL.
//!
//! It restarts the machine's Postgres and runs `FLUSHALL` on its Redis, so it
//! must not share them with other tests: it is `#[ignore]`d and
//! `scripts/test` runs it alone after the rest of the suite
//! (`cargo nextest run --run-ignored only --test chaos`).
//! `KILN_CHAOS_JOBS` (default 500) sets the batch size.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Proc, TestEnv, add_spec};

const WORKERS: usize = 3;

fn restart_postgres() {
    let versions = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
    let version = versions
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .unwrap();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "restarting Postgres failed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs JSON, tolerating the moments the dispatcher or its database is down.
async fn get(url: &str) -> Option<Value> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "exclusive: restarts Postgres and flushes Redis; scripts/test runs it after the rest"]
async fn kills_redis_flushes_and_a_postgres_restart_lose_nothing_and_pay_nothing_twice() {
    let jobs: usize = std::env::var("KILN_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let env = TestEnv::new().await;
    let script = ADD_SCRIPT.replace("  responses:", "  latency_ms: 800\n  responses:");
    let llm = support::mock(&script).await;
    let port = free_port();
    let common = [
        ("KILN_LEASE_TTL_S", "3"),
        ("KILN_CRASH_LIMIT", "1000"),
        ("KILN_WORKER_CONCURRENCY", "8"),
        ("KILN_REDELIVER_AFTER_S", "30"),
    ];
    let mut dispatcher_vars = env.vars(&llm.base_url(), &common);
    dispatcher_vars.push(("KILN_HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
    let _dispatcher = Proc::spawn("kiln-dispatcher", &dispatcher_vars);
    let api = format!("http://127.0.0.1:{port}");
    let client = kiln::client::Client::new(&api);
    support::eventually(Duration::from_secs(30), "the dispatcher", || async {
        get(&format!("{api}/readyz")).await.is_some()
    })
    .await;

    let worker_vars = |n: usize| {
        let mut vars = env.vars(&llm.base_url(), &common);
        vars.push(("KILN_WORKER_ID".into(), format!("chaos-{n}")));
        vars
    };
    let mut spawned = 0;
    let mut workers: Vec<Proc> = (0..WORKERS)
        .map(|_| {
            spawned += 1;
            Proc::spawn("kiln-worker", &worker_vars(spawned))
        })
        .collect();

    let specs: Vec<Value> = (0..jobs).map(add_spec).collect();
    let created = client
        .submit(&json!({"name": "chaos", "specs": specs}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap().to_owned();
    let started = Instant::now();

    let (mut kills, mut flushed, mut restarted) = (0, false, false);
    let mut rng = rand::rng();
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    loop {
        let Some(batch) = get(&format!("{api}/v1/batches/{batch_id}")).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let done = batch["counts"]["succeeded"].as_u64().unwrap() + batch["counts"]["failed"].as_u64().unwrap();
        if batch["finished_at"].is_string() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "chaos run did not finish: {batch}"
        );
        if Instant::now() >= next_kill {
            let victim = rng.random_range(0..workers.len());
            workers[victim].kill();
            kills += 1;
            spawned += 1;
            workers[victim] = Proc::spawn("kiln-worker", &worker_vars(spawned));
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
        }
        if !flushed && done as usize >= jobs / 4 {
            let redis = redis::Client::open(support::redis_url()).unwrap();
            let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            flushed = true;
            eprintln!("chaos: FLUSHALL at {done} done");
        }
        if !restarted && done as usize >= jobs / 2 {
            restart_postgres();
            restarted = true;
            eprintln!("chaos: Postgres restarted at {done} done");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    assert!(flushed && restarted, "the run ended before all chaos happened");

    // Every job is terminal, and every one succeeded.
    let pool = env.store.pool();
    let sql_counts: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM jobs GROUP BY state")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        sql_counts.get("succeeded").copied(),
        Some(jobs as i64),
        "{sql_counts:?}"
    );
    assert_eq!(sql_counts.len(), 1, "nothing else: {sql_counts:?}");

    // No (job, run, attempt) twice, and with a model that is right the first
    // time, exactly one attempt per job.
    let attempts: Vec<(String, i32, i32, i64)> =
        sqlx::query_as("SELECT id::text, run, n, (extract(epoch FROM generated_at) * 1000)::int8 FROM attempts")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(attempts.len(), jobs, "one attempt per job");
    assert!(attempts.iter().all(|(_, run, n, _)| (*run, *n) == (1, 1)));

    // No stored answer was requested again: no request for an attempt
    // arrived after that attempt's answer was stored.
    let generated_at: HashMap<&str, i64> = attempts.iter().map(|(id, _, _, at)| (id.as_str(), *at)).collect();
    let requests = llm.requests();
    let mut repeated_before_storing = 0;
    let mut per_attempt: HashMap<&str, usize> = HashMap::new();
    let mut after_storing = 0;
    for r in &requests {
        let id = r.attempt_id.as_deref().unwrap();
        *per_attempt.entry(id).or_default() += 1;
        if let Some(stored) = generated_at.get(id)
            && r.at_ms as i64 > *stored
        {
            after_storing += 1;
        }
    }
    for n in per_attempt.values() {
        repeated_before_storing += n - 1;
    }

    // The API's counts are SQL's.
    let batch = get(&format!("{api}/v1/batches/{batch_id}")).await.unwrap();
    for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
        assert_eq!(
            batch["counts"][state].as_i64().unwrap(),
            sql_counts.get(state).copied().unwrap_or(0),
            "{state}"
        );
    }
    let takeovers: i64 = sqlx::query_scalar("SELECT coalesce(sum(crashes), 0)::int8 FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    eprintln!(
        "chaos summary: jobs={jobs} succeeded={} elapsed={elapsed:.1?} kills={kills} takeovers={takeovers} \
         redis_flushes=1 postgres_restarts=1 llm_requests={} requests_repeated_before_an_answer_was_stored={repeated_before_storing} \
         duplicate_llm_requests={after_storing}",
        sql_counts["succeeded"],
        requests.len(),
    );
    assert_eq!(after_storing, 0, "a stored answer was requested again");
    assert!(kills >= 3, "too few kills to mean anything: {kills}");
}
