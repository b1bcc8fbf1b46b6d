-- Idempotency records now hold a keyed fingerprint (HMAC-SHA-256 under a
-- key derived from the master key) instead of an unkeyed SHA-256 of the
-- request, whose body may carry a plaintext credential: an unkeyed digest
-- lets anyone with a dump confirm a guessed secret. The old digests are
-- exactly that exposure, and a record is only useful for a retry within a
-- day, so they go.
DELETE FROM idempotency_keys;

-- Expired records are found by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
