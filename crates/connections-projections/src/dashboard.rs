//! The dashboard read models, kept current one event at a time:
//! `rm_connections` (one row per connection), `rm_services` (the cards),
//! `rm_connection_agents` (the usage overview) and `rm_changes` (the change
//! feed behind `GET /v1/stream`).
//!
//! Each event becomes a short list of statements; the projector pipelines
//! the statements of a whole batch on one connection, where the server runs
//! them in order.

use connections_domain::Event;
use connections_fanout::Envelope;
use connections_store::codec::{binding_source_name, decode};
use connections_store::StoreError;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// One SQL statement with owned parameters.
pub struct Statement {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Statement {
    fn new(sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Self {
        Self { sql, params }
    }

    /// The SQL text.
    pub fn sql(&self) -> &'static str {
        self.sql
    }

    /// Runs it as the already-prepared `statement`. Execution must not need
    /// a preparation round trip, or pipelined statements could overtake it.
    pub async fn execute(
        &self,
        client: &impl GenericClient,
        statement: &tokio_postgres::Statement,
    ) -> Result<u64, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = self.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        Ok(client.execute(statement, &params).await?)
    }
}

/// Runs `statements` pipelined, in order: each distinct statement is
/// prepared first (cached after the first batch), then all are sent back to
/// back and the server executes them in sending order.
pub async fn execute_pipelined(client: &impl GenericClient, statements: &[Statement]) -> Result<(), StoreError> {
    let mut prepared = std::collections::HashMap::new();
    for statement in statements {
        if !prepared.contains_key(statement.sql) {
            prepared.insert(statement.sql, client.prepare_cached(statement.sql).await?);
        }
    }
    futures_util::future::try_join_all(statements.iter().map(|s| s.execute(client, &prepared[s.sql]))).await?;
    Ok(())
}

