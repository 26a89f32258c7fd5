//! DKIM keys: one Ed25519 and one RSA-2048 key per domain, made when the domain is added
//! (`posthaste domain add`, the installer's directory step) and never replaced.
//!
//! Layout: `{data_dir}/dkim/{domain}/{selector}.pem`, PKCS#8 PEM, mode 0600 in 0700
//! directories, owned by the owner of the data directory (the daemon's user). The file
//! name is the selector, so a later rotation adds files under new selectors next to these.
//!
//! Two algorithms because RFC 8463 §4 asks signers that use Ed25519 to also sign with RSA
//! until verifiers commonly support Ed25519 (many still ignore it).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls::pki_types::PrivateKeyDer;

/// The selector of the Ed25519 key (RFC 8463): `posthaste-ed25519._domainkey.{domain}`.
pub const ED25519_SELECTOR: &str = "posthaste-ed25519";
/// The selector of the RSA-2048 key (RFC 6376 §3.3.3 asks for 1024–4096 bits).
pub const RSA_SELECTOR: &str = "posthaste-rsa";
const RSA_BITS: usize = 2048;

/// The two algorithms we sign with, each with its own selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    Rsa,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Ed25519, Algorithm::Rsa];

    pub fn selector(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => ED25519_SELECTOR,
            Algorithm::Rsa => RSA_SELECTOR,
        }
    }

    /// The `k=` tag of the key record (RFC 6376 §3.6.1, RFC 8463 §4.1).
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }
}

/// `{dkim_dir}/{domain}/`.
pub fn domain_dir(dkim_dir: &Path, domain: &str) -> PathBuf {
    dkim_dir.join(domain.to_ascii_lowercase())
}

/// `{dkim_dir}/{domain}/{selector}.pem`.
pub fn key_path(dkim_dir: &Path, domain: &str, alg: Algorithm) -> PathBuf {
    domain_dir(dkim_dir, domain).join(format!("{}.pem", alg.selector()))
}

/// True when one of the domain's keys is missing.
pub fn missing(dkim_dir: &Path, domain: &str) -> bool {
    Algorithm::ALL.iter().any(|a| !key_path(dkim_dir, domain, *a).exists())
}

/// Makes the keys of `domain` that do not exist yet and returns the paths it created
/// (directories first). Existing keys are never touched, so this is safe to rerun. With
/// `owner`, what it creates is given to that uid/gid (the data directory's owner, when
/// run as root). On an error, what this call created is removed again.
pub fn ensure_domain_keys(
    dkim_dir: &Path,
    domain: &str,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let result = ensure_inner(dkim_dir, domain, owner, &mut created);
    if result.is_err() {
        for p in created.iter().rev() {
            let _ = if p.is_dir() { fs::remove_dir(p) } else { fs::remove_file(p) };
        }
        created.clear();
    }
    result.map(|()| created)
}

fn ensure_inner(
    dkim_dir: &Path,
    domain: &str,
    owner: Option<(u32, u32)>,
    created: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let dir = domain_dir(dkim_dir, domain);
    for d in [dkim_dir, dir.as_path()] {
        if !d.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .with_context(|| format!("cannot create the DKIM key directory {}", d.display()))?;
            created.push(d.to_owned());
            chown(d, owner)?;
        }
    }
    for alg in Algorithm::ALL {
        let path = key_path(dkim_dir, domain, alg);
        if path.exists() {
            continue;
        }
        let der = generate(alg)?;
        write_private_pem(&path, &der)?;
        created.push(path.clone());
        chown(&path, owner)?;
    }
    Ok(())
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to uid {uid}", path.display()))?;
    }
    Ok(())
}

