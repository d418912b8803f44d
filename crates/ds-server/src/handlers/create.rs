//! `PUT`: create a stream, a closed stream, or a fork (sections 4.2 and 5.1).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use ds_protocol::headers::{self as h, is_closed_flag, parse_expiry};
use ds_storage::{CreateOutcome, CreateRequest, Storage};

use super::{fork, header_str, set_closed, set_content_type, set_offset, stream_name};
use crate::body::read_limited;
use crate::error::ApiError;
use crate::proxy::ClientOrigin;
use crate::router::App;

pub(super) async fn create<S: Storage>(app: &App<S>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let name = stream_name(app, parts.uri.path())?;
    let headers = &parts.headers;
    let content_type = header_str(headers, "content-type")?
        .filter(|v| !v.trim().is_empty())
        .map(ds_protocol::content_type::normalize)
        .transpose()
        .map_err(|e| ApiError::bad_request("INVALID_CONTENT_TYPE", e.to_string()))?;
    let expiry = parse_expiry(
        header_str(headers, h::STREAM_TTL)?,
        header_str(headers, h::STREAM_EXPIRES_AT)?,
    )?;
    let closed = is_closed_flag(header_str(headers, h::STREAM_CLOSED)?);
    let fork = fork::parse(app, headers)?;
    let body = read_limited(headers, body, app.settings.max_body_bytes).await?;

    let outcome = app
        .storage
        .create(
            &name,
            CreateRequest {
                content_type,
                expiry,
                closed,
                body,
                fork,
            },
        )
        .await?;
    let (status, info) = match &outcome {
        CreateOutcome::Created(info) => (StatusCode::CREATED, info),
        CreateOutcome::Existed(info) => (StatusCode::OK, info),
    };
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = status;
    let out = res.headers_mut();
    set_content_type(out, &info.content_type);
    set_offset(out, info.next);
    if info.closed {
        set_closed(out);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::CREATED {
        // Scheme and host as the client used them, through trusted proxies (crate::proxy).
        let base = match parts.extensions.get::<ClientOrigin>() {
            Some(origin) => format!(
                "{}://{}",
                origin.scheme,
                origin.host.as_deref().unwrap_or("localhost")
            ),
            None => format!(
                "http://{}",
                header_str(headers, "host")?.unwrap_or("localhost")
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&format!("{base}{}", parts.uri.path())) {
            out.insert(header::LOCATION, v);
        }
    }
    Ok(res)
}
