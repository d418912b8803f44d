//! Errors of the subscription routes and their HTTP form.
//!
//! Every error is `application/problem+json` (RFC 9457, with the workspace's `code` member)
//! carrying an `error` extension member `{ "code", "message" }`, which is what subscription
//! clients match on. `FENCED` and `ALREADY_CLAIMED` have bodies mandated by PROTOCOL.md section 7
//! and are sent exactly in that shape as `application/json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ds_protocol::{PROBLEM_CONTENT_TYPE, Problem};
use serde::Serialize;

/// Why a subscription request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `400 INVALID_REQUEST`: a malformed body, id or path.
    #[error("{0}")]
    Invalid(String),
    /// `400 WEBHOOK_URL_REJECTED`: the webhook URL failed the SSRF checks.
    #[error("{0}")]
    UrlRejected(String),
    /// `404 SUBSCRIPTION_NOT_FOUND`.
    #[error("subscription not found")]
    NotFound,
    /// `409 SUBSCRIPTION_ALREADY_EXISTS`: same id, different configuration.
    #[error("subscription already exists with a different configuration")]
    Exists,
    /// `400 INVALID_REQUEST`: the operation does not apply to this subscription type.
    #[error("this operation is for {0} subscriptions")]
    WrongType(&'static str),
    /// `401 TOKEN_INVALID`: missing, malformed, forged or foreign bearer token.
    #[error("missing or invalid bearer token")]
    TokenInvalid,
    /// `401 TOKEN_EXPIRED`.
    #[error("bearer token expired")]
    TokenExpired,
    /// `409 FENCED`: stale generation or wake id.
    #[error("wake generation is stale")]
    Fenced,
    /// `409 ALREADY_CLAIMED`.
    #[error("subscription is claimed by {holder}")]
    AlreadyClaimed {
        /// The worker holding the lease.
        holder: String,
        /// The current generation.
        generation: u64,
    },
    /// `409 NO_PENDING_WORK`: a claim with nothing to do.
    #[error("subscription has no pending work")]
    NoPendingWork,
    /// `409 INVALID_OFFSET`: an ack for an unknown stream, before the cursor or past the tail.
    #[error("{0}")]
    InvalidOffset(String),
    /// `503`: the state could not be persisted.
    #[error("subscription state could not be persisted")]
    Unavailable,
    /// `503`: several servers share the store and none is serving subscriptions right now (the
    /// active one is failing over), or it did not answer a forwarded request in time.
    #[error("no server is serving subscriptions at the moment; retry shortly")]
    NotServing,
}

#[derive(Serialize)]
struct ProblemWithError<'a> {
    #[serde(flatten)]
    problem: Problem,
    error: ErrorMember<'a>,
}

#[derive(Serialize)]
struct ErrorMember<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    fn status_code_title(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Invalid(_) | ApiError::WrongType(_) => (
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "Invalid request",
            ),
            ApiError::UrlRejected(_) => (
                StatusCode::BAD_REQUEST,
                "WEBHOOK_URL_REJECTED",
                "Webhook URL rejected",
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "SUBSCRIPTION_NOT_FOUND",
                "Subscription not found",
            ),
            ApiError::Exists => (
                StatusCode::CONFLICT,
                "SUBSCRIPTION_ALREADY_EXISTS",
                "Subscription already exists",
            ),
            ApiError::TokenInvalid => (StatusCode::UNAUTHORIZED, "TOKEN_INVALID", "Invalid token"),
            ApiError::TokenExpired => (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED", "Token expired"),
            ApiError::Fenced => (StatusCode::CONFLICT, "FENCED", "Fenced"),
            ApiError::AlreadyClaimed { .. } => {
                (StatusCode::CONFLICT, "ALREADY_CLAIMED", "Already claimed")
            }
            ApiError::NoPendingWork => (StatusCode::CONFLICT, "NO_PENDING_WORK", "No pending work"),
            ApiError::InvalidOffset(_) => {
                (StatusCode::CONFLICT, "INVALID_OFFSET", "Invalid offset")
            }
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "Subscription state unavailable",
            ),
            ApiError::NotServing => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "Subscriptions unavailable",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.status_code_title();
        let json = HeaderValue::from_static("application/json");
        match &self {
            ApiError::Fenced => {
                let body = serde_json::json!({ "error": { "code": code } });
                return (status, [(header::CONTENT_TYPE, json)], body.to_string()).into_response();
            }
            ApiError::AlreadyClaimed { holder, generation } => {
                let body = serde_json::json!({
                    "error": { "code": code, "current_holder": holder, "generation": generation }
                });
                return (status, [(header::CONTENT_TYPE, json)], body.to_string()).into_response();
            }
            _ => {}
        }
        let message = self.to_string();
        let body = ProblemWithError {
            problem: Problem::new(status.as_u16(), code, title).with_detail(message.clone()),
            error: ErrorMember { code, message },
        };
        let body = serde_json::to_vec(&body).expect("a problem body always serialises to JSON");
        let mut res = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
            )],
            body,
        )
            .into_response();
        match self {
            ApiError::TokenInvalid | ApiError::TokenExpired => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable | ApiError::NotServing => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}
