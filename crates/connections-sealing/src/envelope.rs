//! Sealing a credential with its connection's data key.

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use connections_domain::{ConnectionId, OwnerId};

use crate::credential::{Credential, CredentialError};
use crate::keys::{DataKey, KeyError};

/// The format byte of a sealed credential: AES-256-SIV with a 16-byte random
/// nonce as the last associated-data header. A new cipher gets a new byte.
const SEAL_FORMAT_V1: u8 = 1;
const SEAL_CONTEXT: &[u8] = b"connections/credential/v1";
const NONCE_BYTES: usize = 16;

/// A sealed credential as stored: format byte, nonce, AES-SIV output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCredential(pub Vec<u8>);

/// Why a credential could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The ciphertext failed authentication: tampered, or moved to another
    /// connection, owner or version.
    #[error("sealed credential failed to open")]
    OpenFailed,
    /// The stored bytes decrypted but are not a credential (a bug or tampering).
    #[error("sealed credential is malformed: {0}")]
    Malformed(#[from] CredentialError),
    /// A key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Seals `credential` for (connection, owner, version).
pub fn seal(
    data_key: &DataKey,
    credential: &Credential,
    connection_id: ConnectionId,
    owner: &OwnerId,
    credential_version: u32,
) -> Result<SealedCredential, SealError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut nonce).map_err(|_| KeyError::Random)?;
    let plaintext = serde_json::to_vec(&credential.expose_json()).expect("a JSON value always serializes");
    let mut cipher = Aes256Siv::new((&data_key.bytes).into());
    let sealed = cipher
        .encrypt(headers(connection_id, owner, credential_version, &nonce), &plaintext)
        .expect("AES-SIV encryption of a bounded credential cannot fail");
    let mut bytes = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
    bytes.push(SEAL_FORMAT_V1);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    Ok(SealedCredential(bytes))
}

/// Opens a credential sealed by [`seal`] for the same (connection, owner, version).
pub fn open(
    data_key: &DataKey,
    sealed: &SealedCredential,
    connection_id: ConnectionId,
    owner: &OwnerId,
    credential_version: u32,
) -> Result<Credential, SealError> {
    let Some((&SEAL_FORMAT_V1, rest)) = sealed.0.split_first() else {
        return Err(SealError::OpenFailed);
    };
    if rest.len() < NONCE_BYTES {
        return Err(SealError::OpenFailed);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
    let mut cipher = Aes256Siv::new((&data_key.bytes).into());
    let plaintext = cipher
        .decrypt(headers(connection_id, owner, credential_version, nonce), ciphertext)
        .map_err(|_| SealError::OpenFailed)?;
    let value: serde_json::Value = serde_json::from_slice(&plaintext).map_err(|_| SealError::OpenFailed)?;
    Ok(Credential::parse(&value)?)
}

fn headers(connection_id: ConnectionId, owner: &OwnerId, credential_version: u32, nonce: &[u8]) -> [Vec<u8>; 5] {
    [
        SEAL_CONTEXT.to_vec(),
        connection_id.as_uuid().as_bytes().to_vec(),
        owner.as_str().as_bytes().to_vec(),
        credential_version.to_be_bytes().to_vec(),
        nonce.to_vec(),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn setup() -> (DataKey, Credential, ConnectionId, OwnerId) {
        let credential = Credential::parse(&json!({"kind":"api_key","key":"canary-seal"})).expect("valid credential");
        let connection_id = ConnectionId::from_uuid(uuid::Uuid::from_u128(7));
        (DataKey::generate().expect("random"), credential, connection_id, OwnerId::parse("alice").expect("valid owner"))
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let (key, credential, id, owner) = setup();
        let sealed = seal(&key, &credential, id, &owner, 1).expect("seal");
        assert!(!sealed.0.windows(b"canary-seal".len()).any(|w| w == b"canary-seal"));
        assert_eq!(open(&key, &sealed, id, &owner, 1), Ok(credential));
    }

    #[test]
    fn ciphertext_moved_to_another_connection_owner_or_version_fails_to_open() {
        let (key, credential, id, owner) = setup();
        let sealed = seal(&key, &credential, id, &owner, 1).expect("seal");
        let other_id = ConnectionId::from_uuid(uuid::Uuid::from_u128(8));
        let bob = OwnerId::parse("bob").expect("valid owner");
        assert_eq!(open(&key, &sealed, other_id, &owner, 1), Err(SealError::OpenFailed));
        assert_eq!(open(&key, &sealed, id, &bob, 1), Err(SealError::OpenFailed));
        assert_eq!(open(&key, &sealed, id, &owner, 2), Err(SealError::OpenFailed));
        let mut tampered = sealed.clone();
        let last = tampered.0.len() - 1;
        tampered.0[last] ^= 1;
        assert_eq!(open(&key, &tampered, id, &owner, 1), Err(SealError::OpenFailed));
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let (key, credential, id, owner) = setup();
        let a = seal(&key, &credential, id, &owner, 1).expect("seal");
        let b = seal(&key, &credential, id, &owner, 1).expect("seal");
        assert_ne!(a, b, "the nonce must make sealing non-deterministic");
    }
}
