//! Throwaway certificates for tests and local TLS runs (feature `test-support`).
//!
//! [`TestPki::write`] creates, in one directory, a test CA, a server certificate for
//! `localhost` and `127.0.0.1` signed by it, a client certificate signed by it, and a second,
//! unrelated CA with its own client certificate (for "wrong CA" tests). Nothing here is fit
//! for production: keys are written unencrypted and certificates are valid for decades.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the files [`TestPki::write`] creates.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The directory holding everything.
    pub dir: PathBuf,
    /// The test CA certificate (trust it in clients: `NODE_EXTRA_CA_CERTS`, `curl --cacert`).
    pub ca_cert: PathBuf,
    /// The test CA key (to sign more certificates, e.g. a renewed server certificate).
    pub ca_key: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1` (`transport.tls.cert_path`).
    pub server_cert: PathBuf,
    /// Its key (`transport.tls.key_path`).
    pub server_key: PathBuf,
    /// Client certificate signed by the test CA (use `ca_cert` as `client_ca_path`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A CA unrelated to the test CA.
    pub other_ca_cert: PathBuf,
    /// A client certificate signed by the unrelated CA (refused by an mtls server).
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

const CA_NAME: &str = "durable-streams test CA";

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` wants
fn to_io(e: rcgen::Error) -> io::Error {
    io::Error::other(e)
}

fn ca_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_owned());
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn leaf(
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), rcgen::Error> {
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Writes a fresh test PKI into `dir` (created if missing).
    pub fn write(dir: &Path) -> io::Result<TestPki> {
        std::fs::create_dir_all(dir)?;
        let pki = TestPki {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca_cert: dir.join("other-ca.crt"),
            other_client_cert: dir.join("other-client.crt"),
            other_client_key: dir.join("other-client.key"),
        };
        let ca_key = KeyPair::generate().map_err(to_io)?;
        let params = ca_params(CA_NAME).map_err(to_io)?;
        let ca_cert = params.self_signed(&ca_key).map_err(to_io)?;
        std::fs::write(&pki.ca_cert, ca_cert.pem())?;
        std::fs::write(&pki.ca_key, ca_key.serialize_pem())?;
        let ca = Issuer::new(params, ca_key);

        pki.renew_server_cert_with(&ca)?;
        let (cert, key) = leaf(
            &["client.test"],
            "test client",
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        )
        .map_err(to_io)?;
        std::fs::write(&pki.client_cert, cert)?;
        std::fs::write(&pki.client_key, key)?;

        let other_key = KeyPair::generate().map_err(to_io)?;
        let other_params = ca_params("unrelated test CA").map_err(to_io)?;
        std::fs::write(
            &pki.other_ca_cert,
            other_params.self_signed(&other_key).map_err(to_io)?.pem(),
        )?;
        let other = Issuer::new(other_params, other_key);
        let (cert, key) = leaf(
            &["client.test"],
            "rogue client",
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
        )
        .map_err(to_io)?;
        std::fs::write(&pki.other_client_cert, cert)?;
        std::fs::write(&pki.other_client_key, key)?;
        Ok(pki)
    }

    /// Replaces the server certificate and key with fresh ones from the same CA (to test a
    /// reload); returns the new certificate's PEM.
    pub fn renew_server_cert(&self) -> io::Result<String> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&self.ca_key)?).map_err(to_io)?;
        // The issuer needs only the CA's name, key usages and key, all reproducible here.
        let ca = Issuer::new(ca_params(CA_NAME).map_err(to_io)?, ca_key);
        self.renew_server_cert_with(&ca)
    }

    fn renew_server_cert_with(&self, ca: &Issuer<'_, KeyPair>) -> io::Result<String> {
        let (cert, key) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            ca,
        )
        .map_err(to_io)?;
        // Write the key first: a reload between the two writes then fails the key/cert check
        // and keeps the old pair, instead of pairing a new certificate with an old key.
        std::fs::write(&self.server_key, key)?;
        std::fs::write(&self.server_cert, &cert)?;
        Ok(cert)
    }
}
