//! Durability with real worker processes: shutdown hand-over, crash loops,
//! cancellation, Redis losing its data, the bounded Redis window, and the
//! feeder's priority and fairness.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::feeder::{FORGET_DEAD_WORKERS_AFTER, Feeder, FeederStats};
use kiln::queue::Producer;
use kiln::store::liveness::Registration;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, Proc, TestEnv, add_spec, eventually, mock, wait_for_batch};
use tokio::sync::Notify;

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

/// A job's lease row: (state, lease_owner, lease_epoch, lease_expires_at).
type LeaseRow = (String, Option<String>, i64, Option<chrono::DateTime<chrono::Utc>>);

async fn lease_row(env: &TestEnv, job_id: &str) -> LeaseRow {
    sqlx::query_as("SELECT state, lease_owner, lease_epoch, lease_expires_at FROM jobs WHERE id = $1::uuid")
        .bind(job_id)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_jobs_are_reclaimed_by_another_worker_within_3_s_and_not_blamed() {
    let env = TestEnv::new().await;
    let script = ADD_SCRIPT.replace("  responses:", "  latency_ms: 8000\n  responses:");
    let llm = mock(&script).await;
    // A lease TTL far longer than the bound: only liveness can meet it.
    let ttl = [("KILN_LEASE_TTL_S", "30"), ("KILN_WORKER_CONCURRENCY", "4")];
    let settings = env.settings(&llm.base_url(), &ttl);
    let d = Dispatcher::start(&settings).await;
    let mut a = Proc::spawn(
        "kiln-worker",
        &env.vars(&llm.base_url(), &[ttl[0], ttl[1], ("KILN_WORKER_ID", "victim")]),
    );
    let specs: Vec<Value> = (0..4).map(add_spec).collect();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let jobs: Vec<String> = support::job_ids(&created);
    eventually(
        Duration::from_secs(30),
        "the victim waiting for the model on all four",
        || async {
            let rows: Vec<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT lease_owner, activity FROM jobs WHERE state = 'running'")
                    .fetch_all(env.store.pool())
                    .await
                    .unwrap();
            rows.len() == 4
                && rows
                    .iter()
                    .all(|(o, a)| o.as_deref() == Some("victim") && a.as_deref() == Some("model"))
        },
    )
    .await;
    // The survivor is up before the kill, as in a real deployment.
    let _b = Proc::spawn(
        "kiln-worker",
        &env.vars(&llm.base_url(), &[ttl[0], ttl[1], ("KILN_WORKER_ID", "survivor")]),
    );
    eventually(Duration::from_secs(30), "the survivor registered", || async {
        env.count("workers WHERE id = 'survivor'").await == 1
    })
    .await;
    a.kill();
    let killed = Instant::now();
    loop {
        let mut reclaimed = 0;
        for job in &jobs {
            let (state, owner, epoch, _) = lease_row(&env, job).await;
            if epoch >= 2 && (owner.as_deref() == Some("survivor") || state == "succeeded") {
                reclaimed += 1;
            }
        }
        if reclaimed == jobs.len() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "only {reclaimed} of 4 jobs re-claimed 3 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("all four jobs re-claimed {took:?} after the SIGKILL");

    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(batch["counts"]["succeeded"], 4, "{batch}");
    // Each job shows one takeover, not blamed: it was waiting for the model.
    for job in &jobs {
        let view = d.client.job(job).await.unwrap();
        assert_eq!(
            (view["crashes"].as_i64(), view["blamed_crashes"].as_i64()),
            (Some(1), Some(0)),
            "{view}"
        );
        let t = &view["takeovers"][0];
        assert_eq!(
            (t["cause"].as_str(), t["activity"].as_str(), t["blamed"].as_bool()),
            (Some("worker_died"), Some("model"), Some(false)),
            "{view}"
        );
        assert_eq!(
            (t["lost_by"].as_str(), t["taken_by"].as_str()),
            (Some("victim"), Some("survivor"))
        );
        assert!(t["reason"].as_str().unwrap().contains("waiting for the model"), "{t}");
        let attempts = d.attempts(job, false).await;
        assert_eq!(attempts[0]["takeovers"].as_array().unwrap().len(), 1, "{attempts:?}");
    }
    d.stop().await;
}

/// A worker's processes for the poison test: any that died is replaced.
#[cfg(feature = "fault-injection")]
struct Pool {
    procs: Vec<(String, Proc)>,
    spawned: usize,
    /// Each one's variables, but for its id.
    vars: Vec<(String, String)>,
    /// Ids of the workers that died.
    dead: Vec<String>,
}

#[cfg(feature = "fault-injection")]
impl Pool {
    fn spawn(&mut self) {
        self.spawned += 1;
        let id = format!("w{}", self.spawned);
        let mut vars = self.vars.clone();
        vars.push(("KILN_WORKER_ID".into(), id.clone()));
        let proc = Proc::spawn("kiln-worker", &vars);
        self.procs.push((id, proc));
    }

    fn replace_the_dead(&mut self) {
        let before = self.procs.len();
        let mut dead = Vec::new();
        self.procs.retain_mut(|(id, p)| {
            let exited = p.0.try_wait().unwrap().is_some();
            if exited {
                dead.push(id.clone());
            }
            !exited
        });
        self.dead.extend(dead);
        for _ in self.procs.len()..before {
            self.spawn();
        }
    }
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_ends_as_crash_loop_after_its_blamed_deaths_while_jobs_that_shared_its_worker_succeed() {
    let env = TestEnv::new().await;
    // The poison's answer carries the abort marker: whoever validates it
    // dies. Its answer comes a little after the others', so it dies with
    // company: jobs waiting for the model in the same worker.
    let script = format!(
        "{}\n- name: poison\n  match: \"`poison`\"\n  latency_ms: 1500\n  responses:\n    - content: \"POISON-MARKER\"\n",
        ADD_SCRIPT.replace("  responses:", "  latency_ms: 2500\n  responses:")
    );
    let llm = mock(&script).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let mut specs: Vec<Value> = (0..11).map(add_spec).collect();
    specs.insert(
        3,
        json!({"kind": "function", "task_description": "Crash every worker.", "entry_point": "poison",
               "test_cases": [{"input": 1, "expected": 1}]}),
    );
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let poison = created["job_ids"][3].as_str().unwrap().to_owned();
    let vars = env.vars(
        &llm.base_url(),
        &[
            ("KILN_WORKER_CONCURRENCY", "6"),
            ("KILN_FAULT_ABORT_MARKER", "POISON-MARKER"),
        ],
    );
    let mut pool = Pool {
        procs: Vec::new(),
        spawned: 0,
        dead: Vec::new(),
        vars,
    };
    pool.spawn();
    pool.spawn();
    let batch_id = created["batch_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let batch = loop {
        pool.replace_the_dead();
        let batch = d.client.batch(batch_id).await.unwrap();
        if batch["finished_at"].is_string() {
            break batch;
        }
        assert!(Instant::now() < deadline, "the batch did not finish: {batch}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let job = d.client.job(&poison).await.unwrap();
    assert_eq!(job["error"]["code"], "crash_loop", "{job}");
    assert_eq!(job["blamed_crashes"], 3, "{job}");
    assert_eq!(job["crashes"], 3, "{job}");
    let takeovers = job["takeovers"].as_array().unwrap();
    assert!(
        takeovers
            .iter()
            .all(|t| t["blamed"] == true && t["activity"] == "validating"),
        "{job}"
    );
    assert_eq!(pool.dead.len(), 3, "one death per blamed crash: {:?}", pool.dead);
    assert_eq!(batch["counts"]["succeeded"], 11, "{batch}");

    // Jobs that shared a worker with the poison when it died were taken
    // over unblamed, and still succeeded.
    let companions: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT job_id::text, activity, blamed FROM takeovers WHERE job_id <> $1::uuid AND lost_by = ANY($2)",
    )
    .bind(&poison)
    .bind(&pool.dead)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert!(!companions.is_empty(), "no job shared a worker with the poison");
    // They were only waiting (for the model, the sandbox or room) when the
    // poison killed their worker: none of those deaths was blamed on them.
    assert!(
        companions.iter().all(|(_, activity, blamed)| {
            ["claimed", "model", "sandbox", "finishing"].contains(&activity.as_str()) && !blamed
        }),
        "{companions:?}"
    );
    eprintln!(
        "poison: {} deaths, {} companion takeovers (unblamed)",
        pool.dead.len(),
        companions.len()
    );
    d.stop().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_while_a_sandbox_report_is_read_is_blamed_on_its_job_not_on_jobs_waiting_on_the_sandbox() {
    let env = TestEnv::new().await;
    // The poison's code prints the abort marker (built at run time, so the
    // answer itself does not carry it and validates): the worker dies while
    // it reads the run's report, inside the worker. The others' pytest runs
    // take 3 s, so when it dies its companions wait on the sandbox.
    let script = format!(
        "{}\n- name: poison\n  match: \"`report_poison`\"\n  latency_ms: 1000\n  responses:\n    - files:\n        - path: solution.py\n          content: \"def report_poison(x):\\n    print('REPORT-' + 'POISON')\\n    return x\\n\"\n",
        ADD_SCRIPT.replace("  responses:", "  latency_ms: 500\n  responses:")
    );
    let llm = mock(&script).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let mut specs: Vec<Value> = (0..9).map(|i| slow_spec(i, 3.0)).collect();
    specs.insert(
        2,
        json!({"kind": "function", "task_description": "Return x.", "entry_point": "report_poison",
               "test_cases": [{"input": 1, "expected": 1}]}),
    );
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let poison = created["job_ids"][2].as_str().unwrap().to_owned();
    let vars = env.vars(
        &llm.base_url(),
        &[
            ("KILN_WORKER_CONCURRENCY", "5"),
            ("KILN_SANDBOX_SLOTS", "5"),
            ("KILN_FAULT_ABORT_MARKER", "REPORT-POISON"),
        ],
    );
    let mut pool = Pool {
        procs: Vec::new(),
        spawned: 0,
        dead: Vec::new(),
        vars,
    };
    pool.spawn();
    pool.spawn();
    let batch_id = created["batch_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let batch = loop {
        pool.replace_the_dead();
        let batch = d.client.batch(batch_id).await.unwrap();
        if batch["finished_at"].is_string() {
            break batch;
        }
        assert!(Instant::now() < deadline, "the batch did not finish: {batch}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every death was the poison's, found reading its report: blamed each
    // time, until the crash limit.
    let job = d.client.job(&poison).await.unwrap();
    assert_eq!(job["error"]["code"], "crash_loop", "{job}");
    assert_eq!(
        (job["crashes"].as_i64(), job["blamed_crashes"].as_i64()),
        (Some(3), Some(3)),
        "{job}"
    );
    for t in job["takeovers"].as_array().unwrap() {
        assert_eq!(
            (t["activity"].as_str(), t["blamed"].as_bool()),
            (Some("reporting"), Some(true)),
            "{job}"
        );
        assert!(t["reason"].as_str().unwrap().contains("sandbox report"), "{t}");
    }
    assert_eq!(pool.dead.len(), 3, "one death per blamed crash: {:?}", pool.dead);
    // Its answer was stored once and resumed from, never requested again.
    let attempts = d.attempts(&poison, false).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        attempts[0]["phase"], "validated",
        "its report was never stored: {attempts:?}"
    );
    let poison_requests = llm
        .requests()
        .iter()
        .filter(|r| r.script.as_deref() == Some("poison"))
        .count();
    assert_eq!(
        poison_requests, 1,
        "the poison's answer was requested {poison_requests} times"
    );
    assert_eq!(batch["counts"]["succeeded"], 9, "{batch}");

    // The jobs that died with it were waiting (mostly on the sandbox, a
    // separate process): none of those deaths was blamed on them.
    let companions: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT job_id::text, activity, blamed FROM takeovers WHERE job_id <> $1::uuid AND lost_by = ANY($2)",
    )
    .bind(&poison)
    .bind(&pool.dead)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert!(
        companions.iter().any(|(_, activity, _)| activity == "sandbox"),
        "no job was waiting on the sandbox when the poison killed its worker: {companions:?}"
    );
    assert!(
        companions.iter().all(|(_, activity, blamed)| {
            ["claimed", "model", "sandbox", "finishing"].contains(&activity.as_str()) && !blamed
        }),
        "{companions:?}"
    );
    eprintln!(
        "report poison: {} deaths, {} companion takeovers (unblamed, {} waiting on the sandbox)",
        pool.dead.len(),
        companions.len(),
        companions.iter().filter(|(_, a, _)| a == "sandbox").count()
    );
    d.stop().await;
}

#[cfg(feature = "fault-injection")]
/// A mock script whose answer to `panicky_spec` carries the panic marker
/// (`KILN_FAULT_PANIC_MARKER=PANIC-MARKER`), after `latency_ms`.
fn panicky_script(latency_ms: u64) -> String {
    format!(
        "
- name: panicky
  match: \"`panicky`\"
  latency_ms: {latency_ms}
  responses:
    - files:
        - path: solution.py
          content: \"def panicky(x):\\n    # PANIC-MARKER\\n    return x\\n\"
"
    )
}

#[cfg(feature = "fault-injection")]
fn panicky_spec() -> Value {
    json!({"kind": "function", "task_description": "Identity.", "entry_point": "panicky",
           "test_cases": [{"input": 1, "expected": 1}]})
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_pipeline_panics_is_rerun_by_another_worker_within_3_s_with_the_panic_recorded() {
    let env = TestEnv::new().await;
    let llm = mock(&panicky_script(2500)).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let mut a = Proc::spawn(
        "kiln-worker",
        &env.vars(
            &llm.base_url(),
            &[
                ("KILN_WORKER_ID", "panics"),
                ("KILN_FAULT_PANIC_MARKER", "PANIC-MARKER"),
            ],
        ),
    );
    let created = d
        .client
        .submit(&json!({ "specs": [panicky_spec()] }), None)
        .await
        .unwrap();
    let job = created["job_ids"][0].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the first worker running the job", || async {
        lease_row(&env, &job).await.1.as_deref() == Some("panics")
    })
    .await;
    let _b = Proc::spawn(
        "kiln-worker",
        &env.vars(&llm.base_url(), &[("KILN_WORKER_ID", "other")]),
    );
    // The other worker is up (registered, once its sandbox is warm) before
    // the clock starts, as in a real deployment.
    eventually(Duration::from_secs(60), "the other worker registered", || async {
        env.count("workers WHERE id = 'other' AND died_at IS NULL").await == 1
    })
    .await;

    // The panic is recorded on the attempt, and the lease released with it.
    let panic_faults = |attempts: &[Value]| {
        attempts
            .iter()
            .flat_map(|a| a["faults"].as_array().cloned().unwrap_or_default())
            .filter(|f| f["kind"] == "panic")
            .count()
    };
    eventually(Duration::from_secs(30), "the panic recorded", || async {
        panic_faults(&d.attempts(&job, false).await) > 0
    })
    .await;
    let panicked = Instant::now();
    // From now on the panicked worker's lease is never seen renewed, and
    // another worker re-claims the job within 3 s.
    loop {
        let (state, owner, epoch, _) = lease_row(&env, &job).await;
        assert_ne!(
            owner.as_deref(),
            Some("panics"),
            "the panicked lease is still held (epoch {epoch})"
        );
        if epoch >= 2 && (owner.as_deref() == Some("other") || state == "succeeded") {
            break;
        }
        assert!(
            panicked.elapsed() < Duration::from_secs(3),
            "not re-claimed 3 s after the panic: {state} {owner:?} {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("re-claimed {:?} after the panic", panicked.elapsed());
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    // One panic only: the worker that panicked never ran the job again.
    let attempts = d.attempts(&job, false).await;
    assert_eq!(panic_faults(&attempts), 1, "{attempts:?}");
    assert_eq!(attempts.len(), 1, "the same attempt was resumed: {attempts:?}");
    let view = d.client.job(&job).await.unwrap();
    let t = &view["takeovers"][0];
    assert_eq!(
        (t["cause"].as_str(), t["blamed"].as_bool()),
        (Some("panic"), Some(true)),
        "{view}"
    );
    assert_eq!(
        (view["crashes"].as_i64(), view["blamed_crashes"].as_i64()),
        (Some(1), Some(1))
    );
    // The worker survived its job's panic.
    assert!(a.0.try_wait().unwrap().is_none(), "the worker died");
    assert_eq!(llm.requests().len(), 1, "no answer was requested again");
    d.stop().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_panics_in_the_only_worker_runs_there_again_after_a_pause_and_ends_as_crash_loop() {
    let env = TestEnv::new().await;
    let llm = mock(&panicky_script(0)).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let mut alone = Proc::spawn(
        "kiln-worker",
        &env.vars(
            &llm.base_url(),
            &[("KILN_FAULT_PANIC_MARKER", "PANIC-MARKER"), ("KILN_CRASH_LIMIT", "2")],
        ),
    );
    let created = d
        .client
        .submit(&json!({ "specs": [panicky_spec()] }), None)
        .await
        .unwrap();
    let job = created["job_ids"][0].as_str().unwrap().to_owned();
    wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(90),
    )
    .await;
    let view = d.client.job(&job).await.unwrap();
    assert_eq!(view["error"]["code"], "crash_loop", "{view}");
    // Both panics happened in the one worker, the second only after the
    // job had been left to other workers (there were none) for 5 s.
    let attempts = d.attempts(&job, false).await;
    let panics: Vec<chrono::DateTime<chrono::Utc>> = attempts
        .iter()
        .flat_map(|a| a["faults"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["kind"] == "panic")
        .map(|f| f["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(panics.len(), 2, "{attempts:?}");
    let pause = panics[1] - panics[0];
    assert!(pause >= chrono::TimeDelta::seconds(5), "run again after {pause}");
    assert!(alone.0.try_wait().unwrap().is_none(), "the worker died");
    assert_eq!(llm.requests().len(), 1, "no answer was requested again");
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

#[tokio::test]
async fn the_reconciler_deletes_registrations_of_workers_dead_for_over_an_hour_and_keeps_the_rest() {
    let env = TestEnv::new().await;
    let options = env.store.pool().connect_options();
    let _live = Registration::register(&options, "live").await.unwrap();
    for id in ["died-59-min-ago", "died-61-min-ago"] {
        // Dropped: its connection, and with it the liveness lock, is gone.
        drop(Registration::register(&options, id).await.unwrap());
    }
    eventually(Duration::from_secs(10), "both declared dead", || async {
        env.store.reclaim_from_dead_workers(Duration::ZERO).await.unwrap();
        env.count("workers WHERE died_at IS NOT NULL").await == 2
    })
    .await;
    for (id, minutes) in [("died-59-min-ago", 59), ("died-61-min-ago", 61)] {
        sqlx::query("UPDATE workers SET died_at = now() - make_interval(mins => $2) WHERE id = $1")
            .bind(id)
            .bind(minutes)
            .execute(env.store.pool())
            .await
            .unwrap();
    }

    let feeder = Feeder {
        store: env.store.clone(),
        producer: Producer::connect(&support::redis_url(), &env.queue).await.unwrap(),
        queue: env.queue.clone(),
        settings: env.settings("http://127.0.0.1:9", &[]).feeder,
        wake: Arc::new(Notify::new()),
        stats: Arc::new(FeederStats::default()),
    };
    // An ordinary tick leaves registrations alone; the periodic scan
    // deletes those dead for longer than the retention.
    feeder.tick(false).await.unwrap();
    assert_eq!(env.count("workers").await, 3);
    feeder.tick(true).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM workers ORDER BY id")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    assert_eq!(left, ["died-59-min-ago", "live"]);
    assert_eq!(FORGET_DEAD_WORKERS_AFTER, Duration::from_secs(3600));
}
