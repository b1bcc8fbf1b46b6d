-- A runtime can report that the provider rejected a connection's
-- credential (credential_rejected); the connection then needs the owner's
-- attention until it is rotated, replaced or revoked. The live table gets
-- the column (last, where rebuilt tables have it too); rebuilds create it
-- with their tables.
ALTER TABLE rm_connections ADD COLUMN needs_attention boolean NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION create_dashboard_tables(suffix text, with_keys boolean) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    EXECUTE format($f$
        CREATE TABLE rm_connections%1$s (
            owner_id           text NOT NULL,
            connection_id      uuid NOT NULL,
            service            text NOT NULL,
            name               text NOT NULL,
            skill              text,
            credential_kind    text NOT NULL,
            credential_version integer NOT NULL,
            status             text NOT NULL,
            is_default         boolean NOT NULL DEFAULT false,
            agent_count        integer NOT NULL DEFAULT 0,
            created_at         timestamptz NOT NULL,
            last_changed_at    timestamptz NOT NULL,
            last_position      bigint NOT NULL,
            needs_attention    boolean NOT NULL DEFAULT false
            )$f$, suffix);
    EXECUTE format($f$
        CREATE TABLE rm_services%1$s (
            owner_id              text NOT NULL,
            service               text NOT NULL,
            active_connections    integer NOT NULL DEFAULT 0,
            default_connection_id uuid,
            agent_count           integer NOT NULL DEFAULT 0
            )$f$, suffix);
    EXECUTE format($f$
        CREATE TABLE rm_connection_agents%1$s (
            owner_id      text NOT NULL,
            connection_id uuid NOT NULL,
            agent_id      text NOT NULL,
            service       text NOT NULL,
            source        text NOT NULL,
            since         timestamptz NOT NULL
            )$f$, suffix);
    EXECUTE format($f$
        CREATE TABLE rm_changes%1$s (
            owner_id       text NOT NULL,
            transaction_id xid8 NOT NULL,
            position       bigint NOT NULL,
            event_type     text NOT NULL,
            connection_id  uuid NOT NULL,
            service        text NOT NULL,
            occurred_at    timestamptz NOT NULL
            )$f$, suffix);
    IF with_keys THEN
        PERFORM add_dashboard_keys(suffix);
    END IF;
    FOREACH t IN ARRAY ARRAY['rm_connections', 'rm_services', 'rm_connection_agents', 'rm_changes'] LOOP
        EXECUTE format('ALTER TABLE %1$s%2$s ENABLE ROW LEVEL SECURITY', t, suffix);
        EXECUTE format('ALTER TABLE %1$s%2$s FORCE ROW LEVEL SECURITY', t, suffix);
        -- Readers see the rows of the owner named for their transaction, and
        -- nothing when none is named (current_setting(..., true) is NULL).
        EXECUTE format(
            'CREATE POLICY owner_reads ON %1$s%2$s FOR SELECT TO connections_reader '
            'USING (owner_id = current_setting(''connections.owner'', true))', t, suffix);
        EXECUTE format('CREATE POLICY projector_writes ON %1$s%2$s TO connections_projector USING (true) WITH CHECK (true)',
            t, suffix);
        EXECUTE format('GRANT SELECT ON %1$s%2$s TO connections_reader', t, suffix);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s%2$s TO connections_projector', t, suffix);
    END LOOP;
END;
$$;
