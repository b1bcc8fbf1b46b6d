//! The issuer: the account signing key the service holds, and the user
//! JWTs it signs with it.

use std::fmt;

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::grant::{Grant, Permission};
use crate::{jwt, AuthError};

/// What `connections nats init` writes to `issuer.json` for the service:
/// the account its users belong to and the seed of a signing key of that
/// account.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssuerFile {
    /// The account's public key (`A…`).
    pub account: String,
    /// The seed of one of the account's signing keys (`SA…`).
    pub signing_key_seed: String,
}

/// Signs user JWTs for one account. `Debug` shows only public keys.
pub struct Issuer {
    account: String,
    signing_key: KeyPair,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("account", &self.account)
            .field("signing_key", &self.signing_key.public_key())
            .finish()
    }
}

#[derive(Serialize)]
struct UserNats<'a> {
    #[serde(rename = "pub")]
    publish: &'a Permission,
    #[serde(rename = "sub")]
    subscribe: &'a Permission,
    subs: i64,
    data: i64,
    payload: i64,
    issuer_account: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

impl Issuer {
    /// From the contents of an issuer file.
    pub fn from_json(json: &str) -> Result<Self, AuthError> {
        let file: IssuerFile = serde_json::from_str(json)
            .map_err(|_| AuthError::Malformed("the issuer file is not {account, signing_key_seed}"))?;
        Self::new(&file.account, &file.signing_key_seed)
    }

    /// From an account public key and a signing key seed.
    pub fn new(account: &str, signing_key_seed: &str) -> Result<Self, AuthError> {
        if !account.starts_with('A') || KeyPair::from_public_key(account).is_err() {
            return Err(AuthError::Malformed("the account is not an account public key (A…)"));
        }
        let signing_key = KeyPair::from_seed(signing_key_seed)
            .ok()
            .filter(|key| key.public_key().starts_with('A'))
            .ok_or(AuthError::Malformed("the signing key is not an account seed (SA…)"))?;
        Ok(Self { account: account.to_owned(), signing_key })
    }

    /// The account's public key.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A user JWT for `user_public_key` with `grant`'s rights, issued at
    /// `now` and valid until `expires_at` (seconds since the epoch; `None`:
    /// no expiry).
    pub fn issue(
        &self,
        grant: &Grant,
        user_public_key: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<String, AuthError> {
        check_user_key(user_public_key)?;
        let nats = UserNats {
            publish: &grant.publish,
            subscribe: &grant.subscribe,
            subs: grant.max_subscriptions,
            data: -1,
            payload: -1,
            issuer_account: &self.account,
            kind: "user",
            version: 2,
        };
        jwt::encode(&self.signing_key, user_public_key, &grant.name, now, expires_at, &nats)
    }
}

/// Checks that `key` is a NATS user public key (`U…`).
pub fn check_user_key(key: &str) -> Result<(), AuthError> {
    if key.starts_with('U') && KeyPair::from_public_key(key).is_ok() {
        Ok(())
    } else {
        Err(AuthError::Malformed("not a NATS user public key (U…)"))
    }
}

/// A new user key pair: (public key, seed).
pub fn new_user_key() -> (String, String) {
    let key = KeyPair::new_user();
    let seed = key.seed().unwrap_or_default();
    (key.public_key(), seed)
}

/// A NATS credentials file (what `nats` tools and every client library
/// read): the JWT and the user seed.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use connections_wire::Names;

    #[test]
    fn a_runtime_jwt_carries_its_grant_the_account_and_the_expiry() {
        let account = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let issuer = Issuer::new(&account.public_key(), &signing.seed().expect("seed")).expect("issuer");
        let (user, _) = new_user_key();
        let names = Names::new("p").expect("prefix");
        let token = issuer.issue(&Grant::runtime(&names, "alice", "a1"), &user, 100, Some(400)).expect("issue");
        let claims = jwt::decode(&token).expect("decode");
        assert_eq!(claims["iss"], signing.public_key());
        assert_eq!(claims["sub"], user);
        assert_eq!(claims["exp"], 400);
        assert_eq!(claims["nats"]["issuer_account"], account.public_key());
        assert_eq!(claims["nats"]["pub"], serde_json::json!({"allow": ["p.v2.sync.alice.a1"]}));
        assert_eq!(claims["nats"]["sub"]["allow"][1], "p.v2.notices.alice.connection.*");
        assert!(!format!("{issuer:?}").contains(&signing.seed().expect("seed")));
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        assert!(Issuer::new(&user.public_key(), &account.seed().expect("seed")).is_err());
        assert!(Issuer::new(&account.public_key(), &user.seed().expect("seed")).is_err());
        assert!(check_user_key(&account.public_key()).is_err());
        assert!(check_user_key("Unot-a-key").is_err());
        assert!(check_user_key(&user.public_key()).is_ok());
    }
}
