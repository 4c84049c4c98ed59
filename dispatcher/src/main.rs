//! `kiln-dispatcher`: the HTTP API and the feeder, and the commands that
//! make and revoke API tokens. All logic lives in the `kiln` library; this
//! reads configuration and arguments, starts telemetry and runs.

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln::auth::{CACHE_TTL, Scope};
use kiln::config::Settings;
use kiln::dispatcher::Dispatcher;
use kiln::store::Store;
use kiln::store::tokens::TokenRecord;

/// Kiln's HTTP API (with the web dashboard at /) and feeder. Without a
/// command, it serves.
///
/// Configured by environment (KILN_DATABASE_URL, KILN_REDIS_URL, KILN_QUEUE,
/// KILN_HTTP_ADDR, KILN_AUTH, ...; see .env.example and the README) and an
/// optional TOML file named by KILN_CONFIG.
#[derive(Parser)]
#[command(name = "kiln-dispatcher", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Make, revoke and list API tokens in KILN_DATABASE_URL, then exit.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it, this once; only its sha256 is stored.
    Create {
        /// read (every GET), submit (read, and create, change, retry and
        /// cancel batches and jobs) or admin (everything).
        #[arg(long)]
        scope: Scope,
        /// Who or what the token is for; shown on the batches it creates.
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a token by its id; running dispatchers refuse it within seconds.
    Revoke { id: uuid::Uuid },
    /// List every token (never the tokens themselves).
    List,
}

fn describe(t: &TokenRecord) -> String {
    format!(
        "{} {:<6} {} created {}{}",
        t.id,
        t.scope,
        t.name.as_deref().map_or_else(|| "-".to_owned(), |n| format!("{n:?}")),
        t.created_at.to_rfc3339(),
        t.revoked_at
            .map(|at| format!(" revoked {}", at.to_rfc3339()))
            .unwrap_or_default(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `--help` and `--version` answer here, before anything connects.
    let cli = Cli::parse();
    let settings = Settings::from_env().context("loading configuration")?;
    let Some(Command::Token(command)) = cli.command else {
        kiln::telemetry::init(&settings.log_filter, settings.log_format);
        let app = Dispatcher::build(&settings).await.context("starting the dispatcher")?;
        tracing::info!(addr = %settings.http_addr, port = app.port(), queue = %settings.queue, "dispatcher listening");
        app.run_until_stopped(kiln::signals::shutdown_token()).await?;
        return Ok(());
    };
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("connecting to KILN_DATABASE_URL")?;
    match command {
        TokenCommand::Create { scope, name } => {
            let issued = kiln::auth::issue(&store, scope, name.as_deref()).await?;
            println!("id: {}", issued.record.id);
            println!("scope: {}", issued.record.scope);
            if let Some(name) = &issued.record.name {
                println!("name: {name}");
            }
            println!("token: {}", issued.token);
            eprintln!("keep the token now: it is not shown again, only its hash is stored");
        }
        TokenCommand::Revoke { id } => {
            let revoked = store
                .revoke_token(id)
                .await
                .with_context(|| format!("revoking token {id}"))?;
            println!("{}", describe(&revoked));
            eprintln!("running dispatchers refuse it within {} s", CACHE_TTL.as_secs());
        }
        TokenCommand::List => {
            for t in store.tokens().await? {
                println!("{}", describe(&t));
            }
        }
    }
    Ok(())
}
