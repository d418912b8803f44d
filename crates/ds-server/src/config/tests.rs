use std::collections::HashMap;
use std::fs;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_in(
    dir: &Path,
    profile: DeploymentProfile,
    vars: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    Config::load(&ConfigLoadOptions {
        profile,
        config_dir: Some(dir.to_path_buf()),
        config_file: None,
        ignore_env: false,
        env: Some(env(vars)),
    })
}

fn invalid(text: &str) -> String {
    match Config::from_toml(text) {
        Err(ConfigError::Invalid(m)) => m,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn defaults_match_the_seed() {
    let cfg = Config::default();
    assert_eq!(cfg.server.bind_address, "0.0.0.0:4437");
    assert_eq!(cfg.http.stream_base_path, "/v1/stream");
    assert_eq!(cfg.storage.mode, StorageMode::Memory);
    assert_eq!(cfg.transport.connection.long_poll_timeout_secs, 30);
    assert_eq!(cfg.limits.max_memory_bytes, 104_857_600);
    assert_eq!(
        cfg.limits.effective_max_stream_bytes(StorageMode::Memory),
        Some(10_485_760)
    );
    assert_eq!(
        cfg.limits
            .effective_max_stream_bytes(StorageMode::FileDurable),
        None
    );
    cfg.validate().expect("defaults are valid");
}

#[test]
fn toml_uses_the_seed_key_names() {
    let cfg = Config::from_toml(
        r#"
        [server]
        bind_address = "127.0.0.1:9000"
        [storage]
        mode = "file-durable"
        data_dir = "/tmp/x"
        [transport.connection]
        long_poll_timeout_secs = 1
        "#,
    )
    .expect("valid");
    assert_eq!(cfg.server.bind_address, "127.0.0.1:9000");
    assert_eq!(cfg.storage.mode, StorageMode::FileDurable);
    assert_eq!(cfg.transport.connection.long_poll_timeout_secs, 1);
}

#[test]
fn invalid_values_are_rejected_with_the_key_name() {
    assert!(invalid("[server]\nbind_address = \"nope\"").contains("server.bind_address"));
    assert!(invalid("[http]\nstream_base_path = \"v1/\"").contains("http.stream_base_path"));
    let err = Config::from_toml("[storage]\nmode = \"tape\"").expect_err("invalid");
    assert!(matches!(err, ConfigError::Load(_)));
}

#[test]
fn every_profile_resolves_and_validates_with_its_tls_paths() {
    for profile in DeploymentProfile::ALL {
        let paths = match profile {
            DeploymentProfile::ProdTls => "[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n",
            DeploymentProfile::ProdMtls => {
                "[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\nclient_ca_path = \"ca\"\n"
            }
            _ => "",
        };
        let cfg = Config::from_toml_with_profile(profile, paths)
            .unwrap_or_else(|e| panic!("{profile}: {e}"));
        assert_eq!(cfg.profile, profile);
        assert_eq!(
            profile.as_str().parse::<DeploymentProfile>().expect("name"),
            profile
        );
    }
    let tls = Config::from_toml_with_profile(
        DeploymentProfile::ProdTls,
        "[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n",
    )
    .expect("valid");
    assert_eq!(tls.transport.mode, TransportMode::Tls);
    assert_eq!(tls.transport.http.versions, ["http1", "http2"]);
    assert_eq!(tls.transport.tls.alpn_protocols, ["http/1.1", "h2"]);
    assert_eq!(tls.storage.mode, StorageMode::FileDurable);
    assert_eq!(tls.observability.log_format, LogFormat::Json);
    let dev = Config::from_toml_with_profile(DeploymentProfile::Dev, "").expect("valid");
    assert_eq!(dev.server.bind_address, "127.0.0.1:4437");
    assert!("staging".parse::<DeploymentProfile>().is_err());
}

#[test]
fn a_later_list_replaces_the_profile_list() {
    let cfg = Config::from_toml_with_profile(
        DeploymentProfile::ProdTls,
        "[transport.http]\nversions = [\"http1\"]\n[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\nalpn_protocols = [\"http/1.1\"]\n",
    )
    .expect("valid");
    assert_eq!(cfg.transport.http.versions, ["http1"]);
    assert_eq!(cfg.transport.tls.alpn_protocols, ["http/1.1"]);
}

#[test]
fn files_layer_in_the_seed_order_and_env_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("default.toml"),
        "[server]\nbind_address = \"127.0.0.1:1001\"\n[limits]\nmax_read_chunk_bytes = 11\n",
    )
    .expect("write");
    fs::write(
        dir.path().join("dev.toml"),
        "[server]\nbind_address = \"127.0.0.1:1002\"\n[limits]\nmax_stream_name_segments = 22\n",
    )
    .expect("write");
    fs::write(
        dir.path().join("local.toml"),
        "[server]\nbind_address = \"127.0.0.1:1003\"\n",
    )
    .expect("write");
    let override_file = dir.path().join("override.toml");
    fs::write(&override_file, "[limits]\nmax_stream_name_bytes = 33\n").expect("write");

    let cfg = Config::load(&ConfigLoadOptions {
        profile: DeploymentProfile::Dev,
        config_dir: Some(dir.path().to_path_buf()),
        config_file: Some(override_file.clone()),
        ignore_env: false,
        env: Some(env(&[("DS_LIMITS__MAX_STREAM_NAME_BYTES", "44")])),
    })
    .expect("valid");
    assert_eq!(
        cfg.server.bind_address, "127.0.0.1:1003",
        "local.toml wins over dev.toml"
    );
    assert_eq!(cfg.limits.max_read_chunk_bytes, 11, "default.toml applies");
    assert_eq!(cfg.limits.max_stream_name_segments, 22, "dev.toml applies");
    assert_eq!(
        cfg.limits.max_stream_name_bytes, 44,
        "env wins over --config"
    );
    assert_eq!(
        cfg.observability.log_format,
        LogFormat::Pretty,
        "dev profile default"
    );

    // Another profile skips dev.toml.
    let cfg = load_in(dir.path(), DeploymentProfile::Default, &[]).expect("valid");
    assert_eq!(cfg.limits.max_stream_name_segments, 16);

    // A missing --config is a load error.
    let err = Config::load(&ConfigLoadOptions {
        config_file: Some(dir.path().join("missing.toml")),
        ignore_env: true,
        ..ConfigLoadOptions::default()
    })
    .expect_err("missing");
    assert!(matches!(err, ConfigError::Load(m) if m.contains("missing.toml")));
}

