//! TLS client configurations: rustls on ring, trusting Mozilla's roots
//! and, where the configuration names one, a private CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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
