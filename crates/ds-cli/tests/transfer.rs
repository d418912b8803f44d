//! Export from each backend and import into each backend: the same bytes at the same offsets,
//! the same metadata, working forks and the same producer dedup; and a damaged file leaves
//! nothing behind.

use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use ds_cli::export::{self, ExportOptions};
use ds_cli::import::{self, ImportOptions, OnConflict};
use ds_cli::progress::Progress;
use ds_protocol::{Expiry, NameLimits, Offset, ProducerHeaders, StreamName};
use ds_server::{
    AcidOptions, AcidStorage, Durability, FileOptions, FileStorage, MemoryOptions, MemoryStorage,
};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateRequest, ForkRequest, ReadFrom, Storage, StreamInfo,
};

const TEXT: &str = "text/plain";
const JSON: &str = "application/json";

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn body(content_type: &str, data: &str) -> AppendRequest {
    AppendRequest {
        content_type: Some(content_type.to_owned()),
        body: Bytes::copy_from_slice(data.as_bytes()),
        ..AppendRequest::default()
    }
}

fn by(req: AppendRequest, id: &str, epoch: u64, seq: u64) -> AppendRequest {
    AppendRequest {
        producer: Some(ProducerHeaders {
            id: id.to_owned(),
            epoch,
            seq,
        }),
        ..req
    }
}

async fn create<S: Storage>(s: &S, n: &str, req: CreateRequest) {
    s.create(&name(n), req).await.expect("create");
}

fn plain(content_type: &str) -> CreateRequest {
    CreateRequest {
        content_type: Some(content_type.to_owned()),
        ..CreateRequest::default()
    }
}

async fn append<S: Storage>(s: &S, n: &str, req: AppendRequest) -> Offset {
    match s.append(&name(n), req).await.expect("append") {
        AppendOutcome::Appended { next, .. } => next,
        other => panic!("expected Appended, got {other:?}"),
    }
}

