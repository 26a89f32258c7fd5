//! ACME against a real Pebble (Let's Encrypt's test CA): library issuance over HTTP-01,
//! `posthaste install` in acme mode (and its rerun), renewal by the running daemon with the
//! new certificate served without a restart, SIGHUP reloading rotated files, and an
//! unreachable CA.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::pebble::{file_serial, served_serial, Pebble};
use crate::support::{free_port, is_root, loopback_ip, run, Posthaste, TestDir};
use posthaste::tls::acme::{self, Settings};

const HOST: &str = "mail.example.test";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

fn settings(pebble_directory: &str, ca: Option<&Path>, dir: &Path) -> Settings {
    Settings {
        directory: pebble_directory.to_owned(),
        email: "postmaster@example.test".into(),
        names: vec![HOST.into()],
        directory_ca: ca.map(Path::to_path_buf),
        account: dir.join("acme-account.json"),
        cert: dir.join("fullchain.pem"),
        key: dir.join("privkey.pem"),
    }
}

fn issue(s: &Settings, http_listen: std::net::SocketAddr) -> anyhow::Result<posthaste::tls::CertInfo> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(acme::issue_with_listener(s, http_listen))
}

/// Serials compared the way openssl prints them: upper-case hex without leading zeros.
fn norm(serial: &str) -> String {
    serial.trim_start_matches('0').to_ascii_uppercase()
}

#[test]
fn library_issuance_gets_a_chain_that_verifies_against_pebbles_root() {
    let dir = TestDir::new("acme-library");
    let pebble = Pebble::start(&dir);
    let out = dir.subdir("tls");
    let s = settings(&pebble.directory, Some(&pebble.https_ca), &out);
    let info = issue(&s, pebble.http_listen()).expect("issuance from pebble");

    assert_eq!(info.names, [HOST]);
    assert!(!info.self_signed);
    pebble.assert_verifies(&s.cert, HOST);
    assert_eq!(norm(&info.serial), norm(&file_serial(&s.cert)));
    assert_eq!(mode(&s.key), 0o600, "the private key is private");
    assert_eq!(mode(&s.account), 0o600, "the account key is private");
    assert_eq!(mode(&s.cert), 0o644);
    // The key belongs to the certificate: the daemon's loader accepts the pair.
    let store = posthaste::tls::CertStore::load(&posthaste::config::TlsConfig {
        cert: s.cert.clone(),
        key: s.key.clone(),
    })
    .unwrap();
    assert_eq!(store.info().serial, info.serial);

    // A second issuance reuses the stored account (same file, same account id inside).
    let account_before = std::fs::read(&s.account).unwrap();
    let again = issue(&s, pebble.http_listen()).expect("second issuance");
    assert_ne!(again.serial, info.serial);
    assert_eq!(std::fs::read(&s.account).unwrap(), account_before, "the account was reused");
    // Nothing but the three files (no temp files left behind).
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names, ["acme-account.json", "fullchain.pem", "privkey.pem"]);
}

/// A target root for `install --root`: os-release, passwd, group.
fn target(dir: &TestDir) -> PathBuf {
    let root = dir.subdir("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/os-release/debian-12"),
        root.join("etc/os-release"),
    )
    .unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

fn answers(dir: &TestDir, directory: &str, http_listen: std::net::SocketAddr, ca: &Path) -> PathBuf {
    dir.write("postmaster.pass", "a long enough secret\n");
    dir.write(
        "answers.yaml",
        format!(
            "hostname: {HOST}\ndomains: [example.test]\npostmaster: {{password_file: ./postmaster.pass}}\n\
             components: {{antispam: false, antivirus: false, guard: false}}\n\
             tls: {{mode: acme, email: postmaster@example.test, directory: \"{directory}\", http_listen: \"{http_listen}\", directory_ca: \"{}\"}}\n",
            ca.display()
        ),
    )
}

fn install(root: &Path, answers: &Path, extra: &[&str]) -> crate::support::Out {
    let mut cmd = Command::new(crate::support::posthaste::bin());
    cmd.arg("install").arg("--root").arg(root).arg("--answers").arg(answers).args(extra);
    cmd.env_remove("POSTHASTE_CONFIG");
    run(cmd, None)
}

/// The key change for the certificate in a `--dry-run --json` plan.
fn cert_action(out: &crate::support::Out) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    let c = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "key" && c["target"] == "/etc/posthaste/tls/fullchain.pem")
        .unwrap_or_else(|| panic!("no key change for the certificate: {json}"));
    c["action"].as_str().unwrap().to_owned()
}

