//! Every TOML example of the seed README loads (or fails) as the README says.

use std::collections::HashMap;
use std::path::Path;

use ds_server::config::{
    ConfigError, DeploymentProfile, ForwardedHeaders, IdentityMode, TransportMode,
};
use ds_server::{Config, ConfigLoadOptions, StorageMode};

fn load(profile: DeploymentProfile, toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_profile(profile, toml)
}

const SCHEMA: &str = r#"
[server]
bind_address = "0.0.0.0:4437"
[limits]
max_memory_bytes = 104857600
max_stream_bytes = 10485760
[http]
cors_origins = "*"
stream_base_path = "/v1/stream"
[storage]
mode = "memory"
data_dir = "./data/streams"
[transport]
mode = "http" # http | tls | mtls
[transport.http]
versions = ["http1"] # http1 | http2
[transport.connection]
long_poll_timeout_secs = 30
sse_reconnect_interval_secs = 60
[transport.tls]
min_version = "1.2"
max_version = "1.3"
alpn_protocols = ["http/1.1"]
[proxy]
enabled = false
forwarded_headers = "none" # none | x-forwarded | forwarded
trusted_proxies = []
[proxy.identity]
mode = "none" # none | header
require_tls = true
[observability]
rust_log = "info"
"#;

#[test]
fn the_effective_schema_example_loads_as_the_defaults() {
    let cfg = load(DeploymentProfile::Default, SCHEMA).expect("schema example");
    let mut defaults = Config::default();
    defaults.limits.max_stream_bytes = Some(10_485_760);
    assert_eq!(cfg, defaults);
}

const DIRECT_TLS: &str = r#"
[storage]
mode = "file-durable"
data_dir = "/var/lib/durable-streams"
[limits]
max_memory_bytes = 536870912
max_stream_bytes = 268435456
[transport]
mode = "tls"
[transport.http]
versions = ["http1", "http2"]
[transport.tls]
cert_path = "/etc/durable-streams/tls/server.crt"
key_path = "/etc/durable-streams/tls/server.key"
min_version = "1.2"
max_version = "1.3"
alpn_protocols = ["http/1.1", "h2"]
"#;

const DIRECT_MTLS: &str = r#"
[storage]
mode = "file-durable"
data_dir = "/var/lib/durable-streams"
[limits]
max_memory_bytes = 536870912
max_stream_bytes = 268435456
[transport]
mode = "mtls"
[transport.http]
versions = ["http1", "http2"]
[transport.tls]
cert_path = "/etc/durable-streams/tls/server.crt"
key_path = "/etc/durable-streams/tls/server.key"
client_ca_path = "/etc/durable-streams/tls/client-ca.crt"
min_version = "1.2"
max_version = "1.3"
alpn_protocols = ["http/1.1", "h2"]
"#;

#[test]
fn the_direct_tls_and_mtls_examples_load_under_their_profiles() {
    let tls = load(DeploymentProfile::ProdTls, DIRECT_TLS).expect("tls example");
    assert_eq!(tls.transport.mode, TransportMode::Tls);
    assert_eq!(tls.storage.mode, StorageMode::FileDurable);
    assert_eq!(tls.limits.max_stream_bytes, Some(268_435_456));
    let mtls = load(DeploymentProfile::ProdMtls, DIRECT_MTLS).expect("mtls example");
    assert_eq!(mtls.transport.mode, TransportMode::Mtls);
    assert_eq!(
        mtls.transport.tls.client_ca_path.as_deref(),
        Some(Path::new("/etc/durable-streams/tls/client-ca.crt"))
    );
}

#[test]
fn the_reverse_proxy_examples_load() {
    let edge_http = load(
        DeploymentProfile::Default,
        "[transport]\nmode = \"http\"\n[proxy]\nenabled = true\nforwarded_headers = \"x-forwarded\"\ntrusted_proxies = [\"10.0.0.0/24\"]\n",
    )
    .expect("edge TLS, backend HTTP");
    assert_eq!(
        edge_http.proxy.forwarded_headers,
        ForwardedHeaders::XForwarded
    );

    let edge_mtls = load(
        DeploymentProfile::ProdMtls,
        r#"
[transport]
mode = "mtls"
[transport.http]
versions = ["http1", "http2"]
[transport.tls]
cert_path = "/etc/durable-streams/tls/server.crt"
key_path = "/etc/durable-streams/tls/server.key"
client_ca_path = "/etc/durable-streams/tls/proxy-ca.crt"
alpn_protocols = ["http/1.1", "h2"]
[proxy]
enabled = true
forwarded_headers = "forwarded"
trusted_proxies = ["10.0.10.15/32", "10.0.10.16/32"]
[proxy.identity]
mode = "header"
header_name = "x-client-identity"
require_tls = true
"#,
    )
    .expect("edge TLS, backend mTLS");
    assert_eq!(edge_mtls.proxy.identity.mode, IdentityMode::Header);
    // The same identity hand-off outside mtls is refused.
    let err = load(
        DeploymentProfile::Default,
        "[proxy]\nenabled = true\ntrusted_proxies = [\"10.0.10.15/32\"]\n[proxy.identity]\nmode = \"header\"\nheader_name = \"x-client-identity\"\n",
    )
    .expect_err("identity needs mtls");
    assert!(matches!(err, ConfigError::Invalid(m) if m.contains("mtls")));
}

