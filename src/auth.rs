//! API tokens: scopes, minting, hashing and checking bearer tokens.
//!
//! A token is `kiln_` followed by 64 hex digits (256 random bits). It is
//! shown once, when `kiln-dispatcher token create` makes it; Postgres keeps
//! only its sha256 (`api_tokens.token_sha256`), so a copy of the database
//! does not hold a usable credential.
//!
//! Scopes nest: `admin` ⊃ `submit` ⊃ `read`. Which scope each `/v1` route
//! needs is declared with the route (`crate::http::v1_routes`): reads need
//! `read`; creating, changing, retrying, re-judging and cancelling batches
//! and jobs need `submit`; `admin` is for review decisions (a person's call,
//! kept apart from the tokens that submit work) and operator actions (token
//! administration over HTTP belongs there).
//!
//! # Invariants
//! - The token itself is never stored, logged or returned after creation.
//! - A token is matched by looking up its hash, never by comparing secrets
//!   byte by byte, so response times say nothing about how much of a guess
//!   was right.
//! - A revoked token is refused within [`CACHE_TTL`] by every dispatcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::AuthMode;
pub use crate::domain::Scope;
use crate::store::tokens::TokenRecord;
use crate::store::{Store, StoreError};

/// How long a checked token is trusted without asking Postgres again; also
/// the longest a revocation takes to reach a running dispatcher. Short,
/// because revoking is what an operator does when a token has leaked.
///
/// Why cache at all: the lookup is a round trip (0.25 ms measured here with
/// pgbench) and a pooled connection, while a status read, what polling
/// clients send most, is three queries; the cache saves a quarter of them.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token presented; `None` when authentication is off.
    pub token_id: Option<Uuid>,
    pub scope: Scope,
}

/// A token just made: the only time its secret exists outside the caller.
#[derive(Debug)]
pub struct IssuedToken {
    pub record: TokenRecord,
    /// `kiln_…`: print it once, then forget it.
    pub token: String,
}

/// The hex sha256 under which a token is stored and looked up.
///
/// A fast, unsalted hash is enough here (unlike for passwords): a token is
/// 256 random bits, so there is no dictionary to try and no brute force a
/// slow hash would hinder, while every request pays for the hash.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Makes a token of `scope` and stores its hash.
pub async fn issue(store: &Store, scope: Scope, name: Option<&str>) -> Result<IssuedToken, StoreError> {
    // ThreadRng is a CSPRNG seeded from the operating system.
    let token = format!("kiln_{}", hex::encode(rand::random::<[u8; 32]>()));
    let record = store.create_token(Uuid::now_v7(), name, scope, &hash(&token)).await?;
    Ok(IssuedToken { record, token })
}

/// Checks bearer tokens for the HTTP API, remembering valid ones for
/// [`CACHE_TTL`]. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    store: Store,
    /// Valid tokens by hash, with when they were last read from Postgres.
    /// Unknown tokens are not remembered, so the map holds at most the
    /// tokens that exist.
    cache: Arc<Mutex<HashMap<String, (Caller, Instant)>>>,
}

impl Authenticator {
    pub fn new(mode: AuthMode, store: Store) -> Authenticator {
        Authenticator {
            mode,
            store,
            cache: Arc::default(),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The caller a token stands for, or `None` when it is unknown or
    /// revoked.
    pub async fn check(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        let key = hash(token);
        if let Some((caller, at)) = self.cache.lock().expect("token cache").get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Some(caller.clone()));
        }
        let found = self.store.active_token(&key).await?.map(|t| Caller {
            token_id: Some(t.id),
            scope: t.scope,
        });
        let mut cache = self.cache.lock().expect("token cache");
        match &found {
            Some(caller) => {
                cache.insert(key, (caller.clone(), Instant::now()));
            }
            None => {
                cache.remove(&key);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_admin_over_submit_over_read() {
        use Scope::{Admin, Read, Submit};
        let allowed: Vec<(Scope, Scope)> = Scope::ALL
            .iter()
            .flat_map(|&have| Scope::ALL.iter().map(move |&need| (have, need)))
            .filter(|(have, need)| have.allows(*need))
            .collect();
        assert_eq!(
            allowed,
            [
                (Read, Read),
                (Submit, Read),
                (Submit, Submit),
                (Admin, Read),
                (Admin, Submit),
                (Admin, Admin)
            ]
        );
    }

    #[test]
    fn scopes_read_back_from_their_names() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert!("root".parse::<Scope>().unwrap_err().contains("read, submit or admin"));
    }

    #[test]
    fn a_token_is_stored_as_the_hex_sha256_of_its_text() {
        // sha256("kiln_abc") as printed by Python's hashlib.
        assert_eq!(
            hash("kiln_abc"),
            "dff5764700fe5bd4a4d3d595cbb3cb1fa98bcbbc5edbf508bbf5f6d4c117b823"
        );
    }
}
