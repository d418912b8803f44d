//! Protocol rules shared by every backend.
//!
//! These are pure functions over a stream's writer state. A backend calls them while it holds
//! the stream's write lock (or inside the transaction that will commit the append), so the
//! validation and the write it permits are one atomic step, as PROTOCOL.md section 5.2.1
//! requires ("serialize validation + append per (stream, producerId)").

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ds_protocol::{Expiry, Offset, ProducerHeaders, content_type};

use crate::{AppendRequest, CreateRequest, Error, ProducerAck, Result};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Expiry is decided against this clock, so tests can move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to (for tests).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock reading `start_ms`.
    #[must_use]
    pub fn new(start_ms: u64) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(start_ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Whether a stream with `expiry`, last read or written at `last_access_ms`, has expired at
/// `now_ms`. A sliding TTL expires once a full TTL has passed without access; an absolute
/// expiry once its instant is reached.
#[must_use]
pub fn is_expired(expiry: Expiry, last_access_ms: u64, now_ms: u64) -> bool {
    match expiry {
        Expiry::None => false,
        Expiry::Ttl(secs) => now_ms >= last_access_ms.saturating_add(secs.saturating_mul(1000)),
        Expiry::ExpiresAt(at) => {
            let at_ms = at.unix_timestamp_nanos() / 1_000_000;
            i128::from(now_ms) >= at_ms
        }
    }
}

/// The content type a new stream gets: the request's, else the default.
#[must_use]
pub fn effective_content_type(requested: Option<&str>) -> String {
    requested.map_or_else(
        || content_type::DEFAULT_CONTENT_TYPE.to_owned(),
        str::to_owned,
    )
}

/// The stored configuration a re-`PUT` is compared against.
#[derive(Debug, Clone, Copy)]
pub struct ExistingConfig<'a> {
    /// The stream's content type.
    pub content_type: &'a str,
    /// The stream's expiry as created.
    pub expiry: Expiry,
    /// Whether the stream is closed now.
    pub closed: bool,
    /// The fork source, offset and sub-offset the stream was created with.
    pub fork: Option<(&'a str, ds_protocol::Offset, u64)>,
}

/// Decides whether a `PUT` to an existing stream is an idempotent success (`Ok`) or a
/// configuration conflict (section 5.1: content type, TTL/expiry, closure status, and for forks
/// the source, offset and sub-offset).
pub fn check_create_matches(existing: &ExistingConfig<'_>, req: &CreateRequest) -> Result<()> {
    let requested_ct = match (&req.content_type, existing.fork) {
        (Some(ct), _) => ct.clone(),
        // A fork re-PUT without Content-Type inherits, exactly as the first PUT did.
        (None, Some(_)) => existing.content_type.to_owned(),
        (None, None) => effective_content_type(None),
    };
    if !content_type::matches(&requested_ct, existing.content_type) {
        return Err(Error::ConfigMismatch {
            reason: "content type differs",
        });
    }
    match (&req.fork, existing.fork) {
        (None, None) => {
            if req.expiry != existing.expiry {
                return Err(Error::ConfigMismatch {
                    reason: "TTL or expiry differs",
                });
            }
        }
        (Some(f), Some((source, offset, sub))) => {
            if f.source.as_str() != source
                || f.offset.is_some_and(|o| o != offset)
                || f.sub_offset != sub
            {
                return Err(Error::ConfigMismatch {
                    reason: "fork source or offset differs",
                });
            }
            // A fork request without expiry inherits the source's; only an explicit one is compared.
            if req.expiry != Expiry::None && req.expiry != existing.expiry {
                return Err(Error::ConfigMismatch {
                    reason: "TTL or expiry differs",
                });
            }
        }
        _ => {
            return Err(Error::ConfigMismatch {
                reason: "fork configuration differs",
            });
        }
    }
    if req.closed != existing.closed {
        return Err(Error::ConfigMismatch {
            reason: "closure status differs",
        });
    }
    Ok(())
}

/// Splits a body into what a backend stores: for JSON streams one entry per message (one
/// array level flattened), otherwise the body itself. An empty non-JSON body yields nothing.
pub fn split_body(
    stream_content_type: &str,
    body: &Bytes,
    allow_empty_array: bool,
) -> Result<Vec<Bytes>> {
    if content_type::is_json(stream_content_type) {
        if body.is_empty() {
            return Ok(Vec::new());
        }
        ds_protocol::json::split_messages(body, allow_empty_array).map_err(|e| match e {
            ds_protocol::JsonError::EmptyArray => Error::EmptyJsonArray,
            ds_protocol::JsonError::Invalid(msg) => Error::InvalidJson(msg),
        })
    } else if body.is_empty() {
        Ok(Vec::new())
    } else {
        Ok(vec![body.clone()])
    }
}

/// An idempotent producer's state on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    /// Current epoch.
    pub epoch: u64,
    /// Highest sequence number accepted in `epoch`.
    pub last_seq: u64,
}

