//! Server configuration: the seed's TOML schema, built-in deployment profiles, `DS_*`
//! environment overrides, legacy keys, and validation.
//!
//! Sources, later winning:
//!
//! 1. built-in defaults (the `Default` impls below),
//! 2. built-in profile defaults ([`DeploymentProfile`]: `default`, `dev`, `prod`, `prod-tls`,
//!    `prod-mtls`),
//! 3. `config/default.toml`, 4. `config/<profile>.toml`, 5. `config/local.toml` (each skipped
//!    when missing; the directory is `./config` unless told otherwise),
//! 6. `--config <path>` (which must exist),
//! 7. `DS_SECTION__FIELD` environment variables (list keys accept comma-separated values).
//!
//! Every key has the seed's name, so each `DS_*` variable maps one to one. Unknown keys are
//! rejected, except the legacy ones (`server.port`, `[tls]`, `[log]`,
//! `subscriptions.public_base_url`), which still load, map onto the new model and leave a
//! deprecation warning in [`Config::deprecations`].
//! [`Config::validate`] checks the cross-key rules and names the keys in every message.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;

/// A built-in deployment profile: a set of defaults layered under the config files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeploymentProfile {
    /// Minimal HTTP baseline: the built-in defaults unchanged.
    #[default]
    Default,
    /// Local loopback development: binds `127.0.0.1`, pretty debug logs, memory storage.
    Dev,
    /// Production behind external TLS termination: plain HTTP, durable file storage, JSON
    /// logs, hashed stream names in logs, no wildcard CORS.
    Prod,
    /// `prod` with direct TLS termination: HTTP/1.1 and HTTP/2 over ALPN.
    ProdTls,
    /// `prod-tls` with required client certificates.
    ProdMtls,
}

impl DeploymentProfile {
    /// Every profile, in the order the docs list them.
    pub const ALL: [DeploymentProfile; 5] = [
        DeploymentProfile::Default,
        DeploymentProfile::Dev,
        DeploymentProfile::Prod,
        DeploymentProfile::ProdTls,
        DeploymentProfile::ProdMtls,
    ];

    /// The name used on the command line and for `config/<profile>.toml`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentProfile::Default => "default",
            DeploymentProfile::Dev => "dev",
            DeploymentProfile::Prod => "prod",
            DeploymentProfile::ProdTls => "prod-tls",
            DeploymentProfile::ProdMtls => "prod-mtls",
        }
    }

    /// Whether this is one of the production profiles (which refuse wildcard CORS unless
    /// `http.allow_wildcard_cors` is set).
    #[must_use]
    pub fn is_production(self) -> bool {
        matches!(
            self,
            DeploymentProfile::Prod | DeploymentProfile::ProdTls | DeploymentProfile::ProdMtls
        )
    }

    /// The profile's defaults, as a TOML document layered over the built-in defaults.
    #[must_use]
    pub fn defaults_toml(self) -> &'static str {
        match self {
            DeploymentProfile::Default => "",
            DeploymentProfile::Dev => DEV_DEFAULTS,
            DeploymentProfile::Prod => PROD_DEFAULTS,
            DeploymentProfile::ProdTls => PROD_TLS_DEFAULTS,
            DeploymentProfile::ProdMtls => PROD_MTLS_DEFAULTS,
        }
    }
}

const DEV_DEFAULTS: &str = r#"
[server]
bind_address = "127.0.0.1:4437"
drain_timeout_secs = 5
[observability]
rust_log = "info,ds_server=debug"
log_format = "pretty"
"#;

const PROD_DEFAULTS: &str = r#"
[limits]
max_memory_bytes = 536870912
max_stream_bytes = 268435456
[http]
cors_origins = ""
[storage]
mode = "file-durable"
data_dir = "/var/lib/durable-streams"
[observability]
log_format = "json"
stream_names = "hashed"
"#;

const PROD_TLS_DEFAULTS: &str = r#"
[limits]
max_memory_bytes = 536870912
max_stream_bytes = 268435456
[http]
cors_origins = ""
[storage]
mode = "file-durable"
data_dir = "/var/lib/durable-streams"
[transport]
mode = "tls"
[transport.http]
versions = ["http1", "http2"]
[transport.tls]
alpn_protocols = ["http/1.1", "h2"]
[observability]
log_format = "json"
stream_names = "hashed"
"#;

const PROD_MTLS_DEFAULTS: &str = r#"
[limits]
max_memory_bytes = 536870912
max_stream_bytes = 268435456
[http]
cors_origins = ""
[storage]
mode = "file-durable"
data_dir = "/var/lib/durable-streams"
[transport]
mode = "mtls"
[transport.http]
versions = ["http1", "http2"]
[transport.tls]
alpn_protocols = ["http/1.1", "h2"]
[observability]
log_format = "json"
stream_names = "hashed"
"#;

impl fmt::Display for DeploymentProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeploymentProfile {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeploymentProfile::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                ConfigError::Load(format!(
                    "unknown profile {s:?}; expected one of default, dev, prod, prod-tls, prod-mtls"
                ))
            })
    }
}

