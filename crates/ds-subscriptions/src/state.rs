//! The subscription state model and the events that change it.
//!
//! Every change is an [`Event`] applied by [`State::apply`]; the engine applies the same event
//! it appends to the state log, so replaying the log on open rebuilds exactly the state that was
//! running. Events set absolute values (an acked offset, a whole wake record), never deltas.

use std::collections::BTreeMap;
use std::fmt;

use ds_protocol::Offset;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spec::Spec;

/// An [`Offset`] that serialises as its token string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Off(pub Offset);

impl Off {
    /// The zero offset: nothing processed yet.
    pub const ZERO: Off = Off(Offset::ZERO);
}

impl fmt::Display for Off {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Off {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Off {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Offset>()
            .map(Off)
            .map_err(|e| serde::de::Error::custom(format!("offset {s:?}: {e}")))
    }
}

/// One stream linked to a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Linked by `streams[]` or `POST .../streams`.
    pub explicit: bool,
    /// Linked because the pattern matches.
    pub glob: bool,
    /// Last processed offset, inclusive: the next read starts here.
    pub acked: Off,
}

impl Link {
    /// `explicit` takes precedence when both apply.
    #[must_use]
    pub fn link_type(&self) -> &'static str {
        if self.explicit { "explicit" } else { "glob" }
    }
}

/// A wake in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wake {
    /// Unique per wake.
    pub id: String,
    /// When the wake was issued (Unix ms).
    pub issued_at_ms: u64,
    /// Tails of the pending streams as last sent to the webhook: what `{ "done": true }`
    /// acknowledges. Not persisted: after a restart an unanswered wake is delivered again with a
    /// fresh snapshot, and an answered one can no longer be auto-acked.
    #[serde(default, skip_serializing)]
    pub snapshot: BTreeMap<String, Off>,
    /// The pull-wake worker holding the lease.
    pub holder: Option<String>,
    /// When the lease ends (Unix ms); `None` while no lease runs (a webhook request in flight or
    /// a retry scheduled, an unclaimed pull wake).
    pub lease_expires_at_ms: Option<u64>,
}

/// A scheduled delivery retry; the subscription's `status` is `failed` while one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Failed attempts so far (1 after the first failure).
    pub attempt: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_at_ms: u64,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sub {
    /// The client-given id.
    pub id: String,
    /// Random per creation: tokens of a deleted subscription never work on a new one with the
    /// same id.
    pub incarnation: u64,
    /// The normalised configuration.
    pub spec: Spec,
    /// [`Spec::hash`], kept as created.
    pub hash: String,
    /// Creation time (Unix ms).
    pub created_at_ms: u64,
    /// The stream root URL seen at creation, e.g. `http://host/v1/stream`.
    pub base_url: String,
    /// The parsed pattern (derived from `spec`, not persisted).
    #[serde(skip)]
    pub glob: Option<crate::glob::Glob>,
    /// Linked streams by path.
    pub links: BTreeMap<String, Link>,
    /// The fencing counter: incremented for every wake.
    pub generation: u64,
    /// The wake in flight.
    pub wake: Option<Wake>,
    /// The scheduled retry.
    pub retry: Option<Retry>,
}

/// An ack of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEntry {
    /// The stream path.
    pub path: String,
    /// The new acked offset.
    pub offset: Off,
}

/// A change to the state, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Event {
    /// The whole state: the first record of every log epoch.
    Snapshot {
        /// Every subscription.
        subs: Vec<Sub>,
        /// Deleted ids and their last generation.
        tombstones: BTreeMap<String, u64>,
    },
    /// A subscription was created.
    Put {
        /// The new subscription.
        sub: Box<Sub>,
    },
    /// A subscription was deleted.
    Delete {
        /// Its id.
        id: String,
    },
    /// A link was set (or removed, `None`).
    Link {
        /// The subscription.
        id: String,
        /// The stream path.
        path: String,
        /// The link, or `None` to unlink.
        link: Option<Link>,
    },
    /// Acked offsets were set.
    Acks {
        /// The subscription.
        id: String,
        /// The new offsets.
        acks: Vec<AckEntry>,
    },
    /// The generation, wake and retry were set.
    Wake {
        /// The subscription.
        id: String,
        /// The generation.
        generation: u64,
        /// The wake in flight.
        wake: Option<Wake>,
        /// The scheduled retry.
        retry: Option<Retry>,
    },
    /// A fencing marker of cluster mode: the node holding lease term `term` claimed this log
    /// epoch (its `Stream-Seq` is what fences older terms out). Replays as a no-op; a
    /// single-node engine never writes it.
    Fence {
        /// The lease term of the node that wrote it.
        term: u64,
    },
}

/// All subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Live subscriptions by id.
    pub subs: BTreeMap<String, Sub>,
    /// Deleted ids and their last generation (a new subscription with the id continues from
    /// it, so generations never repeat for an id).
    pub tombstones: BTreeMap<String, u64>,
}

