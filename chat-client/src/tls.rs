//! The one rustls client configuration behind `https://` and `wss://` (feature `rustls`).
//!
//! Roots: the webpki-roots bundle (Mozilla's CA list compiled into the binary) plus whatever
//! the application adds with
//! [`ClientBuilder::add_root_certificate_pem`](crate::ClientBuilder::add_root_certificate_pem).
//! webpki-roots rather than the operating system's store: the SDK then verifies the same way on
//! every platform and in minimal containers without a CA bundle, with no file or keychain access
//! at start-up; a private deployment adds its own CA explicitly instead of relying on what
//! happens to be installed on the host. The provider is rustls' `ring`, named here rather than
//! taken from a process-wide default, so an application that installs another provider (or
//! none) does not change or break the SDK.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// The client configuration trusting the built-in roots and every certificate in `extra_roots`
/// (PEM texts). REST and the WebSocket both speak HTTP/1.1, so that is the one ALPN offered.
pub(crate) fn client_config(extra_roots: &[Vec<u8>]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for pem in extra_roots {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::InvalidCertificate(format!("reading PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::InvalidCertificate(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::InvalidCertificate(
                "no -----BEGIN CERTIFICATE----- block in the PEM".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidCertificate(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_without_a_certificate_is_refused() {
        assert!(matches!(
            client_config(&[b"not a certificate".to_vec()]),
            Err(Error::InvalidCertificate(_))
        ));
        let garbled = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        assert!(matches!(
            client_config(&[garbled]),
            Err(Error::InvalidCertificate(_))
        ));
        assert!(client_config(&[]).is_ok());
    }
}
