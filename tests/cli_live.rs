//! The `kiln` binary against a live dispatcher, worker and mock model, for
//! what people see: `kiln diff` between a repaired job's attempts (plain,
//! and coloured on a terminal), and the progress bar of `submit --wait` and
//! `status --watch` on a terminal (run under util-linux `script`, which
//! gives it one) and the plain lines off one.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, bin, mock, wait_for_batch};

/// `fixsub_N`: a first answer that subtracts (failing its tests), then one
/// that adds: a job repaired on its second attempt, by one changed line.
const FIXSUB_SCRIPT: &str = r#"
- name: fixsub
  match: "`(?P<name>fixsub_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a - b\n"
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n"
"#;

fn kiln(url: &str, args: &[&str]) -> Output {
    Command::new(bin("kiln"))
        .env("KILN_URL", url)
        .env_remove("KILN_TOKEN")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn expect(url: &str, code: i32, args: &[&str]) -> (String, String) {
    let out = kiln(url, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "kiln {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_diff_shows_the_line_a_repair_changed_and_says_when_there_is_nothing_to_compare() {
    let env = TestEnv::new().await;
    let llm = mock(&format!("{ADD_SCRIPT}{FIXSUB_SCRIPT}")).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let mut repaired = add_spec(1);
    repaired["entry_point"] = json!("fixsub_1");
    let created = d
        .client
        .submit(
            &json!({"specs": [repaired, add_spec(2)], "options": {"max_attempts": 2}}),
            None,
        )
        .await
        .unwrap();
    let batch = created["batch_id"].as_str().unwrap();
    let ended = wait_for_batch(&d.client, batch, Duration::from_secs(120)).await;
    assert_eq!(ended["counts"]["succeeded"], 2, "{ended}");
    let jobs: Vec<String> = support::job_ids(&created);
    let (fixed, first_time) = (&jobs[0], &jobs[1]);
    let url = d.url.clone();
    tokio::task::block_in_place(|| {
        // Text: a patch of the one changed line, with no colour off a terminal.
        let (text, _) = expect(&url, 0, &["diff", fixed]);
        assert!(text.contains("run 1: attempt 1 → attempt 2"), "{text}");
        assert!(text.contains("--- a/solution.py\n+++ b/solution.py\n"), "{text}");
        assert!(text.contains("\n-    return a - b\n+    return a + b\n"), "{text}");
        assert!(!text.contains("\n-def "), "only the changed line differs: {text}");
        assert!(!text.contains('\u{1b}'), "escape codes off a terminal: {text:?}");
        // On a terminal: removed lines red, added lines green.
        let (code, drawn) = on_terminal(&url, &["diff", fixed]);
        assert_eq!(code, Some(0), "{drawn:?}");
        assert!(drawn.contains("\u{1b}[31m-    return a - b"), "{drawn:?}");
        assert!(drawn.contains("\u{1b}[32m+    return a + b"), "{drawn:?}");
        // JSON: the file's hunk, and the same with the attempts named.
        let (json_text, _) = expect(&url, 0, &["diff", fixed, "--from", "1", "--to", "2", "-o", "json"]);
        let diff: Value = serde_json::from_str(&json_text).unwrap();
        assert_eq!(
            (diff["run"].as_i64(), diff["from"].as_i64(), diff["to"].as_i64()),
            (Some(1), Some(1), Some(2))
        );
        let file = &diff["files"][0];
        assert_eq!(file["path"], "solution.py", "{diff}");
        assert_eq!(file["change"], "modified", "{diff}");
        let lines = &file["hunks"][0]["lines"];
        assert!(
            lines.as_array().unwrap().contains(&json!("-    return a - b")),
            "{diff}"
        );
        assert!(
            lines.as_array().unwrap().contains(&json!("+    return a + b")),
            "{diff}"
        );
        assert!(
            file["unified"].as_str().unwrap().contains("+    return a + b\n"),
            "{diff}"
        );
        // Nothing to compare: one attempt, or an attempt that is not there,
        // is "not found" (4), with a message saying so.
        let (_, stderr) = expect(&url, 4, &["diff", first_time]);
        assert!(
            stderr.contains(&format!(
                "job {first_time} has one attempt in run 1: nothing to compare it with"
            )),
            "{stderr}"
        );
        let (_, stderr) = expect(&url, 4, &["diff", fixed, "--from", "3"]);
        assert!(stderr.contains("has no attempt 3 in run 1 (it has 1, 2)"), "{stderr}");
        expect(&url, 4, &["diff", "0190a0b0-0000-7000-8000-000000000000"]);
        expect(&url, 2, &["diff", fixed, "--from", "2", "--to", "2"]);
    });
    worker.stop().await;
    d.stop().await;
}

/// Runs `kiln ARGS` on a pseudo-terminal (`script -qec`) and returns its
/// exit code and everything it drew there.
fn on_terminal(url: &str, args: &[&str]) -> (Option<i32>, String) {
    // A terminal as wide as many are: a pty made by `script` with no
    // terminal around it has no size, and the bar would assume 80 columns.
    let command = std::iter::once("stty cols 160 rows 40;".to_owned())
        .chain(std::iter::once(bin("kiln").to_str().unwrap().to_owned()))
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("KILN_URL", url)
        .env_remove("KILN_TOKEN")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .output()
        .expect("util-linux script runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_waiting_redraws_one_bar_with_the_batchs_numbers_and_off_one_writes_plain_lines() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_LLM_PRICES", "mock-model=1/2")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("progress-{}", env.queue));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("four.json");
    std::fs::write(
        &file,
        json!({"specs": [add_spec(1), add_spec(2), add_spec(3), add_spec(4)]}).to_string(),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let url = d.url.clone();
    tokio::task::block_in_place(|| {
        let (code, drawn) = on_terminal(&url, &["submit", &file, "--wait"]);
        assert_eq!(code, Some(0), "{drawn}");
        for field in [
            "100%",
            "4/4",
            "4 succeeded, 0 failed · tokens ",
            " in / ",
            " · $0.",
            "jobs/s",
            "ETA ",
            "elapsed ",
        ] {
            assert!(drawn.contains(field), "the bar lacks {field:?}: {drawn:?}");
        }
        assert!(
            drawn.contains('\u{1b}'),
            "the bar is drawn with escape codes: {drawn:?}"
        );
        // The plain per-change lines give way to the bar; the final
        // summary is printed once, after it.
        let summaries = drawn.matches(" total, ").count();
        assert_eq!(summaries, 1, "{drawn:?}");
        assert!(drawn.contains("succeeded: 4 total, 0 queued"), "{drawn:?}");
        let id = drawn
            .split("submitted batch ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let (code, drawn) = on_terminal(&url, &["status", &id, "--watch"]);
        assert_eq!(code, Some(0), "{drawn}");
        assert!(drawn.contains("100%") && drawn.contains("jobs/s"), "{drawn:?}");

        // Off a terminal: today's plain lines, and not one escape code.
        let out = kiln(&url, &["submit", &file, "--wait"]);
        assert_eq!(out.status.code(), Some(0));
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("submitted batch "), "{stdout}");
        assert!(
            stdout
                .lines()
                .last()
                .unwrap()
                .contains("succeeded: 4 total, 0 queued, 0 running, 4 succeeded"),
            "{stdout}"
        );
        let out = kiln(&url, &["status", &id, "--watch"]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains('\u{1b}'));
    });
    std::fs::remove_dir_all(&dir).unwrap();
    worker.stop().await;
    d.stop().await;
}
