//! `/metrics` of a live dispatcher and a live worker process, and the
//! per-batch counts behind batch status and the dispatcher's gauges.

mod support;

use std::time::Duration;

use kiln::domain::{AttemptState, ErrorCode, JobState};
use kiln::store::Store;
use kiln::store::attempts::{StoredAnswer, TokenUsage};
use kiln::store::jobs::JobOutcome;
use serde_json::json;
use support::{ADD_SCRIPT, Dispatcher, Proc, TestEnv, add_spec};
use uuid::Uuid;

/// The value of the sample `name` whose labels include every one of
/// `labels` (in any order), or `None`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        ok.then(|| value.parse().ok()).flatten()
    })
}

fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

/// A sample that counts something: a whole number.
fn n(text: &str, name: &str, labels: &[(&str, &str)]) -> i64 {
    let value = must(text, name, labels);
    assert!(value.fract() == 0.0 && value >= 0.0, "{name} {labels:?} = {value}");
    value as i64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape(url: &str) -> (String, String) {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn a_dispatcher_and_a_worker_expose_phase_histograms_and_labelled_counts_matching_the_batch_they_ran() {
    let env = TestEnv::new().await;
    let mock = support::mock(ADD_SCRIPT).await;
    let llm = mock.base_url();
    let dispatcher = Dispatcher::start(&env.settings(&llm, &[])).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _worker = Proc::spawn(
        "kiln-worker",
        &env.vars(
            &llm,
            &[
                ("KILN_WORKER_METRICS_ADDR", &addr),
                ("KILN_WORKER_CONCURRENCY", "4"),
                // Priced, paced and capped, so those families have samples.
                ("KILN_LLM_PRICES", "mock-model=1/2"),
                ("KILN_LLM_RPM", "600000"),
                ("KILN_LLM_MAX_IN_FLIGHT", "8"),
            ],
        ),
    );
    let specs: Vec<_> = (0..3).map(add_spec).collect();
    let created = dispatcher.client.submit(&json!({"specs": specs}), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let batch = support::wait_for_batch(&dispatcher.client, batch_id, Duration::from_secs(120)).await;
    assert_eq!(batch["counts"]["succeeded"], 3, "{batch}");
    let attempts = env.count("attempts").await;
    let (prompt_tokens, completion_tokens): (i64, i64) =
        sqlx::query_as("SELECT sum(prompt_tokens)::int8, sum(completion_tokens)::int8 FROM attempts")
            .fetch_one(env.store.pool())
            .await
            .unwrap();

    let (content_type, worker) = scrape(&format!("http://{addr}/metrics")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    check_worker_metrics(&worker, attempts, prompt_tokens, completion_tokens);
    let (content_type, d) = scrape(&format!("{}/metrics", dispatcher.url)).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    check_dispatcher_metrics(&d, attempts, prompt_tokens);
    check_dashboard_queries_exposed_series(&worker, &d);
    dispatcher.stop().await;
}

/// A worker's own metrics after the batch: its phase histograms count every
/// attempt, and its model, cost, pacing, ending and sandbox families agree
/// with the database.
fn check_worker_metrics(worker: &str, attempts: i64, prompt_tokens: i64, completion_tokens: i64) {
    assert!(worker.ends_with("# EOF\n"), "{worker}");
    assert!(
        worker.contains("# TYPE kiln_phase_duration_seconds histogram"),
        "{worker}"
    );
    // Every attempt asked the model once, was validated and tested once,
    // and every job waited in the queue once.
    for phase in ["model", "validate", "sandbox", "queue_wait"] {
        let count = n(worker, "kiln_phase_duration_seconds_count", &[("phase", phase)]);
        assert_eq!(count, attempts, "phase {phase}");
        let inf = n(
            worker,
            "kiln_phase_duration_seconds_bucket",
            &[("phase", phase), ("le", "+Inf")],
        );
        assert_eq!(inf, count, "phase {phase}: the +Inf bucket holds every observation");
        let sum = must(worker, "kiln_phase_duration_seconds_sum", &[("phase", phase)]);
        assert!((0.0..120.0).contains(&sum), "phase {phase}: sum {sum}");
    }
    let ok = [("model", "mock-model"), ("outcome", "ok")];
    assert_eq!(n(worker, "kiln_llm_request_duration_seconds_count", &ok), attempts);
    assert_eq!(
        n(
            worker,
            "kiln_llm_tokens_total",
            &[("model", "mock-model"), ("kind", "prompt")]
        ),
        prompt_tokens
    );
    assert!(prompt_tokens > 0);
    let cost = must(worker, "kiln_llm_cost_usd_total", &[("model", "mock-model")]);
    let priced = (prompt_tokens + 2 * completion_tokens) as f64 / 1e6;
    assert!((cost - priced).abs() < 1e-9, "{cost} vs {priced}");
    for family in [
        "kiln_llm_rate_limit_wait_seconds_count",
        "kiln_llm_in_flight_wait_seconds_count",
    ] {
        assert_eq!(n(worker, family, &[]), attempts, "{family}");
    }
    assert_eq!(
        n(
            worker,
            "kiln_jobs_ended_total",
            &[("state", "succeeded"), ("error_code", "none")]
        ),
        3
    );
    assert_eq!(
        n(
            worker,
            "kiln_attempts_ended_total",
            &[("state", "passed"), ("error_code", "none")]
        ),
        3
    );
    assert_eq!(n(worker, "kiln_attempts_per_success_count", &[]), 3);
    assert_eq!(n(worker, "kiln_attempts_per_success_sum", &[]), 3);
    let runs: f64 = worker
        .lines()
        .filter(|l| l.starts_with("kiln_sandbox_runs_total{") && l.contains("backend=\"process\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(runs >= 3.0, "{worker}");
    assert_eq!(n(worker, "kiln_llm_breaker_open", &[("provider", "openai")]), 0);
    // A worker shows what it does, not the dispatcher's families.
    assert!(!worker.contains("kiln_http_request_duration_seconds"), "{worker}");
}

/// The dispatcher's state-of-the-world gauges and its HTTP families.
fn check_dispatcher_metrics(d: &str, attempts: i64, prompt_tokens: i64) {
    assert!(d.ends_with("# EOF\n"), "{d}");
    assert_eq!(n(d, "kiln_jobs", &[("state", "succeeded")]), 3);
    assert_eq!(n(d, "kiln_jobs", &[("state", "queued")]), 0);
    assert_eq!(n(d, "kiln_attempts", &[("state", "passed")]), attempts);
    assert_eq!(n(d, "kiln_queue_depth", &[]), 0);
    assert_eq!(n(d, "kiln_queue_oldest_ready_age_seconds", &[]), 0);
    assert_eq!(n(d, "kiln_workers_alive", &[]), 1);
    assert_eq!(n(d, "kiln_tokens_prompt_total", &[]), prompt_tokens);
    assert_eq!(
        n(
            d,
            "kiln_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/batches"), ("status", "201")]
        ),
        1
    );
    assert!(
        must(
            d,
            "kiln_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/v1/batches/{id}"), ("status", "200")]
        ) >= 1.0
    );
    assert!(must(d, "kiln_feeder_tick_duration_seconds_count", &[]) >= 1.0);
    assert!(must(d, "kiln_feeder_pushed_total", &[]) >= 3.0);
}

/// Every series the shipped Grafana dashboard queries is one the processes
/// expose (or register).
fn check_dashboard_queries_exposed_series(worker: &str, d: &str) {
    let dashboard = std::fs::read_to_string("deploy/grafana-dashboard.json").unwrap();
    let names: std::collections::BTreeSet<&str> = dashboard
        .match_indices("kiln_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .filter(|name| *name != "kiln_dispatcher" && *name != "kiln_worker")
        .collect();
    assert!(names.len() > 10, "{names:?}");
    let registered =
        std::fs::read_to_string("src/metrics.rs").unwrap() + &std::fs::read_to_string("src/http/ops.rs").unwrap();
    for name in names {
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        let typed = format!("# TYPE {family} ");
        // A family without samples (no fault met in this run) shows no
        // TYPE line: it must at least be registered under that name.
        assert!(
            worker.contains(&typed) || d.contains(&typed) || registered.contains(&format!("\"{family}\"")),
            "the dashboard queries {name}, which no /metrics exposes"
        );
    }
}

fn generation(prompt_tokens: i64) -> StoredAnswer<'static> {
    StoredAnswer {
        response: "{}",
        finish_reason: Some("stop"),
        usage: TokenUsage {
            prompt_tokens,
            completion_tokens: 5,
        },
        cost_usd: Some(0.25),
        llm_ms: 10,
    }
}

/// What `batch_counts` says of a batch (its shards added up), and the same recounted from every
/// job and attempt.
async fn counts_and_recount(store: &Store, batch: Uuid) -> (serde_json::Value, serde_json::Value) {
    let kept: serde_json::Value = sqlx::query_scalar(
        r"SELECT to_jsonb(c) - 'batch_id' - 'finished_at' - 'cost_usd'
                 || jsonb_build_object('cost', round(cost_usd::numeric, 6))
          FROM batch_totals c WHERE batch_id = $1",
    )
    .bind(batch)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let recount: serde_json::Value = sqlx::query_scalar(
        r"SELECT jsonb_build_object(
                 'queued', count(*) FILTER (WHERE state = 'queued'),
                 'running', count(*) FILTER (WHERE state = 'running'),
                 'awaiting_review', count(*) FILTER (WHERE state = 'awaiting_review'),
                 'succeeded', count(*) FILTER (WHERE state = 'succeeded'),
                 'failed', count(*) FILTER (WHERE state = 'failed'),
                 'cancelled', count(*) FILTER (WHERE state = 'cancelled'),
                 'started', count(*) FILTER (WHERE run > 1 OR state <> 'queued'))
             || (SELECT jsonb_build_object(
                 'attempts_running', count(*) FILTER (WHERE a.state = 'running'),
                 'attempts_passed', count(*) FILTER (WHERE a.state = 'passed'),
                 'attempts_failed', count(*) FILTER (WHERE a.state = 'failed'),
                 'attempts_error', count(*) FILTER (WHERE a.state = 'error'),
                 'prompt_tokens', coalesce(sum(a.prompt_tokens), 0),
                 'completion_tokens', coalesce(sum(a.completion_tokens), 0),
                 'llm_faults', coalesce(sum(a.llm_faults), 0),
                 'sandbox_faults', coalesce(sum(a.sandbox_faults), 0),
                 'cost', round(sum(a.cost_usd)::numeric, 6))
                 FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = $1)
          FROM jobs WHERE batch_id = $1",
    )
    .bind(batch)
    .fetch_one(store.pool())
    .await
    .unwrap();
    (kept, recount)
}

/// One column of the batch's counts row.
async fn kept_count(store: &Store, batch: Uuid, column: &str) -> i64 {
    counts_and_recount(store, batch).await.0[column].as_i64().unwrap()
}

/// Plays job `i` of the batch: 0 passes on its second attempt, 1 fails,
/// 3 passes in review (awaiting review), any other meets a sandbox fault
/// and is left running.
async fn play(store: &Store, job: Uuid, i: usize, ttl: Duration) {
    let claimed = store.claim(job, "w", ttl).await.unwrap().unwrap();
    let lease = &claimed.lease;
    let first = store
        .start_attempt(lease, 1, 1, "m", &json!([]), kiln::prompt::PROMPT_VERSION)
        .await
        .unwrap();
    store
        .record_generation(lease, first.id, &generation(100 + i as i64))
        .await
        .unwrap();
    match i {
        0 => {
            store
                .finish_attempt(
                    lease,
                    first.id,
                    AttemptState::Failed,
                    Some((ErrorCode::TestsFailed, "no")),
                )
                .await
                .unwrap();
            let second = store
                .start_attempt(lease, 1, 2, "m", &json!([]), kiln::prompt::PROMPT_VERSION)
                .await
                .unwrap();
            store.record_generation(lease, second.id, &generation(7)).await.unwrap();
            store
                .finish_attempt(lease, second.id, AttemptState::Passed, None)
                .await
                .unwrap();
            store
                .finish_job(lease, JobOutcome::Succeeded { attempt_id: second.id })
                .await
                .unwrap();
        }
        1 => {
            store
                .finish_attempt(
                    lease,
                    first.id,
                    AttemptState::Failed,
                    Some((ErrorCode::TestsFailed, "no")),
                )
                .await
                .unwrap();
            store
                .finish_job(
                    lease,
                    JobOutcome::Failed {
                        code: ErrorCode::TestsFailed,
                        message: "no",
                    },
                )
                .await
                .unwrap();
        }
        3 => {
            store
                .finish_attempt(lease, first.id, AttemptState::Passed, None)
                .await
                .unwrap();
            store
                .finish_job(lease, JobOutcome::AwaitingReview { attempt_id: first.id })
                .await
                .unwrap();
        }
        _ => {
            store
                .record_fault(lease, first.id, kiln::domain::FaultKind::Sandbox, "unavailable", "gone")
                .await
                .unwrap();
            store.heartbeat(lease, ttl).await.unwrap();
        }
    }
}

#[tokio::test]
async fn batch_counts_kept_by_triggers_equal_a_recount_through_claims_faults_endings_cancels_and_retries() {
    let env = TestEnv::new().await;
    let store = &env.store;
    let specs: Vec<_> = (0..6).map(add_spec).collect();
    let created = support::store_batch(store, json!({"specs": specs})).await;
    let other = support::store_batch(store, json!({"specs": [add_spec(9)]})).await;
    let batch = created.batch_id;
    let (kept, recount) = counts_and_recount(store, batch).await;
    assert_eq!(kept, recount);
    assert_eq!(kept["queued"], 6);

    // Jobs 0-3 run: 0 passes on its second attempt, 1 fails, 2 meets a
    // fault and is left running, 3 passes and awaits review.
    let ttl = Duration::from_secs(30);
    for (i, &job) in created.job_ids[..4].iter().enumerate() {
        play(store, job, i, ttl).await;
        let (kept, recount) = counts_and_recount(store, batch).await;
        assert_eq!(kept, recount, "after job {i}");
    }
    assert_eq!(kept_count(store, batch, "awaiting_review").await, 1);
    // The feeder marks jobs sent: nothing counted changes.
    let round = store.begin_feed(&env.queue, 10).await.unwrap().expect("a round");
    assert!(!round.job_ids.is_empty());
    round.mark_dispatched().await.unwrap();
    let (kept, recount) = counts_and_recount(store, batch).await;
    assert_eq!(kept, recount, "after feeding");

    assert!(store.cancel_batch(batch).await.unwrap() > 0);
    let (kept, recount) = counts_and_recount(store, batch).await;
    assert_eq!(kept, recount, "after the cancel");
    assert_eq!(kept["queued"], 0);
    assert_eq!(kept["running"], 0);
    assert_eq!(kept["awaiting_review"], 0);
    let status = store.batch(batch).await.unwrap();
    assert_eq!(status.state, "failed");
    assert!(status.finished_at.is_some());
    assert_eq!(status.usage.prompt_tokens, 100 + 101 + 102 + 103 + 7);
    assert!((status.usage.cost_usd.unwrap() - 1.25).abs() < 1e-9);

    store
        .retry_batch(batch, &[JobState::Failed.as_str().to_owned(), "cancelled".to_owned()])
        .await
        .unwrap();
    let (kept, recount) = counts_and_recount(store, batch).await;
    assert_eq!(kept, recount, "after the retry");
    let status = store.batch(batch).await.unwrap();
    assert_eq!(
        (status.state.as_str(), status.counts.queued, status.finished_at),
        ("running", 5, None)
    );

    // The other batch was never touched.
    let (kept, recount) = counts_and_recount(store, other.batch_id).await;
    assert_eq!(kept, recount);
    assert_eq!(kept["queued"], 1);
}

#[tokio::test]
async fn the_oldest_ready_jobs_age_grows_while_it_waits_and_deferred_jobs_do_not_count() {
    let env = TestEnv::new().await;
    let created = support::store_batch(&env.store, json!({"specs": [add_spec(0), add_spec(1)]})).await;
    // One job is deferred (backoff) into the future: not ready.
    sqlx::query(
        "UPDATE jobs SET not_before = now() + interval '1 hour', updated_at = now() - interval '1 day' WHERE id = $1",
    )
    .bind(created.job_ids[0])
    .execute(env.store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '90 seconds' WHERE id = $1")
        .bind(created.job_ids[1])
        .execute(env.store.pool())
        .await
        .unwrap();
    let world = env.store.world().await.unwrap();
    assert!(
        (90.0..100.0).contains(&world.oldest_ready_age_s),
        "{}",
        world.oldest_ready_age_s
    );
    assert_eq!(world.jobs[0], (JobState::Queued, 2));
    assert_eq!(world.workers, 0);
}

#[test]
fn a_worker_metrics_address_that_is_not_an_address_stops_start_up_naming_the_setting() {
    let vars = |value: &str| [("KILN_WORKER_METRICS_ADDR".to_owned(), value.to_owned())];
    let err = kiln::config::Settings::from_vars(vars("9464")).unwrap_err().to_string();
    assert!(err.starts_with("KILN_WORKER_METRICS_ADDR: \"9464\""), "{err}");
    let settings = kiln::config::Settings::from_vars(vars("0.0.0.0:9464")).unwrap();
    assert_eq!(settings.worker.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
    let unset = kiln::config::Settings::from_vars([]).unwrap();
    assert_eq!(unset.worker.metrics_addr, None);
}
