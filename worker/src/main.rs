//! `kiln-worker`: runs jobs from the queue. All logic lives in the `kiln`
//! library; this reads configuration, starts telemetry and runs.
//!
//! `kiln-worker check` runs the pre-flight check ([`kiln::preflight`]) and
//! exits non-zero if anything failed; a worker also runs it at start-up,
//! in the background, logging each failure as an error.

use anyhow::Context;
use clap::Parser;
use kiln::config::Settings;
use kiln::worker::Worker;

/// Runs Kiln's jobs: claims them from the queue, asks the model, validates
/// and sandbox-tests its code, and records every step in Postgres.
///
/// Configured by environment (KILN_DATABASE_URL, KILN_REDIS_URL, KILN_QUEUE,
/// KILN_LLM_*, KILN_WORKER_CONCURRENCY, KILN_SANDBOX, ...; see .env.example
/// and the README) and an optional TOML file named by KILN_CONFIG. Start as
/// many as you like, on any host; SIGTERM drains it gracefully.
#[derive(Parser)]
#[command(name = "kiln-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Try the model, Postgres, Redis and the sandbox with the current
    /// settings, print what each said, and exit non-zero if any failed.
    Check,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `--help` and `--version` answer here, before anything connects.
    let cli = Cli::parse();
    let settings = Settings::from_env().context("loading configuration")?;
    kiln::telemetry::init(&settings.log_filter, settings.log_format);
    if let Some(Command::Check) = cli.command {
        let checks = kiln::preflight::run(&settings).await;
        for check in &checks {
            println!("{check}");
        }
        if checks.iter().all(|c| c.ok) {
            return Ok(());
        }
        std::process::exit(1);
    }
    let worker = Worker::build(&settings).await.context("starting the worker")?;
    tokio::spawn(kiln::preflight::log_model_check(settings.clone()));
    worker.run_until_stopped(kiln::signals::shutdown_token()).await;
    Ok(())
}