/// The resolved configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[http]`
    pub http: HttpConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[transport]`
    pub transport: TransportConfig,
    /// `[proxy]`
    pub proxy: ProxyConfig,
    /// `[observability]`
    pub observability: ObservabilityConfig,
    /// `[subscriptions]`: webhook and pull-wake delivery (PROTOCOL.md sections 6 and 7).
    pub subscriptions: ds_subscriptions::SubscriptionsConfig,
    /// Legacy `[tls]` (deprecated: use `[transport.tls]`). Always `None` after loading.
    pub tls: Option<LegacyTlsConfig>,
    /// Legacy `[log]` (deprecated: use `[observability]`). Always `None` after loading.
    pub log: Option<LegacyLogConfig>,
    /// The profile the configuration was resolved with (not a TOML key).
    #[serde(skip)]
    pub profile: DeploymentProfile,
    /// Deprecation warnings left by legacy keys while loading (not a TOML key); startup logs
    /// them once logging is up.
    #[serde(skip)]
    pub deprecations: Vec<String>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, `host:port` (default `0.0.0.0:4437`, the protocol's registered port).
    pub bind_address: String,
    /// Longest wait, on shutdown, for in-flight requests to finish before the process exits.
    pub drain_timeout_secs: u64,
    /// Seconds between `/readyz` turning `503` and the listener closing on shutdown, so load
    /// balancers stop routing first (default 0).
    pub shutdown_delay_secs: u64,
    /// Most connections open at once, plain and TLS together (TLS handshakes included). Past
    /// it the server stops accepting: further connections wait in the kernel's listen backlog
    /// (1024, capped by `net.core.somaxconn`) and are served as others close; past the backlog
    /// the kernel drops their handshakes and they retry on TCP's back-off.
    pub max_connections: usize,
    /// Legacy listen port (deprecated: use `bind_address`). Always `None` after loading.
    pub port: Option<u16>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_address: "0.0.0.0:4437".to_owned(),
            drain_timeout_secs: 30,
            shutdown_delay_secs: 0,
            max_connections: 10_000,
            port: None,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Payload bytes all streams together may hold in memory mode.
    pub max_memory_bytes: u64,
    /// Payload bytes one stream may hold. Unset: 10 MiB in memory mode, unbounded (free disk)
    /// in the durable modes.
    pub max_stream_bytes: Option<u64>,
    /// Largest accepted request body (further capped by `max_stream_bytes` when set).
    pub max_request_body_bytes: u64,
    /// Longest stream name, in bytes after percent-decoding.
    pub max_stream_name_bytes: usize,
    /// Most `/`-separated segments in a stream name.
    pub max_stream_name_segments: usize,
    /// Largest catch-up read response, in bytes (at least one JSON message is always sent).
    pub max_read_chunk_bytes: usize,
    /// Largest catch-up read response sent straight from stream files with `sendfile` (file
    /// modes, plain HTTP/1.1), in bytes. Runs of a file cost no memory, so this bounds only
    /// how long one response is; bytes read into memory still keep to `max_read_chunk_bytes`.
    pub max_sendfile_chunk_bytes: u64,
    /// Most header fields in one request (`431` beyond).
    pub max_header_count: usize,
    /// Most bytes of header fields in one request, counting names, values and 4 bytes per
    /// field (`431` beyond).
    pub max_header_bytes: usize,
    /// Most live reads (long-poll and SSE) open at once, in all (`503` beyond).
    pub max_live_readers: usize,
    /// Most live reads open at once on one stream (`503` beyond).
    pub max_live_readers_per_stream: usize,
    /// Sustained requests per second one client may send; 0 turns rate limiting off (the
    /// default). Clients are told apart by the address proxy trust resolves (`429` beyond).
    pub rate_limit_requests_per_sec: u32,
    /// Requests one client may send at once before `rate_limit_requests_per_sec` applies.
    pub rate_limit_burst: u32,
    /// Most clients the rate limiter remembers at once (bounds its memory).
    pub rate_limit_max_clients: usize,
}

/// The largest `limits.max_header_bytes` accepted: twice it must fit hyper's read buffer.
pub const MAX_HEADER_BYTES_CEILING: usize = 128 * 1024;

/// The memory backend's per-stream cap when `limits.max_stream_bytes` is unset (the seed's).
pub const DEFAULT_MEMORY_MAX_STREAM_BYTES: u64 = 10 * 1024 * 1024;

impl LimitsConfig {
    /// The per-stream cap in force for `mode`.
    #[must_use]
    pub fn effective_max_stream_bytes(&self, mode: StorageMode) -> Option<u64> {
        match (self.max_stream_bytes, mode) {
            (Some(n), _) => Some(n),
            (None, StorageMode::Memory) => Some(DEFAULT_MEMORY_MAX_STREAM_BYTES),
            (None, _) => None,
        }
    }

    /// The largest request body accepted in `mode`.
    #[must_use]
    pub fn effective_max_body_bytes(&self, mode: StorageMode) -> u64 {
        self.effective_max_stream_bytes(mode)
            .map_or(self.max_request_body_bytes, |n| {
                n.min(self.max_request_body_bytes)
            })
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_memory_bytes: 100 * 1024 * 1024,
            max_stream_bytes: None,
            max_request_body_bytes: 64 * 1024 * 1024,
            max_stream_name_bytes: 1024,
            max_stream_name_segments: 16,
            max_read_chunk_bytes: 1024 * 1024,
            max_sendfile_chunk_bytes: 32 * 1024 * 1024,
            max_header_count: 100,
            max_header_bytes: 16 * 1024,
            max_live_readers: 10_000,
            max_live_readers_per_stream: 5_000,
            rate_limit_requests_per_sec: 0,
            rate_limit_burst: 100,
            rate_limit_max_clients: 100_000,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Allowed CORS origins: `*`, a comma-separated list of origins, or empty for none.
    pub cors_origins: String,
    /// Permit `cors_origins = "*"` in the production profiles.
    pub allow_wildcard_cors: bool,
    /// Where the protocol is mounted (default `/v1/stream`).
    pub stream_base_path: String,
    /// `public` or `private`: the visibility in `Cache-Control` of cacheable catch-up reads.
    pub cache_visibility: CacheVisibility,
    /// The URL clients reach this server at (`https://streams.example.com`, optionally with the
    /// path prefix a reverse proxy adds). When set, subscription `callback_url` and `jwks_url`
    /// are built from it plus `stream_base_path`; unset, from each request's scheme and host
    /// (through the `[proxy]` trust rules).
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: "*".to_owned(),
            allow_wildcard_cors: false,
            stream_base_path: "/v1/stream".to_owned(),
            cache_visibility: CacheVisibility::Public,
            public_url: None,
        }
    }
}

