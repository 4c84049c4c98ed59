//! What a sandbox run costs, per backend: the overhead of one run over
//! starting the same Python bare on the host, and the wall time of all 164
//! HumanEval problems as function jobs.
//!
//! `cargo bench --bench sandbox` (release build). The docker backend needs
//! the engine and image (`scripts/ensure-docker`); `KILN_BENCH_BACKENDS`
//! (`process,docker` by default) picks the backends, `KILN_BENCH_RUNS`
//! (default 40) the runs per overhead figure. Overheads are measured with
//! runs prepared ahead (how a worker runs), one at a time and back to back,
//! and with nothing prepared.

#[path = "../tests/support/sandbox.rs"]
mod sandbox_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use sandbox_support::{Backend, HUMANEVAL_PARALLEL, TestSandbox, humaneval, humaneval_limits};

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40);
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
