//! NATS JWTs (version 2, `ed25519-nkey`), as nats-server verifies them:
//! `base64url(header) . base64url(claims) . base64url(ed25519 signature)`,
//! signed by the issuer's nkey over the first two parts. The claim layout
//! follows `github.com/nats-io/jwt/v2`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};

use crate::AuthError;

/// The claims every NATS JWT has, in the order `nats-io/jwt` writes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClaimsData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    pub iat: i64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub sub: String,
}

#[derive(Serialize)]
struct Claims<'a, T: Serialize> {
    #[serde(flatten)]
    data: &'a ClaimsData,
    nats: &'a T,
}

/// Signs `nats` (the type-specific part) for `subject`, issued by `issuer`.
pub(crate) fn encode<T: Serialize>(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    issued_at: i64,
    expires_at: Option<i64>,
    nats: &T,
) -> Result<String, AuthError> {
    let mut data = ClaimsData {
        exp: expires_at,
        jti: String::new(),
        iat: issued_at,
        iss: issuer.public_key(),
        name: name.into(),
        sub: subject.into(),
    };
    // As nats-io/jwt: the id is the hash of the claims without an id.
    data.jti = base32(&Sha512_256::digest(serde_json::to_vec(&data).map_err(AuthError::json)?));
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Claims { data: &data, nats }).map_err(AuthError::json)?);
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The claims of a JWT whose signature verifies with its own `iss` (what
/// nats-server checks first; it then checks that `iss` is trusted).
pub fn decode(token: &str) -> Result<serde_json::Value, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("a JWT has three parts"));
    };
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(AuthError::Malformed("the claims are not base64url JSON"))?;
    let signature =
        URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed("the signature is not base64url"))?;
    let issuer = claims["iss"].as_str().ok_or(AuthError::Malformed("no issuer"))?;
    let key = KeyPair::from_public_key(issuer).map_err(|_| AuthError::Malformed("the issuer is not a public nkey"))?;
    key.verify(format!("{header}.{}", token.split('.').nth(1).unwrap_or_default()).as_bytes(), &signature)
        .map_err(|_| AuthError::Malformed("the signature does not verify"))?;
    Ok(claims)
}

/// RFC 4648 base32 without padding (the JWT id's encoding).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        for (input, expected) in [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foobar", "MZXW6YTBOI")] {
            assert_eq!(base32(input.as_bytes()), expected);
        }
    }

    #[test]
    fn a_signed_jwt_decodes_and_a_tampered_one_does_not() {
        let issuer = KeyPair::new_account();
        let user = KeyPair::new_user();
        let token =
            encode(&issuer, &user.public_key(), "u", 1, Some(2), &serde_json::json!({"type": "user", "version": 2}))
                .expect("encode");
        let claims = decode(&token).expect("decode");
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["iss"], issuer.public_key());
        assert_eq!(claims["nats"]["type"], "user");
        assert_eq!(claims["jti"].as_str().map(str::len), Some(52));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"iss":"x","sub":"y","iat":1}"#);
        assert!(decode(&parts.join(".")).is_err());
    }
}
