//! Logging set-up shared by the binaries, and error formatting for logs.
//!
//! Spans carry `batch_id`, `job_id`, `run` and `attempt` in a worker and
//! `request_id` in the dispatcher (`http::access`); the filter is the
//! `KILN_LOG` setting (else `RUST_LOG`, else `info`); `KILN_LOG_FORMAT=json` switches to one
//! JSON object per line. Text logs are coloured only on a terminal, and
//! never with `NO_COLOR` set: ANSI codes in a file or a log collector are
//! noise. Nothing secret and no full prompt is logged at
//! `info`: prompts and responses live in Postgres, not in logs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber (once per process), with the filter and
/// format of [`crate::config::Settings`] (`log_filter`, `log_format`).
pub fn init(filter: &str, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
        LogFormat::Text => builder
            .compact()
            .with_ansi(colour(std::io::stderr().is_terminal()))
            .try_init(),
    };
}

/// Whether text logs are coloured: only on a terminal, and not when
/// `NO_COLOR` is set to anything (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `error: cause: cause…` on one line, for logs and stored messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
