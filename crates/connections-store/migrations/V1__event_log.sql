-- The append-only event log: the source of truth.
CREATE TABLE events (
    -- Unique, increasing within a transaction. The log's global order is
    -- (transaction_id, position): see ARCHITECTURE.md, "Global order".
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid NOT NULL UNIQUE,
    stream_id       text NOT NULL,
    stream_version  bigint NOT NULL CHECK (stream_version > 0),
    event_type      text NOT NULL,
    schema_version  integer NOT NULL CHECK (schema_version > 0),
    data            jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_log_order ON events (transaction_id, position);

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP USING ERRCODE = 'P0001';
END;
$$;

CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- Which stream holds a connection: written once, with its creation event.
CREATE TABLE connection_locator (
    connection_id uuid PRIMARY KEY,
    owner_id      text NOT NULL,
    service       text NOT NULL
);

-- One data key per connection, wrapped by the master key. Mutable on
-- purpose: revoking deletes the row (crypto-shredding).
CREATE TABLE data_keys (
    connection_id uuid PRIMARY KEY,
    master_key_id text NOT NULL,
    wrapped_key   bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Each credential version, sealed with the connection's data key.
CREATE TABLE sealed_credentials (
    connection_id      uuid NOT NULL,
    credential_version integer NOT NULL,
    sealed             bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, credential_version)
);

-- The first answer to each (owner, Idempotency-Key).
CREATE TABLE idempotency_keys (
    owner_id        text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    bytea NOT NULL,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, idempotency_key)
);
