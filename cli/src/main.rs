//! `kiln`: the command-line client of the HTTP API. Requests and spec
//! files are `kiln::client`'s; this parses arguments and prints, with
//! [`validate`] (the offline spec check, [`positions`] finding lines),
//! [`diff`] (attempts' files compared) and [`progress`] (the terminal's
//! progress bar).
//!
//! Exit codes (documented in `--help` and the README), so scripts can tell
//! outcomes apart: 0 everything asked for succeeded (a batch waited for or
//! shown ended with every job succeeded), 1 jobs failed or were cancelled,
//! 2 usage (bad arguments, an unreadable spec file or one `kiln validate`
//! found problems in, a request the API refused with a 4xx other than
//! 404), 3 server or network error (the dispatcher unreachable or answering
//! 5xx), 4 not found (a 404: unknown batch, job or file; or no attempts for
//! `kiln diff` to compare), 5 jobs await review (a batch with
//! `options.review` has nothing left to run and none failed; `kiln review`
//! decides).

mod diff;
mod positions;
mod progress;
mod validate;

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use kiln::client::{BatchListQuery, Client, ClientError, load_batch, parse_batch_text};
use kiln::domain::ReviewDecision;
use kiln::views::{AttemptView, BatchReport, BatchView, CodeCount, JobSummary, WorkerList};
use serde::Serialize;
use serde_json::Value;

const EXIT_CODES: &str = "Exit codes: 0 all succeeded; 1 jobs failed or were cancelled; 2 usage \
(bad arguments or spec file, or the API refused the request with a 4xx other than 404); \
3 server or network error; 4 not found; 5 jobs await review (nothing left to run, none failed).";