/// The statements that apply one event to the live read models.
pub fn statements(envelope: &Envelope) -> Result<Vec<Statement>, StoreError> {
    let event = decode(&envelope.event_type, envelope.schema_version, &envelope.data)?;
    let owner = || Box::new(envelope.owner.clone()) as Box<dyn ToSql + Sync + Send>;
    let service = || Box::new(envelope.service.clone()) as Box<dyn ToSql + Sync + Send>;
    let at = envelope.recorded_at;
    let position = envelope.cursor.position;
    let id = event.connection_id().as_uuid();
    let mut out = Vec::with_capacity(5);
    match &event {
        Event::ConnectionCreated { name, credential_kind, skill, .. } => {
            out.push(Statement::new(
                "INSERT INTO rm_connections (owner_id, connection_id, service, name, skill, credential_kind, \
                 credential_version, status, created_at, last_changed_at, last_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1, 'active', $7, $7, $8) ON CONFLICT DO NOTHING",
                vec![
                    owner(),
                    Box::new(id),
                    service(),
                    Box::new(name.to_string()),
                    Box::new(skill.as_ref().map(|s| s.to_string())),
                    Box::new(credential_kind.as_str()),
                    Box::new(at),
                    Box::new(position),
                ],
            ));
            out.push(Statement::new(
                "INSERT INTO rm_services (owner_id, service, active_connections) VALUES ($1, $2, 1) \
                 ON CONFLICT (owner_id, service) DO UPDATE SET active_connections = rm_services.active_connections + 1",
                vec![owner(), service()],
            ));
        }
        Event::AgentAssigned { agent_id, source, .. } => {
            out.push(Statement::new(
                "INSERT INTO rm_connection_agents (owner_id, connection_id, agent_id, service, source, since) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    owner(),
                    Box::new(id),
                    Box::new(agent_id.to_string()),
                    service(),
                    Box::new(binding_source_name(*source)),
                    Box::new(at),
                ],
            ));
            out.extend(bump_agents(owner, service, id, 1));
        }
        Event::AgentUnassigned { agent_id, .. } => {
            out.push(Statement::new(
                "DELETE FROM rm_connection_agents WHERE owner_id = $1 AND connection_id = $2 AND agent_id = $3",
                vec![owner(), Box::new(id), Box::new(agent_id.to_string())],
            ));
            out.extend(bump_agents(owner, service, id, -1));
        }
        Event::CredentialRotated { credential_version, credential_kind, .. } => {
            out.push(Statement::new(
                "UPDATE rm_connections SET credential_version = $3, credential_kind = $4, needs_attention = false \
                 WHERE owner_id = $1 AND connection_id = $2",
                vec![owner(), Box::new(id), Box::new(*credential_version as i32), Box::new(credential_kind.as_str())],
            ));
        }
        // The scopes live in the log (and the sealed credential); the
        // dashboard shows none of them yet.
        Event::OauthGranted { .. } | Event::UpstreamRevoked { .. } | Event::DataKeyRewrapped { .. } => {}
        Event::CredentialRefreshed { credential_version, .. } => {
            out.push(Statement::new(
                "UPDATE rm_connections SET credential_version = $3, needs_attention = false \
                 WHERE owner_id = $1 AND connection_id = $2",
                vec![owner(), Box::new(id), Box::new(*credential_version as i32)],
            ));
        }
        Event::CredentialRejected { .. } => {
            out.push(Statement::new(
                "UPDATE rm_connections SET needs_attention = true WHERE owner_id = $1 AND connection_id = $2",
                vec![owner(), Box::new(id)],
            ));
        }
        Event::DefaultSet { previous, .. } => {
            if let Some(previous) = previous {
                out.push(Statement::new(
                    "UPDATE rm_connections SET is_default = false, last_changed_at = $3, last_position = $4 \
                     WHERE owner_id = $1 AND connection_id = $2",
                    vec![owner(), Box::new(previous.as_uuid()), Box::new(at), Box::new(position)],
                ));
            }
            out.push(Statement::new(
                "UPDATE rm_connections SET is_default = true WHERE owner_id = $1 AND connection_id = $2",
                vec![owner(), Box::new(id)],
            ));
            out.push(Statement::new(
                "UPDATE rm_services SET default_connection_id = $3 WHERE owner_id = $1 AND service = $2",
                vec![owner(), service(), Box::new(id)],
            ));
        }
        Event::DefaultCleared { .. } => {
            out.push(Statement::new(
                "UPDATE rm_connections SET is_default = false WHERE owner_id = $1 AND connection_id = $2",
                vec![owner(), Box::new(id)],
            ));
            out.push(Statement::new(
                "UPDATE rm_services SET default_connection_id = NULL WHERE owner_id = $1 AND service = $2",
                vec![owner(), service()],
            ));
        }
        Event::ConnectionRevoked { .. } => {
            out.push(Statement::new(
                "UPDATE rm_connections SET status = 'revoked', needs_attention = false \
                 WHERE owner_id = $1 AND connection_id = $2",
                vec![owner(), Box::new(id)],
            ));
            out.push(Statement::new(
                "UPDATE rm_services SET active_connections = active_connections - 1 WHERE owner_id = $1 AND service = $2",
                vec![owner(), service()],
            ));
        }
    }
    out.push(Statement::new(
        "UPDATE rm_connections SET last_changed_at = $3, last_position = $4 WHERE owner_id = $1 AND connection_id = $2",
        vec![owner(), Box::new(id), Box::new(at), Box::new(position)],
    ));
    out.push(Statement::new(
        "INSERT INTO rm_changes (owner_id, transaction_id, position, event_type, connection_id, service, occurred_at) \
         VALUES ($1, $2::text::xid8, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        vec![
            owner(),
            Box::new(envelope.cursor.transaction_id.to_string()),
            Box::new(position),
            Box::new(envelope.event_type.clone()),
            Box::new(id),
            service(),
            Box::new(at),
        ],
    ));
    Ok(out)
}

fn bump_agents(
    owner: impl Fn() -> Box<dyn ToSql + Sync + Send>,
    service: impl Fn() -> Box<dyn ToSql + Sync + Send>,
    connection_id: uuid::Uuid,
    delta: i32,
) -> [Statement; 2] {
    [
        Statement::new(
            "UPDATE rm_connections SET agent_count = agent_count + $3 WHERE owner_id = $1 AND connection_id = $2",
            vec![owner(), Box::new(connection_id), Box::new(delta)],
        ),
        Statement::new(
            "UPDATE rm_services SET agent_count = agent_count + $3 WHERE owner_id = $1 AND service = $2",
            vec![owner(), service(), Box::new(delta)],
        ),
    ]
}
