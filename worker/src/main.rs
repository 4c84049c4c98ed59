//! `kiln-worker`: runs jobs from the queue. All logic lives in the `kiln`
//! library; this reads configuration, starts telemetry and runs.
//!
//! `kiln-worker check` runs the pre-flight check ([`kiln::preflight`]) and
//! exits non-zero if anything failed; a worker also runs it at start-up,
//! in the background, logging each failure as an error.

use anyhow::Context;
use kiln::config::Settings;
use kiln::worker::Worker;

const USAGE: &str = "usage: kiln-worker [check]\n\n  (no argument)  run jobs from the queue\n  check          try the model, Postgres, Redis and the sandbox with the current settings, then exit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1);
    let settings = Settings::from_env().context("loading configuration")?;
    kiln::telemetry::init(settings.log_format);
    match command.as_deref() {
        None => {}
        Some("check") => {
            let checks = kiln::preflight::run(&settings).await;
            for check in &checks {
                println!("{check}");
            }
            if checks.iter().all(|c| c.ok) {
                return Ok(());
            }
            std::process::exit(1);
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(other) => {
            eprintln!("kiln-worker: unknown command {other:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
    let worker = Worker::build(&settings).await.context("starting the worker")?;
    tokio::spawn(kiln::preflight::log_model_check(settings.clone()));
    worker.run_until_stopped(kiln::signals::shutdown_token()).await;
    Ok(())
}