/// The writer-side state of a stream: closure, `Stream-Seq` and producers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterState {
    /// The stream is closed.
    pub closed: bool,
    /// The producer tuple `(id, epoch, seq)` whose append closed the stream, if any.
    pub closed_by: Option<(String, u64, u64)>,
    /// The last accepted `Stream-Seq`.
    pub last_stream_seq: Option<String>,
    /// Producer states by producer id.
    pub producers: HashMap<String, ProducerState>,
}

/// What an append will do, decided by [`plan_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendPlan {
    /// Write the messages (possibly none, for a close-only request) and update state.
    Write {
        /// New producer state to record, with the ack to return.
        producer: Option<(String, ProducerState)>,
        /// Close the stream after writing.
        close: bool,
    },
    /// A retry of an applied request: change nothing, answer with this producer state.
    Duplicate(ProducerAck),
    /// A close-only request on a closed stream: change nothing.
    AlreadyClosed,
}

/// Validates an append against the stream's writer state, in the precedence of section 5.2:
/// closure first, then content type, then producer, then `Stream-Seq`, then the body.
///
/// `messages` is the already split body ([`split_body`]), passed as a result so that a JSON
/// error is reported only after closure and content-type conflicts.
pub fn plan_append(
    state: &WriterState,
    stream_content_type: &str,
    tail: ds_protocol::Offset,
    req: &AppendRequest,
    messages: &Result<Vec<Bytes>>,
) -> Result<AppendPlan> {
    let has_body = !req.body.is_empty();
    if state.closed {
        if let Some(p) = &req.producer {
            if let Some((id, epoch, seq)) = &state.closed_by
                && *id == p.id
                && *epoch == p.epoch
                && *seq == p.seq
            {
                return Ok(AppendPlan::Duplicate(ProducerAck {
                    epoch: p.epoch,
                    seq: p.seq,
                }));
            }
            if let Some(current) = state.producers.get(&p.id)
                && p.epoch < current.epoch
            {
                return Err(Error::StaleEpoch {
                    current: current.epoch,
                });
            }
        }
        if !has_body && req.close {
            return Ok(AppendPlan::AlreadyClosed);
        }
        return Err(Error::Closed { next: tail });
    }
    if has_body {
        let actual = req.content_type.as_deref().unwrap_or_default();
        if !content_type::matches(actual, stream_content_type) {
            return Err(Error::ContentTypeMismatch {
                expected: stream_content_type.to_owned(),
                actual: actual.to_owned(),
            });
        }
    } else if !req.close {
        return Err(Error::EmptyBody);
    }
    let producer = match &req.producer {
        None => None,
        Some(p) => match check_producer(state.producers.get(&p.id).copied(), p)? {
            ProducerCheck::Duplicate(ack) => return Ok(AppendPlan::Duplicate(ack)),
            ProducerCheck::Accept(next) => Some((p.id.clone(), next)),
        },
    };
    if let Some(seq) = &req.stream_seq
        && let Some(last) = &state.last_stream_seq
        && seq.as_bytes() <= last.as_bytes()
    {
        return Err(Error::SeqRegression {
            last: last.clone(),
            received: seq.clone(),
        });
    }
    match messages {
        Err(Error::InvalidJson(msg)) => return Err(Error::InvalidJson(msg.clone())),
        Err(Error::EmptyJsonArray) => return Err(Error::EmptyJsonArray),
        Err(_) => return Err(Error::InvalidJson("body could not be split".to_owned())),
        Ok(_) => {}
    }
    Ok(AppendPlan::Write {
        producer,
        close: req.close,
    })
}

/// Applies an [`AppendPlan::Write`] to the writer state (the backend writes the data in the same
/// atomic step).
pub fn apply_append(state: &mut WriterState, req: &AppendRequest, plan: &AppendPlan) {
    if let AppendPlan::Write { producer, close } = plan {
        if let Some((id, next)) = producer {
            state.producers.insert(id.clone(), *next);
        }
        if let Some(seq) = &req.stream_seq {
            state.last_stream_seq = Some(seq.clone());
        }
        if *close {
            state.closed = true;
            state.closed_by = req
                .producer
                .as_ref()
                .map(|p| (p.id.clone(), p.epoch, p.seq));
        }
    }
}

/// Checks that `restored` may replace `current` (see
/// [`Storage::restore_writer`](crate::Storage::restore_writer)): a closed stream cannot be
/// reopened, so restoring an open state onto it fails with [`Error::Closed`] at `tail`.
pub fn check_restore(current: &WriterState, restored: &WriterState, tail: Offset) -> Result<()> {
    if current.closed && !restored.closed {
        return Err(Error::Closed { next: tail });
    }
    Ok(())
}

