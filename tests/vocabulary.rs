//! The README's tables of states and error codes against the enums of
//! `kiln::domain`: a name in code but not in the README, or in the README
//! but not in code, fails here, so the documented vocabulary is the one
//! Kiln stores and answers with.

use std::collections::BTreeSet;

use kiln::domain::{AttemptState, ErrorCode, JobState, Phase};

/// The backquoted names of the first column of the README table whose
/// header's first cell is `header`.
fn readme_table(header: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| l.split('|').nth(1).is_none_or(|first| first.trim() != header));
    assert!(lines.next().is_some(), "README.md has no table headed `| {header} |`");
    assert!(
        lines.next().is_some_and(|l| l.starts_with("|---")),
        "the `{header}` table's header is not followed by its separator"
    );
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let first = row.split('|').nth(1).unwrap_or_default().trim();
            first
                .strip_prefix('`')
                .and_then(|f| f.strip_suffix('`'))
                .unwrap_or_else(|| panic!("the `{header}` table's row {row:?} does not start with a `name`"))
                .to_owned()
        })
        .collect()
}

fn assert_same(header: &str, in_code: &[&str]) {
    let documented = readme_table(header);
    let code: BTreeSet<&str> = in_code.iter().copied().collect();
    let readme: BTreeSet<&str> = documented.iter().map(String::as_str).collect();
    let undocumented: Vec<&&str> = code.difference(&readme).collect();
    let unknown: Vec<&&str> = readme.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "{header}s in code but not in README.md: {undocumented:?}; in README.md but not in code: {unknown:?}"
    );
    assert_eq!(
        documented.len(),
        readme.len(),
        "a {header} is listed twice: {documented:?}"
    );
}

#[test]
fn every_job_state_is_in_the_readme_table_and_nothing_else() {
    assert_same(
        "job state",
        &JobState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
}

#[test]
fn every_attempt_state_is_in_the_readme_table_and_nothing_else() {
    assert_same(
        "attempt state",
        &AttemptState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
}

#[test]
fn every_attempt_phase_is_in_the_readme_table_and_nothing_else() {
    assert_same(
        "attempt phase",
        &Phase::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
}

#[test]
fn every_job_error_code_is_in_the_readme_table_and_nothing_else() {
    assert_same(
        "job error code",
        &ErrorCode::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
}