#[test]
fn env_lists_are_comma_separated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = load_in(
        dir.path(),
        DeploymentProfile::Default,
        &[
            ("DS_TRANSPORT__MODE", "tls"),
            ("DS_TRANSPORT__TLS__CERT_PATH", "/c.pem"),
            ("DS_TRANSPORT__TLS__KEY_PATH", "/k.pem"),
            ("DS_TRANSPORT__HTTP__VERSIONS", "http1,http2"),
            ("DS_TRANSPORT__TLS__ALPN_PROTOCOLS", "http/1.1,h2"),
            ("DS_TRANSPORT__TLS__MIN_VERSION", "1.3"),
            ("DS_PROXY__ENABLED", "true"),
            ("DS_PROXY__FORWARDED_HEADERS", "x-forwarded"),
            ("DS_PROXY__TRUSTED_PROXIES", "10.0.0.0/24,192.168.1.7"),
        ],
    )
    .expect("valid");
    assert_eq!(cfg.transport.mode, TransportMode::Tls);
    assert_eq!(cfg.transport.http.versions, ["http1", "http2"]);
    assert_eq!(cfg.transport.tls.alpn_protocols, ["http/1.1", "h2"]);
    assert_eq!(cfg.transport.tls.min_version, "1.3");
    assert_eq!(cfg.proxy.trusted_proxies, ["10.0.0.0/24", "192.168.1.7"]);
    assert_eq!(cfg.proxy.trusted_networks().expect("cidrs").len(), 2);

    let err = load_in(
        dir.path(),
        DeploymentProfile::Default,
        &[("DS_TRANSPORT__MODE", "quic")],
    )
    .expect_err("bad value");
    assert!(matches!(err, ConfigError::Load(_)), "{err}");
    let err = load_in(
        dir.path(),
        DeploymentProfile::Default,
        &[("DS_SERVER__NOPE", "1")],
    )
    .expect_err("unknown key");
    assert!(matches!(err, ConfigError::Load(m) if m.contains("nope")));
}

