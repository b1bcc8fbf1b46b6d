//! What every handler shares.

use std::sync::Arc;

use connections_fanout::Signals;
use connections_sealing::MasterKey;
use connections_store::Database;

use crate::auth::Authenticator;
use crate::runtime_nats::RuntimeNats;

/// The application state: the database, the master key, the token verifier.
#[derive(Clone)]
pub struct AppState {
    /// The Postgres pool.
    pub database: Database,
    /// The key that wraps every data key.
    pub master_key: Arc<MasterKey>,
    /// Verifies bearer tokens.
    pub authenticator: Arc<Authenticator>,
    /// Log activity: appends and projection progress (for `min_position` and SSE).
    pub signals: Signals,
    /// How agent runtimes reach NATS, and the issuer of their credentials.
    pub runtime_nats: Arc<RuntimeNats>,
}
