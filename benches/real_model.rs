//! Kiln against a real small model, at a scale no test runs: SmolLM2-135M
//! served by llama-cpp-python (`scripts/ensure-model`), a dispatcher and
//! worker processes of this build, real Postgres, Redis and the process
//! sandbox. Prints what a user of a local model sees, and exits non-zero
//! when a promise does not hold.
//!
//! `cargo build --workspace --bins --features kiln/fault-injection`, then
//! `cargo bench --profile dev --bench real_model --features kiln/fault-injection`.
//! `KILN_BENCH_SCENARIO` picks one scenario (`humaneval` or `load`); both
//! run by default.
//!
//! - `humaneval`: 20 HumanEval problems (every 8th), 3 attempts each, JSON
//!   mode off. Promised: no sandbox run ends in a NameError (validation
//!   names those first), no job error says "collected no tests" for a
//!   solution that failed to import, at most 10% of retries repeat the
//!   previous answer.
//! - `load`: 200 small specs from 2 workers x 16 job slots against the
//!   server's single slot, `KILN_LLM_MAX_IN_FLIGHT=2` per worker. Promised:
//!   no request times out (no provider fault recorded) and every job ends.

#[allow(dead_code)]
#[path = "../tests/support/humaneval.rs"]
mod humaneval_data;
#[path = "../tests/support/model.rs"]
mod model_server;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use model_server::{MODEL, ModelServer};
use serde_json::{Value, json};
use support::{Dispatcher, Proc, TestEnv, wait_for_batch};

/// What the jobs of one batch came to.
#[derive(Default)]
struct Outcome {
    jobs: usize,
    succeeded: usize,
    failed: usize,
    unfinished: usize,
    attempts: usize,
    sandbox_runs: usize,
    name_errors: Vec<String>,
    collected_no_tests: usize,
    retries: usize,
    repeated: usize,
    llm_faults: u64,
    timeouts: usize,
    /// Why attempts failed: the first error rule, or the verdict.
    causes: std::collections::BTreeMap<String, usize>,
}

async fn run(specs: Vec<Value>, options: Value, workers: usize, extra: &[(&str, &str)]) -> (Outcome, Duration) {
    let server = ModelServer::start().await;
    let env = TestEnv::new().await;
    let mut vars = vec![("KILN_LLM_MODEL", MODEL), ("KILN_LLM_JSON_MODE", "off")];
    vars.extend_from_slice(extra);
    let vars = env.vars(&server.base_url, &vars);
    let d = Dispatcher::start(&env.settings(&server.base_url, &[])).await;
    let mut procs: Vec<Proc> = (0..workers).map(|_| Proc::spawn("kiln-worker", &vars)).collect();
    let started = Instant::now();
    let created = d
        .client
        .submit(&json!({"specs": specs, "options": options}), None)
        .await
        .expect("the batch is accepted");
    let batch_id = created["batch_id"].as_str().unwrap().to_owned();
    let batch = wait_for_batch(&d.client, &batch_id, Duration::from_secs(4 * 3600)).await;
    let wall = started.elapsed();
    eprintln!("batch ended in {wall:.1?}: {}", batch["counts"]);
    for p in &mut procs {
        assert!(p.0.try_wait().unwrap().is_none(), "a worker died: {}", p.1.display());
    }

    let mut out = Outcome::default();
    for job in d.client.all_jobs(&batch_id, None).await.unwrap() {
        out.jobs += 1;
        match job["state"].as_str() {
            Some("succeeded") => out.succeeded += 1,
            Some("failed") => out.failed += 1,
            _ => out.unfinished += 1,
        }
        let error = job["error"].to_string();
        if error.contains("collected no tests") {
            out.collected_no_tests += 1;
        }
        if error.contains("timed out") {
            out.timeouts += 1;
        }
        let attempts = d.attempts(job["job_id"].as_str().unwrap(), true).await;
        let mut previous: Option<String> = None;
        for a in &attempts {
            out.attempts += 1;
            out.llm_faults += a["llm_faults"].as_u64().unwrap_or(0);
            let faults = a["faults"].to_string();
            if faults.contains("timed out") || faults.contains("timeout") {
                out.timeouts += 1;
            }
            let first_error = a["validation"]["diagnostics"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["severity"] == "error"))
                .map(|d| d["rule"].as_str().unwrap_or("?").to_owned());
            let cause = match (a["state"].as_str(), first_error) {
                (Some("passed"), _) => "passed".to_owned(),
                (_, Some(rule)) => rule,
                _ if a["tests"].is_object() => "tests failed".to_owned(),
                (state, None) => state.unwrap_or("?").to_owned(),
            };
            *out.causes.entry(cause).or_default() += 1;
            if a["tests"].is_object() {
                out.sandbox_runs += 1;
                let tests = &a["tests"];
                let said = format!("{} {}", tests["problem"], tests["output"]);
                if said.contains("NameError") {
                    out.name_errors.push(format!("{}: {}", job["label"], tests["problem"]));
                }
            }
            let response = a["response"]
                .as_str()
                .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "));
            if let (Some(before), Some(now)) = (&previous, &response) {
                out.retries += 1;
                if before == now {
                    out.repeated += 1;
                }
            }
            previous = response;
        }
    }
    for mut p in procs {
        p.terminate();
    }
    d.stop().await;
    (out, wall)
}

