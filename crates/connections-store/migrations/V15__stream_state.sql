-- The command side's keyed copy of each stream's state (see
-- ARCHITECTURE.md, "Bounded cost per stream"): what a fold of the stream
-- gives, one row per entry, written in the transaction of the events that
-- change it, so that a command or a resolve loads only the entries it
-- decides on instead of folding the whole stream.
--
-- Not a read model: it is written by commands (not the projector), read
-- only by commands, and never served. The log stays the source of truth:
-- a head whose version differs from the stream's (a stream written before
-- this migration, or by something that appends without it) is rebuilt from
-- the stream by the next command that loads it, under the stream's lock.

CREATE TABLE stream_heads (
    stream_id          text PRIMARY KEY,
    -- How many events of the stream this state folds.
    version            bigint NOT NULL,
    default_connection uuid
);

-- Every connection ever created in the stream, as the domain sees it.
CREATE TABLE stream_connections (
    stream_id     text NOT NULL,
    connection_id uuid NOT NULL,
    state         jsonb NOT NULL,
    PRIMARY KEY (stream_id, connection_id)
);

-- Each agent's current binding in the stream.
CREATE TABLE stream_bindings (
    stream_id     text NOT NULL,
    agent_id      text NOT NULL,
    connection_id uuid NOT NULL,
    source        text NOT NULL,
    PRIMARY KEY (stream_id, agent_id)
);
CREATE INDEX stream_bindings_by_connection ON stream_bindings (stream_id, connection_id, agent_id);
