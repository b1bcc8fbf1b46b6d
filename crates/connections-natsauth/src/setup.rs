//! `connections nats init`: a fresh operator, a system account and the
//! service's account, as nats-server needs them to run in decentralized
//! (JWT) mode with a memory resolver — no `nsc`, no account server.

use nkeys::KeyPair;
use serde_json::json;

use crate::issuer::IssuerFile;
use crate::{jwt, AuthError};

/// Everything generated. Seeds are secrets; the JWTs and public keys are not.
pub struct Setup {
    /// The operator's seed (keep it offline: it can sign new accounts).
    pub operator_seed: String,
    /// The account's identity seed (keep it offline: it can re-sign the account).
    pub account_seed: String,
    /// What the service needs to issue users.
    pub issuer: IssuerFile,
    /// The nats-server configuration fragment (operator, system account,
    /// resolver with both accounts preloaded). Holds no secret.
    pub server_config: String,
}

impl Setup {
    /// Generates fresh keys, issued at `now` (seconds since the epoch).
    pub fn generate(now: i64) -> Result<Self, AuthError> {
        let seed = |key: &KeyPair| key.seed().map_err(|e| AuthError::Key(e.to_string()));
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let operator_jwt = jwt::encode(
            &operator,
            &operator.public_key(),
            "connections-operator",
            now,
            None,
            &json!({"system_account": system.public_key(), "type": "operator", "version": 2}),
        )?;
        let base_limits = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1});
        let system_jwt = jwt::encode(
            &operator,
            &system.public_key(),
            "SYS",
            now,
            None,
            &json!({"limits": base_limits, "type": "account", "version": 2}),
        )?;
        let mut limits = base_limits.clone();
        for (key, value) in [("mem_storage", -1), ("disk_storage", -1), ("streams", -1), ("consumer", -1)] {
            limits[key] = json!(value);
        }
        let account_jwt = jwt::encode(
            &operator,
            &account.public_key(),
            "CONNECTIONS",
            now,
            None,
            &json!({
                "limits": limits,
                "signing_keys": [signing.public_key()],
                // A user JWT without permissions gets none.
                "default_permissions": {"pub": {"deny": [">"]}, "sub": {"deny": [">"]}},
                "type": "account",
                "version": 2,
            }),
        )?;
        let server_config = format!(
            "# Written by `connections nats init`: nats-server in decentralized JWT mode.\n\
             # Holds no secret. Include it, or pass it with -c.\n\
             operator: {operator_jwt}\n\
             system_account: {system_pub}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {system_pub}: {system_jwt}\n  {account_pub}: {account_jwt}\n}}\n",
            system_pub = system.public_key(),
            account_pub = account.public_key(),
        );
        Ok(Self {
            operator_seed: seed(&operator)?,
            account_seed: seed(&account)?,
            issuer: IssuerFile { account: account.public_key(), signing_key_seed: seed(&signing)? },
            server_config,
        })
    }
}
