//! Model-based HTTP testing: random sequences of create / fork / append (with `Stream-Seq` and
//! idempotent producers) / close / delete / catch-up read / long-poll / `HEAD` are sent through
//! the real router on every backend, and every response is checked against a small in-memory
//! model of PROTOCOL.md (sections 4.2, 5.1 to 5.7, 8 and 9.1).
//!
//! The model treats offsets as opaque tokens: it only learns which position (byte, or JSON
//! message, count) each returned `Stream-Next-Offset` stands for, and checks that one position
//! always gets the same token and that token order follows position order (section 8). Reads use
//! a 16-byte chunk limit so catch-up is followed across many chunks.
//!
//! Each backend test runs `DS_MODEL_CASES` sequences (default 64, so `cargo test` stays quick).
//! The acceptance run of issue 8 is
//!
//! ```text
//! DS_MODEL_CASES=10000 cargo test --release -p ds-server --test it model
//! ```
//!
//! On a divergence proptest shrinks the sequence and the failure prints the minimal sequence,
//! one operation per line, with the step that diverged and what was expected.
//!
//! Not modelled: `Stream-Fork-Sub-Offset`, `Stream-Expires-At` and expiry itself (TTLs are an
//! hour), SSE, ETags, and offsets the server never returned.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use ds_server::{
    AcidOptions, AcidStorage, Durability, FileOptions, FileStorage, MemoryStorage, RouterSettings,
    Storage, build_router,
};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use tower::ServiceExt;

const BASE: &str = "/v1/stream";
/// Stream names per sequence.
const POOL: u8 = 3;
/// The TTL streams get: long enough never to expire during a run.
const TTL: &str = "3600";
/// Longest a response that must be immediate may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ct {
    Text,
    Binary,
    Json,
}

impl Ct {
    fn header(self) -> &'static str {
        match self {
            Ct::Text => "text/plain",
            Ct::Binary => "application/octet-stream",
            Ct::Json => "application/json",
        }
    }
}

/// A body, rendered for the stream's content type when the operation runs.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// No bytes.
    Empty,
    /// One value (JSON: one message, unless the value is itself an array).
    One,
    /// JSON: an array of `n` messages (`[]` for 0); otherwise `n + 1` pieces of text.
    Batch(u8),
    /// JSON: not valid JSON; otherwise just bytes.
    BadJson,
}

#[derive(Debug, Clone, Copy)]
enum ForkCt {
    Omit,
    Source,
    Other(Ct),
}

#[derive(Debug, Clone, Copy)]
enum ProdAct {
    /// The next sequence number of the current epoch.
    Next,
    /// The last accepted `(epoch, seq)` again.
    Retry,
    /// Epoch + 1, seq 0.
    NewEpoch,
    /// Skips a sequence number.
    Gap,
    /// An older epoch.
    Stale,
    /// Only `Producer-Id`.
    Partial,
}

#[derive(Debug, Clone, Copy)]
struct Prod {
    id: u8,
    act: ProdAct,
}

#[derive(Debug, Clone, Copy)]
enum From {
    /// `-1`.
    Start,
    /// `now`.
    Now,
    /// The n-th (modulo) offset the server returned for this stream.
    Known(u8),
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        s: u8,
        ct: Option<Ct>,
        closed: bool,
        ttl: bool,
        body: Payload,
    },
    Fork {
        s: u8,
        src: u8,
        /// `None`: no `Stream-Fork-Offset` (the source's tail).
        at: Option<u8>,
        ct: ForkCt,
        closed: bool,
        ttl: bool,
        body: Payload,
    },
    Append {
        s: u8,
        body: Payload,
        /// A `Content-Type` other than the stream's.
        ct: Option<Ct>,
        /// `Stream-Seq`, as two digits.
        seq: Option<u8>,
        producer: Option<Prod>,
        close: bool,
    },
    Delete {
        s: u8,
    },
    Read {
        s: u8,
        from: From,
    },
    LongPoll {
        s: u8,
        from: From,
    },
    Head {
        s: u8,
    },
}

fn ct() -> impl Strategy<Value = Ct> {
    prop_oneof![Just(Ct::Text), Just(Ct::Binary), Just(Ct::Json)]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        1 => Just(Payload::Empty),
        4 => Just(Payload::One),
        4 => (0u8..4).prop_map(Payload::Batch),
        1 => Just(Payload::BadJson),
    ]
}

fn from() -> impl Strategy<Value = From> {
    prop_oneof![
        2 => Just(From::Start),
        1 => Just(From::Now),
        4 => any::<u8>().prop_map(From::Known),
    ]
}