#[test]
fn legacy_keys_map_to_the_new_model_with_warnings() {
    let cfg = Config::from_toml(
        "[server]\nport = 4437\n[tls]\ncert_path = \"/etc/ds/server.crt\"\nkey_path = \"/etc/ds/server.key\"\n[log]\nrust_log = \"debug\"\n",
    )
    .expect("legacy config loads");
    assert_eq!(cfg.server.bind_address, "0.0.0.0:4437");
    assert_eq!(cfg.server.port, None);
    assert_eq!(
        cfg.transport.tls.cert_path.as_deref(),
        Some(Path::new("/etc/ds/server.crt"))
    );
    assert_eq!(cfg.transport.mode, TransportMode::Tls);
    assert_eq!(cfg.observability.rust_log, "debug");
    assert!(cfg.tls.is_none() && cfg.log.is_none());
    assert_eq!(cfg.deprecations.len(), 5, "{:?}", cfg.deprecations);
    assert!(
        cfg.deprecations
            .iter()
            .any(|d| d.contains("server.bind_address"))
    );

    // The new key wins over its legacy spelling.
    let cfg =
        Config::from_toml("[server]\nport = 1\nbind_address = \"127.0.0.1:2\"\n").expect("valid");
    assert_eq!(cfg.server.bind_address, "127.0.0.1:2");
    assert!(cfg.deprecations[0].contains("ignored"));
}

#[test]
fn transport_rules_have_precise_messages() {
    let m = invalid("[transport]\nmode = \"tls\"\n");
    assert!(m.contains("requires transport.tls.cert_path"), "{m}");
    let m = invalid(
        "[transport]\nmode = \"mtls\"\n[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n",
    );
    assert!(m.contains("client_ca_path"), "{m}");
    let m = invalid("[transport.tls]\ncert_path = \"c\"\n");
    assert!(m.contains("transport.mode = \"http\""), "{m}");
    let m = invalid("[transport.http]\nversions = [\"http1\", \"http2\"]\n");
    assert!(m.contains("needs transport.mode"), "{m}");
    let m = invalid("[transport.http]\nversions = [\"http1\", \"http3\"]\n");
    assert!(m.contains("\"http3\" is not implemented"), "{m}");
    let tls = "[transport]\nmode = \"tls\"\n[transport.tls]\ncert_path = \"c\"\nkey_path = \"k\"\n";
    let m = invalid(&format!(
        "{tls}alpn_protocols = [\"http/1.1\"]\n[transport.http]\nversions = [\"http1\", \"http2\"]\n"
    ));
    assert!(m.contains("must include \"h2\""), "{m}");
    let m = invalid(&format!("{tls}alpn_protocols = [\"http/1.1\", \"h2\"]\n"));
    assert!(m.contains("does not include \"http2\""), "{m}");
    let m = invalid(&format!(
        "{tls}min_version = \"1.3\"\nmax_version = \"1.2\"\n"
    ));
    assert!(m.contains("above transport.tls.max_version"), "{m}");
    let m = invalid(&format!("{tls}min_version = \"1.1\"\n"));
    assert!(m.contains("transport.tls.min_version"), "{m}");
}

