//! `kiln-worker`: runs jobs from the queue. All logic lives in the `kiln`
//! library; this reads configuration, starts telemetry and runs.

use anyhow::Context;
use kiln::config::Settings;
use kiln::worker::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("loading configuration")?;
    kiln::telemetry::init(settings.log_format);
    let worker = Worker::build(&settings).await.context("starting the worker")?;
    worker.run_until_stopped(kiln::signals::shutdown_token()).await;
    Ok(())
}