fn prod() -> impl Strategy<Value = Prod> {
    let act = prop_oneof![
        6 => Just(ProdAct::Next),
        3 => Just(ProdAct::Retry),
        2 => Just(ProdAct::NewEpoch),
        1 => Just(ProdAct::Gap),
        1 => Just(ProdAct::Stale),
        1 => Just(ProdAct::Partial),
    ];
    (0u8..2, act).prop_map(|(id, act)| Prod { id, act })
}

fn create() -> impl Strategy<Value = Op> {
    (
        0..POOL,
        proptest::option::weighted(0.9, ct()),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.2),
        payload(),
    )
        .prop_map(|(s, ct, closed, ttl, body)| Op::Create {
            s,
            ct,
            closed,
            ttl,
            body,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let s = || 0..POOL;
    prop_oneof![
        5 => create(),
        3 => (s(), s(), proptest::option::of(any::<u8>()),
              prop_oneof![3 => Just(ForkCt::Omit), 2 => Just(ForkCt::Source),
                          1 => ct().prop_map(ForkCt::Other)],
              proptest::bool::weighted(0.1), proptest::bool::weighted(0.2),
              prop_oneof![3 => Just(Payload::Empty), 1 => payload()])
            .prop_map(|(s, src, at, ct, closed, ttl, body)| Op::Fork {
                s, src, at, ct, closed, ttl, body,
            }),
        12 => (s(), payload(), proptest::option::weighted(0.05, ct()),
               proptest::option::weighted(0.2, 0u8..12), proptest::option::weighted(0.4, prod()),
               proptest::bool::weighted(0.05))
            .prop_map(|(s, body, ct, seq, producer, close)| Op::Append {
                s, body, ct, seq, producer, close,
            }),
        2 => (s(), proptest::option::weighted(0.3, prod()), proptest::option::weighted(0.3, ct()))
            .prop_map(|(s, producer, ct)| Op::Append {
                s, body: Payload::Empty, ct, seq: None, producer, close: true,
            }),
        1 => s().prop_map(|s| Op::Delete { s }),
        5 => (s(), from()).prop_map(|(s, from)| Op::Read { s, from }),
        2 => (s(), from()).prop_map(|(s, from)| Op::LongPoll { s, from }),
        2 => s().prop_map(|s| Op::Head { s }),
    ]
}

/// A few creates (so most operations find a stream), then anything.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        proptest::collection::vec(create(), 0..4),
        proptest::collection::vec(op(), 1..50),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
}

// ---------------------------------------------------------------------------------------------
// The model

/// One incarnation of a stream.
#[derive(Debug, Clone)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "mirrors the stream's independent flags"
)]
struct Stream {
    name: u8,
    ct: &'static str,
    json: bool,
    bytes: Vec<u8>,
    msgs: Vec<Value>,
    closed: bool,
    closed_by: Option<(String, u64, u64)>,
    ttl: bool,
    last_seq: Option<String>,
    /// Producer id → (epoch, last seq).
    producers: HashMap<String, (u64, u64)>,
    /// Position → the offset token the server returned for it.
    tokens: BTreeMap<usize, String>,
    /// Source stream index, source name, anchor token.
    fork: Option<(usize, u8, String)>,
    /// Streams forked from this one that are not removed.
    refs: usize,
    soft_deleted: bool,
}

impl Stream {
    fn len(&self) -> usize {
        if self.json {
            self.msgs.len()
        } else {
            self.bytes.len()
        }
    }

    fn tail_token(&self) -> Result<&str, String> {
        self.tokens
            .get(&self.len())
            .map(String::as_str)
            .ok_or_else(|| "model: no token recorded for the tail".to_owned())
    }

