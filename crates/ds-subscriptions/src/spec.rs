//! A subscription's configuration: parsing the `PUT` body, validation, normalisation and the
//! hash used for idempotent re-confirmation (PROTOCOL.md section 6.2).

use std::collections::BTreeSet;

use ds_protocol::{NameLimits, StreamName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::glob::Glob;

/// Shortest accepted `lease_ttl_ms`.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
/// Longest accepted `lease_ttl_ms`.
pub const MAX_LEASE_TTL_MS: u64 = 600_000;
/// `lease_ttl_ms` when the request does not give one.
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;
/// Longest accepted subscription id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest accepted `description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most explicit streams accepted in one request.
pub const MAX_STREAMS_PER_REQUEST: usize = 10_000;

/// How a subscription delivers wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `webhook`: a signed `POST` to `webhook.url`.
    #[serde(rename = "webhook")]
    Webhook,
    /// `pull-wake`: a wake event appended to `wake_stream`.
    #[serde(rename = "pull-wake")]
    PullWake,
}

impl Kind {
    /// The wire spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::PullWake => "pull-wake",
        }
    }
}

/// A validated, normalised subscription configuration. Field order is the hash's canonical
/// order: do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `pattern`, normalised (no outer `/`).
    pub pattern: Option<String>,
    /// `streams[]`, normalised, sorted and deduplicated.
    pub streams: Vec<String>,
    /// `webhook.url`.
    pub webhook_url: Option<String>,
    /// `wake_stream`, normalised.
    pub wake_stream: Option<String>,
    /// `lease_ttl_ms`, with the default applied.
    pub lease_ttl_ms: u64,
    /// `description`.
    pub description: Option<String>,
}

impl Spec {
    /// The hex SHA-256 of the canonical JSON of this normalised configuration.
    ///
    /// # Panics
    ///
    /// Never: the configuration is strings and integers, which always serialise to JSON.
    #[must_use]
    pub fn hash(&self) -> String {
        let canonical =
            serde_json::to_vec(self).expect("a struct of strings and integers serialises to JSON");
        let digest = Sha256::digest(&canonical);
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// The parsed pattern, when there is one.
    #[must_use]
    pub fn glob(&self) -> Option<Glob> {
        self.pattern.as_deref().and_then(|p| Glob::parse(p).ok())
    }
}

/// Why a request body was rejected (`400 INVALID_REQUEST`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// The `PUT` body as received; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct RawSpec {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    pattern: Option<serde_json::Value>,
    streams: Option<serde_json::Value>,
    webhook: Option<serde_json::Value>,
    wake_stream: Option<serde_json::Value>,
    lease_ttl_ms: Option<serde_json::Value>,
    description: Option<serde_json::Value>,
}

/// Parses and validates a `PUT` body. The webhook URL's SSRF checks are separate
/// ([`crate::ssrf`]).
pub fn parse_spec(body: &[u8], limits: NameLimits) -> Result<Spec, Invalid> {
    let raw: RawSpec = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body must be a JSON object: {e}")))?;
    let kind = match raw.kind.as_ref().and_then(|v| v.as_str()) {
        Some("webhook") => Kind::Webhook,
        Some("pull-wake") => Kind::PullWake,
        _ => return Err(invalid("type must be \"webhook\" or \"pull-wake\"")),
    };
    let pattern = match opt_string(raw.pattern.as_ref(), "pattern")? {
        Some(p) => Some(
            Glob::parse(&p)
                .map_err(|e| invalid(format!("pattern: {e}")))?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    let streams = match raw.streams {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => parse_stream_list(&v, limits)?,
    };
    if pattern.is_none() && streams.is_empty() {
        return Err(invalid("at least one of pattern or streams is required"));
    }
    let webhook_url = match raw.webhook {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(map)) => match map.get("url") {
            Some(serde_json::Value::String(url)) if !url.is_empty() => Some(url.clone()),
            _ => return Err(invalid("webhook.url must be a non-empty string")),
        },
        Some(_) => return Err(invalid("webhook must be an object")),
    };
    if kind == Kind::Webhook && webhook_url.is_none() {
        return Err(invalid("webhook subscriptions require webhook.url"));
    }
    let wake_stream = match opt_string(raw.wake_stream.as_ref(), "wake_stream")? {
        Some(s) => {
            Some(normalize_path(&s, limits).map_err(|e| invalid(format!("wake_stream: {e}")))?)
        }
        None => None,
    };
    if kind == Kind::PullWake && wake_stream.is_none() {
        return Err(invalid("pull-wake subscriptions require wake_stream"));
    }
    let lease_ttl_ms = match raw.lease_ttl_ms {
        None | Some(serde_json::Value::Null) => DEFAULT_LEASE_TTL_MS,
        Some(v) => match v.as_u64() {
            Some(ms) if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ms) => ms,
            _ => {
                return Err(invalid(format!(
                    "lease_ttl_ms must be an integer from {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS}"
                )));
            }
        },
    };
    let description = opt_string(raw.description.as_ref(), "description")?;
    if description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
    {
        return Err(invalid(format!(
            "description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    Ok(Spec {
        kind,
        pattern,
        streams,
        webhook_url,
        wake_stream,
        lease_ttl_ms,
        description,
    })
}

fn opt_string(v: Option<&serde_json::Value>, field: &str) -> Result<Option<String>, Invalid> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("{field} must be a string"))),
    }
}