/// Submit spec batches to Kiln and follow them.
///
/// The API token is read from KILN_TOKEN (make one with
/// `kiln-dispatcher token create --scope submit`); it is not taken as an
/// argument, where other users of the machine could see it.
#[derive(Parser)]
#[command(name = "kiln", version, after_help = EXIT_CODES)]
struct Cli {
    /// The dispatcher's base URL.
    #[arg(long, env = "KILN_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// `text` for people; `json`: one JSON document; `jsonl`: one JSON
    /// value per line (per job, attempt, batch or progress change).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
    Jsonl,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a JSON/YAML file, or a directory of them, as one batch
    /// (`-` reads one file from standard input).
    Submit {
        path: PathBuf,
        /// Batch name (overrides the file's).
        #[arg(long)]
        name: Option<String>,
        /// Attempts per job (overrides the file's options).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Model for every attempt (overrides the file's options).
        #[arg(long)]
        model: Option<String>,
        /// Makes resubmitting the same file return the same batch.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the batch until every job has ended.
        #[arg(long)]
        wait: bool,
    },
    /// Show a batch's status; `--watch` follows it until it ends, or until
    /// only jobs awaiting review are left.
    Status {
        batch_id: String,
        #[arg(long)]
        watch: bool,
    },
    /// Show a batch's report: pass rate per attempt, tokens and cost per
    /// success, phase time percentiles, failures by code and by rule.
    Report { batch_id: String },
    /// List a batch's jobs, optionally of one state.
    Jobs {
        batch_id: String,
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one job.
    Job { job_id: String },
    /// Show every attempt of a job: why each failed, or that it passed.
    Attempts {
        job_id: String,
        /// The same as `--output json`.
        #[arg(long)]
        json: bool,
    },
    /// List batches, newest first.
    Batches {
        /// queued, running, awaiting_review, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only batches whose name contains this (ignoring case).
        #[arg(long)]
        name: Option<String>,
        /// Only batches created at or after this RFC 3339 time.
        #[arg(long)]
        created_after: Option<String>,
        /// Only batches created before this RFC 3339 time.
        #[arg(long)]
        created_before: Option<String>,
        /// At most this many batches.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List the live worker processes and the jobs in their hands.
    Workers,
    /// Retry a batch's failed jobs (or `--job ID` for one job).
    Retry {
        batch_id: Option<String>,
        #[arg(long)]
        job: Option<String>,
        /// States to retry (default: failed).
        #[arg(long, value_delimiter = ',', default_value = "failed")]
        states: Vec<String>,
    },
    /// Judge a batch's stored answers again with today's validation and
    /// sandbox, without asking the model (or `--job ID` for one job).
    Rejudge {
        batch_id: Option<String>,
        #[arg(long)]
        job: Option<String>,
        /// States to re-judge (default: succeeded,failed).
        #[arg(long, value_delimiter = ',', default_value = "succeeded,failed")]
        states: Vec<String>,
    },
    /// Cancel a batch (or `--job ID` for one job).
    Cancel {
        batch_id: Option<String>,
        #[arg(long)]
        job: Option<String>,
    },
    /// Show what changed between two attempts of a job as a unified diff
    /// of their files: by default the last two attempts of its latest run.
    Diff {
        job_id: String,
        /// The earlier attempt (default: the one before `--to`).
        #[arg(long)]
        from: Option<i32>,
        /// The later attempt (default: the run's last).
        #[arg(long)]
        to: Option<i32>,
        /// The run (default: the latest with attempts).
        #[arg(long)]
        run: Option<i32>,
    },
    /// Download a job's result files into a directory.
    Download { job_id: String, dir: PathBuf },
    /// Check a spec file, a directory of them, or `-` (standard input)
    /// as `kiln submit` and the dispatcher would, without sending it:
    /// each problem as `file:line:column: field: message`. Offline.
    Validate { path: PathBuf },
    /// Print the JSON Schema of spec files (one spec, a list, or a batch),
    /// for editors and CI checks. Offline.
    Schema,
    /// Print a completion script for a shell, e.g.
    /// `kiln completions bash > /etc/bash_completion.d/kiln`. Offline.
    Completions { shell: clap_complete::Shell },
    /// Decide on a job awaiting review: `--approve` (it succeeds) or
    /// `--reject` (it fails with rejected_in_review). Needs an admin token.
    #[command(group(clap::ArgGroup::new("decision").required(true).args(["approve", "reject"])))]
    Review {
        job_id: String,
        #[arg(long)]
        approve: bool,
        #[arg(long)]
        reject: bool,
        /// Why; a rejected job's error message.
        #[arg(long)]
        comment: Option<String>,
    },
}

/// An answer as JSON. Through a `Value`, whose objects keep their keys
/// sorted: `--output json|jsonl` prints what it printed when the client
/// handed out untyped JSON.
fn to_json(answer: &impl Serialize) -> Value {
    serde_json::to_value(answer).expect("an API view is JSON")
}

fn print(answer: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(&to_json(answer)).unwrap_or_default());
}

fn print_line(answer: &impl Serialize) {
    println!("{}", to_json(answer));
}

/// Prints an answer as the chosen output asks: pretty for `json`, one line
/// per element for `jsonl` (a non-array answer is one line).
fn emit(output: Output, answer: &impl Serialize) {
    match (output, to_json(answer)) {
        (Output::Jsonl, Value::Array(items)) => items.iter().for_each(print_line),
        (Output::Jsonl, v) => print_line(&v),
        (_, v) => print(&v),
    }
}

/// A time as the API writes it (RFC 3339 in UTC, `Z`).
fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn summary(batch: &BatchView) -> String {
    let c = &batch.counts;
    // Only review batches have jobs awaiting review: others keep their line.
    let awaiting = if c.awaiting_review > 0 {
        format!(", {} awaiting review", c.awaiting_review)
    } else {
        String::new()
    };
    format!(
        "batch {} {}: {} total, {} queued, {} running{awaiting}, {} succeeded, {} failed, {} cancelled; tokens {} in / {} out",
        batch.batch_id,
        batch.state,
        batch.total,
        c.queued,
        c.running,
        c.succeeded,
        c.failed,
        c.cancelled,
        batch.usage.prompt_tokens,
        batch.usage.completion_tokens,
    )
}

/// One line (plus details) saying how an attempt ended and why. The
/// reports are read as JSON: they are stored as the worker that made the
/// attempt wrote them, maybe an older version with other fields, and this
/// shows what is there rather than refusing an attempt it cannot type.
fn describe_attempt(a: &AttemptView) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut out = format!(
        "run {} attempt {} {} (model {}, {} + {} tokens)",
        a.run, a.n, a.state, a.model, a.usage.prompt_tokens, a.usage.completion_tokens,
    );
    if let Some(error) = &a.error {
        let _ = write!(out, "\n    error {}: {}", error.code, error.message);
    }
    let validation = a.validation.as_ref().unwrap_or(&Value::Null);
    for d in validation["diagnostics"].as_array().into_iter().flatten().take(5) {
        let _ = write!(
            out,
            "\n    {}:{}:{} [{}] {}",
            text(&d["file"]),
            d["line"],
            d["col"],
            text(&d["rule"]),
            text(&d["message"])
        );
    }
    if let Some(tests) = a.tests.as_ref().filter(|t| t.is_object()) {
        let _ = write!(out, "\n    tests: {} of {} passed", tests["passed"], tests["total"]);
        if tests["problem"].is_string() {
            let _ = write!(out, "; {}", text(&tests["problem"]));
        }
        for c in tests["cases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["outcome"] != "passed")
            .take(5)
        {
            let message = text(&c["message"]);
            let first = message.lines().next().unwrap_or("");
            let _ = write!(out, "\n    {} {}: {first}", text(&c["outcome"]), text(&c["name"]));
        }
    }
    out
}

/// Prints progress until the batch has no queued or running job: a line
/// per change (`text`), a batch per change (`jsonl`), or nothing until the
/// end (`json`, which prints the final batch). A batch whose only unended
/// jobs await review is settled too: nothing more happens without a person.
/// On a terminal, text is one redrawn progress bar instead (`progress`).
async fn watch(client: &Client, batch_id: &str, output: Output) -> anyhow::Result<BatchView> {
    let mut last = String::new();
    let mut bar = if output == Output::Text {
        progress::Bar::on_terminal()
    } else {
        None
    };
    loop {
        let batch = client.batch(batch_id).await?;
        let line = summary(&batch);
        if let Some(bar) = bar.as_mut() {
            bar.update(&snapshot(&batch));
        } else if line != last {
            match output {
                Output::Text => println!("{line}"),
                Output::Jsonl => print_line(&batch),
                Output::Json => {}
            }
        }
        if batch.finished_at.is_some() || batch.state == "awaiting_review" {
            match (output, bar) {
                (Output::Json, _) => print(&batch),
                (_, Some(bar)) => bar.finish(&line),
                _ => {}
            }
            return Ok(batch);
        }
        last = line;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The numbers of a batch the progress bar shows.
fn snapshot(batch: &BatchView) -> progress::Snapshot {
    // Counts are never negative; a negative one would be a server bug, shown as 0.
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let c = &batch.counts;
    progress::Snapshot {
        total: n(batch.total),
        queued: n(c.queued),
        running: n(c.running),
        awaiting_review: n(c.awaiting_review),
        succeeded: n(c.succeeded),
        failed: n(c.failed),
        cancelled: n(c.cancelled),
        prompt_tokens: n(batch.usage.prompt_tokens),
        completion_tokens: n(batch.usage.completion_tokens),
        cost_usd: batch.usage.cost_usd,
    }
}

/// A batch that ended with a failed or cancelled job is exit code 1; one
/// whose only unended jobs await review is 5, or 1 if some job failed or
/// was cancelled already.
fn outcome(batch: &BatchView) -> anyhow::Result<()> {
    let id = batch.batch_id;
    let c = &batch.counts;
    match batch.state.as_str() {
        state @ ("failed" | "cancelled") => Err(JobsFailed(format!("batch {id} ended {state}")).into()),
        "awaiting_review" if c.failed + c.cancelled > 0 => Err(JobsFailed(format!(
            "batch {id}: {} failed, {} cancelled, {} awaiting review",
            c.failed, c.cancelled, c.awaiting_review
        ))
        .into()),
        "awaiting_review" => Err(AwaitingReview(format!(
            "batch {id}: {} jobs await review (list them with `kiln jobs {id} --state awaiting_review`, \
             decide with `kiln review JOB_ID --approve|--reject`)",
            c.awaiting_review
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Jobs failed or were cancelled (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct JobsFailed(String);

/// Nothing is left to run but jobs await a person's review (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct AwaitingReview(String);

/// A mistake in the command line or its input (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// The exit code of an error, by its kind (see the module docs).
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<JobsFailed>().is_some() {
        return 1;
    }
    if e.downcast_ref::<AwaitingReview>().is_some() {
        return 5;
    }
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    if e.downcast_ref::<diff::NoAttempt>().is_some() {
        return 4;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api { status: 404, .. }) => 4,
        Some(ClientError::Api { status, .. }) if *status >= 500 => 3,
        Some(ClientError::Api { .. } | ClientError::BadToken | ClientError::SpecFile { .. } | ClientError::Io(_)) => 2,
        Some(ClientError::Unreachable { .. }) | None => 3,
    }
}

fn main() -> ExitCode {
    // Usage errors of clap exit 2 and `--help`/`--version` 0, by clap.
    let cli = Cli::parse();
    // Commands that need no dispatcher answer here, without a runtime.
    match cli.command {
        Command::Schema => {
            print(&kiln::http::openapi::spec_file_schema());
            return ExitCode::SUCCESS;
        }
        Command::Validate { path } => return finish(validate::run(&path, cli.output)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "kiln",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    finish(runtime.block_on(run(cli)))
}

/// Exit code 0, or the error printed once and its exit code.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The batch to submit: the file (`-`: standard input) with the command
/// line's name and options over it. It stays JSON as the file wrote it:
/// the dispatcher validates it and names the field at fault.
fn read_batch(
    path: &std::path::Path,
    name: Option<String>,
    max_attempts: Option<u32>,
    model: Option<String>,
) -> anyhow::Result<Value> {
    let mut batch = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Usage(format!("reading specs from standard input: {e}")))?;
        parse_batch_text(&text, "standard input")?
    } else {
        load_batch(path)?
    };
    if let Some(n) = name {
        batch["name"] = n.into();
    }
    if max_attempts.is_some() || model.is_some() {
        if !batch["options"].is_object() {
            batch["options"] = serde_json::json!({});
        }
        if let Some(m) = max_attempts {
            batch["options"]["max_attempts"] = m.into();
        }
        if let Some(m) = model {
            batch["options"]["model"] = m.into();
        }
    }
    Ok(batch)
}

/// `kiln submit`: sends the batch, then with `wait` follows it to its end.
async fn submit(
    client: &Client,
    output: Output,
    batch: &Value,
    idempotency_key: Option<&str>,
    wait: bool,
) -> anyhow::Result<()> {
    let created = client.submit(batch, idempotency_key).await?;
    let id = created.batch_id.to_string();
    match output {
        Output::Text => println!("submitted batch {id} with {} jobs", created.job_ids.len()),
        // With --wait, json prints the final batch instead.
        Output::Json if wait => {}
        Output::Json => print(&created),
        Output::Jsonl => print_line(&created),
    }
    if wait {
        outcome(&watch(client, &id, output).await?)?;
    }
    Ok(())
}

/// `kiln status`: the batch now or, with `follow`, until it ends; exit code
/// 1 if it ended with failed or cancelled jobs.
async fn status(client: &Client, output: Output, batch_id: &str, follow: bool) -> anyhow::Result<()> {
    let batch = if follow {
        watch(client, batch_id, output).await?
    } else {
        let batch = client.batch(batch_id).await?;
        match output {
            Output::Text => println!("{}", summary(&batch)),
            _ => emit(output, &batch),
        }
        batch
    };
    outcome(&batch)
}

/// `part / whole` as a percentage with one decimal.
fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// A number with at most one decimal.
fn decimal(x: f64) -> String {
    format!("{x:.1}")
}

/// `, $cost` when there is one.
fn cost(usd: Option<f64>) -> String {
    usd.map(|c| format!(", ${c:.4}")).unwrap_or_default()
}

/// `code n, code n` of a list of `{code, count}`, or `none`.
fn code_counts(list: &[CodeCount]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    let items: Vec<String> = list.iter().map(|c| format!("{} {}", c.code, c.count)).collect();
    items.join(", ")
}

/// `kiln report` for people: a few tables.
fn report_text(r: &BatchReport) -> String {
    let c = &r.counts;
    let mut out = format!(
        "batch {}: {} jobs, {} succeeded, {} failed, {} cancelled, {} queued, {} running\n",
        r.batch_id, r.total, c.succeeded, c.failed, c.cancelled, c.queued, c.running,
    );
    out.push_str("\nattempt   jobs  passed  failed  errored  pass rate  cumulative\n");
    for a in &r.attempts {
        let _ = writeln!(
            out,
            "{:>7}  {:>5}  {:>6}  {:>6}  {:>7}  {:>9}  {:>10}",
            a.n,
            a.jobs,
            a.passed,
            a.failed,
            a.errored,
            percent(a.pass_rate),
            percent(a.cumulative_pass_rate),
        );
    }
    let u = &r.usage;
    let _ = writeln!(
        out,
        "\ntokens: {} in / {} out{}",
        u.prompt_tokens,
        u.completion_tokens,
        cost(u.cost_usd)
    );
    if let Some(s) = &r.per_success {
        let _ = writeln!(
            out,
            "per success: {} in / {} out{}",
            decimal(s.prompt_tokens),
            decimal(s.completion_tokens),
            cost(s.cost_usd)
        );
    }
    out.push_str("\nphase       count    p50 ms    p90 ms    p99 ms    max ms\n");
    for p in &r.phases {
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            p.phase,
            p.count,
            decimal(p.p50_ms),
            decimal(p.p90_ms),
            decimal(p.p99_ms),
            decimal(p.max_ms),
        );
    }
    let _ = writeln!(out, "\nfailed jobs: {}", code_counts(&r.failures));
    let ended: Vec<String> = r
        .attempt_failures
        .iter()
        .map(|a| {
            let code = a.code.map(|c| format!(" {c}")).unwrap_or_default();
            format!("{} at {}{code} {}", a.state, a.phase, a.count)
        })
        .collect();
    let _ = writeln!(
        out,
        "attempts not passed: {}",
        if ended.is_empty() {
            "none".to_owned()
        } else {
            ended.join(", ")
        }
    );
    if !r.rules.is_empty() {
        out.push_str("\nrule                              diagnostics  attempts  jobs\n");
        for rule in &r.rules {
            let _ = writeln!(
                out,
                "{:<32} {:>12} {:>9} {:>5}",
                rule.rule, rule.diagnostics, rule.attempts, rule.jobs,
            );
        }
    }
    out
}

/// `kiln jobs`: the list as JSON, or a line per job.
fn print_jobs(output: Output, jobs: &[JobSummary]) {
    if output != Output::Text {
        return emit(output, &jobs);
    }
    for job in jobs {
        let error = job.error.as_ref().map(|e| format!(" {}", e.code)).unwrap_or_default();
        println!(
            "{} {:<9} {:<8} run {} attempts {} {}{error}",
            job.job_id, job.state, job.kind, job.run, job.attempts, job.label,
        );
    }
}

/// `kiln batches`: the list as JSON, or a line per batch.
fn print_batches(output: Output, batches: &[BatchView]) {
    if output != Output::Text {
        return emit(output, &batches);
    }
    for b in batches {
        println!(
            "{} {:<9} {}/{} succeeded {} {}",
            b.batch_id,
            b.state,
            b.counts.succeeded,
            b.total,
            timestamp(&b.created_at),
            b.name.as_deref().unwrap_or("-"),
        );
    }
}

/// `kiln workers`: the workers as JSON, or a line per worker.
fn print_workers(output: Output, list: &WorkerList) {
    if output != Output::Text {
        return emit(output, &list.workers);
    }
    for w in &list.workers {
        let slots = w.concurrency.map_or_else(|| "?".to_owned(), |c| c.to_string());
        println!(
            "{} {}/{slots} busy, started {}{}",
            w.worker_id,
            w.slots_busy,
            timestamp(&w.started_at),
            if w.lock_missing_since.is_some() {
                " (not answering)"
            } else {
                ""
            },
        );
    }
}

/// `kiln review`: approves (or else rejects) a job awaiting review and
/// prints the job as it now is.
async fn review(
    client: &Client,
    output: Output,
    job_id: &str,
    approve: bool,
    comment: Option<&str>,
) -> anyhow::Result<()> {
    let decision = if approve {
        ReviewDecision::Approve
    } else {
        ReviewDecision::Reject
    };
    let job = client.review(job_id, decision, comment).await?;
    match output {
        Output::Text => println!(
            "job {job_id} {}: {}{}",
            if approve { "approved" } else { "rejected" },
            job.state,
            job.error.map(|e| format!(" ({})", e.code)).unwrap_or_default()
        ),
        Output::Jsonl => print_line(&job),
        Output::Json => print(&job),
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    let client = match std::env::var("KILN_TOKEN") {
        Ok(token) if !token.trim().is_empty() => Client::with_token(&cli.url, &token)?,
        _ => Client::new(&cli.url),
    };
    match cli.command {
        Command::Submit {
            path,
            name,
            max_attempts,
            model,
            idempotency_key,
            wait,
        } => {
            let batch = read_batch(&path, name, max_attempts, model)?;
            submit(&client, output, &batch, idempotency_key.as_deref(), wait).await?;
        }
        Command::Status {
            batch_id,
            watch: follow,
        } => status(&client, output, &batch_id, follow).await?,
        Command::Report { batch_id } => {
            let report = client.report(&batch_id).await?;
            match output {
                Output::Text => print!("{}", report_text(&report)),
                _ => emit(output, &report),
            }
        }
        Command::Jobs { batch_id, state } => {
            let jobs = client.all_jobs(&batch_id, state.as_deref()).await?;
            print_jobs(output, &jobs);
        }
        Command::Job { job_id } => {
            let job = client.job(&job_id).await?;
            match output {
                Output::Jsonl => print_line(&job),
                _ => print(&job),
            }
        }
        Command::Attempts { job_id, json } => print_attempts(output, json, &client.attempts(&job_id).await?),
        Command::Batches {
            state,
            name,
            created_after,
            created_before,
            limit,
        } => {
            let query = BatchListQuery {
                state,
                name,
                created_after,
                created_before,
            };
            print_batches(output, &client.batches(&query, limit).await?);
        }
        // Answered in main, before a runtime or a connection.
        Command::Schema | Command::Validate { .. } | Command::Completions { .. } => {}
        Command::Workers => {
            print_workers(output, &client.workers().await?);
        }
        Command::Retry { batch_id, job, states } => {
            let answer = match (batch_id, job) {
                (_, Some(job)) => client.retry_job(&job).await?,
                (Some(batch), None) => client.retry_batch(&batch, &states).await?,
                (None, None) => return Err(Usage("give a batch id, or --job JOB_ID".into()).into()),
            };
            emit_answer(output, &answer);
        }
        Command::Rejudge { batch_id, job, states } => {
            let answer = match (batch_id, job) {
                (_, Some(job)) => client.rejudge_job(&job).await?,
                (Some(batch), None) => client.rejudge_batch(&batch, &states).await?,
                (None, None) => return Err(Usage("give a batch id, or --job JOB_ID".into()).into()),
            };
            emit_answer(output, &answer);
        }
        Command::Cancel { batch_id, job } => {
            let answer = match (batch_id, job) {
                (_, Some(job)) => client.cancel_job(&job).await?,
                (Some(batch), None) => client.cancel_batch(&batch).await?,
                (None, None) => return Err(Usage("give a batch id, or --job JOB_ID".into()).into()),
            };
            emit_answer(output, &answer);
        }
        Command::Review {
            job_id,
            approve,
            reject: _,
            comment,
        } => review(&client, output, &job_id, approve, comment.as_deref()).await?,
        Command::Diff { job_id, from, to, run } => diff::run(&client, output, &job_id, run, from, to).await?,
        Command::Download { job_id, dir } => print_paths(output, &client.download(&job_id, &dir).await?),
    }
    Ok(())
}

/// `kiln attempts`: a paragraph per attempt, or the API's JSON.
fn print_attempts(output: Output, json: bool, attempts: &[AttemptView]) {
    match (output, json) {
        (Output::Text, false) => {
            for a in attempts {
                println!("{}", describe_attempt(a));
            }
        }
        (Output::Text, true) => print(&attempts),
        (output, _) => emit(output, &attempts),
    }
}

/// `kiln download`: the paths written, a line each or as JSON.
fn print_paths(output: Output, files: &[PathBuf]) {
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    match output {
        Output::Text => paths.iter().for_each(|p| println!("{p}")),
        _ => emit(output, &paths),
    }
}

fn emit_answer(output: Output, answer: &impl Serialize) {
    match output {
        Output::Jsonl => print_line(answer),
        _ => print(answer),
    }
}
