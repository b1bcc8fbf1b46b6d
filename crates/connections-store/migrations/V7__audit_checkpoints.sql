-- Periodic audit checkpoints (the head of every chain), taken by the server
-- and listed by `connections audit checkpoints` for auditors to keep outside
-- the system. `body` is the checkpoint line exactly as printed.
CREATE TABLE audit_checkpoints (
    checkpoint_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    taken_at      timestamptz NOT NULL,
    digest        bytea NOT NULL,
    body          text NOT NULL
);
CREATE INDEX audit_checkpoints_by_time ON audit_checkpoints (taken_at);
