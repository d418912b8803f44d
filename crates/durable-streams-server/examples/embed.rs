//! Embedding the Durable Streams protocol in an existing axum app.
//!
//! ```text
//! cargo run --example embed                       # serves on 127.0.0.1:8080
//! EMBED_ADDR=127.0.0.1:9000 cargo run --example embed
//! curl -X PUT -H 'Content-Type: text/plain' http://127.0.0.1:8080/streams/demo
//! curl -X POST -H 'Content-Type: text/plain' --data 'hi' http://127.0.0.1:8080/streams/demo
//! curl 'http://127.0.0.1:8080/streams/demo?offset=-1'
//! curl http://127.0.0.1:8080/hello
//! ```
//!
//! The app keeps its own routes and middleware; the protocol is mounted under `/streams` on an
//! in-memory store. Ctrl-C drains: `/readyz` turns `503`, live reads end, then the server stops.

#[path = "embed/app.rs"]
mod app;

use std::sync::Arc;

use ds_server::{MemoryStorage, ShutdownToken};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("EMBED_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let shutdown = ShutdownToken::new();
    let router = app::app(Arc::new(MemoryStorage::default()), shutdown.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "serving http://{}{}/<name> beside /hello",
        listener.local_addr()?,
        app::STREAMS_BASE
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            // A failed signal handler only means the server runs until killed.
            let _ = tokio::signal::ctrl_c().await;
            shutdown.end_live_reads();
        })
        .await
}
