//! Subscription CRUD, validation, glob backfill (and a stream created while it runs), explicit
//! membership, JWKS, reserved names.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::http::{Method, StatusCode};
use ds_protocol::StreamName;
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkRequest, ReadChunk, ReadFrom,
    Storage, StreamInfo, Tail,
};
use ds_storage_memory::MemoryStorage;
use ds_subscriptions::Notifying;
use serde_json::json;
use tokio::sync::watch;

use crate::util::{H, ROOT, Receiver, dev_config, name, stream_of, webhook_spec};

#[tokio::test]
async fn create_reconfirm_conflict_get_and_delete() {
    let h = H::new().await;
    let rx = Receiver::start(200, "{}").await;
    let spec = json!({
        "type": "webhook", "pattern": "events/*", "webhook": { "url": rx.url },
        "lease_ttl_ms": 1000, "description": "test subscription",
    });
    let created = h.put_sub("sub-1", spec.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.headers["content-type"], "application/json");
    let again = h.put_sub("sub-1", spec.clone()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), created.json());

    // Normalisation: the same config spelled differently is the same subscription.
    let respelled = json!({
        "description": "test subscription", "lease_ttl_ms": 1000, "pattern": "/events/*/",
        "webhook": { "url": rx.url }, "type": "webhook", "streams": [],
    });
    assert_eq!(h.put_sub("sub-1", respelled).await.status, StatusCode::OK);

    let mut different = spec.clone();
    different["lease_ttl_ms"] = json!(2000);
    let conflict = h.put_sub("sub-1", different).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(
        conflict.json()["error"]["code"],
        "SUBSCRIPTION_ALREADY_EXISTS"
    );
    assert_eq!(conflict.headers["content-type"], "application/problem+json");

    let body = h.get_sub("sub-1").await;
    let kid = h.engine.kid().to_owned();
    assert_eq!(
        body,
        json!({
            "id": "sub-1",
            "subscription_id": "sub-1",
            "type": "webhook",
            "pattern": "events/*",
            "streams": [],
            "webhook": {
                "url": rx.url,
                "signing": { "alg": "ed25519", "kid": kid, "jwks_url": format!("{ROOT}/__ds/jwks.json") }
            },
            "wake_stream": null,
            "lease_ttl_ms": 1000,
            "created_at": body["created_at"],
            "status": "active",
            "description": "test subscription",
        })
    );
    let created_at = body["created_at"].as_str().expect("string");
    assert_eq!(created_at.len(), "2026-05-09T00:00:00.000Z".len());
    assert!(created_at.ends_with('Z'));
    assert!(body.get("webhook_secret").is_none());

    let del = h
        .req(Method::DELETE, "/subscriptions/sub-1", None, None)
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let gone = h.req(Method::GET, "/subscriptions/sub-1", None, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.json()["error"]["code"], "SUBSCRIPTION_NOT_FOUND");
    // Deleting again is idempotent.
    let del = h
        .req(Method::DELETE, "/subscriptions/sub-1", None, None)
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn invalid_configurations_are_400_invalid_request() {
    let h = H::new().await;
    let bad = [
        json!({ "type": "webhook", "webhook": { "url": "https://h.example/" } }),
        json!({ "type": "bogus", "pattern": "a/*" }),
        json!({ "type": "webhook", "pattern": "a/*" }),
        json!({ "type": "pull-wake", "pattern": "a/*" }),
        json!({ "type": "pull-wake", "pattern": "a/*", "wake_stream": "w", "lease_ttl_ms": 999 }),
        json!({ "type": "pull-wake", "pattern": "a/*", "wake_stream": "w", "lease_ttl_ms": 600_001 }),
        json!({ "type": "pull-wake", "streams": ["__ds/keys/webhook-signing"], "wake_stream": "w" }),
        json!({ "type": "pull-wake", "pattern": "a/x**", "wake_stream": "w" }),
        json!([1, 2]),
    ];
    for spec in bad {
        let r = h.put_sub("s", spec.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{spec}");
        assert_eq!(r.json()["error"]["code"], "INVALID_REQUEST", "{spec}");
    }
    for ttl in [1000, 600_000] {
        let spec = json!({ "type": "pull-wake", "pattern": "a/*", "wake_stream": "w", "lease_ttl_ms": ttl });
        assert_eq!(
            h.put_sub(&format!("ttl-{ttl}"), spec).await.status,
            StatusCode::CREATED
        );
    }
}

#[tokio::test]
async fn unsafe_webhook_urls_are_rejected() {
    let prod = H::open(
        std::sync::Arc::new(ds_storage_memory::MemoryStorage::default()),
        ds_subscriptions::SubscriptionsConfig::default(),
    )
    .await;
    let dev = H::new().await;
    let always_bad = [
        "http://10.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://192.168.0.10/",
        "https://172.20.1.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://2130706433/",
        "https://0177.0.0.1/",
        "https://0x7f.1/",
        "https://[::1]/",
        "https://[fe80::1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://[fd00:ec2::254]/",
        "https://metadata.google.internal/",
        "ftp://h.example/",
        "http://public.example/hook",
    ];
    for url in always_bad {
        for h in [&prod, &dev] {
            let r = h.put_sub("s", webhook_spec(url, "a/*", 1000)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}");
            assert_eq!(r.json()["error"]["code"], "WEBHOOK_URL_REJECTED", "{url}");
        }
    }
    for (i, url) in [
        "http://localhost:9/x",
        "https://localhost/x",
        "http://127.0.0.1:9/x",
        "http://127.0.0.9/x",
    ]
    .into_iter()
    .enumerate()
    {
        let r = prod.put_sub("s", webhook_spec(url, "a/*", 1000)).await;
        assert_eq!(r.json()["error"]["code"], "WEBHOOK_URL_REJECTED", "{url}");
        let r = dev
            .put_sub(&format!("ok-{i}"), webhook_spec(url, "a/*", 1000))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{url}");
    }
}

#[tokio::test]
async fn glob_backfills_existing_streams_at_their_tail_and_skips_others() {
    let h = H::new().await;
    let a = h.create_stream("events/a", r#"{"n":1}"#).await;
    h.append("events/a", r#"{"n":2}"#).await;
    let a = h.append("events/a", r#"{"n":3}"#).await.max(a);
    h.create_stream("events/deep/x", "{}").await;
    h.create_stream("other/b", "{}").await;
    let spec = json!({ "type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/w" });
    assert_eq!(h.put_sub("p", spec).await.status, StatusCode::CREATED);
    let sub = h.get_sub("p").await;
    assert_eq!(
        sub["streams"],
        json!([{ "path": "events/a", "link_type": "glob", "acked_offset": a.to_string() }])
    );

    // `**` matches any depth but never the reserved namespace.
    let spec = json!({ "type": "pull-wake", "pattern": "**", "wake_stream": "wake/w" });
    assert_eq!(h.put_sub("all", spec).await.status, StatusCode::CREATED);
    let paths: Vec<String> = h.get_sub("all").await["streams"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(paths, ["events/a", "events/deep/x", "other/b"]);
}

#[tokio::test]
async fn streams_created_later_are_linked_before_their_first_data_wakes() {
    let h = H::new().await;
    h.create_stream("wake/w", "[]").await;
    let spec = json!({ "type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/w" });
    assert_eq!(h.put_sub("p", spec).await.status, StatusCode::CREATED);
    // Created with data: the creation itself is pending work.
    h.create_stream("events/new", r#"{"e":1}"#).await;
    let sub = h.get_sub("p").await;
    assert_eq!(sub["streams"][0]["path"], "events/new");
    assert_eq!(
        sub["streams"][0]["acked_offset"],
        "0000000000000000_0000000000000000"
    );
    let events = h
        .wait_for(std::time::Duration::from_secs(2), || async {
            let e = h.read_json("wake/w").await;
            (!e.is_empty()).then_some(e)
        })
        .await
        .expect("a wake event");
    assert_eq!(events[0]["stream"], "events/new");
}

/// A store whose next `list` lets a stream be created, through the engine's hooks, after the
/// listing was taken: the window between a new subscription's backfill and its commit.
struct CreateAfterList {
    inner: MemoryStorage,
    /// Where the racing create goes (so the engine's hooks see it).
    front: OnceLock<Weak<Notifying<CreateAfterList>>>,
    /// The stream to create after the next listing.
    next: Mutex<Option<String>>,
}

impl Storage for CreateAfterList {
    async fn create(
        &self,
        n: &StreamName,
        req: CreateRequest,
    ) -> ds_storage::Result<CreateOutcome> {
        self.inner.create(n, req).await
    }
    async fn append(
        &self,
        n: &StreamName,
        req: AppendRequest,
    ) -> ds_storage::Result<AppendOutcome> {
        self.inner.append(n, req).await
    }
    async fn read(
        &self,
        n: &StreamName,
        from: ReadFrom,
        max: usize,
    ) -> ds_storage::Result<ReadChunk> {
        self.inner.read(n, from, max).await
    }
    async fn head(&self, n: &StreamName) -> ds_storage::Result<StreamInfo> {
        self.inner.head(n).await
    }
    async fn delete(&self, n: &StreamName) -> ds_storage::Result<()> {
        self.inner.delete(n).await
    }
    async fn restore_writer(
        &self,
        n: &StreamName,
        writer: ds_storage::rules::WriterState,
    ) -> ds_storage::Result<()> {
        self.inner.restore_writer(n, writer).await
    }
    async fn subscribe(&self, n: &StreamName) -> ds_storage::Result<watch::Receiver<Tail>> {
        self.inner.subscribe(n).await
    }
    async fn list(&self) -> ds_storage::Result<Vec<StreamInfo>> {
        let listed = self.inner.list().await?;
        let racer = self.next.lock().expect("lock").take();
        if let Some(path) = racer {
            let front = self.front.get().and_then(Weak::upgrade).expect("front set");
            let req = CreateRequest {
                content_type: Some("application/json".into()),
                body: bytes::Bytes::from_static(br#"{"e":1}"#),
                ..CreateRequest::default()
            };
            front
                .create(&name(&path), req)
                .await
                .expect("racing create");
        }
        Ok(listed)
    }
    async fn sweep_expired(&self) -> ds_storage::Result<usize> {
        self.inner.sweep_expired().await
    }
    async fn export_meta(&self, n: &StreamName) -> ds_storage::Result<ds_storage::ExportMeta> {
        self.inner.export_meta(n).await
    }
}

#[tokio::test]
async fn a_stream_created_while_a_subscription_backfills_is_linked_and_woken() {
    let store = Arc::new(CreateAfterList {
        inner: MemoryStorage::default(),
        front: OnceLock::new(),
        next: Mutex::new(None),
    });
    let h = H::open(store.clone(), dev_config()).await;
    store
        .front
        .set(Arc::downgrade(&h.streams))
        .expect("set once");
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    let old = h.create_stream("events/old", r#"{"e":0}"#).await;
    *store.next.lock().expect("lock") = Some("events/racer".to_owned());
    assert_eq!(
        h.put_sub("w", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    assert!(store.next.lock().expect("lock").is_none(), "the race ran");
    assert_eq!(
        h.get_sub("w").await["streams"],
        json!([
            { "path": "events/old", "link_type": "glob", "acked_offset": old.to_string() },
            { "path": "events/racer", "link_type": "glob", "acked_offset": "0000000000000000_0000000000000000" },
        ])
    );
    // Its initial data wakes the subscription although nothing is appended after it.
    let hit = rx
        .next(std::time::Duration::from_secs(3))
        .await
        .expect("a wake for the stream created during the backfill");
    assert_eq!(stream_of(&hit, "events/racer")["has_pending"], true);
    assert_eq!(stream_of(&hit, "events/old")["has_pending"], false);
}

#[tokio::test]
async fn explicit_membership_add_and_remove_leave_glob_links() {
    let h = H::new().await;
    h.create_stream("events/a", "{}").await;
    let spec = json!({
        "type": "pull-wake", "pattern": "events/*", "streams": ["manual/a"], "wake_stream": "w",
    });
    assert_eq!(h.put_sub("m", spec).await.status, StatusCode::CREATED);
    let add = h
        .req(
            Method::POST,
            "/subscriptions/m/streams",
            Some(json!({ "streams": ["manual/b", "events/a"] })),
            None,
        )
        .await;
    assert_eq!(add.status, StatusCode::NO_CONTENT);
    // Idempotent.
    let add = h
        .req(
            Method::POST,
            "/subscriptions/m/streams",
            Some(json!({ "streams": ["manual/b"] })),
            None,
        )
        .await;
    assert_eq!(add.status, StatusCode::NO_CONTENT);
    let types = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["streams"]
            .as_array()
            .expect("array")
            .iter()
            .map(|s| {
                (
                    s["path"].as_str().expect("p").to_owned(),
                    s["link_type"].as_str().expect("t").to_owned(),
                )
            })
            .collect()
    };
    let explicit = |p: &str| (p.to_owned(), "explicit".to_owned());
    assert_eq!(
        types(&h.get_sub("m").await),
        vec![
            explicit("events/a"),
            explicit("manual/a"),
            explicit("manual/b")
        ]
    );

    // Encoded slash and a plain nested path both name the stream.
    for path in ["events%2Fa", "manual/b", "never/linked"] {
        let r = h
            .req(
                Method::DELETE,
                &format!("/subscriptions/m/streams/{path}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{path}");
    }
    assert_eq!(
        types(&h.get_sub("m").await),
        vec![
            ("events/a".to_owned(), "glob".to_owned()),
            explicit("manual/a")
        ]
    );
    let missing = h
        .req(
            Method::POST,
            "/subscriptions/nope/streams",
            Some(json!({ "streams": ["x"] })),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = h
        .req(
            Method::POST,
            "/subscriptions/m/streams",
            Some(json!({ "streams": "x" })),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn jwks_is_served_with_its_media_type_and_cache_policy() {
    let h = H::new().await;
    let r = h.req(Method::GET, "/jwks.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/jwk-set+json");
    assert_eq!(r.headers["cache-control"], "public, max-age=300");
    let key = &r.json()["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], h.engine.kid());
    assert!(key.get("d").is_none(), "the private key never leaves");
}

#[tokio::test]
async fn reserved_streams_are_invisible_through_notifying() {
    let h = H::new().await;
    // The engine's own state and key streams exist in the raw store...
    let raw = h.store.list().await.expect("list");
    assert!(raw.iter().any(|i| i.name.is_reserved()));
    // ...but not through the wrapper the server uses.
    let visible = h.streams.list().await.expect("list");
    assert!(visible.iter().all(|i| !i.name.is_reserved()));
    let key = name("__ds/keys/webhook-signing");
    assert!(matches!(
        h.streams.head(&key).await,
        Err(ds_storage::Error::NotFound)
    ));
    assert!(matches!(
        h.streams
            .read(&key, ds_storage::ReadFrom::Start, 1024)
            .await,
        Err(ds_storage::Error::NotFound)
    ));
    assert!(matches!(
        h.streams
            .read_regions(&key, ds_storage::ReadFrom::Start, 1024, 1024)
            .await,
        Err(ds_storage::Error::NotFound)
    ));
    assert!(matches!(
        h.streams.export_meta(&key).await,
        Err(ds_storage::Error::NotFound)
    ));
    // Application streams are forwarded.
    let app = name("app-stream");
    h.streams
        .create(&app, CreateRequest::default())
        .await
        .expect("create");
    let meta = h.streams.export_meta(&app).await.expect("export meta");
    assert_eq!(meta.info.name, app);
    let fork = CreateRequest {
        fork: Some(ForkRequest {
            source: key,
            offset: None,
            sub_offset: 0,
        }),
        ..CreateRequest::default()
    };
    assert!(matches!(
        h.streams.create(&name("stolen"), fork).await,
        Err(ds_storage::Error::ForkSourceNotFound)
    ));
}

/// Region reads go through the wrapper to the store: a file store's large runs stay file
/// regions (the server sends them with `sendfile`).
#[tokio::test]
async fn region_reads_reach_the_store_through_notifying() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = ds_storage_file::FileOptions::new(dir.path(), ds_storage_file::Durability::Durable);
    let store = Arc::new(
        ds_storage_file::FileStorage::open(opts)
            .await
            .expect("open the file store"),
    );
    let h = H::open(store, dev_config()).await;
    let s = name("big");
    let req = CreateRequest {
        content_type: Some("application/octet-stream".to_owned()),
        ..CreateRequest::default()
    };
    h.streams.create(&s, req).await.expect("create");
    let append = ds_storage::AppendRequest {
        content_type: Some("application/octet-stream".to_owned()),
        body: vec![3u8; 100_000].into(),
        ..ds_storage::AppendRequest::default()
    };
    h.streams.append(&s, append).await.expect("append");
    let chunk = h
        .streams
        .read_regions(&s, ds_storage::ReadFrom::Start, 1 << 20, 1 << 20)
        .await
        .expect("read");
    assert!(
        matches!(chunk.pieces.as_slice(), [ds_storage::ReadPiece::File(r)] if r.len() == 100_000),
        "{:?}",
        chunk.pieces
    );
}
