//! [`TlsConfig`]: the server's own HTTPS and WSS (`--tls-cert`, `--tls-key`), with rustls on
//! the ring provider (no OpenSSL). The accept loop (`accept`) does the handshake per connection,
//! bounded by the header read timeout, before handing the decrypted stream to HTTP; REST and
//! WebSocket are then served exactly as over plain TCP.
//!
//! A cluster behind nginx usually leaves TLS to nginx (`deploy/nginx.conf.template`); this is
//! for a single node, or for encrypting the hop from the proxy to the nodes as well.

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A certificate chain and its private key, ready to serve. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first, then intermediates) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1). Errors name the file and what is wrong with it.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<TlsConfig> {
        let cert_pem = std::fs::read(cert)
            .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
        let key_pem = std::fs::read(key)
            .with_context(|| format!("reading the TLS private key {}", key.display()))?;
        Self::from_pem(&cert_pem, &key_pem).with_context(|| {
            format!(
                "loading the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })
    }

    /// [`TlsConfig::from_pem_files`] from PEM texts in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<TlsConfig> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("the certificate file is not valid PEM: {e}"))?;
        if chain.is_empty() {
            anyhow::bail!("the certificate file holds no -----BEGIN CERTIFICATE----- block");
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| anyhow::anyhow!("the key file holds no usable private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the private key does not fit the certificate, or is not supported")?;
        // The server speaks HTTP/1.1 only (WebSockets upgrade from it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The handshake side, for the accept loop.
    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_with_a_reason() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
        assert!(TlsConfig::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).is_ok());

        let e = TlsConfig::from_pem(b"nonsense", key_pem.as_bytes()).unwrap_err();
        assert!(
            format!("{e:#}").contains("no -----BEGIN CERTIFICATE"),
            "{e:#}"
        );
        let e = TlsConfig::from_pem(cert_pem.as_bytes(), b"nonsense").unwrap_err();
        assert!(format!("{e:#}").contains("no usable private key"), "{e:#}");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let e = TlsConfig::from_pem(
            cert_pem.as_bytes(),
            other.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("does not fit"), "{e:#}");
        let e = TlsConfig::from_pem_files(Path::new("/nonexistent/cert.pem"), Path::new("k"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/cert.pem"), "{e:#}");
    }
}
