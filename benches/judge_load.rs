//! Verdicts independent of load: a correct solution that needs 2-3 s of CPU
//! in one call, judged with 16 runs in flight on the machine's cores, round
//! after round, on each backend, with the limits a worker uses by default
//! (`Settings` with nothing set). Each call's limit counts CPU time and the
//! run's wall clock is only a backstop, so every run must pass however many
//! share the machine: with wall-clock limits the same answer passed alone
//! and failed under load (issue 14).
//!
//! Two scenarios (`KILN_BENCH_SCENARIO`, both by default):
//! - `worker`: the whole system as deployed. A dispatcher, one `kiln-worker`
//!   process with its defaults (16 jobs in flight, sandbox slots = cores)
//!   and a zero-latency mock model answering every spec with the heavy
//!   solution; each round is a batch of 16 such jobs, one attempt each, all
//!   of which must succeed.
//! - `sandbox`: harsher than any worker: 16 runs at once straight on the
//!   sandbox, no slots, per backend (`KILN_BENCH_BACKENDS`, `process,docker`
//!   by default), with the default wall clock (60 s) as the backstop.
//!
//! `cargo bench --profile dev --bench judge_load`; `KILN_BENCH_ROUNDS`
//! (default 10) and `KILN_BENCH_IN_FLIGHT` (default 16) shape the run. It
//! exits non-zero when a correct run failed.

#[path = "../tests/support/sandbox.rs"]
mod sandbox_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kiln::config::Settings;
use kiln::sandbox::RunLimits;
use sandbox_support::{Backend, TestSandbox, cpu_heavy_job};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn bench(backend: Backend, limits: &RunLimits, rounds: usize, in_flight: usize) -> bool {
    let job = cpu_heavy_job();
    let sandbox = TestSandbox::new(backend, limits, in_flight).await;

    // Alone first: on an idle machine a single-threaded run's wall time is
    // about the CPU it needs.
    let started = Instant::now();
    let alone = sandbox.function_job(&job, limits).await;
    let alone_wall = started.elapsed();
    assert!(
        alone.all_passed(),
        "the heavy solution fails even alone: {:?}",
        alone.problem
    );
    println!("{}: one run alone takes {}", backend.name(), secs(alone_wall));

    let (mut passed, mut walls) = (0, Vec::new());
    for round in 1..=rounds {
        let started = Instant::now();
        let reports = futures::future::join_all((0..in_flight).map(|_| async {
            let started = Instant::now();
            let report = sandbox.function_job(&job, limits).await;
            (report, started.elapsed())
        }))
        .await;
        let round_passed = reports.iter().filter(|(r, _)| r.all_passed()).count();
        for (report, wall) in &reports {
            walls.push(*wall);
            if !report.all_passed() {
                let why = report.problem.clone().unwrap_or_else(|| format!("{:?}", report.cases));
                println!("  round {round}: a run failed after {}: {why}", secs(*wall));
            }
        }
        passed += round_passed;
        println!(
            "  round {round:>2}: {round_passed}/{in_flight} passed in {}",
            secs(started.elapsed())
        );
    }
    walls.sort();
    let total = rounds * in_flight;
    println!(
        "{}: {passed}/{total} runs passed ({} rounds of {in_flight} in flight on {} cores); run wall median {}, max {} = {:.1}x the run alone; wall limit {}",
        backend.name(),
        rounds,
        cores(),
        secs(walls[walls.len() / 2]),
        secs(walls[walls.len() - 1]),
        walls[walls.len() - 1].as_secs_f64() / alone_wall.as_secs_f64(),
        secs(limits.timeout),
    );
    passed == total
}

