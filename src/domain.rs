//! The vocabulary every layer speaks: the values that cross from the HTTP
//! API through the pipeline to Postgres and back, defined once here so no
//! layer borrows them from another (the store from the model client, the
//! client from the store). This module depends on no other module of the
//! crate (tests/module_graph.rs keeps the graph acyclic).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// What a token allows. The order is the nesting: a scope allows every
/// scope before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every `GET` of `/v1`.
    Read,
    /// `read`, plus creating, changing, retrying and cancelling.
    Submit,
    /// Everything.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}