#[test]
fn install_in_acme_mode_obtains_the_certificate_and_a_rerun_does_not_reissue() {
    let dir = TestDir::new("acme-install");
    let pebble = Pebble::start(&dir);
    let root = target(&dir);
    let answers = answers(&dir, &pebble.directory, pebble.http_listen(), &pebble.https_ca);
    let cert = root.join("etc/posthaste/tls/fullchain.pem");

    // The dry run plans the issuance and changes nothing (it does not contact the CA: see
    // the unreachable-CA test, whose dry run succeeds).
    let out = install(&root, &answers, &["--dry-run", "--json"]);
    out.assert_success();
    assert_eq!(cert_action(&out), "create");
    assert!(!root.join("etc/posthaste").exists(), "a dry run wrote files");

    let out = install(&root, &answers, &["--yes"]);
    out.assert_success();
    pebble.assert_verifies(&cert, HOST);
    let serial = file_serial(&cert);
    assert_eq!(mode(&root.join("etc/posthaste/tls/privkey.pem")), 0o600);
    assert_eq!(mode(&root.join("etc/posthaste/tls/acme-account.json")), 0o600);
    // The daemon config names the files and renews from the same CA, trusting its copy of
    // the directory's CA; the daemon's own loader accepts it.
    let config = posthaste::config::Config::load(&root.join("etc/posthaste/posthaste.toml")).unwrap();
    let a = config.acme.as_ref().expect("an [acme] section");
    assert_eq!(a.directory, pebble.directory);
    assert_eq!(a.http_listen, pebble.http_listen());
    assert_eq!(a.directory_ca.as_deref(), Some(Path::new("/etc/posthaste/tls/acme-directory-ca.pem")));
    assert_eq!(
        std::fs::read(root.join("etc/posthaste/tls/acme-directory-ca.pem")).unwrap(),
        std::fs::read(&pebble.https_ca).unwrap()
    );
    assert_eq!(config.tls.as_ref().unwrap().cert, Path::new("/etc/posthaste/tls/fullchain.pem"));
    let saved = std::fs::read_to_string(root.join("etc/posthaste/answers.yaml")).unwrap();
    assert!(saved.contains("mode: acme") && saved.contains(&pebble.directory), "{saved}");

    // A rerun: the certificate is valid for the hostname, so nothing is issued.
    let out = install(&root, &answers, &["--dry-run", "--json"]);
    out.assert_success();
    assert_eq!(cert_action(&out), "none");
    let out = install(&root, &answers, &["--yes"]);
    out.assert_success();
    assert_eq!(file_serial(&cert), serial, "the rerun re-issued:\n{}", out.all());

    // Asking for another hostname does re-issue.
    let text = std::fs::read_to_string(&answers).unwrap().replace(HOST, "mx.example.test");
    std::fs::write(&answers, text).unwrap();
    let out = install(&root, &answers, &["--dry-run", "--json"]);
    out.assert_success();
    assert_eq!(cert_action(&out), "update");
}

