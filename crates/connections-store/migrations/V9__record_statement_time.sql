-- An event's recording time is now the start of the statement that appends
-- it (statement_timestamp()), no longer the start of its transaction (now()).
-- Commands queue on their stream's advisory lock (src/log.rs, lock_stream):
-- a transaction that began before the lock holder's, but appends after it,
-- would otherwise look older than the stream's head and conflict again and
-- again under load. Within a stream, version order = global order = recording-time
-- order still holds, and is still checked here.
CREATE OR REPLACE FUNCTION connections_append(
    p_stream text, p_expected int8, p_ids uuid[], p_types text[], p_schema_versions int4[],
    p_data jsonb[], p_metadata jsonb, p_contents bytea[])
RETURNS SETOF int8 LANGUAGE plpgsql AS $$
DECLARE
    v_head record;
    v_base int8;
    v_version int8;
    v_previous bytea;
    v_position int8;
    v_hash bytea;
    v_transaction int8 := pg_current_xact_id()::text::int8;
    v_micros int8 := (extract(epoch FROM statement_timestamp()) * 1000000)::int8;
    v_positions int8[] := '{}';
    v_previous_hashes bytea[] := '{}';
    v_hashes bytea[] := '{}';
BEGIN
    SELECT e.stream_version, e.hash, e.transaction_id, e.recorded_at INTO v_head
    FROM events e WHERE e.stream_id = p_stream ORDER BY e.stream_version DESC LIMIT 1;
    IF FOUND THEN
        IF (p_expected IS NOT NULL AND v_head.stream_version <> p_expected)
           OR v_head.transaction_id > pg_current_xact_id()
           OR v_head.recorded_at > statement_timestamp() THEN
            RETURN;
        END IF;
        v_base := v_head.stream_version;
        v_previous := v_head.hash;
    ELSE
        IF p_expected IS NOT NULL AND p_expected <> 0 THEN
            RETURN;
        END IF;
        v_base := 0;
        v_previous := decode(repeat('00', 32), 'hex');
    END IF;
    v_version := v_base;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        v_position := nextval('events_position_seq'::regclass);
        v_version := v_version + 1;
        v_hash := sha256(v_previous || p_contents[i] || int8send(v_version) || int8send(v_position)
                         || int8send(v_transaction) || int8send(v_micros));
        v_positions := v_positions || v_position;
        v_previous_hashes := v_previous_hashes || v_previous;
        v_hashes := v_hashes || v_hash;
        v_previous := v_hash;
    END LOOP;
    RETURN QUERY
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata,
                        recorded_at, previous_hash, hash) OVERRIDING SYSTEM VALUE
    SELECT u.position, u.event_id, p_stream, v_base + u.n, u.event_type, u.schema_version, u.data, p_metadata,
           statement_timestamp(), u.previous_hash, u.hash
    FROM unnest(v_positions, p_ids, p_types, p_schema_versions, p_data, v_previous_hashes, v_hashes)
        WITH ORDINALITY AS u(position, event_id, event_type, schema_version, data, previous_hash, hash, n)
    ORDER BY u.n
    RETURNING events.position;
END;
$$;

ALTER TABLE events ALTER COLUMN recorded_at SET DEFAULT statement_timestamp();
