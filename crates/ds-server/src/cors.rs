//! CORS for browser clients (`http.cors_origins`), with every header value built once.
//!
//! - A preflight (`OPTIONS`) is answered here with `204`, the allowed methods, the protocol's
//!   request headers and a one-day `Access-Control-Max-Age`; it never reaches a handler.
//! - A request with an allowed `Origin` gets `Access-Control-Allow-Origin` (`*`, or the origin
//!   itself when a list is configured) and `Access-Control-Expose-Headers` listing the protocol's
//!   response headers, so browser code can read offsets, cursors and producer state.
//! - Reads (`GET`/`HEAD`) get those headers even without an `Origin` when every origin is
//!   allowed: a CDN may serve a cached catch-up read to a browser later, and the cached copy must
//!   carry them. Writes without an `Origin` (servers, CLIs, SDKs outside a browser) get none,
//!   which keeps the hot append response small.
//! - With an origin list, every response varies on `Origin` and says so.

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method};

/// The CORS policy, with its header values prebuilt.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    /// `None`: any origin (`*`); otherwise the allowed origins, exactly as configured.
    origins: Option<Vec<HeaderValue>>,
    expose: HeaderValue,
    allow_headers: HeaderValue,
    allow_methods: HeaderValue,
    max_age: HeaderValue,
}

/// What [`Cors::decide`] found for one request, applied to its response by [`Cors::apply`].
#[derive(Debug)]
pub(crate) struct Decision {
    allow_origin: Option<HeaderValue>,
    vary: bool,
}

const ANY: HeaderValue = HeaderValue::from_static("*");

impl Cors {
    /// A policy from `http.cors_origins`: `*`, or a comma-separated list of origins.
    pub(crate) fn new(origins: &str) -> Cors {
        let origins = (origins.trim() != "*").then(|| {
            origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect()
        });
        let joined = |list: &[&str]| {
            HeaderValue::from_str(&list.join(",")).expect("protocol header names are valid")
        };
        Cors {
            origins,
            expose: joined(ds_protocol::headers::PROTOCOL_RESPONSE_HEADERS),
            allow_headers: joined(ds_protocol::headers::PROTOCOL_REQUEST_HEADERS),
            allow_methods: HeaderValue::from_static("GET,HEAD,PUT,POST,DELETE,OPTIONS"),
            max_age: HeaderValue::from_static("86400"),
        }
    }

    /// Decides what the response to a request with `method` and `headers` carries.
    pub(crate) fn decide(&self, method: &Method, headers: &HeaderMap) -> Decision {
        let origin = headers.get(ORIGIN);
        match &self.origins {
            None => {
                let read = *method == Method::GET || *method == Method::HEAD;
                Decision {
                    allow_origin: (origin.is_some() || read).then_some(ANY),
                    vary: false,
                }
            }
            Some(list) => Decision {
                allow_origin: origin.filter(|o| list.contains(o)).cloned(),
                vary: true,
            },
        }
    }

    /// Adds the decided headers to a response.
    pub(crate) fn apply(&self, decision: Decision, headers: &mut HeaderMap) {
        if decision.vary {
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
        if let Some(origin) = decision.allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, self.expose.clone());
        }
    }

    /// Adds the preflight headers (allowed methods, request headers, max age, origin).
    pub(crate) fn apply_preflight(&self, decision: Decision, headers: &mut HeaderMap) {
        if decision.vary {
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if let Some(origin) = decision.allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    fn applied(cors: &Cors, method: &Method, origin: Option<&'static str>) -> HeaderMap {
        let mut out = HeaderMap::new();
        cors.apply(cors.decide(method, &headers(origin)), &mut out);
        out
    }

    #[test]
    fn any_origin_answers_browsers_and_reads_and_keeps_plain_writes_small() {
        let cors = Cors::new("*");
        let h = applied(&cors, &Method::POST, Some("https://app.test"));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            h[ACCESS_CONTROL_EXPOSE_HEADERS]
                .to_str()
                .expect("ascii")
                .contains("stream-next-offset")
        );
        let h = applied(&cors, &Method::GET, None);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*", "cacheable reads");
        let h = applied(&cors, &Method::POST, None);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn an_origin_list_echoes_allowed_origins_and_varies() {
        let cors = Cors::new("https://a.test, https://b.test");
        let h = applied(&cors, &Method::GET, Some("https://b.test"));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://b.test");
        assert_eq!(h[VARY], "origin");
        let h = applied(&cors, &Method::GET, Some("https://evil.test"));
        assert!(h.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(h[VARY], "origin");
        let h = applied(&cors, &Method::POST, None);
        assert!(h.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn preflight_lists_methods_and_protocol_request_headers() {
        let cors = Cors::new("*");
        let mut h = HeaderMap::new();
        cors.apply_preflight(
            cors.decide(&Method::OPTIONS, &headers(Some("https://app.test"))),
            &mut h,
        );
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "86400");
        let allowed = h[ACCESS_CONTROL_ALLOW_HEADERS].to_str().expect("ascii");
        assert!(allowed.contains("producer-id") && allowed.contains("if-none-match"));
        assert!(
            h[ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .expect("ascii")
                .contains("DELETE")
        );
    }
}