/// A new private key, PKCS#8 DER.
fn generate(alg: Algorithm) -> anyhow::Result<Vec<u8>> {
    match alg {
        Algorithm::Ed25519 => {
            Ed25519Key::generate_pkcs8().map_err(|e| anyhow!("cannot make an Ed25519 key: {e}"))
        }
        Algorithm::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
                .map_err(|e| anyhow!("cannot make an RSA key: {e}"))?;
            let doc = key.to_pkcs8_der().map_err(|e| anyhow!("cannot encode the RSA key: {e}"))?;
            Ok(doc.as_bytes().to_vec())
        }
    }
}

/// Written to a temporary name (0600 from the start) and renamed, so a crash never leaves a
/// half-written key that later runs would take as present.
fn write_private_pem(path: &Path, der: &[u8]) -> anyhow::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let tmp = path.with_extension("pem.tmp");
    crate::durable::AtomicWrite::new(0o600)
        .temp_at(&tmp)
        .write(path, pem.as_bytes())
        .map_err(|e| anyhow!("cannot write the DKIM key {}: {e}", path.display()))
}

/// The PKCS#8 DER of a key file.
fn read_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = fs::read(path).with_context(|| format!("cannot read the DKIM key {}", path.display()))?;
    match rustls_pemfile::private_key(&mut text.as_slice()) {
        Ok(Some(PrivateKeyDer::Pkcs8(der))) => Ok(der.secret_pkcs8_der().to_vec()),
        _ => Err(anyhow!(
            "{} is not a PKCS#8 private key (\"BEGIN PRIVATE KEY\")\nhelp: move it away and run `posthaste dns` to make a new one (then publish the new record)",
            path.display()
        )),
    }
}

/// The signing keys of one domain; either may be missing.
pub struct DomainKeys {
    pub ed25519: Option<Ed25519Key>,
    pub rsa: Option<RsaKey<Sha256>>,
}

impl DomainKeys {
    /// Reads the domain's key files; a missing file is `None`, an unreadable one an error.
    pub fn load(dkim_dir: &Path, domain: &str) -> anyhow::Result<DomainKeys> {
        let mut keys = DomainKeys { ed25519: None, rsa: None };
        for alg in Algorithm::ALL {
            let path = key_path(dkim_dir, domain, alg);
            if !path.exists() {
                continue;
            }
            let der = read_der(&path)?;
            let bad = |e: mail_auth::Error| {
                anyhow!("{} is not a usable {} key: {e}", path.display(), alg.key_type())
            };
            match alg {
                Algorithm::Ed25519 => {
                    keys.ed25519 = Some(Ed25519Key::from_pkcs8_maybe_unchecked_der(&der).map_err(bad)?)
                }
                Algorithm::Rsa => {
                    let der = PrivateKeyDer::Pkcs8(der.into());
                    keys.rsa = Some(RsaKey::<Sha256>::from_key_der(der).map_err(bad)?)
                }
            }
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.ed25519.is_none() && self.rsa.is_none()
    }
}

/// One DKIM key record to publish (RFC 6376 §3.6.2.2): a TXT record at
/// `{selector}._domainkey.{domain}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DkimRecord {
    pub selector: String,
    pub algorithm: &'static str,
    /// `{selector}._domainkey.{domain}` (no trailing dot).
    pub name: String,
    /// The whole record text, `v=DKIM1; k=…; p=…`.
    pub value: String,
}

impl DkimRecord {
    /// The value cut into character-strings of at most 255 octets (RFC 1035 §3.3.14);
    /// verifiers concatenate them (RFC 6376 §3.6.2.2).
    pub fn strings(&self) -> Vec<String> {
        self.value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    }
}

/// The key records of the domain's existing keys (none for a missing key).
pub fn dns_records(dkim_dir: &Path, domain: &str) -> anyhow::Result<Vec<DkimRecord>> {
    let mut out = Vec::new();
    for alg in Algorithm::ALL {
        let path = key_path(dkim_dir, domain, alg);
        if !path.exists() {
            continue;
        }
        let der = read_der(&path)?;
        let public =
            public_key(alg, &der).with_context(|| format!("cannot read the key {}", path.display()))?;
        let p = base64::engine::general_purpose::STANDARD.encode(public);
        out.push(DkimRecord {
            selector: alg.selector().to_owned(),
            algorithm: alg.key_type(),
            name: format!("{}._domainkey.{}", alg.selector(), domain.to_ascii_lowercase()),
            value: format!("v=DKIM1; k={}; p={p}", alg.key_type()),
        });
    }
    Ok(out)
}

