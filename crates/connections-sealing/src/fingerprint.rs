//! Keyed fingerprints: HMAC-SHA-256 under a key derived from the master key
//! for one purpose. Where a hash of something that may contain a secret must
//! be stored (an idempotency record of a request carrying a credential), a
//! keyed hash keeps a database dump from confirming a guessed secret: without
//! the master key nobody can recompute it.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::keys::MasterKey;

const BLOCK: usize = 64;
const DERIVE_CONTEXT: &[u8] = b"connections/derived-key/v1";

/// A key derived from the master key for one purpose. `Debug` is redacted.
#[derive(Clone)]
pub struct FingerprintKey {
    key: [u8; 32],
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey([REDACTED])")
    }
}

impl MasterKey {
    /// The fingerprint key for `purpose` (e.g. `"idempotency"`): HMAC of
    /// the purpose under the keyring's derivation material (the master
    /// key's own unless set with [`MasterKey::deriving_from`]), so each
    /// purpose has its own key and a rotation does not change it.
    pub fn fingerprint_key(&self, purpose: &str) -> FingerprintKey {
        FingerprintKey { key: hmac(self.derivation(), |inner| prefixed(inner, &[DERIVE_CONTEXT, purpose.as_bytes()])) }
    }
}

impl FingerprintKey {
    /// The keyed fingerprint of `parts` (each length-prefixed, so parts
    /// cannot be re-split to collide).
    pub fn fingerprint(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac(&self.key, |inner| prefixed(inner, parts))
    }

    /// A key of its own for one `scope` within this purpose (an owner, for
    /// credential fingerprints): fingerprints under two scopes' keys cannot
    /// be compared.
    pub fn for_scope(&self, scope: &[u8]) -> FingerprintKey {
        FingerprintKey { key: hmac(&self.key, |inner| prefixed(inner, &[DERIVE_CONTEXT, b"scope", scope])) }
    }
}

fn prefixed(hasher: &mut Sha256, parts: &[&[u8]]) {
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
}

/// HMAC-SHA-256 (RFC 2104) under `key` (at most one block long, which every
/// key here is) of the message `message` feeds to the inner hash.
fn hmac(key: &[u8], message: impl FnOnce(&mut Sha256)) -> [u8; 32] {
    debug_assert!(key.len() <= BLOCK);
    let mut padded = [0u8; BLOCK];
    padded[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(padded.map(|b| b ^ 0x36));
    message(&mut inner);
    let mut outer = Sha256::new();
    outer.update(padded.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac(b"Jefe", |inner| inner.update(b"what do ya want for nothing?"));
        let got: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn fingerprints_depend_on_the_master_key_and_the_purpose() {
        let a = MasterKey::from_base64("k1", &MasterKey::generate_base64().expect("key")).expect("key");
        let b = MasterKey::from_base64("k1", &MasterKey::generate_base64().expect("key")).expect("key");
        let parts: &[&[u8]] = &[b"POST", b"/v1/connections", b"{\"key\":\"hunter2\"}"];
        let fingerprint = a.fingerprint_key("idempotency").fingerprint(parts);
        assert_eq!(fingerprint, a.fingerprint_key("idempotency").fingerprint(parts));
        assert_ne!(fingerprint, b.fingerprint_key("idempotency").fingerprint(parts));
        assert_ne!(fingerprint, a.fingerprint_key("other").fingerprint(parts));
        assert_ne!(fingerprint, a.fingerprint_key("idempotency").fingerprint(&[b"POST/v1/connections", parts[2]]));
        assert!(!format!("{:?}", a.fingerprint_key("idempotency")).contains(|c: char| c.is_ascii_digit()));
    }

    #[test]
    fn scoped_keys_make_fingerprints_incomparable_across_scopes() {
        let master = MasterKey::from_base64("k1", &MasterKey::generate_base64().expect("key")).expect("key");
        let purpose = master.fingerprint_key("credential");
        let secret: &[&[u8]] = &[b"hunter2"];
        let alice = purpose.for_scope(b"alice").fingerprint(secret);
        assert_eq!(alice, purpose.for_scope(b"alice").fingerprint(secret));
        assert_ne!(alice, purpose.for_scope(b"bob").fingerprint(secret));
        assert_ne!(alice, purpose.fingerprint(secret));
    }
}
