//! `HEAD`: metadata without a body, never cached (section 5.5).

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use ds_protocol::Expiry;
use ds_protocol::headers::{self as h, format_expires_at};
use ds_storage::Storage;

use super::{set_closed, set_content_type, set_no_store, set_offset, stream_name};
use crate::error::ApiError;
use crate::router::App;

pub(super) async fn head<S: Storage>(app: &App<S>, req: Request) -> Result<Response, ApiError> {
    let name = stream_name(app, req.uri().path())?;
    let info = app.storage.head(&name).await?;
    let mut res = Response::new(axum::body::Body::empty());
    let out = res.headers_mut();
    set_content_type(out, &info.content_type);
    set_offset(out, info.next);
    if info.closed {
        set_closed(out);
    }
    match info.expiry {
        Expiry::None => {}
        Expiry::Ttl(secs) => {
            out.insert(h::STREAM_TTL, HeaderValue::from(secs));
        }
        Expiry::ExpiresAt(at) => {
            if let Ok(v) = HeaderValue::from_str(&format_expires_at(at)) {
                out.insert(h::STREAM_EXPIRES_AT, v);
            }
        }
    }
    set_no_store(out);
    Ok(res)
}
