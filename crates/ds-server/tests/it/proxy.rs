//! Reverse-proxy trust over a real socket: forwarded metadata from a trusted peer shapes the
//! `Location` of a `201`; from an untrusted peer it is ignored. Both header styles.

use ds_server::Config;

use crate::net::{Client, TestServer, header};

fn proxy_config(style: &str, trusted: &str) -> Config {
    Config::from_toml(&format!(
        "[proxy]\nenabled = true\nforwarded_headers = \"{style}\"\ntrusted_proxies = [\"{trusted}\"]\n"
    ))
    .expect("valid proxy config")
}

async fn location(server: &TestServer, name: &str, headers: &[(&str, &str)]) -> String {
    let mut client = Client::plain(server.addr).await;
    let mut all = vec![
        ("content-type", "text/plain"),
        ("host", "backend.internal:4437"),
    ];
    all.extend_from_slice(headers);
    let res = client
        .send("PUT", &format!("/v1/stream/{name}"), &all, "")
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    header(&res, "location").expect("location")
}

const X_FORWARDED: &[(&str, &str)] = &[
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "streams.example.com"),
];
const FORWARDED: &[(&str, &str)] = &[(
    "forwarded",
    "for=203.0.113.7;proto=https;host=\"edge.example:8443\"",
)];

#[tokio::test]
async fn x_forwarded_headers_are_honoured_only_from_trusted_peers() {
    let trusted = TestServer::start(proxy_config("x-forwarded", "127.0.0.1/32")).await;
    assert_eq!(
        location(&trusted, "xf1", X_FORWARDED).await,
        "https://streams.example.com/v1/stream/xf1"
    );
    // The other style is not read in this mode.
    assert_eq!(
        location(&trusted, "xf2", FORWARDED).await,
        "http://backend.internal:4437/v1/stream/xf2"
    );
    trusted.stop().await.expect("stop");

    let untrusted = TestServer::start(proxy_config("x-forwarded", "10.0.0.0/8")).await;
    assert_eq!(
        location(&untrusted, "xf3", X_FORWARDED).await,
        "http://backend.internal:4437/v1/stream/xf3"
    );
    untrusted.stop().await.expect("stop");
}

#[tokio::test]
async fn rfc7239_forwarded_is_honoured_only_from_trusted_peers() {
    let trusted = TestServer::start(proxy_config("forwarded", "127.0.0.0/8")).await;
    assert_eq!(
        location(&trusted, "f1", FORWARDED).await,
        "https://edge.example:8443/v1/stream/f1"
    );
    assert_eq!(
        location(&trusted, "f2", X_FORWARDED).await,
        "http://backend.internal:4437/v1/stream/f2"
    );
    trusted.stop().await.expect("stop");

    let untrusted = TestServer::start(proxy_config("forwarded", "192.0.2.10")).await;
    assert_eq!(
        location(&untrusted, "f3", FORWARDED).await,
        "http://backend.internal:4437/v1/stream/f3"
    );
    untrusted.stop().await.expect("stop");
}

#[tokio::test]
async fn proxy_disabled_ignores_forwarded_headers() {
    let server = TestServer::start(Config::default()).await;
    assert_eq!(
        location(&server, "d1", X_FORWARDED).await,
        "http://backend.internal:4437/v1/stream/d1"
    );
    server.stop().await.expect("stop");
}
