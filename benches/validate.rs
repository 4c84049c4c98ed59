//! How long static validation takes on a typical generated service: the
//! notes-service demo answer plus a settings module — ten files. Prints the
//! median and spread of many runs; validation must stay far below sandbox
//! time (the budget is 20 ms per answer).
//!
//! `cargo bench --bench validate` (release profile). A plain binary rather
//! than criterion: one figure is all that is needed, without a dependency.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln::files::File;
use kiln::spec::Spec;

const RUNS: usize = 300;
const WARM_UP: usize = 20;
const BUDGET: Duration = Duration::from_millis(20);

const CONFIG: &str = r#""""Settings read from the environment, with safe defaults."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of the notes service."""

    database_url: str
    page_size: int
    title_limit: int


def load_settings() -> Settings:
    """Read the settings once from the environment."""
    return Settings(
        database_url=os.environ.get("DATABASE_URL", "sqlite://"),
        page_size=int(os.environ.get("NOTES_PAGE_SIZE", "50")),
        title_limit=int(os.environ.get("NOTES_TITLE_LIMIT", "200")),
    )
"#;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let batch = kiln::client::load_batch(&root.join("examples/specs/services.yaml")).expect("the demo specs load");
    let spec = Spec::from_value(batch["specs"][0].clone(), "specs[0]").expect("the notes spec is valid");
    let scripts = kiln_mock_llm::load_scripts(&root.join("examples/mock-llm")).expect("the demo scripts load");
    let notes = scripts
        .iter()
        .find(|s| s.name == "notes-service")
        .expect("the notes-service script exists");
    let answer = serde_json::json!({ "files": notes.responses[0].files }).to_string();
    let mut files: Vec<File> =
        kiln::parse::parse_response(&answer, kiln::parse::Expected::Service).expect("the answer parses");
    files.push(File::new("app/config.py", CONFIG));
    assert_eq!(files.len(), 10);
    let report = kiln::validate::validate(&spec, &files);
    assert!(
        report.ok,
        "the benchmarked answer must be valid: {:?}",
        report.diagnostics
    );

    for _ in 0..WARM_UP {
        std::hint::black_box(kiln::validate::validate(&spec, &files));
    }
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(kiln::validate::validate(
                std::hint::black_box(&spec),
                std::hint::black_box(&files),
            ));
            start.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let bytes: usize = files.iter().map(|f| f.content.len()).sum();
    println!(
        "validate: {} files, {bytes} bytes, {RUNS} runs: median {:.3} ms, p90 {:.3} ms, min {:.3} ms, max {:.3} ms (budget {} ms)",
        files.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        BUDGET.as_millis(),
    );
    assert!(at(0.5) < BUDGET, "median over the {} ms budget", BUDGET.as_millis());
}
