//! A Durable Streams server on the memory backend with subscriptions, for running the
//! conformance suite with `DS_SUBSCRIPTIONS=true` before the server wires the crate in.
//!
//! ```text
//! cargo run -p ds-subscriptions --example serve -- 4437
//! ```
//!
//! The subscription router is nested at `/v1/stream/__ds` and everything else falls through to
//! `ds_server::build_router`, whose own `{base}/__ds` catch-all is then never reached.
//! Development webhooks (`http://127.0.0.x`) are allowed unless
//! `DS_SUBSCRIPTIONS__ALLOW_DEV_WEBHOOKS=false`.

use std::sync::Arc;
use std::time::Duration;

use ds_server::{MemoryStorage, RouterSettings, build_router};
use ds_subscriptions::{Notifying, Subscriptions, SubscriptionsConfig, router};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(4437);
    let cfg = SubscriptionsConfig {
        allow_dev_webhooks: std::env::var("DS_SUBSCRIPTIONS__ALLOW_DEV_WEBHOOKS")
            .map_or(true, |v| v != "false"),
        ..SubscriptionsConfig::default()
    };
    let engine = Subscriptions::open(Arc::new(MemoryStorage::default()), cfg).await?;
    let storage = Arc::new(Notifying::new(engine.clone()));
    let settings = RouterSettings {
        long_poll_timeout: Duration::from_secs(1),
        ..RouterSettings::default()
    };
    let app = axum::Router::new()
        .nest("/v1/stream/__ds", router(engine))
        .fallback_service(build_router(storage, settings));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
