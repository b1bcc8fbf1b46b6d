//! Revoking a revoked connection's tokens at its OAuth provider (RFC 7009),
//! after the revocation here has committed and without making it wait.
//!
//! The revoking transaction queues the tokens in `upstream_revocations`,
//! sealed under a data key of their own as credential version 0 (which no
//! connection version has): the connection's own data key is destroyed as
//! for every revocation, and a crash between the commit and the call to the
//! provider loses nothing. The upkeep leader (`crate::upkeep`) calls the
//! provider, retries with backoff, and records the outcome as an
//! `upstream_revoked` event; the row and its key are then deleted.

use chrono::Utc;
use connections_domain::{Command, ConnectionId, OwnerId, ServiceName, UpstreamOutcome};
use connections_sealing::{open, seal, Credential, DataKey, MasterKey, SealedCredential, WrappedDataKey};
use connections_store::{PendingRevocation, StoreError, UpstreamRevocations};

use crate::commands::{execute_for_owner, CommandInput, Target};
use crate::oauth::{self, TokenKind};
use crate::state::AppState;

/// Whether revoking a connection of `service` with this credential calls
/// the provider: it has a revocation endpoint and this is an OAuth token set.
pub fn applies(app: &AppState, service: &ServiceName, credential: &Credential) -> bool {
    matches!(credential, Credential::Oauth2 { .. })
        && app.settings.providers.get(service).is_some_and(|p| p.revocation_endpoint.is_some())
}

/// Seals `credential` for the outbox under a fresh data key.
pub fn seal_for_outbox(
    master_key: &MasterKey,
    connection_id: ConnectionId,
    owner: &OwnerId,
    credential: &Credential,
) -> Result<(WrappedDataKey, SealedCredential), connections_sealing::SealError> {
    let data_key = DataKey::generate()?;
    let sealed = seal(&data_key, credential, connection_id, owner, UpstreamRevocations::SEALED_VERSION)?;
    Ok((master_key.wrap(&data_key, connection_id), sealed))
}

/// Queues tokens that were never sealed as a version (a refresh that lost
/// to a revocation) for revocation at the provider.
pub async fn discard(
    app: &AppState,
    connection_id: ConnectionId,
    owner: &OwnerId,
    service: &ServiceName,
    credential: &Credential,
) {
    if !applies(app, service, credential) {
        return;
    }
    let queued = async {
        let (wrapped, sealed) = seal_for_outbox(&app.master_key, connection_id, owner, credential)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let client = app.database.pool().get().await.map_err(StoreError::from)?;
        UpstreamRevocations::enqueue(&client, connection_id, owner, service, &wrapped, &sealed).await
    };
    if let Err(error) = queued.await {
        tracing::error!(%error, %connection_id, "could not queue a discarded refresh for revocation at the provider");
    }
}

/// One round: every queued revocation that is due is attempted once.
/// Returns how many were attempted.
pub async fn round(app: &AppState) -> Result<usize, StoreError> {
    let due = {
        let client = app.database.pool().get().await.map_err(StoreError::from)?;
        UpstreamRevocations::due(&client, 64).await?
    };
    let count = due.len();
    use futures::StreamExt;
    futures::stream::iter(due)
        .for_each_concurrent(app.settings.upkeep.concurrency, |pending| async move {
            if let Err(error) = attempt(app, pending).await {
                tracing::warn!(%error, "upstream revocation could not be recorded; it is retried");
            }
        })
        .await;
    Ok(count)
}

/// Calls the provider for one queued row; records the outcome or postpones.
async fn attempt(app: &AppState, pending: PendingRevocation) -> Result<(), StoreError> {
    let connection_id = pending.connection_id;
    let attempts = pending.attempts + 1;
    let owner = OwnerId::parse(pending.owner.clone()).map_err(|_| StoreError::Corrupt("owner".into()))?;
    let credential =
        app.master_key.unwrap(&pending.wrapped, connection_id).ok().and_then(|key| {
            open(&key, &pending.sealed, connection_id, &owner, UpstreamRevocations::SEALED_VERSION).ok()
        });
    let service = ServiceName::parse(pending.service.clone()).ok();
    let provider = service.as_ref().and_then(|s| app.settings.providers.get(s));
    let endpoint = provider.and_then(|p| p.revocation_endpoint.as_ref());
    let outcome = match (credential, provider, endpoint) {
        (Some(Credential::Oauth2 { access_token, refresh_token, .. }), Some(provider), Some(endpoint)) => {
            // The refresh token first: at most providers it ends the grant.
            let mut failed = None;
            for (token, kind) in
                refresh_token.iter().map(|t| (t, TokenKind::Refresh)).chain([(&access_token, TokenKind::Access)])
            {
                if let Err(error) = oauth::revoke(provider, endpoint, token, kind).await {
                    failed = Some(error);
                    break;
                }
            }
            match failed {
                None => Some(UpstreamOutcome::Revoked),
                Some(_) if attempts >= app.settings.upkeep.revoke_attempts => Some(UpstreamOutcome::GaveUp),
                Some(error) => {
                    let asked = error.retry_after.map(std::time::Duration::from_secs);
                    let pause = app.settings.upkeep.retry_after(attempts, asked);
                    let not_before = Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default();
                    let client = app.database.pool().get().await.map_err(StoreError::from)?;
                    UpstreamRevocations::postpone(&client, pending.revocation_id, not_before).await?;
                    None
                }
            }
        }
        // Unreadable (another master key) or no longer configured: nothing
        // can be sent; the row is not kept forever.
        _ => Some(UpstreamOutcome::GaveUp),
    };
    let Some(outcome) = outcome else {
        return Ok(());
    };
    let input = CommandInput {
        actor: owner,
        target: Target::Connection(connection_id),
        command: Command::RecordUpstreamRevocation { connection_id, outcome, attempts },
        credential: None,
        idempotency: None,
    };
    execute_for_owner(app, input, "upstream-revoker").await.map_err(|error| StoreError::Corrupt(error.to_string()))?;
    // Recorded: the tokens go. (A crash between the two records the outcome
    // twice at worst, never loses it.)
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    UpstreamRevocations::forget(&client, pending.revocation_id).await
}
