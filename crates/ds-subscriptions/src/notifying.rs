//! [`Notifying`]: the storage wrapper that reports writes to the subscription engine.

use std::sync::Arc;

use ds_protocol::StreamName;
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ReadChunk, ReadFrom,
    ReadPiece, Result, Storage, StreamInfo, Tail,
};
use tokio::sync::watch;

use crate::engine::Subscriptions;

/// A [`Storage`] that delegates to `S` and tells the subscription engine about every successful
/// create, append, close and delete, after the write and before the caller sees the result. So a
/// stream created after a subscription is linked before its first append wakes anyone, and an
/// append's wake is decided before its `204` is sent.
///
/// On a standby node of a cluster (see the crate docs, "Several nodes") the hooks return after
/// one atomic load: the active node learns about the write from the cluster's change feed.
///
/// It also hides the reserved `__ds` namespace, where the engine keeps its state and signing
/// key: every operation on a reserved name answers [`Error::NotFound`], a fork of one is
/// [`Error::ForkSourceNotFound`], and [`Storage::list`] leaves them out. The server routes
/// `{base}/__ds/...` away from stream handlers anyway; this is the second wall.
pub struct Notifying<S> {
    inner: Arc<S>,
    engine: Arc<Subscriptions<S>>,
}

impl<S> std::fmt::Debug for Notifying<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifying").finish_non_exhaustive()
    }
}

impl<S: Storage> Notifying<S> {
    /// Wraps the engine's own store.
    #[must_use]
    pub fn new(engine: Arc<Subscriptions<S>>) -> Self {
        Notifying {
            inner: engine.storage().clone(),
            engine,
        }
    }

    /// The wrapped store.
    #[must_use]
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The engine notified.
    #[must_use]
    pub fn engine(&self) -> &Arc<Subscriptions<S>> {
        &self.engine
    }
}

fn hidden(name: &StreamName) -> Result<()> {
    if name.is_reserved() {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}

impl<S: Storage> Storage for Notifying<S> {
    async fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        hidden(name)?;
        if req.fork.as_ref().is_some_and(|f| f.source.is_reserved()) {
            return Err(Error::ForkSourceNotFound);
        }
        let outcome = self.inner.create(name, req).await?;
        self.engine.stream_created(name, outcome.info());
        Ok(outcome)
    }

    async fn append(&self, name: &StreamName, req: AppendRequest) -> Result<AppendOutcome> {
        hidden(name)?;
        let outcome = self.inner.append(name, req).await?;
        if let AppendOutcome::Appended { next, .. } = &outcome {
            self.engine.stream_appended(name, *next);
        }
        Ok(outcome)
    }

    async fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        hidden(name)?;
        self.inner.read(name, from, max_bytes).await
    }

    async fn read_regions(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
        max_file_bytes: u64,
    ) -> Result<ReadChunk<ReadPiece>> {
        hidden(name)?;
        self.inner
            .read_regions(name, from, max_bytes, max_file_bytes)
            .await
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo> {
        hidden(name)?;
        self.inner.head(name).await
    }

    async fn delete(&self, name: &StreamName) -> Result<()> {
        hidden(name)?;
        self.inner.delete(name).await?;
        self.engine.stream_deleted(name);
        Ok(())
    }

    async fn restore_writer(
        &self,
        name: &StreamName,
        writer: ds_storage::rules::WriterState,
    ) -> Result<()> {
        hidden(name)?;
        self.inner.restore_writer(name, writer).await
    }

    async fn subscribe(&self, name: &StreamName) -> Result<watch::Receiver<Tail>> {
        hidden(name)?;
        self.inner.subscribe(name).await
    }

    async fn list(&self) -> Result<Vec<StreamInfo>> {
        let mut all = self.inner.list().await?;
        all.retain(|info| !info.name.is_reserved());
        Ok(all)
    }

    async fn sweep_expired(&self) -> Result<usize> {
        self.inner.sweep_expired().await
    }

    async fn export_meta(&self, name: &StreamName) -> Result<ds_storage::ExportMeta> {
        hidden(name)?;
        self.inner.export_meta(name).await
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn stats(&self) -> ds_storage::StorageStats {
        self.inner.stats()
    }

    fn cluster(&self) -> Option<Arc<dyn ds_storage::Cluster>> {
        self.inner.cluster()
    }
}
