//! HumanEval (OpenAI, MIT licence): 164 problems with canonical solutions
//! and pytest-style checks, committed as `tests/data/HumanEval.jsonl.gz` so
//! the suite runs from a clean clone. `KILN_HUMANEVAL` may name another
//! copy (plain JSON lines, or gzipped when the name ends in `.gz`).

use std::io::Read;

/// One HumanEval problem.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HumanEval {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

/// All 164 problems, in file order.
pub fn humaneval() -> Vec<HumanEval> {
    let path = std::env::var("KILN_HUMANEVAL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/HumanEval.jsonl.gz").into());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut text = String::new();
    if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("decompressing {path}: {e}"));
    } else {
        text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}
