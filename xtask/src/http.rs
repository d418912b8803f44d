//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, enough to
//! drive the server under test from outside without an HTTP dependency.
//!
//! It talks to `127.0.0.1` only, keeps one connection alive between requests
//! and reconnects when it was dropped. Any failure (refused connection,
//! reset, timeout, malformed response) drops the connection and is returned
//! as an error; callers that retry simply call [`Client::request`] again.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// Connect timeout of a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read and write timeout of one request.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted status or header line.
const MAX_LINE: usize = 16 * 1024;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 200;
/// Largest accepted response body.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code.
    pub(crate) status: u16,
    /// Header fields in order, names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether header `name` is present with the value `true` (case-insensitive).
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.header(name)
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
    }

    /// A short description for reports: status and the start of the body.
    pub(crate) fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body = body.trim();
        if body.is_empty() {
            format!("{}", self.status)
        } else {
            let snippet: String = body.chars().take(160).collect();
            format!("{} {snippet}", self.status)
        }
    }
}

/// A keep-alive connection to `127.0.0.1:<port>`, reopened as needed.
pub(crate) struct Client {
    /// Port of the current connection (and of the next one).
    port: u16,
    /// The open connection, if any.
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client for `127.0.0.1:port`; connects on the first request.
    pub(crate) fn new(port: u16) -> Self {
        Self { port, conn: None }
    }

    /// Sends one request and reads the whole response.
    ///
    /// `port` is where to send it; a change of port drops the old connection.
    /// `Host` and `Content-Length` are added; `headers` are sent as given.
    pub(crate) fn request(
        &mut self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        if port != self.port {
            self.port = port;
            self.conn = None;
        }
        let result = self.exchange(method, path, headers, body);
        match &result {
            Ok((_, keep_alive)) if *keep_alive => {}
            _ => self.conn = None,
        }
        result.map(|(response, _)| response)
    }

    /// Sends on the current connection (opening one if needed); returns the
    /// response and whether the connection may be reused.
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Response, bool)> {
        if self.conn.is_none() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true).context("setting TCP_NODELAY")?;
            stream
                .set_read_timeout(Some(IO_TIMEOUT))
                .context("setting the read timeout")?;
            stream
                .set_write_timeout(Some(IO_TIMEOUT))
                .context("setting the write timeout")?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().context("no connection")?;
        let request = encode_request(self.port, method, path, headers, body);
        conn.get_mut()
            .write_all(&request)
            .context("sending the request")?;
        read_response(conn, method == "HEAD")
    }
}

/// The bytes of one request.
fn encode_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads one response; returns it and whether the connection stays usable.
///
/// `head_request` says the request was `HEAD`, whose response has no body
/// whatever its headers say.
pub(crate) fn read_response(
    reader: &mut impl BufRead,
    head_request: bool,
) -> Result<(Response, bool)> {
    let status_line = read_line(reader)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1.x status line: {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;

    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        ensure!(headers.len() < MAX_HEADERS, "too many response headers");
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };

    let mut keep_alive = !response
        .header("connection")
        .is_some_and(|value| value.eq_ignore_ascii_case("close"))
        && version != "HTTP/1.0";
    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    if no_body {
        return Ok((response, keep_alive));
    }
    if response
        .header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"))
    {
        response.body = read_chunked(reader)?;
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("bad Content-Length {length:?}"))?;
        ensure!(
            length <= MAX_BODY,
            "response body of {length} bytes is too large"
        );
        let mut body = vec![0; length];
        reader
            .read_exact(&mut body)
            .context("reading the response body")?;
        response.body = body;
    } else {
        // No framing: the body runs to the end of the connection.
        reader
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut response.body)
            .context("reading the response body")?;
        ensure!(
            response.body.len() <= MAX_BODY,
            "response body is too large"
        );
        keep_alive = false;
    }
    Ok((response, keep_alive))
}

/// Reads a chunked body (RFC 9112 section 7.1), discarding trailers.
fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        ensure!(
            body.len() + size <= MAX_BODY,
            "chunked response body is too large"
        );
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .context("reading a chunk")?;
        let end = read_line(reader)?;
        ensure!(end.is_empty(), "chunk not followed by CRLF");
    }
}

/// Reads one line ending in LF (CRLF or LF), without the line ending.
fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .context("reading from the server")?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    if line.last() != Some(&b'\n') {
        bail!("response line too long or cut off");
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).context("response line is not UTF-8")
}

/// Percent-encodes `value` for use in a query string (everything but RFC
/// 3986 unreserved characters).
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::{encode_query_value, encode_request, read_response};

    fn parse(raw: &str, head: bool) -> (super::Response, bool) {
        read_response(&mut Cursor::new(raw.as_bytes().to_vec()), head).expect("valid response")
    }

    #[test]
    fn content_length_body() {
        let (r, keep) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nStream-Up-To-Date: TRUE\r\n\r\nhelloEXTRA",
            false,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(keep);
        assert!(r.flag("stream-up-to-date"));
        assert_eq!(r.header("CONTENT-LENGTH"), Some("5"));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let (r, keep) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n",
            false,
        );
        assert_eq!(r.body, b"abc0123456789");
        assert!(keep);
    }

    #[test]
    fn no_body_cases() {
        let (r, keep) = parse(
            "HTTP/1.1 204 No Content\r\nStream-Closed: true\r\n\r\n",
            false,
        );
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        assert!(r.flag("stream-closed"));
        assert!(keep);
        let (r, _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true);
        assert!(r.body.is_empty());
    }

    #[test]
    fn unframed_body_and_connection_close() {
        let (r, keep) = parse("HTTP/1.1 200 OK\r\n\r\nto the end", false);
        assert_eq!(r.body, b"to the end");
        assert!(!keep);
        let (_, keep) = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!keep);
    }

    #[test]
    fn malformed_responses_are_errors() {
        for raw in [
            "",
            "SSH-2.0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                read_response(&mut Cursor::new(raw.as_bytes().to_vec()), false).is_err(),
                "accepted {raw:?}"
            );
        }
    }

    #[test]
    fn requests_carry_host_and_length() {
        let request = encode_request(8080, "POST", "/s", &[("Producer-Id", "p1")], b"xy");
        assert_eq!(
            request,
            b"POST /s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nProducer-Id: p1\r\nContent-Length: 2\r\n\r\nxy"
        );
        let request = encode_request(1, "GET", "/s", &[], b"");
        assert_eq!(request, b"GET /s HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("-1"), "-1");
        assert_eq!(encode_query_value("0001_0a~"), "0001_0a~");
        assert_eq!(encode_query_value("a b/c&"), "a%20b%2Fc%26");
    }
}
