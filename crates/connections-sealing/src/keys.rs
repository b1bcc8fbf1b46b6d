//! The master key and per-connection data keys.

use std::fmt;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::Engine;
use connections_domain::ConnectionId;

/// The length of an AES-256-SIV key (two 256-bit halves).
pub(crate) const KEY_BYTES: usize = 64;

/// The format byte of a wrapped data key: AES-256-SIV, headers as below.
const WRAP_FORMAT_V1: u8 = 1;
const WRAP_CONTEXT: &[u8] = b"connections/data-key/v1";

/// Why a key could not be loaded or unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The master key is not base64 of exactly 64 bytes.
    #[error("master key must be base64 of exactly {KEY_BYTES} bytes")]
    MalformedMasterKey,
    /// The master key id is empty or not printable ASCII.
    #[error("master key id must be 1-64 printable ASCII characters")]
    MalformedKeyId,
    /// The wrapped key was made with another master key.
    #[error("data key is wrapped by master key {0:?}, which is not loaded")]
    UnknownMasterKey(String),
    /// Two keys of a keyring have the same id.
    #[error("master key id {0:?} appears twice in the keyring")]
    DuplicateKeyId(String),
    /// The wrapped key failed authentication (tampered, or moved to another connection).
    #[error("data key failed to unwrap")]
    UnwrapFailed,
    /// The operating system's random source failed.
    #[error("random source unavailable")]
    Random,
}

/// The key that wraps every new data key, identified by a key id, with the
/// previous master keys it still unwraps with (a keyring, for rotation: a
/// wrapped key names the id it was wrapped under). Purpose keys
/// (fingerprints) are derived from a separate derivation material, by
/// default this key's own, so that they survive a rotation. `Debug` shows
/// only ids.
#[derive(Clone)]
pub struct MasterKey {
    key_id: String,
    bytes: [u8; KEY_BYTES],
    previous: Vec<(String, [u8; KEY_BYTES])>,
    derivation: [u8; KEY_BYTES],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MasterKey").field("key_id", &self.key_id).field("previous", &previous).finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Loads a master key from its base64 form.
    pub fn from_base64(key_id: &str, encoded: &str) -> Result<Self, KeyError> {
        let valid_id = !key_id.is_empty() && key_id.len() <= 64 && key_id.chars().all(|c| c.is_ascii_graphic());
        if !valid_id {
            return Err(KeyError::MalformedKeyId);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| KeyError::MalformedMasterKey)?;
        let bytes: [u8; KEY_BYTES] = decoded.try_into().map_err(|_| KeyError::MalformedMasterKey)?;
        Ok(Self { key_id: key_id.to_owned(), bytes, previous: Vec::new(), derivation: bytes })
    }

    /// This key as the current one of a keyring that also unwraps with
    /// `previous` (data keys wrapped under them before a rotation).
    pub fn with_previous(mut self, previous: Vec<MasterKey>) -> Result<Self, KeyError> {
        for key in previous {
            if key.key_id == self.key_id || self.previous.iter().any(|(id, _)| *id == key.key_id) {
                return Err(KeyError::DuplicateKeyId(key.key_id));
            }
            self.previous.push((key.key_id, key.bytes));
        }
        Ok(self)
    }

    /// Purpose keys derived from `root`'s material instead of this key's:
    /// after a rotation, fingerprints and the like stay comparable with
    /// those made before it.
    pub fn deriving_from(mut self, root: &MasterKey) -> Self {
        self.derivation = root.bytes;
        self
    }

    /// Every key id this keyring unwraps, the current one first.
    pub fn key_ids(&self) -> Vec<&str> {
        std::iter::once(self.key_id.as_str()).chain(self.previous.iter().map(|(id, _)| id.as_str())).collect()
    }

    /// The material of key `id`, if loaded.
    fn material(&self, id: &str) -> Option<&[u8; KEY_BYTES]> {
        if id == self.key_id {
            return Some(&self.bytes);
        }
        self.previous.iter().find(|(known, _)| known == id).map(|(_, bytes)| bytes)
    }

