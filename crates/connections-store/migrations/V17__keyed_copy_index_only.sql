-- The keyed copy holds long streams only (more than 64 events; shorter ones
-- are read whole from the log, see src/stream_state.rs): few streams, and
-- one of them may hold most of the rows (a connection used by twenty
-- thousand agents). The functions' generic plans (V16) then estimate that
-- `stream_id = p_stream` matches a large share of a table and scan it whole
-- on every call (2.5 ms of the load's 3 ms in `bench streams`). Every
-- statement of both functions is meant to be an index lookup: forbid the
-- alternative.
ALTER FUNCTION connections_load_state(text, uuid[], text[], uuid, int8) SET enable_seqscan = off;
ALTER FUNCTION connections_save_state(text, int8, bool, bool, uuid, uuid[], jsonb[], text[], text[], uuid[], text[])
    SET enable_seqscan = off;
