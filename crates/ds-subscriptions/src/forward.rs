//! Serving the subscription routes on every node of a cluster: a node that is not the active
//! one forwards each request through [`Cluster::call`], and the active one answers it by running
//! it through the same router ([`answer`]).
//!
//! The wire format is private to this crate and versioned; every length is big-endian, and a
//! node that cannot decode a message answers `503` (a rolling upgrade then costs retries, not
//! wrong answers).
//!
//! ```text
//! request  (version 1): "DSF" 0x01 'Q'  method  target  root  opt(authorization)  opt(content-type)  body
//! response (version 1): "DSF" 0x01 'R'  status:u16  count:u16  (name value){count}  body
//!
//! method, target, root, name:  u32 length + UTF-8      (target = path and query under the router)
//! value, body:                 u32 length + bytes
//! opt(x):                      0x00 (absent) | 0x01 x  (x as value)
//! ```
//!
//! `root` is the stream root the forwarding node computed for the request (its public origin
//! or `Host`, plus the path the router is nested at, or its `public_base_url`): the active node
//! builds `callback_url` and `jwks_url` from it, so they are what the client's node would have
//! built.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ds_storage::{Call, Cluster, Storage};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::api::ApiError;
use crate::engine::{LEASE, MAX_BODY_BYTES, Subscriptions};

const MAGIC: &[u8; 3] = b"DSF";
const VERSION: u8 = 1;
const REQUEST: u8 = b'Q';
const RESPONSE: u8 = b'R';

/// A request extension marking a request another node forwarded here, with the stream root
/// that node computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forwarded {
    pub(crate) root: String,
}

/// What the handlers need from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireRequest {
    pub(crate) method: String,
    /// Path and query, relative to the router.
    pub(crate) target: String,
    pub(crate) root: String,
    pub(crate) authorization: Option<Bytes>,
    pub(crate) content_type: Option<Bytes>,
    pub(crate) body: Bytes,
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) body: Bytes,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed forwarded message: {0}")]
pub(crate) struct WireError(&'static str);

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity + 64);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.push(kind);
        Writer(buf)
    }

    fn bytes(&mut self, b: &[u8]) {
        let len = u32::try_from(b.len()).expect("forwarded fields are far below 4 GiB");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
    }

    fn opt(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.0.push(1);
                self.bytes(b);
            }
            None => self.0.push(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn open(buf: &'a [u8], kind: u8) -> Result<Reader<'a>, WireError> {
        let rest = buf.strip_prefix(MAGIC).ok_or(WireError("bad magic"))?;
        match rest {
            [VERSION, k, rest @ ..] if *k == kind => Ok(Reader(rest)),
            [VERSION, ..] => Err(WireError("unexpected message kind")),
            _ => Err(WireError("unsupported version")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let b = self.take(4)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.take(usize::try_from(len).map_err(|_| WireError("length too large"))?)
    }

    fn string(&mut self) -> Result<String, WireError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| WireError("invalid UTF-8"))
    }

    fn opt(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            _ => Err(WireError("bad option tag")),
        }
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError("trailing bytes"))
        }
    }
}

