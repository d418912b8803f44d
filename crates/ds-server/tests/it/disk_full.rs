//! A real full disk, end to end: the server runs `file-durable` or `acid` on a small tmpfs,
//! the disk is filled, and appends answer `507` with a problem body while reads, `HEAD` and
//! `/readyz` keep working; once space is freed appends succeed again, and after a restart
//! every acknowledged byte is there, exactly once and in order.
//!
//! Mounting needs root (`CAP_SYS_ADMIN`); where `mount` is not permitted the test prints why
//! and skips. The same logic is tested everywhere through each backend's I/O seam (the file
//! backend's `SimFs`, the acid backend's redb `StorageBackend`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ds_server::Config;
use ds_server::startup::{self, StartupError};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::net::{Client, body, free_port, header};

/// A size-limited tmpfs mounted on a temporary directory for the life of the value.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with filler files; returns them.
    fn fill(&self) -> Vec<PathBuf> {
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut files = Vec::new();
        for i in 0.. {
            let path = self.path().join(format!("filler-{i}"));
            let written = std::fs::write(&path, &chunk);
            files.push(path);
            match written {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => return files,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
            assert!(i < 100_000, "the tmpfs never filled up");
        }
        unreachable!("the loop returns")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open: detach it now, the kernel frees it later.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A server started with [`startup::serve`] on the backend its configuration names.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), StartupError>>,
}

impl Server {
    /// Starts a server on `data_dir`. A restart may find the directory still locked for a
    /// moment: the previous server returns once its connections drained, and its store closes
    /// when the last connection task lets go of it. Retried for up to 20 s.
    async fn start(mode: &str, data_dir: &Path) -> Server {
        for _ in 0..200 {
            match Server::try_start(mode, data_dir).await {
                Ok(server) => return server,
                // file-durable says "locked", acid "in use" (the redb files are still open).
                Err(e) if e.contains("locked") || e.contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("server exited during startup: {e}"),
            }
        }
        panic!("{} stayed locked", data_dir.display());
    }

    async fn try_start(mode: &str, data_dir: &Path) -> Result<Server, String> {
        let port = free_port();
        let toml = format!(
            "[server]\nbind_address = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 5\n\
             [storage]\nmode = \"{mode}\"\ndata_dir = {:?}\nacid_shard_count = 1\n",
            data_dir.display().to_string()
        );
        let cfg = Config::from_toml(&toml).expect("valid config");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(startup::serve(cfg, Some(rx)));
        for _ in 0..500 {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(Server { addr, stop, task });
            }
            if task.is_finished() {
                return Err(format!("{:?}", task.await));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not start listening on {addr}");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server exits cleanly");
    }
}

const STREAM: &str = "/v1/stream/disk-full";
const BINARY: (&str, &str) = ("content-type", "application/octet-stream");

/// The whole stream over HTTP, following `Stream-Next-Offset` until up to date.
async fn read_all(c: &mut Client) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = "-1".to_owned();
    for _ in 0..10_000 {
        let res = c
            .send("GET", &format!("{STREAM}?offset={offset}"), &[], "")
            .await
            .expect("read");
        assert_eq!(res.status(), 200, "read at {offset}");
        let next = header(&res, "stream-next-offset").expect("Stream-Next-Offset");
        let up_to_date = header(&res, "stream-up-to-date").as_deref() == Some("true");
        out.extend_from_slice(&body(res).await);
        if up_to_date {
            return out;
        }
        offset = next;
    }
    panic!("the read never caught up");
}

/// Appends `data`; returns the status and, for a problem, its body and `Retry-After`.
async fn append(c: &mut Client, data: &str) -> (u16, Option<(serde_json::Value, String)>) {
    let res = c
        .send("POST", STREAM, &[BINARY], data)
        .await
        .expect("append");
    let status = res.status().as_u16();
    if status == 204 {
        return (status, None);
    }
    let content_type = header(&res, "content-type").unwrap_or_default();
    assert_eq!(content_type, "application/problem+json", "status {status}");
    let retry_after = header(&res, "retry-after").unwrap_or_default();
    let json = serde_json::from_slice(&body(res).await).expect("problem JSON");
    (status, Some((json, retry_after)))
}