#[test]
fn proxy_rules_have_precise_messages() {
    let m = invalid("[proxy]\nenabled = true\n");
    assert!(m.contains("requires proxy.trusted_proxies"), "{m}");
    let m = invalid("[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
    assert!(m.contains("10.0.0.0/33"), "{m}");
    let m = invalid("[proxy.identity]\nmode = \"header\"\nheader_name = \"x-id\"\n");
    assert!(
        m.contains("only allowed with transport.mode = \"mtls\""),
        "{m}"
    );
}

#[test]
fn wildcard_cors_is_refused_in_production_profiles_unless_allowed() {
    let err =
        Config::from_toml_with_profile(DeploymentProfile::Prod, "[http]\ncors_origins = \"*\"\n")
            .expect_err("refused");
    assert!(err.to_string().contains("allow_wildcard_cors"), "{err}");
    Config::from_toml_with_profile(
        DeploymentProfile::Prod,
        "[http]\ncors_origins = \"*\"\nallow_wildcard_cors = true\n",
    )
    .expect("explicitly allowed");
    Config::from_toml_with_profile(DeploymentProfile::Dev, "[http]\ncors_origins = \"*\"\n")
        .expect("fine outside prod");
}

#[test]
fn otlp_export_is_off_by_default_and_on_with_an_endpoint() {
    let cfg = Config::default();
    assert_eq!(cfg.observability.otlp_endpoint, None);
    assert_eq!(cfg.observability.otlp_traces_url(), None);
    assert_eq!(
        cfg.observability.otlp_service_name,
        "durable-streams-server"
    );
    assert_eq!(cfg.observability.otlp_timeout_secs, 10);

    let cfg = Config::from_toml(
        "[observability]\notlp_endpoint = \"https://otel.example:4318\"\notlp_headers = [\"x-api-key = s3cret\", \"x-tenant=a=b\"]\n",
    )
    .expect("valid");
    assert_eq!(
        cfg.observability.otlp_traces_url().as_deref(),
        Some("https://otel.example:4318/v1/traces")
    );
    assert_eq!(
        cfg.observability.otlp_header_pairs().expect("valid"),
        [
            ("x-api-key".to_owned(), "s3cret".to_owned()),
            ("x-tenant".to_owned(), "a=b".to_owned())
        ]
    );
    for (endpoint, url) in [
        ("http://c:4318/", "http://c:4318/v1/traces"),
        ("http://c:4318/otlp", "http://c:4318/otlp/v1/traces"),
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/traces"),
    ] {
        let cfg = Config::from_toml(&format!(
            "[observability]\notlp_endpoint = \"{endpoint}\"\n"
        ))
        .expect("valid");
        assert_eq!(
            cfg.observability.otlp_traces_url().as_deref(),
            Some(url),
            "{endpoint}"
        );
    }
    // An empty endpoint (e.g. an env override clearing a file's value) turns export off.
    let cfg = Config::from_toml("[observability]\notlp_endpoint = \"\"\n").expect("valid");
    assert_eq!(cfg.observability.otlp_traces_url(), None);
}

#[test]
fn otlp_keys_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("default.toml"),
        "[observability]\notlp_endpoint = \"http://from-file:4318\"\n",
    )
    .expect("write");
    let cfg = load_in(
        dir.path(),
        DeploymentProfile::Prod,
        &[
            ("DS_OBSERVABILITY__OTLP_ENDPOINT", "http://collector:4318"),
            ("DS_OBSERVABILITY__OTLP_HEADERS", "x-api-key=k,x-tenant=t"),
            ("DS_OBSERVABILITY__OTLP_SERVICE_NAME", "streams-eu"),
            ("DS_OBSERVABILITY__OTLP_TIMEOUT_SECS", "3"),
        ],
    )
    .expect("valid");
    let o = &cfg.observability;
    assert_eq!(o.otlp_endpoint.as_deref(), Some("http://collector:4318"));
    assert_eq!(o.otlp_headers, ["x-api-key=k", "x-tenant=t"]);
    assert_eq!(o.otlp_service_name, "streams-eu");
    assert_eq!(o.otlp_timeout_secs, 3);
    assert_eq!(o.log_format, LogFormat::Json, "the profile still applies");

    let cfg = load_in(dir.path(), DeploymentProfile::Default, &[]).expect("valid");
    assert_eq!(
        cfg.observability.otlp_endpoint.as_deref(),
        Some("http://from-file:4318")
    );
    let err = load_in(
        dir.path(),
        DeploymentProfile::Default,
        &[("DS_OBSERVABILITY__OTLP_ENDPOINT", "grpc://collector:4317")],
    )
    .expect_err("invalid");
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("observability.otlp_endpoint")),
        "{err}"
    );
}

