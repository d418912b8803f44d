//! What only the file backend promises: torn-tail recovery, name safety, the descriptor pool,
//! space reclamation, the directory lock, bounded reads and a full disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ds_protocol::{NameLimits, Offset, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendOutcome, CreateRequest, Error, ForkRequest, ReadFrom, ReadPiece, Storage};
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

/// A WAL segment is extended to its rotation size when it is created (so that its syncs need
/// no journal commit for a new length); a store that stops without a checkpoint is recovered
/// from the records before the zeros, with nothing lost and nothing invented.
#[tokio::test]
async fn a_wal_segment_extended_ahead_is_recovered_up_to_its_zeros() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = |d: &Path| FileOptions {
        wal_segment_bytes: 1 << 20,
        ..options(d)
    };
    let s = name("ahead");
    let store = FileStorage::open(opts(dir.path())).await.expect("open");
    store.create(&s, create_req()).await.expect("create");
    for (i, part) in ["one,", "two,", "three"].into_iter().enumerate() {
        store
            .append(&s, producer_req(part, "p", 0, i as u64))
            .await
            .expect("append");
    }
    let wal: Vec<PathBuf> = files_under(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert!(!wal.is_empty());
    for p in &wal {
        let len = std::fs::metadata(dir.path().join(p)).expect("stat").len();
        assert!(len >= 1 << 20, "{} is {len} bytes", p.display());
    }

    // What a crash leaves right now: the acknowledged records in the WAL, zeros after them.
    let copy = tempfile::tempdir().expect("temp dir");
    for p in files_under(dir.path()) {
        let to = copy.path().join(&p);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(dir.path().join(&p), &to).expect("copy");
    }
    store.close().await;

    let store = FileStorage::open(opts(copy.path())).await.expect("reopen");
    assert_eq!(read_all(&store, &s).await.expect("read"), b"one,two,three");
    // The producer's state came back with the data: seq 2 again is a duplicate, 3 is new.
    assert!(matches!(
        store.append(&s, producer_req("three", "p", 0, 2)).await,
        Ok(AppendOutcome::Duplicate { .. })
    ));
    assert!(matches!(
        store.append(&s, producer_req(",four", "p", 0, 3)).await,
        Ok(AppendOutcome::Appended { .. })
    ));
    store.close().await;
    let store = FileStorage::open(opts(copy.path())).await.expect("reopen");
    assert_eq!(
        read_all(&store, &s).await.expect("read"),
        b"one,two,three,four"
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

fn wal_files(sim: &SimFs) -> Vec<PathBuf> {
    sim.files()
        .into_iter()
        .filter(|p| p.starts_with("/data/wal"))
        .collect()
}

/// Whether a spare WAL segment (whole or being written) is in the directory.
fn has_spare(sim: &SimFs) -> bool {
    // By name: `Path::starts_with` compares whole components.
    wal_files(sim).iter().any(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("spare."))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_wal_segment_is_written_ahead_and_taken_by_the_rotation() {
    const SEGMENT: u64 = 256 * 1024;
    let opts = || FileOptions {
        wal_segment_bytes: SEGMENT,
        ..sim_options(Durability::Durable)
    };
    let sim = SimFs::new(11);
    let store = FileStorage::open_with_fs(opts(), sim.process())
        .await
        .expect("open");
    let s = name("spare");
    store.create(&s, create_req()).await.expect("create");
    let chunk = "x".repeat(4096);
    let mut expected = Vec::new();
    let append = async |expected: &mut Vec<u8>| {
        store
            .append(&s, append_req(chunk.clone()))
            .await
            .expect("append");
        expected.extend_from_slice(chunk.as_bytes());
    };
    // Half the first segment asks for a spare (the store is busy); nothing is written before.
    while store.commit_stats().wal_bytes < SEGMENT / 2 {
        assert!(!has_spare(&sim), "no spare before the WAL is busy");
        append(&mut expected).await;
    }
    // The first segment was not written ahead: the first turn after the spare is ready (the
    // last append's sync report, or the next append) leaves it for the spare, long before it
    // is full.
    let first = PathBuf::from("/data/wal/0000000000000001.wal");
    let spare = PathBuf::from("/data/wal/spare.zero");
    let later = |sim: &SimFs| -> Vec<PathBuf> {
        wal_files(sim)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wal") && *p != first)
            .collect()
    };
    let mut waited = 0;
    while !sim.files().contains(&spare) && later(&sim).is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        waited += 1;
        assert!(waited < 2000, "no spare segment after 10 s");
    }
    if let Some(ready) = sim.read_file(&spare) {
        assert_eq!(ready, vec![0; SEGMENT as usize], "a spare is zeros");
    }
    for _ in 0..2 {
        append(&mut expected).await;
    }
    let segments = later(&sim);
    assert_eq!(segments.len(), 1, "{:?}", wal_files(&sim));
    assert!(!sim.files().contains(&spare), "the rotation took the spare");
    let taken = sim.read_file(&segments[0]).expect("new segment");
    assert_eq!(taken.len() as u64, SEGMENT, "the spare keeps its length");
    assert!(taken[..16].iter().any(|b| *b != 0), "the appends are in it");
    assert!(
        taken[SEGMENT as usize / 2..].iter().all(|b| *b == 0),
        "and zeros after them"
    );

    // Acknowledged appends in the spare survive a power loss; the spare files do not.
    sim.power_loss();
    drop(store);
    let store = FileStorage::open_with_fs(opts(), sim.process())
        .await
        .expect("reopen");
    assert_eq!(read_all(&store, &s).await.expect("read"), expected);
    assert!(!has_spare(&sim), "recovery removes spare files");
    store.close().await;
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
async fn a_stream_created_without_data_gets_its_file_from_its_next_record_or_the_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    let (idle, busy) = (name("idle"), name("busy"));
    for s in [&idle, &busy] {
        store.create(s, create_req()).await.expect("create");
    }
    assert!(
        stream_files(dir.path()).is_empty(),
        "creates without data write only the WAL"
    );
    store
        .append(&busy, append_req(b"x".to_vec()))
        .await
        .expect("append");
    assert_eq!(
        stream_files(dir.path()).len(),
        1,
        "the append wrote its file"
    );
    store.close().await;
    assert_eq!(
        stream_files(dir.path()).len(),
        2,
        "the closing checkpoint wrote the idle stream's file"
    );

    let store = FileStorage::open(options(dir.path()))
        .await
        .expect("reopen");
    store.head(&idle).await.expect("idle stream survives");
    assert_eq!(read_all(&store, &busy).await.expect("read"), b"x");
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
    assert_eq!(
        stream_files(dir.path()).len(),
        2,
        "a fork without data of its own has no file until its next record or checkpoint"
    );

    store.delete(&plain).await.expect("delete");
    assert_eq!(
        stream_files(dir.path()).len(),
        1,
        "plain stream's file is gone"
    );
    store.delete(&source).await.expect("soft delete");
    assert_eq!(
        stream_files(dir.path()).len(),
        1,
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
    // What the files hold: a WAL segment is extended ahead of its writes (sparse, no blocks),
    // so a file counts its length or its allocated blocks, whichever is less.
    let total: u64 = files_under(dir.path())
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(dir.path().join(p)).expect("stat");
            meta.len()
                .min(std::os::unix::fs::MetadataExt::blocks(&meta) * 512)
        })
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
    // A power loss now: the failed writes were torn (the disk took what fit) and taken back;
    // everything acknowledged is synced, so recovery finds exactly it, nothing torn.
    sim.power_loss();
    drop(store);
    let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
        .await
        .expect("reopen");
    assert_eq!(read_all(&store, &s).await.expect("read"), data);
    store.close().await;
}

/// A restored writer state is acknowledged once its WAL record is synced: after a power loss
/// that drops or tears the unsynced stream-file copy, recovery replays it from the WAL, and
/// producers, `Stream-Seq` and closure come back exactly as restored.
#[tokio::test]
async fn a_restored_writer_state_survives_power_loss_through_the_wal() {
    use ds_storage::rules::{ProducerState, WriterState};
    let restored = |closed: bool| WriterState {
        closed,
        closed_by: closed.then(|| ("p".to_owned(), 4, 9)),
        last_stream_seq: Some("0042".to_owned()),
        producers: [("p", 4, 9), ("q", 1, 0)]
            .into_iter()
            .map(|(id, epoch, last_seq)| (id.to_owned(), ProducerState { epoch, last_seq }))
            .collect(),
    };
    for seed in 0..16 {
        let sim = SimFs::new(seed);
        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .expect("open");
        let (open, closed) = (name("restored-open"), name("restored-closed"));
        for s in [&open, &closed] {
            store.create(s, create_req()).await.expect("create");
            store.append(s, append_req("data")).await.expect("append");
        }
        store
            .restore_writer(&open, restored(false))
            .await
            .expect("restore open");
        store
            .restore_writer(&closed, restored(true))
            .await
            .expect("restore closed");
        let acked = store
            .append(&open, producer_req("more", "p", 4, 10))
            .await
            .expect("append after restore");
        assert!(matches!(acked, AppendOutcome::Appended { .. }), "{acked:?}");
        sim.power_loss();
        drop(store);
        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        let mut after_append = restored(false);
        after_append.producers.insert(
            "p".to_owned(),
            ProducerState {
                epoch: 4,
                last_seq: 10,
            },
        );
        let meta = store.export_meta(&open).await.expect("meta");
        assert_eq!(meta.writer, after_append, "seed {seed}");
        assert_eq!(read_all(&store, &open).await.expect("read"), b"datamore");
        let meta = store.export_meta(&closed).await.expect("meta");
        assert_eq!(meta.writer, restored(true), "seed {seed}");
        assert!(meta.info.closed, "seed {seed}");
        assert!(matches!(
            store.append(&closed, append_req("x")).await,
            Err(Error::Closed { .. })
        ));
        store.close().await;
    }
}

/// A checkpoint that finds no room for `CHECKPOINT` does not stop the store, and the files it
/// did not get to sync are synced by the next one before the WAL that covers them goes: after
/// a power loss, every acknowledged append is there.
#[tokio::test]
async fn checkpoints_on_a_full_disk_are_retried_and_lose_nothing() {
    for seed in 0..12 {
        let sim = SimFs::new(seed);
        let opts = || FileOptions {
            // Small segments: a rotation and a checkpoint every few appends.
            wal_segment_bytes: 2048,
            ..sim_options(Durability::Durable)
        };
        let store = FileStorage::open_with_fs(opts(), sim.process())
            .await
            .expect("open");
        let streams = [name("a"), name("b"), name("c")];
        let mut acked: Vec<Vec<u8>> = vec![Vec::new(); streams.len()];
        for s in &streams {
            store.create(s, create_req()).await.expect("create");
        }
        sim.refuse_writes_to(Some("CHECKPOINT.tmp"));
        let append_round = |round: usize| {
            let store = store.clone();
            let streams = streams.clone();
            async move {
                let mut done = Vec::new();
                for (i, s) in streams.iter().enumerate() {
                    let body = vec![u8::try_from(round % 200).expect("small") + 1; 300 + i];
                    store
                        .append(s, append_req(body.clone()))
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed}: append {round}: {e}"));
                    done.push(body);
                }
                done
            }
        };
        // Append until checkpoints have run into the full disk (the background thread may
        // lag behind the committer on a busy machine).
        let refused = |sim: &SimFs| sim.files().iter().any(|p| p.ends_with("CHECKPOINT.tmp"));
        let mut round = 0;
        while round < 30 || !refused(&sim) {
            for (i, body) in append_round(round).await.into_iter().enumerate() {
                acked[i].extend_from_slice(&body);
            }
            round += 1;
            assert!(
                round < 3000,
                "seed {seed}: no checkpoint ran: {:?}",
                sim.files()
            );
            if round >= 30 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        assert!(
            store.is_ready(),
            "seed {seed}: failed checkpoints do not stop the store"
        );
        // Space is back. Only `c` is written from now on, so the checkpoints that follow have
        // `a` and `b` to sync only because the failed ones carried them over.
        sim.refuse_writes_to(None);
        let c = &streams[2];
        let mut more = 0;
        while more < 15 || refused(&sim) {
            let body = vec![0xcc; 500];
            store
                .append(c, append_req(body.clone()))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: append: {e}"));
            acked[2].extend_from_slice(&body);
            more += 1;
            assert!(more < 3000, "seed {seed}: no checkpoint succeeded");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // A successful checkpoint renamed CHECKPOINT.tmp and dropped the old WAL segments.
        sim.power_loss();
        drop(store);
        let store = FileStorage::open_with_fs(opts(), sim.process())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        for (s, data) in streams.iter().zip(&acked) {
            let got = read_all(&store, s).await.expect("read");
            assert!(
                got == *data,
                "seed {seed}: stream {s} lost acknowledged data"
            );
        }
        store.close().await;
    }
}

/// Waits (polling) until `done` holds; the committer starts a rotation's checkpoint only after
/// it answered the batch that filled the segment.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A checkpoint creates the files of streams created without data. If it creates one and then
/// runs out of space on the next, it fails before syncing anything; the retry finds the first
/// file already there and must still sync it and its directory entry before it lets the WAL
/// segment holding the Create go. After a power loss both acknowledged creates are there.
#[tokio::test]
async fn a_retried_checkpoint_syncs_the_files_a_failed_one_created() {
    for seed in 0..16 {
        let sim = SimFs::new(seed);
        let opts = || FileOptions {
            wal_segment_bytes: 1024,
            ..sim_options(Durability::Durable)
        };
        let store = FileStorage::open_with_fs(opts(), sim.process())
            .await
            .expect("open");
        store.wait_for_checkpoint().await;
        let filler = name("filler");
        store
            .create(&filler, create_req())
            .await
            .expect("create filler");
        // Stream ids count from 1: `filler` is 1, the lazy ones 2 and 3.
        let (first, second) = (name("lazy-1"), name("lazy-2"));
        store.create(&first, create_req()).await.expect("create");
        store.create(&second, create_req()).await.expect("create");
        let second_file = "0000000000000003.dat";
        sim.refuse_writes_to(Some(second_file));
        // Fill the segment: the rotation's checkpoint writes the first lazy stream's file,
        // then finds no room for the second's.
        store
            .append(&filler, append_req(vec![1u8; 2000]))
            .await
            .expect("append");
        eventually("the checkpoint ran into the full disk", || {
            sim.files().iter().any(|p| p.ends_with(second_file))
        })
        .await;
        store.wait_for_checkpoint().await;
        assert!(store.is_ready(), "seed {seed}");
        // Space is back; the next rotation's checkpoint succeeds and drops the old segments.
        sim.refuse_writes_to(None);
        store
            .append(&filler, append_req(vec![2u8; 2000]))
            .await
            .expect("append");
        eventually("a checkpoint dropped the first segment", || {
            !sim.files()
                .iter()
                .any(|p| p.ends_with("0000000000000001.wal"))
        })
        .await;
        store.wait_for_checkpoint().await;
        assert!(store.is_ready(), "seed {seed}");
        sim.power_loss();
        drop(store);
        let store = FileStorage::open_with_fs(opts(), sim.process())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        for s in [&first, &second] {
            assert!(
                store.head(s).await.is_ok(),
                "seed {seed}: the acknowledged create of {s} was lost"
            );
        }
        store.close().await;
    }
}

/// No room for a new stream file (or its fan-out directory) fails that one request with
/// `StorageFull`; the store carries on, and the same requests succeed once space is freed.
#[tokio::test]
async fn no_room_for_a_new_stream_file_is_storage_full_and_the_store_carries_on() {
    for seed in 0..4 {
        let sim = SimFs::new(seed);
        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .expect("open");
        store.wait_for_checkpoint().await;
        // Created without data: no file (nor fan-out directory) yet.
        let lazy = name("lazy");
        store.create(&lazy, create_req()).await.expect("create");
        sim.refuse_new_entries(true);
        // Its first append must create the file.
        let refused = store.append(&lazy, append_req("a")).await;
        assert!(
            matches!(refused, Err(Error::StorageFull { limit: 0 })),
            "seed {seed}: {refused:?}"
        );
        assert!(store.is_ready(), "seed {seed}: the store stopped");
        // So must a create with data.
        let eager = name("eager");
        let with_body = || CreateRequest {
            body: bytes::Bytes::from_static(b"b"),
            ..create_req()
        };
        let refused = store.create(&eager, with_body()).await;
        assert!(
            matches!(refused, Err(Error::StorageFull { limit: 0 })),
            "seed {seed}: {refused:?}"
        );
        assert!(store.is_ready(), "seed {seed}: the store stopped");
        assert!(matches!(store.head(&eager).await, Err(Error::NotFound)));
        assert_eq!(read_all(&store, &lazy).await.expect("read"), b"");
        sim.refuse_new_entries(false);
        store
            .append(&lazy, append_req("a"))
            .await
            .expect("append once space is freed");
        store
            .create(&eager, with_body())
            .await
            .expect("create once space is freed");
        sim.power_loss();
        drop(store);
        let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        assert_eq!(read_all(&store, &lazy).await.expect("read"), b"a");
        assert_eq!(read_all(&store, &eager).await.expect("read"), b"b");
        store.close().await;
    }
}

/// An `fdatasync` of the WAL that fails with ENOSPC (NFS, thin provisioning) is a failed
/// fsync, not a full disk: what it covered may or may not reach the disk, so the client is
/// not told that nothing was written, and the store stops accepting writes.
#[tokio::test]
async fn a_wal_fsync_failing_with_enospc_is_a_backend_error_and_stops_writes() {
    let sim = SimFs::new(3);
    let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
        .await
        .expect("open");
    store.wait_for_checkpoint().await;
    let s = name("s");
    store.create(&s, create_req()).await.expect("create");
    sim.fail_syncs(Some(28));
    let failed = store.append(&s, append_req("maybe")).await;
    assert!(
        matches!(failed, Err(Error::Backend { .. })),
        "a failed fsync is not a full disk: {failed:?}"
    );
    assert!(!store.is_ready(), "a failed fsync stops the store");
    sim.fail_syncs(None);
    assert!(matches!(
        store.append(&s, append_req("later")).await,
        Err(Error::Backend { .. })
    ));
}

/// The fsync of the old WAL segment at a rotation failing with ENOSPC stops the store like
/// any failed fsync; it is not a full disk to retry the rotation on later.
#[tokio::test]
async fn a_rotation_fsync_failing_with_enospc_stops_writes() {
    let sim = SimFs::new(4);
    let opts = FileOptions {
        wal_segment_bytes: 1024,
        // No periodic WAL fsync during the test: the rotation's is the first.
        fsync_interval: std::time::Duration::from_secs(3600),
        ..sim_options(Durability::Fast)
    };
    let store = FileStorage::open_with_fs(opts, sim.process())
        .await
        .expect("open");
    store.wait_for_checkpoint().await;
    let s = name("s");
    store.create(&s, create_req()).await.expect("create");
    sim.fail_syncs(Some(28));
    store
        .append(&s, append_req(vec![0u8; 2000]))
        .await
        .expect("append (file-fast: acknowledged before the fsync)");
    // The rotation runs after the batch is answered.
    eventually("the failed rotation stopped the store", || {
        !store.is_ready()
    })
    .await;
    assert!(matches!(
        store.append(&s, append_req("later")).await,
        Err(Error::Backend { .. })
    ));
}

/// file-fast: the WAL is still synced every `fsync_interval` while a long checkpoint runs,
/// here recovery's, over many stream files on a device with slow flushes. A power loss right
/// after a restart can then take only the last interval's requests, not everything
/// acknowledged since the checkpoint began.
#[tokio::test]
async fn file_fast_keeps_syncing_the_wal_while_a_checkpoint_runs() {
    use std::time::Duration;
    let sim = SimFs::new(23);
    let opts = || FileOptions {
        fsync_interval: Duration::from_millis(5),
        ..sim_options(Durability::Fast)
    };
    let store = FileStorage::open_with_fs(opts(), sim.process())
        .await
        .expect("open");
    let streams: Vec<StreamName> = (0..256).map(|i| name(&format!("s{i}"))).collect();
    for s in &streams {
        let req = CreateRequest {
            body: b"data".to_vec().into(),
            ..create_req()
        };
        store.create(s, req).await.expect("create");
    }
    // A crash before any checkpoint: the next open replays the WAL and leaves syncing all
    // those stream files to its checkpoint, in the background.
    sim.kill();
    drop(store);
    sim.slow_syncs(Some((".dat", Duration::from_millis(20))));
    let store = FileStorage::open_with_fs(opts(), sim.process())
        .await
        .expect("reopen");
    let running = || async {
        tokio::time::timeout(Duration::ZERO, store.wait_for_checkpoint())
            .await
            .is_err()
    };
    let before = store.commit_stats().fsyncs;
    for _ in 0..3 {
        // Something for the next WAL sync to do (which may be done before the append returns).
        let synced = store.commit_stats().fsyncs;
        store
            .append(&streams[0], append_req(b"x".to_vec()))
            .await
            .expect("append");
        eventually("the WAL is synced", || store.commit_stats().fsyncs > synced).await;
        assert!(
            running().await,
            "the checkpoint (about 1.3 s of stream-file syncs) is still running"
        );
    }
    assert!(store.commit_stats().fsyncs >= before + 3);
    sim.slow_syncs(None);
    store.wait_for_checkpoint().await;
    store.close().await;

    let store = FileStorage::open_with_fs(opts(), sim.process())
        .await
        .expect("reopen");
    let mut expected = b"data".to_vec();
    expected.extend_from_slice(b"xxx");
    assert_eq!(read_all(&store, &streams[0]).await.expect("read"), expected);
    assert_eq!(
        read_all(&store, &streams[255]).await.expect("read"),
        b"data"
    );
    store.close().await;
}

/// A file system whose creation of stream files waits while a gate is closed.
struct GatedFs {
    inner: Arc<dyn ds_storage_file::io::Fs>,
    /// (closed, a creation is waiting at it)
    gate: Arc<(std::sync::Mutex<(bool, bool)>, std::sync::Condvar)>,
}

impl ds_storage_file::io::Fs for GatedFs {
    fn open(
        &self,
        path: &Path,
        mode: ds_storage_file::io::OpenMode,
    ) -> std::io::Result<Arc<dyn ds_storage_file::io::FsFile>> {
        if mode == ds_storage_file::io::OpenMode::Create
            && path.extension().is_some_and(|e| e == "dat")
        {
            let (lock, cv) = &*self.gate;
            let mut g = lock.lock().expect("gate");
            if g.0 {
                g.1 = true;
                while g.0 {
                    g = cv.wait(g).expect("gate");
                }
            }
        }
        self.inner.open(path, mode)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> std::io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.lock(path)
    }
}

/// A checkpoint creating the file of a stream created without data does so without the
/// stream's lock: the committer can delete the stream meanwhile. The file the checkpoint then
/// creates for the removed stream must not stay (it would hold the Create record once the WAL
/// holding the Delete is gone).
#[tokio::test]
async fn a_stream_deleted_while_the_checkpoint_creates_its_file_stays_deleted() {
    use std::time::Duration;
    let sim = SimFs::new(29);
    let opts = || FileOptions {
        // Every batch rotates the WAL (while no checkpoint runs).
        wal_segment_bytes: 1,
        ..sim_options(Durability::Durable)
    };
    let gate = Arc::new((
        std::sync::Mutex::new((true, false)),
        std::sync::Condvar::new(),
    ));
    let fs = Arc::new(GatedFs {
        inner: sim.process(),
        gate: Arc::clone(&gate),
    });
    let store = FileStorage::open_with_fs(opts(), fs).await.expect("open");
    store.wait_for_checkpoint().await;
    let idle = name("idle");
    store.create(&idle, create_req()).await.expect("create");
    eventually("the checkpoint creates the stream's file", || {
        gate.0.lock().expect("gate").1
    })
    .await;
    let deleted = tokio::time::timeout(Duration::from_secs(5), store.delete(&idle)).await;
    {
        // Opened before any verdict, so a failing run does not hang.
        let (lock, cv) = &*gate;
        lock.lock().expect("gate").0 = false;
        cv.notify_all();
    }
    deleted
        .expect("the delete does not wait for the checkpoint's file creation")
        .expect("delete");
    store.wait_for_checkpoint().await;
    assert!(store.is_ready());
    let streams: Vec<PathBuf> = sim
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    assert!(streams.is_empty(), "{streams:?}");
    store.close().await;

    let store = FileStorage::open_with_fs(opts(), sim.process())
        .await
        .expect("reopen");
    assert!(matches!(store.head(&idle).await, Err(Error::NotFound)));
    store.close().await;
}

/// A region read answers large runs of a binary stream as regions of its stream file (small
/// ones as bytes, and a run cut by the read's budget as the part it takes), and the regions
/// stay readable after the stream is deleted.
#[tokio::test]
async fn region_reads_hand_out_large_runs_as_file_regions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = name("regions");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    store.create(&s, create_req()).await.expect("create");
    let bodies: Vec<Vec<u8>> = [100usize, 40_000, 10, 200_000]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len).map(|j| (j + i * 50) as u8).collect())
        .collect();
    for body in &bodies {
        store
            .append(&s, append_req(body.clone()))
            .await
            .expect("append");
    }
    let chunk = store
        .read_regions(&s, ReadFrom::Start, 1 << 20, 1 << 20)
        .await
        .expect("read");
    let kinds: Vec<(bool, u64)> = chunk
        .pieces
        .iter()
        .map(|p| (matches!(p, ReadPiece::File(_)), p.len()))
        .collect();
    assert_eq!(
        kinds,
        [(false, 100), (true, 40_000), (false, 10), (true, 200_000)]
    );
    // A budget that ends inside a large run takes a region of what it can.
    let cut = store
        .read_regions(&s, ReadFrom::Start, 100 + 35_000, 100 + 35_000)
        .await
        .expect("read");
    assert!(matches!(&cut.pieces[1], ReadPiece::File(r) if r.len() == 35_000));
    store.delete(&s).await.expect("delete");
    assert!(
        stream_files(dir.path()).is_empty(),
        "the stream file is gone"
    );
    let got = chunk.into_bytes().expect("regions read after the delete");
    assert_eq!(got.pieces.concat(), bodies.concat());
    store.close().await;
}