fn print(name: &str, o: &Outcome, wall: Duration) {
    println!(
        "{name}: {} jobs in {wall:.1?}: {} succeeded, {} failed, {} unfinished",
        o.jobs, o.succeeded, o.failed, o.unfinished
    );
    println!(
        "{name}: {} attempts, {} sandbox runs, {} ended in a NameError, {} job errors say \"collected no tests\"",
        o.attempts,
        o.sandbox_runs,
        o.name_errors.len(),
        o.collected_no_tests
    );
    for e in &o.name_errors {
        println!("{name}:   NameError: {e}");
    }
    let ratio = if o.retries == 0 {
        0.0
    } else {
        100.0 * o.repeated as f64 / o.retries as f64
    };
    println!(
        "{name}: {} of {} retries repeated the previous answer ({ratio:.1}%)",
        o.repeated, o.retries
    );
    println!("{name}: {} provider faults, {} timeouts", o.llm_faults, o.timeouts);
    println!("{name}: attempts by outcome: {:?}", o.causes);
}

async fn humaneval() -> bool {
    let specs: Vec<Value> = humaneval_data::humaneval()
        .iter()
        .step_by(8)
        .take(20)
        .map(|p| {
            json!({
                "kind": "function",
                "task_description": format!("Complete `{}` as its docstring says.", p.entry_point),
                "entry_point": p.entry_point,
                "prompt": p.prompt,
                "test_code": format!("from solution import {0}\n\n{1}\n\ndef test_check():\n    check({0})\n", p.entry_point, p.test),
            })
        })
        .collect();
    let (o, wall) = run(
        specs,
        json!({"max_attempts": 3}),
        1,
        &[
            ("KILN_LLM_MAX_TOKENS", "384"),
            ("KILN_LLM_MAX_IN_FLIGHT", "1"),
            ("KILN_WORKER_CONCURRENCY", "4"),
            ("KILN_LLM_TIMEOUT_S", "900"),
        ],
    )
    .await;
    print("humaneval", &o, wall);
    let ok = o.unfinished == 0
        && o.name_errors.is_empty()
        && o.collected_no_tests == 0
        && o.repeated * 10 <= o.retries
        && o.llm_faults == 0;
    println!("humaneval: {}", if ok { "HOLDS" } else { "DOES NOT HOLD" });
    ok
}

async fn load() -> bool {
    let tasks = [
        (
            "add",
            "Return a + b.",
            json!({"a": "int", "b": "int"}),
            "int",
            json!([{"input": [1, 2], "expected": 3}]),
        ),
        (
            "neg",
            "Return -x.",
            json!({"x": "int"}),
            "int",
            json!([{"input": [4], "expected": -4}]),
        ),
        (
            "upper",
            "Return s in upper case.",
            json!({"s": "str"}),
            "str",
            json!([{"input": ["ab"], "expected": "AB"}]),
        ),
        (
            "count",
            "Return the length of xs.",
            json!({"xs": "List[int]"}),
            "int",
            json!([{"input": [[1, 2]], "expected": 2}]),
        ),
    ];
    let specs: Vec<Value> = (0..200)
        .map(|i| {
            let (name, task, inputs, output, cases) = &tasks[i % tasks.len()];
            json!({"kind": "function", "task_description": format!("{task} (variant {i})"),
                   "entry_point": format!("{name}_{i}"), "input_types": inputs, "output_type": output,
                   "test_cases": cases})
        })
        .collect();
    let (o, wall) = run(
        specs,
        json!({"max_attempts": 1}),
        2,
        &[
            ("KILN_LLM_MAX_TOKENS", "96"),
            ("KILN_LLM_MAX_IN_FLIGHT", "2"),
            ("KILN_WORKER_CONCURRENCY", "16"),
        ],
    )
    .await;
    print("load", &o, wall);
    let ok = o.unfinished == 0 && o.llm_faults == 0 && o.timeouts == 0;
    println!("load: {}", if ok { "HOLDS" } else { "DOES NOT HOLD" });
    ok
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let scenario = std::env::var("KILN_BENCH_SCENARIO").unwrap_or_default();
    let mut ok = true;
    if scenario.is_empty() || scenario == "humaneval" {
        ok &= humaneval().await;
    }
    if scenario.is_empty() || scenario == "load" {
        ok &= load().await;
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
