//! The machine's physical limits: a bare hyper server (no protocol, no storage), run as one
//! more server in the append-1 and read rounds, and a write + fdatasync loop on the data
//! dir's disk.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::args::Scenario;
use crate::report::{Ceiling, Row};
use crate::server::CEILING_NAME;
use crate::stats::{Histogram, as_f64};

/// Body of every GET: one read chunk, the size our server answers at most.
const READ_BODY_BYTES: usize = 1 << 20;

/// Serves the bare-hyper ceiling server on `127.0.0.1:port` until killed: 204 to POST (after
/// reading the body), a fixed 1 MiB body with `Stream-Up-To-Date: true` to anything else.
pub(crate) async fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let body = Bytes::from(vec![b'r'; READ_BODY_BYTES]);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    let is_post = req.method() == Method::POST;
                    // Read the request body as a real server must.
                    let _ = req.into_body().collect().await;
                    let mut resp = if is_post {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        r
                    } else {
                        let mut r = Response::new(Full::new(body));
                        let h = r.headers_mut();
                        h.insert("stream-next-offset", HeaderValue::from_static("1"));
                        h.insert("stream-up-to-date", HeaderValue::from_static("true"));
                        r
                    };
                    resp.headers_mut().insert(
                        "content-type",
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// 256-byte appends, each followed by fdatasync, on one thread for `secs`, in `dir`.
fn measure_fsync(dir: &Path, secs: f64, ceiling: &mut Ceiling) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let block = [b'f'; 256];
    let mut hist = Histogram::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        hist.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        n += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    ceiling.fsync_per_sec = Some(as_f64(n) / elapsed);
    ceiling.fsync_p50_ms = hist.quantile(0.5).map(|v| as_f64(v) / 1e6);
    ceiling.fsync_p99_ms = hist.quantile(0.99).map(|v| as_f64(v) / 1e6);
    Ok(())
}

/// The disk's ceiling, measured in `data_root` (where the servers' data dirs live). A failure
/// is reported and leaves the figures empty.
pub(crate) async fn measure_disk(data_root: &Path, secs: f64) -> Ceiling {
    let dir = data_root.join("fsync");
    let mut c = Ceiling::default();
    match tokio::task::spawn_blocking(move || measure_fsync(&dir, secs, &mut c).map(|()| c)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("ds-bench: fdatasync ceiling not measured: {e:#}");
            Ceiling::default()
        }
        Err(e) => {
            eprintln!("ds-bench: fdatasync ceiling not measured: {e}");
            Ceiling::default()
        }
    }
}

/// Takes the HTTP ceiling from the bare-hyper rows of the table (medians of the same
/// alternating rounds as the servers, so the machine's load at the time is shared).
pub(crate) fn absorb_http(ceiling: &mut Ceiling, rows: &[Row]) {
    for row in rows.iter().filter(|r| r.server == CEILING_NAME) {
        let Some(m) = &row.metrics else { continue };
        match row.scenario {
            Scenario::Append1 => {
                ceiling.http_post_per_sec = m.ops_per_sec;
                ceiling.http_post_p50_ms = m.p50_ms;
                ceiling.http_post_p99_ms = m.p99_ms;
            }
            Scenario::Read => ceiling.http_read_mb_per_sec = m.mb_per_sec,
            _ => {}
        }
    }
}
