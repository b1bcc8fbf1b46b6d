-- Every hand-out of plaintext to an agent, recorded before the secret leaves.
-- Kept apart from the domain streams; append-only like the event log.
CREATE TABLE access_log (
    access_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id      uuid NOT NULL,
    credential_version integer NOT NULL,
    agent_id           text NOT NULL,
    owner_id           text NOT NULL,
    request_id         uuid NOT NULL,
    accessed_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX access_log_by_connection ON access_log (connection_id, access_id);

CREATE TRIGGER access_log_no_update_or_delete BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
