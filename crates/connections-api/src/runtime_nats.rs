//! NATS credentials for agent runtimes: a user JWT, issued with the
//! deployment's account signing key, that lets one (owner, agent) subscribe
//! to its own notices and nothing else (`connections_natsauth::Grant::runtime`).

use std::sync::Arc;
use std::time::Duration;

use connections_natsauth::{check_user_key, new_user_key, Grant, Issuer};
use connections_wire::{Names, RuntimeCredentials};

use crate::auth::AuthenticatedAgent;
use crate::problem::ApiError;

/// How runtimes reach NATS.
#[derive(Debug, Clone)]
pub struct RuntimeNats {
    /// The deployment's names.
    pub names: Names,
    /// The NATS URLs handed to runtimes.
    pub urls: Vec<String>,
    /// The account signing key; `None` when NATS runs without authentication
    /// (development): runtimes then connect without credentials.
    pub issuer: Option<Arc<Issuer>>,
    /// How long issued credentials live (never past the agent token).
    pub ttl: Duration,
}

impl RuntimeNats {
    /// Credentials for `agent`, for `public_key` if given (else a fresh key
    /// pair whose seed is returned once), at `now` (seconds since the epoch).
    pub fn issue(
        &self,
        agent: &AuthenticatedAgent,
        public_key: Option<&str>,
        now: i64,
    ) -> Result<RuntimeCredentials, ApiError> {
        let (owner, agent_id) = (agent.owner.as_str(), agent.agent.as_str());
        if let Some(key) = public_key {
            check_user_key(key).map_err(|e| ApiError::invalid("public_key", e))?;
        }
        let subscribe = Grant::runtime_subjects(&self.names, owner, agent_id);
        let (jwt, seed, expires_at) = match &self.issuer {
            None => (None, None, None),
            Some(issuer) => {
                let (public_key, seed) = match public_key {
                    Some(key) => (key.to_owned(), None),
                    None => {
                        let (public_key, seed) = new_user_key();
                        (public_key, Some(seed))
                    }
                };
                let expires_at = (now + self.ttl.as_secs() as i64).min(agent.expires_at);
                let jwt = issuer
                    .issue(&Grant::runtime(&self.names, owner, agent_id), &public_key, now, Some(expires_at))
                    .map_err(|e| ApiError::Internal(Box::new(e)))?;
                (Some(jwt), seed, chrono::DateTime::from_timestamp(expires_at, 0))
            }
        };
        Ok(RuntimeCredentials {
            jwt,
            seed,
            expires_at,
            nats_urls: self.urls.clone(),
            prefix: self.names.prefix().to_owned(),
            owner: owner.to_owned(),
            agent: agent_id.to_owned(),
            subscribe,
        })
    }
}
