-- A command on a connection first finds the connection's stream, then
-- takes the stream's lock, then reads the stream's head under it: three
-- steps that each waited on the one before, so two round trips before the
-- command could decide. One call does all three (see src/locator.rs).

-- The key of a stream's writers' lock (class 0x636f6e6e, "conn"): the first
-- four bytes of the SHA-256 of the stream id, big-endian, as Rust computes
-- it in `EventLog::lock_stream` (a store test checks that they agree).
CREATE FUNCTION connections_stream_lock_key(p_stream text) RETURNS int4
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || encode(substring(sha256(convert_to(p_stream, 'UTF8')) FROM 1 FOR 4), 'hex'))::bit(32)::int4
$$;

-- The connection's owner, service and stream, with the stream's version
-- and last position read after its lock is held (until the transaction
-- ends); no row for an unknown connection (and no lock taken). VOLATILE: in
-- READ COMMITTED each statement below takes a new snapshot, so the head is
-- read after the lock is granted and sees the previous holder's commit.
CREATE FUNCTION connections_locate_and_lock(p_connection uuid)
RETURNS TABLE (owner_id text, service text, stream_id text, stream_version int8, last_position int8)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
DECLARE
    v_owner text;
    v_service text;
    v_stream text;
BEGIN
    SELECT l.owner_id, l.service INTO v_owner, v_service
    FROM connection_locator l WHERE l.connection_id = p_connection;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- As `StreamId::owner_service` spells it (the caller parses it back).
    v_stream := 'owner-service/' || v_owner || '/' || v_service;
    PERFORM pg_advisory_xact_lock(1668247150, connections_stream_lock_key(v_stream));
    RETURN QUERY
    SELECT v_owner, v_service, v_stream, coalesce(max(e.stream_version), 0), coalesce(max(e.position), 0)
    FROM (SELECT h.stream_version, h.position FROM events h WHERE h.stream_id = v_stream
          ORDER BY h.stream_version DESC LIMIT 1) AS e;
END;
$$;
