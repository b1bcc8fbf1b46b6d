//! The credential kinds and their parsing from untrusted JSON.

use chrono::{DateTime, Utc};
use connections_domain::CredentialKind;
use serde_json::{Map, Value};

use crate::secret::Secret;

/// The largest credential accepted, measured as its compact JSON encoding.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// A credential for an external service, in plaintext. Its `Debug` output
/// redacts every secret field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An OAuth 2 token set.
    Oauth2 {
        /// The access token.
        access_token: Secret,
        /// The refresh token, if the provider issued one.
        refresh_token: Option<Secret>,
        /// When the access token expires, if known.
        expires_at: Option<DateTime<Utc>>,
        /// The granted scopes, if known (not secret).
        scopes: Option<Vec<String>>,
    },
    /// An API key.
    ApiKey {
        /// The key.
        key: Secret,
    },
    /// A username and password.
    Basic {
        /// The username (treated as secret: it is often an email address).
        username: Secret,
        /// The password.
        password: Secret,
    },
}

/// Why a credential was refused. Messages name the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The credential is not a JSON object.
    #[error("credential must be a JSON object")]
    NotAnObject,
    /// `kind` is missing or not one of the known kinds.
    #[error("credential.kind must be one of \"oauth2\", \"api_key\", \"basic\"")]
    UnknownKind,
    /// A required field is absent.
    #[error("credential.{0} is required")]
    Missing(&'static str),
    /// A field has the wrong JSON type or form.
    #[error("credential.{field} must be {expected}")]
    Invalid {
        /// The field.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A field that this kind does not have.
    #[error("credential.{0} is not a field of this credential kind")]
    UnknownField(String),
    /// The credential is larger than [`MAX_CREDENTIAL_BYTES`].
    #[error("credential must be at most {MAX_CREDENTIAL_BYTES} bytes")]
    TooLarge,
}

impl Credential {
    /// Parses a credential from untrusted JSON.
    pub fn parse(value: &Value) -> Result<Self, CredentialError> {
        let object = value.as_object().ok_or(CredentialError::NotAnObject)?;
        let kind = match object.get("kind").and_then(Value::as_str) {
            Some("oauth2") => CredentialKind::Oauth2,
            Some("api_key") => CredentialKind::ApiKey,
            Some("basic") => CredentialKind::Basic,
            _ => return Err(CredentialError::UnknownKind),
        };
        let allowed: &[&str] = match kind {
            CredentialKind::Oauth2 => &["kind", "access_token", "refresh_token", "expires_at", "scopes"],
            CredentialKind::ApiKey => &["kind", "key"],
            CredentialKind::Basic => &["kind", "username", "password"],
        };
        if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(CredentialError::UnknownField(printable_field(unknown)));
        }
        if serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len()) > MAX_CREDENTIAL_BYTES {
            return Err(CredentialError::TooLarge);
        }
        let credential = match kind {
            CredentialKind::Oauth2 => Credential::Oauth2 {
                access_token: required_secret(object, "access_token")?,
                refresh_token: optional_secret(object, "refresh_token")?,
                expires_at: optional_time(object, "expires_at")?,
                scopes: optional_scopes(object)?,
            },
            CredentialKind::ApiKey => Credential::ApiKey { key: required_secret(object, "key")? },
            CredentialKind::Basic => Credential::Basic {
                username: required_secret(object, "username")?,
                password: required_secret(object, "password")?,
            },
        };
        Ok(credential)
    }

    /// The credential's kind (not secret).
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Oauth2 { .. } => CredentialKind::Oauth2,
            Credential::ApiKey { .. } => CredentialKind::ApiKey,
            Credential::Basic { .. } => CredentialKind::Basic,
        }
    }

    /// The values that must stay unique to one connection (the hygiene
    /// review fingerprints them): the access and refresh tokens, the key, the
    /// password. Usernames are left out: one account may rightly back
    /// several connections with different passwords.
    pub fn secret_values(&self) -> Vec<&Secret> {
        match self {
            Credential::Oauth2 { access_token, refresh_token, .. } => {
                std::iter::once(access_token).chain(refresh_token.as_ref()).collect()
            }
            Credential::ApiKey { key } => vec![key],
            Credential::Basic { password, .. } => vec![password],
        }
    }

    /// When an OAuth access token expires, if the credential says.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Credential::Oauth2 { expires_at, .. } => *expires_at,
            Credential::ApiKey { .. } | Credential::Basic { .. } => None,
        }
    }

    /// The plaintext JSON form, `{"kind": …, …}`. This exposes every secret:
    /// use it only to seal or to hand the credential to an authorized agent.
    pub fn expose_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("kind".into(), Value::from(self.kind().as_str()));
        match self {
            Credential::Oauth2 { access_token, refresh_token, expires_at, scopes } => {
                object.insert("access_token".into(), Value::from(access_token.expose()));
                if let Some(refresh_token) = refresh_token {
                    object.insert("refresh_token".into(), Value::from(refresh_token.expose()));
                }
                if let Some(expires_at) = expires_at {
                    object.insert("expires_at".into(), Value::from(expires_at.to_rfc3339()));
                }
                if let Some(scopes) = scopes {
                    object.insert("scopes".into(), Value::from(scopes.clone()));
                }
            }
            Credential::ApiKey { key } => {
                object.insert("key".into(), Value::from(key.expose()));
            }
            Credential::Basic { username, password } => {
                object.insert("username".into(), Value::from(username.expose()));
                object.insert("password".into(), Value::from(password.expose()));
            }
        }
        Value::Object(object)
    }
}