/// On a file system without operating-system handles (the simulated one), a region read
/// reads every run.
#[tokio::test]
async fn region_reads_without_os_files_read_every_run() {
    let sim = SimFs::new(1);
    let s = name("sim-regions");
    let store = FileStorage::open_with_fs(sim_options(Durability::Durable), sim.process())
        .await
        .expect("open");
    store.create(&s, create_req()).await.expect("create");
    store
        .append(&s, append_req(vec![7u8; 100_000]))
        .await
        .expect("append");
    let chunk = store
        .read_regions(&s, ReadFrom::Start, 1 << 20, 1 << 20)
        .await
        .expect("read");
    assert!(chunk.all_bytes());
    assert_eq!(chunk.len(), 100_000);
    store.close().await;
}

/// A region read's budget for file regions is its own: runs answered as regions go past the
/// in-memory budget, and small runs read into memory stay within it.
#[tokio::test]
async fn region_reads_take_runs_past_the_in_memory_budget() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = name("far");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    store.create(&s, create_req()).await.expect("create");
    for len in [300_000usize, 300_000, 100, 100, 100] {
        store
            .append(&s, append_req(vec![1u8; len]))
            .await
            .expect("append");
    }
    let chunk = store
        .read_regions(&s, ReadFrom::Start, 150, 1 << 20)
        .await
        .expect("read");
    let kinds: Vec<(bool, u64)> = chunk
        .pieces
        .iter()
        .map(|p| (matches!(p, ReadPiece::File(_)), p.len()))
        .collect();
    // Two whole regions, then the first small run, then what is left of the in-memory budget.
    assert_eq!(
        kinds,
        [(true, 300_000), (true, 300_000), (false, 100), (false, 50)]
    );
    assert!(!chunk.up_to_date);
    store.close().await;
}