#[test]
fn otlp_rules_have_precise_messages() {
    let endpoint = |e: &str| invalid(&format!("[observability]\notlp_endpoint = \"{e}\"\n"));
    let m = endpoint("collector:4318");
    assert!(
        m.contains("observability.otlp_endpoint \"collector:4318\" has no scheme"),
        "{m}"
    );
    let m = endpoint("otel-collector");
    assert!(m.contains("has no scheme"), "{m}");
    let m = endpoint("grpc://collector:4317");
    assert!(
        m.contains("scheme \"grpc\" is not supported") && m.contains("http://"),
        "{m}"
    );
    let m = endpoint("http://");
    assert!(m.contains("observability.otlp_endpoint \"http://\""), "{m}");
    let m = endpoint("http://exa mple:4318");
    assert!(m.contains("is not a valid URL"), "{m}");
    let m = endpoint("http://user:pw@collector:4318");
    assert!(
        m.contains("credentials") && m.contains("otlp_headers"),
        "{m}"
    );
    let m = endpoint("http://collector:4318/?a=b");
    assert!(m.contains("query or fragment"), "{m}");

    let m = invalid("[observability]\notlp_headers = [\"x-api-key\"]\n");
    assert!(
        m.contains("observability.otlp_headers entry \"x-api-key\" is not `name=value`"),
        "{m}"
    );
    let m = invalid("[observability]\notlp_headers = [\"bad name=v\"]\n");
    assert!(m.contains("not a valid HTTP header name"), "{m}");
    let m = invalid("[observability]\notlp_timeout_secs = 0\n");
    assert!(m.contains("observability.otlp_timeout_secs"), "{m}");
    let m = invalid("[observability]\notlp_service_name = \" \"\n");
    assert!(m.contains("observability.otlp_service_name"), "{m}");
}

#[test]
fn public_url_feeds_the_subscription_stream_root() {
    let cfg = Config::default();
    assert_eq!(cfg.http.public_url, None);
    assert_eq!(
        cfg.subscriptions.public_base_url, None,
        "unset: from each request"
    );

    let cfg = Config::from_toml("[http]\npublic_url = \"https://streams.example.com/\"\n")
        .expect("valid");
    assert_eq!(
        cfg.subscriptions.public_base_url.as_deref(),
        Some("https://streams.example.com/v1/stream")
    );
    assert!(cfg.deprecations.is_empty(), "{:?}", cfg.deprecations);

    // A proxy prefix and another base path; from the environment.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = load_in(
        dir.path(),
        DeploymentProfile::Prod,
        &[
            ("DS_HTTP__PUBLIC_URL", "http://10.1.2.3:8080/ds"),
            ("DS_HTTP__STREAM_BASE_PATH", "/streams"),
        ],
    )
    .expect("valid");
    assert_eq!(
        cfg.http.public_url.as_deref(),
        Some("http://10.1.2.3:8080/ds")
    );
    assert_eq!(
        cfg.subscriptions.public_base_url.as_deref(),
        Some("http://10.1.2.3:8080/ds/streams")
    );
}

#[test]
fn subscriptions_public_base_url_is_a_deprecated_alias() {
    let cfg = Config::from_toml(
        "[subscriptions]\npublic_base_url = \"https://streams.example.com/v1/stream\"\n",
    )
    .expect("legacy key loads");
    assert_eq!(
        cfg.subscriptions.public_base_url.as_deref(),
        Some("https://streams.example.com/v1/stream"),
        "the legacy key is the whole stream root and keeps working"
    );
    assert_eq!(cfg.deprecations.len(), 1, "{:?}", cfg.deprecations);
    assert!(
        cfg.deprecations[0].contains("use http.public_url = \"https://streams.example.com\""),
        "{:?}",
        cfg.deprecations
    );

    // A root that does not end with the base path: no value to suggest.
    let cfg = Config::from_toml("[subscriptions]\npublic_base_url = \"https://x.example/api\"\n")
        .expect("legacy key loads");
    assert_eq!(
        cfg.subscriptions.public_base_url.as_deref(),
        Some("https://x.example/api")
    );
    assert!(
        cfg.deprecations[0].contains("use http.public_url ("),
        "{:?}",
        cfg.deprecations
    );

    // The new key wins.
    let cfg = Config::from_toml(
        "[http]\npublic_url = \"https://new.example\"\n[subscriptions]\npublic_base_url = \"https://old.example/v1/stream\"\n",
    )
    .expect("valid");
    assert_eq!(
        cfg.subscriptions.public_base_url.as_deref(),
        Some("https://new.example/v1/stream")
    );
    assert_eq!(cfg.deprecations.len(), 1, "{:?}", cfg.deprecations);
    assert!(cfg.deprecations[0].contains("ignored because http.public_url is set"));
}

