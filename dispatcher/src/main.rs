//! `kiln-dispatcher`: the HTTP API and the feeder. All logic lives in the
//! `kiln` library; this reads configuration, starts telemetry and runs.

use anyhow::Context;
use kiln::config::Settings;
use kiln::http::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("loading configuration")?;
    kiln::telemetry::init(settings.log_format);
    let app = Application::build(&settings).await.context("starting the dispatcher")?;
    tracing::info!(addr = %settings.http_addr, port = app.port(), queue = %settings.queue, "dispatcher listening");
    app.run_until_stopped(kiln::signals::shutdown_token()).await?;
    Ok(())
}
