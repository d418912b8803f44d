//! Signals: SIGHUP reloads certificates without dropping connections; SIGTERM drains.

use std::io::Read;
use std::time::{Duration, Instant};

use ds_server::testsupport::TestPki;

use crate::util::{connect, connect_tls, peer_cert, request, spawn, tls_client, wait_ready};

#[test]
fn sighup_reloads_certificates_for_new_connections_and_keeps_old_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::write(dir.path()).expect("pki");
    let (cert, key) = (
        pki.server_cert.to_string_lossy().into_owned(),
        pki.server_key.to_string_lossy().into_owned(),
    );
    let mut server = spawn(
        dir.path(),
        &[],
        &[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__CERT_PATH", &cert),
            ("DS_TRANSPORT__TLS__KEY_PATH", &key),
        ],
    );
    assert!(server.wait_listening(), "{}", server.stderr());
    let client = tls_client(&pki.ca_cert, None, &[b"http/1.1"]);
    let mut old = connect_tls(server.port, client.clone()).expect("handshake");
    assert_eq!(
        request(&mut old, "GET", "/healthz", &[], b"")
            .expect("ok")
            .status,
        200
    );
    let before = peer_cert(&old);

    pki.renew_server_cert().expect("renew");
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let fresh = connect_tls(server.port, client.clone()).expect("handshake after reload");
        let cert = peer_cert(&fresh);
        if cert != before {
            break cert;
        }
        assert!(
            Instant::now() < deadline,
            "certificate never reloaded:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(after, before);
    // The connection made before the reload still works.
    assert_eq!(
        request(&mut old, "GET", "/healthz", &[], b"")
            .expect("old conn")
            .status,
        200
    );
    assert!(server.stderr().contains("TLS certificates reloaded"));

    // A broken file on reload keeps the current certificates.
    std::fs::write(&pki.server_cert, "garbage").expect("write");
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let fresh = connect_tls(server.port, client).expect("still serving");
    assert_eq!(peer_cert(&fresh), after);
    assert!(server.stderr().contains("reload failed"));
}

/// Reads an SSE response to its end; returns the raw bytes (headers and chunked body).
fn sse_to_end(port: u16) -> Vec<u8> {
    use std::io::Write;
    let mut s = connect(port);
    s.write_all(b"GET /v1/stream/load?offset=-1&live=sse HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Acceptance: SIGTERM during 32 concurrent appends and 100 open SSE readers on a durable
/// backend: every acknowledged append is readable after a restart, every SSE reader sees a
/// clean end, and the process exits within the drain timeout.
#[test]
fn sigterm_under_load_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("DS_STORAGE__MODE", "file-durable"),
        ("DS_STORAGE__DATA_DIR", "./data"),
        ("DS_SERVER__DRAIN_TIMEOUT_SECS", "10"),
    ];
    let mut server = spawn(dir.path(), &[], &env);
    assert!(server.wait_listening(), "{}", server.stderr());
    let port = server.port;
    wait_ready(port);
    let mut c = connect(port);
    let r = request(
        &mut c,
        "PUT",
        "/v1/stream/load",
        &[("content-type", "text/plain")],
        b"",
    )
    .expect("create");
    assert_eq!(r.status, 201);
    let readers: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || sse_to_end(port)))
        .collect();
    let appenders: Vec<_> = (0..32)
        .map(|a| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut c = connect(port);
                for i in 0.. {
                    let payload = format!("<{a}:{i}>");
                    match request(
                        &mut c,
                        "POST",
                        "/v1/stream/load",
                        &[("content-type", "text/plain")],
                        payload.as_bytes(),
                    ) {
                        Ok(r) if (200..300).contains(&r.status) => acked.push(payload),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{}", server.stderr());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "within the drain timeout"
    );
    let acked: Vec<String> = appenders
        .into_iter()
        .flat_map(|h| h.join().expect("appender"))
        .collect();
    for r in readers {
        let raw = r.join().expect("reader");
        assert!(
            raw.ends_with(b"0\r\n\r\n"),
            "SSE ended with the chunked terminator"
        );
    }
    let server = spawn(dir.path(), &[], &env);
    wait_ready(server.port);
    let mut c = connect(server.port);
    let mut stored = Vec::new();
    let mut offset = "-1".to_owned();
    loop {
        let r = request(
            &mut c,
            "GET",
            &format!("/v1/stream/load?offset={offset}"),
            &[],
            b"",
        )
        .expect("read");
        stored.extend_from_slice(&r.body);
        offset = r.header("stream-next-offset").expect("offset").to_owned();
        if r.header("stream-up-to-date").is_some() {
            break;
        }
    }
    let stored = String::from_utf8(stored).expect("utf-8");
    for p in &acked {
        assert!(
            stored.contains(p.as_str()),
            "acknowledged {p} survived the restart"
        );
    }
}
