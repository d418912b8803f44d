//! Fork headers of a `PUT` (PROTOCOL.md section 4.2).

use axum::http::HeaderMap;
use ds_protocol::headers::{self as h, parse_fork_offset, parse_sub_offset};
use ds_storage::ForkRequest;

use super::header_str;
use crate::error::ApiError;
use crate::router::App;

/// Parses `Stream-Forked-From`, `Stream-Fork-Offset` and `Stream-Fork-Sub-Offset`.
///
/// The offset and sub-offset are only meaningful with a source: either without
/// `Stream-Forked-From` is a `400`, as is a non-zero sub-offset without an explicit offset
/// (the anchor of a sub-offset must be a position the client was given).
pub(super) fn parse<S>(app: &App<S>, headers: &HeaderMap) -> Result<Option<ForkRequest>, ApiError> {
    let source = header_str(headers, h::STREAM_FORKED_FROM)?;
    let offset = header_str(headers, h::STREAM_FORK_OFFSET)?
        .map(parse_fork_offset)
        .transpose()?;
    let sub_offset = header_str(headers, h::STREAM_FORK_SUB_OFFSET)?
        .map(parse_sub_offset)
        .transpose()?;
    let Some(source) = source else {
        if offset.is_some() || sub_offset.is_some() {
            return Err(ApiError::bad_request(
                "FORK_HEADERS_WITHOUT_SOURCE",
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From",
            ));
        }
        return Ok(None);
    };
    let sub_offset = sub_offset.unwrap_or(0);
    if sub_offset > 0 && offset.is_none() {
        return Err(ApiError::bad_request(
            "FORK_SUB_OFFSET_WITHOUT_OFFSET",
            "a non-zero Stream-Fork-Sub-Offset requires Stream-Fork-Offset",
        ));
    }
    // The source is a path on this server: with or without the base path, or a full URL.
    let path = source
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or(source);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let base = app.settings.base_path.as_str();
    let rest = path
        .strip_prefix(base)
        .filter(|r| r.starts_with('/'))
        .unwrap_or(path);
    let source = ds_protocol::StreamName::parse(rest, app.settings.name_limits)?;
    // Internal streams under the reserved prefix are not application streams: never a source.
    if source.is_reserved() {
        return Err(ApiError::Storage(ds_storage::Error::ForkSourceNotFound));
    }
    Ok(Some(ForkRequest {
        source,
        offset,
        sub_offset,
    }))
}
