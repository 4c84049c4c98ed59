//! `kiln-mock-llm`: a scripted OpenAI-compatible server (see the
//! `kiln_mock_llm` library). Prints `listening on http://ADDR/v1` once ready.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

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
    // Text logs on stderr filtered by KILN_LOG (or RUST_LOG), as Kiln's
    // own binaries log; this crate does not depend on Kiln.
    let filter = std::env::var("KILN_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .compact()
        .try_init();
    let scripts = kiln_mock_llm::load_scripts(&args.scripts).context("loading scripts")?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let options = kiln_mock_llm::MockOptions {
        rate_limit_rpm: args.rate_limit_rpm,
    };
    let server = kiln_mock_llm::MockServer::start_with(listener, scripts, options).context("starting the mock")?;
    println!("listening on {}", server.base_url());
    // SIGTERM or SIGINT end the process cleanly (exit status 0, the server
    // dropped), as they end Kiln's binaries.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    drop(server);
    Ok(())
}
