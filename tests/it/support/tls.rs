//! Self-signed certificates made with the openssl command line, so the certificates
//! posthaste loads are produced by a different TLS stack than the one it is built on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require, run};

/// A certificate and its key in PEM files. A self-signed certificate is its own CA, so
/// clients verify the server with `cert` as their CA file.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    /// The file clients pass as CA (`--tls-ca-path`, `cafile=`, `--cacert`).
    pub fn ca(&self) -> &Path {
        &self.cert
    }
}

/// `openssl req -x509` for `cn`, valid for the DNS names and IP addresses given (the CN is
/// added as a DNS name too: clients match subjectAltName, not CN — RFC 6125 §6.4.4).
/// Files are `{dir}/{stem}.crt` and `{dir}/{stem}.key`.
pub fn self_signed(dir: &Path, stem: &str, cn: &str, dns: &[&str], ips: &[IpAddr]) -> CertPair {
    let openssl = require("openssl", "openssl");
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let mut san: Vec<String> = vec![format!("DNS:{cn}")];
    san.extend(dns.iter().filter(|d| **d != cn).map(|d| format!("DNS:{d}")));
    san.extend(ips.iter().map(|ip| format!("IP:{ip}")));
    let mut cmd = Command::new(openssl);
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg(format!("subjectAltName={}", san.join(",")))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    let out = run(cmd, None);
    assert!(out.success(), "openssl could not make a certificate for {cn}:\n{}", out.all());
    CertPair { cert, key }
}
