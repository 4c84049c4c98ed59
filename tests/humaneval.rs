//! All 164 HumanEval problems as function jobs on both sandbox backends:
//! each canonical solution passes, and a wrong variant of each (its entry
//! point's results perturbed) fails. A pass here means the harness runs
//! real pytest checks against the solution through its proxy faithfully; a
//! failure of a wrong variant means the verdict depends on the answers.

#[path = "support/sandbox.rs"]
mod sandbox_support;

use std::time::Instant;

use futures::StreamExt;
use kiln::report::TestReport;
use sandbox_support::{Backend, HUMANEVAL_PARALLEL, TestSandbox, exclusive, humaneval, humaneval_limits};

async fn canonical_solutions_pass_and_wrong_variants_fail(backend: Backend) {
    let _lock = exclusive().await;
    let problems = humaneval();
    assert_eq!(problems.len(), 164, "HumanEval has 164 problems");
    let limits = humaneval_limits();
    let sandbox = TestSandbox::new(backend, &limits, HUMANEVAL_PARALLEL).await;
    let started = Instant::now();
    let jobs = problems.iter().flat_map(|p| [(p, false), (p, true)]);
    let results: Vec<(String, bool, TestReport)> = futures::stream::iter(jobs)
        .map(|(problem, wrong)| {
            let sandbox = &sandbox;
            let limits = &limits;
            async move {
                let report = sandbox.function_job(&problem.job(wrong), limits).await;
                (problem.task_id.clone(), wrong, report)
            }
        })
        .buffer_unordered(HUMANEVAL_PARALLEL)
        .collect()
        .await;
    let took = started.elapsed();
    let mut wrong_verdicts = Vec::new();
    for (task, wrong, report) in &results {
        if report.all_passed() == *wrong {
            wrong_verdicts.push(format!(
                "{task} ({}): passed {}/{}, problem {:?}, cases {:?}",
                if *wrong {
                    "wrong variant passed"
                } else {
                    "canonical failed"
                },
                report.passed,
                report.total,
                report.problem,
                report
                    .cases
                    .iter()
                    .filter(|c| c.outcome != kiln::report::Outcome::Passed)
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert_eq!(results.len(), 2 * 164);
    assert!(
        wrong_verdicts.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong_verdicts.len(),
        wrong_verdicts.join("\n")
    );
    eprintln!(
        "{}: 164 canonical solutions passed and 164 wrong variants failed in {took:.1?}",
        backend.name()
    );
    let left = sandbox.shutdown_and_find_leftovers("no-marker-here").await;
    assert!(left.is_empty(), "left on the host: {left:#?}");
}

mod process {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_canonical_humaneval_solution_passes_and_every_wrong_variant_fails() {
        super::canonical_solutions_pass_and_wrong_variants_fail(super::Backend::Process).await;
    }
}

mod docker {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_canonical_humaneval_solution_passes_and_every_wrong_variant_fails() {
        super::canonical_solutions_pass_and_wrong_variants_fail(super::Backend::Docker).await;
    }
}
