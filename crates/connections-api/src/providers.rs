//! The OAuth 2.0 providers a deployment configures (`CONNECTIONS_PROVIDERS_FILE`,
//! documented by `schemas/providers.v1.json`): for each service, the
//! authorization, token and (optional) RFC 7009 revocation endpoints, the
//! client, default scopes and PKCE. Parsed once at start; every problem is
//! named by its place in the file, never by a secret's value.

use std::collections::BTreeMap;
use std::fmt;

use connections_domain::ServiceName;
use connections_sealing::Secret;
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

/// Why a providers file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    /// The file could not be read.
    #[error("cannot read the providers file: {0}")]
    Read(std::io::Error),
    /// The file is not the documented JSON.
    #[error("the providers file is not valid: {0}")]
    Invalid(String),
}

/// Every configured provider, by service.
#[derive(Debug, Default)]
pub struct Providers {
    /// Where providers send the browser back (`GET /v1/oauth/callback` of
    /// this deployment, as registered with each provider).
    pub redirect_uri: Option<Url>,
    /// Where the callback sends the browser when it is done (with
    /// `connection_id` or `error`); without one, it shows a small page.
    pub return_url: Option<Url>,
    by_service: BTreeMap<ServiceName, Provider>,
}

/// One provider: an OAuth 2.0 client registered for one service.
pub struct Provider {
    /// The service it connects.
    pub service: ServiceName,
    /// The authorization endpoint.
    pub authorization_endpoint: Url,
    /// The token endpoint.
    pub token_endpoint: Url,
    /// The RFC 7009 revocation endpoint, if the provider has one.
    pub revocation_endpoint: Option<Url>,
    /// The client id.
    pub client_id: String,
    /// The client secret, read from a file or the environment at start.
    pub client_secret: Secret,
    /// The scopes asked for when a connect names none.
    pub scopes: Vec<String>,
    /// Whether PKCE (S256) is used (default: yes).
    pub pkce: bool,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("service", &self.service)
            .field("token_endpoint", &self.token_endpoint.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    redirect_uri: String,
    return_url: Option<String>,
    providers: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    service: String,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    client_id: String,
    client_secret_file: Option<String>,
    client_secret_env: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default = "yes")]
    pkce: bool,
}

fn yes() -> bool {
    true
}

impl Providers {
    /// No providers: every service keeps working with pasted credentials.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads and parses `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ProvidersError> {
        let text = std::fs::read_to_string(path).map_err(ProvidersError::Read)?;
        Self::parse(&text, |name| std::env::var(name).ok())
    }

    /// Parses a providers file; `env` looks up `client_secret_env` names.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ProvidersError> {
        let invalid = |message: String| ProvidersError::Invalid(message);
        let file: File = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let redirect_uri = Some(url("redirect_uri", &file.redirect_uri)?);
        let return_url = file.return_url.as_deref().map(|raw| url("return_url", raw)).transpose()?;
        let mut by_service = BTreeMap::new();
        for (n, value) in file.providers.into_iter().enumerate() {
            let at = |field: &str| format!("providers[{n}].{field}");
            let entry: Entry = serde_json::from_value(value).map_err(|e| invalid(format!("providers[{n}]: {e}")))?;
            let service = ServiceName::parse(entry.service).map_err(|e| invalid(format!("{} {e}", at("service"))))?;
            if entry.client_id.is_empty() {
                return Err(invalid(format!("{} must not be empty", at("client_id"))));
            }
            let client_secret = match (entry.client_secret_file, entry.client_secret_env) {
                (Some(path), None) => std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| invalid(format!("{} cannot be read", at("client_secret_file"))))?,
                (None, Some(name)) => {
                    env(&name).ok_or_else(|| invalid(format!("{} names an unset variable", at("client_secret_env"))))?
                }
                _ => {
                    return Err(invalid(format!(
                        "{}: give exactly one of client_secret_file and client_secret_env",
                        at("client_secret")
                    )))
                }
            };
            if client_secret.is_empty() {
                return Err(invalid(format!("{} is empty", at("client_secret"))));
            }
            if entry.scopes.iter().any(|s| !valid_scope(s)) {
                return Err(invalid(format!("{} holds a scope that is not an RFC 6749 scope token", at("scopes"))));
            }
            let provider = Provider {
                authorization_endpoint: url(&at("authorization_endpoint"), &entry.authorization_endpoint)?,
                token_endpoint: url(&at("token_endpoint"), &entry.token_endpoint)?,
                revocation_endpoint: entry
                    .revocation_endpoint
                    .as_deref()
                    .map(|raw| url(&at("revocation_endpoint"), raw))
                    .transpose()?,
                client_id: entry.client_id,
                client_secret: Secret::new(client_secret),
                scopes: entry.scopes,
                pkce: entry.pkce,
                service: service.clone(),
            };
            if by_service.insert(service, provider).is_some() {
                return Err(invalid(format!("{} configures a service a second time", at("service"))));
            }
        }
        Ok(Self { redirect_uri, return_url, by_service })
    }

    /// The provider of `service`, if configured.
    pub fn get(&self, service: &ServiceName) -> Option<&Provider> {
        self.by_service.get(service)
    }

    /// Every provider, by service.
    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.by_service.values()
    }
}

