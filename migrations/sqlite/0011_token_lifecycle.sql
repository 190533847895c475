-- Tokens may expire: after expires_at (microseconds since the epoch, like every time here) a
-- token is refused as if unknown. NULL: it never expires. Revoking a token deletes its row.
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