/// Parses a JSON array of stream paths into a sorted, deduplicated list.
pub fn parse_stream_list(
    v: &serde_json::Value,
    limits: NameLimits,
) -> Result<Vec<String>, Invalid> {
    let serde_json::Value::Array(items) = v else {
        return Err(invalid("streams must be an array of strings"));
    };
    if items.len() > MAX_STREAMS_PER_REQUEST {
        return Err(invalid(format!(
            "at most {MAX_STREAMS_PER_REQUEST} streams per request"
        )));
    }
    let mut out = BTreeSet::new();
    for item in items {
        let serde_json::Value::String(s) = item else {
            return Err(invalid("streams must be an array of strings"));
        };
        out.insert(normalize_path(s, limits).map_err(|e| invalid(format!("streams: {e}")))?);
    }
    Ok(out.into_iter().collect())
}

/// Normalises a stream-root-relative path from a body or a decoded URL segment: one leading and
/// one trailing `/` are dropped, and the result must be a valid stream name outside the reserved
/// `__ds` namespace.
pub fn normalize_path(raw: &str, limits: NameLimits) -> Result<String, String> {
    let name = stream_name(raw, limits)?;
    if name.is_reserved() {
        return Err(format!("{raw:?} is in the reserved __ds namespace"));
    }
    Ok(name.as_str().to_owned())
}

/// The [`StreamName`] of an already-decoded path. `StreamName::parse` percent-decodes, so a
/// literal `%` is escaped first to keep the path as given.
pub fn stream_name(raw: &str, limits: NameLimits) -> Result<StreamName, String> {
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    let escaped = trimmed.replace('%', "%25");
    StreamName::parse(&escaped, limits).map_err(|e| format!("{raw:?}: {e}"))
}