    /// A fresh random master key, base64-encoded (for `ops/run` and tests).
    pub fn generate_base64() -> Result<String, KeyError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::getrandom(&mut bytes).map_err(|_| KeyError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// The material purpose keys are derived from.
    pub(crate) fn derivation(&self) -> &[u8; KEY_BYTES] {
        &self.derivation
    }

    /// The key id recorded next to every data key it wraps.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Wraps a data key for one connection.
    pub fn wrap(&self, data_key: &DataKey, connection_id: ConnectionId) -> WrappedDataKey {
        let mut cipher = Aes256Siv::new((&self.bytes).into());
        let headers = wrap_headers(&self.key_id, connection_id);
        let sealed = cipher.encrypt(headers, &data_key.bytes).expect("AES-SIV encryption of 64 bytes cannot fail");
        let mut bytes = Vec::with_capacity(1 + sealed.len());
        bytes.push(WRAP_FORMAT_V1);
        bytes.extend_from_slice(&sealed);
        WrappedDataKey { master_key_id: self.key_id.clone(), bytes }
    }

    /// Unwraps a connection's data key with the key it names (the current
    /// one or a previous one); a key id not in the keyring fails closed.
    pub fn unwrap(&self, wrapped: &WrappedDataKey, connection_id: ConnectionId) -> Result<DataKey, KeyError> {
        let material = self
            .material(&wrapped.master_key_id)
            .ok_or_else(|| KeyError::UnknownMasterKey(wrapped.master_key_id.clone()))?;
        let Some((&WRAP_FORMAT_V1, sealed)) = wrapped.bytes.split_first() else {
            return Err(KeyError::UnwrapFailed);
        };
        let mut cipher = Aes256Siv::new(material.into());
        let plain = cipher
            .decrypt(wrap_headers(&wrapped.master_key_id, connection_id), sealed)
            .map_err(|_| KeyError::UnwrapFailed)?;
        let bytes: [u8; KEY_BYTES] = plain.try_into().map_err(|_| KeyError::UnwrapFailed)?;
        Ok(DataKey { bytes })
    }
}

fn wrap_headers(key_id: &str, connection_id: ConnectionId) -> [Vec<u8>; 3] {
    [WRAP_CONTEXT.to_vec(), key_id.as_bytes().to_vec(), connection_id.as_uuid().as_bytes().to_vec()]
}

/// One connection's data key, in plaintext. Lives only in memory while
/// sealing or opening. `Debug` is redacted.
pub struct DataKey {
    pub(crate) bytes: [u8; KEY_BYTES],
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::getrandom(&mut bytes).map_err(|_| KeyError::Random)?;
        Ok(Self { bytes })
    }
}

/// A data key as stored: sealed by the master key named by `master_key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDataKey {
    /// The id of the master key that wrapped it.
    pub master_key_id: String,
    /// Format byte followed by the AES-SIV output.
    pub bytes: Vec<u8>,
}

/// A fresh random token: 32 bytes from the operating system, base64url
/// without padding (43 characters), e.g. an OAuth `state`.
pub fn random_token() -> Result<String, KeyError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_base64("k1", &MasterKey::generate_base64().expect("random")).expect("valid key")
    }

    #[test]
    fn a_keyring_unwraps_under_every_loaded_id_wraps_under_the_current_and_fails_closed_otherwise() {
        let old = master();
        let new = MasterKey::from_base64("k2", &MasterKey::generate_base64().expect("random")).expect("valid key");
        let id = ConnectionId::from_uuid(uuid_from(7));
        let data_key = DataKey::generate().expect("random");
        let wrapped_old = old.wrap(&data_key, id);
        let ring = new.clone().with_previous(vec![old.clone()]).expect("distinct ids").deriving_from(&old);
        assert_eq!(ring.key_ids(), vec!["k2", "k1"]);
        assert_eq!(ring.unwrap(&wrapped_old, id).expect("previous key").bytes, data_key.bytes);
        let rewrapped = ring.wrap(&data_key, id);
        assert_eq!(rewrapped.master_key_id, "k2");
        assert_eq!(new.unwrap(&rewrapped, id).expect("current key").bytes, data_key.bytes);
        // The old key removed: its wrapped keys fail closed, naming the id.
        assert_eq!(new.unwrap(&wrapped_old, id).map(|_| ()), Err(KeyError::UnknownMasterKey("k1".into())));
        // A wrapped key relabelled with another loaded id does not open.
        let relabelled = WrappedDataKey { master_key_id: "k2".into(), bytes: wrapped_old.bytes.clone() };
        assert_eq!(ring.unwrap(&relabelled, id).map(|_| ()), Err(KeyError::UnwrapFailed));
        // Purpose keys survive the rotation when derived from the old material.
        let purpose = |key: &MasterKey| key.fingerprint_key("idempotency").fingerprint(&[b"x"]);
        assert_eq!(purpose(&ring), purpose(&old));
        assert_ne!(purpose(&new), purpose(&old));
        assert_eq!(new.with_previous(vec![old.clone(), old]).map(|_| ()), Err(KeyError::DuplicateKeyId("k1".into())));
        assert!(!format!("{ring:?}").contains(&format!("{:?}", data_key.bytes)));
    }

    #[test]
    fn wrapped_key_opens_only_for_its_connection_and_master_key() {
        let master = master();
        let data_key = DataKey::generate().expect("random");
        let a = ConnectionId::from_uuid(uuid_from(1));
        let b = ConnectionId::from_uuid(uuid_from(2));
        let wrapped = master.wrap(&data_key, a);
        assert_eq!(master.unwrap(&wrapped, a).expect("unwrap for its own connection").bytes, data_key.bytes);
        assert_eq!(master.unwrap(&wrapped, b).err(), Some(KeyError::UnwrapFailed));
        let other = MasterKey::from_base64("k1", &MasterKey::generate_base64().expect("random")).expect("valid key");
        assert_eq!(other.unwrap(&wrapped, a).err(), Some(KeyError::UnwrapFailed));
    }

    #[test]
    fn master_key_debug_shows_only_its_id() {
        let debug = format!("{:?}", master());
        assert!(debug.contains("k1") && !debug.contains("bytes"), "{debug}");
    }

    #[test]
    fn malformed_master_keys_are_refused() {
        assert_eq!(MasterKey::from_base64("k1", "bm90IDY0IGJ5dGVz").err(), Some(KeyError::MalformedMasterKey));
        assert_eq!(MasterKey::from_base64("", "x").err(), Some(KeyError::MalformedKeyId));
    }

    fn uuid_from(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }
}
