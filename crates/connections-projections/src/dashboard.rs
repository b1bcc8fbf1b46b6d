//! The dashboard read models, kept current a batch at a time:
//! `rm_connections` (one row per connection), `rm_services` (the cards),
//! `rm_connection_agents` (the usage overview) and `rm_changes` (the change
//! feed behind `GET /v1/stream`).
//!
//! A batch costs the same few statements whatever its size: the rows its
//! events touch are read (three SELECTs), the batch is folded into them in
//! memory by the same fold a rebuild uses (`crate::model`), and each table's
//! touched rows are written back with one statement over arrays. A row that
//! several events of the batch change is written once, in its final state.

use std::collections::BTreeSet;

use connections_domain::Event;
use connections_fanout::{log_cursor, Envelope};
use connections_store::codec::decode;
use connections_store::StoreError;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

type Param<'a> = dyn ToSql + Sync + 'a;

use crate::model::{AgentKey, AgentRow, ConnectionKey, ConnectionRow, Fact, Model, ServiceKey, ServiceRow};

/// The events of `envelopes`, decoded.
pub(crate) fn decode_all(envelopes: &[Envelope]) -> Result<Vec<Event>, StoreError> {
    envelopes.iter().map(|e| decode(&e.event_type, e.schema_version, &e.data)).collect()
}

/// The envelopes with their decoded events, as the fold takes them.
pub(crate) fn facts<'a>(envelopes: &'a [Envelope], events: &'a [Event]) -> Vec<Fact<'a>> {
    envelopes
        .iter()
        .zip(events)
        .map(|(envelope, event)| Fact {
            owner: &envelope.owner,
            service: &envelope.service,
            cursor: log_cursor(envelope.cursor),
            recorded_at: envelope.recorded_at,
            event_type: &envelope.event_type,
            event,
        })
        .collect()
}

/// Prepares (or finds in the connection's cache) every statement of
/// [`load`] and [`store`], so that they can be pipelined in order.
pub(crate) async fn prepare(client: &impl GenericClient) -> Result<(), StoreError> {
    for sql in [
        LOAD_CONNECTIONS,
        LOAD_SERVICES,
        LOAD_AGENTS,
        STORE_CONNECTIONS,
        STORE_SERVICES,
        STORE_AGENTS,
        FORGET_AGENTS,
        STORE_CHANGES,
    ] {
        client.prepare_cached(sql).await?;
    }
    Ok(())
}

/// The keys of the rows a batch may change.
#[derive(Default)]
pub(crate) struct Touched {
    connections: BTreeSet<ConnectionKey>,
    services: BTreeSet<ServiceKey>,
    agents: BTreeSet<AgentKey>,
}

impl Touched {
    /// The rows `facts` may change.
    pub(crate) fn of<'a>(facts: impl IntoIterator<Item = &'a Fact<'a>>) -> Self {
        let mut touched = Touched::default();
        for fact in facts {
            let (connections, service, agent) = fact.keys();
            touched.connections.extend(connections);
            touched.services.insert(service);
            touched.agents.extend(agent);
        }
        touched
    }

    fn connection_columns(&self) -> (Vec<&str>, Vec<Uuid>) {
        self.connections.iter().map(|(owner, id)| (owner.as_str(), *id)).unzip()
    }

    fn service_columns(&self) -> (Vec<&str>, Vec<&str>) {
        self.services.iter().map(|(owner, service)| (owner.as_str(), service.as_str())).unzip()
    }

    fn agent_columns(&self) -> (Vec<&str>, Vec<Uuid>, Vec<&str>) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for (owner, id, agent) in &self.agents {
            columns.0.push(owner.as_str());
            columns.1.push(*id);
            columns.2.push(agent.as_str());
        }
        columns
    }
}

// Every key is looked up by its primary key, one at a time (a LATERAL
// subquery with a LIMIT is never flattened into a join): written as
// `(...) IN (SELECT * FROM unnest(...))`, the plans made while a table was
// small (a new deployment's first minutes, before autovacuum analyzes it)
// scanned the whole table on every batch, and kept doing so as it grew.
const LOAD_CONNECTIONS: &str = "SELECT r.* FROM unnest($1::text[], $2::uuid[]) AS k(owner_id, connection_id) \
    CROSS JOIN LATERAL (SELECT owner_id, connection_id, service, name, skill, credential_kind, credential_version, \
        status, is_default, needs_attention, agent_count, created_at, last_changed_at, last_position \
        FROM rm_connections c WHERE c.owner_id = k.owner_id AND c.connection_id = k.connection_id LIMIT 1) AS r";
const LOAD_SERVICES: &str = "SELECT r.* FROM unnest($1::text[], $2::text[]) AS k(owner_id, service) \
    CROSS JOIN LATERAL (SELECT owner_id, service, active_connections, default_connection_id, agent_count \
        FROM rm_services s WHERE s.owner_id = k.owner_id AND s.service = k.service LIMIT 1) AS r";
