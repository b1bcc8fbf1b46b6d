-- Wake the relay at commit: one notification per appending transaction.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('connections_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Roles the application switches to (SET LOCAL ROLE) for read-model access.
-- Neither owns the tables, neither is superuser or BYPASSRLS, so row-level
-- security always applies to them. Roles are cluster-wide: create once.
DO $$
BEGIN
    CREATE ROLE connections_reader NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
DO $$
BEGIN
    CREATE ROLE connections_projector NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;

-- Where each projector is in the log, written in the same transaction as
-- the read-model rows it covers.
CREATE TABLE projector_checkpoints (
    name           text PRIMARY KEY,
    transaction_id xid8 NOT NULL,
    position       bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON projector_checkpoints TO connections_projector;
GRANT SELECT ON projector_checkpoints TO connections_reader;

-- The dashboard read models (and rm_changes, the per-owner change feed that
-- the SSE stream follows, keyed by log cursor) are created by create_dashboard_tables(suffix)
-- so that a rebuild can fill fresh tables and swap them in.
CREATE FUNCTION create_dashboard_tables(suffix text) RETURNS void LANGUAGE plpgsql AS $$
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
            PRIMARY KEY (owner_id, connection_id))$f$, suffix);
    EXECUTE format($f$
        CREATE TABLE rm_services%1$s (
            owner_id              text NOT NULL,
            service               text NOT NULL,
            active_connections    integer NOT NULL DEFAULT 0,
            default_connection_id uuid,
            agent_count           integer NOT NULL DEFAULT 0,
            PRIMARY KEY (owner_id, service))$f$, suffix);
    EXECUTE format($f$
        CREATE TABLE rm_connection_agents%1$s (
            owner_id      text NOT NULL,
            connection_id uuid NOT NULL,
            agent_id      text NOT NULL,
            service       text NOT NULL,
            source        text NOT NULL,
            since         timestamptz NOT NULL,
            PRIMARY KEY (owner_id, connection_id, agent_id))$f$, suffix);
    EXECUTE format($f$
        CREATE TABLE rm_changes%1$s (
            owner_id       text NOT NULL,
            transaction_id xid8 NOT NULL,
            position       bigint NOT NULL,
            event_type     text NOT NULL,
            connection_id  uuid NOT NULL,
            service        text NOT NULL,
            occurred_at    timestamptz NOT NULL,
            PRIMARY KEY (owner_id, transaction_id, position))$f$, suffix);
    EXECUTE format('CREATE INDEX ON rm_connection_agents%1$s (owner_id, service)', suffix);
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

SELECT create_dashboard_tables('');

-- Swaps the rebuilt dashboard tables in: the live ones are dropped, the
-- *_rebuild ones (and their indexes) take their names. Run inside the
-- rebuild's swap transaction.
CREATE FUNCTION swap_dashboard_tables() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
    i record;
BEGIN
    FOREACH t IN ARRAY ARRAY['rm_connections', 'rm_services', 'rm_connection_agents', 'rm_changes'] LOOP
        EXECUTE format('DROP TABLE %I', t);
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t || '_rebuild', t);
        FOR i IN SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = t LOOP
            EXECUTE format('ALTER INDEX %I RENAME TO %I', i.indexname, replace(i.indexname, '_rebuild', ''));
        END LOOP;
    END LOOP;
END;
$$;
