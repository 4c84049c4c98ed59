//! `kiln diff JOB`: what the model changed between two attempts of a job,
//! as a unified diff of their files (by default the last two attempts of
//! the job's latest run), read from `GET /v1/jobs/{id}/artifacts?run=&attempt=`.
//!
//! Text is a patch (`--- a/path`, `+++ b/path`, hunks with three lines of
//! context), coloured only when standard output is a terminal that takes
//! colours; `--output json` gives each changed file's hunks and unified
//! text; `jsonl` a changed file per line.

use std::fmt::Write as _;
use std::time::Duration;

use console::Style;
use kiln::client::Client;
use serde_json::{Value, json};
use similar::TextDiff;
use similar::udiff::UnifiedHunkHeader;

use crate::{Output, Usage};

/// Lines of context around each change, as `diff -u` and git show.
const CONTEXT: usize = 3;

/// A pathological pair of files is diffed coarsely after this, not forever.
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// The attempts to compare do not exist (exit code 4, as a 404 is): the
/// job has no attempt, or one only, or not the one asked for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoAttempt(String);

/// The two attempts to compare: `(run, from, to)`. `attempts` are the
/// job's `(run, n)`; by default the latest run with attempts, `to` its
/// last attempt and `from` the one before `to`.
pub fn choose(
    job: &str,
    attempts: &[(i32, i32)],
    run: Option<i32>,
    from: Option<i32>,
    to: Option<i32>,
) -> anyhow::Result<(i32, i32, i32)> {
    let Some(run) = run.or_else(|| attempts.iter().map(|&(r, _)| r).max()) else {
        return Err(NoAttempt(format!("job {job} has no attempt yet: nothing to compare")).into());
    };
    let mut ns: Vec<i32> = attempts.iter().filter(|&&(r, _)| r == run).map(|&(_, n)| n).collect();
    ns.sort_unstable();
    let listed = ns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let Some(&last) = ns.last() else {
        return Err(NoAttempt(format!("job {job} has no attempt in run {run}")).into());
    };
    let to = to.unwrap_or(last);
    if !ns.contains(&to) {
        return Err(NoAttempt(format!("job {job} has no attempt {to} in run {run} (it has {listed})")).into());
    }
    let from = match from {
        Some(n) if !ns.contains(&n) => {
            return Err(NoAttempt(format!("job {job} has no attempt {n} in run {run} (it has {listed})")).into());
        }
        Some(n) => n,
        None => match ns.iter().rev().find(|&&n| n < to) {
            Some(&n) => n,
            None if ns.len() == 1 => {
                return Err(NoAttempt(format!(
                    "job {job} has one attempt in run {run}: nothing to compare it with"
                ))
                .into());
            }
            None => {
                return Err(NoAttempt(format!(
                    "job {job} has no attempt before attempt {to} in run {run} (it has {listed}); name one with --from"
                ))
                .into());
            }
        },
    };
    if from == to {
        return Err(Usage(format!("--from and --to both name attempt {to}")).into());
    }
    Ok((run, from, to))
}

/// How a file differs between the two attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        }
    }
}

/// One hunk: where it sits in each file and its lines, each with its
/// unified-diff mark (`' '`, `-` or `+`) in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// `@@ -l,s +l,s @@`.
    pub header: String,
    pub old_start: usize,
    pub old_lines: usize,
    pub new_start: usize,
    pub new_lines: usize,
    pub lines: Vec<String>,
}

/// A file that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub path: String,
    pub change: Change,
    pub hunks: Vec<Hunk>,
    /// The whole patch of this file, headers included.
    pub unified: String,
}

/// The differing files of two attempts, by path, and the paths of the
/// files that are the same in both.
#[derive(Debug, Default)]
pub struct Comparison {
    pub files: Vec<FileDiff>,
    pub unchanged: Vec<String>,
}

