//! `POST`: append, append-and-close, or close (sections 5.2, 5.2.1 and 5.3).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use ds_protocol::headers::{is_closed_flag, parse_producer};
use ds_storage::{AppendOutcome, AppendRequest, ProducerAck, Storage};

use super::{header_str, names, set_closed, set_no_store, set_offset, stream_name};
use crate::body::read_limited;
use crate::error::ApiError;
use crate::router::App;

pub(super) async fn append<S: Storage>(app: &App<S>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let name = stream_name(app, parts.uri.path())?;
    let headers = &parts.headers;
    let close = is_closed_flag(header_str(headers, &names::STREAM_CLOSED)?);
    let producer = parse_producer(
        header_str(headers, &names::PRODUCER_ID)?,
        header_str(headers, &names::PRODUCER_EPOCH)?,
        header_str(headers, &names::PRODUCER_SEQ)?,
    )?;
    let stream_seq = header_str(headers, &names::STREAM_SEQ)?.map(str::to_owned);
    let body = read_limited(headers, body, app.settings.max_body_bytes).await?;
    let content_type = if body.is_empty() {
        // A close-only request is never rejected for its Content-Type (section 5.2).
        None
    } else {
        let raw = header_str(headers, &header::CONTENT_TYPE)?
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "MISSING_CONTENT_TYPE",
                    "an append with a body needs a Content-Type",
                )
            })?;
        Some(
            ds_protocol::content_type::normalize(raw)
                .map_err(|e| ApiError::bad_request("INVALID_CONTENT_TYPE", e.to_string()))?,
        )
    };
    if body.is_empty() && !close {
        return Err(ApiError::Storage(ds_storage::Error::EmptyBody));
    }
    let had_body = !body.is_empty();
    let body_len = body.len();
    let with_producer = producer.is_some();
    let outcome = app
        .storage
        .append(
            &name,
            AppendRequest {
                content_type,
                body,
                close,
                stream_seq,
                producer,
            },
        )
        .await?;

    let mut res = Response::new(axum::body::Body::empty());
    let out = res.headers_mut();
    set_no_store(out);
    let status = match outcome {
        AppendOutcome::Appended {
            next,
            closed,
            producer,
        } => {
            if had_body {
                app.metrics.record_append(body_len);
            }
            set_offset(out, next);
            if closed {
                set_closed(out);
            }
            if let Some(ack) = producer {
                set_producer(out, ack);
            }
            // With producer headers, new data is 200 and a duplicate 204 (section 5.2.1).
            if with_producer && had_body {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
        }
        AppendOutcome::Duplicate {
            next,
            closed,
            producer,
        } => {
            set_offset(out, next);
            if closed {
                set_closed(out);
            }
            set_producer(out, producer);
            StatusCode::NO_CONTENT
        }
        AppendOutcome::AlreadyClosed { next } => {
            set_offset(out, next);
            set_closed(out);
            StatusCode::NO_CONTENT
        }
    };
    *res.status_mut() = status;
    Ok(res)
}

fn set_producer(out: &mut HeaderMap, ack: ProducerAck) {
    out.insert(names::PRODUCER_EPOCH.clone(), HeaderValue::from(ack.epoch));
    out.insert(names::PRODUCER_SEQ.clone(), HeaderValue::from(ack.seq));
}