/// A field name from untrusted input, made safe to print: at most 64
/// characters, control characters replaced. (Field names are not secrets,
/// but they are attacker-chosen.)
fn printable_field(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn required_secret(object: &Map<String, Value>, field: &'static str) -> Result<Secret, CredentialError> {
    optional_secret(object, field)?.ok_or(CredentialError::Missing(field))
}

fn optional_secret(object: &Map<String, Value>, field: &'static str) -> Result<Option<Secret>, CredentialError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(Secret::new(s.clone()))),
        Some(_) => Err(CredentialError::Invalid { field: field.into(), expected: "a non-empty string" }),
    }
}

fn optional_time(object: &Map<String, Value>, field: &'static str) -> Result<Option<DateTime<Utc>>, CredentialError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| CredentialError::Invalid { field: field.into(), expected: "an RFC 3339 timestamp" }),
        Some(_) => Err(CredentialError::Invalid { field: field.into(), expected: "an RFC 3339 timestamp" }),
    }
}

fn optional_scopes(object: &Map<String, Value>) -> Result<Option<Vec<String>>, CredentialError> {
    let invalid = || CredentialError::Invalid { field: "scopes".into(), expected: "an array of non-empty strings" };
    match object.get("scopes") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
                    .map(str::to_owned)
                    .ok_or_else(invalid)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_each_kind() {
        let oauth = Credential::parse(
            &json!({"kind":"oauth2","access_token":"a","refresh_token":"r","expires_at":"2030-01-01T00:00:00Z","scopes":["x"]}),
        );
        assert!(matches!(oauth, Ok(Credential::Oauth2 { .. })));
        assert!(matches!(Credential::parse(&json!({"kind":"api_key","key":"k"})), Ok(Credential::ApiKey { .. })));
        assert!(matches!(
            Credential::parse(&json!({"kind":"basic","username":"u","password":"p"})),
            Ok(Credential::Basic { .. })
        ));
    }

    #[test]
    fn errors_name_fields_and_never_echo_values() {
        let canary = "canary-5f1e-never-echo";
        let cases = [
            json!({"kind":"api_key","key":42}),
            json!({"kind":"api_key","key":canary,"extra":canary}),
            json!({"kind":"nope","key":canary}),
            json!({"kind":"oauth2","access_token":canary,"expires_at":canary}),
            json!({"kind":"oauth2","access_token":canary,"scopes":[canary, 1]}),
            json!({"kind":"basic","username":canary}),
            json!({"kind":"api_key","key":canary.repeat(1000)}),
        ];
        for case in cases {
            let error = Credential::parse(&case).expect_err("invalid credential must be refused");
            let message = error.to_string();
            assert!(!message.contains(canary), "error message echoed the secret: {message}");
            assert!(!format!("{error:?}").contains(canary), "error Debug echoed the secret");
        }
    }

    #[test]
    fn debug_redacts_every_secret_field() {
        let credential = Credential::parse(&json!({"kind":"basic","username":"canary-user","password":"canary-pass"}))
            .expect("valid basic credential");
        let debug = format!("{credential:?}");
        assert!(!debug.contains("canary"), "Debug leaked a secret: {debug}");
    }

    #[test]
    fn exposed_json_round_trips() {
        let input = json!({"kind":"oauth2","access_token":"a","scopes":["x","y"]});
        let credential = Credential::parse(&input).expect("valid oauth2 credential");
        assert_eq!(Credential::parse(&credential.expose_json()), Ok(credential));
    }
}
