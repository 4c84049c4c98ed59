//! API tokens: only their hashes, scopes and lifetimes (see [`crate::auth`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::Scope;

/// A row of `api_tokens`, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: Option<String>,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The CHECK constraint of `api_tokens.scope` keeps other values out.
fn scope(raw: &str) -> Scope {
    raw.parse().expect("api_tokens.scope holds a known scope")
}

impl Store {
    /// Stores a new token's hash.
    pub async fn create_token(
        &self,
        id: Uuid,
        name: Option<&str>,
        scope_: Scope,
        token_sha256: &str,
    ) -> Result<TokenRecord, StoreError> {
        let row = sqlx::query!(
            r#"INSERT INTO api_tokens (id, name, scope, token_sha256) VALUES ($1, $2, $3, $4)
               RETURNING created_at"#,
            id,
            name,
            scope_.as_str(),
            token_sha256,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(TokenRecord {
            id,
            name: name.map(str::to_owned),
            scope: scope_,
            created_at: row.created_at,
            revoked_at: None,
        })
    }

    /// Revokes a token; revoking it again keeps the first revocation time.
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord, StoreError> {
        let row = sqlx::query!(
            r#"UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
               RETURNING name, scope, created_at, revoked_at"#,
            id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("token"))?;
        Ok(TokenRecord {
            id,
            name: row.name,
            scope: scope(&row.scope),
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        })
    }

    /// The unrevoked token with this hash.
    pub async fn active_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT id, name, scope, created_at FROM api_tokens
               WHERE token_sha256 = $1 AND revoked_at IS NULL"#,
            token_sha256
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TokenRecord {
            id: r.id,
            name: r.name,
            scope: scope(&r.scope),
            created_at: r.created_at,
            revoked_at: None,
        }))
    }

    /// Every token, oldest first, revoked ones included.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query!("SELECT id, name, scope, created_at, revoked_at FROM api_tokens ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| TokenRecord {
                id: r.id,
                name: r.name,
                scope: scope(&r.scope),
                created_at: r.created_at,
                revoked_at: r.revoked_at,
            })
            .collect())
    }
}
