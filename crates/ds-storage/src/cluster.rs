//! Coordination between server processes that share one store.
//!
//! A store that several `durable-streams-server` processes open at once (PostgreSQL) returns a
//! [`Cluster`] from [`Storage::cluster`](crate::Storage::cluster). Work that must happen on one
//! node at a time (the subscription engine: deciding and delivering wakes) uses it to:
//!
//! - hold a **lease** ([`Cluster::acquire`]): at most one node holds a named lease at a time, and
//!   its **term** grows every time the lease changes hands, so the holder can fence writes made
//!   by an earlier holder that has not noticed yet;
//! - see every stream change committed by **any** node ([`Cluster::changes`]), not only its own;
//! - forward a request from any node to the lease holder and wait for its answer
//!   ([`Cluster::call`] on the sender, [`Cluster::serve`] on the holder), so clients and load
//!   balancers need no stickiness and nodes need no network path to each other.
//!
//! A store one process owns (memory, file, acid) has no `Cluster`: everything is local.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use ds_protocol::{Offset, StreamName};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::Result;

/// A boxed, sendable future (the [`Cluster`] trait is object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A change to a stream, committed by any node of the cluster (this one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The stream exists and its tail is `next`: it was created (with or without data),
    /// appended to, or closed. Reports of one stream may repeat and may arrive late, never
    /// with a tail the stream does not have or had.
    Tail {
        /// The stream.
        name: StreamName,
        /// Its tail after the change.
        next: Offset,
    },
    /// The stream was deleted (or expired and was swept).
    Gone {
        /// The stream.
        name: StreamName,
    },
    /// Changes may have been missed since the previous event (the feed reconnected to the
    /// store): whoever depends on them should re-read the state they track.
    Resync,
}

/// A request forwarded to this node by [`Cluster::call`] on some node.
#[derive(Debug)]
pub struct Call {
    /// The opaque request bytes, as the caller passed them.
    pub request: Bytes,
    /// Where the answer goes. Dropping it unanswered leaves the caller to its timeout.
    pub reply: oneshot::Sender<Bytes>,
}

/// Coordination between the server processes sharing one store.
pub trait Cluster: Send + Sync + std::fmt::Debug + 'static {
    /// This process's id in the cluster, unique for each process start.
    fn node_id(&self) -> &str;

    /// Takes lease `name` when nobody holds it or its holder let it expire, or renews it when
    /// this node holds it, for `ttl` measured by the store's clock (so node clocks need not
    /// agree). Answers the lease's term while this node holds it, `None` while another node
    /// does. The term is the same across renewals and larger after every change of holder.
    ///
    /// A holder that cannot renew must assume it lost the lease once `ttl` has passed since
    /// it *sent* its last successful request; it should stop acting well before that.
    fn acquire(&self, name: &str, ttl: Duration) -> BoxFuture<'_, Result<Option<u64>>>;

    /// Gives lease `name` up if this node holds it, so another node can take it at once
    /// instead of waiting out the ttl (graceful shutdown).
    fn release(&self, name: &str) -> BoxFuture<'_, Result<()>>;

    /// Every stream change committed from now on, by any node. A receiver that falls behind
    /// gets [`broadcast::error::RecvError::Lagged`], which means the same as
    /// [`Change::Resync`].
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Sends `request` to the node holding lease `lease` (which reads it from
    /// [`Cluster::serve`]) and waits up to `timeout` for its reply. A request is handed to at
    /// most one node, once. Fails on a timeout (no holder, or the holder died or did not
    /// answer) and when the store cannot be reached.
    fn call(&self, lease: &str, request: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes>>;

    /// The requests sent with [`Cluster::call`] to lease `lease`, delivered while this node
    /// holds it (as of its last [`Cluster::acquire`]), including ones sent before it took the
    /// lease that nobody has taken yet. One receiver per lease name: a second call replaces
    /// the first.
    fn serve(&self, lease: &str) -> mpsc::Receiver<Call>;
}
