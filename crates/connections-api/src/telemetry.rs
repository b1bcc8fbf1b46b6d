//! Every HTTP request: a request id (the caller's `X-Request-Id` when it is
//! a plausible one, a fresh one otherwise) returned in `X-Request-Id`, a
//! span carrying it for everything logged while answering, one log line
//! when the answer's head leaves, and the HTTP metrics.
//!
//! The line's level says whether an operator needs it: `warn` for a 5xx,
//! `info` for a 4xx or an answer slower than [`SLOW`], `debug` for the
//! rest (`CONNECTIONS_LOG=info,connections_api::telemetry=debug` logs every
//! request). Every request at `info` cost the server a tenth of its
//! throughput on the command mix (formatting and a write per request), and
//! the metrics count them all anyway.
//!
//! The line names the route template (`/v1/connections/{id}`), never the
//! query string: an OAuth callback's query holds a code and a state.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, Level};

/// An answer this slow is logged at `info` even when it succeeded.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(500);

/// The header that carries the request id both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// The middleware (see the module documentation).
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| plausible(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or("(no route)", |path| path.as_str()).to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let elapsed = started.elapsed();
    connections_metrics::HTTP_RESPONSES.inc(&[method_label(&method), class]);
    connections_metrics::HTTP_SECONDS.observe_duration(&[class], elapsed);
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    span.in_scope(|| match level_of(status, elapsed) {
        Level::WARN => tracing::warn!(status, elapsed_ms, "answered"),
        Level::INFO => tracing::info!(status, elapsed_ms, "answered"),
        _ => tracing::debug!(status, elapsed_ms, "answered"),
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The level of a request's line (see the module documentation).
fn level_of(status: u16, elapsed: std::time::Duration) -> Level {
    match status {
        500.. => Level::WARN,
        400..=499 => Level::INFO,
        _ if elapsed >= SLOW => Level::INFO,
        _ => Level::DEBUG,
    }
}

/// 1 to 64 characters of `[A-Za-z0-9._-]`: anything else (which would
/// reach the logs verbatim) is replaced by a fresh id.
fn plausible(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The method as a label with a fixed set of values.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{level_of, plausible, SLOW};
    use tracing::Level;

    #[test]
    fn only_errors_refusals_and_slow_answers_are_logged_above_debug() {
        let fast = Duration::from_millis(3);
        assert_eq!(level_of(503, fast), Level::WARN);
        assert_eq!(level_of(500, SLOW), Level::WARN);
        assert_eq!(level_of(404, fast), Level::INFO);
        assert_eq!(level_of(422, fast), Level::INFO);
        assert_eq!(level_of(200, SLOW), Level::INFO);
        assert_eq!(level_of(201, fast), Level::DEBUG);
        assert_eq!(level_of(303, fast), Level::DEBUG);
    }

    #[test]
    fn only_plausible_request_ids_are_kept() {
        assert!(plausible("0192f0c4-7c1e-7000-8000-000000000000"));
        assert!(plausible("req_42.a"));
        assert!(!plausible(""));
        assert!(!plausible("a b"));
        assert!(!plausible("line\nbreak"));
        assert!(!plausible(&"x".repeat(65)));
    }
}
