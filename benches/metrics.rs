//! What a scrape of the dispatcher's `/metrics` and a batch's status cost
//! when the database is large: a fresh database is filled with one batch of
//! 200,000 jobs with an attempt each (plus 50 small batches), by bulk
//! `INSERT … SELECT generate_series` (the counts triggers run as they do for
//! real inserts), then a real dispatcher is started and `/metrics` and
//! `GET /v1/batches/{id}` are requested one after another. Prints median
//! and p95 of each and their ratio to the 50 ms target, and beside them the
//! full-history aggregates they replaced, timed on the same data. Then the
//! batch's report (`GET /v1/batches/{id}/report`), which aggregates the
//! attempts themselves (their timings and the failed ones' diagnostics):
//! `KILN_BENCH_REPORTS` requests (20).
//!
//! `cargo bench --profile dev --bench metrics` (needs the local Postgres
//! and Redis). Knobs: `KILN_BENCH_JOBS` (200000), `KILN_BENCH_REQUESTS` (200),
//! `KILN_BENCH_REPORTS` (20).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Dispatcher, TestEnv};

const TARGET: Duration = Duration::from_millis(50);

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn summary(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let p95 = times[(times.len() * 95 / 100).min(times.len() - 1)];
    println!(
        "{what}: median {:.2} ms, p95 {:.2} ms over {} requests; p95 / target (50 ms) = {:.3}",
        median.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        times.len(),
        p95.as_secs_f64() / TARGET.as_secs_f64(),
    );
}

async fn fill(env: &TestEnv, jobs: usize) -> uuid::Uuid {
    let pool = env.store.pool();
    let started = Instant::now();
    let batch = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO batches (id, name, options) VALUES ($1, 'big', '{}')")
        .bind(batch)
        .execute(pool)
        .await
        .unwrap();
    // 90% succeeded, 8% failed, 2% still queued: a large batch near its end.
    sqlx::query(
        r"INSERT INTO jobs (id, batch_id, position, kind, spec, spec_sha256, max_attempts, state, finished_at,
                           error_code, updated_at)
          SELECT gen_random_uuid(), $1, g, 'function', '{}', md5(g::text), 3,
                 CASE WHEN g % 50 = 0 THEN 'queued' WHEN g % 12 = 0 THEN 'failed' ELSE 'succeeded' END,
                 CASE WHEN g % 50 = 0 THEN NULL ELSE now() END,
                 CASE WHEN g % 50 <> 0 AND g % 12 = 0 THEN 'tests_failed' END,
                 now() - make_interval(secs => g % 600)
          FROM generate_series(0, $2 - 1) g",
    )
    .bind(batch)
    .bind(jobs as i32)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO attempts (id, job_id, run, n, model, prompt, worker_id, lease_epoch, state, phase,
                               prompt_tokens, completion_tokens, cost_usd, finished_at, timings_ms, validation)
          SELECT gen_random_uuid(), j.id, 1, 1, 'bench-model', '[]', 'bench', 1,
                 CASE j.state WHEN 'succeeded' THEN 'passed' WHEN 'failed' THEN 'failed' ELSE 'error' END,
                 'tested', 900 + j.position % 200, 300 + j.position % 100, 0.0004, now(),
                 jsonb_build_object('llm', 800 + j.position % 4000, 'validate', 1 + j.position % 20,
                                    'sandbox', 150 + j.position % 900, 'total', 1000 + j.position % 5000),
                 CASE WHEN j.state = 'failed'
                      THEN jsonb_build_object('ok', false, 'diagnostics', jsonb_build_array(
                          jsonb_build_object('file', 'solution.py', 'line', 2, 'col', 1,
                                             'rule', 'rule-' || j.position % 7, 'severity', 'error',
                                             'message', 'bench'),
                          jsonb_build_object('file', 'solution.py', 'line', 1, 'col', 1, 'rule', 'docstring',
                                             'severity', 'warning', 'message', 'bench')))
                      ELSE '{"ok": true, "diagnostics": []}'::jsonb END
          FROM jobs j WHERE j.batch_id = $1"#,
    )
    .bind(batch)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        r"WITH b AS (
              INSERT INTO batches (id, name, options)
              SELECT gen_random_uuid(), 'small ' || g, '{}' FROM generate_series(1, 50) g RETURNING id)
          INSERT INTO jobs (id, batch_id, position, kind, spec, spec_sha256, max_attempts)
          SELECT gen_random_uuid(), b.id, g, 'function', '{}', md5(g::text), 3
          FROM b, generate_series(0, 99) g",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(pool)
        .await
        .unwrap();
    println!(
        "filled: {jobs} jobs in one batch + 5,000 in 50 batches, {attempts} attempts, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    batch
}

/// Times `sql` (what the endpoints ran before the counts were maintained).
async fn time_sql(env: &TestEnv, what: &str, sql: &str, batch: uuid::Uuid, n: usize) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut q = sqlx::query(sql);
        if sql.contains("$1") {
            q = q.bind(batch);
        }
        q.fetch_all(env.store.pool()).await.unwrap();
        times.push(started.elapsed());
    }
    summary(what, times);
}

async fn time_get(client: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty());
        times.push(started.elapsed());
    }
    times
}

#[tokio::main]
async fn main() {
    let jobs = knob("KILN_BENCH_JOBS", 200_000);
    let requests = knob("KILN_BENCH_REQUESTS", 200);
    let env = TestEnv::new().await;
    let batch = fill(&env, jobs).await;
    let dispatcher = Dispatcher::start(&env.settings("http://127.0.0.1:9", &[])).await;
    let client = reqwest::Client::new();
    let metrics = format!("{}/metrics", dispatcher.url);
    let status = format!("{}/v1/batches/{batch}", dispatcher.url);
    // Warm the connection pools and the caches, as a running system has.
    time_get(&client, &metrics, 5).await;
    time_get(&client, &status, 5).await;
    summary("GET /metrics", time_get(&client, &metrics, requests).await);
    summary(
        &format!("GET /v1/batches/{{id}} of the {jobs}-job batch"),
        time_get(&client, &status, requests).await,
    );
    let body: serde_json::Value = client.get(&status).send().await.unwrap().json().await.unwrap();
    println!("status: {}", body["counts"]);
    let report = format!("{status}/report");
    time_get(&client, &report, 2).await;
    summary(
        &format!("GET /v1/batches/{{id}}/report of the {jobs}-job batch"),
        time_get(&client, &report, knob("KILN_BENCH_REPORTS", 20)).await,
    );
    let body: serde_json::Value = client.get(&report).send().await.unwrap().json().await.unwrap();
    println!("report: attempts {} phases {}", body["attempts"], body["phases"]);

    let before = requests.min(10);
    time_sql(
        &env,
        "before, /metrics' jobs-by-state aggregate",
        r"SELECT state, count(*) FROM jobs GROUP BY state;",
        batch,
        before,
    )
    .await;
    time_sql(
        &env,
        "before, /metrics' attempts aggregate",
        r"SELECT state, count(*), sum(prompt_tokens), sum(completion_tokens), sum(llm_faults), sum(sandbox_faults)
          FROM attempts GROUP BY state",
        batch,
        before,
    )
    .await;
    time_sql(
        &env,
        "before, a batch's counts and usage",
        r"SELECT (SELECT count(*) FILTER (WHERE state = 'queued') FROM jobs WHERE batch_id = $1),
                 (SELECT sum(a.prompt_tokens) FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = $1)",
        batch,
        before,
    )
    .await;
    dispatcher.stop().await;
}
