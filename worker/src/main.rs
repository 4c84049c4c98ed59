//! `kiln-worker`: runs jobs from the queue. All logic lives in the `kiln`
//! library; this reads configuration, starts telemetry and runs.

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
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `--help` and `--version` answer here, before anything connects.
    Cli::parse();
    let settings = Settings::from_env().context("loading configuration")?;
    kiln::telemetry::init(settings.log_format);
    let worker = Worker::build(&settings).await.context("starting the worker")?;
    worker.run_until_stopped(kiln::signals::shutdown_token()).await;
    Ok(())
}
