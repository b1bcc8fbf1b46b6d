//! `connections serve`: migrate, then serve HTTP, relay the log to JetStream
//! and project it, until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use connections_api::runtime_nats::RuntimeNats;
use connections_api::{router, AppState};
use connections_fanout::nats::NatsAccess;
use connections_fanout::relay::{self, RelayConfig};
use connections_fanout::Signals;
use connections_projections::projector::{self, ProjectorConfig};
use tokio::sync::watch;

use crate::config::{self, Config, NatsAuth};

/// Runs the server. Prints `listening on http://ADDR` on stdout once bound,
/// so that scripts and tests using port 0 can find it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let signals = Signals::new();
    let master_key = config::master_key()?;
    let authenticator = config::authenticator()?;
    let nats = match config::nats_auth()? {
        NatsAuth::Issued(issuer) => NatsAccess::secured(config.nats_url.clone(), issuer),
        NatsAuth::Insecure => {
            tracing::warn!(
                "CONNECTIONS_NATS_INSECURE: NATS without authentication; anyone who reaches it can read every \
                 event and publish into the service's subjects. Development only."
            );
            NatsAccess::insecure(config.nats_url.clone())
        }
    };
    let runtime_nats = RuntimeNats {
        names: config.names.clone(),
        urls: config.nats_public_urls.clone(),
        issuer: nats.issuer.clone(),
        ttl: config.runtime_ttl,
    };
    let database = connections_store::connect_pool(&config.database_url, config.pool_size)?;
    let state = AppState {
        database: database.clone(),
        master_key,
        authenticator,
        signals: signals.clone(),
        runtime_nats: Arc::new(runtime_nats),
    };
    connections_store::ensure_database(&config.database_url).await?;
    connections_store::migrate(&config.database_url).await?;

    let (shutdown, stopping) = watch::channel(false);
    let relay_config = RelayConfig::new(config.names.clone(), config.database_url.clone(), nats.clone());
    let relay = tokio::spawn(relay::run(database.clone(), relay_config, signals.clone(), stopping.clone()));
    let projector_config = ProjectorConfig::new(config.names.clone(), config.database_url.clone(), nats.clone());
    let projector = tokio::spawn(projector::run(database, projector_config, signals, stopping.clone()));
    let checkpoints = config
        .audit_checkpoint_every
        .map(|every| tokio::spawn(connections_audit::periodic::run(config.database_url.clone(), every, stopping)));

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    // Answers are small: send them at once instead of waiting on Nagle.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    tracing::info!(%address, nats_url = %config.nats_url, nats_auth = nats.issuer.is_some(), prefix = %config.names.prefix(), "serving");
    println!("listening on http://{address}");
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await;

    let _ = shutdown.send(true);
    for (name, task) in [("relay", relay), ("projector", projector)] {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(())) => tracing::info!(task = name, "stopped"),
            Ok(Err(error)) => tracing::error!(task = name, %error, "task failed"),
            Err(_) => tracing::error!(task = name, "did not stop within 10 s"),
        }
    }
    if let Some(checkpoints) = checkpoints {
        // A checkpoint being taken is abandoned: nothing is stored half-way.
        checkpoints.abort();
    }
    served?;
    tracing::info!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}
