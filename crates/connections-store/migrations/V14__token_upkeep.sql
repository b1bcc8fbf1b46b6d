-- What the background token upkeep works from. Neither table holds a
-- plaintext; both are rebuilt by nothing (they are not read models): they
-- are written in the transactions of the events that call for them.

-- One row per active OAuth connection whose credential has a refresh token:
-- when its current version should be refreshed (`due_at`: the access
-- token's expiry minus the background margin, and at most 24 hours after
-- it was sealed), and, after transient failures, not before when.
-- Replaced when a version is sealed; deleted when the connection is
-- revoked or its refresh token is refused.
CREATE TABLE refresh_schedule (
    connection_id      uuid PRIMARY KEY,
    service            text NOT NULL,
    credential_version integer NOT NULL,
    due_at             timestamptz NOT NULL,
    not_before         timestamptz NOT NULL DEFAULT '-infinity',
    failures           integer NOT NULL DEFAULT 0
);
CREATE INDEX refresh_schedule_next ON refresh_schedule (greatest(due_at, not_before));

-- Tokens to revoke at their provider (RFC 7009) after the connection was
-- revoked here: sealed under a data key of their own (wrapped under the
-- master key; AES-SIV with credential version 0, which no connection
-- version has, so they can never be resolved), deleted with that key once
-- the provider answered or the attempts ran out. Written in the revoking
-- transaction, so an acknowledged revoke is never forgotten upstream.
CREATE TABLE upstream_revocations (
    revocation_id  bigserial PRIMARY KEY,
    connection_id  uuid NOT NULL,
    owner_id       text NOT NULL,
    service        text NOT NULL,
    master_key_id  text NOT NULL,
    wrapped_key    bytea NOT NULL,
    sealed         bytea NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    not_before     timestamptz NOT NULL DEFAULT statement_timestamp(),
    enqueued_at    timestamptz NOT NULL DEFAULT statement_timestamp()
);
CREATE INDEX upstream_revocations_next ON upstream_revocations (not_before);
