//! The offline commands (`list`, `export`, `import`) against a data dir: refused while a server
//! holds it (naming its PID), and served once it has stopped; streams moved between backends
//! through a transfer file; a damaged file refused.

use std::time::Duration;

use crate::util::{connect, request, run_command, spawn, wait_ready};

#[test]
fn list_in_memory_mode_says_there_is_no_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stdout, stderr) = run_command(dir.path(), &["list"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("storage.mode is memory") && stderr.contains("no data dir to list"),
        "{stderr}"
    );
}

#[test]
fn list_refuses_a_held_data_dir_and_lists_it_once_the_server_stopped() {
    for mode in ["file-durable", "acid"] {
        list_round(mode);
    }
}

fn list_round(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_str = data.to_string_lossy().into_owned();
    let env = [
        ("DS_STORAGE__MODE", mode),
        ("DS_STORAGE__DATA_DIR", data_str.as_str()),
    ];
    let mut server = spawn(dir.path(), &[], &env);
    assert!(server.wait_listening(), "{mode}: {}", server.stderr());
    wait_ready(server.port);
    let put = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let reply = request(&mut connect(server.port), "PUT", path, headers, body).expect("PUT");
        assert_eq!(reply.status, 201, "{mode}: PUT {path}");
    };
    put(
        "/v1/stream/alpha",
        &[("content-type", "text/plain")],
        b"hello",
    );
    put(
        "/v1/stream/beta/events",
        &[("content-type", "application/json"), ("stream-ttl", "3600")],
        b"[1,2]",
    );
    put(
        "/v1/stream/gamma",
        &[("stream-forked-from", "/v1/stream/alpha")],
        b"",
    );

    let (code, stdout, stderr) = run_command(dir.path(), &["list"], &env);
    assert_eq!(code, 1, "{mode}: list while serving: {stdout}{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", server.pid())) && stderr.contains("stop it first"),
        "{mode}: the holder is named: {stderr}"
    );

    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(20)).success(),
        "{mode}: {}",
        server.stderr()
    );

    let (code, table, stderr) = run_command(dir.path(), &["list"], &env);
    assert_eq!(code, 0, "{mode}: {stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME "), "{mode}: {table}");
    assert_eq!(
        lines.len(),
        4,
        "{mode}: three streams, no internal ones:\n{table}"
    );
    let alpha = lines
        .iter()
        .find(|l| l.starts_with("alpha "))
        .expect("alpha");
    assert!(
        alpha.contains("text/plain") && alpha.contains(" 5 "),
        "{mode}: {alpha}"
    );
    let beta = lines
        .iter()
        .find(|l| l.starts_with("beta/events "))
        .expect("beta");
    assert!(beta.contains("ttl 3600s"), "{mode}: {beta}");
    let gamma = lines
        .iter()
        .find(|l| l.starts_with("gamma "))
        .expect("gamma");
    assert!(gamma.ends_with(" alpha"), "{mode}: {gamma}");

    let (code, all, stderr) = run_command(dir.path(), &["list", "--all"], &env);
    assert_eq!(code, 0, "{mode}: {stderr}");
    assert!(all.contains("__ds/keys/webhook-signing"), "{mode}: {all}");

    let (code, json, stderr) = run_command(dir.path(), &["list", "--json"], &env);
    assert_eq!(code, 0, "{mode}: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["alpha", "beta/events", "gamma"], "{mode}");
    assert_eq!(v[0]["bytes"], 5, "{mode}");
    assert_eq!(v[1]["ttl_secs"], 3600, "{mode}");
    assert_eq!(v[2]["forked_from"], "alpha", "{mode}");
}

/// Serves `data` in `mode` until the returned server is stopped.
fn serve(cwd: &std::path::Path, env: &[(&str, &str)]) -> crate::util::Server {
    let mut server = spawn(cwd, &[], env);
    assert!(server.wait_listening(), "{}", server.stderr());
    wait_ready(server.port);
    server
}

