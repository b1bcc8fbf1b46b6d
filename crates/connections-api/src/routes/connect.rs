//! Connecting through a provider: `POST /v1/connect/{service}` starts an
//! authorization-code flow (`POST /v1/connections/{id}/reconnect` one for an
//! existing connection), `GET /v1/oauth/callback` completes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use connections_domain::{AgentId, Command, ConnectionId, ConnectionName, Scope, ServiceName, SkillName};
use connections_sealing::{random_token, Credential};
use connections_store::{Consumed, PendingFlow, StoreError};
use serde_json::{json, Value};

use crate::auth::AuthenticatedUser;
use crate::body::{path_param, JsonObject};
use crate::commands::{execute, load_connection_state, CommandInput, Target};
use crate::oauth::{self, Refusal, BROWSER_COOKIE, STATE_TTL};
use crate::problem::ApiError;
use crate::providers::valid_scope;
use crate::state::AppState;

/// `POST /v1/connect/{service}` {name?, agent_id?, skill?, scopes?}: the
/// provider's authorization URL for a new flow, valid 10 minutes, bound to
/// this user and (by an HttpOnly cookie) to this browser.
pub async fn connect(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(owner): AuthenticatedUser,
    service: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let Path(raw) = service.map_err(|_| ApiError::invalid("service", "is malformed"))?;
    let service = path_param("service", &raw, |raw| ServiceName::parse(raw))?;
    body.only(&["name", "agent_id", "skill", "scopes"])?;
    let name = body.optional("name", ConnectionName::parse)?;
    let agent_id = body.optional("agent_id", AgentId::parse)?;
    let skill = body.optional("skill", SkillName::parse)?;
    let scopes = scopes_field(&body)?;
    let request = |scopes: &[String]| json!({"name": name, "agent_id": agent_id, "skill": skill, "scopes": scopes});
    start_flow(&app, &owner, &service, &headers, scopes, request).await
}

/// `POST /v1/connections/{id}/reconnect` {scopes?}: like a connect, but the
/// callback seals the new tokens as the next version of this connection
/// (agents, default and name stay; a `needs attention` mark goes).
pub async fn reconnect(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(owner): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let connection_id = crate::routes::connections::connection_id(id)?;
    body.only(&["scopes"])?;
    let scopes = scopes_field(&body)?;
    let Some(state) = load_connection_state(&app, connection_id).await? else {
        return Err(ApiError::NotFound);
    };
    let connection = state.connection_for(&owner, connection_id).ok_or(ApiError::NotFound)?;
    if !connection.is_active() {
        return Err(ApiError::Revoked);
    }
    let service = state.service.clone().ok_or(ApiError::NotFound)?;
    if app.settings.providers.get(&service).is_none() || app.settings.providers.redirect_uri.is_none() {
        return Err(ApiError::NotReconnectable);
    }
    let request = |scopes: &[String]| json!({"reconnect": connection_id, "scopes": scopes});
    start_flow(&app, &owner, &service, &headers, scopes, request).await
}

/// The optional `scopes` field: RFC 6749 scope tokens.
fn scopes_field(body: &JsonObject) -> Result<Option<Vec<String>>, ApiError> {
    match body.fields.get("scopes") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= 50 => Ok(Some(
            items
                .iter()
                .map(|item| item.as_str().filter(|s| valid_scope(s)).map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| ApiError::invalid("scopes", "must be RFC 6749 scope tokens"))?,
        )),
        Some(_) => Err(ApiError::invalid("scopes", "must be an array of at most 50 scopes")),
    }
}