/// Validates a subscription id from the URL (already percent-decoded).
pub fn validate_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "subscription id must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    if id.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err(invalid(
            "subscription id must not contain '/', '\\' or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Spec, Invalid> {
        parse_spec(body.as_bytes(), NameLimits::default())
    }

    #[test]
    fn normalisation_makes_equivalent_configs_hash_equal() {
        let a = parse(
            r#"{"type":"webhook","pattern":"/events/*/","streams":["b","a","/a"],
                "webhook":{"url":"https://h.example/x"}}"#,
        )
        .expect("valid");
        let b = parse(
            r#"{"type":"webhook","pattern":"events/*","streams":["a","b"],
                "webhook":{"url":"https://h.example/x"},"lease_ttl_ms":30000,"extra":1}"#,
        )
        .expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.streams, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn every_config_field_changes_the_hash() {
        let base = r#"{"type":"webhook","pattern":"events/*","webhook":{"url":"https://h.example/x"},"lease_ttl_ms":1000,"description":"d"}"#;
        let h = parse(base).expect("valid").hash();
        let variants = [
            r#"{"type":"webhook","pattern":"events/**","webhook":{"url":"https://h.example/x"},"lease_ttl_ms":1000,"description":"d"}"#,
            r#"{"type":"webhook","pattern":"events/*","streams":["x"],"webhook":{"url":"https://h.example/x"},"lease_ttl_ms":1000,"description":"d"}"#,
            r#"{"type":"webhook","pattern":"events/*","webhook":{"url":"https://h.example/y"},"lease_ttl_ms":1000,"description":"d"}"#,
            r#"{"type":"webhook","pattern":"events/*","webhook":{"url":"https://h.example/x"},"lease_ttl_ms":2000,"description":"d"}"#,
            r#"{"type":"webhook","pattern":"events/*","webhook":{"url":"https://h.example/x"},"lease_ttl_ms":1000,"description":"e"}"#,
            r#"{"type":"webhook","pattern":"events/*","webhook":{"url":"https://h.example/x"},"lease_ttl_ms":1000}"#,
            r#"{"type":"pull-wake","pattern":"events/*","wake_stream":"w","lease_ttl_ms":1000,"description":"d"}"#,
        ];
        for v in variants {
            assert_ne!(parse(v).expect(v).hash(), h, "{v}");
        }
    }

    #[test]
    fn invalid_bodies_are_rejected() {
        let bad = [
            "not json",
            "[]",
            r#"{"pattern":"a/*","webhook":{"url":"https://x"}}"#,
            r#"{"type":"nope","pattern":"a/*"}"#,
            r#"{"type":"webhook","webhook":{"url":"https://x"}}"#,
            r#"{"type":"webhook","pattern":"a/*"}"#,
            r#"{"type":"webhook","pattern":"a/*","webhook":{}}"#,
            r#"{"type":"pull-wake","pattern":"a/*"}"#,
            r#"{"type":"pull-wake","pattern":"a/*","wake_stream":"__ds/x"}"#,
            r#"{"type":"pull-wake","streams":["__ds/keys"],"wake_stream":"w"}"#,
            r#"{"type":"pull-wake","streams":["a//b"],"wake_stream":"w"}"#,
            r#"{"type":"pull-wake","streams":[1],"wake_stream":"w"}"#,
            r#"{"type":"pull-wake","pattern":"a/x**","wake_stream":"w"}"#,
            r#"{"type":"pull-wake","pattern":"a/*","wake_stream":"w","lease_ttl_ms":999}"#,
            r#"{"type":"pull-wake","pattern":"a/*","wake_stream":"w","lease_ttl_ms":600001}"#,
            r#"{"type":"pull-wake","pattern":"a/*","wake_stream":"w","lease_ttl_ms":1.5}"#,
            r#"{"type":"pull-wake","pattern":"a/*","wake_stream":"w","lease_ttl_ms":"1000"}"#,
        ];
        for body in bad {
            assert!(parse(body).is_err(), "{body}");
        }
    }

    #[test]
    fn lease_bounds_are_inclusive_and_default_is_thirty_seconds() {
        let mk = |ttl: &str| {
            parse(&format!(
                r#"{{"type":"pull-wake","pattern":"a/*","wake_stream":"w"{ttl}}}"#
            ))
        };
        assert_eq!(mk("").expect("valid").lease_ttl_ms, 30_000);
        assert_eq!(
            mk(r#","lease_ttl_ms":1000"#).expect("valid").lease_ttl_ms,
            1_000
        );
        assert_eq!(
            mk(r#","lease_ttl_ms":600000"#).expect("valid").lease_ttl_ms,
            600_000
        );
    }

    #[test]
    fn paths_keep_literal_percent_and_reject_reserved() {
        let limits = NameLimits::default();
        assert_eq!(normalize_path("a%2Fb", limits).as_deref(), Ok("a%2Fb"));
        assert_eq!(normalize_path("/a/b/", limits).as_deref(), Ok("a/b"));
        assert!(normalize_path("__ds/x", limits).is_err());
        assert!(normalize_path("a/../b", limits).is_err());
        assert!(validate_id("sub-1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
    }
}