impl WireRequest {
    pub(crate) fn encode(&self) -> Bytes {
        let mut w = Writer::new(
            REQUEST,
            self.body.len() + self.target.len() + self.root.len(),
        );
        w.bytes(self.method.as_bytes());
        w.bytes(self.target.as_bytes());
        w.bytes(self.root.as_bytes());
        w.opt(self.authorization.as_deref());
        w.opt(self.content_type.as_deref());
        w.bytes(&self.body);
        Bytes::from(w.0)
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<WireRequest, WireError> {
        let mut r = Reader::open(buf, REQUEST)?;
        let req = WireRequest {
            method: r.string()?,
            target: r.string()?,
            root: r.string()?,
            authorization: r.opt()?.map(Bytes::copy_from_slice),
            content_type: r.opt()?.map(Bytes::copy_from_slice),
            body: Bytes::copy_from_slice(r.bytes()?),
        };
        r.end()?;
        Ok(req)
    }

    /// The request the router runs on the active node, marked [`Forwarded`].
    fn into_http(self) -> Result<Request, WireError> {
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|_| WireError("bad method"))?;
        let uri: Uri = self.target.parse().map_err(|_| WireError("bad target"))?;
        if !self.target.starts_with('/') {
            return Err(WireError("bad target"));
        }
        let mut req = Request::new(Body::from(self.body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (name, value) in [
            (header::AUTHORIZATION, self.authorization),
            (header::CONTENT_TYPE, self.content_type),
        ] {
            if let Some(value) = value {
                let value =
                    HeaderValue::from_maybe_shared(value).map_err(|_| WireError("bad header"))?;
                req.headers_mut().insert(name, value);
            }
        }
        req.extensions_mut().insert(Forwarded { root: self.root });
        Ok(req)
    }
}

impl WireResponse {
    pub(crate) fn encode(&self) -> Bytes {
        let mut w = Writer::new(RESPONSE, self.body.len());
        w.0.extend_from_slice(&self.status.to_be_bytes());
        let count = u16::try_from(self.headers.len()).expect("a response has few headers");
        w.0.extend_from_slice(&count.to_be_bytes());
        for (name, value) in &self.headers {
            w.bytes(name.as_bytes());
            w.bytes(value);
        }
        w.bytes(&self.body);
        Bytes::from(w.0)
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<WireResponse, WireError> {
        let mut r = Reader::open(buf, RESPONSE)?;
        let status = r.u16()?;
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = r.string()?;
            let value = Bytes::copy_from_slice(r.bytes()?);
            headers.push((name, value));
        }
        let body = Bytes::copy_from_slice(r.bytes()?);
        r.end()?;
        Ok(WireResponse {
            status,
            headers,
            body,
        })
    }

    /// The handler's response as sent: status, the headers that describe the body or the
    /// outcome (not the framing ones, which the client's node sets again), and the body.
    async fn from_http(res: Response) -> WireResponse {
        let (parts, body) = res.into_parts();
        let Ok(body) = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
        else {
            return WireResponse::unavailable();
        };
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                ![
                    header::CONTENT_LENGTH,
                    header::TRANSFER_ENCODING,
                    header::CONNECTION,
                ]
                .contains(name)
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
            })
            .collect();
        WireResponse {
            status: parts.status.as_u16(),
            headers,
            body,
        }
    }

    /// A bare `503` for the (never seen) case of a handler body that cannot be read.
    fn unavailable() -> WireResponse {
        WireResponse {
            status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            headers: vec![(
                header::RETRY_AFTER.as_str().to_owned(),
                Bytes::from_static(b"1"),
            )],
            body: Bytes::new(),
        }
    }

    fn into_http(self) -> Response {
        let mut res = Response::new(Body::from(self.body));
        *res.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value),
            ) {
                res.headers_mut().append(name, value);
            }
        }
        res
    }
}

/// The encoded [`ApiError::NotServing`] answer, for a request this node accepted but cannot run.
pub(crate) async fn not_serving() -> Bytes {
    WireResponse::from_http(ApiError::NotServing.into_response())
        .await
        .encode()
}

/// Whether the request is for the JWK Set, which every node answers itself: the signing key
/// is in the shared store and every node loaded it on open.
fn is_jwks(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path() == "/jwks.json"
}

/// The router's outermost layer: in cluster mode, a node that is not the active one forwards
/// the request to the one that is (a request forwarded to it is answered `503` instead, so a
/// request is never forwarded twice).
pub(crate) async fn route<S: Storage>(
    State(engine): State<Arc<Subscriptions<S>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(cluster) = engine.cluster().cloned() else {
        return next.run(req).await;
    };
    if engine.is_active() || is_jwks(&req) {
        return next.run(req).await;
    }
    if req.extensions().get::<Forwarded>().is_some() {
        return ApiError::NotServing.into_response();
    }
    forward(&engine, &*cluster, req).await
}

