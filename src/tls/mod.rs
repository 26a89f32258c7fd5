//! TLS: the certificate the config names, loaded into a store that every listener shares and
//! that can be swapped while the server runs (SIGHUP, ACME renewal); a self-signed pair for
//! installs without a CA; ACME issuance and renewal in [`acme`].

pub mod acme;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context as _};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// One crypto provider (ring) for every crate that uses rustls.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The listeners' certificate. Every acceptor built by [`CertStore::acceptor`] asks this
/// store for the certificate at each handshake, so [`CertStore::reload`] changes it for new
/// connections on every listener at once; sessions already running keep theirs.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    info: RwLock<CertInfo>,
}

impl CertStore {
    /// Load the pair `cfg` names; fails (with what to do) when it is missing or broken.
    pub fn load(cfg: &TlsConfig) -> anyhow::Result<Arc<CertStore>> {
        install_crypto_provider();
        let (key, info) = load_pair(&cfg.cert, &cfg.key)?;
        Ok(Arc::new(CertStore {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            current: RwLock::new(Arc::new(key)),
            info: RwLock::new(info),
        }))
    }

    /// Read the files again. On any problem the certificate in use stays (a half-written
    /// or mismatched pair never reaches a client) and the error says why.
    pub fn reload(&self) -> anyhow::Result<CertInfo> {
        let (key, info) = load_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.info.write().unwrap_or_else(|e| e.into_inner()) = info.clone();
        Ok(info)
    }

    /// What is served now.
    pub fn info(&self) -> CertInfo {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A TLS acceptor that serves whatever this store holds at handshake time.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        install_crypto_provider();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        // Our cipher order, not the client's (testssl.sh rates "no server cipher order"
        // HIGH): rustls' suites are all AEAD with forward secrecy, best first, so a client
        // that prefers something weaker among them still gets the strongest both support.
        // Versions stay rustls' default: TLS 1.3 and 1.2 only.
        config.ignore_client_order = true;
        TlsAcceptor::from(Arc::new(config))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One certificate for every name a client asks for (SNI is not used to choose).
        Some(self.0.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The facts of a certificate that renewal and the logs need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// subjectAltName DNS names (lower case).
    pub names: Vec<String>,
    pub issuer: String,
    /// Issuer = subject: made by `generate_self_signed` or by hand, not by a CA.
    pub self_signed: bool,
}

impl CertInfo {
    /// The first certificate of a PEM chain.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<CertInfo> {
        let der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .context("no certificate in the PEM data")?
            .context("the PEM data is not a certificate")?;
        Self::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> anyhow::Result<CertInfo> {
        use x509_parser::prelude::*;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        Ok(CertInfo {
            serial: cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names,
            issuer: cert.issuer().to_string(),
            self_signed: cert.issuer() == cert.subject(),
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<CertInfo> {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("{} holds no usable certificate", path.display()))
    }

    /// Whether every name in `wanted` is in the certificate.
    pub fn covers(&self, wanted: &[String]) -> bool {
        wanted.iter().all(|w| self.names.iter().any(|n| n.eq_ignore_ascii_case(w)))
    }
}

const KEY_HELP: &str =
    "tls.key must be the PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) of the certificate in tls.cert";

/// Read and check a certificate chain and its key.
fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<(CertifiedKey, CertInfo)> {
    let pem = std::fs::read(cert).with_context(|| {
        format!(
            "cannot read tls.cert {}\nhelp: check the path in [tls] and that the daemon's user can read it",
            cert.display()
        )
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain\nhelp: tls.cert must hold -----BEGIN CERTIFICATE----- blocks, the server's certificate first", cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate\nhelp: tls.cert must be a PEM file with the certificate first, then the intermediates", cert.display());
    }
    let info = CertInfo::from_der(&certs[0])
        .with_context(|| format!("the first certificate in {} cannot be parsed\nhelp: replace the file with the chain your CA issued", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| {
        format!(
            "cannot read tls.key {}\nhelp: check the path in [tls] and that the daemon's user can read it",
            key.display()
        )
    })?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key\nhelp: {KEY_HELP}", key.display()))?
        .with_context(|| format!("{} holds no private key\nhelp: {KEY_HELP}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key_der, &provider).with_context(|| {
        format!(
            "the certificate {} and the key {} do not match or are unsupported\nhelp: install the key the certificate was issued for (RSA, ECDSA P-256/P-384 or Ed25519)",
            cert.display(),
            key.display()
        )
    })?;
    Ok((certified, info))
}

/// A TLS acceptor for the pair `cfg` names (a [`CertStore`] nobody reloads).
pub fn load_acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    Ok(CertStore::load(cfg)?.acceptor())
}

/// A self-signed certificate for `hostname` (and `names`), valid ten years; the key is
/// written with mode 0600. Existing files are never overwritten.
pub fn generate_self_signed(hostname: &str, names: &[String], cert: &Path, key: &Path) -> anyhow::Result<()> {
    if cert.exists() || key.exists() {
        bail!("{} or {} already exists; not overwriting", cert.display(), key.display());
    }
    let mut sans = vec![hostname.to_owned()];
    sans.extend(names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(sans).context("invalid certificate name")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, hostname);
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key_pair = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key_pair)?;
    for dir in [cert.parent(), key.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir)?;
    }
    write_new(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, certificate.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Replace `path` atomically ([`crate::durable::write_atomic`]: a temporary beside it with
/// `mode` from the start, fsynced, renamed over `path`, the directory fsynced). A reader
/// sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    crate::durable::write_atomic(path, data, mode).map_err(|e| {
        // The renewal runs as the daemon's user, the first issuance as root.
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!("{e}\nhelp: the directory must be writable by this process's user")
        } else {
            anyhow::Error::new(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        generate_self_signed("mail.example.test", &["127.0.0.1".into()], &c, &k).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        load_acceptor(&TlsConfig { cert: c.clone(), key: k.clone() }).unwrap();
        assert!(generate_self_signed("mail.example.test", &[], &c, &k).is_err(), "must not overwrite");
    }

    #[test]
    fn reload_swaps_and_keeps_the_old_pair_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        generate_self_signed("mail.example.test", &[], &c, &k).unwrap();
        let store = CertStore::load(&TlsConfig { cert: c.clone(), key: k.clone() }).unwrap();
        let first = store.info();
        assert_eq!(first.names, ["mail.example.test"]);
        assert!(first.not_after > first.not_before);

        // A new pair: the store serves it after reload.
        let (c2, k2) = (dir.path().join("c2.pem"), dir.path().join("k2.pem"));
        generate_self_signed("mail.example.test", &["other.example.test".into()], &c2, &k2).unwrap();
        std::fs::rename(&c2, &c).unwrap();
        std::fs::rename(&k2, &k).unwrap();
        let second = store.reload().unwrap();
        assert_ne!(second.serial, first.serial);
        assert!(second.covers(&["other.example.test".into()]));

        // A broken key: the error says so and the second pair stays in use.
        std::fs::write(&k, "garbage").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.info().serial, second.serial);
    }

    #[test]
    fn write_atomic_replaces_with_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }
}