/// The `p=` data: for Ed25519 the raw 32-byte public key (RFC 8463 §4.2); for RSA the
/// DER SubjectPublicKeyInfo, which is what other signers publish and every verifier reads.
fn public_key(alg: Algorithm, pkcs8: &[u8]) -> anyhow::Result<Vec<u8>> {
    match alg {
        Algorithm::Ed25519 => {
            Ok(Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8).map_err(|e| anyhow!("{e}"))?.public_key())
        }
        Algorithm::Rsa => {
            use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
            let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|e| anyhow!("{e}"))?;
            let spki = key.to_public_key().to_public_key_der().map_err(|e| anyhow!("{e}"))?;
            Ok(spki.as_bytes().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_made_once_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dkim = tmp.path().join("dkim");
        let created = ensure_domain_keys(&dkim, "Example.TEST", None).unwrap();
        assert_eq!(created.len(), 4, "{created:?}");
        let ed = key_path(&dkim, "example.test", Algorithm::Ed25519);
        let rsa = key_path(&dkim, "example.test", Algorithm::Rsa);
        assert!(ed.ends_with("dkim/example.test/posthaste-ed25519.pem"), "{}", ed.display());
        for p in [&ed, &rsa] {
            assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(fs::metadata(&dkim).unwrap().permissions().mode() & 0o777, 0o700);
        let before = fs::read(&rsa).unwrap();
        // A rerun creates nothing and keeps the keys.
        assert!(ensure_domain_keys(&dkim, "example.test", None).unwrap().is_empty());
        assert_eq!(fs::read(&rsa).unwrap(), before);
        // A lost key is made again, the other one stays.
        fs::remove_file(&ed).unwrap();
        assert_eq!(ensure_domain_keys(&dkim, "example.test", None).unwrap(), vec![ed.clone()]);
        assert_eq!(fs::read(&rsa).unwrap(), before);
        let keys = DomainKeys::load(&dkim, "example.test").unwrap();
        assert!(keys.ed25519.is_some() && keys.rsa.is_some());
    }

    #[test]
    fn records_carry_the_public_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dkim = tmp.path().join("dkim");
        ensure_domain_keys(&dkim, "example.test", None).unwrap();
        let recs = dns_records(&dkim, "example.test").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].name, "posthaste-ed25519._domainkey.example.test");
        assert!(recs[0].value.starts_with("v=DKIM1; k=ed25519; p="), "{}", recs[0].value);
        // 32 bytes → 44 base64 characters.
        assert_eq!(recs[0].value.len(), "v=DKIM1; k=ed25519; p=".len() + 44);
        assert_eq!(recs[1].name, "posthaste-rsa._domainkey.example.test");
        // SubjectPublicKeyInfo of a 2048-bit key: 294 bytes → 392 base64 characters, so the
        // record needs two strings.
        assert!(recs[1].value.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
        let strings = recs[1].strings();
        assert_eq!(strings.len(), 2);
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), recs[1].value);
    }

    #[test]
    fn a_broken_key_file_is_an_error_with_help() {
        let tmp = tempfile::tempdir().unwrap();
        let dkim = tmp.path().join("dkim");
        fs::create_dir_all(dkim.join("example.test")).unwrap();
        fs::write(key_path(&dkim, "example.test", Algorithm::Rsa), "garbage").unwrap();
        let err = DomainKeys::load(&dkim, "example.test").err().unwrap().to_string();
        assert!(err.contains("help:"), "{err}");
    }
}
