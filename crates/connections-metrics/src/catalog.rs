//! Every metric the server exports. Names and units follow the Prometheus
//! conventions: `connections_` prefix, base units (seconds), `_total` for
//! counters.

use crate::family::{CounterVec, Family, HistogramVec, LATENCY_BUCKETS};

/// Commands by kind (`create_connection`, `revoke_connection`, ...) and
/// outcome (`accepted`, `refused`: a 4xx answer, `failed`: a 5xx), from
/// the first attempt to the answer, retries included.
pub static COMMAND_SECONDS: HistogramVec = HistogramVec::new(
    "connections_command_duration_seconds",
    "Time to decide and commit a command, by kind and outcome.",
    &["command", "outcome"],
    LATENCY_BUCKETS,
);

/// Resolves by outcome (`granted`, `refused`, `failed`).
pub static RESOLVE_SECONDS: HistogramVec = HistogramVec::new(
    "connections_resolve_duration_seconds",
    "Time to resolve an agent's credential, by outcome.",
    &["outcome"],
    LATENCY_BUCKETS,
);

/// An event's `recorded_at` (the start of its transaction, a few
/// milliseconds before its commit) to JetStream's acknowledgement of its
/// publish by the relay.
pub static RELAY_LAG_SECONDS: HistogramVec = HistogramVec::new(
    "connections_relay_lag_seconds",
    "Time from an event's transaction to JetStream acknowledging its publish.",
    &[],
    LATENCY_BUCKETS,
);

/// Events published by the relay and acknowledged by JetStream.
pub static RELAY_PUBLISHED: CounterVec =
    CounterVec::new("connections_relay_events_published_total", "Events the relay published to JetStream.", &[]);

/// The relay's reads of the log, by what they found: `events`, `held_back`
/// (nothing it could take yet, committed events behind an older running
/// transaction) or `nothing`. Reads per published event is the relay's
/// overhead on Postgres.
pub static RELAY_READS: CounterVec = CounterVec::new(
    "connections_relay_reads_total",
    "The relay's reads of the log, by what they found (events, held_back, nothing).",
    &["found"],
);

/// Commit of an event to its projection committing, by projection.
pub static PROJECTION_LAG_SECONDS: HistogramVec = HistogramVec::new(
    "connections_projection_lag_seconds",
    "Time from an event's transaction to its projection committing, by projection.",
    &["projection"],
    LATENCY_BUCKETS,
);

/// Notices to runtimes published, by kind (`revoked`, `unbound`, ...).
pub static NOTICES_PUBLISHED: CounterVec =
    CounterVec::new("connections_notices_published_total", "Notices to agent runtimes published, by kind.", &["kind"]);

/// Commit of a revocation to JetStream acknowledging its notice.
pub static REVOCATION_NOTICE_SECONDS: HistogramVec = HistogramVec::new(
    "connections_revocation_notice_delay_seconds",
    "Time from a revocation's transaction to JetStream acknowledging its notice.",
    &[],
    LATENCY_BUCKETS,
);

/// Waiting for a pooled Postgres connection, by pool.
pub static POOL_WAIT_SECONDS: HistogramVec = HistogramVec::new(
    "connections_db_pool_wait_seconds",
    "Time waited for a pooled Postgres connection, by pool.",
    &["pool"],
    LATENCY_BUCKETS,
);

/// HTTP responses by method and status class (`2xx`, `4xx`, ...).
pub static HTTP_RESPONSES: CounterVec = CounterVec::new(
    "connections_http_responses_total",
    "HTTP responses sent, by method and status class.",
    &["method", "class"],
);

/// HTTP request durations by status class.
pub static HTTP_SECONDS: HistogramVec = HistogramVec::new(
    "connections_http_request_duration_seconds",
    "Time from an HTTP request's arrival to its answer's head, by status class.",
    &["class"],
    LATENCY_BUCKETS,
);

/// Leadership changes: a role taken (`taken`) or given up (`released`).
pub static ROLE_CHANGES: CounterVec = CounterVec::new(
    "connections_role_changes_total",
    "Times this instance took or released a role (relay, projector, upkeep), by role and change.",
    &["role", "change"],
);

/// How commands and resolves found the state of the stream they decide on
/// (`cache`: this instance's copy at the log's version; `log`: a short
/// stream read whole; `copy`: the keyed copy).
pub static STATE_LOADS: CounterVec = CounterVec::new(
    "connections_state_loads_total",
    "Loads of a stream's state by commands and resolves, by where the state was found.",
    &["source"],
);

/// Commit groups (commands sharing a transaction) by how they ended
/// (`committed`; `rolled_back`: a member did not come to a commit, and each
/// member ran again alone; `unknown`: the COMMIT failed).
pub static COMMIT_GROUPS: CounterVec = CounterVec::new(
    "connections_commit_groups_total",
    "Commit groups (commands that shared a transaction), by outcome.",
    &["outcome"],
);

/// The commands in those groups, by the group's outcome.
pub static COMMIT_GROUP_COMMANDS: CounterVec = CounterVec::new(
    "connections_commit_group_commands_total",
    "Commands that ran in a commit group, by the group's outcome.",
    &["outcome"],
);

/// Every family above, in the order they are rendered.
pub(crate) static ALL: &[&dyn Family] = &[
    &COMMAND_SECONDS,
    &RESOLVE_SECONDS,
    &RELAY_LAG_SECONDS,
    &RELAY_PUBLISHED,
    &RELAY_READS,
    &PROJECTION_LAG_SECONDS,
    &NOTICES_PUBLISHED,
    &REVOCATION_NOTICE_SECONDS,
    &POOL_WAIT_SECONDS,
    &HTTP_RESPONSES,
    &HTTP_SECONDS,
    &ROLE_CHANGES,
    &STATE_LOADS,
    &COMMIT_GROUPS,
    &COMMIT_GROUP_COMMANDS,
];