/// Compares two attempts' files, each a list of `(path, text)`.
pub fn compare(old: &[(String, String)], new: &[(String, String)]) -> Comparison {
    let mut paths: Vec<&str> = old.iter().chain(new).map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let find = |files: &[(String, String)], path: &str| files.iter().find(|(p, _)| p == path).map(|(_, t)| t.clone());
    let mut comparison = Comparison::default();
    for path in paths {
        let (before, after) = (find(old, path), find(new, path));
        let change = match (&before, &after) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            (Some(a), Some(b)) if a == b => {
                comparison.unchanged.push(path.to_owned());
                continue;
            }
            _ => Change::Modified,
        };
        let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
        comparison.files.push(file_diff(path, change, &before, &after));
    }
    comparison
}

fn file_diff(path: &str, change: Change, before: &str, after: &str) -> FileDiff {
    let diff = TextDiff::configure().timeout(DIFF_TIMEOUT).diff_lines(before, after);
    let old_name = if change == Change::Added {
        "/dev/null".to_owned()
    } else {
        format!("a/{path}")
    };
    let new_name = if change == Change::Removed {
        "/dev/null".to_owned()
    } else {
        format!("b/{path}")
    };
    let mut unified = diff.unified_diff();
    unified.context_radius(CONTEXT).header(&old_name, &new_name);
    let hunks = unified
        .iter_hunks()
        .map(|hunk| {
            let ops = hunk.ops();
            let (first, last) = (ops[0], ops[ops.len() - 1]);
            let (old, new) = (
                first.old_range().start..last.old_range().end,
                first.new_range().start..last.new_range().end,
            );
            Hunk {
                header: UnifiedHunkHeader::new(ops).to_string(),
                old_start: old.start + 1,
                old_lines: old.len(),
                new_start: new.start + 1,
                new_lines: new.len(),
                lines: hunk
                    .iter_changes()
                    .map(|c| format!("{}{}", c.tag(), c.value().trim_end_matches('\n')))
                    .collect(),
            }
        })
        .collect();
    FileDiff {
        path: path.to_owned(),
        change,
        hunks,
        unified: unified.to_string(),
    }
}

impl FileDiff {
    fn to_json(&self) -> Value {
        json!({
            "path": self.path,
            "change": self.change.as_str(),
            "hunks": self.hunks.iter().map(|h| json!({
                "header": h.header,
                "old_start": h.old_start,
                "old_lines": h.old_lines,
                "new_start": h.new_start,
                "new_lines": h.new_lines,
                "lines": h.lines,
            })).collect::<Vec<_>>(),
            "unified": self.unified,
        })
    }
}

/// The patch for people: colours only when `colour` (a terminal).
pub fn render_text(comparison: &Comparison, colour: bool) -> String {
    let (bold, red, green, cyan) = if colour {
        (
            Style::new().bold().force_styling(true),
            Style::new().red().force_styling(true),
            Style::new().green().force_styling(true),
            Style::new().cyan().force_styling(true),
        )
    } else {
        (Style::new(), Style::new(), Style::new(), Style::new())
    };
    let plain = Style::new();
    let mut out = String::new();
    for file in &comparison.files {
        for line in file.unified.lines() {
            let style = if line.starts_with("---") || line.starts_with("+++") {
                &bold
            } else if line.starts_with("@@") {
                &cyan
            } else if line.starts_with('-') {
                &red
            } else if line.starts_with('+') {
                &green
            } else {
                &plain
            };
            let _ = writeln!(out, "{}", style.apply_to(line));
        }
    }
    out
}

