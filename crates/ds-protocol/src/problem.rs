//! RFC 9457 problem details, the body of every error response.
//!
//! The status is a plain `u16`: this crate knows no HTTP library. `type` is derived from the
//! machine `code` as `https://durable-streams.dev/errors/{code}` with the code lowercased and
//! `_` turned into `-` (e.g. `STREAM_CLOSED` → `.../errors/stream-closed`), so each code has
//! one stable, dereferenceable-looking identifier; `code` repeats it in a form that is easy to
//! match on.

use bytes::Bytes;

/// The media type of problem bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of every problem `type` URI.
pub const PROBLEM_TYPE_BASE: &str = "https://durable-streams.dev/errors/";

/// A problem+json body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `type`: a URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// An explanation specific to this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A URI reference identifying this occurrence (typically the request path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Machine-readable code, e.g. `STREAM_CLOSED`.
    pub code: String,
}

impl Problem {
    /// A problem with `type` derived from `code` (see the module docs).
    #[must_use]
    pub fn new(status: u16, code: &str, title: &str) -> Self {
        let slug: String = code
            .chars()
            .map(|c| match c {
                '_' | ' ' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        Problem {
            type_uri: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title: title.to_owned(),
            status,
            detail: None,
            instance: None,
            code: code.to_owned(),
        }
    }

    /// Sets `detail`.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets `instance`.
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// The body as compact JSON.
    ///
    /// # Panics
    ///
    /// Never: serialising strings and an integer to JSON cannot fail.
    #[must_use]
    pub fn to_json(&self) -> Bytes {
        Bytes::from(
            serde_json::to_vec(self)
                .expect("a struct of strings and an integer always serialises to JSON"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn problem_json_table() {
        let cases = [
            (
                Problem::new(409, "STREAM_CLOSED", "Stream is closed"),
                json!({
                    "type": "https://durable-streams.dev/errors/stream-closed",
                    "title": "Stream is closed",
                    "status": 409,
                    "code": "STREAM_CLOSED",
                }),
            ),
            (
                Problem::new(400, "INVALID_TTL", "Invalid Stream-TTL")
                    .with_detail("expected digits")
                    .with_instance("/v1/stream/a"),
                json!({
                    "type": "https://durable-streams.dev/errors/invalid-ttl",
                    "title": "Invalid Stream-TTL",
                    "status": 400,
                    "detail": "expected digits",
                    "instance": "/v1/stream/a",
                    "code": "INVALID_TTL",
                }),
            ),
        ];
        for (problem, want) in cases {
            let got: serde_json::Value =
                serde_json::from_slice(&problem.to_json()).expect("valid JSON");
            assert_eq!(got, want);
        }
    }

    #[test]
    fn detail_with_quotes_and_newlines_is_escaped() {
        let body = Problem::new(400, "BAD", "t")
            .with_detail("a \"b\"\nc")
            .to_json();
        assert!(!body.contains(&b'\n'));
        let got: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(got["detail"], "a \"b\"\nc");
    }
}