#[test]
fn the_http_version_policy_holds() {
    let tls = "[transport]\nmode = \"tls\"\n[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n";
    // tls: http1 alone, or http1 + http2 with matching ALPN (the README's snippet).
    load(DeploymentProfile::Default, tls).expect("http1 over tls");
    load(
        DeploymentProfile::Default,
        &format!("{tls}alpn_protocols = [\"http/1.1\", \"h2\"]\n[transport.http]\nversions = [\"http1\", \"http2\"]\n"),
    )
    .expect("http1 + http2 over tls");
    // http: http1 only.
    assert!(
        load(
            DeploymentProfile::Default,
            "[transport.http]\nversions = [\"http1\", \"http2\"]\n"
        )
        .is_err()
    );
    // http3: rejected at validation time.
    let err = load(
        DeploymentProfile::Default,
        "[transport.http]\nversions = [\"http3\"]\n",
    )
    .expect_err("http3");
    assert!(matches!(err, ConfigError::Invalid(m) if m.contains("not implemented")));
}

#[test]
fn the_legacy_migration_example_maps_before_to_after() {
    let before = load(
        DeploymentProfile::Default,
        "[server]\nport = 4437\n[tls]\ncert_path = \"/etc/ds/server.crt\"\nkey_path = \"/etc/ds/server.key\"\n[log]\nrust_log = \"info\"\n",
    )
    .expect("legacy config still loads");
    assert!(!before.deprecations.is_empty());
    let after = load(
        DeploymentProfile::Default,
        r#"
[server]
bind_address = "0.0.0.0:4437"
[transport]
mode = "tls"
[transport.http]
versions = ["http1", "http2"]
[transport.tls]
cert_path = "/etc/ds/server.crt"
key_path = "/etc/ds/server.key"
alpn_protocols = ["http/1.1", "h2"]
[observability]
rust_log = "info"
"#,
    )
    .expect("migrated config");
    assert!(after.deprecations.is_empty());
    assert_eq!(before.server.bind_address, after.server.bind_address);
    assert_eq!(before.transport.mode, after.transport.mode);
    assert_eq!(
        before.transport.tls.cert_path,
        after.transport.tls.cert_path
    );
    assert_eq!(before.transport.tls.key_path, after.transport.tls.key_path);
    assert_eq!(before.observability.rust_log, after.observability.rust_log);
}

#[test]
fn the_readme_env_variables_map_to_their_toml_paths() {
    let vars: HashMap<String, String> = [
        ("DS_SERVER__BIND_ADDRESS", "127.0.0.1:9999"),
        ("DS_OBSERVABILITY__RUST_LOG", "debug"),
        ("DS_STORAGE__MODE", "acid"),
        ("DS_STORAGE__DATA_DIR", "/srv/ds"),
        ("DS_TRANSPORT__MODE", "mtls"),
        ("DS_TRANSPORT__TLS__CERT_PATH", "/c"),
        ("DS_TRANSPORT__TLS__KEY_PATH", "/k"),
        ("DS_TRANSPORT__TLS__CLIENT_CA_PATH", "/ca"),
        ("DS_TRANSPORT__HTTP__VERSIONS", "http1,http2"),
        ("DS_TRANSPORT__TLS__ALPN_PROTOCOLS", "http/1.1,h2"),
        ("DS_PROXY__ENABLED", "true"),
        ("DS_PROXY__FORWARDED_HEADERS", "forwarded"),
        ("DS_PROXY__TRUSTED_PROXIES", "10.0.10.15/32,10.0.10.16/32"),
        ("DS_PROXY__IDENTITY__MODE", "header"),
        ("DS_PROXY__IDENTITY__HEADER_NAME", "x-client-identity"),
        ("DS_PROXY__IDENTITY__REQUIRE_TLS", "true"),
        ("DS_LIMITS__MAX_STREAM_BYTES", "1234"),
        ("DS_STORAGE__ACID_SHARD_COUNT", "8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config::load(&ConfigLoadOptions {
        config_dir: Some(dir.path().to_path_buf()),
        env: Some(vars),
        ..ConfigLoadOptions::default()
    })
    .expect("env-only config");
    assert_eq!(cfg.server.bind_address, "127.0.0.1:9999");
    assert_eq!(cfg.observability.rust_log, "debug");
    assert_eq!(cfg.storage.mode, StorageMode::Acid);
    assert_eq!(cfg.transport.mode, TransportMode::Mtls);
    assert_eq!(
        cfg.transport.tls.client_ca_path.as_deref(),
        Some(Path::new("/ca"))
    );
    assert_eq!(cfg.proxy.trusted_proxies.len(), 2);
    assert_eq!(
        cfg.proxy.identity.header_name.as_deref(),
        Some("x-client-identity")
    );
    assert_eq!(cfg.limits.max_stream_bytes, Some(1234));
    assert_eq!(cfg.storage.acid_shard_count, Some(8));
}

#[test]
fn the_shipped_example_files_load_for_their_profiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    for profile in DeploymentProfile::ALL {
        let path = dir.join(format!("{}.toml", profile.as_str()));
        assert!(path.is_file(), "config/{}.toml ships", profile.as_str());
        let mut env: HashMap<String, String> = HashMap::new();
        if matches!(
            profile,
            DeploymentProfile::ProdTls | DeploymentProfile::ProdMtls
        ) {
            env.insert("DS_TRANSPORT__TLS__CERT_PATH".into(), "/c".into());
            env.insert("DS_TRANSPORT__TLS__KEY_PATH".into(), "/k".into());
        }
        if profile == DeploymentProfile::ProdMtls {
            env.insert("DS_TRANSPORT__TLS__CLIENT_CA_PATH".into(), "/ca".into());
        }
        let cfg = Config::load(&ConfigLoadOptions {
            profile,
            config_dir: Some(dir.clone()),
            env: Some(env),
            ..ConfigLoadOptions::default()
        })
        .unwrap_or_else(|e| panic!("config/{}.toml: {e}", profile.as_str()));
        assert_eq!(cfg.profile, profile);
    }
}