    /// Records that `token` stands for `pos`, checking uniqueness and order (section 8).
    fn observe(&mut self, pos: usize, token: &str) -> Result<(), String> {
        if let Some(known) = self.tokens.get(&pos) {
            return if known == token {
                Ok(())
            } else {
                Err(format!(
                    "position {pos} was offset {known:?}, now offset {token:?}"
                ))
            };
        }
        for (p, t) in &self.tokens {
            if t == token {
                return Err(format!(
                    "offset {token:?} stands for position {p} and position {pos}"
                ));
            }
            if (*p < pos) != (t.as_str() < token) {
                return Err(format!(
                    "offset order differs from position order: {t:?} at {p}, {token:?} at {pos}"
                ));
            }
        }
        self.tokens.insert(pos, token.to_owned());
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Model {
    streams: Vec<Stream>,
    names: [Option<usize>; POOL as usize],
}

impl Model {
    fn at(&self, s: u8) -> Option<usize> {
        self.names[usize::from(s)]
    }

    /// Removes a stream for good, and cascades to soft-deleted sources left without forks.
    fn remove(&mut self, id: usize) {
        let name = usize::from(self.streams[id].name);
        if self.names[name] == Some(id) {
            self.names[name] = None;
        }
        if let Some((src, _, _)) = self.streams[id].fork.clone() {
            let source = &mut self.streams[src];
            source.refs -= 1;
            if source.soft_deleted && source.refs == 0 {
                self.remove(src);
            }
        }
    }
}

/// The messages (JSON) or bytes a body adds; `Err` is the `400` the server must answer.
enum Parsed {
    Bytes(Vec<u8>),
    Msgs(Vec<Value>),
}

fn parse_body(json: bool, body: &[u8], allow_empty_array: bool) -> Result<Parsed, &'static str> {
    if !json {
        return Ok(Parsed::Bytes(body.to_vec()));
    }
    if body.is_empty() {
        return Ok(Parsed::Msgs(Vec::new()));
    }
    match serde_json::from_slice::<Value>(body) {
        Err(_) => Err("invalid JSON"),
        Ok(Value::Array(items)) if items.is_empty() && !allow_empty_array => Err("empty array"),
        Ok(Value::Array(items)) => Ok(Parsed::Msgs(items)),
        Ok(v) => Ok(Parsed::Msgs(vec![v])),
    }
}

fn extend(stream: &mut Stream, parsed: Parsed) {
    match parsed {
        Parsed::Bytes(b) => stream.bytes.extend(b),
        Parsed::Msgs(m) => stream.msgs.extend(m),
    }
}

// ---------------------------------------------------------------------------------------------
// The driver

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn flag(&self, name: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn status(&self, want: u16) -> Result<(), String> {
        if self.status.as_u16() != want {
            return Err(format!(
                "status {} (body {:?}), expected {want}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ));
        }
        if want >= 400 {
            let ct = self.header("content-type").unwrap_or_default();
            if !ct.starts_with("application/problem+json") {
                return Err(format!("error {want} with content type {ct:?}"));
            }
        }
        Ok(())
    }

    fn expect_header(&self, name: &str, want: Option<&str>) -> Result<(), String> {
        let got = self.header(name);
        if got == want {
            Ok(())
        } else {
            Err(format!("header {name}: {got:?}, expected {want:?}"))
        }
    }

    fn expect_flag(&self, name: &str, want: bool) -> Result<(), String> {
        if self.flag(name) == want {
            Ok(())
        } else {
            Err(format!(
                "header {name}: {:?}, expected {}",
                self.header(name),
                if want { "true" } else { "absent" }
            ))
        }
    }

    fn next_offset(&self) -> Result<&str, String> {
        self.header("stream-next-offset")
            .ok_or_else(|| "no Stream-Next-Offset".to_owned())
    }
}

struct Driver<'a> {
    /// Responses seen, by method and status (printed after a run, to show what was covered).
    seen: &'a std::sync::Mutex<BTreeMap<String, u64>>,
    /// Long-poll timeout of a few milliseconds: for polls that must wait.
    quick: &'a Router,
    /// Long-poll timeout of a minute: for polls that must answer at once.
    patient: &'a Router,
    prefix: String,
    next_id: u64,
    model: Model,
}

impl Driver<'_> {
    fn path(&self, s: u8) -> String {
        format!("{BASE}/{}/s{s}", self.prefix)
    }

    async fn send(
        &self,
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(Body::from(body)).expect("valid request");
        let res = tokio::time::timeout(HANG, app.clone().oneshot(req))
            .await
            .map_err(|_| format!("{method} {uri} did not answer within {HANG:?}"))?
            .expect("router is infallible");
        let (parts, body) = res.into_parts();
        *self
            .seen
            .lock()
            .expect("stats lock")
            .entry(format!("{method} {}", parts.status.as_u16()))
            .or_default() += 1;
        let body = tokio::time::timeout(HANG, body.collect())
            .await
            .map_err(|_| format!("body of {method} {uri} did not end within {HANG:?}"))?
            .map_err(|e| format!("body error: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Renders a payload for a stream of content type `ct`, with fresh ids.
    fn render(&mut self, payload: Payload, ct: &str) -> Vec<u8> {
        let json = ct == Ct::Json.header();
        let mut id = || {
            self.next_id += 1;
            self.next_id
        };
        let message = |i: u64| match i % 3 {
            0 => format!("[{i},\"x\"]"),
            1 => format!("{{\"i\":{i}}}"),
            _ => format!("{i}"),
        };
        match payload {
            Payload::Empty => Vec::new(),
            Payload::BadJson => format!("{{\"i\":{}", id()).into_bytes(),
            Payload::One if json => message(id()).into_bytes(),
            Payload::Batch(n) if json => {
                let items: Vec<String> = (0..n).map(|_| message(id())).collect();
                format!("[{}]", items.join(",")).into_bytes()
            }
            Payload::One | Payload::Batch(_) => {
                let pieces = match payload {
                    Payload::Batch(n) => usize::from(n) + 1,
                    _ => 1,
                };
                let mut out = Vec::new();
                for _ in 0..pieces {
                    let i = id();
                    if ct == Ct::Binary.header() {
                        out.extend([0xff, 0x00]);
                        out.extend(i.to_le_bytes().iter().take(2));
                    } else {
                        out.extend(format!("t{i};").into_bytes());
                    }
                }
                out
            }
        }
    }

    async fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Create {
                s,
                ct,
                closed,
                ttl,
                body,
            } => self.create(s, ct, closed, ttl, body).await,
            Op::Fork {
                s,
                src,
                at,
                ct,
                closed,
                ttl,
                body,
            } => self.fork(s, src, at, ct, closed, ttl, body).await,
            Op::Append {
                s,
                body,
                ct,
                seq,
                producer,
                close,
            } => self.append(s, body, ct, seq, producer, close).await,
            Op::Delete { s } => self.delete(s).await,
            Op::Read { s, from } => self.read(s, from).await,
            Op::LongPoll { s, from } => self.long_poll(s, from).await,
            Op::Head { s } => self.head(s).await,
        }
    }

    /// Checks a `201`/`200` of a `PUT` against stream `id`.
    fn check_created(&mut self, id: usize, r: &Reply, status: u16) -> Result<(), String> {
        r.status(status)?;
        let st = &mut self.model.streams[id];
        r.expect_header("content-type", Some(st.ct))?;
        r.expect_flag("stream-closed", st.closed)?;
        if status == 201 && r.header("location").is_none() {
            return Err("201 without Location".to_owned());
        }
        let len = st.len();
        st.observe(len, r.next_offset()?)
    }

    async fn create(
        &mut self,
        s: u8,
        ct: Option<Ct>,
        closed: bool,
        ttl: bool,
        payload: Payload,
    ) -> Result<(), String> {
        let effective = ct.unwrap_or(Ct::Binary).header();
        let body = self.render(payload, effective);
        let mut headers = Vec::new();
        if let Some(ct) = ct {
            headers.push(("content-type", ct.header().to_owned()));
        }
        if ttl {
            headers.push(("stream-ttl", TTL.to_owned()));
        }
        if closed {
            headers.push(("stream-closed", "true".to_owned()));
        }
        let r = self
            .send(self.patient, "PUT", &self.path(s), &headers, body.clone())
            .await?;
        if let Some(id) = self.model.at(s) {
            let st = &self.model.streams[id];
            let matches = !st.soft_deleted
                && st.fork.is_none()
                && st.ct == effective
                && st.ttl == ttl
                && st.closed == closed;
            return if matches {
                self.check_created(id, &r, 200)
            } else {
                r.status(409)
            };
        }
        let json = effective == Ct::Json.header();
        let Ok(parsed) = parse_body(json, &body, true) else {
            return r.status(400);
        };
        let mut st = Stream {
            name: s,
            ct: effective,
            json,
            bytes: Vec::new(),
            msgs: Vec::new(),
            closed,
            closed_by: None,
            ttl,
            last_seq: None,
            producers: HashMap::new(),
            tokens: BTreeMap::new(),
            fork: None,
            refs: 0,
            soft_deleted: false,
        };
        extend(&mut st, parsed);
        self.model.streams.push(st);
        let id = self.model.streams.len() - 1;
        self.model.names[usize::from(s)] = Some(id);
        self.check_created(id, &r, 201)
    }

    #[allow(
        clippy::too_many_arguments,
        clippy::too_many_lines,
        reason = "one argument per field of Op::Fork; the fork rules of section 4.2 in one place"
    )]
    async fn fork(
        &mut self,
        s: u8,
        src: u8,
        at: Option<u8>,
        ct: ForkCt,
        closed: bool,
        ttl: bool,
        payload: Payload,
    ) -> Result<(), String> {
        let source = self.model.at(src);
        let source_ct = source.map_or(Ct::Text.header(), |i| self.model.streams[i].ct);
        // The fork offset: one the server returned for the source, with the position it names.
        let anchor: Option<(usize, String)> = match (at, source) {
            (Some(k), Some(i)) => {
                let tokens = &self.model.streams[i].tokens;
                tokens
                    .iter()
                    .nth(usize::from(k) % tokens.len())
                    .map(|(p, t)| (*p, t.clone()))
            }
            _ => None,
        };
        let requested_ct = match ct {
            ForkCt::Omit => None,
            ForkCt::Source => Some(source_ct),
            ForkCt::Other(c) => Some(c.header()),
        };
        let body_ct = self
            .model
            .at(s)
            .map_or(source_ct, |i| self.model.streams[i].ct);
        let body = self.render(payload, requested_ct.unwrap_or(body_ct));
        let mut headers = vec![("stream-forked-from", self.path(src))];
        if let Some((_, token)) = &anchor {
            headers.push(("stream-fork-offset", token.clone()));
        }
        if let Some(ct) = requested_ct {
            headers.push(("content-type", ct.to_owned()));
        }
        if ttl {
            headers.push(("stream-ttl", TTL.to_owned()));
        }
        if closed {
            headers.push(("stream-closed", "true".to_owned()));
        }
        let r = self
            .send(self.patient, "PUT", &self.path(s), &headers, body.clone())
            .await?;

        if let Some(id) = self.model.at(s) {
            let st = &self.model.streams[id];
            let matches = !st.soft_deleted
                && requested_ct.is_none_or(|c| c == st.ct)
                && st.fork.as_ref().is_some_and(|(_, name, token)| {
                    *name == src && anchor.as_ref().is_none_or(|(_, t)| t == token)
                })
                && (!ttl || st.ttl)
                && st.closed == closed;
            return if matches {
                self.check_created(id, &r, 200)
            } else {
                r.status(409)
            };
        }
        let Some(src_id) = source else {
            return r.status(404);
        };
        let source = &self.model.streams[src_id];
        if source.soft_deleted || requested_ct.is_some_and(|c| c != source.ct) {
            return r.status(409);
        }
        let (pos, token) = match anchor {
            Some(a) => a,
            None => (source.len(), source.tail_token()?.to_owned()),
        };
        let Ok(parsed) = parse_body(source.json, &body, true) else {
            return r.status(400);
        };
        let mut st = Stream {
            name: s,
            ct: source.ct,
            json: source.json,
            bytes: if source.json {
                Vec::new()
            } else {
                source.bytes[..pos].to_vec()
            },
            msgs: if source.json {
                source.msgs[..pos].to_vec()
            } else {
                Vec::new()
            },
            closed,
            closed_by: None,
            ttl: ttl || source.ttl,
            last_seq: None,
            producers: HashMap::new(),
            tokens: source
                .tokens
                .range(..=pos)
                .map(|(p, t)| (*p, t.clone()))
                .collect(),
            fork: Some((src_id, src, token)),
            refs: 0,
            soft_deleted: false,
        };
        extend(&mut st, parsed);
        self.model.streams[src_id].refs += 1;
        self.model.streams.push(st);
        let id = self.model.streams.len() - 1;
        self.model.names[usize::from(s)] = Some(id);
        self.check_created(id, &r, 201)
    }