const LOAD_AGENTS: &str = "SELECT r.* FROM unnest($1::text[], $2::uuid[], $3::text[]) AS k(owner_id, connection_id, \
    agent_id) CROSS JOIN LATERAL (SELECT owner_id, connection_id, agent_id, service, source, since \
        FROM rm_connection_agents a WHERE a.owner_id = k.owner_id AND a.connection_id = k.connection_id \
        AND a.agent_id = k.agent_id LIMIT 1) AS r";

/// The touched rows as they are now (pipelined).
pub(crate) async fn load(client: &impl GenericClient, touched: &Touched) -> Result<Model, StoreError> {
    let (connections, services, agents) = futures_util::try_join!(
        client.prepare_cached(LOAD_CONNECTIONS),
        client.prepare_cached(LOAD_SERVICES),
        client.prepare_cached(LOAD_AGENTS)
    )?;
    let (connection_owners, connection_ids) = touched.connection_columns();
    let (service_owners, service_names) = touched.service_columns();
    let (agent_owners, agent_connections, agent_ids) = touched.agent_columns();
    let connection_keys: [&Param<'_>; 2] = [&connection_owners, &connection_ids];
    let service_keys: [&Param<'_>; 2] = [&service_owners, &service_names];
    let agent_keys: [&Param<'_>; 3] = [&agent_owners, &agent_connections, &agent_ids];
    let (connection_rows, service_rows, agent_rows) = futures_util::try_join!(
        client.query(&connections, &connection_keys),
        client.query(&services, &service_keys),
        client.query(&agents, &agent_keys),
    )?;
    let mut model = Model::default();
    for row in connection_rows {
        model.connections.insert(
            (row.get(0), row.get(1)),
            ConnectionRow {
                service: row.get(2),
                name: row.get(3),
                skill: row.get(4),
                credential_kind: row.get(5),
                credential_version: row.get(6),
                status: row.get(7),
                is_default: row.get(8),
                needs_attention: row.get(9),
                agent_count: row.get(10),
                created_at: row.get(11),
                last_changed_at: row.get(12),
                last_position: row.get(13),
            },
        );
    }
    for row in service_rows {
        model.services.insert(
            (row.get(0), row.get(1)),
            ServiceRow { active_connections: row.get(2), default_connection_id: row.get(3), agent_count: row.get(4) },
        );
    }
    for row in agent_rows {
        model.agents.insert(
            (row.get(0), row.get(1), row.get(2)),
            AgentRow { service: row.get(3), source: row.get(4), since: row.get(5) },
        );
    }
    Ok(model)
}

const STORE_CONNECTIONS: &str = "INSERT INTO rm_connections (owner_id, connection_id, service, name, skill, \
    credential_kind, credential_version, status, is_default, needs_attention, agent_count, created_at, \
    last_changed_at, last_position) \
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], \
        $8::text[], $9::bool[], $10::bool[], $11::int4[], $12::timestamptz[], $13::timestamptz[], $14::int8[]) \
    ON CONFLICT (owner_id, connection_id) DO UPDATE SET name = excluded.name, skill = excluded.skill, \
        credential_kind = excluded.credential_kind, credential_version = excluded.credential_version, \
        status = excluded.status, is_default = excluded.is_default, needs_attention = excluded.needs_attention, \
        agent_count = excluded.agent_count, last_changed_at = excluded.last_changed_at, \
        last_position = excluded.last_position";
const STORE_SERVICES: &str = "INSERT INTO rm_services (owner_id, service, active_connections, \
    default_connection_id, agent_count) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::uuid[], $5::int4[]) \
    ON CONFLICT (owner_id, service) DO UPDATE SET active_connections = excluded.active_connections, \
        default_connection_id = excluded.default_connection_id, agent_count = excluded.agent_count";
const STORE_AGENTS: &str = "INSERT INTO rm_connection_agents (owner_id, connection_id, agent_id, service, source, \
    since) SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
    ON CONFLICT (owner_id, connection_id, agent_id) DO UPDATE SET service = excluded.service, \
        source = excluded.source, since = excluded.since";
const FORGET_AGENTS: &str = "DELETE FROM rm_connection_agents WHERE ctid = ANY(ARRAY( \
    SELECT r.ctid FROM unnest($1::text[], $2::uuid[], $3::text[]) AS k(owner_id, connection_id, agent_id) \
    CROSS JOIN LATERAL (SELECT ctid FROM rm_connection_agents a WHERE a.owner_id = k.owner_id \
        AND a.connection_id = k.connection_id AND a.agent_id = k.agent_id LIMIT 1) AS r))";
/// A plain insert: a batch folds only events after the checkpoint it
/// advances in the same transaction, so its changes are new rows (an upsert
/// here cost about 40 % more a row). A duplicate would mean the checkpoint
/// is wrong: the batch then fails and rolls back rather than pass over it.
const STORE_CHANGES: &str = "INSERT INTO rm_changes (owner_id, transaction_id, position, event_type, \
    connection_id, service, occurred_at) \
    SELECT o, t::xid8, p, e, c, s, at FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::uuid[], \
        $6::text[], $7::timestamptz[]) AS u(o, t, p, e, c, s, at)";

/// Writes the touched rows back in their final state (pipelined): those the
/// model holds are upserted, touched agent rows it no longer holds are
/// deleted, and the batch's changes are appended to the feed.
pub(crate) async fn store(client: &impl GenericClient, touched: &Touched, model: &Model) -> Result<(), StoreError> {
    let (connections, services, agents, forget, changes) = futures_util::try_join!(
        client.prepare_cached(STORE_CONNECTIONS),
        client.prepare_cached(STORE_SERVICES),
        client.prepare_cached(STORE_AGENTS),
        client.prepare_cached(FORGET_AGENTS),
        client.prepare_cached(STORE_CHANGES)
    )?;

    let mut c = ConnectionColumns::default();
    for key in &touched.connections {
        if let Some(row) = model.connections.get(key) {
            c.push(key, row);
        }
    }
    let mut s = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for key in &touched.services {
        if let Some(row) = model.services.get(key) {
            s.0.push(key.0.as_str());
            s.1.push(key.1.as_str());
            s.2.push(row.active_connections);
            s.3.push(row.default_connection_id);
            s.4.push(row.agent_count);
        }
    }
    let mut kept = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gone = (Vec::new(), Vec::new(), Vec::new());
    for key @ (owner, id, agent) in &touched.agents {
        match model.agents.get(key) {
            Some(row) => {
                kept.0.push(owner.as_str());
                kept.1.push(*id);
                kept.2.push(agent.as_str());
                kept.3.push(row.service.as_str());
                kept.4.push(row.source.as_str());
                kept.5.push(row.since);
            }
            None => {
                gone.0.push(owner.as_str());
                gone.1.push(*id);
                gone.2.push(agent.as_str());
            }
        }
    }
    let mut f = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for change in &model.changes {
        f.0.push(change.owner.as_str());
        f.1.push(change.cursor.transaction_id.to_string());
        f.2.push(change.cursor.position);
        f.3.push(change.event_type.as_str());
        f.4.push(change.connection_id);
        f.5.push(change.service.as_str());
        f.6.push(change.occurred_at);
    }
    let connection_rows: [&Param<'_>; 14] = [
        &c.owners,
        &c.ids,
        &c.services,
        &c.names,
        &c.skills,
        &c.kinds,
        &c.versions,
        &c.statuses,
        &c.defaults,
        &c.attention,
        &c.agent_counts,
        &c.created,
        &c.changed,
        &c.positions,
    ];
    let service_rows: [&Param<'_>; 5] = [&s.0, &s.1, &s.2, &s.3, &s.4];
    let kept_rows: [&Param<'_>; 6] = [&kept.0, &kept.1, &kept.2, &kept.3, &kept.4, &kept.5];
    let gone_keys: [&Param<'_>; 3] = [&gone.0, &gone.1, &gone.2];
    let change_rows: [&Param<'_>; 7] = [&f.0, &f.1, &f.2, &f.3, &f.4, &f.5, &f.6];
    futures_util::try_join!(
        client.execute(&connections, &connection_rows),
        client.execute(&services, &service_rows),
        client.execute(&agents, &kept_rows),
        client.execute(&forget, &gone_keys),
        client.execute(&changes, &change_rows),
    )?;
    Ok(())
}

/// `rm_connections` rows as column arrays.
#[derive(Default)]
struct ConnectionColumns<'a> {
    owners: Vec<&'a str>,
    ids: Vec<Uuid>,
    services: Vec<&'a str>,
    names: Vec<&'a str>,
    skills: Vec<Option<&'a str>>,
    kinds: Vec<&'a str>,
    versions: Vec<i32>,
    statuses: Vec<&'a str>,
    defaults: Vec<bool>,
    attention: Vec<bool>,
    agent_counts: Vec<i32>,
    created: Vec<chrono::DateTime<chrono::Utc>>,
    changed: Vec<chrono::DateTime<chrono::Utc>>,
    positions: Vec<i64>,
}

impl<'a> ConnectionColumns<'a> {
    fn push(&mut self, (owner, id): &'a ConnectionKey, row: &'a ConnectionRow) {
        self.owners.push(owner);
        self.ids.push(*id);
        self.services.push(&row.service);
        self.names.push(&row.name);
        self.skills.push(row.skill.as_deref());
        self.kinds.push(&row.credential_kind);
        self.versions.push(row.credential_version);
        self.statuses.push(&row.status);
        self.defaults.push(row.is_default);
        self.attention.push(row.needs_attention);
        self.agent_counts.push(row.agent_count);
        self.created.push(row.created_at);
        self.changed.push(row.last_changed_at);
        self.positions.push(row.last_position);
    }
}
