//! TLS client settings, loaded and checked once: what `mqtts://` and `https://` connect with.
//!
//! Every TLS client of the project (the gateway's MQTT source, its local alarm publisher, the
//! upstream forwarder, and device-sim) gets its rustls `ClientConfig` from here, so they trust the
//! same roots and fail the same way:
//!
//! - **Roots.** `ca_file` (PEM, one or more certificates) *replaces* the defaults; without it,
//!   the platform's root certificates, read by `rustls-native-certs` from the operating system's
//!   store (`/etc/ssl/certs` on Debian and Raspberry Pi OS, honouring `SSL_CERT_FILE` and
//!   `SSL_CERT_DIR`). That crate was chosen over a compiled-in bundle (`webpki-roots`) because a
//!   gateway lives for years: the distribution's `ca-certificates` package keeps the roots current
//!   with `apt upgrade`, and an operator can add a private CA the usual way. No roots at all is an
//!   error, never a plaintext fallback.
//! - **Client certificate** (`client_cert_file` + `client_key_file`, both or neither): a PEM
//!   chain, leaf first, and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC). The key must
//!   match the leaf's public key; that is checked here, so `check-config` catches a swapped file.
//! - **ALPN** (`mqtt.alpn`): protocol names offered in the handshake, for brokers that need one
//!   (AWS IoT Core on port 443 wants `x-amzn-mqtt-ca`).
//!
//! The crypto provider is aws-lc-rs, named explicitly, so the process never depends on which
//! rustls provider happens to be installed as the default.

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files and names a TLS client is built from, as written in one config section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `ca_file`: PEM roots replacing the platform's.
    pub ca_file: Option<PathBuf>,
    /// `client_cert_file`: PEM certificate chain presented to the server.
    pub client_cert_file: Option<PathBuf>,
    /// `client_key_file`: PEM private key of that certificate.
    pub client_key_file: Option<PathBuf>,
    /// ALPN protocol names offered, in order; empty: none.
    pub alpn: Vec<String>,
}

/// A checked TLS client configuration: built from [`TlsFiles`] at load time, shared by every
/// connection of that section. Compares by the files it came from.
#[derive(Clone)]
pub struct TlsClient {
    files: TlsFiles,
    config: Arc<ClientConfig>,
}

/// Why a TLS client could not be built. `key` is the config key at fault without its section
/// (`ca_file`, `client_key_file`…); the caller adds the section and the line.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by the config cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A file holds no PEM block of the expected kind, or a damaged one.
    #[error("{}: {problem}", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// Only one of `client_cert_file` and `client_key_file` is set.
    #[error("needs {other} as well: a client certificate is a certificate and its key")]
    HalfClientAuth {
        key: &'static str,
        other: &'static str,
    },
    /// The private key is not the one of the certificate (or rustls cannot use it).
    #[error("{}: {problem}", path.display())]
    Key {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// `ca_file` is not set and the platform has no root certificates.
    #[error(
        "no root certificates found in the platform's store ({detail}); install the \
         ca-certificates package or set ca_file"
    )]
    NoPlatformRoots { key: &'static str, detail: String },
    /// The crypto provider offers no protocol version rustls accepts (a build problem).
    #[error("TLS cannot be set up: {problem}")]
    Unsupported { problem: String },
    /// An ALPN name is empty or longer than the 255 bytes TLS allows.
    #[error("{name:?} is not a protocol name: 1 to 255 bytes")]
    Alpn { key: &'static str, name: String },
}

impl TlsError {
    /// The config key at fault, without its section.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Read { key, .. }
            | Self::Pem { key, .. }
            | Self::HalfClientAuth { key, .. }
            | Self::Key { key, .. }
            | Self::NoPlatformRoots { key, .. }
            | Self::Alpn { key, .. } => key,
            Self::Unsupported { .. } => "url",
        }
    }
}

impl TlsClient {
    /// Reads and checks the files and builds the client configuration.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &files.ca_file {
            Some(path) => file_roots(path)?,
            None => platform_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Unsupported {
                problem: e.to_string(),
            })?
            .with_root_certificates(roots);
        let mut config = match (&files.client_cert_file, &files.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(TlsError::HalfClientAuth {
                    key: "client_cert_file",
                    other: "client_key_file",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::HalfClientAuth {
                    key: "client_key_file",
                    other: "client_cert_file",
                });
            }
            (Some(cert), Some(key)) => {
                let chain = certificates("client_cert_file", cert)?;
                let key_der = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsError::Key {
                        key: "client_key_file",
                        path: key.clone(),
                        problem: key_problem(&e, cert),
                    })?
            }
        };
        for name in &files.alpn {
            if name.is_empty() || name.len() > 255 {
                return Err(TlsError::Alpn {
                    key: "alpn",
                    name: name.clone(),
                });
            }
            config.alpn_protocols.push(name.as_bytes().to_vec());
        }
        Ok(Self {
            files,
            config: Arc::new(config),
        })
    }

    /// The rustls configuration to connect with.
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The files it was built from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.files.client_cert_file.is_some()
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; none is an error.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_owned(),
            problem: format!("not a readable PEM file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key,
            path: path.to_owned(),
            problem: "no \"BEGIN CERTIFICATE\" block found".into(),
        });
    }
    Ok(certs)
}

fn file_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certificates("ca_file", path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::Pem {
            key: "ca_file",
            path: path.to_owned(),
            problem: format!("certificate {} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

fn platform_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "the store is empty".to_owned(),
        };
        return Err(TlsError::NoPlatformRoots {
            key: "ca_file",
            detail,
        });
    }
    Ok(roots)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "client_key_file";
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key,
        path: path.to_owned(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key found (expected a \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE \
                 KEY\" or \"BEGIN EC PRIVATE KEY\" block)"
                    .into()
            }
            other => format!("not a readable PEM private key ({other})"),
        },
    })
}

fn key_problem(e: &rustls::Error, cert: &Path) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "this private key does not belong to the certificate in {}",
            cert.display()
        ),
        other => format!("unusable private key: {other}"),
    }
}