/// Under systemd the unit must let the unprivileged daemon replace the certificate
/// (`ProtectSystem=strict` makes everything else read-only), and `systemctl reload` is SIGHUP.
#[test]
fn the_systemd_unit_lets_the_daemon_renew_into_the_tls_directory() {
    let dir = TestDir::new("acme-unit");
    let pebble = Pebble::start(&dir);
    let root = target(&dir);
    // A target with systemd installed: the install writes a unit (and, under --root, does
    // not run systemctl).
    dir.write("root/lib/systemd/systemd", "");
    let answers = answers(&dir, &pebble.directory, pebble.http_listen(), &pebble.https_ca);
    let out = install(&root, &answers, &["--yes"]);
    out.assert_success();
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/posthaste.service")).unwrap();
    assert!(
        unit.contains("ReadWritePaths=/var/lib/posthaste\nReadWritePaths=/etc/posthaste/tls\n"),
        "{unit}"
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    assert_eq!(mode(&root.join("etc/posthaste/tls")), 0o750);
    pebble.assert_verifies(&root.join("etc/posthaste/tls/fullchain.pem"), HOST);
}

#[test]
fn the_daemon_renews_and_new_connections_get_the_new_certificate_without_a_restart() {
    let dir = TestDir::new("acme-renew");
    let pebble = Pebble::start(&dir);
    let tls = dir.subdir("acme-tls");
    let s = settings(&pebble.directory, Some(&pebble.https_ca), &tls);
    let first = issue(&s, pebble.http_listen()).expect("first issuance");

    let mut server = Posthaste::builder(&dir)
        .listener("imaps")
        .set("tls.cert", s.cert.display().to_string())
        .set("tls.key", s.key.display().to_string())
        .set("acme.directory", pebble.directory.clone())
        .set("acme.email", "postmaster@example.test")
        .set("acme.http_listen", pebble.http_listen().to_string())
        .set("acme.directory_ca", pebble.https_ca.display().to_string())
        .set("acme.account", s.account.display().to_string())
        // Longer than any certificate's lifetime: due at once. The next look is an hour
        // later, so exactly one renewal happens during the test.
        .set("acme.renew_before", "36500d")
        .set("acme.check_interval", "1h")
        .build();
    server.start();
    let pid = server.pid().unwrap();
    let renewed = server.wait_for_log(|l| l["event"] == "certificate_renewed", Duration::from_secs(60));
    let new_serial = renewed["serial"].as_str().unwrap().to_owned();
    assert_ne!(norm(&new_serial), norm(&first.serial));

    // A new connection sees the new certificate; same process, no restart.
    assert_eq!(norm(&served_serial(server.addr("imaps"), HOST)), norm(&new_serial));
    assert_eq!(norm(&served_serial(server.submissions(), HOST)), norm(&new_serial));
    assert!(server.is_running());
    assert_eq!(server.pid(), Some(pid));
    assert_eq!(norm(&file_serial(&s.cert)), norm(&new_serial));
    pebble.assert_verifies(&s.cert, HOST);
}

/// The production shape: started as root, `serve` binds the real port 80 for HTTP-01 with
/// the mail ports, drops to the `posthaste` user, and then replaces the self-signed
/// certificate it started with (a `mode: self-signed` install switched to ACME) by one
/// from the CA, writing the files as that user.
#[test]
fn an_unprivileged_daemon_renews_through_port_80_bound_before_dropping_root() {
    assert!(is_root(), "this test binds port 80 and drops root: run it as root (tests/run.sh does)");
    let user = "posthaste";
    if !Command::new("id").arg(user).output().unwrap().status.success() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
            .output()
            .unwrap();
        // Another test binary may have created it at the same moment.
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists"));
    }
    let dir = TestDir::new("acme-unprivileged");
    // A loopback address of its own, so port 80 there is free.
    let ip = loopback_ip();
    let pebble = Pebble::start_with(&dir, ip, 80);
    let mut server = Posthaste::builder(&dir)
        .set("server.user", user)
        .set("acme.directory", pebble.directory.clone())
        .set("acme.email", "postmaster@example.test")
        .set("acme.http_listen", pebble.http_listen().to_string())
        .set("acme.directory_ca", pebble.https_ca.display().to_string())
        .build();
    for d in [server.data_dir(), dir.join("tls")] {
        let ok = Command::new("chown").args(["-R", &format!("{user}:")]).arg(&d).status().unwrap();
        assert!(ok.success());
    }
    let cert = server.cert().cert.clone();
    let self_signed = file_serial(&cert);
    server.start();
    server.wait_for_log(|l| l["message"] == "dropped root privileges", Duration::from_secs(20));
    let renewed = server.wait_for_log(|l| l["event"] == "certificate_renewed", Duration::from_secs(60));
    let serial = renewed["serial"].as_str().unwrap().to_owned();

    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid().unwrap())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.split_whitespace().skip(1).any(|u| u == "0"), "still root: {uid_line}");
    use std::os::unix::fs::MetadataExt;
    assert_ne!(std::fs::metadata(&cert).unwrap().uid(), 0, "written by the server user");
    assert_ne!(norm(&serial), norm(&self_signed));
    assert_eq!(norm(&file_serial(&cert)), norm(&serial));
    assert_eq!(norm(&served_serial(server.submissions(), HOST)), norm(&serial));
    pebble.assert_verifies(&cert, HOST);
    // The port-80 responder answers nothing but challenges.
    let mut curl = Command::new(crate::support::require("curl", "curl"));
    curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]).arg(format!("http://{ip}/"));
    assert_eq!(run(curl, None).stdout, "404");
}

/// A renewal that fails (the CA is gone) is logged with what to do, and the certificate
/// in use stays.
#[test]
fn a_failed_renewal_keeps_the_current_certificate() {
    let dir = TestDir::new("acme-renewal-fails");
    let mut server = Posthaste::builder(&dir)
        .set("acme.directory", format!("https://127.0.0.1:{}/dir", free_port()))
        .set("acme.email", "postmaster@example.test")
        .set("acme.http_listen", crate::support::free_addr().to_string())
        .build();
    let before = file_serial(&server.cert().cert);
    server.start();
    let failed = server.wait_for_log(|l| l["event"] == "certificate_renewal_failed", Duration::from_secs(30));
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("cannot reach the ACME CA") && error.contains("help:"), "{failed}");
    assert_eq!(norm(&served_serial(server.submissions(), HOST)), norm(&before));
    assert_eq!(norm(&file_serial(&server.cert().cert)), norm(&before));
    assert!(server.is_running());
}

