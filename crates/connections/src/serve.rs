//! `connections serve`: migrate, then serve HTTP, relay the log to JetStream
//! and project it, until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use connections_api::providers::Providers;
use connections_api::runtime_nats::RuntimeNats;
use connections_api::{router, AppState, Lifecycle, ReportLimit, Settings, StreamLimit};
use connections_fanout::nats::NatsAccess;
use connections_fanout::relay::{self, RelayConfig};
use connections_fanout::Signals;
use connections_projections::projector::{self, ProjectorConfig};
use tokio::sync::watch;

use crate::config::{self, Config, NatsAuth};

/// Runs the server. Prints `listening on http://ADDR` on stdout once bound,
/// so that scripts and tests using port 0 can find it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Bound first: the instance is named after the address it really has
    // (with port 0, the one picked).
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
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
    // Three pools, so that no kind of work can starve another: commands
    // and resolves; reads (read API, history, SSE, min_position); the
    // projector and housekeeping.
    let database = connections_store::connect_named_pool(&config.database_url, config.pool_size, "commands")?;
    let reads = connections_store::connect_named_pool(&config.database_url, config.read_pool_size, "reads")?;
    let background = connections_store::connect_named_pool(&config.database_url, 4, "background")?;
    let providers = match &config.providers_file {
        Some(path) => {
            Providers::load(path).with_context(|| format!("CONNECTIONS_PROVIDERS_FILE {}", path.display()))?
        }
        None => Providers::none(),
    };
    // The instance's own NATS connection, for readiness, metrics and the
    // urgent notices of its commands (the relay and projector connect when
    // they lead). It starts even when NATS is down and keeps trying: the
    // instance then serves, but is not ready.
    let probe = connections_fanout::nats::connect_in_background(&nats, &config.names, "connections-server").await?;
    let instance = config.instance.clone().unwrap_or_else(|| address.to_string());
    let (shutdown, _) = watch::channel(false);
    let lifecycle = Lifecycle {
        instance: instance.as_str().into(),
        stopping: Arc::new(shutdown),
        urgent_notices: Some(connections_fanout::UrgentNotices::new(
            probe.clone(),
            config.names.clone(),
            signals.stored_notices.clone(),
        )),
        nats_connected: Some(Arc::new(move || probe.connection_state() == async_nats::connection::State::Connected)),
    };
    let state = AppState {
        lifecycle: lifecycle.clone(),
        database: database.clone(),
        reads,
        master_key,
        authenticator,
        signals: signals.clone(),
        runtime_nats: Arc::new(runtime_nats),
        settings: Arc::new(Settings {
            idempotency_ttl: config.idempotency_ttl,
            streams: StreamLimit::new(config.streams_per_user),
            reports: ReportLimit::new(config.reports_per_minute),
            providers,
            refreshes: Default::default(),
            upkeep: config.upkeep.clone(),
            commit_groups: Arc::new(connections_api::groups::CommitGroups::new(config.commit_group)),
        }),
    };
    connections_store::ensure_database(&config.database_url).await?;
    connections_store::migrate(&config.database_url).await?;

    let stopping = lifecycle.stopping.subscribe();
    let mut relay_config = RelayConfig::new(config.names.clone(), config.database_url.clone(), nats.clone());
    relay_config.replicas = config.nats_replicas;
    let relay = tokio::spawn(relay::run(background.clone(), relay_config, signals.clone(), stopping.clone()));
    let mut projector_config = ProjectorConfig::new(config.names.clone(), config.database_url.clone(), nats.clone());
    projector_config.pace = config.projector_pace;
    let database_for_expiry = background.clone();
    let projector = tokio::spawn(projector::run(background, projector_config, signals, stopping.clone()));
    let expiry =
        tokio::spawn(expire_idempotency_records(database_for_expiry, config.idempotency_ttl, stopping.clone()));
    let checkpoints = config.audit_checkpoint_every.map(|every| {
        tokio::spawn(connections_audit::periodic::run(config.database_url.clone(), every, stopping.clone()))
    });

    let upkeep = tokio::spawn(connections_api::upkeep::run(
        state.clone(),
        config.database_url.clone(),
        config.names.lock_key(connections_fanout::roles::UPKEEP),
        stopping.clone(),
    ));

    // Answers are small: send them at once instead of waiting on Nagle.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    tracing::info!(%address, %instance, nats_url = %config.nats_url, nats_auth = nats.issuer.is_some(), prefix = %config.names.prefix(), "serving");
    println!("listening on http://{address}");
    // On SIGTERM or SIGINT: stop accepting, become not ready, let every
    // background task give up its role at once (another instance takes
    // over without waiting for a lease), and finish the requests in flight
    // (at most `shutdown_grace`; change streams end at once).
    let signalled = lifecycle.clone();
    let drain = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        signalled.stopping.send_replace(true);
    });
    let grace = async {
        lifecycle.stopped().await;
        tokio::time::sleep(config.shutdown_grace).await;
    };
    let served = tokio::select! {
        served = drain => served,
        _ = grace => {
            tracing::warn!(grace = ?config.shutdown_grace, "requests still in flight after the grace period; closing them");
            Ok(())
        }
    };
    lifecycle.stopping.send_replace(true);
    for (name, task) in [("relay", relay), ("projector", projector), ("upkeep", upkeep)] {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(())) => tracing::info!(task = name, "stopped"),
            Ok(Err(error)) => tracing::error!(task = name, %error, "task failed"),
            Err(_) => tracing::error!(task = name, "did not stop within 10 s"),
        }
    }
    expiry.abort();
    if let Some(checkpoints) = checkpoints {
        // A checkpoint being taken is abandoned: nothing is stored half-way.
        checkpoints.abort();
    }
    served?;
    tracing::info!("server stopped");
    Ok(())
}

/// Deletes expired idempotency records every tenth of their lifetime (at
/// most hourly); they are never replayed once expired, deleting them keeps
/// the table small.
async fn expire_idempotency_records(
    database: connections_store::Database,
    ttl: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let every = (ttl / 10).min(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopping.changed() => return,
        }
        let expired = match database.pool().get().await {
            Ok(client) => connections_store::IdempotencyClaim::expire(&client, ttl).await,
            Err(error) => Err(error.into()),
        };
        match expired {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired idempotency records deleted"),
            Err(error) => tracing::warn!(%error, "deleting expired idempotency records failed"),
        }
    }
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
