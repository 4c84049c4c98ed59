//! What stands between the pipeline and the provider: the shared rate
//! limiter and the circuit breaker, both backed by Redis so that every
//! worker process obeys one limit and one verdict.
//!
//! - Rate: requests and tokens per minute per provider and model
//!   (`KILN_LLM_RPM`, `KILN_LLM_TPM`). Requests are paced evenly across all
//!   workers. After a 429 the rate drops by 30% (shared, for ten minutes);
//!   every success wins 2% back (additive increase, multiplicative decrease).
//! - Breaker: `KILN_LLM_BREAKER_FAILURES` consecutive provider faults (5xx,
//!   529, timeouts, resets, malformed bodies; not 429s) open it for
//!   `KILN_LLM_BREAKER_COOLDOWN_S`, doubling while it keeps failing. While
//!   open, workers hand jobs back to the queue without spending anything;
//!   after the cooldown one probe request at a time tests the provider, and
//!   the first success closes it.
//!
//! - In flight: at most `KILN_LLM_MAX_IN_FLIGHT` requests at once per
//!   provider across all workers (local servers have one or few slots, and
//!   a request queued inside the server burns its timeout there). A request
//!   waits for a place before it is sent, so that wait never counts toward
//!   `KILN_LLM_TIMEOUT_S`; a place held by a worker that died lapses after
//!   the request timeout.
//!
//! Redis trouble never blocks a request: the guard fails open.

use std::time::Duration;

use tracing::{info, warn};

use super::LlmError;
use crate::config::LlmSettings;
use crate::queue::guard_state::GuardState;

/// Longest a half-open breaker waits for its probe before letting another try.
const PROBE_TTL: Duration = Duration::from_secs(30);
/// A rate cut after a 429 is remembered this long.
const RATE_MEMORY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Guard {
    shared: GuardState,
    provider: &'static str,
    rpm: u32,
    tpm: u32,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    max_in_flight: u32,
    /// How long a place in flight is held at most: the request's timeout
    /// plus a margin for reading the answer.
    hold: Duration,
}

/// A place among the provider's requests in flight; give it back with
/// [`Guard::leave`].
#[derive(Debug)]
#[must_use = "a place is held until it is given back or lapses"]
pub struct Place(Option<String>);

impl Guard {
    pub fn new(shared: GuardState, settings: &LlmSettings) -> Guard {
        Guard {
            shared,
            provider: settings.provider.as_str(),
            rpm: settings.rpm,
            tpm: settings.tpm,
            breaker_failures: settings.breaker_failures,
            breaker_cooldown: settings.breaker_cooldown,
            max_in_flight: settings.max_in_flight,
            hold: settings.request_timeout + Duration::from_secs(30),
        }
    }

    /// Waits for a place among the provider's requests in flight (at once
    /// when there is no cap). Polls: a place frees when a request ends,
    /// which no worker can be told about cheaper than this.
    pub async fn take_place(&self) -> Place {
        if self.max_in_flight == 0 {
            return Place(None);
        }
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let started = std::time::Instant::now();
        let waited = |place: Place| {
            crate::metrics::METRICS
                .llm_in_flight_wait_seconds
                .get_or_create(&crate::metrics::ProviderLabels {
                    provider: self.provider,
                })
                .observe(started.elapsed().as_secs_f64());
            place
        };
        loop {
            match self
                .shared
                .take_in_flight(self.provider, self.max_in_flight, &holder, self.hold)
                .await
            {
                Ok(true) => return waited(Place(Some(holder))),
                Ok(false) => {
                    let jitter = rand::random_range(0..100);
                    tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
                }
                Err(e) => {
                    warn!(error = %e, "in-flight cap unreadable; proceeding");
                    return waited(Place(None));
                }
            }
        }
    }

    /// Gives a place back.
    pub async fn leave(&self, place: Place) {
        if let Some(holder) = place.0
            && let Err(e) = self.shared.release_in_flight(self.provider, &holder).await
        {
            warn!(error = %e, "in-flight place not given back; it lapses by itself");
        }
    }

