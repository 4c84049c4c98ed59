//! `kiln`: the command-line client of the HTTP API. All logic lives in
//! `kiln::client`; this parses arguments and prints.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kiln::client::{Client, load_batch};
use serde_json::Value;

/// Submit spec batches to Kiln and follow them.
///
/// The API token is read from KILN_TOKEN (make one with
/// `kiln-dispatcher token create --scope submit`); it is not taken as an
/// argument, where other users of the machine could see it.
#[derive(Parser)]
#[command(name = "kiln", version)]
struct Cli {
    /// The dispatcher's base URL.
    #[arg(long, env = "KILN_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a JSON/YAML file, or a directory of them, as one batch.
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
    /// Show a batch's status; `--watch` follows it until it ends.
    Status {
        batch_id: String,
        #[arg(long)]
        watch: bool,
    },
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
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Retry a batch's failed jobs (or `--job ID` for one job).
    Retry {
        batch_id: Option<String>,
        #[arg(long)]
        job: Option<String>,
        /// States to retry (default: failed).
        #[arg(long, value_delimiter = ',', default_value = "failed")]
        states: Vec<String>,
    },
    /// Cancel a batch (or `--job ID` for one job).
    Cancel {
        batch_id: Option<String>,
        #[arg(long)]
        job: Option<String>,
    },
    /// Download a job's result files into a directory.
    Download { job_id: String, dir: PathBuf },
}

fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn summary(batch: &Value) -> String {
    let c = &batch["counts"];
    format!(
        "batch {} {}: {} total, {} queued, {} running, {} succeeded, {} failed, {} cancelled; tokens {} in / {} out",
        batch["batch_id"].as_str().unwrap_or("?"),
        batch["state"].as_str().unwrap_or("?"),
        batch["total"],
        c["queued"],
        c["running"],
        c["succeeded"],
        c["failed"],
        c["cancelled"],
        batch["usage"]["prompt_tokens"],
        batch["usage"]["completion_tokens"],
    )
}

/// One line (plus details) saying how an attempt ended and why.
fn describe_attempt(a: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut out = format!(
        "run {} attempt {} {} (model {}, {} + {} tokens)",
        a["run"],
        a["n"],
        text(&a["state"]),
        text(&a["model"]),
        a["usage"]["prompt_tokens"],
        a["usage"]["completion_tokens"],
    );
    if a["error"]["code"].is_string() {
        let _ = write!(
            out,
            "\n    error {}: {}",
            text(&a["error"]["code"]),
            text(&a["error"]["message"])
        );
    }
    for d in a["validation"]["diagnostics"].as_array().into_iter().flatten().take(5) {
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
    let tests = &a["tests"];
    if tests.is_object() {
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

/// Prints progress until the batch has no queued or running job.
async fn watch(client: &Client, batch_id: &str) -> anyhow::Result<Value> {
    let mut last = String::new();
    loop {
        let batch = client.batch(batch_id).await?;
        let line = summary(&batch);
        if line != last {
            println!("{line}");
            last = line;
        }
        if batch["finished_at"].is_string() {
            return Ok(batch);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
            let mut batch = load_batch(&path)?;
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
            let created = client.submit(&batch, idempotency_key.as_deref()).await?;
            let id = created["batch_id"]
                .as_str()
                .context("no batch_id in the answer")?
                .to_owned();
            println!(
                "submitted batch {id} with {} jobs",
                created["job_ids"].as_array().map_or(0, Vec::len)
            );
            if wait {
                let batch = watch(&client, &id).await?;
                if batch["state"] != "succeeded" {
                    bail!("batch {id} ended {}", batch["state"]);
                }
            }
        }
        Command::Status {
            batch_id,
            watch: follow,
        } => {
            if follow {
                watch(&client, &batch_id).await?;
            } else {
                print(&client.batch(&batch_id).await?);
            }
        }
        Command::Jobs { batch_id, state } => {
            for job in client.all_jobs(&batch_id, state.as_deref()).await? {
                let error = job["error"]["code"]
                    .as_str()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default();
                println!(
                    "{} {:<9} {:<8} run {} attempts {} {}{error}",
                    job["job_id"].as_str().unwrap_or("?"),
                    job["state"].as_str().unwrap_or("?"),
                    job["kind"].as_str().unwrap_or("?"),
                    job["run"],
                    job["attempts"],
                    job["label"].as_str().unwrap_or(""),
                );
            }
        }
        Command::Job { job_id } => print(&client.job(&job_id).await?),
        Command::Attempts { job_id, json } => {
            let attempts = client.attempts(&job_id).await?;
            if json {
                print(&attempts);
            } else {
                for a in attempts.as_array().into_iter().flatten() {
                    println!("{}", describe_attempt(a));
                }
            }
        }
        Command::Retry { batch_id, job, states } => match (batch_id, job) {
            (_, Some(job)) => print(&client.retry_job(&job).await?),
            (Some(batch), None) => print(&client.retry_batch(&batch, &states).await?),
            (None, None) => bail!("give a batch id, or --job JOB_ID"),
        },
        Command::Cancel { batch_id, job } => match (batch_id, job) {
            (_, Some(job)) => print(&client.cancel_job(&job).await?),
            (Some(batch), None) => print(&client.cancel_batch(&batch).await?),
            (None, None) => bail!("give a batch id, or --job JOB_ID"),
        },
        Command::Download { job_id, dir } => {
            let files = client.download(&job_id, &dir).await?;
            for f in files {
                println!("{}", f.display());
            }
        }
    }
    Ok(())
}
