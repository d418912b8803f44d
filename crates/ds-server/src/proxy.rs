//! Reverse-proxy trust: which client address, scheme and host a request is for.
//!
//! Forwarded metadata (`X-Forwarded-For/-Proto/-Host`, or RFC 7239 `Forwarded`) is honoured
//! only when `proxy.enabled` and the connection's peer address is inside
//! `proxy.trusted_proxies`; from anyone else it is ignored, since any client can send those
//! headers. The result, [`ClientOrigin`], is a request extension used for the `Location` of a
//! `201`, for request spans and for any URL the server hands out.
//!
//! The identity header (`proxy.identity.header_name`) survives only when identity hand-off is
//! configured, the connection is mutually authenticated TLS and the peer is a trusted proxy;
//! otherwise it is removed before any handler sees the request.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use crate::config::{Config, ForwardedHeaders, IdentityMode};

/// What the server knows about the connection a request arrived on (set by the accept loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// The peer presented a client certificate that verified against `client_ca_path`.
    pub client_verified: bool,
}

/// The client as seen through trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOrigin {
    /// The client address (the peer's, unless a trusted proxy named another).
    pub address: Option<IpAddr>,
    /// `http` or `https`, as the client used it.
    pub scheme: &'static str,
    /// The host (and port) the client addressed, when known.
    pub host: Option<String>,
    /// Whether forwarded metadata from a trusted proxy was applied.
    pub forwarded: bool,
}

impl ClientOrigin {
    /// `scheme://host` for absolute URLs, when the host is known.
    #[must_use]
    pub fn base_url(&self) -> Option<String> {
        self.host.as_ref().map(|h| format!("{}://{h}", self.scheme))
    }
}

/// The identity a trusted proxy asserted for the client (mtls deployments only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// Proxy-trust settings derived from [`Config`].
#[derive(Debug, Clone, Default)]
pub struct ProxyTrust {
    /// Whether forwarded metadata may be honoured at all.
    pub enabled: bool,
    /// Which header style to read.
    pub headers: ForwardedHeaders,
    /// Peers whose headers are honoured.
    pub trusted: Vec<IpNet>,
    /// The identity header, when hand-off is configured (`proxy.identity.mode = "header"`).
    pub identity_header: Option<HeaderName>,
    /// A header to strip from every request: the configured identity header name, whatever the
    /// mode, so a client can never smuggle it past a later hop.
    pub strip_header: Option<HeaderName>,
}

