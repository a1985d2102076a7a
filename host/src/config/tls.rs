//! `[tls]`: the certificate and key files, and the handshake deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use serde::{Deserialize, Serialize};

/// The `[tls]` section. TLS is on when both files are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first).
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// How long a client may take to complete the TLS handshake (default 10 s).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }

    /// Checks the section when TLS is on, the files included: a certificate that cannot serve refuses the
    /// start rather than the first handshake.
    pub fn validate(&self) -> Result<(), TlsConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.cert_file.is_empty() || self.key_file.is_empty() {
            return Err(TlsConfigError::Incomplete);
        }
        if self.handshake_timeout.is_zero() {
            return Err(TlsConfigError::HandshakeTimeout);
        }
        load_key_pair(self.cert_file.as_ref(), self.key_file.as_ref())?;
        Ok(())
    }
}

/// Why `[tls]` is refused; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// Only one of the two files is set.
    #[error("tls: cert_file and key_file must be set together")]
    Incomplete,
    /// `handshake_timeout` is zero.
    #[error("tls.handshake_timeout: must be greater than 0")]
    HandshakeTimeout,
    /// The files cannot serve.
    #[error(transparent)]
    KeyPair(#[from] KeyPairError),
}

/// The crypto provider of every TLS piece (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the configured certificate and key cannot serve; each names the file and key to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    /// The certificate file cannot be read or parsed as PEM.
    #[error("tls.cert_file {}: {reason}", .path.display())]
    CertFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("tls.cert_file {}: no certificate in the file", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file cannot be read or holds no private key.
    #[error("tls.key_file {}: {reason}", .path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("tls.key_file {} does not fit tls.cert_file {}: {reason}", .key_file.display(), .cert_file.display())]
    Mismatch {
        /// The certificate file.
        cert_file: PathBuf,
        /// The key file.
        key_file: PathBuf,
        /// What rustls says.
        reason: String,
    },
}

/// Reads a certificate chain and its key, checking that they belong together.
pub fn load_key_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, KeyPairError> {
    let cert_error = |e: &dyn std::fmt::Display| KeyPairError::CertFile {
        path: cert_file.to_owned(),
        reason: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(&e))?;
    if certs.is_empty() {
        return Err(KeyPairError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| KeyPairError::KeyFile {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| KeyPairError::Mismatch {
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
        reason: e.to_string(),
    })
}
