//! Built-in TLS (rustls, `[server.tls]`): HTTPS and WSS on the server's own listener, HTTP/2 by
//! ALPN (RFC 7301), TLS 1.2 and 1.3 only (rustls implements nothing older).
//!
//! The certificate is re-read without a restart: when its files change (checked every
//! `server.tls.reload_check_secs`, so a Let's Encrypt renewal is picked up on its own) and on
//! SIGHUP. A file that cannot be read or parsed leaves the current certificate in place and is
//! logged with its path; connections keep being served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// The crypto provider every TLS object of this process uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
/// Errors name the file.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading the TLS certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading the TLS private key {}", key_path.display()))?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("unusable TLS private key {}", key_path.display()))?;
    let certified = CertifiedKey::new(certs, key);
    certified.keys_match().with_context(|| {
        format!(
            "the TLS private key {} does not match the certificate {}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(certified)
}

/// The current certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    /// Loads the certificate now (errors name the file).
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Self>> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(key)),
            stamp: RwLock::new(modified(cert_path).zip(modified(key_path))),
        }))
    }

    /// Re-reads the files; keeps the current certificate if they are unusable. Returns whether
    /// a new certificate is in use.
    pub fn reload(&self) -> bool {
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) =
                    modified(&self.cert_path).zip(modified(&self.key_path));
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "TLS certificate not reloaded; keeping the current one"
                );
                false
            }
        }
    }

    /// Reloads if either file's modification time changed since the last load.
    pub fn reload_if_changed(&self) -> bool {
        let now = modified(&self.cert_path).zip(modified(&self.key_path));
        let before = *self.stamp.read().unwrap_or_else(|p| p.into_inner());
        now.is_some() && now != before && self.reload()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The acceptor for `settings`, or `None` when TLS is off; plus the certificate handle to keep
/// fresh with [`watch`].
pub fn acceptor(
    settings: &TlsSettings,
) -> anyhow::Result<Option<(TlsAcceptor, Arc<ReloadingCert>)>> {
    let Some((cert, key)) = settings.paths() else {
        return Ok(None);
    };
    let resolver = ReloadingCert::load(cert, key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some((TlsAcceptor::from(Arc::new(config)), resolver)))
}

/// Keeps `cert` fresh: checks the files every `every`, and reloads on SIGHUP. Runs until the
/// process ends.
pub async fn watch(cert: Arc<ReloadingCert>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = tick.tick() => {
                cert.reload_if_changed();
            }
            _ = hangup => {
                tracing::info!("SIGHUP: reloading the TLS certificate");
                cert.reload();
            }
        }
    }
}

/// A client configuration that trusts exactly the certificate in `cert_path` (pinned): for
/// `callsignal healthcheck` talking to its own server, whatever issued the certificate.
pub fn pinned_client(cert_path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let leaf = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading the TLS certificate {}", cert_path.display()))?
        .next()
        .with_context(|| format!("no certificate in {}", cert_path.display()))?
        .with_context(|| format!("parsing the TLS certificate {}", cert_path.display()))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(leaf)))
        .with_no_client_auth())
}

/// Accepts exactly one certificate (compared byte for byte), signatures checked as usual.
#[derive(Debug)]
struct Pinned(CertificateDer<'static>);

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the configured one".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
