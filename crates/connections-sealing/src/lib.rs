//! Credentials and their sealing.
//!
//! A [`Credential`] holds plaintext secrets in [`Secret`] fields that redact
//! themselves in `Debug` and have no `Display` or `Serialize`: the only ways
//! out are [`Secret::expose`] and sealing. [`Credential::parse`] turns
//! untrusted JSON into a credential with errors that name fields, never values.
//!
//! Sealing is envelope encryption with AES-256-SIV: a [`MasterKey`] wraps a
//! fresh [`DataKey`] per connection, and the data key seals each credential
//! version with associated data binding it to (connection, owner, version).
//! Destroying the wrapped data key makes every sealed version unrecoverable.

mod credential;
mod envelope;
mod fingerprint;
mod keys;
mod secret;

pub use credential::{Credential, CredentialError, MAX_CREDENTIAL_BYTES};
pub use envelope::{open, seal, SealError, SealedCredential};
pub use fingerprint::FingerprintKey;
pub use keys::{random_token, DataKey, KeyError, MasterKey, WrappedDataKey};
pub use secret::Secret;
