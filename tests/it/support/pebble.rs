//! Pebble, Let's Encrypt's ACME test CA, with pebble-challtestsrv as its DNS server (every
//! name resolves to 127.0.0.1), on free ports of a test dir. Pebble's own HTTPS certificate
//! comes from a CA made here with openssl; the CA pebble issues from is new on every start
//! and is fetched from its management interface (`/roots/0`).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{free_port, require, run, wait_for_port, ProcessGuard, TestDir};

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed pebble's HTTPS certificate (`directory_ca`).
    pub https_ca: PathBuf,
    /// The port pebble's validation authority connects to for HTTP-01 (on `http_ip`): the
    /// test's challenge listener must be there.
    pub http_port: u16,
    /// The address every name resolves to.
    pub http_ip: Ipv4Addr,
    management: SocketAddr,
    dir: PathBuf,
    _challtestsrv: ProcessGuard,
    _pebble: ProcessGuard,
}

impl Pebble {
    /// Start challtestsrv and pebble; returns once pebble's directory answers. Every name
    /// resolves to 127.0.0.1 and HTTP-01 is validated on a free port there.
    pub fn start(dir: &TestDir) -> Pebble {
        Pebble::start_with(dir, Ipv4Addr::LOCALHOST, free_port())
    }

    /// The same, with every name resolving to `ip` and HTTP-01 validated on `http_port`
    /// (80, for a daemon that binds the real port before dropping root).
    pub fn start_with(dir: &TestDir, ip: Ipv4Addr, http_port: u16) -> Pebble {
        let pebble_bin = require("pebble", "pebble");
        let challtestsrv = require("pebble-challtestsrv", "pebble");
        let openssl = require("openssl", "openssl");
        let d = dir.subdir("pebble");

        // A CA, and a certificate for 127.0.0.1/localhost signed by it (rustls accepts no
        // self-signed CA certificate as a server certificate).
        let sh = |args: &[&str]| {
            let mut cmd = Command::new(&openssl);
            cmd.args(args).current_dir(&d);
            let out = run(cmd, None);
            assert!(out.success(), "openssl {args:?} failed:\n{}", out.all());
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=pebble test HTTPS CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        sh(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "localhost.key",
            "-out",
            "localhost.csr",
        ]);
        fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        sh(&[
            "x509",
            "-req",
            "-in",
            "localhost.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            "localhost.pem",
        ]);

        let (listen, management, tls_port, dns, dns_mgmt) =
            (free_port(), free_port(), free_port(), free_port(), free_port());
        let mut cmd = Command::new(challtestsrv);
        cmd.arg("-defaultIPv4")
            .arg(ip.to_string())
            .args(["-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{dns_mgmt}"));
        let mut challtestsrv = ProcessGuard::spawn("pebble-challtestsrv", cmd, &d.join("challtestsrv.log"));
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], dns_mgmt)),
            Duration::from_secs(20),
            &mut challtestsrv,
        );

        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": d.join("localhost.pem"),
            "privateKey": d.join("localhost.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        fs::write(d.join("pebble.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut cmd = Command::new(pebble_bin);
        cmd.arg("-config").arg(d.join("pebble.json")).arg("-dnsserver").arg(format!("127.0.0.1:{dns}"));
        // No random sleeps before validation; no random "bad nonce" rejections.
        cmd.env("PEBBLE_VA_NOSLEEP", "1").env("PEBBLE_WFE_NONCEREJECT", "0");
        let mut pebble = ProcessGuard::spawn("pebble", cmd, &d.join("pebble.log"));
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], listen)), Duration::from_secs(20), &mut pebble);
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], management)), Duration::from_secs(20), &mut pebble);

        Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_ca: d.join("ca.pem"),
            http_ip: ip,
            http_port,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            dir: d,
            _challtestsrv: challtestsrv,
            _pebble: pebble,
        }
    }

    /// The address to give the challenge listener: where pebble's VA connects.
    pub fn http_listen(&self) -> SocketAddr {
        SocketAddr::from((self.http_ip, self.http_port))
    }

    /// The root pebble issues from (fetched with curl, written to a file).
    pub fn issuing_root(&self) -> PathBuf {
        let curl = require("curl", "curl");
        let path = self.dir.join("issuing-root.pem");
        let mut cmd = Command::new(curl);
        cmd.args(["-sS", "--fail", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://{}/roots/0", self.management))
            .arg("-o")
            .arg(&path);
        let out = run(cmd, None);
        assert!(out.success(), "cannot fetch pebble's root:\n{}", out.all());
        path
    }

    /// Asserts that the chain in `chain` (leaf first) verifies against pebble's root for
    /// `hostname` (openssl verify, a TLS stack other than posthaste's).
    #[track_caller]
    pub fn assert_verifies(&self, chain: &Path, hostname: &str) {
        let openssl = require("openssl", "openssl");
        let root = self.issuing_root();
        let leaf = self.dir.join("leaf-to-verify.pem");
        let mut cmd = Command::new(&openssl);
        cmd.args(["x509", "-in"]).arg(chain).arg("-out").arg(&leaf);
        assert!(run(cmd, None).success());
        let mut cmd = Command::new(&openssl);
        cmd.args(["verify", "-purpose", "sslserver", "-verify_hostname", hostname, "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(chain)
            .arg(&leaf);
        let out = run(cmd, None);
        assert!(
            out.success() && out.stdout.contains(": OK"),
            "{} does not verify against pebble's root for {hostname}:\n{}",
            chain.display(),
            out.all()
        );
    }
}

/// The serial number (upper-case hex, as openssl prints it) of the first certificate in a
/// PEM file.
pub fn file_serial(pem: &Path) -> String {
    let openssl = require("openssl", "openssl");
    let mut cmd = Command::new(openssl);
    cmd.args(["x509", "-noout", "-serial", "-in"]).arg(pem);
    let out = run(cmd, None);
    assert!(out.success(), "openssl x509 {}:\n{}", pem.display(), out.all());
    out.stdout.trim().trim_start_matches("serial=").to_owned()
}

/// The serial of the certificate a TLS server at `addr` presents (implicit TLS), as seen by
/// a fresh `openssl s_client` connection.
pub fn served_serial(addr: SocketAddr, servername: &str) -> String {
    let openssl = require("openssl", "openssl");
    let mut cmd = Command::new(&openssl);
    cmd.args(["s_client", "-connect"]).arg(addr.to_string()).args(["-servername", servername]);
    let out = run(cmd, Some(b""));
    let start = out.stdout.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| {
        panic!("no certificate from {addr}:\n{}", out.all());
    });
    let end = out.stdout[start..].find("-----END CERTIFICATE-----").expect("PEM end") + start + 25;
    let mut cmd = Command::new(&openssl);
    cmd.args(["x509", "-noout", "-serial"]);
    let x = run(cmd, Some(&out.stdout.as_bytes()[start..end]));
    assert!(x.success(), "{}", x.all());
    x.stdout.trim().trim_start_matches("serial=").to_owned()
}
