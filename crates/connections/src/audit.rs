//! `connections audit …`: read the history from the event log.

use clap::Subcommand;
use connections_domain::{ConnectionId, OwnerId};
use connections_store::{history, RecordedEvent};

/// Audit subcommands (more will follow: verify, as-of, who-could-use, export).
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Every event of a connection or of an owner, in log order, with time,
    /// actor and what changed (never secrets).
    History {
        /// A connection id.
        #[arg(long, conflicts_with = "owner", required_unless_present = "owner")]
        connection: Option<String>,
        /// A user id.
        #[arg(long)]
        owner: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an audit subcommand against `database_url`.
pub async fn run(command: AuditCommand, database_url: &str) -> anyhow::Result<()> {
    let AuditCommand::History { connection, owner, json } = command;
    let database = connections_store::connect_pool(database_url, 1)?;
    let client = database.pool().get().await?;
    let events = match (connection, owner) {
        (Some(connection), _) => {
            let id = ConnectionId::parse(&connection).map_err(|e| anyhow::anyhow!("--connection {e}"))?;
            history::connection_history(&client, id).await?
        }
        (None, Some(owner)) => {
            let owner = OwnerId::parse(owner).map_err(|e| anyhow::anyhow!("--owner {e}"))?;
            history::owner_history(&client, &owner).await?
        }
        (None, None) => anyhow::bail!("give --connection or --owner"),
    };
    for event in &events {
        if json {
            println!("{}", serde_json::to_string(&as_json(event))?);
        } else {
            println!(
                "{}  {:>8}  {:<20} {:<14} {}",
                event.recorded_at.to_rfc3339(),
                event.position,
                event.event_type,
                event.metadata["actor"].as_str().unwrap_or("?"),
                event.data
            );
        }
    }
    if !json && events.is_empty() {
        println!("(no events)");
    }
    Ok(())
}

fn as_json(event: &RecordedEvent) -> serde_json::Value {
    serde_json::json!({
        "recorded_at": event.recorded_at.to_rfc3339(),
        "position": event.position,
        "transaction_id": event.transaction_id,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "actor": event.metadata["actor"],
        "data": event.data,
    })
}
