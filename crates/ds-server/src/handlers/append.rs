//! `POST`: append, append-and-close, or close (sections 5.2, 5.2.1 and 5.3).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ds_protocol::StreamName;
use ds_protocol::headers::{ProducerHeaders, is_closed_flag, parse_producer};
use ds_storage::{AppendOutcome, AppendRequest, ProducerAck, Storage};

use super::{header_str, names, respond, set_closed, set_no_store, set_offset, stream_name};
use crate::body::{check_declared_length, read_body};
use crate::error::ApiError;
use crate::h1::ServiceFuture;
use crate::router::App;

/// An append, boxed for the server's connections (see `handlers::boxed`).
///
/// The head is checked before the future is made, so the future holds only what the body
/// read and the store still need, never the request's head: it stays under 1 KiB, which
/// keeps its allocation in glibc's per-thread cache.
pub(super) fn boxed<S: Storage>(app: App<S>, req: Request) -> ServiceFuture {
    match Post::parse(&app, req) {
        Err(e) => Box::pin(std::future::ready(Ok(e.into_response()))),
        Ok(mut post) => Box::pin(async move { Ok(respond(post.send(&app).await)) }),
    }
}

/// A `POST` whose head is checked: what its body read and the store still need.
struct Post {
    name: StreamName,
    close: bool,
    producer: Option<ProducerHeaders>,
    stream_seq: Option<String>,
    /// The normalised `Content-Type`, or why there is none; it matters only with a body.
    content_type: Result<String, ApiError>,
    body: Body,
}

impl Post {
    /// Checks the head, in the protocol's order of errors up to the body.
    fn parse<S: Storage>(app: &App<S>, req: Request) -> Result<Post, ApiError> {
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
        check_declared_length(headers, app.settings.max_body_bytes)?;
        Ok(Post {
            name,
            close,
            producer,
            stream_seq,
            content_type: content_type(headers),
            body,
        })
    }

    /// Reads the body and appends it. Takes `&mut self`, not `self`: the caller's future
    /// already holds the request, and this one does not copy it.
    async fn send<S: Storage>(&mut self, app: &App<S>) -> Result<Response, ApiError> {
        let body = read_body(std::mem::take(&mut self.body), app.settings.max_body_bytes).await?;
        let content_type = if body.is_empty() {
            // A close-only request is never rejected for its Content-Type (section 5.2).
            None
        } else {
            Some(std::mem::replace(
                &mut self.content_type,
                Ok(String::new()),
            )?)
        };
        if body.is_empty() && !self.close {
            return Err(ApiError::Storage(ds_storage::Error::EmptyBody));
        }
        let had_body = !body.is_empty();
        let body_len = body.len();
        let with_producer = self.producer.is_some();
        let req = AppendRequest {
            content_type,
            body,
            close: self.close,
            stream_seq: self.stream_seq.take(),
            producer: self.producer.take(),
        };
        let outcome = app.storage.append(&self.name, req).await?;
        if had_body && matches!(outcome, AppendOutcome::Appended { .. }) {
            app.metrics.record_append(body_len);
        }
        Ok(answer(&outcome, had_body && with_producer))
    }
}

/// The normalised `Content-Type` of an append, or the error an append with a body gets.
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = header_str(headers, &header::CONTENT_TYPE)?
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "MISSING_CONTENT_TYPE",
                "an append with a body needs a Content-Type",
            )
        })?;
    ds_protocol::content_type::normalize(raw)
        .map_err(|e| ApiError::bad_request("INVALID_CONTENT_TYPE", e.to_string()))
}

/// The answer to an append the store decided; `new_data_status` is whether new data gets
/// `200` (a producer's append with a body, section 5.2.1) rather than `204`.
fn answer(outcome: &AppendOutcome, new_data_status: bool) -> Response {
    let mut res = Response::new(Body::empty());
    let out = res.headers_mut();
    set_no_store(out);
    let status = match *outcome {
        AppendOutcome::Appended {
            next,
            closed,
            producer,
        } => {
            set_offset(out, next);
            if closed {
                set_closed(out);
            }
            if let Some(ack) = producer {
                set_producer(out, ack);
            }
            if new_data_status {
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
    res
}

fn set_producer(out: &mut HeaderMap, ack: ProducerAck) {
    out.insert(names::PRODUCER_EPOCH.clone(), HeaderValue::from(ack.epoch));
    out.insert(names::PRODUCER_SEQ.clone(), HeaderValue::from(ack.seq));
}
