-- Tamper evidence: every event and every access record carries a SHA-256
-- hash chained to its predecessor (per stream for events, per connection for
-- access records). See ARCHITECTURE.md, "Hash chains", and src/chain.rs for
-- the exact bytes.
ALTER TABLE events ADD COLUMN previous_hash bytea, ADD COLUMN hash bytea;
ALTER TABLE access_log ADD COLUMN previous_hash bytea, ADD COLUMN hash bytea;

-- New rows must be chained. Rows written before this migration are sealed
-- once by `connections migrate` (NOT VALID: existing rows are not checked).
ALTER TABLE events ADD CONSTRAINT events_chained
    CHECK (octet_length(hash) = 32 AND octet_length(previous_hash) = 32) NOT VALID;
ALTER TABLE access_log ADD CONSTRAINT access_log_chained
    CHECK (octet_length(hash) = 32 AND octet_length(previous_hash) = 32) NOT VALID;

-- The one update the logs allow: filling in the chain of a row written
-- before chaining existed, nothing else changed.
CREATE FUNCTION logs_seal_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND OLD.previous_hash IS NULL
       AND (to_jsonb(NEW) - 'hash' - 'previous_hash') = (to_jsonb(OLD) - 'hash' - 'previous_hash') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the log is append-only (% refused)', TG_OP USING ERRCODE = 'P0001';
END;
$$;

DROP TRIGGER events_no_update_or_delete ON events;
CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION logs_seal_only();
DROP TRIGGER access_log_no_update_or_delete ON access_log;
CREATE TRIGGER access_log_no_update_or_delete BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION logs_seal_only();

-- Audit reads by owner (history, as-of, export) use an index, not a scan.
-- Owner streams are named owner-service/<owner>/<service>.
CREATE INDEX events_by_owner ON events (split_part(stream_id, '/', 2), transaction_id, position);
CREATE INDEX access_log_by_owner ON access_log (owner_id, access_id);