    /// The `(id, epoch, seq)` a producer action sends, from the model's producer state.
    fn producer_tuple(&self, s: u8, p: Prod) -> (String, u64, u64) {
        let id = format!("p{}", p.id);
        let state = self
            .model
            .at(s)
            .and_then(|i| self.model.streams[i].producers.get(&id).copied());
        let (epoch, seq) = match (p.act, state) {
            (ProdAct::Next | ProdAct::Retry | ProdAct::Stale | ProdAct::Partial, None) => (0, 0),
            (ProdAct::NewEpoch, None) => (1, 0),
            (ProdAct::Gap, None) => (0, 1),
            (ProdAct::Next | ProdAct::Partial, Some((e, l))) => (e, l + 1),
            (ProdAct::Retry, Some((e, l))) => (e, l),
            (ProdAct::NewEpoch, Some((e, _))) => (e + 1, 0),
            (ProdAct::Gap, Some((e, l))) => (e, l + 2),
            (ProdAct::Stale, Some((e, l))) => (e.saturating_sub(1), l + 1),
        };
        (id, epoch, seq)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "the append precedence of sections 5.2 and 5.2.1, in one place"
    )]
    async fn append(
        &mut self,
        s: u8,
        payload: Payload,
        ct_override: Option<Ct>,
        seq: Option<u8>,
        producer: Option<Prod>,
        close: bool,
    ) -> Result<(), String> {
        let stream_ct = self
            .model
            .at(s)
            .map_or(Ct::Text.header(), |i| self.model.streams[i].ct);
        let body = self.render(payload, stream_ct);
        let sent_ct = ct_override.map_or(stream_ct, Ct::header);
        let mut headers = Vec::new();
        if !body.is_empty() || ct_override.is_some() {
            headers.push(("content-type", sent_ct.to_owned()));
        }
        if close {
            headers.push(("stream-closed", "true".to_owned()));
        }
        let seq = seq.map(|n| format!("{n:02}"));
        if let Some(v) = &seq {
            headers.push(("stream-seq", v.clone()));
        }
        let tuple = producer.map(|p| self.producer_tuple(s, p));
        if let (Some(p), Some((id, epoch, seq))) = (producer, &tuple) {
            headers.push(("producer-id", id.clone()));
            if !matches!(p.act, ProdAct::Partial) {
                headers.push(("producer-epoch", epoch.to_string()));
                headers.push(("producer-seq", seq.to_string()));
            }
        }
        let r = self
            .send(self.patient, "POST", &self.path(s), &headers, body.clone())
            .await?;

        if producer.is_some_and(|p| matches!(p.act, ProdAct::Partial)) {
            return r.status(400);
        }
        if body.is_empty() && !close {
            return r.status(400);
        }
        let Some(id) = self.model.at(s) else {
            return r.status(404);
        };
        let st = &mut self.model.streams[id];
        if st.soft_deleted {
            return r.status(410);
        }
        let ack = |r: &Reply, epoch: u64, seq: u64| -> Result<(), String> {
            r.expect_header("producer-epoch", Some(&epoch.to_string()))?;
            r.expect_header("producer-seq", Some(&seq.to_string()))
        };
        if st.closed {
            let tail = st.tail_token()?.to_owned();
            if let Some((pid, epoch, pseq)) = &tuple {
                if st.closed_by.as_ref() == tuple.as_ref() {
                    r.status(204)?;
                    r.expect_flag("stream-closed", true)?;
                    r.expect_header("stream-next-offset", Some(&tail))?;
                    return ack(&r, *epoch, *pseq);
                }
                if let Some((current, _)) = st.producers.get(pid)
                    && epoch < current
                {
                    r.status(403)?;
                    return r.expect_header("producer-epoch", Some(&current.to_string()));
                }
            }
            if body.is_empty() {
                r.status(204)?;
            } else {
                r.status(409)?;
            }
            r.expect_flag("stream-closed", true)?;
            return r.expect_header("stream-next-offset", Some(&tail));
        }
        if !body.is_empty() && sent_ct != st.ct {
            return r.status(409);
        }
        let mut new_producer = None;
        if let Some((pid, epoch, pseq)) = &tuple {
            let (epoch, pseq) = (*epoch, *pseq);
            match st.producers.get(pid).copied() {
                None if pseq != 0 => {
                    r.status(409)?;
                    r.expect_header("producer-expected-seq", Some("0"))?;
                    return r.expect_header("producer-received-seq", Some(&pseq.to_string()));
                }
                None => new_producer = Some((epoch, 0)),
                Some((current, _)) if epoch < current => {
                    r.status(403)?;
                    return r.expect_header("producer-epoch", Some(&current.to_string()));
                }
                Some((current, _)) if epoch > current => {
                    if pseq != 0 {
                        return r.status(400);
                    }
                    new_producer = Some((epoch, 0));
                }
                Some((current, last)) if pseq <= last => {
                    r.status(204)?;
                    r.expect_header("stream-next-offset", Some(st.tail_token()?))?;
                    return ack(&r, current, last);
                }
                Some((current, last)) if pseq == last + 1 => {
                    new_producer = Some((current, pseq));
                }
                Some((_, last)) => {
                    r.status(409)?;
                    r.expect_header("producer-expected-seq", Some(&(last + 1).to_string()))?;
                    return r.expect_header("producer-received-seq", Some(&pseq.to_string()));
                }
            }
        }
        if let (Some(new), Some(last)) = (&seq, &st.last_seq)
            && new.as_bytes() <= last.as_bytes()
        {
            return r.status(409);
        }
        let Ok(parsed) = parse_body(st.json, &body, false) else {
            return r.status(400);
        };
        // Accepted.
        extend(st, parsed);
        if let (Some((pid, _, _)), Some(state)) = (&tuple, new_producer) {
            st.producers.insert(pid.clone(), state);
        }
        if seq.is_some() {
            st.last_seq = seq;
        }
        if close {
            st.closed = true;
            st.closed_by.clone_from(&tuple);
        }
        r.status(if tuple.is_some() && !body.is_empty() {
            200
        } else {
            204
        })?;
        r.expect_flag("stream-closed", st.closed)?;
        if let Some(state) = new_producer {
            ack(&r, state.0, state.1)?;
        }
        let len = st.len();
        st.observe(len, r.next_offset()?)
    }

    async fn delete(&mut self, s: u8) -> Result<(), String> {
        let r = self
            .send(self.patient, "DELETE", &self.path(s), &[], Vec::new())
            .await?;
        let Some(id) = self.model.at(s) else {
            return r.status(404);
        };
        if self.model.streams[id].soft_deleted {
            return r.status(410);
        }
        r.status(204)?;
        if self.model.streams[id].refs > 0 {
            self.model.streams[id].soft_deleted = true;
        } else {
            self.model.remove(id);
        }
        Ok(())
    }

    async fn head(&mut self, s: u8) -> Result<(), String> {
        let r = self
            .send(self.patient, "HEAD", &self.path(s), &[], Vec::new())
            .await?;
        let Some(id) = self.model.at(s) else {
            return r.status(404);
        };
        let st = &self.model.streams[id];
        if st.soft_deleted {
            return r.status(410);
        }
        r.status(200)?;
        r.expect_header("content-type", Some(st.ct))?;
        r.expect_header("stream-next-offset", Some(st.tail_token()?))?;
        r.expect_flag("stream-closed", st.closed)?;
        r.expect_header("stream-ttl", st.ttl.then_some(TTL))
    }

    /// The query value and model position of a read's starting point.
    fn start(&self, id: usize, from: From) -> Result<(String, usize), String> {
        let st = &self.model.streams[id];
        Ok(match from {
            From::Start => ("-1".to_owned(), 0),
            From::Now => ("now".to_owned(), st.len()),
            From::Known(k) => {
                let (p, t) = st
                    .tokens
                    .iter()
                    .nth(usize::from(k) % st.tokens.len())
                    .ok_or("model: no offsets recorded")?;
                (t.clone(), *p)
            }
        })
    }

    /// Checks a `200` carrying data from position `pos`; returns where it ends and whether it
    /// reached the tail.
    fn check_chunk(&mut self, id: usize, pos: usize, r: &Reply) -> Result<(usize, bool), String> {
        r.status(200)?;
        let st = &mut self.model.streams[id];
        r.expect_header("content-type", Some(st.ct))?;
        let end = if st.json {
            let got: Vec<Value> = serde_json::from_slice(&r.body).map_err(|e| {
                format!(
                    "JSON read body {:?} is not an array: {e}",
                    String::from_utf8_lossy(&r.body)
                )
            })?;
            let end = pos + got.len();
            if st.msgs.get(pos..end) != Some(got.as_slice()) {
                return Err(format!(
                    "read from position {pos} returned {got:?}, expected a prefix of {:?}",
                    &st.msgs[pos.min(st.msgs.len())..]
                ));
            }
            end
        } else {
            let end = pos + r.body.len();
            if st.bytes.get(pos..end) != Some(&r.body[..]) {
                return Err(format!(
                    "read from position {pos} returned {:?}, expected a prefix of {:?}",
                    String::from_utf8_lossy(&r.body),
                    String::from_utf8_lossy(&st.bytes[pos.min(st.bytes.len())..])
                ));
            }
            end
        };
        let at_tail = end == st.len();
        r.expect_flag("stream-up-to-date", at_tail)?;
        r.expect_flag("stream-closed", at_tail && st.closed)?;
        if !at_tail && end == pos {
            return Err(format!("read from position {pos} made no progress"));
        }
        st.observe(end, r.next_offset()?)?;
        Ok((end, at_tail))
    }

    async fn read(&mut self, s: u8, from: From) -> Result<(), String> {
        let path = self.path(s);
        let Some(id) = self.model.at(s) else {
            let r = self
                .send(
                    self.patient,
                    "GET",
                    &format!("{path}?offset=-1"),
                    &[],
                    Vec::new(),
                )
                .await?;
            return r.status(404);
        };
        if self.model.streams[id].soft_deleted {
            let r = self
                .send(
                    self.patient,
                    "GET",
                    &format!("{path}?offset=-1"),
                    &[],
                    Vec::new(),
                )
                .await?;
            return r.status(410);
        }
        let (mut query, mut pos) = self.start(id, from)?;
        if query == "now" {
            let r = self
                .send(
                    self.patient,
                    "GET",
                    &format!("{path}?offset=now"),
                    &[],
                    Vec::new(),
                )
                .await?;
            let st = &mut self.model.streams[id];
            r.status(200)?;
            let empty: &[u8] = if st.json { b"[]" } else { b"" };
            if r.body != empty {
                return Err(format!("offset=now returned {:?}", r.body));
            }
            r.expect_flag("stream-up-to-date", true)?;
            r.expect_flag("stream-closed", st.closed)?;
            let len = st.len();
            return st.observe(len, r.next_offset()?);
        }
        // Follow the chunks to the tail.
        for _ in 0..10_000 {
            let r = self
                .send(
                    self.patient,
                    "GET",
                    &format!("{path}?offset={query}"),
                    &[],
                    Vec::new(),
                )
                .await?;
            let (end, at_tail) = self
                .check_chunk(id, pos, &r)
                .map_err(|e| format!("GET ?offset={query}: {e}"))?;
            if at_tail {
                return Ok(());
            }
            pos = end;
            r.next_offset()?.clone_into(&mut query);
        }
        Err("catch-up did not reach the tail in 10000 reads".to_owned())
    }

    async fn long_poll(&mut self, s: u8, from: From) -> Result<(), String> {
        let path = self.path(s);
        let Some(id) = self.model.at(s) else {
            let uri = format!("{path}?offset=-1&live=long-poll");
            return self
                .send(self.patient, "GET", &uri, &[], Vec::new())
                .await?
                .status(404);
        };
        if self.model.streams[id].soft_deleted {
            let uri = format!("{path}?offset=-1&live=long-poll");
            return self
                .send(self.patient, "GET", &uri, &[], Vec::new())
                .await?
                .status(410);
        }
        let (query, pos) = self.start(id, from)?;
        let uri = format!("{path}?offset={query}&live=long-poll");
        let st = &self.model.streams[id];
        let (len, closed) = (st.len(), st.closed);
        if pos < len {
            // Data is there: returned at once.
            let r = self
                .send(self.patient, "GET", &uri, &[], Vec::new())
                .await?;
            self.check_chunk(id, pos, &r)
                .map_err(|e| format!("long-poll ?offset={query}: {e}"))?;
            if r.header("stream-cursor").is_none() {
                return Err("long-poll 200 without Stream-Cursor".to_owned());
            }
            return Ok(());
        }
        // At the tail: a closed stream answers at once, an open one after the timeout.
        let app = if closed { self.patient } else { self.quick };
        let r = self.send(app, "GET", &uri, &[], Vec::new()).await?;
        r.status(204)?;
        if !r.body.is_empty() {
            return Err(format!("long-poll 204 with body {:?}", r.body));
        }
        r.expect_flag("stream-up-to-date", true)?;
        r.expect_flag("stream-closed", closed)?;
        if !closed && r.header("stream-cursor").is_none() {
            return Err("long-poll 204 on an open stream without Stream-Cursor".to_owned());
        }
        let st = &mut self.model.streams[id];
        st.observe(len, r.next_offset()?)
    }
}

