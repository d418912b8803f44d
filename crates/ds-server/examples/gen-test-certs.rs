//! Writes a throwaway test PKI (CA, server and client certificates) into a directory:
//!
//! ```text
//! cargo run -p ds-server --example gen-test-certs -- <dir>
//! ```
//!
//! Files: `ca.crt`, `ca.key`, `server.crt`, `server.key` (for `localhost` and `127.0.0.1`),
//! `client.crt`, `client.key`, and `other-ca.crt`, `other-client.crt`, `other-client.key` from an
//! unrelated CA. For tests only.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-test-certs <dir>");
        return ExitCode::from(2);
    };
    match ds_server::testsupport::TestPki::write(&dir) {
        Ok(pki) => {
            println!("ca_cert={}", pki.ca_cert.display());
            println!("server_cert={}", pki.server_cert.display());
            println!("server_key={}", pki.server_key.display());
            println!("client_cert={}", pki.client_cert.display());
            println!("client_key={}", pki.client_key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: cannot write test certificates to {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
