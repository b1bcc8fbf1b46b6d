-- The logs' CHECK constraints become domains. Postgres deserializes and
-- prepares a table's CHECK constraints again for every statement that
-- writes to it (about 6 µs an append, a few per cent of a command's whole
-- cost); a domain's constraints are prepared once per session and kept in
-- its type cache. What is allowed is unchanged: a NULL hash passes either
-- way (rows written before chaining, sealed once by `connections migrate`).
--
-- Changing a column to a domain with constraints rewrites the table (and
-- checks every existing row), once, during the upgrade.

CREATE DOMAIN positive_int4 AS int4 CHECK (VALUE > 0);
CREATE DOMAIN positive_int8 AS int8 CHECK (VALUE > 0);
CREATE DOMAIN chain_hash AS bytea CHECK (octet_length(VALUE) = 32);

ALTER TABLE events
    DROP CONSTRAINT events_chained,
    DROP CONSTRAINT events_schema_version_check,
    DROP CONSTRAINT events_stream_version_check,
    ALTER COLUMN stream_version TYPE positive_int8,
    ALTER COLUMN schema_version TYPE positive_int4,
    ALTER COLUMN previous_hash TYPE chain_hash,
    ALTER COLUMN hash TYPE chain_hash;

ALTER TABLE access_log
    DROP CONSTRAINT access_log_chained,
    ALTER COLUMN previous_hash TYPE chain_hash,
    ALTER COLUMN hash TYPE chain_hash;
