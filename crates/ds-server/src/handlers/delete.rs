//! `DELETE`: remove a stream, or soft-delete it while forks reference it (section 5.4).

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use ds_storage::Storage;

use super::{set_no_store, stream_name};
use crate::error::ApiError;
use crate::router::App;

pub(super) async fn delete<S: Storage>(app: &App<S>, req: Request) -> Result<Response, ApiError> {
    let name = stream_name(app, req.uri().path())?;
    app.storage.delete(&name).await?;
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    set_no_store(res.headers_mut());
    Ok(res)
}