impl HttpConfig {
    /// The public stream root (`public_url` followed by `stream_base_path`), when `public_url`
    /// is set.
    #[must_use]
    pub fn public_stream_root(&self) -> Option<String> {
        let url = self.public_url.as_deref()?.trim().trim_end_matches('/');
        let base = self.stream_base_path.trim_end_matches('/');
        Some(format!("{url}{base}"))
    }
}

/// Checks that `key = value` is an absolute `http(s)://host[:port][/prefix]` URL; the message
/// names the key and what to change.
fn validate_public_url(key: &str, value: &str) -> Result<(), String> {
    let example = "such as \"https://streams.example.com\"";
    let value = value.trim();
    if !value.contains("://") {
        return Err(format!(
            "{key} {value:?} has no scheme; use an absolute http:// or https:// URL, {example}"
        ));
    }
    let uri = value.parse::<http::Uri>().map_err(|e| {
        format!("{key} {value:?} is not a valid URL ({e}); use the absolute URL clients reach this server at, {example}")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "{key} {value:?}: scheme {other:?} is not supported; use http:// or https:// ({example})"
            ));
        }
        None => {
            return Err(format!(
                "{key} {value:?} has no scheme; use an absolute http:// or https:// URL, {example}"
            ));
        }
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{key} {value:?} has no host; use {example}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{key} {value:?} must not contain credentials (user:password@)"
        ));
    }
    if uri.query().is_some() || value.contains('#') {
        return Err(format!(
            "{key} {value:?} must not have a query or fragment; use {example}"
        ));
    }
    Ok(())
}

/// Visibility of cacheable catch-up responses (PROTOCOL.md section 10.1).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CacheVisibility {
    /// Shared caches may store catch-up reads.
    #[default]
    Public,
    /// Only the client's own cache may (streams with user-specific data).
    Private,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Backend: `memory`, `file-fast`, `file-durable`, `acid` or `postgres`.
    pub mode: StorageMode,
    /// Directory of the durable backends.
    pub data_dir: PathBuf,
    /// Shards of the `acid` backend (a power of two in 1..=256), fixed when its data dir is
    /// created. Unset: an existing data dir keeps its count and a new one gets
    /// [`ds_storage_acid::default_shard_count`] (one per core, 1 to 4). Set: a data dir created
    /// with another count refuses to open.
    pub acid_shard_count: Option<u32>,
    /// Where the `acid` backend keeps its databases: `file` or `in-memory`.
    pub acid_backend: AcidBackendMode,
    /// `[storage.postgres]`: the database of the `postgres` backend.
    pub postgres: PostgresConfig,
}

/// `[storage.postgres]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL (`DS_STORAGE__POSTGRES__URL`), e.g. `postgres://user:pw@db:5432/streams`.
    pub url: String,
    /// Schema holding the tables (created if missing); deployments sharing a database use
    /// different ones.
    pub schema: String,
    /// Connections in each node's pool (at least 2); the LISTEN connection is one more.
    pub pool_size: usize,
    /// `statement_timeout` of those connections in milliseconds (0 = none).
    pub statement_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            schema: "durable_streams".to_owned(),
            pool_size: 16,
            statement_timeout_ms: 30_000,
        }
    }
}

/// `storage.acid_backend`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AcidBackendMode {
    /// redb files under `storage.data_dir`.
    #[default]
    File,
    /// redb in memory (tests, ephemeral deployments).
    InMemory,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            mode: StorageMode::Memory,
            data_dir: PathBuf::from("./data/streams"),
            acid_shard_count: None,
            acid_backend: AcidBackendMode::File,
            postgres: PostgresConfig::default(),
        }
    }
}

/// `storage.mode`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMode {
    /// In memory, lost on restart.
    #[default]
    Memory,
    /// Append log, acknowledged once in the kernel, fsynced in the background.
    FileFast,
    /// Append log, acknowledged after fdatasync (group commit).
    FileDurable,
    /// redb, one transaction per batch.
    Acid,
    /// PostgreSQL, shared by any number of server nodes.
    Postgres,
}

impl StorageMode {
    /// The name used in config and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Memory => "memory",
            StorageMode::FileFast => "file-fast",
            StorageMode::FileDurable => "file-durable",
            StorageMode::Acid => "acid",
            StorageMode::Postgres => "postgres",
        }
    }
}

/// `[transport]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// `http`, `tls` or `mtls`.
    pub mode: TransportMode,
    /// `[transport.http]`
    pub http: TransportHttpConfig,
    /// `[transport.connection]`
    pub connection: ConnectionConfig,
    /// `[transport.tls]`
    pub tls: TlsConfig,
}

/// `transport.mode`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TransportMode {
    /// Plain HTTP.
    #[default]
    Http,
    /// TLS terminated by this server.
    Tls,
    /// TLS with required client certificates.
    Mtls,
}

impl TransportMode {
    /// The name used in config.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TransportMode::Http => "http",
            TransportMode::Tls => "tls",
            TransportMode::Mtls => "mtls",
        }
    }

    /// Whether the server terminates TLS itself.
    #[must_use]
    pub fn is_tls(self) -> bool {
        matches!(self, TransportMode::Tls | TransportMode::Mtls)
    }
}

