//! The seed README's command lines, run against the binary. TOML examples that need real
//! paths get the throwaway certificates and a temporary data directory instead of `/etc` and
//! `/var/lib`. Durable modes are exercised as soon as `backend.rs` opens them; until then these
//! tests say so on stderr and check the rest of the example.

use std::path::Path;
use std::time::Duration;

use ds_server::testsupport::TestPki;

use crate::util::{Server, connect, connect_tls, request, spawn, tls_client, wait_ready};

/// Starts an example and waits until it listens.
fn start_example(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut server = spawn(cwd, args, env);
    assert!(
        server.wait_listening(),
        "example {args:?} {env:?} failed:\n{}",
        server.stderr()
    );
    server
}

fn stop(mut server: Server) {
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "clean exit; stderr:\n{}", server.stderr());
}

/// Creates `name`, appends `data`, reads it back over plain HTTP.
fn round_trip(port: u16, base: &str, name: &str, data: &str) {
    let mut s = connect(port);
    let path = format!("{base}/{name}");
    let r = request(&mut s, "PUT", &path, &[("content-type", "text/plain")], b"").expect("create");
    assert!(r.status == 201 || r.status == 200, "create: {r:?}");
    let r = request(
        &mut s,
        "POST",
        &path,
        &[("content-type", "text/plain")],
        data.as_bytes(),
    )
    .expect("append");
    assert_eq!(r.status, 204, "append: {r:?}");
    read_back(port, &path, data);
}

fn read_back(port: u16, path: &str, data: &str) {
    let mut s = connect(port);
    let r = request(&mut s, "GET", &format!("{path}?offset=-1"), &[], b"").expect("read");
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains(data),
        "read back {data:?}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn default_run_serves_health_checks_and_the_protocol_at_v1_stream() {
    // `cargo run -p durable-streams-server` (on a free port instead of 4437).
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(dir.path(), &[], &[]);
    wait_ready(server.port);
    let stderr = server.stderr();
    assert!(
        stderr.contains(&format!("listening on http://127.0.0.1:{}", server.port)),
        "{stderr}"
    );
    for part in [
        "profile:    default",
        "transport:  http (HTTP versions: http1)",
        "storage:    memory",
        "/v1/stream",
    ] {
        assert!(stderr.contains(part), "summary has {part:?}:\n{stderr}");
    }
    let mut s = connect(server.port);
    assert_eq!(
        request(&mut s, "GET", "/healthz", &[], b"")
            .expect("healthz")
            .status,
        200
    );
    round_trip(server.port, "/v1/stream", "hello", "world");
    stop(server);
}

#[test]
fn stream_base_path_moves_the_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(
        dir.path(),
        &[],
        &[("DS_HTTP__STREAM_BASE_PATH", "/streams")],
    );
    wait_ready(server.port);
    round_trip(server.port, "/streams", "moved", "here");
    stop(server);
}

#[test]
fn profile_dev_runs_over_plain_http() {
    // `cargo run -p durable-streams-server -- --profile dev`
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(dir.path(), &["--profile", "dev"], &[]);
    wait_ready(server.port);
    assert!(
        server.stderr().contains("profile:    dev"),
        "{}",
        server.stderr()
    );
    round_trip(server.port, "/v1/stream", "dev", "data");
    stop(server);
}

#[test]
fn durable_modes_from_the_environment_persist_across_restarts() {
    // `DS_STORAGE__MODE=file-durable DS_STORAGE__DATA_DIR=./data cargo run ...`, the acid
    // variant, and the dev-profile variant.
    let cases: &[(&[&str], &str)] = &[
        (&[], "file-durable"),
        (&[], "acid"),
        (&["--profile", "dev"], "file-durable"),
    ];
    for (args, mode) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = [
            ("DS_STORAGE__MODE", *mode),
            ("DS_STORAGE__DATA_DIR", "./data"),
        ];
        let server = start_example(dir.path(), args, &env);
        wait_ready(server.port);
        round_trip(server.port, "/v1/stream", "kept", "across restarts");
        stop(server);
        assert!(dir.path().join("data").is_dir(), "{mode} wrote ./data");
        let server = start_example(dir.path(), args, &env);
        wait_ready(server.port);
        read_back(server.port, "/v1/stream/kept", "across restarts");
        stop(server);
    }
}

