//! A generated log for the benchmarks that need a big one (rebuild, audit):
//! a realistic mix of the event types in ten events per (owner, service)
//! stream — create A, assign A, default A, create B, assign B, rotate A,
//! default B, unassign A, revoke A, create C — over 10,000 owners with ten
//! services each, plus one access record (a hand-out of B) per stream.
//!
//! Rows are built here with their hash chains (as the append statement
//! computes them) and loaded with one `COPY` in one transaction, so a
//! million events take seconds rather than a million appends.

use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use connections_store::chain::{self, ChainHash, EventPlace};
use futures_util::SinkExt;
use serde_json::{json, Value};
use uuid::Uuid;

/// Owners in the generated log.
pub const OWNERS: u64 = 10_000;
const SERVICES: u64 = 10;
const PER_STREAM: u64 = 10;

/// The owner id of generated owner `n`.
pub fn owner(n: u64) -> String {
    format!("o{n}")
}

/// Loads `events` generated events (rounded down to whole streams) and one
/// access record per stream into the (migrated, empty) database at `url`.
/// Returns (events, access records).
pub async fn generate_log(url: &str, events: u64) -> anyhow::Result<(u64, u64)> {
    let config = tokio_postgres::Config::from_str(url)?;
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let transaction = client.transaction().await?;
    let xid: String = transaction.query_one("SELECT pg_current_xact_id()::text", &[]).await?.get(0);
    let transaction_id: u64 = xid.parse()?;
    let start: DateTime<Utc> =
        transaction.query_one("SELECT date_trunc('second', now()) - interval '30 days'", &[]).await?.get(0);
    let streams = events / PER_STREAM;
    let sink = transaction
        .copy_in(
            "COPY events (position, transaction_id, event_id, stream_id, stream_version, event_type, schema_version, \
             data, metadata, recorded_at, previous_hash, hash) FROM STDIN",
        )
        .await?;
    futures_util::pin_mut!(sink);
    let mut buffer = String::with_capacity(1 << 20);
    let mut accesses = Vec::with_capacity(streams as usize);
    let mut position = 0i64;
    for s in 0..streams {
        let (owner_n, service_n) = (s % OWNERS, s / OWNERS % SERVICES);
        let owner = owner(owner_n);
        let service = format!("svc{service_n}");
        let stream_id = connections_store::StreamId::owner_service(
            &connections_domain::OwnerId::parse(owner.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
            &connections_domain::ServiceName::parse(&service).map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .to_string();
        // Distinct ids: the stream number in the high bits, a tag below.
        let id = |tag: u64| {
            Uuid::from_u128(0x7000_0000_0000_0000_0000_0000_0000_0000 | u128::from(s) << 16 | u128::from(tag))
        };
        let (a, b, c) = (id(1), id(2), id(3));
        let created = |connection: Uuid, name: &str, kind: &str, skill: Value| {
            json!({"connection_id": connection, "owner": owner, "service": service, "name": name,
                   "credential_kind": kind, "agent_id": null, "skill": skill})
        };
        let mix: [(&str, Value); PER_STREAM as usize] = [
            ("connection_created", created(a, "A", "api_key", Value::Null)),
            ("agent_assigned", json!({"connection_id": a, "agent_id": "agent-1", "source": "assigned"})),
            ("default_set", json!({"connection_id": a, "previous": null})),
            ("connection_created", created(b, "B", "oauth2", json!("calendar"))),
            ("agent_assigned", json!({"connection_id": b, "agent_id": "agent-2", "source": "assigned"})),
            ("credential_rotated", json!({"connection_id": a, "credential_version": 2, "credential_kind": "basic"})),
            ("default_set", json!({"connection_id": b, "previous": a})),
            ("agent_unassigned", json!({"connection_id": a, "agent_id": "agent-1", "reason": "unassigned"})),
            ("connection_revoked", json!({"connection_id": a, "affected_agents": []})),
            ("connection_created", created(c, "C", "api_key", Value::Null)),
        ];
        // Streams are interleaved in time: stream s's k-th event at start + k hours + s µs.
        let mut previous = ChainHash::GENESIS;
        for (k, (event_type, data)) in mix.into_iter().enumerate() {
            position += 1;
            let recorded_at = start + Duration::hours(k as i64) + Duration::microseconds(s as i64);
            let metadata =
                json!({"actor": owner, "command_id": id(100 + k as u64), "correlation_id": id(200 + k as u64)});
            let event_id = id(300 + k as u64);
            let content = chain::event_content(event_id, &stream_id, event_type, 1, &data, &metadata);
            let place = EventPlace { stream_version: k as u64 + 1, position, transaction_id, recorded_at };
            let hash = chain::event_hash(&previous, &content, &place);
            use std::fmt::Write;
            let _ = writeln!(
                buffer,
                "{position}\t{transaction_id}\t{event_id}\t{stream_id}\t{}\t{event_type}\t1\t{data}\t{metadata}\t{}\t\\\\x{}\t\\\\x{}",
                k + 1,
                recorded_at.to_rfc3339(),
                previous.to_hex(),
                hash.to_hex()
            );
            previous = hash;
        }
        accesses.push((b, owner, start + Duration::hours(5) + Duration::microseconds(s as i64), id(4)));
        if buffer.len() >= 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buffer))).await?;
        }
    }
    sink.send(Bytes::from(buffer)).await?;
    sink.as_mut().finish().await?;
    transaction.execute("SELECT setval('events_position_seq'::regclass, $1)", &[&position.max(1)]).await?;

    let sink = transaction
        .copy_in(
            "COPY access_log (access_id, connection_id, credential_version, agent_id, owner_id, request_id, \
             accessed_at, previous_hash, hash) FROM STDIN",
        )
        .await?;
    futures_util::pin_mut!(sink);
    let mut buffer = String::with_capacity(1 << 20);
    for (n, (connection, owner, at, request)) in accesses.iter().enumerate() {
        let access_id = n as i64 + 1;
        let content = chain::access_content(*connection, 1, "agent-2", owner, *request);
        let hash = chain::access_hash(&ChainHash::GENESIS, &content, access_id, *at);
        use std::fmt::Write;
        let _ = writeln!(
            buffer,
            "{access_id}\t{connection}\t1\tagent-2\t{owner}\t{request}\t{}\t\\\\x{}\t\\\\x{}",
            at.to_rfc3339(),
            ChainHash::GENESIS.to_hex(),
            hash.to_hex()
        );
        if buffer.len() >= 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buffer))).await?;
        }
    }
    sink.send(Bytes::from(buffer)).await?;
    sink.as_mut().finish().await?;
    transaction
        .execute("SELECT setval('access_log_access_id_seq'::regclass, $1)", &[&(accesses.len() as i64).max(1)])
        .await?;
    transaction.commit().await?;
    client.batch_execute("ANALYZE events; ANALYZE access_log").await?;
    Ok((position as u64, accesses.len() as u64))
}