/// An RFC 6749 scope token: printable ASCII without space, quote or backslash.
pub fn valid_scope(scope: &str) -> bool {
    !scope.is_empty() && scope.len() <= 200 && scope.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

fn url(field: &str, raw: &str) -> Result<Url, ProvidersError> {
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ProvidersError::Invalid(format!("{field} must be an http(s) URL")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Providers, ProvidersError> {
        Providers::parse(text, |name| (name == "SECRET").then(|| "s3cret-value".to_owned()))
    }

    const VALID: &str = r#"{"redirect_uri": "http://127.0.0.1:8080/v1/oauth/callback", "providers": [
        {"service": "google-calendar", "authorization_endpoint": "http://127.0.0.1:9000/authorize",
         "token_endpoint": "http://127.0.0.1:9000/token", "revocation_endpoint": "http://127.0.0.1:9000/revoke",
         "client_id": "cid", "client_secret_env": "SECRET", "scopes": ["calendar.read", "openid"]}]}"#;

    #[test]
    fn a_valid_file_parses_and_the_secret_stays_redacted() {
        let providers = parse(VALID).expect("valid");
        let provider = providers.get(&ServiceName::parse("google-calendar").expect("service")).expect("configured");
        assert_eq!(provider.scopes, ["calendar.read", "openid"]);
        assert!(provider.pkce, "PKCE is on unless turned off");
        assert_eq!(provider.client_secret.expose(), "s3cret-value");
        assert!(!format!("{providers:?}").contains("s3cret-value"));
    }

    #[test]
    fn problems_are_named_by_place_never_by_value() {
        let cases = [
            (VALID.replace("http://127.0.0.1:9000/token", "ftp://x"), "providers[0].token_endpoint"),
            (VALID.replace("\"SECRET\"", "\"UNSET\""), "providers[0].client_secret_env"),
            (VALID.replace("\"client_secret_env\": \"SECRET\"", "\"client_secret\": \"inline\""), "providers[0]"),
            (VALID.replace("google-calendar", "Google"), "providers[0].service"),
            (VALID.replace("calendar.read", "bad scope"), "providers[0].scopes"),
            (VALID.replace("http://127.0.0.1:8080/v1/oauth/callback", "nope"), "redirect_uri"),
            ("{}".to_owned(), "redirect_uri"),
        ];
        for (text, place) in cases {
            let error = parse(&text).expect_err("refused").to_string();
            assert!(error.contains(place), "{place}: {error}");
            assert!(!error.contains("s3cret-value") && !error.contains("inline"), "{error}");
        }
        let twice = VALID.replace("}]}", "}, {\"service\": \"google-calendar\", \"authorization_endpoint\": \"http://a/\", \"token_endpoint\": \"http://a/\", \"client_id\": \"c\", \"client_secret_env\": \"SECRET\"}]}");
        assert!(parse(&twice).expect_err("refused").to_string().contains("providers[1].service"));
    }
}
