-- What the hygiene review needs to know about each active connection's
-- current credential, written when it is sealed (create, rotate, replace)
-- and deleted when the connection is revoked: when it was sealed, when an
-- OAuth access token expires, and keyed fingerprints of its secret values
-- (HMAC-SHA-256 under a key derived from the master key for this owner:
-- comparable only within one owner of one deployment, never the secret).
CREATE TABLE credential_hygiene (
    connection_id      uuid PRIMARY KEY,
    owner_id           text NOT NULL,
    credential_version integer NOT NULL,
    sealed_at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at         timestamptz,
    fingerprints       bytea[] NOT NULL
);
CREATE INDEX credential_hygiene_by_owner ON credential_hygiene (owner_id);

-- Readers (the review runs as connections_reader, like every read API
-- query) see only the rows of the owner named for their transaction. The
-- server's own role owns the tables and is not subject to these policies
-- (ENABLE without FORCE): commands, resolves and the audit keep full access.
ALTER TABLE credential_hygiene ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_reads ON credential_hygiene FOR SELECT TO connections_reader
    USING (owner_id = current_setting('connections.owner', true));
GRANT SELECT ON credential_hygiene TO connections_reader;

ALTER TABLE access_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_reads ON access_log FOR SELECT TO connections_reader
    USING (owner_id = current_setting('connections.owner', true));
GRANT SELECT ON access_log TO connections_reader;
