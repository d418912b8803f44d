//! TLS, HTTP/2 by ALPN, and mTLS over real loopback sockets with throwaway certificates.

use std::path::Path;

use ds_server::testsupport::TestPki;

use crate::net::{Client, TestServer, body, client_tls, header, tls_config};

fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::write(dir.path()).expect("test pki");
    (dir, pki)
}

#[tokio::test]
async fn h2_by_alpn_serves_appends_and_an_sse_read_and_http1_still_works() {
    let (_dir, pki) = pki();
    let server = TestServer::start(tls_config(&pki, "tls", true)).await;
    let (mut h2, alpn) = Client::tls(
        server.addr,
        client_tls(&pki.ca_cert, None, &[b"h2", b"http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(alpn.as_deref(), Some(b"h2".as_slice()));
    assert!(matches!(h2, Client::H2(_)));

    let res = h2
        .send(
            "PUT",
            "/v1/stream/h2/s",
            &[("content-type", "text/plain")],
            "",
        )
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    assert_eq!(
        header(&res, "location").as_deref(),
        Some("https://localhost/v1/stream/h2/s"),
        "Location carries the https scheme and the :authority"
    );
    for word in ["alpha ", "beta ", "gamma"] {
        let res = h2
            .send(
                "POST",
                "/v1/stream/h2/s",
                &[("content-type", "text/plain")],
                word,
            )
            .await
            .expect("append");
        assert_eq!(res.status(), 204);
    }
    // The SSE read and the closing append share the one HTTP/2 connection.
    let sse = h2
        .send("GET", "/v1/stream/h2/s?offset=-1&live=sse", &[], "")
        .await
        .expect("sse");
    assert_eq!(sse.status(), 200);
    assert_eq!(
        header(&sse, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let res = h2
        .send("POST", "/v1/stream/h2/s", &[("stream-closed", "true")], "")
        .await
        .expect("close");
    assert_eq!(res.status(), 204);
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), body(sse))
        .await
        .expect("SSE ends once the stream is closed");
    let text = String::from_utf8(text.to_vec()).expect("utf-8");
    assert!(text.contains("event: data"), "{text}");
    assert!(text.contains("alpha beta gamma"), "{text}");
    assert!(text.contains("\"streamClosed\":true"), "{text}");

    let (mut h1, alpn) = Client::tls(server.addr, client_tls(&pki.ca_cert, None, &[b"http/1.1"]))
        .await
        .expect("handshake");
    assert_eq!(alpn.as_deref(), Some(b"http/1.1".as_slice()));
    let res = h1.send("GET", "/healthz", &[], "").await.expect("healthz");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), hyper::Version::HTTP_11);
    server.stop().await.expect("clean stop");
}

/// Whether a client with this identity gets any HTTP answer from the server.
async fn answered(addr: std::net::SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> bool {
    let Ok((mut c, _)) = Client::tls(addr, client_tls(ca, client, &[b"http/1.1"])).await else {
        return false;
    };
    // With TLS 1.3 the client finishes its side before the server checks the certificate, so
    // a refusal can surface on the first request instead.
    c.send("GET", "/healthz", &[], "").await.is_ok()
}

#[tokio::test]
async fn mtls_refuses_missing_and_foreign_client_certificates_during_the_handshake() {
    let (_dir, pki) = pki();
    let server = TestServer::start(tls_config(&pki, "mtls", true)).await;
    assert!(
        !answered(server.addr, &pki.ca_cert, None).await,
        "no certificate"
    );
    assert!(
        !answered(
            server.addr,
            &pki.ca_cert,
            Some((&pki.other_client_cert, &pki.other_client_key))
        )
        .await,
        "certificate from another CA"
    );
    assert!(
        answered(
            server.addr,
            &pki.ca_cert,
            Some((&pki.client_cert, &pki.client_key))
        )
        .await,
        "certificate from the configured client CA"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn tls_min_version_is_enforced() {
    let (_dir, pki) = pki();
    let mut cfg = tls_config(&pki, "tls", false);
    cfg.transport.tls.min_version = "1.3".to_owned();
    let server = TestServer::start(cfg).await;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca_cert).expect("ca");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.expect("pem")).expect("ca cert");
    }
    let tls12_only = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(
        Client::tls(server.addr, std::sync::Arc::new(tls12_only))
            .await
            .is_err(),
        "a TLS 1.2-only client is refused when min_version is 1.3"
    );
    let (mut ok, _) = Client::tls(server.addr, client_tls(&pki.ca_cert, None, &[]))
        .await
        .expect("TLS 1.3 client");
    assert_eq!(
        ok.send("GET", "/healthz", &[], "")
            .await
            .expect("ok")
            .status(),
        200
    );
    server.stop().await.expect("clean stop");
}