#[test]
fn profile_prod_runs_with_durable_storage() {
    // `cargo run -p durable-streams-server -- --profile prod` (data under a temp dir).
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("var-lib");
    let data = data.to_str().expect("utf-8");
    let server = start_example(
        dir.path(),
        &["--profile", "prod"],
        &[("DS_STORAGE__DATA_DIR", data)],
    );
    wait_ready(server.port);
    assert!(server.stderr().contains("storage:    file-durable"));
    stop(server);
}

/// A path as a quoted TOML string.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The seed's "Direct TLS" / "Direct mTLS" example config, with test paths.
fn seed_tls_toml(pki: &TestPki, data: &Path, mtls: bool) -> String {
    let client_ca = if mtls {
        format!("client_ca_path = {}\n", toml_path(&pki.ca_cert))
    } else {
        String::new()
    };
    format!(
        r#"[storage]
mode = "file-durable"
data_dir = {data}

[limits]
max_memory_bytes = 536870912
max_stream_bytes = 268435456

[transport]
mode = "{mode}"

[transport.http]
versions = ["http1", "http2"]

[transport.tls]
cert_path = {cert}
key_path = {key}
{client_ca}min_version = "1.2"
max_version = "1.3"
alpn_protocols = ["http/1.1", "h2"]
"#,
        mode = if mtls { "mtls" } else { "tls" },
        data = toml_path(data),
        cert = toml_path(&pki.server_cert),
        key = toml_path(&pki.server_key),
    )
}

/// Runs a TLS example as written (durable storage included).
fn start_tls_example(dir: &Path, profile: &str) -> Server {
    let args = ["--profile", profile, "--config", "server.toml"];
    start_example(dir, &args, &[])
}

#[test]
fn prod_tls_with_the_seed_config_serves_https_with_h2_and_http1() {
    // `cargo run -p durable-streams-server -- --profile prod-tls --config /etc/durable-streams/server.toml`
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::write(&dir.path().join("tls")).expect("pki");
    std::fs::write(
        dir.path().join("server.toml"),
        seed_tls_toml(&pki, &dir.path().join("data"), false),
    )
    .expect("write");
    let server = start_tls_example(dir.path(), "prod-tls");
    let stderr = server.stderr();
    assert!(stderr.contains("listening on https://"), "{stderr}");
    assert!(stderr.contains("ALPN http/1.1, h2"), "{stderr}");
    let h2 = connect_tls(
        server.port,
        tls_client(&pki.ca_cert, None, &[b"h2", b"http/1.1"]),
    )
    .expect("handshake");
    assert_eq!(
        h2.conn.alpn_protocol(),
        Some(b"h2".as_slice()),
        "h2 by ALPN"
    );
    let mut h1 = connect_tls(server.port, tls_client(&pki.ca_cert, None, &[b"http/1.1"]))
        .expect("handshake");
    let r = request(&mut h1, "GET", "/healthz", &[], b"").expect("healthz");
    assert_eq!(r.status, 200);
    let r = request(
        &mut h1,
        "PUT",
        "/v1/stream/tls",
        &[("content-type", "text/plain")],
        b"",
    )
    .expect("create");
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("location"),
        Some("https://localhost/v1/stream/tls")
    );
    stop(server);
}

#[test]
fn prod_mtls_with_the_seed_config_requires_client_certificates() {
    // `cargo run -p durable-streams-server -- --profile prod-mtls --config /etc/durable-streams/server.toml`
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::write(&dir.path().join("tls")).expect("pki");
    std::fs::write(
        dir.path().join("server.toml"),
        seed_tls_toml(&pki, &dir.path().join("data"), true),
    )
    .expect("write");
    let server = start_tls_example(dir.path(), "prod-mtls");
    assert!(server.stderr().contains("client certificates required"));
    let refused = connect_tls(server.port, tls_client(&pki.ca_cert, None, &[b"http/1.1"]))
        .and_then(|mut s| request(&mut s, "GET", "/healthz", &[], b""));
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let mut ok = connect_tls(
        server.port,
        tls_client(
            &pki.ca_cert,
            Some((&pki.client_cert, &pki.client_key)),
            &[b"http/1.1"],
        ),
    )
    .expect("handshake");
    assert_eq!(
        request(&mut ok, "GET", "/healthz", &[], b"")
            .expect("ok")
            .status,
        200
    );
    stop(server);
}
