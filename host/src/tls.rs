//! TLS configurations on rustls (ring): clients trusting Mozilla's roots
//! and, where the configuration names one, a private CA; and the admin
//! listener's server side.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client configuration trusting Mozilla's roots and the PEM
/// certificates in `ca`, if given.
///
/// # Errors
/// A message naming `ca` when it cannot be read or holds no usable
/// certificate.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read `{}`: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("`{}`: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("`{}`: {e}", ca.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// A server configuration presenting the PEM certificate chain in `cert`
/// with the private key in `key`: TLS 1.2 and 1.3, HTTP/1.1.
///
/// # Errors
/// A message naming the file that cannot be read, holds no certificate or
/// key, or whose key does not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read `{}`: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}`: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("`{}`: no usable private key: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| {
        format!(
            "`{}` and `{}` do not make a certificate and its key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
