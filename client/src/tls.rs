//! TLS for every connection a convoy program makes. A program says once, at start, which CA
//! it trusts (and, for a worker joining a cluster that asks for client certificates, its own
//! certificate); from then on every endpoint built here speaks TLS, and a bare `host:port`
//! means `https://host:port`. A URL given as `https://…` without a CA uses the system's roots.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA or certificate that cannot serve, in one line.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub(crate) String);

/// What a program trusts and presents.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// PEM: the CA that signed the coordinators' certificates (`CONVOY_TLS_CA`).
    pub ca: Option<PathBuf>,
    /// PEM certificate and key this program presents when a coordinator asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

static CONFIG: OnceLock<ClientTlsConfig> = OnceLock::new();

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))
}

/// Makes every later connection of this process use TLS with `settings` (no-op without a
/// CA). Called once, before the first connection; a second call changes nothing.
pub fn configure(settings: &TlsSettings) -> Result<(), TlsError> {
    let Some(ca) = &settings.ca else {
        return Ok(());
    };
    let pem = read(ca, "the CA certificate")?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(TlsError(format!(
            "{} holds no PEM certificate",
            ca.display()
        )));
    }
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
    if let Some((cert, key)) = &settings.identity {
        config = config.identity(Identity::from_pem(
            read(cert, "the certificate")?,
            read(key, "the key")?,
        ));
    }
    let _ = CONFIG.set(config);
    Ok(())
}

/// Whether [`configure`] set TLS up.
pub fn enabled() -> bool {
    CONFIG.get().is_some()
}

/// The TLS configuration for an `https` URL.
pub(crate) fn client_config() -> ClientTlsConfig {
    CONFIG
        .get()
        .cloned()
        .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots())
}
