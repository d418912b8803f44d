//! Each startup phase fails with its name in brackets and its own exit code.

use std::fs;

use ds_server::testsupport::TestPki;

use crate::util::run_to_exit;

fn expect_phase(result: (i32, String), phase: &str, code: i32) {
    let (got, stderr) = result;
    assert!(
        stderr.contains(&format!("error: [{phase}]")),
        "expected [{phase}] in stderr:\n{stderr}"
    );
    assert_eq!(got, code, "exit code of [{phase}]; stderr:\n{stderr}");
}

#[test]
fn load_config_failures_exit_10() {
    let dir = tempfile::tempdir().expect("tempdir");
    expect_phase(
        run_to_exit(dir.path(), &["--config", "missing.toml"], &[]),
        "load_config",
        10,
    );
    fs::write(dir.path().join("bad.toml"), "[server\nbind_address = 1").expect("write");
    expect_phase(
        run_to_exit(dir.path(), &["--config", "bad.toml"], &[]),
        "load_config",
        10,
    );
    expect_phase(
        run_to_exit(dir.path(), &[], &[("DS_TRANSPORT__MODE", "quic")]),
        "load_config",
        10,
    );
    expect_phase(
        run_to_exit(dir.path(), &["--profile", "staging"], &[]),
        "load_config",
        10,
    );
}

#[test]
fn validate_config_failures_exit_11() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = run_to_exit(
        dir.path(),
        &[],
        &[("DS_TRANSPORT__HTTP__VERSIONS", "http1,http2")],
    );
    expect_phase((code, stderr.clone()), "validate_config", 11);
    assert!(stderr.contains("transport.http.versions"), "{stderr}");
    expect_phase(
        run_to_exit(dir.path(), &[], &[("DS_PROXY__ENABLED", "true")]),
        "validate_config",
        11,
    );
}

#[test]
fn check_tls_files_failures_exit_12() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = run_to_exit(
        dir.path(),
        &[],
        &[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__CERT_PATH", "/nonexistent/server.crt"),
            ("DS_TRANSPORT__TLS__KEY_PATH", "/nonexistent/server.key"),
        ],
    );
    expect_phase((code, stderr.clone()), "check_tls_files", 12);
    assert!(stderr.contains("transport.tls.cert_path"), "{stderr}");
    // A directory is not a certificate file.
    let (_, stderr) = run_to_exit(
        dir.path(),
        &[],
        &[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__CERT_PATH", "."),
            ("DS_TRANSPORT__TLS__KEY_PATH", "."),
        ],
    );
    assert!(stderr.contains("is a directory"), "{stderr}");
}

#[test]
fn build_tls_context_failures_exit_13() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::write(&dir.path().join("pki")).expect("pki");
    fs::write(dir.path().join("garbage.crt"), "not a certificate\n").expect("write");
    let garbage = dir.path().join("garbage.crt");
    let key = pki.server_key.to_string_lossy().into_owned();
    let (code, stderr) = run_to_exit(
        dir.path(),
        &[],
        &[
            ("DS_TRANSPORT__MODE", "tls"),
            (
                "DS_TRANSPORT__TLS__CERT_PATH",
                garbage.to_str().expect("utf-8"),
            ),
            ("DS_TRANSPORT__TLS__KEY_PATH", &key),
        ],
    );
    expect_phase((code, stderr.clone()), "build_tls_context", 13);
    assert!(stderr.contains("certificate chain is empty"), "{stderr}");
    // A key that does not belong to the certificate.
    let cert = pki.server_cert.to_string_lossy().into_owned();
    let wrong_key = pki.client_key.to_string_lossy().into_owned();
    expect_phase(
        run_to_exit(
            dir.path(),
            &[],
            &[
                ("DS_TRANSPORT__MODE", "tls"),
                ("DS_TRANSPORT__TLS__CERT_PATH", &cert),
                ("DS_TRANSPORT__TLS__KEY_PATH", &wrong_key),
            ],
        ),
        "build_tls_context",
        13,
    );
}

#[test]
fn bind_listener_failure_exits_14() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = run_to_exit(dir.path(), &[], &[("DS_SERVER__BIND_ADDRESS", &addr)]);
    expect_phase((code, stderr.clone()), "bind_listener", 14);
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn start_server_failure_exits_15() {
    // The storage directory is a regular file, so no durable backend can open it.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("not-a-dir"), "x").expect("write");
    let (code, stderr) = run_to_exit(
        dir.path(),
        &[],
        &[
            ("DS_STORAGE__MODE", "file-durable"),
            ("DS_STORAGE__DATA_DIR", "not-a-dir/streams"),
        ],
    );
    expect_phase((code, stderr), "start_server", 15);
}
