//! TLS settings: the certificate chain and private key from `SOKETI_SSL_CERT` /
//! `SOKETI_SSL_KEY` (PEM), with `SOKETI_SSL_PASS` for an encrypted PKCS#8 key, and the CA
//! bundle of `SOKETI_SSL_CA` appended to the chain. The handshake itself runs sans-IO in
//! the connection driver (rustls's `ServerConnection`), so TLS sockets keep the same
//! readiness-based, zero-copy-until-encryption path as plain ones.

use std::sync::Arc;

use pkcs8::der::Decode;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::TlsConfig;

/// Why TLS could not be set up; start-up stops with this message.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The certificate file held no PEM certificate.
    #[error("{0} contains no PEM certificate")]
    NoCertificate(String),
    /// The key file held no usable key.
    #[error("{0} contains no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// The encrypted key could not be decrypted with `SOKETI_SSL_PASS`.
    #[error("cannot decrypt the private key {path} with SOKETI_SSL_PASS: {reason}")]
    Decrypt { path: String, reason: String },
    /// rustls refused the pair.
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the rustls server configuration from the files.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut &read(&cfg.cert_path)?[..])
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cfg.cert_path.clone()));
    }
    if !cfg.ca_path.is_empty() {
        chain.extend(rustls_pemfile::certs(&mut &read(&cfg.ca_path)?[..]).filter_map(Result::ok));
    }
    let key = private_key(&read(&cfg.key_path)?, &cfg.key_path, &cfg.passphrase)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The key in `pem`: plain PKCS#8/PKCS#1/SEC1, or encrypted PKCS#8 with `passphrase`.
fn private_key(
    pem: &[u8],
    path: &str,
    passphrase: &str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        let decrypt = |reason: String| TlsError::Decrypt {
            path: path.to_owned(),
            reason,
        };
        let (_, der) = pkcs8::Document::from_pem(&text).map_err(|e| decrypt(e.to_string()))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::from_der(der.as_bytes())
            .map_err(|e| decrypt(e.to_string()))?;
        let plain = info
            .decrypt(passphrase)
            .map_err(|e| decrypt(e.to_string()))?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            plain.as_bytes().to_vec(),
        )));
    }
    rustls_pemfile::private_key(&mut &pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_empty_pem_are_clear_errors() {
        let cfg = TlsConfig {
            cert_path: "/nonexistent/cert.pem".into(),
            key_path: "/nonexistent/key.pem".into(),
            ..TlsConfig::default()
        };
        let err = server_config(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(matches!(
            private_key(b"nothing here", "k.pem", ""),
            Err(TlsError::NoKey(_))
        ));
    }
}
