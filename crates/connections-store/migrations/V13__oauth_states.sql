-- Pending OAuth authorization-code flows (POST /v1/connect/{service}). A
-- row is keyed by a keyed fingerprint of its `state` (the state itself is
-- never stored), bound to the user who asked and, through a fingerprint of
-- an HttpOnly cookie, to the browser that will come back; it expires after
-- ten minutes and is used at most once (used_at is set by the callback
-- that consumes it). The PKCE verifier is derived from the state under the
-- master key, so it is not stored either.
CREATE TABLE oauth_states (
    state_hash   bytea PRIMARY KEY,
    owner_id     text NOT NULL,
    service      text NOT NULL,
    request      jsonb NOT NULL,
    browser_hash bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX oauth_states_by_expiry ON oauth_states (expires_at);
