-- API tokens: only a SHA-256 hash of each token is kept; the token itself is shown once.
CREATE TABLE api_tokens (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