/// Rounds of `in_flight` heavy jobs through a dispatcher and one worker
/// process with the default settings on `backend`; true when every job
/// succeeded.
async fn worker(backend: Backend, rounds: usize, in_flight: usize) -> bool {
    let job = cpu_heavy_job();
    let script = serde_json::json!([{
        "name": "count_primes",
        "match": "count_primes",
        "responses": [{"files": [{"path": "solution.py", "content": job.solution}]}],
    }]);
    let server = support::mock(&script.to_string()).await;
    let env = support::TestEnv::new().await;
    let vars = env.vars(
        &server.base_url(),
        &[
            ("KILN_WORKER_CONCURRENCY", &in_flight.to_string()),
            ("KILN_SANDBOX", backend.name()),
            ("KILN_SANDBOX_IMAGE", &sandbox_support::image()),
        ],
    );
    let d = support::Dispatcher::start(&env.settings(&server.base_url(), &[])).await;
    let mut worker = support::Proc::spawn("kiln-worker", &vars);
    let (mut succeeded, mut walls) = (0, Vec::new());
    for round in 1..=rounds {
        let specs: Vec<_> = (0..in_flight)
            .map(|i| {
                serde_json::json!({
                    "kind": "function",
                    "task_description": format!("Count the primes below n with `count_primes` (round {round}, job {i})."),
                    "entry_point": "count_primes",
                    "test_code": job.test_code,
                })
            })
            .collect();
        let started = Instant::now();
        let created = d
            .client
            .submit(
                &serde_json::json!({"specs": specs, "options": {"max_attempts": 1}}),
                None,
            )
            .await
            .expect("the batch is accepted");
        let batch_id = created["batch_id"].as_str().expect("a batch id");
        let batch = support::wait_for_batch(&d.client, batch_id, Duration::from_secs(1800)).await;
        let wall = started.elapsed();
        walls.push(wall);
        let jobs = d.client.all_jobs(batch_id, None).await.expect("the batch's jobs");
        let round_succeeded = jobs.iter().filter(|j| j["state"] == "succeeded").count();
        for j in jobs.iter().filter(|j| j["state"] != "succeeded") {
            println!("  round {round}: job {} {}: {}", j["job_id"], j["state"], j["error"]);
        }
        succeeded += round_succeeded;
        println!(
            "  round {round:>2}: {round_succeeded}/{in_flight} succeeded in {} ({})",
            secs(wall),
            batch["counts"]
        );
    }
    assert!(
        worker.0.try_wait().expect("the worker's status").is_none(),
        "the worker died"
    );
    worker.terminate();
    d.stop().await;
    walls.sort();
    let total = rounds * in_flight;
    println!(
        "worker, {}: {succeeded}/{total} jobs succeeded ({rounds} batches of {in_flight} CPU-heavy jobs, one worker with {in_flight} in flight and default slots, on {} cores); a batch took {} median, {} max",
        backend.name(),
        cores(),
        secs(walls[walls.len() / 2]),
        secs(walls[walls.len() - 1]),
    );
    succeeded == total
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_vars(std::iter::empty()).expect("the default settings");
    let limits = RunLimits::from_settings(&settings.sandbox);
    let rounds = env_or("KILN_BENCH_ROUNDS", 10);
    let in_flight = env_or("KILN_BENCH_IN_FLIGHT", 16);
    let scenario = std::env::var("KILN_BENCH_SCENARIO").unwrap_or_default();
    let backends: Vec<Backend> = std::env::var("KILN_BENCH_BACKENDS")
        .unwrap_or_else(|_| "process,docker".into())
        .split(',')
        .map(|name| match name.trim() {
            "process" => Backend::Process,
            "docker" => Backend::Docker,
            other => panic!("KILN_BENCH_BACKENDS: unknown backend {other:?}, expected process or docker"),
        })
        .collect();
    let mut all = true;
    for &backend in &backends {
        if scenario.is_empty() || scenario == "worker" {
            all &= worker(backend, rounds, in_flight).await;
        }
        if scenario.is_empty() || scenario == "sandbox" {
            all &= bench(backend, &limits, rounds, in_flight).await;
        }
    }
    if !all {
        eprintln!("some correct runs failed under load");
        std::process::exit(1);
    }
}
