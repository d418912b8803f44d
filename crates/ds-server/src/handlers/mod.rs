//! One module per protocol operation; [`boxed`] dispatches on the method.

mod append;
mod create;
mod delete;
mod fork;
mod head;
pub(crate) mod read;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use ds_protocol::{Offset, StreamName};
use ds_storage::Storage;

use crate::error::ApiError;
use crate::router::App;

pub(crate) use read::read_from;

/// [`stream`] for the server's own connections: each method's future boxed on its own.
///
/// A future is as large as the largest of its branches, so [`stream`]'s future (over 2 KiB)
/// is sized by create and read, and every append paid for it. An allocation that large
/// leaves glibc's per-thread cache for the main heap, where it first consolidates the freed
/// small chunks: 4–5% of a loaded server's CPU in `malloc_consolidate` and `unlink_chunk`.
/// Boxed one by one, an append allocates only its own future.
pub(crate) fn boxed<S: Storage>(app: App<S>, req: Request) -> crate::h1::ServiceFuture {
    match *req.method() {
        Method::POST => append::boxed(app, req),
        Method::GET => read::boxed(app, req),
        Method::PUT => Box::pin(async move { Ok(respond(create::create(&app, req).await)) }),
        Method::HEAD => Box::pin(async move { Ok(respond(head::head(&app, req).await)) }),
        Method::DELETE => Box::pin(async move { Ok(respond(delete::delete(&app, req).await)) }),
        _ => Box::pin(std::future::ready(Ok(
            ApiError::MethodNotAllowed.into_response()
        ))),
    }
}

/// A handler's result as an answer: an error becomes its problem+json response.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Every request under `{base}/...`.
pub(crate) async fn stream<S: Storage>(State(app): State<App<S>>, req: Request) -> Response {
    let Ok(res) = boxed(app, req).await;
    res
}

/// The stream name of a request path: the part after the base path, still percent-encoded.
pub(crate) fn stream_name<S>(app: &App<S>, path: &str) -> Result<StreamName, ApiError> {
    let rest = path
        .strip_prefix(app.settings.base_path.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .ok_or(ApiError::NoRoute)?;
    let name = StreamName::parse(rest, app.settings.name_limits)?;
    // `__ds` spelled with percent-escapes decodes to the reserved prefix: it is still reserved.
    if name.is_reserved() {
        return Err(ApiError::NoRoute);
    }
    Ok(name)
}

/// Protocol header names, parsed once: a `&str` name is parsed and validated again on every
/// lookup or insert, which showed in the append profile.
pub(crate) mod names {
    use axum::http::HeaderName;
    use ds_protocol::headers as h;

    /// `Stream-Closed`.
    pub(crate) static STREAM_CLOSED: HeaderName = HeaderName::from_static(h::STREAM_CLOSED);
    /// `Stream-Next-Offset`.
    pub(crate) static STREAM_NEXT_OFFSET: HeaderName =
        HeaderName::from_static(h::STREAM_NEXT_OFFSET);
    /// `Stream-Up-To-Date`.
    pub(crate) static STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static(h::STREAM_UP_TO_DATE);
    /// `Stream-Cursor`.
    pub(crate) static STREAM_CURSOR: HeaderName = HeaderName::from_static(h::STREAM_CURSOR);
    /// `Stream-Seq`.
    pub(crate) static STREAM_SEQ: HeaderName = HeaderName::from_static(h::STREAM_SEQ);
    /// `Producer-Id`.
    pub(crate) static PRODUCER_ID: HeaderName = HeaderName::from_static(h::PRODUCER_ID);
    /// `Producer-Epoch`.
    pub(crate) static PRODUCER_EPOCH: HeaderName = HeaderName::from_static(h::PRODUCER_EPOCH);
    /// `Producer-Seq`.
    pub(crate) static PRODUCER_SEQ: HeaderName = HeaderName::from_static(h::PRODUCER_SEQ);
}

/// A header as text; a value that is not visible ASCII/UTF-8 is a `400`.
///
/// `name` is a [`HeaderName`](axum::http::HeaderName) from [`names`] or `http::header` on hot
/// paths, or a lowercase `&'static str`.
pub(crate) fn header_str<K>(headers: &HeaderMap, name: K) -> Result<Option<&str>, ApiError>
where
    K: axum::http::header::AsHeaderName + Copy + std::fmt::Display,
{
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::bad_request("INVALID_HEADER", format!("header {name} is not valid text"))
        }),
    }
}

/// Inserts `Stream-Next-Offset`.
pub(crate) fn set_offset(headers: &mut HeaderMap, offset: Offset) {
    headers.insert(names::STREAM_NEXT_OFFSET.clone(), offset_value(offset));
}

/// An offset as a header value.
pub(crate) fn offset_value(offset: Offset) -> HeaderValue {
    HeaderValue::from_bytes(&offset.encode()).expect("offsets are ASCII")
}

/// Inserts `Stream-Closed: true`.
pub(crate) fn set_closed(headers: &mut HeaderMap) {
    headers.insert(
        names::STREAM_CLOSED.clone(),
        HeaderValue::from_static("true"),
    );
}

/// Inserts `Content-Type`.
pub(crate) fn set_content_type(headers: &mut HeaderMap, ct: &str) {
    if let Ok(v) = HeaderValue::from_str(ct) {
        headers.insert(header::CONTENT_TYPE, v);
    }
}

/// `Cache-Control: no-store`.
pub(crate) fn set_no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The query parameters the protocol reads.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub(crate) offset: Option<String>,
    pub(crate) live: Option<String>,
    pub(crate) cursor: Option<String>,
}

impl Query {
    /// Parses a query string; repeated `offset`/`live`/`cursor` are a `400`, unknown keys are
    /// ignored (section 11.1).
    pub(crate) fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "offset" => &mut q.offset,
                "live" => &mut q.live,
                "cursor" => &mut q.cursor,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::bad_request(
                    "DUPLICATE_QUERY_PARAMETER",
                    format!("query parameter {k:?} given more than once"),
                ));
            }
            *slot = Some(percent_decode(v).ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_QUERY",
                    format!("query parameter {k:?} is not valid percent-encoded UTF-8"),
                )
            })?);
        }
        Ok(q)
    }
}

/// Decodes `%XX` escapes and `+` (as space, per form encoding); `None` on bad escapes or UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rejects_repeats_and_ignores_unknown_keys() {
        let q = Query::parse(Some("offset=-1&foo=bar&live=sse")).expect("valid");
        assert_eq!(q.offset.as_deref(), Some("-1"));
        assert_eq!(q.live.as_deref(), Some("sse"));
        assert!(Query::parse(Some("offset=a&offset=b")).is_err());
        assert_eq!(
            Query::parse(Some("offset="))
                .expect("valid")
                .offset
                .as_deref(),
            Some("")
        );
        assert!(Query::parse(Some("offset=%zz")).is_err());
        assert_eq!(
            Query::parse(Some("offset=0%201"))
                .expect("valid")
                .offset
                .as_deref(),
            Some("0 1")
        );
    }
}