/// Stores a pending flow (what `request` makes of the scopes asked) and
/// answers its authorization URL with the browser cookie.
async fn start_flow(
    app: &AppState,
    owner: &connections_domain::OwnerId,
    service: &ServiceName,
    headers: &HeaderMap,
    scopes: Option<Vec<String>>,
    request: impl Fn(&[String]) -> Value,
) -> Result<Response, ApiError> {
    let providers = &app.settings.providers;
    let provider = providers.get(service).ok_or(ApiError::NoProvider)?;
    let redirect_uri = providers.redirect_uri.as_ref().ok_or(ApiError::NoProvider)?;
    let scopes = scopes.unwrap_or_else(|| provider.scopes.clone());

    let failed = |e: connections_sealing::KeyError| ApiError::Internal(Box::new(e));
    let state = random_token().map_err(failed)?;
    // One cookie per browser (its path covers this endpoint too), so that
    // flows started side by side in one browser all complete.
    let browser = match browser_cookie(headers) {
        Some(existing) => existing,
        None => random_token().map_err(failed)?,
    };
    let expires_at = Utc::now() + chrono::Duration::from_std(STATE_TTL).expect("ten minutes");
    let flow = PendingFlow {
        state_hash: oauth::state_hash(&app.master_key, &state),
        owner: owner.to_string(),
        service: service.to_string(),
        request: request(&scopes),
        browser_hash: oauth::browser_hash(&app.master_key, &browser),
        expires_at,
    };
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    flow.insert(&client).await?;
    let challenge = provider.pkce.then(|| oauth::challenge(&oauth::verifier(&app.master_key, &state)));
    let url = oauth::authorize_url(provider, redirect_uri, &state, &scopes, challenge.as_deref());
    let mut response = Json(json!({
        "authorize_url": url.as_str(),
        "expires_at": expires_at.to_rfc3339(),
        "scopes": scopes,
    }))
    .into_response();
    let secure = if redirect_uri.scheme() == "https" { "; Secure" } else { "" };
    let cookie = format!(
        "{BROWSER_COOKIE}={browser}; Path=/v1; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        STATE_TTL.as_secs()
    );
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(Box::new(e)))?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/oauth/callback?code&state` (or `?error&state`), where the
/// provider sends the browser back: no bearer token, the state names the
/// user. Redirects to the configured return URL with `connection_id` or
/// `error`, or answers a small page.
pub async fn callback(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let outcome = match query {
        Ok(Query(params)) => complete(&app, &headers, &params).await,
        Err(_) => Err(Refusal::MissingState),
    };
    let return_url = app.settings.providers.return_url.clone();
    match (outcome, return_url) {
        (Ok(id), Some(mut url)) => {
            url.query_pairs_mut().append_pair("connection_id", &id.to_string());
            see_other(url.as_str())
        }
        (Err(refusal), Some(mut url)) => {
            url.query_pairs_mut().append_pair("error", refusal.code());
            see_other(url.as_str())
        }
        (Ok(id), None) => {
            page(StatusCode::OK, &format!("Connected. Connection {id} is ready; you can close this page."))
        }
        (Err(refusal), None) => {
            let status = if refusal.is_upstream() { StatusCode::BAD_GATEWAY } else { StatusCode::BAD_REQUEST };
            page(status, &format!("Could not connect: {}.", refusal.message()))
        }
    }
}

async fn complete(
    app: &AppState,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<ConnectionId, Refusal> {
    let state = params.get("state").filter(|s| !s.is_empty()).ok_or(Refusal::MissingState)?;
    let internal = |error: &dyn std::fmt::Display| {
        tracing::error!(%error, "completing an OAuth callback");
        Refusal::Internal
    };
    let client = app.database.pool().get().await.map_err(|e| internal(&e))?;
    let flow = match PendingFlow::consume(&client, &oauth::state_hash(&app.master_key, state)).await {
        Ok(Consumed::Fresh(flow)) => flow,
        Ok(Consumed::Used) => return Err(Refusal::UsedState),
        Ok(Consumed::Expired) => return Err(Refusal::ExpiredState),
        Ok(Consumed::Unknown) => return Err(Refusal::UnknownState),
        Err(error) => return Err(internal(&error)),
    };
    drop(client);
    let same_browser = browser_cookie(headers)
        .is_some_and(|cookie| oauth::browser_hash(&app.master_key, &cookie) == flow.browser_hash);
    if !same_browser {
        return Err(Refusal::OtherBrowser);
    }
    if let Some(error) = params.get("error") {
        return Err(Refusal::Provider(oauth::sanitized_code(error)));
    }
    let code = params.get("code").filter(|c| !c.is_empty()).ok_or(Refusal::MissingCode)?;
    let service = ServiceName::parse(flow.service.clone()).map_err(|e| internal(&e))?;
    let providers = &app.settings.providers;
    let (Some(provider), Some(redirect_uri)) = (providers.get(&service), providers.redirect_uri.as_ref()) else {
        return Err(Refusal::Internal);
    };
    let asked: Vec<String> = serde_json::from_value(flow.request["scopes"].clone()).unwrap_or_default();
    let verifier = provider.pkce.then(|| oauth::verifier(&app.master_key, state));
    let tokens = oauth::exchange(provider, redirect_uri, code, verifier.as_ref(), &asked).await?;
    let granted = tokens.scopes.clone().unwrap_or_else(|| asked.clone());
    if !asked.iter().all(|scope| granted.contains(scope)) {
        return Err(Refusal::NarrowScopes);
    }

    let owner = connections_domain::OwnerId::parse(flow.owner.clone()).map_err(|e| internal(&e))?;
    let expires_at = tokens.expires_in.map(|seconds| Utc::now() + chrono::Duration::seconds(seconds as i64));
    let granted_scopes =
        granted.iter().cloned().map(Scope::parse).collect::<Result<Vec<_>, _>>().map_err(|_| Refusal::Garbage)?;
    let credential = Credential::Oauth2 {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at,
        scopes: Some(granted),
    };
    let text = |field: &str| flow.request[field].as_str().map(str::to_owned);
    if let Some(reconnect) = text("reconnect") {
        let connection_id = ConnectionId::parse(&reconnect).map_err(|e| internal(&e))?;
        let input = CommandInput {
            actor: owner.clone(),
            target: Target::Connection(connection_id),
            command: Command::ReconnectThroughProvider { connection_id, scopes: granted_scopes },
            credential: Some(credential.clone()),
            idempotency: None,
        };
        return match execute(app, input, |_| (StatusCode::OK, Value::Null)).await {
            Ok(_) => Ok(connection_id),
            Err(ApiError::Revoked | ApiError::NotFound) => {
                // Revoked while the user was at the provider: the new
                // tokens are revoked there too, never stored as a version.
                crate::upstream::discard(app, connection_id, &owner, &service, &credential).await;
                Err(Refusal::Revoked)
            }
            Err(error) => Err(internal(&error)),
        };
    }
    let name = match text("name") {
        Some(name) => ConnectionName::parse(name).map_err(|e| internal(&e))?,
        None => ConnectionName::parse(service.to_string()).map_err(|e| internal(&e))?,
    };
    let agent_id = text("agent_id").map(AgentId::parse).transpose().map_err(|e| internal(&e))?;
    let skill = text("skill").map(SkillName::parse).transpose().map_err(|e| internal(&e))?;
    let connection_id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let input = CommandInput {
        actor: owner,
        target: Target::Service(service.clone()),
        command: Command::ConnectThroughProvider {
            connection_id,
            service,
            name,
            agent_id,
            skill,
            scopes: granted_scopes,
        },
        credential: Some(credential),
        idempotency: None,
    };
    execute(app, input, |_| (StatusCode::CREATED, Value::Null)).await.map_err(|e| internal(&e))?;
    Ok(connection_id)
}

/// The browser-binding cookie, if the request carries a well-formed one.
fn browser_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| value.len() == 43 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on our side; try again."),
    }
}

fn page(status: StatusCode, message: &str) -> Response {
    let escaped: String = message
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Connections</title><p>{escaped}</p></html>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}
