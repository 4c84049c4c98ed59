//! The vocabulary every layer speaks: the values that cross from the HTTP
//! API through the pipeline to Postgres and back, defined once here so no
//! layer borrows them from another (the store from the model client, the
//! client from the store). This module depends on no other module of the
//! crate (tests/module_graph.rs keeps the graph acyclic).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a token allows. The order is the nesting: a scope allows every
/// scope before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every `GET` of `/v1`.
    Read,
    /// `read`, plus creating, changing, retrying and cancelling.
    Submit,
    /// Everything, including review decisions.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Submit, Scope::Admin];

    /// True when a token of this scope may do what needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?}, expected read, submit or admin")),
        }
    }
}

/// Tokens the provider billed for one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// A name outside a closed vocabulary: read from storage or a request, it
/// is refused, never mapped to a default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// A closed set of names stored as text and sent on the wire: the enum,
/// [`ALL`](JobState::ALL) in order, `as_str` and its inverse (which refuses
/// unknown names), Display, and serde with the same names. Every match is
/// generated without a wildcard, so a new variant must be given its name.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every name, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name stored in Postgres and sent over the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<$name, UnknownName> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err(UnknownName { what: $what, name: other.to_owned() }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// Where a job is (`jobs.state`).
    pub enum JobState ("job state") {
        /// Waiting for a worker (new, retried, or handed back).
        Queued = "queued",
        /// A worker holds its lease.
        Running = "running",
        /// An attempt of a batch with `options.review` passed: its files
        /// wait for a person's decision (approve → `succeeded`, reject →
        /// `failed`). No worker holds it and none will run it again.
        AwaitingReview = "awaiting_review",
        /// An attempt passed (and was approved, in a review batch); its
        /// files are the result.
        Succeeded = "succeeded",
        /// Stopped with an [`ErrorCode`].
        Failed = "failed",
        /// Cancelled by request.
        Cancelled = "cancelled",
    }
}

vocabulary! {
    /// Where an attempt is (`attempts.state`).
    pub enum AttemptState ("attempt state") {
        /// Not ended: a worker is (or was, before it died) working on it.
        Running = "running",
        /// The code passed: the job succeeds with this attempt's files.
        Passed = "passed",
        /// The model's output failed parsing, validation or tests; spends the attempt.
        Failed = "failed",
        /// Ended by something other than the model (provider or sandbox
        /// unavailable, crashes, budget); its [`ErrorCode`] says what.
        Error = "error",
    }
}

vocabulary! {
    /// The last step of an attempt that was persisted (`attempts.phase`);
    /// ordered, so a resumed attempt continues after it.
    #[derive(PartialOrd, Ord)]
    pub enum Phase ("attempt phase") {
        /// The prompt is stored; the model has not answered (or its answer was lost).
        Prompted = "prompted",
        /// The model's raw answer and its token usage are stored.
        Generated = "generated",
        /// The parsed files and the static checks' report are stored.
        Validated = "validated",
        /// The sandbox's test report is stored.
        Tested = "tested",
    }
}

vocabulary! {
    /// Which limit a fault counts against (`attempts.faults[].kind`).
    pub enum FaultKind ("fault kind") {
        /// The model provider: `KILN_LLM_MAX_RETRIES`.
        Llm = "llm",
        /// The sandbox: `KILN_SANDBOX_MAX_RETRIES`.
        Sandbox = "sandbox",
    }
}

vocabulary! {
    /// Why a job failed (`jobs.error_code`, `attempts.error_code`).
    pub enum ErrorCode ("job error code") {
        /// The attempt budget ran out; the last attempt failed its tests.
        TestsFailed = "tests_failed",
        /// The attempt budget ran out; the last attempt failed static checks.
        ValidationFailed = "validation_failed",
        /// The attempt budget ran out; the last answer could not be read as files.
        InvalidResponse = "invalid_response",
        /// The attempt budget ran out; the last attempt left no report to name.
        AttemptsExhausted = "attempts_exhausted",
        /// Provider faults outlasted `KILN_LLM_MAX_RETRIES`.
        LlmUnavailable = "llm_unavailable",
        /// The provider account is out of credit: fails at once.
        LlmQuota = "llm_quota",
        /// The provider refused the key.
        LlmAuth = "llm_auth",
        /// The provider refused the request itself.
        LlmRejected = "llm_rejected",
        /// The provider refuses a parameter a setting chose.
        LlmConfig = "llm_config",
        /// The batch's token budget is spent.
        BudgetExhausted = "budget_exhausted",
        /// Sandbox faults outlasted `KILN_SANDBOX_MAX_RETRIES`.
        SandboxUnavailable = "sandbox_unavailable",
        /// Workers died too often while running the job.
        CrashLoop = "crash_loop",
        /// Neither the batch nor the worker names a model.
        NoModel = "no_model",
        /// Cancelled by request.
        Cancelled = "cancelled",
        /// A person rejected the passing result in review; the message is
        /// their comment.
        RejectedInReview = "rejected_in_review",
        /// Kiln itself failed (the static checks could not run).
        Internal = "internal",
    }
}

vocabulary! {
    /// Why a worker lost a job to another (`jobs.lost_cause`,
    /// `takeovers.cause`).
    pub enum TakeoverCause ("takeover cause") {
        /// The reconciler found the worker's liveness lock gone.
        WorkerDied = "worker_died",
        /// The lease ran out, neither renewed nor released.
        LeaseExpired = "lease_expired",
        /// The job panicked in its worker, which handed it back.
        Panic = "panic",
    }
}

vocabulary! {
    /// A person's decision on a job awaiting review (`reviews.decision`).
    pub enum ReviewDecision ("review decision") {
        /// The result is accepted: the job succeeds with it.
        Approve = "approve",
        /// The result is refused: the job fails with
        /// [`ErrorCode::RejectedInReview`] (and may be retried).
        Reject = "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy
            + PartialEq
            + fmt::Debug
            + fmt::Display
            + FromStr<Err = UnknownName>
            + Serialize
            + for<'de> Deserialize<'de>,
    {
        let mut names = std::collections::BTreeSet::new();
        for &v in all {
            let name = v.to_string();
            assert!(names.insert(name.clone()), "{name} is used twice");
            assert_eq!(name.parse::<T>(), Ok(v));
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::String(name.clone())
            );
            assert_eq!(serde_json::from_value::<T>(serde_json::Value::String(name)).unwrap(), v);
        }
    }

    #[test]
    fn every_name_round_trips_through_text_and_json_and_no_two_share_a_name() {
        round_trips(JobState::ALL);
        round_trips(AttemptState::ALL);
        round_trips(Phase::ALL);
        round_trips(FaultKind::ALL);
        round_trips(ErrorCode::ALL);
        round_trips(ReviewDecision::ALL);
        round_trips(TakeoverCause::ALL);
    }

    #[test]
    fn an_unknown_name_is_refused_not_defaulted() {
        // Phase used to read anything unknown as `prompted`.
        assert_eq!(
            "tested-twice".parse::<Phase>(),
            Err(UnknownName {
                what: "attempt phase",
                name: "tested-twice".into()
            })
        );
        assert!(serde_json::from_str::<ErrorCode>("\"oops\"").is_err());
        assert!("".parse::<AttemptState>().is_err());
    }

    #[test]
    fn phases_are_ordered_as_an_attempt_goes() {
        assert!(Phase::ALL.windows(2).all(|w| w[0] < w[1]));
    }
}
