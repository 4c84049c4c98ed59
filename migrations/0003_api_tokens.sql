-- Bearer tokens of the HTTP API (architecture: Authentication). Only a hash
-- of each token is kept: the token itself is printed once when it is made.

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    -- Who or what the token is for, as the operator named it (optional).
    name         text,
    -- admin ⊃ submit ⊃ read.
    scope        text        NOT NULL CHECK (scope IN ('read', 'submit', 'admin')),
    -- Hex sha256 of the whole token; requests are matched by this hash.
    token_sha256 text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Set once by `kiln-dispatcher token revoke`; a revoked token is refused.
    revoked_at   timestamptz
);

-- The token that created the batch (NULL: created with KILN_AUTH=off, or
-- before tokens existed).
ALTER TABLE batches ADD COLUMN created_by uuid REFERENCES api_tokens (id);
