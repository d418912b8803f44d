//! The offline commands (`list`) against a data dir: refused while a server holds it (naming
//! its PID), and served once it has stopped.

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