#[test]
fn sighup_reloads_rotated_certificate_files() {
    let dir = TestDir::new("tls-sighup");
    let mut server = Posthaste::builder(&dir).build();
    server.start();
    let before = served_serial(server.submissions(), HOST);
    assert_eq!(norm(&before), norm(&file_serial(&server.cert().cert)));

    // Rotate the files the way `mode: files` users do, then SIGHUP.
    let fresh = crate::support::tls::self_signed(&dir.subdir("new"), "cert", HOST, &[], &[]);
    let (cert, key) = (server.cert().cert.clone(), server.cert().key.clone());
    std::fs::copy(&fresh.key, &key).unwrap();
    std::fs::copy(&fresh.cert, &cert).unwrap();
    let expected = file_serial(&cert);
    assert_ne!(norm(&expected), norm(&before));
    // SAFETY: kill(2) on the pid of the daemon this test started.
    unsafe { libc::kill(server.pid().unwrap() as i32, libc::SIGHUP) };
    server.wait_for_log(|l| l["event"] == "certificate_reloaded", Duration::from_secs(10));
    assert_eq!(norm(&served_serial(server.submissions(), HOST)), norm(&expected));

    // A broken pair is refused and the current certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    unsafe { libc::kill(server.pid().unwrap() as i32, libc::SIGHUP) };
    let failed = server.wait_for_log(|l| l["event"] == "certificate_reload_failed", Duration::from_secs(10));
    assert!(failed["error"].as_str().unwrap().contains("help:"), "{failed}");
    assert_eq!(norm(&served_serial(server.submissions(), HOST)), norm(&expected));
    assert!(server.is_running());
}

#[test]
fn an_unreachable_ca_gives_a_clear_error_and_changes_nothing() {
    let dir = TestDir::new("acme-unreachable");
    // Nothing listens there.
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let ca = crate::support::tls::self_signed(&dir.subdir("ca"), "ca", "ca.example.test", &[], &[]).cert;

    // The library: an error with a help line, no file written.
    let out = dir.subdir("tls");
    let s = settings(&directory, Some(&ca), &out);
    let err = format!("{:#}", issue(&s, crate::support::free_addr()).unwrap_err());
    assert!(err.contains("cannot reach the ACME CA") && err.contains(&directory), "{err}");
    assert!(err.contains("\nhelp: "), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "files were written");

    // The installer: the dry run does not contact the CA, so it succeeds; the install fails
    // with the same help and leaves the target as it was.
    let root = target(&dir);
    let answers = answers(&dir, &directory, crate::support::free_addr(), &ca);
    let listing = |r: &Path| {
        let out = Command::new("find").arg(r).output().unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    let before = listing(&root);
    let out = install(&root, &answers, &["--dry-run", "--json"]);
    out.assert_success();
    assert_eq!(cert_action(&out), "create");
    let out = install(&root, &answers, &["--yes"]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    assert!(
        out.stderr.contains("cannot reach the ACME CA") && out.stderr.contains("help: "),
        "{}",
        out.all()
    );
    assert_eq!(listing(&root), before, "the failed install left changes behind");
}

/// Regression: an answers file with `tls.http_listen` on a mail port made the install stop
/// with "BUG: the installer rendered a config the daemon refuses … please report this": a
/// user's mistake, now reported as one, with its line and what to do.
#[test]
fn acme_http_listen_on_a_mail_port_was_reported_as_a_bug() {
    let dir = TestDir::new("acme-http-listen-mail-port");
    let root = target(&dir);
    let ca = dir.write("ca.pem", "not used: the answers are refused first\n");
    for listen in ["127.0.0.1:25", "0.0.0.0:587", "[::1]:993"] {
        let answers = answers(&dir, "https://ca.example.test/dir", listen.parse().unwrap(), &ca);
        let out = install(&root, &answers, &["--dry-run"]);
        assert_eq!(out.code(), Some(1), "{listen}: {}", out.all());
        let port = listen.rsplit(':').next().unwrap();
        assert!(
            out.stderr.contains(&format!("answers.yaml:5: tls.http_listen \"{listen}\" is on port {port}")),
            "{listen}: {}",
            out.all()
        );
        assert!(out.stderr.contains("help: the CA connects to port 80"), "{}", out.all());
        assert!(!out.all().contains("BUG"), "{}", out.all());
    }
}