/// `[transport.http]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportHttpConfig {
    /// HTTP versions served: `http1`, `http2` (`http2` only over TLS).
    pub versions: Vec<String>,
}

impl TransportHttpConfig {
    /// Whether HTTP/2 is enabled.
    #[must_use]
    pub fn http2(&self) -> bool {
        self.versions.iter().any(|v| v == "http2")
    }
}

impl Default for TransportHttpConfig {
    fn default() -> Self {
        TransportHttpConfig {
            versions: vec!["http1".to_owned()],
        }
    }
}

/// `[transport.connection]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// How long a long-poll waits for data before answering `204`.
    pub long_poll_timeout_secs: u64,
    /// How long an SSE connection stays open before the server closes it (clients reconnect).
    pub sse_reconnect_interval_secs: u64,
    /// How long a client may take to send a complete HTTP/1.1 request head, counted from when
    /// the connection waits for it (so it also closes keep-alive connections idle that long:
    /// keep it above a reverse proxy's upstream keep-alive idle time, e.g. 60 s on AWS ALB).
    pub header_read_timeout_secs: u64,
    /// A connection on which no byte moves either way for this long is closed (slow or stalled
    /// clients, idle HTTP/2 connections). Must exceed `long_poll_timeout_secs`; unset, it is
    /// the larger of 120 s and `long_poll_timeout_secs` + 30 s
    /// ([`ConnectionConfig::effective_idle_timeout_secs`]).
    pub idle_timeout_secs: Option<u64>,
}

impl ConnectionConfig {
    /// `idle_timeout_secs`, or when unset the larger of 120 s and `long_poll_timeout_secs` +
    /// 30 s, so raising the long-poll timeout alone never makes the configuration invalid.
    #[must_use]
    pub fn effective_idle_timeout_secs(&self) -> u64 {
        self.idle_timeout_secs
            .unwrap_or_else(|| self.long_poll_timeout_secs.saturating_add(30).max(120))
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            long_poll_timeout_secs: 30,
            sse_reconnect_interval_secs: 60,
            header_read_timeout_secs: 65,
            idle_timeout_secs: None,
        }
    }
}

/// `[transport.tls]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert_path: Option<PathBuf>,
    /// Server private key (PEM).
    pub key_path: Option<PathBuf>,
    /// CA bundle that client certificates must chain to (mtls).
    pub client_ca_path: Option<PathBuf>,
    /// Lowest TLS version, `1.2` or `1.3`.
    pub min_version: String,
    /// Highest TLS version, `1.2` or `1.3`.
    pub max_version: String,
    /// ALPN protocols offered: `http/1.1`, `h2`.
    pub alpn_protocols: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_path: None,
            key_path: None,
            client_ca_path: None,
            min_version: "1.2".to_owned(),
            max_version: "1.3".to_owned(),
            alpn_protocols: vec!["http/1.1".to_owned()],
        }
    }
}

/// `[proxy]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Trust forwarded headers from `trusted_proxies`.
    pub enabled: bool,
    /// `none`, `x-forwarded` or `forwarded` (RFC 7239).
    pub forwarded_headers: ForwardedHeaders,
    /// Proxy addresses or CIDRs whose forwarded headers are trusted.
    pub trusted_proxies: Vec<String>,
    /// `[proxy.identity]`
    pub identity: ProxyIdentityConfig,
}

impl ProxyConfig {
    /// `trusted_proxies` parsed: each entry is a CIDR (`10.0.0.0/24`) or a single address.
    pub fn trusted_networks(&self) -> Result<Vec<IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "proxy.trusted_proxies entry {entry:?} is not an IP address or CIDR (such as \"10.0.0.0/24\")"
                        )
                    })
            })
            .collect()
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            forwarded_headers: ForwardedHeaders::None,
            trusted_proxies: Vec::new(),
            identity: ProxyIdentityConfig::default(),
        }
    }
}

/// `proxy.forwarded_headers`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaders {
    /// Ignore forwarded headers.
    #[default]
    None,
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    XForwarded,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

impl ForwardedHeaders {
    /// The name used in config.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardedHeaders::None => "none",
            ForwardedHeaders::XForwarded => "x-forwarded",
            ForwardedHeaders::Forwarded => "forwarded",
        }
    }
}

/// `[proxy.identity]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyIdentityConfig {
    /// `none` or `header`.
    pub mode: IdentityMode,
    /// Header carrying the client identity from the proxy.
    pub header_name: Option<String>,
    /// Accept the identity header only over TLS.
    pub require_tls: bool,
}

impl Default for ProxyIdentityConfig {
    fn default() -> Self {
        ProxyIdentityConfig {
            mode: IdentityMode::None,
            header_name: None,
            require_tls: true,
        }
    }
}

/// `proxy.identity.mode`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// No identity hand-off.
    #[default]
    None,
    /// A trusted proxy names the client in `header_name` (mtls only).
    Header,
}

/// `[observability]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `tracing` filter directives (overridden by `RUST_LOG`).
    pub rust_log: String,
    /// `pretty` (human-readable) or `json` (one object per line).
    pub log_format: LogFormat,
    /// How request spans name streams: `plain`, `hashed` or `omitted`.
    pub stream_names: StreamNameLogging,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics_enabled: bool,
    /// Base URL of an OTLP/HTTP collector (`http://otel-collector:4318`): request spans are
    /// exported as traces to `<endpoint>/v1/traces` (protobuf). Unset or empty: no export.
    pub otlp_endpoint: Option<String>,
    /// Extra headers sent with every export, each `name=value` (an API key, a tenant).
    pub otlp_headers: Vec<String>,
    /// The `service.name` resource attribute of exported spans.
    pub otlp_service_name: String,
    /// Longest one export may take, and the bound on the final flush at shutdown.
    pub otlp_timeout_secs: u64,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            rust_log: "info".to_owned(),
            log_format: LogFormat::Pretty,
            stream_names: StreamNameLogging::Plain,
            metrics_enabled: true,
            otlp_endpoint: None,
            otlp_headers: Vec::new(),
            otlp_service_name: "durable-streams-server".to_owned(),
            otlp_timeout_secs: 10,
        }
    }
}

