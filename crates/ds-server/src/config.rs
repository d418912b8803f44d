//! Server configuration: the seed's TOML schema and `DS_*` environment overrides.
//!
//! Sources, later winning: built-in defaults, `config/default.toml` (when present in the
//! working directory), `--config <path>`, then `DS_SECTION__FIELD` environment variables.
//! Profiles (`dev`, `prod`, ...) are layered in by the operator-surface work; every key here
//! already has the seed's name, so each `DS_*` variable maps one to one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, `host:port` (default `0.0.0.0:4437`, the protocol's registered port).
    pub bind_address: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_address: "0.0.0.0:4437".to_owned(),
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
}

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
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Allowed CORS origins: `*` or a comma-separated list of origins.
    pub cors_origins: String,
    /// Where the protocol is mounted (default `/v1/stream`).
    pub stream_base_path: String,
    /// `public` or `private`: the visibility in `Cache-Control` of cacheable catch-up reads.
    pub cache_visibility: CacheVisibility,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: "*".to_owned(),
            stream_base_path: "/v1/stream".to_owned(),
            cache_visibility: CacheVisibility::Public,
        }
    }
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
    /// Backend: `memory`, `file-fast`, `file-durable` or `acid`.
    pub mode: StorageMode,
    /// Directory of the durable backends.
    pub data_dir: PathBuf,
    /// Shards of the `acid` backend (a power of two in 1..=256).
    pub acid_shard_count: u32,
    /// Where the `acid` backend keeps its databases: `file` or `in-memory`.
    pub acid_backend: AcidBackendMode,
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
            acid_shard_count: 16,
            acid_backend: AcidBackendMode::File,
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

/// `[transport.http]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportHttpConfig {
    /// HTTP versions served: `http1`, `http2`.
    pub versions: Vec<String>,
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
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            long_poll_timeout_secs: 30,
            sse_reconnect_interval_secs: 60,
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
    /// `none`, `x-forwarded` or `forwarded`.
    pub forwarded_headers: String,
    /// Proxy addresses or CIDRs whose forwarded headers are trusted.
    pub trusted_proxies: Vec<String>,
    /// `[proxy.identity]`
    pub identity: ProxyIdentityConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            forwarded_headers: "none".to_owned(),
            trusted_proxies: Vec::new(),
            identity: ProxyIdentityConfig::default(),
        }
    }
}

/// `[proxy.identity]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyIdentityConfig {
    /// `none` or `header`.
    pub mode: String,
    /// Header carrying the client identity from the proxy.
    pub header_name: Option<String>,
    /// Accept the identity header only over TLS.
    pub require_tls: bool,
}

impl Default for ProxyIdentityConfig {
    fn default() -> Self {
        ProxyIdentityConfig {
            mode: "none".to_owned(),
            header_name: None,
            require_tls: true,
        }
    }
}

/// `[observability]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `tracing` filter directives (overridden by `RUST_LOG`).
    pub rust_log: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            rust_log: "info".to_owned(),
        }
    }
}

/// Where configuration is read from.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoadOptions {
    /// Directory holding `default.toml` (default `./config`); missing files are skipped.
    pub config_dir: Option<PathBuf>,
    /// An explicit file (`--config`), which must exist.
    pub config_file: Option<PathBuf>,
    /// Skip `DS_*` environment variables (for tests).
    pub ignore_env: bool,
}

/// Keys whose `DS_*` values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "transport.http.versions",
    "transport.tls.alpn_protocols",
    "proxy.trusted_proxies",
];

impl Config {
    /// Loads and validates the configuration from the layered sources.
    pub fn load(opts: &ConfigLoadOptions) -> Result<Config, ConfigError> {
        let dir = opts
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"));
        let mut builder = config::Config::builder();
        builder = builder.add_source(
            config::File::from(dir.join("default.toml"))
                .format(config::FileFormat::Toml)
                .required(false),
        );
        if let Some(file) = &opts.config_file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist or is not a file",
                    file.display()
                )));
            }
            builder = builder.add_source(
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
            builder = builder.add_source(env);
        }
        let cfg: Config = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses one TOML document over the defaults (no files, no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the rules that hold whatever the deployment.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self
            .server
            .bind_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return invalid(format!(
                "server.bind_address {:?} is not an `ip:port` socket address",
                self.server.bind_address
            ));
        }
        let base = &self.http.stream_base_path;
        if !base.starts_with('/') || (base.len() > 1 && base.ends_with('/')) || base.contains("//")
        {
            return invalid(format!(
                "http.stream_base_path {base:?} must start with '/' and not end with '/'"
            ));
        }
        if self.limits.max_stream_bytes == Some(0)
            || self.limits.max_request_body_bytes == 0
            || self.limits.max_read_chunk_bytes == 0
        {
            return invalid(
                "limits.max_stream_bytes, limits.max_request_body_bytes and limits.max_read_chunk_bytes must be positive"
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
        if !(1..=256).contains(&self.storage.acid_shard_count)
            || !self.storage.acid_shard_count.is_power_of_two()
        {
            return invalid(format!(
                "storage.acid_shard_count {} must be a power of two in 1..=256",
                self.storage.acid_shard_count
            ));
        }
        Ok(())
    }

    /// The data directory, for display.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.storage.data_dir
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
mod tests {
    use super::*;

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
        let err = Config::from_toml("[server]\nbind_address = \"nope\"").expect_err("invalid");
        assert!(err.to_string().contains("server.bind_address"));
        let err = Config::from_toml("[http]\nstream_base_path = \"v1/\"").expect_err("invalid");
        assert!(err.to_string().contains("http.stream_base_path"));
        let err = Config::from_toml("[storage]\nmode = \"tape\"").expect_err("invalid");
        assert!(matches!(err, ConfigError::Load(_)));
    }
}
