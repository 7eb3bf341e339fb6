//! TLS: loaded once at start; a configured but unloadable certificate stops
//! the server rather than letting it fall back to plaintext.

use std::path::Path;
use std::sync::Arc;

use pgwire::tokio::tokio_rustls::rustls::pki_types::pem::PemObject;
use pgwire::tokio::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use pgwire::tokio::tokio_rustls::rustls::{self, ServerConfig};
use pgwire::tokio::TlsAcceptor;

use crate::config::TlsConfig;
use crate::error::ServerError;

/// Builds the acceptor from PEM files.
pub fn load(config: &TlsConfig) -> Result<TlsAcceptor, ServerError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = load_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| ServerError::Tls {
        what: "private key",
        path: config.key.clone(),
        reason: e.to_string(),
    })?;
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls {
            what: "certificate and key",
            path: config.cert.clone(),
            reason: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let err = |reason: String| ServerError::Tls {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in file".into()));
    }
    Ok(certs)
}
