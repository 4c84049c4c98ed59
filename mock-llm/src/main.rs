//! `kiln-mock-llm`: a scripted OpenAI-compatible server (see
//! `kiln::mock_llm`). Prints `listening on http://ADDR/v1` once ready.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// An OpenAI-compatible chat-completions server answering from scripts.
#[derive(Parser)]
#[command(name = "kiln-mock-llm", version)]
struct Args {
    /// Directory of scripts (.json, .yaml, .yml).
    #[arg(long, env = "KILN_MOCK_SCRIPTS", default_value = "examples/mock-llm")]
    scripts: PathBuf,
    /// Listen address (port 0 picks a free port).
    #[arg(long, env = "KILN_MOCK_ADDR", default_value = "127.0.0.1:8090")]
    addr: std::net::SocketAddr,
    /// Answer 429 above this many requests a minute (0: no limit).
    #[arg(long, env = "KILN_MOCK_RATE_LIMIT_RPM", default_value_t = 0)]
    rate_limit_rpm: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kiln::telemetry::init(kiln::config::LogFormat::Text);
    let scripts = kiln::mock_llm::load_scripts(&args.scripts).context("loading scripts")?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let options = kiln::mock_llm::MockOptions {
        rate_limit_rpm: args.rate_limit_rpm,
    };
    let server = kiln::mock_llm::MockServer::start_with(listener, scripts, options).context("starting the mock")?;
    println!("listening on {}", server.base_url());
    kiln::signals::shutdown_token().cancelled().await;
    Ok(())
}
