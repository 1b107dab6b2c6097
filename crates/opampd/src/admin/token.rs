//! The admin token (`--admin-token`) as a layer on the `/api` routes: a request without
//! `Authorization: Bearer <token>` never reaches a handler. Health, readiness, metrics and the
//! console's static files are outside this layer (they hold no fleet data); the console asks
//! the operator for the token and sends it with each API call.

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use crate::state::AppState;

/// Lets the request through when no token is configured or it carries the token; 401 with
/// `WWW-Authenticate: Bearer` and a JSON reason otherwise.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.admin_token else { return next.run(request).await };
    match presented(request.headers()) {
        Some(presented) if token.matches(presented) => next.run(request).await,
        Some(_) => refuse("admin token refused"),
        None => refuse("admin token required: send Authorization: Bearer <token>"),
    }
}

/// The bearer token of the one `Authorization` header (scheme in any case), if that is what the
/// request carries.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn refuse(reason: &'static str) -> Response {
    tracing::debug!(reason, "admin api call refused");
    let challenge = HeaderValue::from_static("Bearer realm=\"opampd\"");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        Json(json!({"error": reason})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_bearer_header_is_a_presented_token() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            presented(&h).map(str::to_owned)
        };
        assert_eq!(with(&["Bearer abc"]), Some("abc".into()));
        assert_eq!(with(&["bearer  abc "]), Some("abc".into()));
        assert_eq!(with(&["Basic abc"]), None);
        assert_eq!(with(&["Bearer "]), None);
        assert_eq!(with(&["Bearer"]), None);
        assert_eq!(with(&["Bearer a", "Bearer a"]), None);
        assert_eq!(with(&[]), None);
    }
}