fn stop(server: &mut crate::util::Server) {
    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        server.stderr()
    );
}

/// What a client sees of a whole stream: status, `Stream-Next-Offset`, `Stream-Closed`, body.
type Seen = (u16, Option<String>, Option<String>, Vec<u8>);

/// GET of the whole stream.
fn get_all(port: u16, path: &str) -> Seen {
    let reply = request(
        &mut connect(port),
        "GET",
        &format!("{path}?offset=-1"),
        &[],
        b"",
    )
    .expect("GET");
    (
        reply.status,
        reply.header("stream-next-offset").map(str::to_owned),
        reply.header("stream-closed").map(str::to_owned),
        reply.body,
    )
}

/// The streams the round-trip test moves: a byte stream written by an idempotent producer, a
/// JSON stream with a TTL, and a closed fork of the first. Returns what a client reads of each
/// (in the order of [`PATHS`]).
fn populate_over_http(port: u16) -> Vec<Seen> {
    let send = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let reply = request(&mut connect(port), method, path, headers, body).expect("request");
        assert!(reply.status < 300, "{method} {path}: {}", reply.status);
    };
    send(
        "PUT",
        "/v1/stream/orders",
        &[("content-type", "text/plain")],
        b"",
    );
    for (seq, body) in [(0, "one "), (1, "two "), (2, "three")] {
        let seq = seq.to_string();
        send(
            "POST",
            "/v1/stream/orders",
            &[
                ("content-type", "text/plain"),
                ("producer-id", "writer"),
                ("producer-epoch", "1"),
                ("producer-seq", seq.as_str()),
            ],
            body.as_bytes(),
        );
    }
    send(
        "PUT",
        "/v1/stream/events",
        &[("content-type", "application/json"), ("stream-ttl", "3600")],
        b"[{\"a\":1},[2,3]]",
    );
    send(
        "PUT",
        "/v1/stream/orders-fork",
        &[("stream-forked-from", "/v1/stream/orders")],
        b"",
    );
    send(
        "POST",
        "/v1/stream/orders-fork",
        &[("content-type", "text/plain"), ("stream-closed", "true")],
        b" and a fork",
    );
    PATHS.iter().map(|p| get_all(port, p)).collect()
}

/// The streams of the round-trip test.
const PATHS: [&str; 3] = [
    "/v1/stream/orders",
    "/v1/stream/events",
    "/v1/stream/orders-fork",
];

