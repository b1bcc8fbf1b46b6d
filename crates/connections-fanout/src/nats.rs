//! Connecting to NATS as the service: with the service's own identity (a
//! user JWT it issues itself, see `connections-natsauth`), and with settings
//! that notice a dead server quickly.

use std::sync::Arc;
use std::time::Duration;

use connections_natsauth::{new_user_key, AuthError, Grant, Issuer};
use connections_wire::Names;

/// Where NATS is and how the service authenticates to it.
#[derive(Clone, Debug)]
pub struct NatsAccess {
    /// The server URL(s), comma-separated.
    pub url: String,
    /// The account signing key; `None` connects without credentials (the
    /// explicit insecure development mode).
    pub issuer: Option<Arc<Issuer>>,
}

impl NatsAccess {
    /// Authenticated access: the service issues its own user JWT.
    pub fn secured(url: impl Into<String>, issuer: Arc<Issuer>) -> Self {
        Self { url: url.into(), issuer: Some(issuer) }
    }

    /// Unauthenticated access (development only: anyone who reaches this
    /// NATS can read every event and publish into the service's subjects).
    pub fn insecure(url: impl Into<String>) -> Self {
        Self { url: url.into(), issuer: None }
    }
}

/// Connects to NATS as the service of `names`. The client pings every
/// second (the default 60 s is far too slow for anything that must fail
/// closed) and reconnects forever. With an issuer it presents a fresh user
/// JWT with [`Grant::service`] and receives replies on the service's own
/// inbox prefix, which nothing else may subscribe to.
pub async fn connect(access: &NatsAccess, names: &Names, name: &str) -> Result<async_nats::Client, ConnectError> {
    connect_as(access, &Grant::service(names), &names.service_inbox(), name).await
}

/// Connects with `grant`'s rights (when `access` has an issuer), receiving
/// replies under `inbox`.
pub async fn connect_as(
    access: &NatsAccess,
    grant: &Grant,
    inbox: &str,
    name: &str,
) -> Result<async_nats::Client, ConnectError> {
    options(access, grant, inbox, name)?.connect(servers(&access.url)).await.map_err(ConnectError::Nats)
}

/// Like [`connect`], but returns at once even when NATS is down, and keeps
/// trying in the background: for a connection whose state is reported
/// (readiness) rather than needed to start.
pub async fn connect_in_background(
    access: &NatsAccess,
    names: &Names,
    name: &str,
) -> Result<async_nats::Client, ConnectError> {
    options(access, &Grant::service(names), &names.service_inbox(), name)?
        .retry_on_initial_connect()
        .connect(servers(&access.url))
        .await
        .map_err(ConnectError::Nats)
}

/// The servers of a comma-separated list (the client tries each, and
/// learns the rest of a cluster from the one it reaches).
pub fn servers(urls: &str) -> Vec<&str> {
    urls.split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
}

fn options(
    access: &NatsAccess,
    grant: &Grant,
    inbox: &str,
    name: &str,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(issuer) = &access.issuer {
        let (public_key, seed) = new_user_key();
        let now = chrono::Utc::now().timestamp();
        let jwt = issuer.issue(grant, &public_key, now, None)?;
        let key = Arc::new(nkeys::KeyPair::from_seed(&seed).map_err(|e| AuthError::Key(e.to_string()))?);
        options = options
            .jwt(jwt, move |nonce| {
                let key = key.clone();
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            })
            .custom_inbox_prefix(inbox);
    }
    Ok(options
        .name(name)
        .ping_interval(Duration::from_secs(1))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5))))
}

/// Why the service could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Its own credentials could not be issued.
    #[error("issuing the service's NATS credentials: {0}")]
    Credentials(#[from] AuthError),
    /// NATS refused or could not be reached.
    #[error("{0}")]
    Nats(async_nats::ConnectError),
}
