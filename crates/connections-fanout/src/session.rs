//! The skeleton of a single-leader task (the relay, the projector): a
//! session waits to lead its role, connects to NATS, and runs the task's
//! body; a session that fails is restarted after a bounded backoff, until
//! shutdown.

use tokio::sync::watch;

use crate::listener::{LogListener, Signals};
use crate::nats::{self, NatsAccess};
use crate::restarts::Restarts;
use crate::roles::RoleGuard;
use connections_wire::Names;

/// Who a single-leader task is and where it connects.
pub struct Led<'a> {
    /// The role it leads (a [`crate::roles`] name); also its name in logs.
    pub role: &'static str,
    /// The NATS client's connection name.
    pub client_name: &'static str,
    /// The deployment's names (the lock key comes from them).
    pub names: &'a Names,
    /// The database, for the leadership connection.
    pub database_url: &'a str,
    /// The NATS server and the service's credentials.
    pub nats: &'a NatsAccess,
    /// The process's signals (the listener feeds them; roles are recorded there).
    pub signals: &'a Signals,
}

/// What a session that leads holds. Leadership lasts while `listener` is
/// alive (check [`LogListener::is_alive`]) and ends when this is dropped.
pub struct Leader {
    /// The connection holding the role's lock, which also listens for the log's notifications.
    pub listener: LogListener,
    /// A NATS connection of its own.
    pub nats: async_nats::Client,
    _role: RoleGuard,
}

/// Why a session could not start leading.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The leadership connection failed.
    #[error("listener: {0}")]
    Listener(#[from] tokio_postgres::Error),
    /// NATS refused or failed the connection.
    #[error("nats: {0}")]
    Nats(String),
}

/// Runs `body` in leading sessions until `shutdown` turns true: each
/// session waits for the role, connects to NATS and hands both (and the
/// shutdown signal) to `body`, which returns `Ok` on shutdown and an error
/// to be restarted.
pub async fn run_led<E, F, Session>(led: Led<'_>, mut shutdown: watch::Receiver<bool>, mut body: F)
where
    E: std::fmt::Display + From<SessionError>,
    F: FnMut(Leader, watch::Receiver<bool>) -> Session,
    Session: std::future::Future<Output = Result<(), E>>,
{
    let mut restarts = Restarts::new();
    while !*shutdown.borrow() {
        restarts.session_starts();
        let ended = async {
            let listener =
                LogListener::connect(led.database_url, led.signals.clone()).await.map_err(SessionError::from)?;
            let key = led.names.lock_key(led.role);
            let lead = listener.lead(key, led.role, &led.signals.roles, &mut shutdown).await;
            let Some(role) = lead.map_err(SessionError::from)? else {
                return Ok(());
            };
            let client = nats::connect(led.nats, led.names, led.client_name)
                .await
                .map_err(|error| SessionError::Nats(error.to_string()))?;
            body(Leader { listener, nats: client, _role: role }, shutdown.clone()).await
        }
        .await;
        match ended {
            Ok(()) => break,
            Err(error) => restarts.after_failure(led.role, &error, &mut shutdown).await,
        }
    }
    tracing::info!(role = led.role, "stopped");
}
