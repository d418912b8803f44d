//! An in-process stand-in for a store several servers share: one [`MemoryStorage`], a lease
//! table with terms and expiry, a broadcast of stream changes, and request forwarding through
//! channels ([`Hub`]). Each "node" opens its engine over a [`NodeStore`], which delegates every
//! operation to the shared store, publishes the [`Change`] of each write, and returns the node's
//! [`Node`] as its [`Cluster`].
//!
//! Test controls: [`Node::freeze`] makes a node's lease requests hang (a paused or partitioned
//! process), [`Hub::expire`] ends a lease at once as if its ttl had run out unnoticed, and
//! [`Hub::hold`] gives a lease to a node that does not exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ds_protocol::StreamName;
use ds_storage::cluster::BoxFuture;
use ds_storage::{
    AppendOutcome, AppendRequest, Call, Change, Cluster, CreateOutcome, CreateRequest, Error,
    ReadChunk, ReadFrom, Result, Storage, StreamInfo, Tail,
};
use ds_storage_memory::MemoryStorage;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

struct Lease {
    holder: String,
    term: u64,
    expires: Instant,
}

/// What the nodes share.
pub(crate) struct Hub {
    pub(crate) store: Arc<MemoryStorage>,
    leases: Mutex<HashMap<String, Lease>>,
    changes: broadcast::Sender<Change>,
    /// `serve` receivers by (lease, node).
    servers: Mutex<HashMap<(String, String), mpsc::Sender<Call>>>,
}

impl Hub {
    pub(crate) fn new() -> Arc<Hub> {
        Arc::new(Hub {
            store: Arc::new(MemoryStorage::default()),
            leases: Mutex::new(HashMap::new()),
            changes: broadcast::channel(1024).0,
            servers: Mutex::new(HashMap::new()),
        })
    }

    /// How many nodes follow the change feed now.
    pub(crate) fn followers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// A node's coordination handle.
    pub(crate) fn node(self: &Arc<Self>, id: &str) -> Arc<Node> {
        Arc::new(Node {
            hub: self.clone(),
            id: id.to_owned(),
            frozen: AtomicBool::new(false),
        })
    }

    /// Ends lease `name` now, whoever holds it, without telling the holder.
    pub(crate) fn expire(&self, name: &str) {
        if let Some(lease) = self.leases.lock().expect("lock").get_mut(name) {
            lease.expires = Instant::now();
        }
    }

    /// Gives lease `name` to `holder` (a node that may not exist) for `ttl`.
    pub(crate) fn hold(&self, name: &str, holder: &str, ttl: Duration) {
        let mut leases = self.leases.lock().expect("lock");
        let term = leases.get(name).map_or(0, |l| l.term) + 1;
        leases.insert(
            name.to_owned(),
            Lease {
                holder: holder.to_owned(),
                term,
                expires: Instant::now() + ttl,
            },
        );
    }

    /// The current holder of lease `name` and its term, if the lease is live.
    pub(crate) fn holder(&self, name: &str) -> Option<(String, u64)> {
        let leases = self.leases.lock().expect("lock");
        leases
            .get(name)
            .filter(|l| l.expires > Instant::now())
            .map(|l| (l.holder.clone(), l.term))
    }

