//! `kiln validate`, the built binary, offline: a valid file passes, and
//! each broken file (YAML or JSON; a syntax error, an unknown kind, a
//! missing field in the third spec, a value of the wrong type) is named
//! with the line and column of the fault, from a file, a directory or
//! standard input, in text and as JSON.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// A dispatcher that cannot be there: validating must not need one.
const NOWHERE: &str = "http://127.0.0.1:1";

fn kiln(args: &[&str], stdin: Option<&str>) -> Output {
    support::run_kiln(&[("KILN_URL", NOWHERE)], args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("validate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A function spec in a YAML list, indented under `specs:`.
fn yaml_spec(name: &str) -> String {
    format!(
        "  - kind: function\n    task_description: Return a + b.\n    entry_point: {name}\n    test_cases:\n      - {{input: [1, 2], expected: 3}}\n"
    )
}

/// Checks that validating `path` fails with exit code 2, and that both the
/// text (on standard error) and the JSON output name the fault at
/// `line:column`, with the field and a message containing `message`.
fn expect_problem(path: &str, line: u64, column: u64, field: Option<&str>, message: &str) {
    let out = kiln(&["validate", path], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
    let head = match field {
        Some(f) => format!("{path}:{line}:{column}: {f}: "),
        None => format!("{path}:{line}:{column}: "),
    };
    assert!(
        stderr.lines().any(|l| l.starts_with(&head) && l.contains(message)),
        "{path}: expected a line starting {head:?} with {message:?}, got:\n{stderr}"
    );
    let out = kiln(&["validate", path, "--output", "json"], None);
    assert_eq!(out.status.code(), Some(2), "{path}");
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["valid"], false, "{verdict}");
    let problems = verdict["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "one problem in {path}: {verdict}");
    let p = &problems[0];
    assert_eq!(
        (p["file"].as_str(), p["line"].as_u64(), p["column"].as_u64()),
        (Some(path), Some(line), Some(column)),
        "{p}"
    );
    assert_eq!(p["field"].as_str(), field, "{p}");
    assert!(p["message"].as_str().unwrap().contains(message), "{p}");
}

#[test]
fn the_example_spec_files_are_valid_one_by_one_and_as_a_directory() {
    for path in [
        "examples/specs/functions.yaml",
        "examples/specs/services.yaml",
        "examples/specs",
    ] {
        let out = kiln(&["validate", path], None);
        assert_eq!(out.status.code(), Some(0), "{path}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with(&format!("{path}: valid, ")),
            "{}",
            text(&out.stdout)
        );
        let out = kiln(&["validate", path, "-o", "json"], None);
        let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verdict["valid"], true, "{verdict}");
        assert_eq!(verdict["problems"], serde_json::json!([]), "{verdict}");
    }
    let out = kiln(&["validate", "examples/specs", "-o", "json"], None);
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = kiln::client::load_batch(Path::new("examples/specs")).unwrap();
    assert_eq!(verdict["specs"], listed["specs"].as_array().unwrap().len(), "{verdict}");
}

#[test]
fn each_broken_yaml_file_is_named_with_the_line_and_column_of_its_fault() {
    let dir = scratch("yaml");
    let three = |third: &str| {
        format!(
            "name: three\nspecs:\n{}{}{third}",
            yaml_spec("add_1"),
            yaml_spec("add_2")
        )
    };
    // Line 13: the third spec's first line, which lacks task_description.
    let missing = write(
        &dir,
        "missing.yaml",
        &three("  - kind: function\n    entry_point: add_3\n    test_cases:\n      - {input: [1, 2], expected: 3}\n"),
    );
    expect_problem(&missing, 13, 5, Some("specs[2].task_description"), "missing field");
    let unknown = write(&dir, "unknown.yaml", &three("  - kind: fastapi\n    service_name: x\n"));
    expect_problem(&unknown, 13, 11, Some("specs[2].kind"), "unknown kind \"fastapi\"");
    // `test_cases` given a number, on line 16 of the third spec.
    let wrong_type = write(
        &dir,
        "type.yaml",
        &three("  - kind: function\n    task_description: Return a + b.\n    entry_point: add_3\n    test_cases: 12\n"),
    );
    expect_problem(&wrong_type, 16, 17, Some("specs[2].test_cases"), "expected a sequence");
    // The option of a batch, its value on line 3.
    let option = write(
        &dir,
        "option.yaml",
        &format!(
            "options:\n  model: gpt\n  max_attempts: three\nspecs:\n{}",
            yaml_spec("add_1")
        ),
    );
    expect_problem(&option, 3, 17, Some("options.max_attempts"), "expected u32");
    // A bad indent on line 14: a syntax error, at the parser's position.
    let syntax = write(
        &dir,
        "syntax.yaml",
        &three("  - kind: function\n   task_description: x\n"),
    );
    expect_problem(&syntax, 14, 4, None, "did not find expected '-' indicator");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn each_broken_json_file_is_named_with_the_line_and_column_of_its_fault() {
    let dir = scratch("json");
    let spec = r#"{"kind": "function", "task_description": "Return a + b.", "entry_point": "add", "test_cases": [{"input": [1, 2], "expected": 3}]}"#;
    let unknown = write(
        &dir,
        "unknown.json",
        &format!("{{\n  \"specs\": [\n    {spec},\n    {spec},\n    {{\"kind\": \"fastapi\"}}\n  ]\n}}\n"),
    );
    expect_problem(&unknown, 5, 14, Some("specs[2].kind"), "unknown kind \"fastapi\"");
    let missing = write(
        &dir,
        "missing.json",
        &format!(
            "[\n{spec},\n{spec},\n{}\n]\n",
            spec.replace(r#""task_description": "Return a + b.", "#, "")
        ),
    );
    expect_problem(&missing, 4, 2, Some("specs[2].task_description"), "missing field");
    // Compact JSON, as programs write it: the column still points at it.
    let second = spec.replace("[1, 2]", "[1, 2], \"x\": 1");
    let compact = write(&dir, "compact.json", &format!("[{spec},{second}]"));
    // `[`, the first spec, `,`: the second starts at column len + 3.
    let column = spec.len() + 3 + second.find("\"x\": 1").unwrap() + "\"x\": ".len();
    expect_problem(
        &compact,
        1,
        column as u64,
        Some("specs[1].test_cases[0].x"),
        "unknown field",
    );
    let syntax = write(&dir, "syntax.json", &format!("[\n{spec},\n{spec}\n{spec}\n]\n"));
    expect_problem(&syntax, 4, 1, None, "expected `,` or `]`");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_directory_names_the_file_that_holds_each_problem() {
    let dir = scratch("dir");
    write(&dir, "a.yaml", &format!("specs:\n{}", yaml_spec("add_1")));
    let b = write(
        &dir,
        "b.yaml",
        &format!("specs:\n{}  - kind: lambda\n", yaml_spec("add_2")),
    );
    let out = kiln(&["validate", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    // The batch's third spec is b.yaml's second, on its line 7.
    assert!(
        stderr.contains(&format!("{b}:7:11: specs[2].kind: unknown kind \"lambda\"")),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn validate_dash_reads_yaml_or_json_from_standard_input() {
    let good = format!("specs:\n{}", yaml_spec("add_1"));
    let out = kiln(&["validate", "-"], Some(&good));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "<stdin>: valid, 1 spec\n");
    let out = kiln(&["validate", "-"], Some(&format!("{good}  - kind: fastapi\n")));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("<stdin>:7:11: specs[1].kind: unknown kind \"fastapi\""),
        "{}",
        text(&out.stderr)
    );
    let out = kiln(&["validate", "-", "-o", "jsonl"], Some("[{\"kind\": \"function\"}]"));
    assert_eq!(out.status.code(), Some(2));
    let problem: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(problem["field"], "specs[0].task_description", "{problem}");
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(1), Some(3)),
        "{problem}"
    );
}

#[test]
fn a_missing_file_is_a_usage_error_that_names_it() {
    let out = kiln(&["validate", "no/such/specs.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no/such/specs.yaml"),
        "{}",
        text(&out.stderr)
    );
}
