//! `connections serve`: migrate, then serve HTTP until SIGINT/SIGTERM.

use connections_api::{router, AppState};

use crate::config::{self, Config};

/// Runs the server. Prints `listening on http://ADDR` on stdout once bound,
/// so that scripts and tests using port 0 can find it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let state = AppState {
        database: connections_store::connect_pool(&config.database_url, config.pool_size)?,
        master_key: config::master_key()?,
        authenticator: config::authenticator()?,
    };
    connections_store::ensure_database(&config.database_url).await?;
    connections_store::migrate(&config.database_url).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, nats_url = %config.nats_url, "serving");
    println!("listening on http://{address}");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
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