    /// How long the provider's breaker keeps jobs waiting (zero: closed).
    pub async fn breaker_wait(&self) -> Duration {
        let wait = self
            .shared
            .breaker_wait(self.provider, PROBE_TTL)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "breaker state unreadable; proceeding");
                Duration::ZERO
            });
        self.show_breaker(!wait.is_zero());
        wait
    }

    /// What this worker last saw of the breaker, for `/metrics`.
    fn show_breaker(&self, open: bool) {
        crate::metrics::METRICS
            .llm_breaker_open
            .get_or_create(&crate::metrics::ProviderLabels {
                provider: self.provider,
            })
            .set(i64::from(open));
    }

    /// Reserves a slot for one request of `tokens` (estimated) on `model`
    /// and returns how long to wait before sending it.
    pub async fn pace(&self, model: &str, tokens: u64) -> Duration {
        let mut wait = Duration::ZERO;
        if self.rpm > 0 {
            // A burst of 1: evenly spaced requests never trip a provider
            // whose own bucket is small.
            match self
                .shared
                .reserve(&self.limit_name(model, "rpm"), 1, f64::from(self.rpm), 1.0)
                .await
            {
                Ok(r) => wait = wait.max(r.wait),
                Err(e) => warn!(error = %e, "rate limiter unreachable; proceeding"),
            }
        }
        if self.tpm > 0 {
            let burst = (f64::from(self.tpm) / 60.0).max(tokens as f64);
            match self
                .shared
                .reserve(&self.limit_name(model, "tpm"), tokens, f64::from(self.tpm), burst)
                .await
            {
                Ok(r) => wait = wait.max(r.wait),
                Err(e) => warn!(error = %e, "rate limiter unreachable; proceeding"),
            }
        }
        if self.rpm > 0 || self.tpm > 0 {
            crate::metrics::METRICS
                .llm_rate_limit_wait_seconds
                .get_or_create(&crate::metrics::ModelLabels {
                    model: model.to_owned(),
                })
                .observe(wait.as_secs_f64());
        }
        wait
    }

    /// Feeds a request's outcome back into the limiter and the breaker.
    pub async fn record(&self, model: &str, outcome: Result<(), &LlmError>) {
        match outcome {
            Ok(()) => {
                if self.rpm > 0 || self.tpm > 0 {
                    for kind in ["rpm", "tpm"] {
                        let _ = self
                            .shared
                            .adjust_rate(&self.limit_name(model, kind), 1.0, 0.02, 0.1, RATE_MEMORY)
                            .await;
                    }
                }
                match self.shared.breaker_success(self.provider).await {
                    Ok(()) => self.show_breaker(false),
                    Err(e) => warn!(error = %e, "breaker state not updated"),
                }
            }
            Err(LlmError::RateLimited { .. }) => {
                for kind in ["rpm", "tpm"] {
                    match self
                        .shared
                        .adjust_rate(&self.limit_name(model, kind), 0.7, 0.0, 0.1, RATE_MEMORY)
                        .await
                    {
                        Ok(factor) if kind == "rpm" => {
                            info!(model, factor, "rate limited by the provider; slowing down");
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "rate factor not updated"),
                    }
                }
            }
            Err(
                LlmError::Transport(_)
                | LlmError::Timeout(_)
                | LlmError::Unavailable { .. }
                | LlmError::MalformedBody(_),
            ) => match self
                .shared
                .breaker_failure(
                    self.provider,
                    self.breaker_failures,
                    self.breaker_cooldown,
                    self.breaker_cooldown * 10,
                )
                .await
            {
                Ok(open) if !open.is_zero() => {
                    self.show_breaker(true);
                    warn!(provider = self.provider, ?open, "circuit breaker opened");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "breaker state not updated"),
            },
            // The provider answered, just not with what we wanted.
            Err(
                LlmError::Quota { .. }
                | LlmError::Auth { .. }
                | LlmError::Rejected { .. }
                | LlmError::Misconfigured { .. },
            ) => {}
        }
    }

    fn limit_name(&self, model: &str, kind: &str) -> String {
        format!("{}:{model}:{kind}", self.provider)
    }
}

/// Tokens a request may use, as providers count them for limits: the
/// prompt (about four characters a token) plus the completion cap.
pub fn estimate_tokens(messages: &[super::Message], max_tokens: u32) -> u64 {
    let chars: usize = messages.iter().map(|m| m.content.len()).sum();
    (chars as u64).div_ceil(4) + u64::from(max_tokens)
}
