-- The keyed copy's two statements as functions planned once per session
-- (`plan_cache_mode = force_generic_plan`): as prepared statements Postgres
-- planned them anew on every call (about 0.5 ms of CPU for the load, three
-- times its execution), which on the command mix cost a third of the
-- throughput. Every parameter is an equality or an array membership on an
-- index, so the generic plan is the right one for any stream.

CREATE FUNCTION connections_load_state(p_stream text, p_named uuid[], p_agents text[], p_every uuid, p_sample int8)
RETURNS TABLE (head_version int8, head_default uuid, logged_version int8, logged_position int8,
               connection_states jsonb, binding_rows jsonb)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH head AS (SELECT version, default_connection FROM stream_heads WHERE stream_id = p_stream),
    logged AS (
        SELECT stream_version, position FROM events WHERE stream_id = p_stream
        ORDER BY stream_version DESC LIMIT 1),
    bound AS (
        SELECT agent_id, connection_id, source FROM stream_bindings
        WHERE stream_id = p_stream AND agent_id = ANY(p_agents)
        UNION
        SELECT agent_id, connection_id, source FROM stream_bindings
        WHERE stream_id = p_stream AND connection_id = p_every
        UNION
        SELECT sample.* FROM unnest(p_named) AS named(id) CROSS JOIN LATERAL (
            SELECT agent_id, connection_id, source FROM stream_bindings
            WHERE stream_id = p_stream AND connection_id = named.id ORDER BY agent_id LIMIT p_sample) AS sample),
    wanted AS (
        SELECT unnest(p_named) AS id
        UNION SELECT default_connection FROM head
        UNION SELECT connection_id FROM stream_bindings WHERE stream_id = p_stream AND agent_id = ANY(p_agents))
    SELECT (SELECT version FROM head), (SELECT default_connection FROM head),
        coalesce((SELECT stream_version FROM logged), 0), coalesce((SELECT position FROM logged), 0),
        (SELECT coalesce(jsonb_agg(state), '[]') FROM stream_connections
            WHERE stream_id = p_stream AND connection_id IN (SELECT id FROM wanted)),
        (SELECT coalesce(jsonb_agg(jsonb_build_array(agent_id, connection_id, source)), '[]') FROM bound);
END $$;

CREATE FUNCTION connections_save_state(p_stream text, p_version int8, p_absolute bool, p_default_changed bool,
    p_default uuid, p_connection_ids uuid[], p_connection_states jsonb[], p_unbound text[], p_bound_agents text[],
    p_bound_connections uuid[], p_bound_sources text[])
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO stream_heads (stream_id, version, default_connection) VALUES (p_stream, p_version, p_default)
    ON CONFLICT (stream_id) DO UPDATE SET
        version = CASE WHEN p_absolute THEN excluded.version ELSE stream_heads.version + excluded.version END,
        default_connection = CASE WHEN p_absolute OR p_default_changed THEN excluded.default_connection
            ELSE stream_heads.default_connection END;
    IF cardinality(p_connection_ids) > 0 THEN
        INSERT INTO stream_connections (stream_id, connection_id, state)
        SELECT p_stream, c.id, c.state FROM unnest(p_connection_ids, p_connection_states) AS c(id, state)
        ON CONFLICT (stream_id, connection_id) DO UPDATE SET state = excluded.state;
    END IF;
    IF cardinality(p_unbound) > 0 THEN
        DELETE FROM stream_bindings WHERE stream_id = p_stream AND agent_id = ANY(p_unbound);
    END IF;
    IF cardinality(p_bound_agents) > 0 THEN
        INSERT INTO stream_bindings (stream_id, agent_id, connection_id, source)
        SELECT p_stream, b.agent, b.connection, b.source
        FROM unnest(p_bound_agents, p_bound_connections, p_bound_sources) AS b(agent, connection, source)
        ON CONFLICT (stream_id, agent_id) DO UPDATE SET connection_id = excluded.connection_id,
            source = excluded.source;
    END IF;
END $$;