/// The path OTLP/HTTP collectors receive traces on.
const OTLP_TRACES_PATH: &str = "/v1/traces";

impl ObservabilityConfig {
    /// The URL spans are POSTed to, when OTLP export is on: `otlp_endpoint` with `/v1/traces`
    /// appended, unless it already ends with it.
    #[must_use]
    pub fn otlp_traces_url(&self) -> Option<String> {
        let endpoint = self.otlp_endpoint.as_deref()?.trim();
        if endpoint.is_empty() {
            return None;
        }
        if endpoint.trim_end_matches('/').ends_with(OTLP_TRACES_PATH) {
            return Some(endpoint.to_owned());
        }
        Some(format!(
            "{}{OTLP_TRACES_PATH}",
            endpoint.trim_end_matches('/')
        ))
    }

    /// `otlp_headers` split into names and values (validated by [`Config::validate`]).
    pub fn otlp_header_pairs(&self) -> Result<Vec<(String, String)>, String> {
        self.otlp_headers
            .iter()
            .map(|entry| {
                let (name, value) = entry.split_once('=').ok_or_else(|| {
                    format!(
                        "observability.otlp_headers entry {entry:?} is not `name=value` (such as \"x-api-key=secret\")"
                    )
                })?;
                let (name, value) = (name.trim(), value.trim());
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(format!(
                        "observability.otlp_headers entry {entry:?}: {name:?} is not a valid HTTP header name"
                    ));
                }
                if http::HeaderValue::from_str(value).is_err() {
                    return Err(format!(
                        "observability.otlp_headers entry {entry:?}: the value is not a valid HTTP header value"
                    ));
                }
                Ok((name.to_owned(), value.to_owned()))
            })
            .collect()
    }

    /// Checks the OTLP keys; each message names the key.
    fn validate_otlp(&self) -> Result<(), String> {
        self.otlp_header_pairs()?;
        if self.otlp_service_name.trim().is_empty() {
            return Err("observability.otlp_service_name must not be empty".to_owned());
        }
        if self.otlp_timeout_secs == 0 {
            return Err("observability.otlp_timeout_secs must be at least 1".to_owned());
        }
        let endpoint = self.otlp_endpoint.as_deref().unwrap_or_default().trim();
        if endpoint.is_empty() {
            return Ok(());
        }
        let example = "such as \"http://otel-collector:4318\"";
        let uri = endpoint.parse::<http::Uri>().map_err(|e| {
            format!("observability.otlp_endpoint {endpoint:?} is not a valid URL ({e}); use the collector's base URL, {example}")
        })?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(other) => {
                return Err(format!(
                    "observability.otlp_endpoint {endpoint:?}: scheme {other:?} is not supported; OTLP is exported over HTTP, so use http:// or https:// ({example}; gRPC endpoints on port 4317 are not supported)"
                ));
            }
            None => {
                return Err(format!(
                    "observability.otlp_endpoint {endpoint:?} has no scheme; use an absolute http:// or https:// URL, {example}"
                ));
            }
        }
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err(format!(
                "observability.otlp_endpoint {endpoint:?} has no host; use the collector's base URL, {example}"
            ));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "observability.otlp_endpoint {endpoint:?} contains credentials; put them in observability.otlp_headers instead"
            ));
        }
        if uri.query().is_some() || endpoint.contains('#') {
            return Err(format!(
                "observability.otlp_endpoint {endpoint:?} must not have a query or fragment; use the collector's base URL, {example}"
            ));
        }
        Ok(())
    }
}

/// `observability.log_format`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `observability.stream_names`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StreamNameLogging {
    /// The stream name as requested.
    #[default]
    Plain,
    /// A short stable hash of the name (correlates requests without revealing names).
    Hashed,
    /// No stream name at all.
    Omitted,
}

/// Legacy `[tls]`: mapped onto `[transport.tls]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyTlsConfig {
    /// Now `transport.tls.cert_path`.
    pub cert_path: Option<PathBuf>,
    /// Now `transport.tls.key_path`.
    pub key_path: Option<PathBuf>,
}

/// Legacy `[log]`: mapped onto `[observability]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyLogConfig {
    /// Now `observability.rust_log`.
    pub rust_log: Option<String>,
}

/// Where configuration is read from.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoadOptions {
    /// Built-in profile layered under the files, and the `<profile>.toml` file name.
    pub profile: DeploymentProfile,
    /// Directory holding `default.toml`, `<profile>.toml` and `local.toml` (default
    /// `./config`); missing files are skipped.
    pub config_dir: Option<PathBuf>,
    /// An explicit file (`--config`), which must exist.
    pub config_file: Option<PathBuf>,
    /// Skip `DS_*` environment variables.
    pub ignore_env: bool,
    /// Read `DS_*` variables from this map instead of the process environment (tests).
    pub env: Option<HashMap<String, String>>,
}

/// Keys whose `DS_*` values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "transport.http.versions",
    "transport.tls.alpn_protocols",
    "proxy.trusted_proxies",
    "observability.otlp_headers",
];