/// Streams covering what a transfer must carry: byte and JSON data (a message that is itself
/// an array), `Stream-Seq`, producers, closure by a producer, TTL and absolute expiry, an empty
/// stream, forks at a sub-offset (binary and JSON), a fork of a fork, an internal stream.
async fn populate<S: Storage>(s: &S) {
    create(s, "bytes", plain(TEXT)).await;
    let mid = append(s, "bytes", by(body(TEXT, "hello "), "p", 2, 0)).await;
    append(
        s,
        "bytes",
        AppendRequest {
            stream_seq: Some("0007".to_owned()),
            ..body(TEXT, "binary world")
        },
    )
    .await;
    append(s, "bytes", by(body(TEXT, "!!"), "p", 2, 1)).await;
    append(s, "bytes", body(TEXT, &"x".repeat(3000))).await;

    create(s, "events/json", plain(JSON)).await;
    append(s, "events/json", body(JSON, r#"{"a":1}"#)).await;
    let json_mid = append(s, "events/json", body(JSON, r#"[[1,2],{"b":[3]},"s"]"#)).await;
    append(s, "events/json", by(body(JSON, "42"), "q", 0, 0)).await;

    create(
        s,
        "forks/bytes",
        CreateRequest {
            fork: Some(ForkRequest {
                source: name("bytes"),
                offset: Some(mid),
                sub_offset: 4,
            }),
            ..CreateRequest::default()
        },
    )
    .await;
    append(s, "forks/bytes", body(TEXT, "fork data")).await;
    create(
        s,
        "forks/json",
        CreateRequest {
            fork: Some(ForkRequest {
                source: name("events/json"),
                offset: Some(json_mid),
                sub_offset: 0,
            }),
            ..CreateRequest::default()
        },
    )
    .await;
    append(s, "forks/json", body(JSON, r#"{"own":true}"#)).await;
    create(
        s,
        "forks/of-fork",
        CreateRequest {
            fork: Some(ForkRequest {
                source: name("forks/bytes"),
                offset: None,
                sub_offset: 0,
            }),
            ..CreateRequest::default()
        },
    )
    .await;
    populate_metadata(s).await;
}

/// Closure by a producer, TTL and absolute expiry, an empty stream, an internal stream.
async fn populate_metadata<S: Storage>(s: &S) {
    create(s, "closed", plain(TEXT)).await;
    append(s, "closed", body(TEXT, "last words")).await;
    append(
        s,
        "closed",
        AppendRequest {
            close: true,
            ..by(AppendRequest::default(), "closer", 1, 0)
        },
    )
    .await;

    create(
        s,
        "ttl",
        CreateRequest {
            expiry: Expiry::Ttl(86_400),
            ..plain(TEXT)
        },
    )
    .await;
    append(s, "ttl", body(TEXT, "t")).await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    let at = at.replace_nanosecond(0).expect("valid");
    create(
        s,
        "expires-at",
        CreateRequest {
            expiry: Expiry::ExpiresAt(at),
            ..plain("application/octet-stream")
        },
    )
    .await;
    append(
        s,
        "expires-at",
        body("application/octet-stream", "\u{0}\u{1}"),
    )
    .await;
    create(s, "empty", plain(TEXT)).await;
    create(s, "__ds/internal", plain(JSON)).await;
    append(s, "__ds/internal", body(JSON, "{}")).await;
}

/// What a client can see of a stream: metadata (without the store-internal id) and every
/// chunk of a read in small steps (pieces and offsets).
async fn observe<S: Storage>(s: &S, n: &str) -> (StreamInfo, Vec<(Offset, Offset, Vec<u8>)>) {
    let mut info = s.head(&name(n)).await.expect("head");
    info.stream_id = 0;
    let mut chunks = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = s.read(&name(n), from, 5).await.expect("read");
        chunks.push((chunk.start, chunk.next, chunk.pieces.concat()));
        if chunk.up_to_date {
            break;
        }
        from = ReadFrom::At(chunk.next);
    }
    (info, chunks)
}

const EXPORTED: [&str; 9] = [
    "bytes",
    "events/json",
    "forks/bytes",
    "forks/json",
    "forks/of-fork",
    "closed",
    "ttl",
    "expires-at",
    "empty",
];

async fn export_all<S: Storage>(s: &S) -> Vec<u8> {
    let (_, out) = export::export(
        s,
        Vec::new(),
        "test",
        &ExportOptions::default(),
        &mut Progress::silent(),
    )
    .await
    .expect("export");
    out
}

async fn import_all<S: Storage>(s: &S, file: &[u8]) -> import::ImportSummary {
    import::import(s, file, &ImportOptions::default(), &mut Progress::silent())
        .await
        .expect("import")
}

/// The target answers like the source: same reads, metadata, forks and producer dedup.
async fn assert_same<A: Storage, B: Storage>(src: &A, dst: &B) {
    for n in EXPORTED {
        assert_eq!(observe(src, n).await, observe(dst, n).await, "stream {n}");
    }
    assert!(
        matches!(
            dst.head(&name("__ds/internal")).await,
            Err(ds_storage::Error::NotFound)
        ),
        "internal streams are not exported"
    );
    // Producers and Stream-Seq behave the same on both.
    let retry = by(body(TEXT, "!!"), "p", 2, 1);
    assert_eq!(
        outcome(src.append(&name("bytes"), retry.clone()).await),
        outcome(dst.append(&name("bytes"), retry).await)
    );
    let gap = by(body(TEXT, "?"), "p", 2, 5);
    assert_eq!(
        outcome(src.append(&name("bytes"), gap.clone()).await),
        outcome(dst.append(&name("bytes"), gap).await)
    );
    let seq = AppendRequest {
        stream_seq: Some("0006".to_owned()),
        ..body(TEXT, "old seq")
    };
    assert_eq!(
        outcome(src.append(&name("bytes"), seq.clone()).await),
        outcome(dst.append(&name("bytes"), seq).await)
    );
    let close_retry = AppendRequest {
        close: true,
        ..by(AppendRequest::default(), "closer", 1, 0)
    };
    assert_eq!(
        outcome(src.append(&name("closed"), close_retry.clone()).await),
        outcome(dst.append(&name("closed"), close_retry).await)
    );
    let next = by(body(JSON, "[7]"), "q", 0, 1);
    assert_eq!(
        outcome(src.append(&name("events/json"), next.clone()).await),
        outcome(dst.append(&name("events/json"), next).await)
    );
    // Forks are forks: appends to the source do not reach them, and they name their source.
    let more = body(TEXT, "after");
    append(src, "bytes", more.clone()).await;
    append(dst, "bytes", more).await;
    for n in [
        "forks/bytes",
        "forks/json",
        "forks/of-fork",
        "bytes",
        "events/json",
    ] {
        assert_eq!(observe(src, n).await, observe(dst, n).await, "stream {n}");
    }
    assert_eq!(
        dst.head(&name("forks/of-fork"))
            .await
            .expect("head")
            .forked_from,
        Some(name("forks/bytes"))
    );
}

/// Outcome of an append, comparable across stores.
fn outcome(r: ds_storage::Result<AppendOutcome>) -> String {
    match r {
        Ok(o) => format!("{o:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// The three backends, each opened on its own directory.
enum Backend {
    Memory,
    File,
    Acid,
}

async fn with_backend<F, Fut>(backend: &Backend, dir: &Path, f: F)
where
    F: FnOnce(AnyStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = match backend {
        Backend::Memory => AnyStore::Memory(MemoryStorage::new(MemoryOptions::default())),
        Backend::File => AnyStore::File(
            FileStorage::open(FileOptions::new(dir, Durability::Durable))
                .await
                .expect("open file store"),
        ),
        Backend::Acid => AnyStore::Acid(
            AcidStorage::open(AcidOptions::new(dir))
                .await
                .expect("open acid store"),
        ),
    };
    f(store).await;
}

enum AnyStore {
    Memory(MemoryStorage),
    File(FileStorage),
    Acid(AcidStorage),
}

macro_rules! on {
    ($store:expr, |$s:ident| $body:expr) => {
        match $store {
            AnyStore::Memory($s) => $body.await,
            AnyStore::File($s) => $body.await,
            AnyStore::Acid($s) => $body.await,
        }
    };
}

async fn round_trip(from: Backend, to: Backend) {
    let dirs = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    with_backend(&from, dirs.0.path(), |src| async move {
        on!(&src, |s| populate(s));
        let file = on!(&src, |s| export_all(s));
        with_backend(&to, dirs.1.path(), |dst| async move {
            let summary = on!(&dst, |d| import_all(d, &file));
            assert_eq!(summary.imported, 9);
            match (&src, &dst) {
                (AnyStore::Memory(a), AnyStore::Memory(b)) => assert_same(a, b).await,
                (AnyStore::Memory(a), AnyStore::File(b)) => assert_same(a, b).await,
                (AnyStore::Memory(a), AnyStore::Acid(b)) => assert_same(a, b).await,
                (AnyStore::File(a), AnyStore::Memory(b)) => assert_same(a, b).await,
                (AnyStore::File(a), AnyStore::File(b)) => assert_same(a, b).await,
                (AnyStore::File(a), AnyStore::Acid(b)) => assert_same(a, b).await,
                (AnyStore::Acid(a), AnyStore::Memory(b)) => assert_same(a, b).await,
                (AnyStore::Acid(a), AnyStore::File(b)) => assert_same(a, b).await,
                (AnyStore::Acid(a), AnyStore::Acid(b)) => assert_same(a, b).await,
            }
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_acid_and_memory() {
    round_trip(Backend::File, Backend::Acid).await;
    round_trip(Backend::File, Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acid_to_file_and_memory() {
    round_trip(Backend::Acid, Backend::File).await;
    round_trip(Backend::Acid, Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_backend_and_memory_source() {
    round_trip(Backend::File, Backend::File).await;
    round_trip(Backend::Acid, Backend::Acid).await;
    round_trip(Backend::Memory, Backend::File).await;
}

/// Every way a file can be damaged: cut short anywhere, or one byte changed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_are_refused_and_leave_nothing_behind() {
    let src = MemoryStorage::new(MemoryOptions::default());
    populate(&src).await;
    let file = export_all(&src).await;
    let mut cuts: Vec<usize> = (0..file.len()).step_by(97).collect();
    cuts.push(file.len() - 1);
    for cut in cuts {
        let dst = MemoryStorage::new(MemoryOptions::default());
        let err = import::import(
            &dst,
            &file[..cut],
            &ImportOptions::default(),
            &mut Progress::silent(),
        )
        .await
        .expect_err("a truncated file is refused");
        let text = format!("{err:#}");
        assert!(text.contains("truncated"), "cut at {cut}: {text}");
        assert!(
            text.contains(&format!("at byte {cut}")),
            "cut at {cut}: {text}"
        );
        assert_eq!(dst.list().await.expect("list"), Vec::new(), "cut at {cut}");
    }
    for at in (8..file.len()).step_by(61) {
        let mut bad = file.clone();
        bad[at] ^= 0x20;
        let dst = MemoryStorage::new(MemoryOptions::default());
        let err = import::import(
            &dst,
            &bad[..],
            &ImportOptions::default(),
            &mut Progress::silent(),
        )
        .await
        .expect_err("a corrupted file is refused");
        let text = format!("{err:#}");
        assert!(text.contains("at byte"), "byte {at}: {text}");
        assert_eq!(
            dst.list().await.expect("list"),
            Vec::new(),
            "byte {at}: {text}"
        );
        assert!(
            import::verify(&bad[..], &mut Progress::silent()).is_err(),
            "verify refuses byte {at}"
        );
    }
}

/// A corrupted section names its stream and the position of its END_STREAM frame.
#[tokio::test]
async fn a_checksum_mismatch_names_the_stream_and_position() {
    let src = MemoryStorage::new(MemoryOptions::default());
    create(&src, "a", plain(TEXT)).await;
    append(&src, "a", body(TEXT, "payload-one")).await;
    let file = export_all(&src).await;
    let at = file
        .windows(11)
        .position(|w| w == b"payload-one")
        .expect("payload in file");
    let mut bad = file.clone();
    bad[at] = b'P';
    let err = import::verify(&bad[..], &mut Progress::silent()).expect_err("refused");
    let text = err.to_string();
    assert!(text.starts_with("stream `a`, at byte "), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
}

/// `skip` keeps existing streams, `replace` overwrites them, `fail` refuses before writing.
#[tokio::test]
async fn conflicts_follow_on_conflict() {
    let src = MemoryStorage::new(MemoryOptions::default());
    create(&src, "a", plain(TEXT)).await;
    append(&src, "a", body(TEXT, "from file")).await;
    create(&src, "b", plain(TEXT)).await;
    let file = export_all(&src).await;

    let dst = MemoryStorage::new(MemoryOptions::default());
    create(&dst, "a", plain(TEXT)).await;
    append(&dst, "a", body(TEXT, "existing")).await;
    let read = |d: &MemoryStorage| {
        let d = d.clone();
        async move {
            d.read(&name("a"), ReadFrom::Start, 1 << 20)
                .await
                .expect("read")
                .pieces
                .concat()
        }
    };

    let err = import::check_conflicts(
        &dst,
        &["b".to_owned(), "a".to_owned()],
        NameLimits::default(),
    )
    .await
    .expect_err("conflict");
    assert!(
        err.to_string().contains("stream `a` already exists"),
        "{err}"
    );
    let err = import::import(
        &dst,
        &file[..],
        &ImportOptions::default(),
        &mut Progress::silent(),
    )
    .await
    .expect_err("fail is the default");
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    assert!(
        dst.head(&name("b")).await.is_err(),
        "nothing imported on failure"
    );

    let skip = ImportOptions {
        on_conflict: OnConflict::Skip,
        ..ImportOptions::default()
    };
    let summary = import::import(&dst, &file[..], &skip, &mut Progress::silent())
        .await
        .expect("skip");
    assert_eq!((summary.imported, summary.skipped), (1, 1));
    assert_eq!(read(&dst).await, b"existing");

    let replace = ImportOptions {
        on_conflict: OnConflict::Replace,
        ..ImportOptions::default()
    };
    let summary = import::import(&dst, &file[..], &replace, &mut Progress::silent())
        .await
        .expect("replace");
    assert_eq!((summary.imported, summary.replaced), (2, 2));
    assert_eq!(read(&dst).await, b"from file");
}

/// `--stream` exports only the named streams; a fork whose source is left out becomes a plain
/// stream with its whole view, at the same offsets; an unknown name is an error.
#[tokio::test]
async fn a_fork_exported_without_its_source_keeps_its_data_and_offsets() {
    let src = MemoryStorage::new(MemoryOptions::default());
    populate(&src).await;
    let only = |names: &[&str]| ExportOptions {
        streams: names.iter().map(ToString::to_string).collect(),
        ..ExportOptions::default()
    };
    let (summary, file) = export::export(
        &src,
        Vec::new(),
        "test",
        &only(&["forks/of-fork", "events/json", "forks/json"]),
        &mut Progress::silent(),
    )
    .await
    .expect("export");
    assert_eq!(summary.streams, 3);
    let dst = MemoryStorage::new(MemoryOptions::default());
    import_all(&dst, &file).await;
    let names: Vec<String> = dst
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["events/json", "forks/json", "forks/of-fork"]);
    // Its source was not exported: a plain stream now, with the same reads and offsets.
    let (mut want, chunks) = observe(&src, "forks/of-fork").await;
    let (got, got_chunks) = observe(&dst, "forks/of-fork").await;
    assert_eq!(got.forked_from, None);
    want.forked_from = None;
    want.bytes = got.bytes;
    assert_eq!((got, got_chunks), (want, chunks));
    // Its source was exported: still a fork.
    assert_eq!(
        observe(&src, "forks/json").await,
        observe(&dst, "forks/json").await
    );

    let err = export::export(
        &src,
        Vec::new(),
        "test",
        &only(&["no/such"]),
        &mut Progress::silent(),
    )
    .await
    .expect_err("unknown stream");
    assert!(
        format!("{err:#}").contains("no stream named `no/such`"),
        "{err:#}"
    );
}

/// The signing key travels only when asked for; other internal streams never do.
#[tokio::test]
async fn the_signing_key_is_exported_only_when_asked_for() {
    let src = MemoryStorage::new(MemoryOptions::default());
    populate(&src).await;
    create(&src, export::SIGNING_KEY_STREAM, plain(JSON)).await;
    append(
        &src,
        export::SIGNING_KEY_STREAM,
        body(JSON, r#"{"kid":"k1"}"#),
    )
    .await;
    for include_signing_key in [false, true] {
        let opts = ExportOptions {
            include_signing_key,
            ..ExportOptions::default()
        };
        let (_, file) = export::export(&src, Vec::new(), "test", &opts, &mut Progress::silent())
            .await
            .expect("export");
        let dst = MemoryStorage::new(MemoryOptions::default());
        import_all(&dst, &file).await;
        let key = dst.head(&name(export::SIGNING_KEY_STREAM)).await;
        assert_eq!(key.is_ok(), include_signing_key, "{key:?}");
        assert!(dst.head(&name("__ds/internal")).await.is_err());
    }
}