/// `kiln diff`: finds the two attempts, fetches their files and prints
/// the difference as `output` asks.
pub async fn run(
    client: &Client,
    output: Output,
    job: &str,
    run: Option<i32>,
    from: Option<i32>,
    to: Option<i32>,
) -> anyhow::Result<()> {
    let attempts: Vec<(i32, i32)> = client.attempts(job).await?.iter().map(|a| (a.run, a.n)).collect();
    let (run, from, to) = choose(job, &attempts, run, from, to)?;
    let before = client.attempt_files(job, Some(run), from).await?;
    let after = client.attempt_files(job, Some(run), to).await?;
    let comparison = compare(&before, &after);
    match output {
        Output::Text => {
            println!("job {job} run {run}: attempt {from} → attempt {to}");
            for (n, files) in [(from, &before), (to, &after)] {
                if files.is_empty() {
                    println!("attempt {n} has no files (it ended before an answer was read)");
                }
            }
            if comparison.files.is_empty() {
                println!("no difference in {} files", comparison.unchanged.len());
            }
            print!("{}", render_text(&comparison, console::colors_enabled()));
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "job_id": job,
                "run": run,
                "from": from,
                "to": to,
                "files": comparison.files.iter().map(FileDiff::to_json).collect::<Vec<_>>(),
                "unchanged": comparison.unchanged,
            }))
            .unwrap_or_default()
        ),
        Output::Jsonl => comparison.files.iter().for_each(|f| println!("{}", f.to_json())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(p, t)| ((*p).to_owned(), (*t).to_owned())).collect()
    }

    #[test]
    fn the_default_pair_is_the_last_two_attempts_of_the_latest_run() {
        let attempts = [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)];
        assert_eq!(choose("j", &attempts, None, None, None).unwrap(), (2, 2, 3));
        assert_eq!(choose("j", &attempts, Some(1), None, None).unwrap(), (1, 1, 2));
        assert_eq!(choose("j", &attempts, None, Some(1), None).unwrap(), (2, 1, 3));
        assert_eq!(choose("j", &attempts, None, None, Some(2)).unwrap(), (2, 1, 2));
    }

    #[test]
    fn a_missing_attempt_is_named_and_is_not_found() {
        let one = choose("j", &[(1, 1)], None, None, None).unwrap_err();
        assert!(one.downcast_ref::<NoAttempt>().is_some());
        assert_eq!(
            one.to_string(),
            "job j has one attempt in run 1: nothing to compare it with"
        );
        let absent = choose("j", &[(1, 1), (1, 2)], None, Some(5), None).unwrap_err();
        assert_eq!(absent.to_string(), "job j has no attempt 5 in run 1 (it has 1, 2)");
        assert!(
            choose("j", &[], None, None, None)
                .unwrap_err()
                .downcast_ref::<NoAttempt>()
                .is_some()
        );
        let same = choose("j", &[(1, 1), (1, 2)], None, Some(2), Some(2)).unwrap_err();
        assert!(same.downcast_ref::<Usage>().is_some());
    }

    #[test]
    fn changed_added_removed_and_unchanged_files_are_told_apart() {
        let old = files(&[("a.py", "x = 1\ny = 2\n"), ("gone.py", "z\n"), ("same.py", "s\n")]);
        let new = files(&[("a.py", "x = 1\ny = 3\n"), ("new.py", "n\n"), ("same.py", "s\n")]);
        let c = compare(&old, &new);
        assert_eq!(c.unchanged, vec!["same.py"]);
        let summary: Vec<(&str, Change)> = c.files.iter().map(|f| (f.path.as_str(), f.change)).collect();
        assert_eq!(
            summary,
            vec![
                ("a.py", Change::Modified),
                ("gone.py", Change::Removed),
                ("new.py", Change::Added)
            ]
        );
        let a = &c.files[0];
        assert_eq!(
            a.unified,
            "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n x = 1\n-y = 2\n+y = 3\n"
        );
        assert_eq!(a.hunks[0].lines, vec![" x = 1", "-y = 2", "+y = 3"]);
        assert_eq!((a.hunks[0].old_start, a.hunks[0].old_lines), (1, 2));
        assert!(c.files[1].unified.starts_with("--- a/gone.py\n+++ /dev/null\n"));
        assert!(c.files[2].unified.starts_with("--- /dev/null\n+++ b/new.py\n"));
    }

    #[test]
    fn colour_codes_are_written_only_when_asked() {
        let c = compare(&files(&[("a", "1\n")]), &files(&[("a", "2\n")]));
        assert!(!render_text(&c, false).contains('\u{1b}'));
        assert!(render_text(&c, true).contains("\u{1b}[31m-1"));
    }
}