/// Runs one sequence; the error names the step that diverged and lists the sequence.
async fn run_sequence(
    seen: &std::sync::Mutex<BTreeMap<String, u64>>,
    quick: &Router,
    patient: &Router,
    case: u64,
    ops: &[Op],
) -> Result<(), String> {
    let mut driver = Driver {
        seen,
        quick,
        patient,
        prefix: format!("m{case}"),
        next_id: 0,
        model: Model::default(),
    };
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = driver.apply(op).await {
            let mut msg = format!("step {i} diverged from the model: {e}\nsequence:\n");
            for (j, op) in ops.iter().enumerate() {
                let mark = if i == j { "  <-- diverged" } else { "" };
                let _ = writeln!(msg, "  {j:>2}: {op:?}{mark}");
            }
            return Err(msg);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One test per backend

fn cases() -> u32 {
    std::env::var("DS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Runs the model against `storage`: every case uses its own stream names in one shared store.
fn check_backend<S: Storage>(rt: &tokio::runtime::Runtime, label: &str, storage: &Arc<S>) {
    let router = |long_poll: Duration| {
        let settings = RouterSettings {
            long_poll_timeout: long_poll,
            read_chunk_bytes: 16,
            ..RouterSettings::default()
        };
        build_router(Arc::clone(storage), settings)
    };
    let quick = router(Duration::from_millis(15));
    let patient = router(Duration::from_secs(60));
    let case = AtomicU64::new(0);
    let seen = std::sync::Mutex::new(BTreeMap::new());
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&ops(), |ops| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run_sequence(&seen, &quick, &patient, n, &ops))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{label}: {e}");
    }
    eprintln!(
        "model {label}: {} sequences ({} runs with shrinking) in {:.1?}; responses: {:?}",
        cases(),
        case.load(Ordering::Relaxed),
        started.elapsed(),
        seen.lock().expect("stats lock")
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn model_memory() {
    let rt = runtime();
    check_backend(&rt, "memory", &Arc::new(MemoryStorage::default()));
}

fn check_file(durability: Durability, label: &str) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = rt
        .block_on(FileStorage::open(FileOptions::new(dir.path(), durability)))
        .expect("open file store");
    check_backend(&rt, label, &Arc::new(storage));
}

#[test]
fn model_file_fast() {
    check_file(Durability::Fast, "file-fast");
}

#[test]
fn model_file_durable() {
    check_file(Durability::Durable, "file-durable");
}

#[test]
fn model_acid() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = rt
        .block_on(AcidStorage::open(AcidOptions::new(dir.path())))
        .expect("open acid store");
    check_backend(&rt, "acid", &Arc::new(storage));
}
