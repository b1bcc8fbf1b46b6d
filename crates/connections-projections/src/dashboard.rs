//! The dashboard read models, kept current one event at a time:
//! `rm_connections` (one row per connection), `rm_services` (the cards),
//! `rm_connection_agents` (the usage overview) and `rm_changes` (the change
//! feed behind `GET /v1/stream`).

use connections_domain::Event;
use connections_fanout::Envelope;
use connections_store::codec::{binding_source_name, decode};
use connections_store::StoreError;
use deadpool_postgres::GenericClient;

/// Applies one event to the live read models.
pub async fn apply(client: &impl GenericClient, envelope: &Envelope) -> Result<(), StoreError> {
    let event = decode(&envelope.event_type, envelope.schema_version, &envelope.data)?;
    let owner = envelope.owner.as_str();
    let service = envelope.service.as_str();
    let at = envelope.recorded_at;
    let position = envelope.cursor.position;
    let id = event.connection_id().as_uuid();
    match &event {
        Event::ConnectionCreated { name, credential_kind, skill, .. } => {
            client
                .execute(
                    "INSERT INTO rm_connections (owner_id, connection_id, service, name, skill, credential_kind, \
                     credential_version, status, created_at, last_changed_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, 'active', $7, $7, $8) ON CONFLICT DO NOTHING",
                    &[
                        &owner,
                        &id,
                        &service,
                        &name.as_str(),
                        &skill.as_ref().map(|s| s.as_str()),
                        &credential_kind.as_str(),
                        &at,
                        &position,
                    ],
                )
                .await?;
            client
                .execute(
                    "INSERT INTO rm_services (owner_id, service, active_connections) VALUES ($1, $2, 1) \
                     ON CONFLICT (owner_id, service) DO UPDATE SET active_connections = rm_services.active_connections + 1",
                    &[&owner, &service],
                )
                .await?;
        }
        Event::AgentAssigned { agent_id, source, .. } => {
            client
                .execute(
                    "INSERT INTO rm_connection_agents (owner_id, connection_id, agent_id, service, source, since) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&owner, &id, &agent_id.as_str(), &service, &binding_source_name(*source), &at],
                )
                .await?;
            bump_agents(client, owner, service, id, 1).await?;
        }
        Event::AgentUnassigned { agent_id, .. } => {
            client
                .execute(
                    "DELETE FROM rm_connection_agents WHERE owner_id = $1 AND connection_id = $2 AND agent_id = $3",
                    &[&owner, &id, &agent_id.as_str()],
                )
                .await?;
            bump_agents(client, owner, service, id, -1).await?;
        }
        Event::CredentialRotated { credential_version, credential_kind, .. } => {
            client
                .execute(
                    "UPDATE rm_connections SET credential_version = $3, credential_kind = $4 \
                     WHERE owner_id = $1 AND connection_id = $2",
                    &[&owner, &id, &(*credential_version as i32), &credential_kind.as_str()],
                )
                .await?;
        }
        Event::DefaultSet { previous, .. } => {
            if let Some(previous) = previous {
                client
                    .execute(
                        "UPDATE rm_connections SET is_default = false, last_changed_at = $3, last_position = $4 \
                         WHERE owner_id = $1 AND connection_id = $2",
                        &[&owner, &previous.as_uuid(), &at, &position],
                    )
                    .await?;
            }
            client
                .execute(
                    "UPDATE rm_connections SET is_default = true WHERE owner_id = $1 AND connection_id = $2",
                    &[&owner, &id],
                )
                .await?;
            client
                .execute(
                    "UPDATE rm_services SET default_connection_id = $3 WHERE owner_id = $1 AND service = $2",
                    &[&owner, &service, &id],
                )
                .await?;
        }
        Event::DefaultCleared { .. } => {
            client
                .execute(
                    "UPDATE rm_connections SET is_default = false WHERE owner_id = $1 AND connection_id = $2",
                    &[&owner, &id],
                )
                .await?;
            client
                .execute(
                    "UPDATE rm_services SET default_connection_id = NULL WHERE owner_id = $1 AND service = $2",
                    &[&owner, &service],
                )
                .await?;
        }
        Event::ConnectionRevoked { .. } => {
            client
                .execute(
                    "UPDATE rm_connections SET status = 'revoked' WHERE owner_id = $1 AND connection_id = $2",
                    &[&owner, &id],
                )
                .await?;
            client
                .execute(
                    "UPDATE rm_services SET active_connections = active_connections - 1 WHERE owner_id = $1 AND service = $2",
                    &[&owner, &service],
                )
                .await?;
        }
    }
    client
        .execute(
            "UPDATE rm_connections SET last_changed_at = $3, last_position = $4 WHERE owner_id = $1 AND connection_id = $2",
            &[&owner, &id, &at, &position],
        )
        .await?;
    client
        .execute(
            "INSERT INTO rm_changes (owner_id, transaction_id, position, event_type, connection_id, service, occurred_at) \
             VALUES ($1, $2::text::xid8, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[&owner, &envelope.cursor.transaction_id.to_string(), &position, &envelope.event_type, &id, &service, &at],
        )
        .await?;
    Ok(())
}

async fn bump_agents(
    client: &impl GenericClient,
    owner: &str,
    service: &str,
    connection_id: uuid::Uuid,
    delta: i32,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE rm_connections SET agent_count = agent_count + $3 WHERE owner_id = $1 AND connection_id = $2",
            &[&owner, &connection_id, &delta],
        )
        .await?;
    client
        .execute(
            "UPDATE rm_services SET agent_count = agent_count + $3 WHERE owner_id = $1 AND service = $2",
            &[&owner, &service, &delta],
        )
        .await?;
    Ok(())
}