#[test]
fn public_url_rules_have_precise_messages() {
    let url = |u: &str| invalid(&format!("[http]\npublic_url = \"{u}\"\n"));
    let m = url("streams.example.com");
    assert!(
        m.contains("http.public_url \"streams.example.com\" has no scheme"),
        "{m}"
    );
    let m = url("ftp://streams.example.com");
    assert!(m.contains("scheme \"ftp\" is not supported"), "{m}");
    let m = url("https://");
    assert!(m.contains("http.public_url \"https://\""), "{m}");
    let m = url("https://exa mple.com");
    assert!(m.contains("is not a valid URL"), "{m}");
    let m = url("https://user:pw@streams.example.com");
    assert!(m.contains("credentials"), "{m}");
    let m = url("https://streams.example.com/?a=b");
    assert!(m.contains("query or fragment"), "{m}");
    let m = url("https://streams.example.com/#top");
    assert!(m.contains("query or fragment"), "{m}");

    let m = invalid("[subscriptions]\npublic_base_url = \"localhost:4437/v1/stream\"\n");
    assert!(
        m.contains("subscriptions.public_base_url (deprecated: use http.public_url)")
            && m.contains("has no scheme"),
        "{m}"
    );
}

#[test]
fn postgres_storage_is_configured_from_file_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("default.toml"),
        "[storage]\nmode = \"postgres\"\n[storage.postgres]\nschema = \"streams_a\"\npool_size = 4\n",
    )
    .expect("write");
    let cfg = load_in(
        dir.path(),
        DeploymentProfile::Default,
        &[(
            "DS_STORAGE__POSTGRES__URL",
            "postgres://app@db:5432/streams",
        )],
    )
    .expect("valid");
    assert_eq!(cfg.storage.mode, StorageMode::Postgres);
    assert_eq!(cfg.storage.postgres.url, "postgres://app@db:5432/streams");
    assert_eq!(cfg.storage.postgres.schema, "streams_a");
    assert_eq!(cfg.storage.postgres.pool_size, 4);
    assert_eq!(cfg.storage.postgres.statement_timeout_ms, 30_000);

    let msg = invalid("[storage]\nmode = \"postgres\"\n[storage.postgres]\npool_size = 1\n");
    assert!(msg.contains("storage.postgres.pool_size"), "{msg}");
    let msg =
        invalid("[storage]\nmode = \"postgres\"\n[storage.postgres]\nschema = \"Bad-Name\"\n");
    assert!(msg.contains("storage.postgres.schema"), "{msg}");
    let msg = invalid("[storage]\nmode = \"postgres\"\n[storage.postgres]\nurl = \" \"\n");
    assert!(msg.contains("storage.postgres.url"), "{msg}");
}

#[test]
fn idle_timeout_follows_a_raised_long_poll_timeout_unless_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("default.toml"),
        "[transport.connection]\nlong_poll_timeout_secs = 300\n",
    )
    .expect("write");
    let cfg = load_in(dir.path(), DeploymentProfile::Default, &[]).expect("valid");
    assert_eq!(cfg.transport.connection.idle_timeout_secs, None);
    assert_eq!(cfg.transport.connection.effective_idle_timeout_secs(), 330);
    assert_eq!(
        Config::default()
            .transport
            .connection
            .effective_idle_timeout_secs(),
        120
    );

    let msg =
        invalid("[transport.connection]\nlong_poll_timeout_secs = 300\nidle_timeout_secs = 200\n");
    assert!(
        msg.contains("idle_timeout_secs (200) must exceed") && msg.contains("(300)"),
        "{msg}"
    );
}