/// The bytes of an answer with regions are one buffer of exactly their size (not slices of the
/// blocks read around the regions, which a slow client would keep alive).
#[tokio::test]
async fn region_reads_hold_their_small_runs_in_one_buffer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = name("compact");
    let store = FileStorage::open(options(dir.path())).await.expect("open");
    store.create(&s, create_req()).await.expect("create");
    let mut expected = Vec::new();
    for i in 0..20u8 {
        for len in [4_200usize, 40_000] {
            let body = vec![i.wrapping_mul(3).wrapping_add(len as u8); len];
            expected.extend_from_slice(&body);
            store.append(&s, append_req(body)).await.expect("append");
        }
    }
    let chunk = store
        .read_regions(&s, ReadFrom::Start, 1 << 20, 32 << 20)
        .await
        .expect("read");
    assert!(chunk.up_to_date);
    let bytes: Vec<&bytes::Bytes> = chunk
        .pieces
        .iter()
        .filter_map(|p| match p {
            ReadPiece::Bytes(b) => Some(b),
            ReadPiece::File(_) => None,
        })
        .collect();
    assert_eq!(bytes.len(), 20);
    for pair in bytes.windows(2) {
        assert_eq!(
            pair[0].as_ptr().wrapping_add(pair[0].len()),
            pair[1].as_ptr(),
            "the small runs lie back to back in one buffer"
        );
    }
    assert_eq!(
        chunk.into_bytes().expect("read back").pieces.concat(),
        expected
    );
    store.close().await;
}
