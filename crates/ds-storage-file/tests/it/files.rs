//! What only the file backend promises: torn-tail recovery, name safety, the descriptor pool,
//! space reclamation, the directory lock, bounded reads and a full disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ds_protocol::{NameLimits, Offset, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendOutcome, CreateRequest, Error, ForkRequest, ReadFrom, Storage};
use ds_storage_file::io::SimFs;
use ds_storage_file::{Durability, FileOptions, FileStorage};

use crate::support::{append_req, create_req, name, producer_req, read_all};

fn options(dir: impl Into<PathBuf>) -> FileOptions {
    FileOptions {
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        ..FileOptions::new(dir, Durability::Durable)
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn stream_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.starts_with("streams"))
        .collect()
}

#[tokio::test]
async fn torn_tail_of_a_stream_file_is_cut_at_the_last_whole_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = name("torn");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    store.create(&s, create_req()).await.expect("create");
    store
        .append(&s, producer_req("first,", "p", 0, 0))
        .await
        .expect("append");
    let second = match store.append(&s, producer_req("second", "p", 0, 1)).await {
        Ok(AppendOutcome::Appended { next, .. }) => next,
        other => panic!("append: {other:?}"),
    };
    store
        .append(&s, producer_req("third", "p", 0, 2))
        .await
        .expect("append");
    store.close().await;

    // Cut the last record in half, then add garbage after it.
    let files = stream_files(dir.path());
    assert_eq!(files.len(), 1);
    let path = dir.path().join(&files[0]);
    let len = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open file");
    file.set_len(len - 3).expect("truncate");
    drop(file);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0xA5; 100]);
    std::fs::write(&path, &bytes).expect("write");

    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("reopen");
    assert_eq!(read_all(&store, &s).await.expect("read"), b"first,second");
    assert_eq!(store.head(&s).await.expect("head").next, second);
    // The torn append never happened: the producer may send seq 2 again and it is new.
    assert!(matches!(
        store.append(&s, producer_req("3rd", "p", 0, 2)).await,
        Ok(AppendOutcome::Appended { .. })
    ));
    store.close().await;
    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("reopen");
    assert_eq!(
        read_all(&store, &s).await.expect("read"),
        b"first,second3rd"
    );
    store.close().await;
}

fn sim_options(durability: Durability) -> FileOptions {
    FileOptions {
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        ..FileOptions::new("/data", durability)
    }
}

fn sim_file(sim: &SimFs, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = sim
        .files()
        .into_iter()
        .filter(|p| p.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

#[tokio::test]
async fn torn_wal_tail_is_never_replayed_and_a_whole_one_is() {
    // A kill leaves the WAL unreplayed (no closing checkpoint). The last append is then
    // missing from the stream file; the WAL has it whole in one case and torn in the other.
    for torn in [false, true] {
        let sim = SimFs::new(7);
        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .expect("open");
        let s = name("wal");
        store.create(&s, create_req()).await.expect("create");
        store.append(&s, append_req("kept,")).await.expect("append");
        store.append(&s, append_req("last")).await.expect("append");
        sim.kill();
        drop(store);

        let stream = sim_file(&sim, "/data/streams");
        let data = sim.read_file(&stream).expect("stream file");
        let last_record_len = 52 + 4 + 1 + 1 + 4; // head, one length, two absent options, "last"
        sim.write_file(&stream, data[..data.len() - last_record_len].to_vec());
        if torn {
            let wal = sim_file(&sim, "/data/wal");
            let data = sim.read_file(&wal).expect("wal");
            sim.write_file(&wal, data[..data.len() - 2].to_vec());
        }

        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .expect("reopen");
        let expected: &[u8] = if torn { b"kept," } else { b"kept,last" };
        assert_eq!(read_all(&store, &s).await.expect("read"), expected);
        store
            .append(&s, append_req("+"))
            .await
            .expect("append after recovery");
        store.close().await;
        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .expect("reopen");
        assert_eq!(
            read_all(&store, &s).await.expect("read"),
            [expected, b"+"].concat()
        );
        store.close().await;
    }
}

#[tokio::test]
async fn a_flipped_bit_stops_recovery_at_that_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = name("bitrot");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    store.create(&s, create_req()).await.expect("create");
    store.append(&s, append_req("aaaa")).await.expect("append");
    store.append(&s, append_req("bbbb")).await.expect("append");
    store.close().await;
    let path = dir.path().join(&stream_files(dir.path())[0]);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() - 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).expect("write");
    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("reopen");
    assert_eq!(read_all(&store, &s).await.expect("read"), b"aaaa");
    store.close().await;
}

