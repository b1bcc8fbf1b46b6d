//! A minimal agent runtime: resolves a credential whenever it "acts", and
//! shows the moment a revocation, rotation or rebinding takes it away.
//!
//! ```text
//! CONNECTIONS_URL=http://127.0.0.1:8080 \
//! CONNECTIONS_AGENT_TOKEN=$(CONNECTIONS_JWT_SECRET=$(cat .data/jwt.secret) \
//!     target/release/connections token --agent agent-1 --owner alice) \
//! cargo run -p connections-agent --example runtime -- google-calendar
//! ```
//!
//! The agent and the user it acts for come from the token; the NATS servers
//! and subject prefix from the server, with the NATS credentials.

use std::time::Duration;

use connections_agent::{AgentClient, AgentConfig, ResolveError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: runtime <service>  (env: CONNECTIONS_AGENT_TOKEN, required: an agent token from \
        `connections token --agent A --owner U`; CONNECTIONS_URL, default http://127.0.0.1:8080)";
    let (Some(service), None) = (std::env::args().nth(1), std::env::args().nth(2)) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let Ok(token) = std::env::var("CONNECTIONS_AGENT_TOKEN") else {
        eprintln!("CONNECTIONS_AGENT_TOKEN is not set\n{USAGE}");
        std::process::exit(2);
    };
    let base = std::env::var("CONNECTIONS_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let client = AgentClient::connect(AgentConfig::new(base, token)).await?;
    println!("runtime for {}/{}: resolving {service}", client.owner(), client.agent());
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