/// Sends `req` to the active node and turns its answer into the response.
async fn forward<S: Storage>(
    engine: &Subscriptions<S>,
    cluster: &dyn Cluster,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Failed to buffer the request body: length limit exceeded",
                )
                    .into_response()
            } else {
                (StatusCode::BAD_REQUEST, "Failed to buffer the request body").into_response()
            };
        }
    };
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
    };
    let wire = WireRequest {
        method: parts.method.as_str().to_owned(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        root: engine.root(&crate::router::request_root(&parts)).to_owned(),
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        body,
    };
    let timeout = Duration::from_millis(engine.config().cluster_call_timeout_ms);
    match cluster.call(LEASE, wire.encode(), timeout).await {
        Ok(reply) => match WireResponse::decode(&reply) {
            Ok(res) => res.into_http(),
            Err(e) => {
                tracing::warn!(error = %e, "the active node's answer to a forwarded subscription request could not be decoded");
                ApiError::NotServing.into_response()
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no node answered a forwarded subscription request");
            ApiError::NotServing.into_response()
        }
    }
}

/// Runs a forwarded request through this (active) node's router and replies with the answer.
pub(crate) async fn answer<S: Storage>(engine: Arc<Subscriptions<S>>, call: Call) {
    let reply = match WireRequest::decode(&call.request).and_then(WireRequest::into_http) {
        Ok(req) => {
            let res = crate::router::router(engine)
                .oneshot(req)
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            WireResponse::from_http(res).await.encode()
        }
        Err(e) => {
            tracing::warn!(error = %e, "a forwarded subscription request could not be decoded");
            not_serving().await
        }
    };
    let _ = call.reply.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> WireRequest {
        WireRequest {
            method: "POST".to_owned(),
            target: "/subscriptions/a%20b/callback?x=1".to_owned(),
            root: "https://streams.example.com/v1/stream".to_owned(),
            authorization: Some(Bytes::from_static(b"Bearer abc.def")),
            content_type: None,
            body: Bytes::from_static(br#"{"wake_id":"w_1","generation":3,"done":true}"#),
        }
    }

    fn response() -> WireResponse {
        WireResponse {
            status: 409,
            headers: vec![
                (
                    "content-type".to_owned(),
                    Bytes::from_static(b"application/json"),
                ),
                ("retry-after".to_owned(), Bytes::from_static(b"1")),
            ],
            body: Bytes::from_static(br#"{"error":{"code":"FENCED"}}"#),
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let req = request();
        assert_eq!(WireRequest::decode(&req.encode()), Ok(req));
        let empty = WireRequest {
            method: "GET".to_owned(),
            target: "/".to_owned(),
            root: String::new(),
            authorization: None,
            content_type: Some(Bytes::from_static(b"application/json")),
            body: Bytes::new(),
        };
        assert_eq!(WireRequest::decode(&empty.encode()), Ok(empty));
        let res = response();
        assert_eq!(WireResponse::decode(&res.encode()), Ok(res));
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let res = WireResponse {
            status: 204,
            headers: vec![("a".to_owned(), Bytes::from_static(b"b"))],
            body: Bytes::from_static(b"xy"),
        };
        assert_eq!(
            res.encode().as_ref(),
            b"DSF\x01R\x00\xcc\x00\x01\x00\x00\x00\x01a\x00\x00\x00\x01b\x00\x00\x00\x02xy"
        );
    }

    #[test]
    fn damaged_or_foreign_messages_are_rejected() {
        let encoded = request().encode();
        for cut in 0..encoded.len() {
            assert!(
                WireRequest::decode(&encoded[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = encoded.to_vec();
        trailing.push(0);
        assert_eq!(
            WireRequest::decode(&trailing),
            Err(WireError("trailing bytes"))
        );
        let mut future = encoded.to_vec();
        future[3] = 2;
        assert_eq!(
            WireRequest::decode(&future),
            Err(WireError("unsupported version"))
        );
        // A response is not a request.
        assert_eq!(
            WireRequest::decode(&response().encode()),
            Err(WireError("unexpected message kind"))
        );
        let mut bad_tag = encoded.to_vec();
        let tag_at = 5 + (4 + 4) + (4 + request().target.len()) + (4 + request().root.len());
        assert_eq!(bad_tag[tag_at], 1, "the authorization option tag");
        bad_tag[tag_at] = 7;
        assert_eq!(
            WireRequest::decode(&bad_tag),
            Err(WireError("bad option tag"))
        );
        let mut huge = b"DSF\x01R\x00\xc8\x00\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(WireResponse::decode(&huge), Err(WireError("truncated")));
    }

    #[tokio::test]
    async fn a_forwarded_request_carries_its_root_and_headers() {
        let req = request().into_http().expect("valid");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/subscriptions/a%20b/callback");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.headers()[header::AUTHORIZATION], "Bearer abc.def");
        assert!(req.headers().get(header::CONTENT_TYPE).is_none());
        assert_eq!(
            req.extensions().get::<Forwarded>(),
            Some(&Forwarded {
                root: "https://streams.example.com/v1/stream".to_owned()
            })
        );
        let not_a_path = WireRequest {
            target: "http://elsewhere/x".to_owned(),
            ..request()
        };
        assert!(not_a_path.into_http().is_err());
    }

    #[tokio::test]
    async fn the_not_serving_answer_is_a_503_with_retry_after() {
        let res = WireResponse::decode(&not_serving().await).expect("decodes");
        assert_eq!(res.status, 503);
        assert!(
            res.headers
                .iter()
                .any(|(n, v)| n == "retry-after" && v == "1")
        );
        let body: serde_json::Value = serde_json::from_slice(&res.body).expect("json");
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
        let http = res.into_http();
        assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http.headers()[header::RETRY_AFTER], "1");
    }
}