#[tokio::test]
async fn stream_names_never_reach_the_file_system() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = [
        "/CON",
        "/nul",
        "/Aa",
        "/aa",
        "/...",
        "/a%25b",
        "/%2E%2E%2E/x",
        "/c:/windows",
        "/.hidden",
        "/ünïcødé/名前",
        "/a:b*c?d<e>f|g\"h",
        "/LPT1.txt",
    ];
    let limits = NameLimits {
        max_bytes: 4096,
        max_segments: 64,
    };
    let long = format!("/{}", "x".repeat(3000));
    let mut names: Vec<StreamName> = raw
        .iter()
        .map(|r| StreamName::parse(r, limits).expect("valid name"))
        .collect();
    names.push(StreamName::parse(&long, limits).expect("long name"));
    assert!(StreamName::parse("/../etc/passwd", limits).is_err());
    assert!(StreamName::parse("/a%2F..%2Fb", limits).is_err());

    let store = FileStorage::open(options(dir.path())).await.expect("open");
    for n in &names {
        store.create(n, create_req()).await.expect("create");
        store
            .append(n, append_req(n.as_str().to_owned()))
            .await
            .expect("append");
    }
    store.close().await;
    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("reopen");
    for n in &names {
        assert_eq!(
            read_all(&store, n).await.expect("read"),
            n.as_str().as_bytes(),
            "{n}"
        );
    }
    let mut listed: Vec<StreamName> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name)
        .collect();
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    store.close().await;

    for path in files_under(dir.path()) {
        let text = path.to_str().expect("file names are ASCII");
        let ext = path.extension().and_then(|e| e.to_str());
        let ok = text == "LOCK"
            || text == "CHECKPOINT"
            || (text.starts_with("wal/") && ext == Some("wal") && text.len() == 24)
            || (text.starts_with("streams/") && ext == Some("dat") && text.len() == 31);
        assert!(ok, "unexpected file {text}");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._".contains(&b))
        );
    }
    assert_eq!(stream_files(dir.path()).len(), names.len());
}

#[tokio::test]
async fn the_descriptor_pool_stays_bounded_and_evicts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = FileOptions {
        max_open_files: 4,
        ..options(dir.path())
    };
    let store = FileStorage::open(opts.clone()).await.expect("open");
    let streams: Vec<StreamName> = (0..50).map(|i| name(&format!("s{i}"))).collect();
    for s in &streams {
        store.create(s, create_req()).await.expect("create");
        assert!(store.commit_stats().open_files <= 4);
    }
    for round in 0..3 {
        for (i, s) in streams.iter().enumerate() {
            store
                .append(s, append_req(format!("{round}:{i};")))
                .await
                .expect("append");
            assert!(store.commit_stats().open_files <= 4);
        }
    }
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(
            read_all(&store, s).await.expect("read"),
            format!("0:{i};1:{i};2:{i};").as_bytes()
        );
        assert!(store.commit_stats().open_files <= 4);
    }
    store.close().await;
    let store = FileStorage::open(opts).await.expect("reopen");
    assert_eq!(
        read_all(&store, &streams[49]).await.expect("read"),
        b"0:49;1:49;2:49;"
    );
    store.close().await;
}

#[tokio::test]
async fn running_out_of_descriptors_evicts_and_retries() {
    let sim = SimFs::new(11);
    sim.set_max_open_files(Some(6));
    let store = FileStorage::open_with_fs(sim_options(Durability::Fast), sim.process())
        .await
        .expect("open");
    let streams: Vec<StreamName> = (0..40).map(|i| name(&format!("s{i}"))).collect();
    for s in &streams {
        store
            .create(s, create_req())
            .await
            .expect("create under EMFILE");
        store
            .append(s, append_req("x"))
            .await
            .expect("append under EMFILE");
    }
    for s in &streams {
        assert_eq!(read_all(&store, s).await.expect("read under EMFILE"), b"x");
    }
    store.close().await;
}