/// Outcome of [`check_producer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerCheck {
    /// Accept the append; record this state.
    Accept(ProducerState),
    /// Already applied; answer with this state.
    Duplicate(ProducerAck),
}

/// The validation logic of section 5.2.1 for one producer.
pub fn check_producer(
    state: Option<ProducerState>,
    req: &ProducerHeaders,
) -> Result<ProducerCheck> {
    let accept = |seq| {
        Ok(ProducerCheck::Accept(ProducerState {
            epoch: req.epoch,
            last_seq: seq,
        }))
    };
    let Some(state) = state else {
        // A producer the stream has not seen starts its epoch at 0.
        return if req.seq == 0 {
            accept(0)
        } else {
            Err(Error::SeqGap {
                expected: 0,
                received: req.seq,
            })
        };
    };
    if req.epoch < state.epoch {
        return Err(Error::StaleEpoch {
            current: state.epoch,
        });
    }
    if req.epoch > state.epoch {
        return if req.seq == 0 {
            accept(0)
        } else {
            Err(Error::EpochSeqNotZero { seq: req.seq })
        };
    }
    if req.seq <= state.last_seq {
        return Ok(ProducerCheck::Duplicate(ProducerAck {
            epoch: state.epoch,
            seq: state.last_seq,
        }));
    }
    if req.seq == state.last_seq + 1 {
        return accept(req.seq);
    }
    Err(Error::SeqGap {
        expected: state.last_seq + 1,
        received: req.seq,
    })
}

/// What lies at a position of a stream's view: how far its record and its append batch reach
/// (each backend finds it in its own records, through [`locate_step`], to resolve a fork's
/// `Stream-Fork-Sub-Offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Bytes from the position to the end of its record (the next data boundary).
    pub bytes_to_boundary: u64,
    /// JSON messages from the position to the end of its append batch.
    pub messages_to_boundary: u64,
}

impl Located {
    /// The tail: nothing follows it.
    pub const AT_TAIL: Located = Located {
        bytes_to_boundary: 0,
        messages_to_boundary: 0,
    };

    /// A position `at` in data a fork inherits, as its source located it: inherited records
    /// end where the fork's own data begins at `base`.
    #[must_use]
    pub fn inherited(self, base: Offset, at: Offset) -> Located {
        Located {
            bytes_to_boundary: self
                .bytes_to_boundary
                .min(base.byte.saturating_sub(at.byte)),
            messages_to_boundary: self
                .messages_to_boundary
                .min(base.seq.saturating_sub(at.seq)),
        }
    }

    /// Checks a `Stream-Fork-Sub-Offset` against what follows the position: messages of its
    /// batch on a JSON stream, bytes of its record otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::SubOffsetOvershoot`] when `sub_offset` reaches past that boundary.
    pub fn check_sub_offset(self, sub_offset: u64, json: bool) -> Result<()> {
        let available = if json {
            self.messages_to_boundary
        } else {
            self.bytes_to_boundary
        };
        if sub_offset > available {
            return Err(Error::SubOffsetOvershoot {
                sub_offset,
                available,
            });
        }
        Ok(())
    }
}

/// Where resolving a fork position in a stream's view goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocateStep {
    /// Resolved without reading a record (the tail).
    At(Located),
    /// The position lies in data the stream inherits: locate it in the fork's source, then
    /// apply [`Located::inherited`]. A stream that is no fork answers
    /// [`Error::ForkOffsetInvalid`].
    Inherited,
    /// The position lies in the stream's own records: the backend reads the one holding it.
    Own,
}