impl State {
    /// Applies one event. Events about unknown subscriptions are ignored (they can follow a
    /// delete in the log).
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Snapshot { subs, tombstones } => {
                self.subs = subs
                    .into_iter()
                    .map(|mut s| {
                        s.glob = s.spec.glob();
                        (s.id.clone(), s)
                    })
                    .collect();
                self.tombstones = tombstones;
            }
            Event::Put { mut sub } => {
                self.tombstones.remove(&sub.id);
                sub.glob = sub.spec.glob();
                self.subs.insert(sub.id.clone(), *sub);
            }
            Event::Delete { id } => {
                if let Some(sub) = self.subs.remove(&id) {
                    self.tombstones.insert(id, sub.generation);
                }
            }
            Event::Link { id, path, link } => {
                if let Some(sub) = self.subs.get_mut(&id) {
                    match link {
                        Some(link) => {
                            sub.links.insert(path, link);
                        }
                        None => {
                            sub.links.remove(&path);
                        }
                    }
                }
            }
            Event::Acks { id, acks } => {
                if let Some(sub) = self.subs.get_mut(&id) {
                    for ack in acks {
                        if let Some(link) = sub.links.get_mut(&ack.path) {
                            link.acked = ack.offset;
                        }
                    }
                }
            }
            Event::Wake {
                id,
                generation,
                wake,
                retry,
            } => {
                if let Some(sub) = self.subs.get_mut(&id) {
                    sub.generation = generation;
                    sub.wake = wake;
                    sub.retry = retry;
                }
            }
            Event::Fence { .. } => {}
        }
    }

    /// The whole state as one event.
    #[must_use]
    pub fn snapshot(&self) -> Event {
        Event::Snapshot {
            subs: self.subs.values().cloned().collect(),
            tombstones: self.tombstones.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Kind, Spec};

    fn sub(id: &str) -> Sub {
        Sub {
            id: id.into(),
            incarnation: 1,
            spec: Spec {
                kind: Kind::Webhook,
                pattern: Some("events/*".into()),
                streams: vec![],
                webhook_url: Some("https://h.example/".into()),
                wake_stream: None,
                lease_ttl_ms: 30_000,
                description: None,
            },
            hash: "h".into(),
            created_at_ms: 1,
            base_url: "http://x/v1/stream".into(),
            glob: None,
            links: BTreeMap::new(),
            generation: 0,
            wake: None,
            retry: None,
        }
    }

    #[test]
    fn a_fence_marker_is_logged_with_its_term_and_replays_as_a_no_op() {
        let fence = Event::Fence { term: 7 };
        let json = serde_json::to_string(&fence).expect("serialise");
        assert_eq!(json, r#"{"op":"fence","term":7}"#);
        let mut state = State::default();
        state.apply(Event::Put {
            sub: Box::new(sub("a")),
        });
        let before = state.clone();
        state.apply(serde_json::from_str(&json).expect("deserialise"));
        assert_eq!(state, before);
    }

    #[test]
    fn replaying_events_after_a_snapshot_rebuilds_the_state() {
        let events = vec![
            Event::Put {
                sub: Box::new(sub("a")),
            },
            Event::Link {
                id: "a".into(),
                path: "events/x".into(),
                link: Some(Link {
                    explicit: false,
                    glob: true,
                    acked: Off::ZERO,
                }),
            },
            Event::Wake {
                id: "a".into(),
                generation: 1,
                wake: Some(Wake {
                    id: "w1".into(),
                    issued_at_ms: 5,
                    snapshot: BTreeMap::from([("events/x".into(), Off(Offset::new(1, 3)))]),
                    holder: None,
                    lease_expires_at_ms: Some(10),
                }),
                retry: Some(Retry {
                    attempt: 2,
                    next_attempt_at_ms: 99,
                }),
            },
            Event::Acks {
                id: "a".into(),
                acks: vec![AckEntry {
                    path: "events/x".into(),
                    offset: Off(Offset::new(1, 3)),
                }],
            },
            Event::Fence { term: 7 },
            Event::Put {
                sub: Box::new(sub("b")),
            },
            Event::Delete { id: "b".into() },
        ];
        let mut direct = State::default();
        for e in &events {
            // Through JSON, as the log stores them.
            let json = serde_json::to_vec(e).expect("serialise");
            direct.apply(serde_json::from_slice(&json).expect("deserialise"));
        }
        let a = &direct.subs["a"];
        assert_eq!(a.links["events/x"].acked, Off(Offset::new(1, 3)));
        assert_eq!(a.retry.expect("retry").next_attempt_at_ms, 99);
        assert_eq!(direct.tombstones.get("b"), Some(&0));

        let mut from_snapshot = State::default();
        let snap = serde_json::to_vec(&direct.snapshot()).expect("serialise");
        from_snapshot.apply(serde_json::from_slice(&snap).expect("deserialise"));
        assert_eq!(from_snapshot, direct);
    }
}