#[tokio::test]
async fn delete_reclaims_disk_space_once_no_fork_needs_the_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    let (plain, source, fork) = (name("plain"), name("source"), name("fork"));
    for s in [&plain, &source] {
        store.create(s, create_req()).await.expect("create");
        store
            .append(s, append_req(vec![7u8; 100_000]))
            .await
            .expect("append");
    }
    let req = CreateRequest {
        fork: Some(ForkRequest {
            source: source.clone(),
            offset: None,
            sub_offset: 0,
        }),
        ..CreateRequest::default()
    };
    store.create(&fork, req).await.expect("fork");
    assert_eq!(stream_files(dir.path()).len(), 3);

    store.delete(&plain).await.expect("delete");
    assert_eq!(
        stream_files(dir.path()).len(),
        2,
        "plain stream's file is gone"
    );
    store.delete(&source).await.expect("soft delete");
    assert_eq!(
        stream_files(dir.path()).len(),
        2,
        "the soft-deleted source keeps its data for the fork"
    );
    assert_eq!(read_all(&store, &fork).await.expect("read").len(), 100_000);
    store.delete(&fork).await.expect("delete fork");
    assert!(
        stream_files(dir.path()).is_empty(),
        "cascade removed the source"
    );
    store.close().await;

    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("reopen");
    assert!(stream_files(dir.path()).is_empty());
    assert!(store.list().await.expect("list").is_empty());
    store.close().await;
    let total: u64 = files_under(dir.path())
        .iter()
        .map(|p| std::fs::metadata(dir.path().join(p)).expect("stat").len())
        .sum();
    assert!(total < 1024, "{total} bytes left on disk");
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_names_the_lock_holder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    match FileStorage::open(options(dir.path())).await {
        Err(Error::Backend { op, source }) => {
            assert_eq!(op, "lock data directory");
            let message = source.to_string();
            assert!(
                message.contains(&std::process::id().to_string()),
                "{message}"
            );
        }
        other => panic!("second open: {other:?}"),
    }
    store.close().await;
    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("open after close");
    store.close().await;
}

#[tokio::test]
async fn reads_of_a_large_stream_are_bounded_by_max_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(FileOptions {
        durability: Durability::Fast,
        ..options(dir.path())
    })
    .await
    .expect("open");
    let s = name("big");
    store.create(&s, create_req()).await.expect("create");
    let mut expected = Vec::new();
    for i in 0..64u8 {
        let chunk = vec![i; 65_536 + usize::from(i)];
        expected.extend_from_slice(&chunk);
        store.append(&s, append_req(chunk)).await.expect("append");
    }
    let mut from = ReadFrom::Start;
    let mut got = Vec::new();
    let mut reads = 0;
    loop {
        let chunk = store.read(&s, from, 100_000).await.expect("read");
        assert!(chunk.len() <= 100_000);
        got.extend(chunk.pieces.iter().flat_map(|p| p.iter().copied()));
        reads += 1;
        if chunk.up_to_date {
            break;
        }
        from = ReadFrom::At(chunk.next);
    }
    assert_eq!(got, expected);
    assert!(reads >= expected.len() / 100_000);
    // A read from the middle of a record resumes exactly there.
    let mid = store
        .read(&s, ReadFrom::At(Offset::new(3, 3 * 65_536 + 3 + 10)), 5)
        .await
        .expect("read mid-record");
    assert_eq!(mid.pieces.concat(), vec![3u8; 5]);
    store.close().await;
}

#[tokio::test]
async fn a_full_disk_is_storage_full_and_the_store_carries_on() {
    let sim = SimFs::new(5);
    let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
        .await
        .expect("open");
    let s = name("full");
    store.create(&s, create_req()).await.expect("create");
    store
        .append(&s, append_req("before"))
        .await
        .expect("append");
    sim.set_capacity(Some(20_000));
    let mut full = false;
    for _ in 0..100 {
        match store.append(&s, append_req(vec![1u8; 1000])).await {
            Ok(_) => {}
            Err(Error::StorageFull { .. }) => {
                full = true;
                break;
            }
            Err(e) => panic!("append on a full disk: {e:?}"),
        }
    }
    assert!(full, "the disk filled up");
    let at_full = store.head(&s).await.expect("head");
    assert!(store.is_ready());
    sim.set_capacity(None);
    store
        .append(&s, append_req("after"))
        .await
        .expect("append after space is freed");
    let data = read_all(&store, &s).await.expect("read");
    assert!(data.starts_with(b"before"));
    assert!(data.ends_with(b"after"));
    assert_eq!(data.len() as u64, at_full.next.byte + 5);
    store.close().await;
    let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
        .await
        .expect("reopen");
    assert_eq!(read_all(&store, &s).await.expect("read"), data);
    store.close().await;
}