async fn disk_full_round_trip(mode: &str, fs: &Tmpfs) {
    let data_dir = fs.path().join("data");
    let server = Server::start(mode, &data_dir).await;
    let mut c = Client::plain(server.addr).await;
    let res = c.send("PUT", STREAM, &[BINARY], "").await.expect("create");
    assert_eq!(res.status(), 201, "{mode}: create");

    let mut acked = String::new();
    let mut fillers = fs.fill();
    // Give back a little room, so some appends succeed before the disk is full again.
    for path in fillers.drain(..fillers.len().min(8)) {
        std::fs::remove_file(path).expect("remove filler");
    }
    let mut refusals = 0;
    for i in 0..2_000u32 {
        let letter = char::from(b'a' + u8::try_from(i % 26).expect("below 26"));
        let data: String = std::iter::repeat_n(letter, 16 * 1024).collect();
        match append(&mut c, &data).await {
            (204, _) => acked.push_str(&data),
            (507, Some((json, retry_after))) => {
                assert_eq!(json["status"], 507, "{mode}: {json}");
                assert_eq!(json["code"], "STORAGE_FULL", "{mode}: {json}");
                let detail = json["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("disk"), "{mode}: {json}");
                assert_eq!(retry_after, "1", "{mode}");
                refusals += 1;
                if refusals == 3 {
                    break;
                }
            }
            (status, problem) => panic!("{mode}: append on a full disk: {status} {problem:?}"),
        }
    }
    assert_eq!(refusals, 3, "{mode}: the disk filled up");
    assert!(
        !acked.is_empty(),
        "{mode}: some appends fit before the disk was full"
    );

    // While full: the stream is consistent and readable, nothing refused is visible.
    let res = c.send("HEAD", STREAM, &[], "").await.expect("head");
    assert_eq!(res.status(), 200, "{mode}: HEAD while full");
    let tail = header(&res, "stream-next-offset").expect("Stream-Next-Offset");
    assert_eq!(
        read_all(&mut c).await,
        acked.as_bytes(),
        "{mode}: read while full"
    );
    let res = c.send("GET", "/readyz", &[], "").await.expect("readyz");
    assert_eq!(res.status(), 200, "{mode}: ready while full");

    // Space is freed: appends succeed again, at the tail the refused appends did not move.
    for path in fillers {
        std::fs::remove_file(path).expect("remove filler");
    }
    let res = c
        .send("POST", STREAM, &[BINARY], "after")
        .await
        .expect("append");
    assert_eq!(res.status(), 204, "{mode}: append once space is freed");
    acked.push_str("after");
    assert_eq!(read_all(&mut c).await, acked.as_bytes());
    let res = c
        .send("GET", &format!("{STREAM}?offset={tail}"), &[], "")
        .await
        .expect("read from the tail seen while full");
    assert_eq!(&body(res).await[..], b"after", "{mode}");

    // A restart recovers every acknowledged byte, once, and nothing torn.
    drop(c);
    server.stop().await;
    let server = Server::start(mode, &data_dir).await;
    let mut c = Client::plain(server.addr).await;
    assert_eq!(
        read_all(&mut c).await,
        acked.as_bytes(),
        "{mode}: after restart"
    );
    let res = c
        .send("POST", STREAM, &[BINARY], "!")
        .await
        .expect("append");
    assert_eq!(res.status(), 204, "{mode}: append after restart");
    drop(c);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_writes_resume_once_space_is_freed() {
    for mode in ["file-durable", "acid"] {
        let fs = match Tmpfs::mount("8m") {
            Ok(fs) => fs,
            Err(why) => {
                eprintln!("skipping disk_full ({mode}): cannot mount a tmpfs: {why}");
                return;
            }
        };
        disk_full_round_trip(mode, &fs).await;
    }
}
