//! Kiln turns batches of code specs into generated, validated,
//! sandbox-tested code.
//!
//! A client submits a batch of specs over HTTP; the dispatcher stores it in
//! Postgres (the system of record) and feeds a bounded window of `{job_id}`
//! messages into Redis; workers claim each job through a fenced lease and
//! run generate → validate → sandbox-test → repair-and-retry, persisting
//! every step, so any worker can resume any job after a crash.
//!
//! # Layout
//!
//! The pipeline, stage by stage:
//! - [`spec`]: what clients submit, validated with field paths.
//! - [`prompt`]: system, spec and repair prompts.
//! - [`llm`]: the model provider client and its fault classes.
//! - [`parse`]: the model's answer → files.
//! - [`validate`]: static checks with exact positions.
//! - [`sandbox`]: running untrusted code and reading an unforgeable verdict.
//! - [`pipeline`]: one job from claim to outcome, resumable at each step.
//!
//! Around it:
//! - [`domain`]: the shared vocabulary (job and attempt states, phases, error
//!   codes, token scopes and usage) every layer speaks, depending on none.
//! - [`values`]: Python values as the sandbox reports them, and how a spec's
//!   expected values (JSON) are compared with them.
//! - [`views`]: the API's wire types, which the store fills, the HTTP API
//!   serialises and the client reads back.
//! - [`store`]: Postgres: batches, jobs, leases, attempts, artifacts.
//! - [`queue`]: apalis-redis delivery (the only module naming Redis).
//! - [`feeder`]: the bounded Redis window and reconciliation.
//! - [`worker`]: the worker process (claims, heartbeats, shutdown).
//! - [`preflight`]: `kiln-worker check`: each dependency tried for real.
//! - [`dispatcher`]: the dispatcher process (the HTTP API and the feeder).
//! - [`http`]: the dispatcher's HTTP API v1.
//! - [`auth`]: API tokens and their scopes.
//! - [`client`]: an API client for the CLI and the demo.
//! - [`metrics`]: this process's Prometheus counters and histograms.
//! - [`config`], [`telemetry`], [`signals`], [`files`], [`report`], [`text`]:
//!   shared plumbing.

pub mod auth;
pub mod client;
pub mod config;
pub mod dispatcher;
pub mod domain;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod feeder;
pub mod files;
pub mod http;
pub mod llm;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod preflight;
pub mod prompt;
pub mod queue;
pub mod report;
pub mod sandbox;
pub mod signals;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod validate;
pub mod values;
pub mod views;
pub mod worker;