    /// Publishes a change as the store's feed would.
    pub(crate) fn publish(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    fn server(&self, lease: &str) -> Option<mpsc::Sender<Call>> {
        let (holder, _) = self.holder(lease)?;
        self.servers
            .lock()
            .expect("lock")
            .get(&(lease.to_owned(), holder))
            .cloned()
    }
}

/// One node's [`Cluster`] handle.
#[derive(Debug)]
pub(crate) struct Node {
    hub: Arc<Hub>,
    id: String,
    frozen: AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Node {
    /// From now on this node's lease requests never answer, as for a process that stopped
    /// being scheduled or lost its connection to the store.
    pub(crate) fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

fn unreachable(op: &'static str, why: &str) -> Error {
    Error::Backend {
        op,
        source: why.to_owned().into(),
    }
}

impl Cluster for Node {
    fn node_id(&self) -> &str {
        &self.id
    }

    fn acquire(&self, name: &str, ttl: Duration) -> BoxFuture<'_, Result<Option<u64>>> {
        let name = name.to_owned();
        Box::pin(async move {
            if self.frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let now = Instant::now();
            let mut leases = self.hub.leases.lock().expect("lock");
            let lease = leases.entry(name).or_insert(Lease {
                holder: String::new(),
                term: 0,
                expires: now,
            });
            if lease.holder == self.id {
                lease.expires = now + ttl;
                return Ok(Some(lease.term));
            }
            if lease.expires > now {
                return Ok(None);
            }
            lease.holder.clone_from(&self.id);
            lease.term += 1;
            lease.expires = now + ttl;
            Ok(Some(lease.term))
        })
    }

    fn release(&self, name: &str) -> BoxFuture<'_, Result<()>> {
        let name = name.to_owned();
        Box::pin(async move {
            if let Some(lease) = self.hub.leases.lock().expect("lock").get_mut(&name)
                && lease.holder == self.id
            {
                lease.holder.clear();
                lease.expires = Instant::now();
            }
            Ok(())
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.hub.changes.subscribe()
    }

    fn call(&self, lease: &str, request: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes>> {
        let lease = lease.to_owned();
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(server) = self.hub.server(&lease) {
                    let (reply, answer) = oneshot::channel();
                    let call = Call {
                        request: request.clone(),
                        reply,
                    };
                    if server.send(call).await.is_ok() {
                        return match tokio::time::timeout_at(deadline, answer).await {
                            Ok(Ok(bytes)) => Ok(bytes),
                            Ok(Err(_)) => Err(unreachable("call", "the holder dropped the call")),
                            Err(_) => Err(unreachable("call", "timed out")),
                        };
                    }
                }
                if Instant::now() >= deadline {
                    return Err(unreachable("call", "no holder answered in time"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn serve(&self, lease: &str) -> mpsc::Receiver<Call> {
        let (tx, rx) = mpsc::channel(64);
        self.hub
            .servers
            .lock()
            .expect("lock")
            .insert((lease.to_owned(), self.id.clone()), tx);
        rx
    }
}

/// A node's view of the shared store: every write also goes out on the change feed.
pub(crate) struct NodeStore {
    hub: Arc<Hub>,
    node: Arc<Node>,
}

impl NodeStore {
    pub(crate) fn new(hub: &Arc<Hub>, node: &Arc<Node>) -> NodeStore {
        NodeStore {
            hub: hub.clone(),
            node: node.clone(),
        }
    }
}

impl Storage for NodeStore {
    async fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        let outcome = self.hub.store.create(name, req).await?;
        self.hub.publish(Change::Tail {
            name: name.clone(),
            next: outcome.info().next,
        });
        Ok(outcome)
    }

    async fn append(&self, name: &StreamName, req: AppendRequest) -> Result<AppendOutcome> {
        let outcome = self.hub.store.append(name, req).await?;
        if let AppendOutcome::Appended { next, .. } = &outcome {
            self.hub.publish(Change::Tail {
                name: name.clone(),
                next: *next,
            });
        }
        Ok(outcome)
    }

    async fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        self.hub.store.read(name, from, max_bytes).await
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo> {
        self.hub.store.head(name).await
    }

    async fn delete(&self, name: &StreamName) -> Result<()> {
        self.hub.store.delete(name).await?;
        self.hub.publish(Change::Gone { name: name.clone() });
        Ok(())
    }

    async fn subscribe(&self, name: &StreamName) -> Result<watch::Receiver<Tail>> {
        self.hub.store.subscribe(name).await
    }

    async fn list(&self) -> Result<Vec<StreamInfo>> {
        self.hub.store.list().await
    }

    async fn sweep_expired(&self) -> Result<usize> {
        self.hub.store.sweep_expired().await
    }

    async fn export_meta(&self, name: &StreamName) -> Result<ds_storage::ExportMeta> {
        self.hub.store.export_meta(name).await
    }

    async fn restore_writer(
        &self,
        name: &StreamName,
        writer: ds_storage::rules::WriterState,
    ) -> Result<()> {
        self.hub.store.restore_writer(name, writer).await?;
        let info = self.hub.store.head(name).await?;
        self.hub.publish(Change::Tail {
            name: name.clone(),
            next: info.next,
        });
        Ok(())
    }

    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Some(self.node.clone())
    }
}
