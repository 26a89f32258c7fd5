//! TLS: loading the certificate the config names, and making a self-signed one.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// One crypto provider (ring) for every crate that uses rustls.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load_acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    install_crypto_provider();
    let certs = {
        let pem = std::fs::read(&cfg.cert)
            .with_context(|| format!("cannot read tls.cert {}", cfg.cert.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate chain", cfg.cert.display()))?
    };
    if certs.is_empty() {
        bail!("{} holds no certificate\nhelp: tls.cert must be a PEM file with the certificate first, then the intermediates", cfg.cert.display());
    }
    let key = {
        let pem =
            std::fs::read(&cfg.key).with_context(|| format!("cannot read tls.key {}", cfg.key.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("{} is not a PEM private key", cfg.key.display()))?
            .with_context(|| format!("{} holds no private key", cfg.key.display()))?
    };
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
}
