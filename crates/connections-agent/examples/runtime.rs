//! A minimal agent runtime: resolves a credential whenever it "acts", and
//! shows the moment a revocation, rotation or rebinding takes it away.
//!
//! ```text
//! CONNECTIONS_URL=http://127.0.0.1:8080 \
//! CONNECTIONS_AGENT_TOKEN=$(connections token --agent agent-1 --owner alice) \
//! cargo run -p connections-agent --example runtime -- alice agent-1 google-calendar
//! ```

use std::time::Duration;

use connections_agent::{AgentClient, AgentConfig, ResolveError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(owner), Some(agent), Some(service)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: runtime <owner> <agent> <service>  (env: CONNECTIONS_URL, CONNECTIONS_AGENT_TOKEN, CONNECTIONS_NATS_URL, CONNECTIONS_NATS_PREFIX)");
        std::process::exit(2);
    };
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let config = AgentConfig::new(
        env("CONNECTIONS_URL", "http://127.0.0.1:8080"),
        std::env::var("CONNECTIONS_AGENT_TOKEN")?,
        env("CONNECTIONS_NATS_URL", "nats://127.0.0.1:4222"),
        env("CONNECTIONS_NATS_PREFIX", "connections"),
        owner,
        agent,
    );
    let client = AgentClient::connect(config).await?;
    let mut last = None;
    for _ in 0..600 {
        let state = match client.resolve(&service).await {
            // Never print the secret itself: the kind and version are enough here.
            Ok(credential) => format!(
                "using connection {} v{} ({}, via {})",
                credential.connection_id,
                credential.credential_version,
                credential.expose()["kind"].as_str().unwrap_or("?"),
                credential.via
            ),
            Err(ResolveError::AuthorizationRequired(service)) => format!("no connection for {service}: ask the user"),
            Err(other) => format!("cannot act: {other}"),
        };
        if last.as_ref() != Some(&state) {
            println!("{state}");
            last = Some(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