/// The checks every backend makes before looking at records when resolving `at` in a stream
/// whose own data starts at `base` and whose tail is `tail`.
///
/// # Errors
///
/// [`Error::ForkOffsetBeyondTail`] past the tail, [`Error::ForkOffsetInvalid`] at the tail's
/// byte with another sequence number.
pub fn locate_step(at: Offset, tail: Offset, base: Offset) -> Result<LocateStep> {
    if at.byte > tail.byte || at > tail {
        return Err(Error::ForkOffsetBeyondTail { offset: at, tail });
    }
    if at.byte < base.byte {
        return Ok(LocateStep::Inherited);
    }
    if at.byte == tail.byte {
        if at.seq != tail.seq {
            return Err(Error::ForkOffsetInvalid { offset: at });
        }
        return Ok(LocateStep::At(Located::AT_TAIL));
    }
    Ok(LocateStep::Own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer(epoch: u64, seq: u64) -> ProducerHeaders {
        ProducerHeaders {
            id: "p".to_owned(),
            epoch,
            seq,
        }
    }

    #[test]
    fn new_producer_must_start_at_seq_zero() {
        assert!(matches!(
            check_producer(None, &producer(0, 0)),
            Ok(ProducerCheck::Accept(ProducerState {
                epoch: 0,
                last_seq: 0
            }))
        ));
        assert!(matches!(
            check_producer(None, &producer(3, 2)),
            Err(Error::SeqGap {
                expected: 0,
                received: 2
            })
        ));
    }

    #[test]
    fn producer_validation_follows_section_5_2_1() {
        let s = Some(ProducerState {
            epoch: 2,
            last_seq: 5,
        });
        assert!(matches!(
            check_producer(s, &producer(1, 6)),
            Err(Error::StaleEpoch { current: 2 })
        ));
        assert!(matches!(
            check_producer(s, &producer(3, 1)),
            Err(Error::EpochSeqNotZero { seq: 1 })
        ));
        assert!(matches!(
            check_producer(s, &producer(3, 0)),
            Ok(ProducerCheck::Accept(ProducerState {
                epoch: 3,
                last_seq: 0
            }))
        ));
        assert!(matches!(
            check_producer(s, &producer(2, 3)),
            Ok(ProducerCheck::Duplicate(ProducerAck { epoch: 2, seq: 5 }))
        ));
        assert!(matches!(
            check_producer(s, &producer(2, 6)),
            Ok(ProducerCheck::Accept(ProducerState {
                epoch: 2,
                last_seq: 6
            }))
        ));
        assert!(matches!(
            check_producer(s, &producer(2, 8)),
            Err(Error::SeqGap {
                expected: 6,
                received: 8
            })
        ));
    }

    #[test]
    fn closed_stream_checks_come_first() {
        let state = WriterState {
            closed: true,
            ..WriterState::default()
        };
        let req = AppendRequest {
            content_type: Some("application/json".into()),
            body: Bytes::from_static(b"x"),
            ..AppendRequest::default()
        };
        let plan = plan_append(
            &state,
            "text/plain",
            ds_protocol::Offset::ZERO,
            &req,
            &Ok(vec![]),
        );
        assert!(matches!(plan, Err(Error::Closed { .. })));
    }

    #[test]
    fn stream_seq_is_compared_bytewise() {
        let state = WriterState {
            last_stream_seq: Some("2".into()),
            ..WriterState::default()
        };
        let req = AppendRequest {
            content_type: Some("text/plain".into()),
            body: Bytes::from_static(b"x"),
            stream_seq: Some("10".into()),
            ..AppendRequest::default()
        };
        assert!(matches!(
            plan_append(
                &state,
                "text/plain",
                ds_protocol::Offset::ZERO,
                &req,
                &Ok(vec![])
            ),
            Err(Error::SeqRegression { .. })
        ));
    }

    #[test]
    fn ttl_slides_and_expires_at_is_absolute() {
        assert!(!is_expired(Expiry::Ttl(1), 1_000, 1_999));
        assert!(is_expired(Expiry::Ttl(1), 1_000, 2_000));
        assert!(!is_expired(Expiry::None, 0, u64::MAX));
    }

    #[test]
    fn locate_steps_and_sub_offsets() {
        let (base, tail) = (Offset::new(3, 30), Offset::new(6, 60));
        for at in [Offset::new(7, 60), Offset::new(6, 61)] {
            assert!(matches!(
                locate_step(at, tail, base),
                Err(Error::ForkOffsetBeyondTail { offset, tail: t }) if offset == at && t == tail
            ));
        }
        assert!(matches!(
            locate_step(Offset::new(1, 10), tail, base),
            Ok(LocateStep::Inherited)
        ));
        assert!(matches!(
            locate_step(tail, tail, base),
            Ok(LocateStep::At(Located::AT_TAIL))
        ));
        assert!(matches!(
            locate_step(Offset::new(5, 60), tail, base),
            Err(Error::ForkOffsetInvalid { offset }) if offset == Offset::new(5, 60)
        ));
        assert!(matches!(
            locate_step(Offset::new(4, 40), tail, base),
            Ok(LocateStep::Own)
        ));

        let inner = Located {
            bytes_to_boundary: 50,
            messages_to_boundary: 9,
        };
        assert_eq!(
            inner.inherited(base, Offset::new(1, 10)),
            Located {
                bytes_to_boundary: 20,
                messages_to_boundary: 2
            }
        );
        let here = Located {
            bytes_to_boundary: 5,
            messages_to_boundary: 2,
        };
        assert!(here.check_sub_offset(5, false).is_ok());
        assert!(matches!(
            here.check_sub_offset(6, false),
            Err(Error::SubOffsetOvershoot {
                sub_offset: 6,
                available: 5
            })
        ));
        assert!(here.check_sub_offset(2, true).is_ok());
        assert!(matches!(
            here.check_sub_offset(3, true),
            Err(Error::SubOffsetOvershoot {
                sub_offset: 3,
                available: 2
            })
        ));
    }
}