impl ProxyTrust {
    /// From a validated configuration (invalid entries, impossible after validation, are
    /// skipped).
    #[must_use]
    pub fn from_config(cfg: &Config) -> Self {
        let header = cfg
            .proxy
            .identity
            .header_name
            .as_deref()
            .and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok());
        ProxyTrust {
            enabled: cfg.proxy.enabled,
            headers: cfg.proxy.forwarded_headers,
            trusted: cfg.proxy.trusted_networks().unwrap_or_default(),
            identity_header: match cfg.proxy.identity.mode {
                IdentityMode::Header => header.clone(),
                IdentityMode::None => None,
            },
            strip_header: header,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Resolves the origin of a request from `peer` (unknown for in-process requests).
    #[must_use]
    pub fn origin(
        &self,
        conn: Option<&ConnectionInfo>,
        headers: &HeaderMap,
        uri_authority: Option<&str>,
    ) -> ClientOrigin {
        let direct = ClientOrigin {
            address: conn.map(|c| canonical(c.peer.ip())),
            scheme: if conn.is_some_and(|c| c.tls) {
                "https"
            } else {
                "http"
            },
            host: headers
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .filter(|h| valid_host(h))
                .or(uri_authority)
                .map(str::to_owned),
            forwarded: false,
        };
        let Some(conn) = conn else { return direct };
        if !self.enabled || !self.is_trusted(conn.peer.ip()) {
            return direct;
        }
        let hop = match self.headers {
            ForwardedHeaders::None => return direct,
            ForwardedHeaders::XForwarded => self.x_forwarded(headers),
            ForwardedHeaders::Forwarded => self.forwarded(headers),
        };
        let Some(hop) = hop else { return direct };
        ClientOrigin {
            address: hop.address.or(direct.address),
            scheme: hop.scheme.unwrap_or(direct.scheme),
            host: hop.host.or(direct.host),
            forwarded: true,
        }
    }

    /// `X-Forwarded-For` walked from the right past trusted proxies; `-Proto` and `-Host`
    /// taken from their first (client-facing) value.
    fn x_forwarded(&self, headers: &HeaderMap) -> Option<Hop> {
        let list = joined(headers, "x-forwarded-for");
        let address = match &list {
            Some(list) => {
                let addrs: Option<Vec<IpAddr>> = list.split(',').map(parse_node).collect();
                // One unparsable entry makes the whole chain untrustworthy.
                let addrs = addrs?;
                addrs
                    .iter()
                    .rev()
                    .find(|a| !self.is_trusted(**a))
                    .or(addrs.first())
                    .copied()
            }
            None => None,
        };
        let scheme = joined(headers, "x-forwarded-proto")
            .and_then(|v| v.split(',').next().and_then(|s| parse_scheme(s.trim())));
        let host = joined(headers, "x-forwarded-host").and_then(|v| {
            v.split(',')
                .next()
                .map(str::trim)
                .filter(|h| valid_host(h))
                .map(str::to_owned)
        });
        if address.is_none() && scheme.is_none() && host.is_none() {
            return None;
        }
        Some(Hop {
            address,
            scheme,
            host,
        })
    }

    /// RFC 7239: the elements are walked from the right past trusted proxies; the first
    /// element added by an untrusted hop (or the leftmost) describes the client.
    fn forwarded(&self, headers: &HeaderMap) -> Option<Hop> {
        let value = joined(headers, "forwarded")?;
        let mut elements = Vec::new();
        for element in split_unquoted(&value, ',') {
            let mut hop = ForwardedElement::default();
            for pair in split_unquoted(element, ';') {
                let (k, v) = pair.split_once('=')?;
                let v = unquote(v.trim());
                match k.trim().to_ascii_lowercase().as_str() {
                    "for" => hop.for_node = Some(v.to_owned()),
                    "proto" => hop.proto = Some(v.to_owned()),
                    "host" => hop.host = Some(v.to_owned()),
                    _ => {}
                }
            }
            elements.push(hop);
        }
        let chosen = elements
            .iter()
            .rev()
            .find(|e| {
                e.for_node
                    .as_deref()
                    .and_then(parse_node)
                    .is_none_or(|ip| !self.is_trusted(ip))
            })
            .or(elements.first())?;
        Some(Hop {
            address: chosen.for_node.as_deref().and_then(parse_node),
            scheme: chosen.proto.as_deref().and_then(parse_scheme),
            host: chosen
                .host
                .as_deref()
                .filter(|h| valid_host(h))
                .map(str::to_owned),
        })
    }

    /// Applies the identity rule: keep the header only from a trusted proxy over mtls.
    fn identity(
        &self,
        conn: Option<&ConnectionInfo>,
        headers: &mut HeaderMap,
    ) -> Option<ClientIdentity> {
        let strip = self.strip_header.as_ref()?;
        let allowed = self.identity_header.is_some()
            && self.enabled
            && conn.is_some_and(|c| c.tls && c.client_verified && self.is_trusted(c.peer.ip()));
        if allowed {
            headers
                .get(strip)
                .and_then(|v| v.to_str().ok())
                .map(|v| ClientIdentity(v.to_owned()))
        } else {
            if headers.remove(strip).is_some() {
                tracing::debug!(header = %strip, "stripped an identity header from an untrusted hop");
            }
            None
        }
    }
}

#[derive(Debug, Default)]
struct ForwardedElement {
    for_node: Option<String>,
    proto: Option<String>,
    host: Option<String>,
}

#[derive(Debug)]
struct Hop {
    address: Option<IpAddr>,
    scheme: Option<&'static str>,
    host: Option<String>,
}

/// An IPv4-mapped IPv6 address compares as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// All values of a header joined with `,` (a header may be repeated).
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        match &mut out {
            Some(s) => {
                s.push(',');
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80` or a bare IPv6 address.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let s = unquote(raw.trim());
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

fn parse_scheme(s: &str) -> Option<&'static str> {
    match s.trim().to_ascii_lowercase().as_str() {
        "http" => Some("http"),
        "https" => Some("https"),
        _ => None,
    }
}

/// Whether `h` is a `Host` value (RFC 9110 section 7.2: `uri-host [ ":" port ]`, RFC 3986's
/// grammar): a registered name or IPv4 address, or a bracketed IPv6 literal, and an optional
/// decimal port up to 65535. No user info, path or whitespace.
///
/// Checked in place: parsing it as an `http::uri::Authority` copied it into a new buffer on
/// every request only to drop it again.
fn valid_host(h: &str) -> bool {
    let b = h.as_bytes();
    let (host_ok, port) = if let Some(rest) = b.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&c| c == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
        match &rest[end + 1..] {
            [] => (ok, None),
            [b':', port @ ..] => (ok, Some(port)),
            _ => return false,
        }
    } else {
        let (name, port) = match b.iter().position(|&c| c == b':') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        };
        (!name.is_empty() && reg_name(name), port)
    };
    host_ok
        && port.is_none_or(|p| {
            (1..=5).contains(&p.len())
                && p.iter().all(u8::is_ascii_digit)
                && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65_535
        })
}

/// RFC 3986 `reg-name` (which includes IPv4 addresses): unreserved characters, sub-delims and
/// percent-escapes.
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                if !name
                    .get(i + 1..i + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                ) =>
            {
                i += 1;
            }
            _ => return false,
        }
    }
    true
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// Splits on `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(s[start..i].trim());
            start = i + c.len_utf8();
        }
    }
    parts.push(s[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Resolves [`ClientOrigin`] (and [`ClientIdentity`]) for a request, as request extensions.
///
/// `public_origin` also inserts [`ds_subscriptions::PublicOrigin`], the absolute base URL the
/// client saw: only the subscription APIs need it (for callback and JWKS URLs).
pub(crate) fn resolve_origin(
    trust: &ProxyTrust,
    req: &mut Request,
    public_origin: bool,
    conn: Option<ConnectionInfo>,
) {
    let conn = conn
        .or_else(|| req.extensions().get::<ConnectionInfo>().copied())
        .or_else(|| {
            // Embedders serving with `into_make_service_with_connect_info::<SocketAddr>()`.
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| ConnectionInfo {
                    peer: *peer,
                    tls: false,
                    client_verified: false,
                })
        });
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let origin = trust.origin(conn.as_ref(), req.headers(), authority.as_deref());
    let identity = trust.identity(conn.as_ref(), req.headers_mut());
    if public_origin && let Some(base) = origin.base_url() {
        req.extensions_mut()
            .insert(ds_subscriptions::PublicOrigin(base));
    }
    req.extensions_mut().insert(origin);
    if let Some(id) = identity {
        req.extensions_mut().insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn host_values_are_checked_against_the_uri_grammar() {
        for ok in [
            "example.com",
            "a.example:8443",
            "h:1",
            "127.0.0.1:65535",
            "[::1]",
            "[2001:db8::7]:443",
            "xn--bcher-kva.example",
            "a%20b",
            "sub_delims!$&'()*+,;=~",
        ] {
            assert!(valid_host(ok), "{ok:?} is a host");
        }
        for bad in [
            "",
            ":80",
            "user@example.com",
            "example.com:",
            "example.com:65536",
            "example.com:123456",
            "example.com:8a",
            "a:1:2",
            "example.com/path",
            "exa mple.com",
            "a%2",
            "a%zz",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:",
            "[fe80::1%25eth0]",
            "\u{e9}.example",
        ] {
            assert!(!valid_host(bad), "{bad:?} is not a host");
        }
    }

    fn trust(headers: ForwardedHeaders) -> ProxyTrust {
        ProxyTrust {
            enabled: true,
            headers,
            trusted: vec!["10.0.0.0/24".parse().expect("cidr")],
            identity_header: None,
            strip_header: None,
        }
    }

    fn conn(peer: &str) -> ConnectionInfo {
        ConnectionInfo {
            peer: peer.parse().expect("addr"),
            tls: false,
            client_verified: false,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn x_forwarded_is_walked_from_the_right_past_trusted_hops() {
        let t = trust(ForwardedHeaders::XForwarded);
        let h = headers(&[
            ("host", "internal:4437"),
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "streams.example.com"),
        ]);
        let o = t.origin(Some(&conn("10.0.0.5:5000")), &h, None);
        assert_eq!(o.address, Some("203.0.113.9".parse().expect("ip")));
        assert_eq!(o.scheme, "https");
        assert_eq!(o.host.as_deref(), Some("streams.example.com"));
        assert_eq!(o.base_url().as_deref(), Some("https://streams.example.com"));
        // The same headers from an untrusted peer are ignored.
        let o = t.origin(Some(&conn("192.0.2.1:5000")), &h, None);
        assert_eq!(o.address, Some("192.0.2.1".parse().expect("ip")));
        assert_eq!(
            (o.scheme, o.host.as_deref()),
            ("http", Some("internal:4437"))
        );
    }

    #[test]
    fn rfc7239_forwarded_is_parsed_with_quotes_and_ports() {
        let t = trust(ForwardedHeaders::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https;host=\"a.example:8443\", for=10.0.0.9",
        )]);
        let o = t.origin(Some(&conn("10.0.0.5:5000")), &h, None);
        assert_eq!(o.address, Some("2001:db8::1".parse().expect("ip")));
        assert_eq!(o.scheme, "https");
        assert_eq!(o.host.as_deref(), Some("a.example:8443"));
        // X-Forwarded-* are not read in forwarded mode.
        let h = headers(&[("x-forwarded-proto", "https"), ("host", "h")]);
        let o = t.origin(Some(&conn("10.0.0.5:5000")), &h, None);
        assert_eq!(o.scheme, "http");
    }

    #[test]
    fn garbage_forwarded_values_fall_back_to_the_connection() {
        let t = trust(ForwardedHeaders::XForwarded);
        let h = headers(&[
            ("host", "h:1"),
            ("x-forwarded-for", "not-an-ip"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "bad host"),
        ]);
        let o = t.origin(Some(&conn("10.0.0.5:5000")), &h, None);
        assert_eq!(o.address, Some("10.0.0.5".parse().expect("ip")));
        assert_eq!((o.scheme, o.host.as_deref()), ("http", Some("h:1")));
    }

    #[test]
    fn identity_header_survives_only_mtls_from_a_trusted_proxy() {
        let name = HeaderName::from_static("x-client-identity");
        let t = ProxyTrust {
            identity_header: Some(name.clone()),
            strip_header: Some(name.clone()),
            ..trust(ForwardedHeaders::Forwarded)
        };
        let mtls = ConnectionInfo {
            tls: true,
            client_verified: true,
            ..conn("10.0.0.5:1")
        };
        let mut h = headers(&[("x-client-identity", "alice")]);
        assert_eq!(
            t.identity(Some(&mtls), &mut h),
            Some(ClientIdentity("alice".into()))
        );
        for c in [
            conn("10.0.0.5:1"),
            ConnectionInfo {
                tls: true,
                client_verified: true,
                ..conn("192.0.2.1:1")
            },
        ] {
            let mut h = headers(&[("x-client-identity", "mallory")]);
            assert_eq!(t.identity(Some(&c), &mut h), None);
            assert!(h.get("x-client-identity").is_none(), "stripped");
        }
    }
}
