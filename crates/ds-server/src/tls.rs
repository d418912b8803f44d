//! TLS context: PEM files through `rustls-pki-types`, a rustls `ServerConfig` with the
//! configured versions, ALPN and (in mtls) a client-certificate verifier, and an acceptor whose
//! configuration can be swapped on `SIGHUP` without touching established connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, TransportMode};
use crate::startup::{Phase, StartupError};

/// The TLS files of a tls/mtls configuration: `(key name, path)`.
fn tls_files(cfg: &Config) -> Vec<(&'static str, &Path)> {
    let tls = &cfg.transport.tls;
    let mut files = Vec::new();
    if let Some(p) = &tls.cert_path {
        files.push(("transport.tls.cert_path", p.as_path()));
    }
    if let Some(p) = &tls.key_path {
        files.push(("transport.tls.key_path", p.as_path()));
    }
    if cfg.transport.mode == TransportMode::Mtls
        && let Some(p) = &tls.client_ca_path
    {
        files.push(("transport.tls.client_ca_path", p.as_path()));
    }
    files
}

/// `[check_tls_files]`: every configured TLS path exists, is a file and can be opened.
pub(crate) fn check_files(cfg: &Config) -> Result<(), StartupError> {
    if !cfg.transport.mode.is_tls() {
        return Ok(());
    }
    for (key, path) in tls_files(cfg) {
        let fail = |why: String| {
            Err(StartupError::new(
                Phase::CheckTlsFiles,
                format!("{key} {}: {why}", path.display()),
            ))
        };
        match std::fs::metadata(path) {
            Err(e) => return fail(format!("cannot access the file: {e}")),
            Ok(m) if m.is_dir() => return fail("is a directory, not a file".to_owned()),
            Ok(_) => {}
        }
        if let Err(e) = std::fs::File::open(path) {
            return fail(format!("cannot be read by this process: {e}"));
        }
    }
    Ok(())
}

/// A failure to build the TLS context, for `[build_tls_context]`.
fn build_error(msg: String) -> StartupError {
    StartupError::new(Phase::BuildTlsContext, msg)
}

fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, StartupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            build_error(format!(
                "{key} {}: not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(build_error(format!(
            "{key} {}: the certificate chain is empty (no CERTIFICATE block)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the rustls configuration (`[build_tls_context]`).
pub(crate) fn server_config(cfg: &Config) -> Result<Arc<ServerConfig>, StartupError> {
    let tls = &cfg.transport.tls;
    let missing = |key: &str| build_error(format!("{key} is not set"));
    let cert_path = tls
        .cert_path
        .as_deref()
        .ok_or_else(|| missing("transport.tls.cert_path"))?;
    let key_path = tls
        .key_path
        .as_deref()
        .ok_or_else(|| missing("transport.tls.key_path"))?;
    let chain = load_certs("transport.tls.cert_path", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        build_error(format!(
            "transport.tls.key_path {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key_path.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        match (tls.min_version.trim(), tls.max_version.trim()) {
            ("1.3", _) => vec![&rustls::version::TLS13],
            (_, "1.2") => vec![&rustls::version::TLS12],
            _ => vec![&rustls::version::TLS12, &rustls::version::TLS13],
        };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| build_error(format!("TLS versions: {e}")))?;
    let builder = if cfg.transport.mode == TransportMode::Mtls {
        let ca_path: PathBuf = tls
            .client_ca_path
            .clone()
            .ok_or_else(|| missing("transport.tls.client_ca_path"))?;
        let mut roots = RootCertStore::empty();
        for cert in load_certs("transport.tls.client_ca_path", &ca_path)? {
            roots.add(cert).map_err(|e| {
                build_error(format!(
                    "transport.tls.client_ca_path {}: invalid CA certificate: {e}",
                    ca_path.display()
                ))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| {
                build_error(format!(
                    "transport.tls.client_ca_path {}: cannot build the client verifier: {e}",
                    ca_path.display()
                ))
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        build_error(format!(
            "transport.tls.cert_path {} / key_path {}: the private key does not fit the certificate, or either is invalid: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    // rustls picks the first server protocol the client also offers, so h2 goes first.
    let mut alpn = Vec::new();
    if tls.alpn_protocols.iter().any(|p| p == "h2") {
        alpn.push(b"h2".to_vec());
    }
    if tls.alpn_protocols.iter().any(|p| p == "http/1.1") {
        alpn.push(b"http/1.1".to_vec());
    }
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The current TLS configuration; [`TlsReloader::reload`] swaps it for new connections.
#[derive(Debug)]
pub(crate) struct TlsReloader {
    cfg: Config,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsReloader {
    pub(crate) fn new(cfg: Config, initial: Arc<ServerConfig>) -> Self {
        TlsReloader {
            cfg,
            current: RwLock::new(initial),
        }
    }

    /// An acceptor over the configuration in force now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokio_rustls::TlsAcceptor::from(Arc::clone(&current))
    }

    /// Re-reads the certificate, key and client CA. On failure the old configuration stays
    /// in force; established connections are never touched either way.
    pub(crate) fn reload(&self) -> Result<(), StartupError> {
        check_files(&self.cfg)?;
        let fresh = server_config(&self.cfg)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }
}
