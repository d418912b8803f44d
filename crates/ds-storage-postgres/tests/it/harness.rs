//! A harness that opens [`PostgresStorage`] in a fresh schema per test case.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ds_storage::rules::ManualClock;
use ds_storage::testkit::{Capabilities, Harness, Limits};
use ds_storage_postgres::{PostgresOptions, PostgresStorage};

/// The database tests use.
pub(crate) fn url() -> String {
    std::env::var("DS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test (in this run or a parallel one) uses.
pub(crate) fn unique_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "ds_test_{}_{}_{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// Drops `schema` with everything in it (on its own thread and runtime, so it also works
/// from `Drop` after the test's runtime is gone).
pub(crate) fn drop_schema(schema: &str) {
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let url = url();
    let result = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for cleanup");
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await.map_err(|e| e.to_string())
        })
    })
    .join();
    if let Ok(Err(e)) = result {
        eprintln!("could not drop test schema: {e}");
    }
}

/// A schema dropped when the test ends (also when it fails).
pub(crate) struct Schema(pub(crate) String);

impl Schema {
    pub(crate) fn new() -> Self {
        Schema(unique_schema())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        drop_schema(&self.0);
    }
}

/// Options for a store in `schema` on the harness clock.
pub(crate) fn options(schema: &str, clock: &Arc<ManualClock>) -> PostgresOptions {
    PostgresOptions {
        schema: schema.to_owned(),
        pool_size: 4,
        clock: clock.clone(),
        ..PostgresOptions::new(url())
    }
}

/// Opens stores in one schema of their own; a reopen drops the store (its pool, committers
/// and LISTEN connection) and opens the same schema again, as a restarted node would.
pub(crate) struct PostgresHarness {
    /// Every schema opened (each fresh open gets one); the last is what `reopen` opens again.
    schemas: Mutex<Vec<String>>,
    clock: Arc<ManualClock>,
    limits: Mutex<Limits>,
}

impl PostgresHarness {
    pub(crate) fn new() -> Self {
        PostgresHarness {
            schemas: Mutex::new(Vec::new()),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            limits: Mutex::new(Limits::default()),
        }
    }

    fn options(&self) -> PostgresOptions {
        let schema = self
            .schemas
            .lock()
            .expect("harness lock")
            .last()
            .cloned()
            .expect("a store was opened");
        PostgresOptions {
            max_stream_bytes: Some(self.limits.lock().expect("harness lock").max_stream_bytes),
            ..options(&schema, &self.clock)
        }
    }
}

impl Drop for PostgresHarness {
    fn drop(&mut self) {
        for schema in self.schemas.get_mut().expect("harness lock").iter() {
            drop_schema(schema);
        }
    }
}

impl Harness for PostgresHarness {
    type Store = PostgresStorage;

    async fn open_with(&self, limits: Limits) -> PostgresStorage {
        *self.limits.lock().expect("harness lock") = limits;
        self.schemas
            .lock()
            .expect("harness lock")
            .push(unique_schema());
        PostgresStorage::open(self.options())
            .await
            .expect("a fresh store opens")
    }

    async fn reopen(&self, store: PostgresStorage) -> PostgresStorage {
        store.close().await;
        drop(store);
        PostgresStorage::open(self.options())
            .await
            .expect("the store reopens")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { persistent: true }
    }

    fn clock(&self) -> Arc<ManualClock> {
        Arc::clone(&self.clock)
    }
}
