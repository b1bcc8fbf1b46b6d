//! Identifier and name newtypes. Each has one fallible constructor, so an
//! invalid value cannot exist past the edge of the system.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a raw string was refused as an identifier or a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("must not be empty")]
    Empty,
    /// The value was longer than allowed.
    #[error("must be at most {max} characters")]
    TooLong {
        /// The maximum length in characters.
        max: usize,
    },
    /// The value contained a character outside the allowed set.
    #[error("may only contain {allowed}")]
    InvalidCharacter {
        /// A human description of the allowed characters.
        allowed: &'static str,
    },
    /// The value is not a UUID.
    #[error("must be a UUID")]
    NotUuid,
}

fn check_token(raw: &str, max: usize, allowed: &'static str, ok: fn(char) -> bool) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.chars().count() > max {
        return Err(IdError::TooLong { max });
    }
    if !raw.chars().all(ok) {
        return Err(IdError::InvalidCharacter { allowed });
    }
    Ok(())
}

fn opaque_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn slug_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

fn printable_char(c: char) -> bool {
    !c.is_control()
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, max = $max:expr, allowed = $allowed:expr, ok = $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a raw string, refusing anything outside the allowed form.
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                check_token(&raw, $max, $allowed, $ok)?;
                Ok(Self(raw))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, IdError> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A user id: an opaque string of 1–128 characters from `[A-Za-z0-9_-]`
    /// (it becomes a NATS subject token).
    OwnerId, max = 128, allowed = "letters, digits, '_' and '-'", ok = opaque_char
);
string_newtype!(
    /// An agent id: an opaque string of 1–128 characters from `[A-Za-z0-9_-]`.
    AgentId, max = 128, allowed = "letters, digits, '_' and '-'", ok = opaque_char
);
string_newtype!(
    /// A service slug such as `google-calendar`: `[a-z0-9-]{1,64}`.
    ServiceName, max = 64, allowed = "lowercase letters, digits and '-'", ok = slug_char
);
string_newtype!(
    /// A connection's display name: 1–200 characters, no control characters.
    ConnectionName, max = 200, allowed = "characters other than control characters", ok = printable_char
);
string_newtype!(
    /// The connector skill a connection was created for: 1–200 characters,
    /// no control characters.
    SkillName, max = 200, allowed = "characters other than control characters", ok = printable_char
);

string_newtype!(
    /// The id of a master key (never its material): 1–64 printable ASCII
    /// characters.
    MasterKeyId, max = 64, allowed = "printable ASCII characters other than space", ok = key_id_char
);

fn key_id_char(c: char) -> bool {
    c.is_ascii_graphic()
}

string_newtype!(
    /// What a runtime says about a problem with a credential: 1–200
    /// characters, no control characters. Never the credential itself (the
    /// server refuses a detail that contains one of its secret values).
    ProblemDetail, max = 200, allowed = "characters other than control characters", ok = printable_char
);

string_newtype!(
    /// An OAuth 2.0 scope (RFC 6749 §3.3 scope-token): 1–200 printable
    /// ASCII characters other than space, `"` and `\\`.
    Scope, max = 200, allowed = "printable ASCII other than space, '\"' and '\\'", ok = scope_char
);

/// A connection's id: a UUID (version 7 when minted by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionId(Uuid);

impl ConnectionId {
    /// Wraps a UUID minted elsewhere (the domain has no randomness).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// Parses the textual form of a UUID.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        Uuid::parse_str(raw).map(Self).map_err(|_| IdError::NotUuid)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The shape of a credential, without its secret parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An OAuth 2 access token, possibly with a refresh token.
    Oauth2,
    /// A single API key.
    ApiKey,
    /// A username and password.
    Basic,
}

impl CredentialKind {
    /// The stable name used in events and the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::Oauth2 => "oauth2",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Basic => "basic",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_ids_accept_the_documented_alphabet_only() {
        assert!(OwnerId::parse("alice_01-X").is_ok());
        assert_eq!(OwnerId::parse(""), Err(IdError::Empty));
        assert!(matches!(OwnerId::parse("a.b"), Err(IdError::InvalidCharacter { .. })));
        assert!(matches!(AgentId::parse("a b"), Err(IdError::InvalidCharacter { .. })));
        assert!(AgentId::parse("a".repeat(128)).is_ok());
        assert_eq!(AgentId::parse("a".repeat(129)), Err(IdError::TooLong { max: 128 }));
    }

    #[test]
    fn service_slugs_are_lowercase() {
        assert!(ServiceName::parse("google-calendar").is_ok());
        assert!(ServiceName::parse("Google").is_err());
        assert!(ServiceName::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn names_refuse_control_characters_and_count_characters_not_bytes() {
        assert!(ConnectionName::parse("Work calendar ✓").is_ok());
        assert!(ConnectionName::parse("tab\there").is_err());
        assert!(ConnectionName::parse("é".repeat(200)).is_ok());
        assert!(ConnectionName::parse("é".repeat(201)).is_err());
    }
}