#[test]
fn export_from_file_durable_and_import_into_acid_keep_streams_offsets_and_producers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    let (old_s, new_s) = (
        old.to_string_lossy().into_owned(),
        new.to_string_lossy().into_owned(),
    );
    let file = dir.path().join("streams.dsx");
    let file_s = file.to_string_lossy().into_owned();
    let old_env = [
        ("DS_STORAGE__MODE", "file-durable"),
        ("DS_STORAGE__DATA_DIR", old_s.as_str()),
    ];
    let new_env = [
        ("DS_STORAGE__MODE", "acid"),
        ("DS_STORAGE__DATA_DIR", new_s.as_str()),
    ];

    let mut server = serve(dir.path(), &old_env);
    let before = populate_over_http(server.port);
    let (code, _, stderr) = run_command(dir.path(), &["export", "-o", &file_s], &old_env);
    assert_eq!(code, 1, "export while serving: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", server.pid())),
        "the holder is named: {stderr}"
    );
    assert!(!file.exists(), "no file written");
    stop(&mut server);

    let (code, _, stderr) = run_command(dir.path(), &["export", "-o", &file_s], &old_env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("exported 3 stream(s)"), "{stderr}");
    assert!(!dir.path().join("streams.dsx.partial").exists());

    let (code, _, stderr) = run_command(dir.path(), &["import", "-i", &file_s], &new_env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("imported 3 stream(s)"), "{stderr}");
    let (_, old_list, _) = run_command(dir.path(), &["list", "--json"], &old_env);
    let (_, new_list, _) = run_command(dir.path(), &["list", "--json"], &new_env);
    assert_eq!(
        old_list, new_list,
        "same names, types, sizes, offsets, expiry, forks"
    );

    // A second import refuses (`fail` is the default) and changes nothing; `skip` keeps all.
    let (code, _, stderr) = run_command(dir.path(), &["import", "-i", &file_s], &new_env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = run_command(
        dir.path(),
        &["import", "-i", &file_s, "--on-conflict", "skip"],
        &new_env,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("skipped 3 existing"), "{stderr}");

    let server = serve(dir.path(), &new_env);
    let after: Vec<_> = PATHS.iter().map(|p| get_all(server.port, p)).collect();
    assert_eq!(before, after, "same bytes, tails and closure");
    // The producer's retry is still a duplicate, and its next seq is accepted.
    let post = |seq: &str, body: &[u8]| {
        request(
            &mut connect(server.port),
            "POST",
            "/v1/stream/orders",
            &[
                ("content-type", "text/plain"),
                ("producer-id", "writer"),
                ("producer-epoch", "1"),
                ("producer-seq", seq),
            ],
            body,
        )
        .expect("POST")
    };
    let retry = post("2", b"three");
    assert_eq!(retry.status, 204, "duplicate");
    assert_eq!(
        get_all(server.port, "/v1/stream/orders").3,
        b"one two three"
    );
    assert_eq!(post("3", b"!").status, 200);
    let mut server = server;
    stop(&mut server);
}

#[test]
fn a_damaged_export_is_refused_naming_stream_and_byte_and_imports_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let (src_s, dst_s) = (
        src.to_string_lossy().into_owned(),
        dst.to_string_lossy().into_owned(),
    );
    let src_env = [
        ("DS_STORAGE__MODE", "acid"),
        ("DS_STORAGE__DATA_DIR", src_s.as_str()),
    ];
    let dst_env = [
        ("DS_STORAGE__MODE", "file-durable"),
        ("DS_STORAGE__DATA_DIR", dst_s.as_str()),
    ];
    let mut server = serve(dir.path(), &src_env);
    for name in ["a", "b"] {
        let reply = request(
            &mut connect(server.port),
            "PUT",
            &format!("/v1/stream/{name}"),
            &[("content-type", "text/plain")],
            format!("the data of stream {name}").as_bytes(),
        )
        .expect("PUT");
        assert_eq!(reply.status, 201);
    }
    stop(&mut server);
    let file = dir.path().join("x.dsx");
    let file_s = file.to_string_lossy().into_owned();
    let (code, _, stderr) = run_command(dir.path(), &["export", "-o", &file_s], &src_env);
    assert_eq!(code, 0, "{stderr}");
    let bytes = std::fs::read(&file).expect("read export");

    let at = bytes
        .windows(16)
        .position(|w| w == b"data of stream b")
        .expect("b's data");
    let mut corrupt = bytes.clone();
    corrupt[at] ^= 1;
    std::fs::write(&file, &corrupt).expect("write");
    let (code, _, stderr) = run_command(dir.path(), &["import", "-i", &file_s], &dst_env);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("stream `b`, at byte ") && stderr.contains("checksum mismatch"),
        "{stderr}"
    );

    std::fs::write(&file, &bytes[..at]).expect("write");
    let (code, _, stderr) = run_command(dir.path(), &["import", "-i", &file_s], &dst_env);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("stream `b`, at byte {at}")) && stderr.contains("truncated"),
        "{stderr}"
    );

    let (code, list, stderr) = run_command(dir.path(), &["list", "--json"], &dst_env);
    assert!(code == 0 || stderr.contains("does not exist"), "{stderr}");
    assert!(code != 0 || list.trim() == "[]", "nothing imported: {list}");
}