/// The HTTP versions `transport.http.versions` accepts.
const HTTP_VERSIONS: &[&str] = &["http1", "http2"];

impl Config {
    /// Loads and validates the configuration from the layered sources.
    pub fn load(opts: &ConfigLoadOptions) -> Result<Config, ConfigError> {
        let dir = opts
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"));
        // The operator's sources, without the built-in layers: legacy keys are mapped only where
        // the operator did not also set the new key.
        let mut user = config::Config::builder();
        for name in [
            "default.toml".to_owned(),
            format!("{}.toml", opts.profile.as_str()),
            "local.toml".to_owned(),
        ] {
            let path = dir.join(name);
            if path.exists() && !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config path {} is not a file",
                    path.display()
                )));
            }
            user = user.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(false),
            );
        }
        if let Some(file) = &opts.config_file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} (--config) does not exist or is not a file",
                    file.display()
                )));
            }
            user = user.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        if !opts.ignore_env {
            let mut env = config::Environment::with_prefix("DS")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",");
            for key in LIST_KEYS {
                env = env.with_list_parse_key(key);
            }
            if let Some(vars) = &opts.env {
                env = env.source(Some(vars.clone().into_iter().collect()));
            }
            user = user.add_source(env);
        }
        let user = user.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        Config::resolve(opts.profile, &user)
    }

    /// Parses one TOML document over the defaults (no profile, files or environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_profile(DeploymentProfile::Default, text)
    }

    /// Parses one TOML document over `profile`'s defaults (no files or environment).
    pub fn from_toml_with_profile(
        profile: DeploymentProfile,
        text: &str,
    ) -> Result<Config, ConfigError> {
        let user = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Config::resolve(profile, &user)
    }

    /// Layers `user` over the profile defaults, maps legacy keys, and validates.
    fn resolve(profile: DeploymentProfile, user: &config::Config) -> Result<Config, ConfigError> {
        let merged = config::Config::builder()
            .add_source(config::File::from_str(
                profile.defaults_toml(),
                config::FileFormat::Toml,
            ))
            .add_source(user.clone())
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut cfg: Config = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.profile = profile;
        cfg.map_legacy(|key| user.get::<config::Value>(key).is_ok());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Moves legacy keys onto the new model. `set_by_operator(key)` tells whether the operator
    /// set the new key too, in which case it wins and the legacy key is only reported. Also
    /// hands `http.public_url` to the subscription engine (as its stream root).
    fn map_legacy(&mut self, set_by_operator: impl Fn(&str) -> bool) {
        let mut notes = Vec::new();
        if let Some(port) = self.server.port.take() {
            if set_by_operator("server.bind_address") {
                notes.push(format!(
                    "server.port = {port} is deprecated and ignored because server.bind_address is set; remove it"
                ));
            } else {
                self.server.bind_address = format!("0.0.0.0:{port}");
                notes.push(format!(
                    "server.port is deprecated; use server.bind_address = \"0.0.0.0:{port}\""
                ));
            }
        }
        if let Some(tls) = self.tls.take() {
            for (old, value, new_key, slot) in [
                (
                    "tls.cert_path",
                    tls.cert_path,
                    "transport.tls.cert_path",
                    &mut self.transport.tls.cert_path,
                ),
                (
                    "tls.key_path",
                    tls.key_path,
                    "transport.tls.key_path",
                    &mut self.transport.tls.key_path,
                ),
            ] {
                let Some(value) = value else { continue };
                if set_by_operator(new_key) {
                    notes.push(format!(
                        "[tls] {old} is deprecated and ignored because {new_key} is set; remove it"
                    ));
                } else {
                    *slot = Some(value);
                    notes.push(format!("[tls] {old} is deprecated; use {new_key}"));
                }
            }
            // The legacy server served TLS whenever a certificate was configured.
            if self.transport.tls.cert_path.is_some()
                && self.transport.tls.key_path.is_some()
                && !set_by_operator("transport.mode")
                && self.transport.mode == TransportMode::Http
            {
                self.transport.mode = TransportMode::Tls;
                notes.push(
                    "[tls] without transport.mode now means transport.mode = \"tls\"; set it explicitly"
                        .to_owned(),
                );
            }
        }
        if let Some(log) = self.log.take()
            && let Some(filter) = log.rust_log
        {
            if set_by_operator("observability.rust_log") {
                notes.push(
                    "[log] rust_log is deprecated and ignored because observability.rust_log is set; remove it"
                        .to_owned(),
                );
            } else {
                self.observability.rust_log = filter;
                notes.push("[log] rust_log is deprecated; use observability.rust_log".to_owned());
            }
        }
        if let Some(legacy) = self.subscriptions.public_base_url.clone() {
            if self.http.public_url.is_some() {
                notes.push(
                    "subscriptions.public_base_url is deprecated and ignored because http.public_url is set; remove it"
                        .to_owned(),
                );
            } else {
                // The legacy key is the whole stream root; the new one stops before the base path.
                let root = legacy.trim().trim_end_matches('/');
                let base = self.http.stream_base_path.trim_end_matches('/');
                notes.push(match root.strip_suffix(base).filter(|_| !base.is_empty()) {
                    Some(prefix) => format!(
                        "subscriptions.public_base_url is deprecated; use http.public_url = {prefix:?} (http.stream_base_path is appended)"
                    ),
                    None => "subscriptions.public_base_url is deprecated; use http.public_url (the URL clients reach this server at; http.stream_base_path is appended)".to_owned(),
                });
            }
        }
        // What the subscription engine builds `callback_url` and `jwks_url` from.
        if let Some(root) = self.http.public_stream_root() {
            self.subscriptions.public_base_url = Some(root);
        }
        self.deprecations.extend(notes);
    }

    /// Checks the rules that tie keys together; each message names the keys involved.
    #[allow(clippy::too_many_lines)] // one flat list of rules reads better than helpers
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self
            .server
            .bind_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return invalid(format!(
                "server.bind_address {:?} is not an `ip:port` socket address (such as \"0.0.0.0:4437\")",
                self.server.bind_address
            ));
        }
        let base = &self.http.stream_base_path;
        if !base.starts_with('/')
            || (base.len() > 1 && base.ends_with('/'))
            || base.contains("//")
            || base.contains(['?', '#', ' '])
        {
            return invalid(format!(
                "http.stream_base_path {base:?} must start with '/', not end with '/', and contain no '//', '?', '#' or spaces"
            ));
        }
        if self.limits.max_stream_bytes == Some(0)
            || self.limits.max_request_body_bytes == 0
            || self.limits.max_read_chunk_bytes == 0
            || self.limits.max_sendfile_chunk_bytes == 0
        {
            return invalid(
                "limits.max_stream_bytes, limits.max_request_body_bytes, limits.max_read_chunk_bytes and limits.max_sendfile_chunk_bytes must be positive"
                    .to_owned(),
            );
        }
        if self.transport.connection.long_poll_timeout_secs == 0 {
            return invalid(
                "transport.connection.long_poll_timeout_secs must be at least 1".to_owned(),
            );
        }
        if self.transport.connection.sse_reconnect_interval_secs == 0 {
            return invalid(
                "transport.connection.sse_reconnect_interval_secs must be at least 1".to_owned(),
            );
        }
        self.validate_limits()?;
        if let Some(shards) = self.storage.acid_shard_count
            && (!(1..=256).contains(&shards) || !shards.is_power_of_two())
        {
            return invalid(format!(
                "storage.acid_shard_count {shards} must be a power of two in 1..=256"
            ));
        }
        if self.storage.mode == StorageMode::Postgres {
            let pg = &self.storage.postgres;
            if pg.url.trim().is_empty() {
                return invalid(
                    "storage.postgres.url must be set with storage.mode = \"postgres\"".to_owned(),
                );
            }
            if pg.pool_size < 2 {
                return invalid(format!(
                    "storage.postgres.pool_size {} must be at least 2",
                    pg.pool_size
                ));
            }
            let schema_ok = pg.schema.len() <= 40
                && pg
                    .schema
                    .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && pg
                    .schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !schema_ok {
                return invalid(format!(
                    "storage.postgres.schema {:?} must be a lower-case identifier (a-z, 0-9, _) of at most 40 characters",
                    pg.schema
                ));
            }
        }
        if let Some(url) = &self.http.public_url {
            validate_public_url("http.public_url", url).map_err(ConfigError::Invalid)?;
        }
        if let Some(url) = &self.subscriptions.public_base_url {
            validate_public_url(
                "subscriptions.public_base_url (deprecated: use http.public_url)",
                url,
            )
            .map_err(ConfigError::Invalid)?;
        }
        self.validate_transport()?;
        self.validate_proxy()?;
        self.observability
            .validate_otlp()
            .map_err(ConfigError::Invalid)?;
        if self.profile.is_production()
            && self.http.cors_origins.trim() == "*"
            && !self.http.allow_wildcard_cors
        {
            return invalid(format!(
                "http.cors_origins = \"*\" is refused in the {} profile; list the allowed origins, or set http.allow_wildcard_cors = true",
                self.profile
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_lines)] // one flat list of rules reads better than helpers
    fn validate_transport(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let mode = self.transport.mode;
        let tls = &self.transport.tls;
        let versions = &self.transport.http.versions;
        if versions.is_empty() {
            return invalid(
                "transport.http.versions must not be empty; use [\"http1\"]".to_owned(),
            );
        }
        for v in versions {
            if v == "http3" {
                return invalid(
                    "transport.http.versions: \"http3\" is not implemented; use \"http1\" and, over tls/mtls, \"http2\""
                        .to_owned(),
                );
            }
            if !HTTP_VERSIONS.contains(&v.as_str()) {
                return invalid(format!(
                    "transport.http.versions: unknown version {v:?}; expected \"http1\" or \"http2\""
                ));
            }
        }
        if !versions.iter().any(|v| v == "http1") {
            return invalid(
                "transport.http.versions must include \"http1\" (\"http2\" is offered alongside it)"
                    .to_owned(),
            );
        }
        match mode {
            TransportMode::Http => {
                if self.transport.http.http2() {
                    return invalid(
                        "transport.http.versions includes \"http2\", which needs transport.mode = \"tls\" or \"mtls\" (no cleartext h2c)"
                            .to_owned(),
                    );
                }
                for (key, value) in [
                    ("transport.tls.cert_path", &tls.cert_path),
                    ("transport.tls.key_path", &tls.key_path),
                    ("transport.tls.client_ca_path", &tls.client_ca_path),
                ] {
                    if value.is_some() {
                        return invalid(format!(
                            "{key} is set but transport.mode = \"http\"; set transport.mode = \"tls\" (or \"mtls\"), or remove the TLS paths"
                        ));
                    }
                }
            }
            TransportMode::Tls | TransportMode::Mtls => {
                for (key, value) in [
                    ("transport.tls.cert_path", &tls.cert_path),
                    ("transport.tls.key_path", &tls.key_path),
                ] {
                    if value.is_none() {
                        return invalid(format!(
                            "transport.mode = \"{}\" requires {key}",
                            mode.as_str()
                        ));
                    }
                }
                if mode == TransportMode::Mtls && tls.client_ca_path.is_none() {
                    return invalid(
                        "transport.mode = \"mtls\" requires transport.tls.client_ca_path (the CA that client certificates must chain to)"
                            .to_owned(),
                    );
                }
                if mode == TransportMode::Tls && tls.client_ca_path.is_some() {
                    return invalid(
                        "transport.tls.client_ca_path is set but transport.mode = \"tls\"; use transport.mode = \"mtls\" to require client certificates"
                            .to_owned(),
                    );
                }
                let min = tls_version_rank("transport.tls.min_version", &tls.min_version)?;
                let max = tls_version_rank("transport.tls.max_version", &tls.max_version)?;
                if min > max {
                    return invalid(format!(
                        "transport.tls.min_version {:?} is above transport.tls.max_version {:?}",
                        tls.min_version, tls.max_version
                    ));
                }
                for p in &tls.alpn_protocols {
                    if p != "http/1.1" && p != "h2" {
                        return invalid(format!(
                            "transport.tls.alpn_protocols: unknown protocol {p:?}; expected \"http/1.1\" or \"h2\""
                        ));
                    }
                }
                let wants_h1 = tls.alpn_protocols.iter().any(|p| p == "http/1.1");
                let wants_h2 = tls.alpn_protocols.iter().any(|p| p == "h2");
                if !wants_h1 {
                    return invalid(
                        "transport.http.versions includes \"http1\", so transport.tls.alpn_protocols must include \"http/1.1\""
                            .to_owned(),
                    );
                }
                if self.transport.http.http2() != wants_h2 {
                    return invalid(if wants_h2 {
                        "transport.tls.alpn_protocols includes \"h2\" but transport.http.versions does not include \"http2\"; keep them consistent".to_owned()
                    } else {
                        "transport.http.versions includes \"http2\", so transport.tls.alpn_protocols must include \"h2\"".to_owned()
                    });
                }
            }
        }
        Ok(())
    }

    /// The connection, header, live-reader and rate limits.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let conn = &self.transport.connection;
        let limits = &self.limits;
        if self.server.max_connections == 0 {
            return invalid("server.max_connections must be at least 1".to_owned());
        }
        if conn.header_read_timeout_secs == 0 {
            return invalid(
                "transport.connection.header_read_timeout_secs must be at least 1".to_owned(),
            );
        }
        if conn.effective_idle_timeout_secs() <= conn.long_poll_timeout_secs {
            return invalid(format!(
                "transport.connection.idle_timeout_secs ({}) must exceed transport.connection.long_poll_timeout_secs ({}), or waiting long-polls would be cut",
                conn.effective_idle_timeout_secs(),
                conn.long_poll_timeout_secs
            ));
        }
        if limits.max_header_count == 0 || limits.max_header_bytes == 0 {
            return invalid(
                "limits.max_header_count and limits.max_header_bytes must be positive".to_owned(),
            );
        }
        if limits.max_header_bytes > MAX_HEADER_BYTES_CEILING {
            return invalid(format!(
                "limits.max_header_bytes {} is above the ceiling of {MAX_HEADER_BYTES_CEILING}",
                limits.max_header_bytes
            ));
        }
        if limits.max_live_readers == 0 || limits.max_live_readers_per_stream == 0 {
            return invalid(
                "limits.max_live_readers and limits.max_live_readers_per_stream must be positive"
                    .to_owned(),
            );
        }
        if limits.rate_limit_requests_per_sec > 0
            && (limits.rate_limit_burst == 0 || limits.rate_limit_max_clients == 0)
        {
            return invalid(
                "limits.rate_limit_burst and limits.rate_limit_max_clients must be positive when limits.rate_limit_requests_per_sec is set"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let proxy = &self.proxy;
        proxy.trusted_networks().map_err(ConfigError::Invalid)?;
        if proxy.enabled && proxy.trusted_proxies.is_empty() {
            return invalid(
                "proxy.enabled = true requires proxy.trusted_proxies (the proxy addresses or CIDRs to trust)"
                    .to_owned(),
            );
        }
        if proxy.identity.mode == IdentityMode::Header {
            if self.transport.mode != TransportMode::Mtls {
                return invalid(format!(
                    "proxy.identity.mode = \"header\" is only allowed with transport.mode = \"mtls\" (it is \"{}\")",
                    self.transport.mode.as_str()
                ));
            }
            if !proxy.enabled {
                return invalid(
                    "proxy.identity.mode = \"header\" requires proxy.enabled = true and proxy.trusted_proxies"
                        .to_owned(),
                );
            }
            match &proxy.identity.header_name {
                None => {
                    return invalid(
                        "proxy.identity.mode = \"header\" requires proxy.identity.header_name"
                            .to_owned(),
                    );
                }
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                    return invalid(format!(
                        "proxy.identity.header_name {name:?} is not a valid HTTP header name"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The listen address (validated by [`Config::validate`]).
    pub fn bind_address(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind_address.parse().map_err(|e| {
            ConfigError::Invalid(format!(
                "server.bind_address {:?}: {e}",
                self.server.bind_address
            ))
        })
    }

    /// The data directory, for display.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.storage.data_dir
    }
}

/// `1.2` → 2, `1.3` → 3.
fn tls_version_rank(key: &str, v: &str) -> Result<u8, ConfigError> {
    match v.trim() {
        "1.2" => Ok(2),
        "1.3" => Ok(3),
        other => Err(ConfigError::Invalid(format!(
            "{key} {other:?} is not a supported TLS version; use \"1.2\" or \"1.3\""
        ))),
    }
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or environment value could not be read or parsed (`[load_config]`).
    #[error("{0}")]
    Load(String),
    /// The values are inconsistent (`[validate_config]`).
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests;
