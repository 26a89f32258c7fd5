//! The installer, run for real against a temp `--root`: the real planning and apply code,
//! with a fake system behind the command runner (it records every command and emulates
//! what dpkg/rpm, apt/dnf, useradd and systemctl would do to the target) and a fake probe
//! (root, plenty of RAM, no systemd). Nothing here touches the host's /etc or runs a
//! package manager.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use posthaste::install::host::{Cmd, Host, Output, Probe, Runner, SharedBuf};
use posthaste::install::plan::{Action, Kind, Plan};
use posthaste::install::{self, InstallArgs};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/os-release");
const PASSWORD: &str = "correct horse battery";

/// What the fake system knows about the target.
#[derive(Default)]
struct State {
    packages: BTreeSet<String>,
    enabled: BTreeSet<String>,
    active: BTreeSet<String>,
    log: Vec<Cmd>,
    /// A command whose text contains this fails.
    fail_on: Option<String>,
    /// When that command fails, this file is replaced by a directory holding a file (so
    /// nothing can be renamed or copied over it any more).
    sabotage: Option<PathBuf>,
}

#[derive(Clone)]
struct FakeSystem {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

impl FakeSystem {
    fn new(root: &Path) -> FakeSystem {
        FakeSystem { root: root.to_owned(), state: Arc::default() }
    }
    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.iter().map(ToString::to_string).collect()
    }
    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
    fn fail_on(&self, text: &str) {
        self.state.lock().unwrap().fail_on = Some(text.into());
    }
    fn edit(&self, file: &str, f: impl FnOnce(&mut Vec<String>)) {
        let path = self.root.join(file);
        let mut lines: Vec<String> =
            std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_owned).collect();
        f(&mut lines);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }
}

/// The user the fake useradd creates: ourselves when not root, so chown works either way.
fn fake_ids() -> (u32, u32) {
    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    if uid == 0 {
        (998, 998)
    } else {
        (uid, gid)
    }
}

impl Runner for FakeSystem {
    fn run(&self, cmd: &Cmd) -> std::io::Result<Output> {
        let mut st = self.state.lock().unwrap();
        st.log.push(cmd.clone());
        if let Some(f) = &st.fail_on {
            if cmd.to_string().contains(f.as_str()) {
                if let Some(p) = st.sabotage.take() {
                    let _ = std::fs::remove_file(&p);
                    std::fs::create_dir_all(p.join("in-the-way")).unwrap();
                }
                return Ok(Output::failed(1, "injected failure"));
            }
        }
        let argv = cmd.argv();
        let names = |skip: usize| -> Vec<String> {
            argv[skip..].iter().filter(|a| !a.starts_with('-')).map(|a| a.to_string()).collect()
        };
        let out = match argv.as_slice() {
            ["dpkg-query", ..] | ["rpm", ..] => {
                let wanted: Vec<String> =
                    names(1).into_iter().filter(|n| !n.contains('/') && !n.contains('%')).collect();
                let found: Vec<&String> = wanted.iter().filter(|n| st.packages.contains(*n)).collect();
                let stdout: String = found.iter().map(|n| format!("{n} installed\n")).collect();
                Output {
                    status: if found.len() == wanted.len() { 0 } else { 1 },
                    stdout,
                    stderr: String::new(),
                }
            }
            ["apt-get", "install", ..] => {
                for n in names(2) {
                    st.packages.insert(n);
                }
                Output::ok("")
            }
            // Like dnf, a package from a repository that is not configured yet is not found:
            // on Enterprise Linux rspamd is in rspamd's own repository (its .repo file), and
            // ClamAV in EPEL (the epel-release package).
            ["dnf", "install", ..] => {
                let el = std::fs::read_to_string(self.root.join("etc/os-release"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.starts_with("ID_LIKE=") && l.contains("rhel")
                            || l == "ID=\"rhel\""
                            || l == "ID=rhel"
                    });
                let mut missing = Vec::new();
                for n in names(2) {
                    let needs = match n.as_str() {
                        "rspamd" if el => (!self.root.join("etc/yum.repos.d/rspamd.repo").exists())
                            .then_some("rspamd's repository (/etc/yum.repos.d/rspamd.repo)"),
                        "clamd" | "clamav-update" if el => {
                            (!st.packages.contains("epel-release")).then_some("EPEL (epel-release)")
                        }
                        _ => None,
                    };
                    if let Some(repo) = needs {
                        missing.push(format!("No match for argument: {n} (it is in {repo})"));
                    }
                }
                if !missing.is_empty() {
                    return Ok(Output::failed(1, &missing.join("\n")));
                }
                for n in names(2) {
                    let n = if n.starts_with("https://") { "epel-release".to_owned() } else { n };
                    st.packages.insert(n);
                }
                Output::ok("")
            }
            ["useradd", .., user] => {
                let (uid, gid) = fake_ids();
                let user = user.to_string();
                drop(st);
                self.edit("etc/passwd", |l| {
                    l.push(format!("{user}:x:{uid}:{gid}::/var/lib/posthaste:/usr/sbin/nologin"))
                });
                self.edit("etc/group", |l| l.push(format!("{user}:x:{gid}:")));
                Output::ok("")
            }
            ["userdel", user] => {
                let prefix = format!("{user}:");
                drop(st);
                self.edit("etc/passwd", |l| l.retain(|x| !x.starts_with(&prefix)));
                self.edit("etc/group", |l| l.retain(|x| !x.starts_with(&prefix)));
                Output::ok("")
            }
            ["systemctl", rest @ ..] => {
                let rest: Vec<&str> = rest.iter().copied().filter(|a| !a.starts_with("--")).collect();
                match rest.as_slice() {
                    ["is-enabled", unit] => {
                        Output { status: if st.enabled.contains(*unit) { 0 } else { 1 }, ..Output::default() }
                    }
                    ["is-active", unit] if st.active.contains(*unit) => Output::ok("active\n"),
                    ["is-active", _] => {
                        Output { status: 3, stdout: "inactive\n".into(), ..Output::default() }
                    }
                    ["enable", unit] => {
                        st.enabled.insert(unit.to_string());
                        st.active.insert(unit.to_string());
                        Output::ok("")
                    }
                    ["disable", unit] => {
                        st.enabled.remove(*unit);
                        st.active.remove(*unit);
                        Output::ok("")
                    }
                    _ => Output::ok(""),
                }
            }
            ["service", unit, "status"] => {
                Output { status: if st.active.contains(*unit) { 0 } else { 3 }, ..Output::default() }
            }
            ["service", unit, "start"] => {
                st.active.insert(unit.to_string());
                Output::ok("")
            }
            ["service", unit, "stop"] => {
                st.active.remove(*unit);
                Output::ok("")
            }
            // The daemon "starts": it writes its pidfile (with our pid, which is alive).
            [_, .., "serve"] => {
                let pidfile = self.root.join("var/lib/posthaste/posthaste.pid");
                std::fs::write(pidfile, format!("{}\n", std::process::id())).unwrap();
                Output::ok("")
            }
            _ => Output::ok(""),
        };
        Ok(out)
    }
}

/// A machine without systemd: by default generous, with nothing on our ports.
struct FakeProbe {
    holders: Vec<(u16, &'static str)>,
    mem: u64,
}

impl Default for FakeProbe {
    fn default() -> Self {
        FakeProbe { holders: vec![], mem: 4 << 30 }
    }
}

impl Probe for FakeProbe {
    fn is_root(&self) -> bool {
        true
    }
    fn resolve(&self, _: &str) -> Vec<std::net::IpAddr> {
        vec!["192.0.2.25".parse().unwrap()]
    }
    fn port_holder(&self, port: u16) -> Option<String> {
        self.holders.iter().find(|(p, _)| *p == port).map(|(_, who)| who.to_string())
    }
    fn mem_total_bytes(&self) -> Option<u64> {
        Some(self.mem)
    }
    fn disk_free_bytes(&self, _: &Path) -> Option<u64> {
        Some(100 << 30)
    }
    fn systemd_running(&self) -> bool {
        false
    }
    /// The fake daemon's pid is ours (see the runner's `serve`).
    fn pid_alive(&self, pid: i32) -> bool {
        pid == std::process::id() as i32
    }
    fn hostname(&self) -> Option<String> {
        Some("mail.example.test".into())
    }
    /// As if a provider blocked port 25 (a warning, never an error).
    fn outbound_smtp(&self) -> posthaste::install::host::OutboundSmtp {
        posthaste::install::host::OutboundSmtp::Blocked("192.0.2.99:25: timed out".into())
    }
    /// As if the install ran in an SSH session from this address.
    fn admin_ip(&self) -> Option<std::net::IpAddr> {
        Some("198.51.100.7".parse().unwrap())
    }
}

/// A target root holding the given os-release fixture and a minimal passwd/group.
fn target(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::copy(Path::new(FIXTURES).join(fixture), dir.path().join("etc/os-release")).unwrap();
    std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
    dir
}

struct Run {
    host: Host,
    out: SharedBuf,
}

/// A host on `root` with the fake system; commands "run" (in the fake) unless `dry`.
fn host(root: &Path, sys: &FakeSystem, binary: &Path) -> Run {
    host_with(root, sys, binary, FakeProbe::default())
}

fn host_with(root: &Path, sys: &FakeSystem, binary: &Path, probe: FakeProbe) -> Run {
    let out = SharedBuf::default();
    let mut host = Host::new(root, Box::new(sys.clone()), Box::new(probe), Box::new(out.clone()));
    host.run_commands = true;
    host.binary = binary.to_owned();
    Run { host, out }
}

/// An answers file (and its password file) outside the target.
fn answers(dir: &Path, domains: &[&str]) -> PathBuf {
    std::fs::write(dir.join("postmaster.pass"), format!("{PASSWORD}\n")).unwrap();
    let path = dir.join("answers.yaml");
    std::fs::write(
        &path,
        format!(
            "hostname: mail.example.test\ndomains: [{}]\npostmaster: {{password_file: ./postmaster.pass}}\ncomponents: {{antispam: true, antivirus: true, guard: true}}\ntls: {{mode: self-signed}}\n",
            domains.join(", ")
        ),
    )
    .unwrap();
    path
}

fn args(answers: &Path) -> InstallArgs {
    InstallArgs { answers: Some(answers.to_owned()), yes: true, ..InstallArgs::default() }
}

/// Every path under `root` with its type, mode, owner and contents.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let head = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
            if meta.is_dir() {
                out.insert(rel, format!("dir {head}"));
                walk(root, &p, out);
            } else {
                let content = std::fs::read(&p).unwrap();
                out.insert(rel, format!("file {head} {}", String::from_utf8_lossy(&content)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn pending(plan: &Plan) -> Vec<(Kind, String, Action)> {
    plan.changes.iter().filter(|c| c.is_change()).map(|c| (c.kind, c.target.clone(), c.action)).collect()
}

fn fake_binary(dir: &Path) -> PathBuf {
    let p = dir.join("posthaste-binary");
    std::fs::write(&p, b"#!/bin/sh\necho fake posthaste\n").unwrap();
    p
}

#[test]
fn every_fixture_gets_its_package_manager_and_packages_in_the_json_plan() {
    let apt = ["rspamd", "redis-server", "clamav-daemon", "clamav-freshclam", "nftables"];
    let el = ["epel-release", "rspamd", "redis", "clamd", "clamav-update", "nftables"];
    let el10 = ["epel-release", "rspamd", "valkey", "clamd", "clamav-update", "nftables"];
    let fedora = ["rspamd", "valkey", "clamd", "clamav-update", "nftables"];
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("debian-11", "debian-11", "apt-get", &apt),
        ("debian-12", "debian-12", "apt-get", &apt),
        ("debian-13", "debian-13", "apt-get", &apt),
        ("ubuntu-22.04", "ubuntu-22.04", "apt-get", &apt),
        ("ubuntu-24.04", "ubuntu-24.04", "apt-get", &apt),
        ("rhel-8", "rhel-8", "dnf", &el),
        ("rhel-9", "rhel-9", "dnf", &el),
        ("rhel-10", "rhel-10", "dnf", &el10),
        ("rocky-8", "rhel-8", "dnf", &el),
        ("rocky-9", "rhel-9", "dnf", &el),
        ("rocky-10", "rhel-10", "dnf", &el10),
        ("almalinux-8", "rhel-8", "dnf", &el),
        ("almalinux-9", "rhel-9", "dnf", &el),
        ("almalinux-10", "rhel-10", "dnf", &el10),
        ("fedora-41", "fedora-41", "dnf", &fedora),
        ("fedora-43", "fedora-43", "dnf", &fedora),
    ];
    // Every supported fixture is in the table.
    let fixtures: BTreeSet<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("unsupported-"))
        .collect();
    assert_eq!(fixtures, cases.iter().map(|c| c.0.to_owned()).collect::<BTreeSet<_>>());

    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    for (fixture, distro, manager, packages) in cases {
        let root = target(fixture);
        let before = snapshot(root.path());
        let sys = FakeSystem::new(root.path());
        let run = host(root.path(), &sys, &binary);
        let a = InstallArgs { dry_run: true, json: true, ..args(&answers) };
        install::install(&run.host, &a).unwrap_or_else(|e| panic!("{fixture}: {e:#}"));
        let json: serde_json::Value = serde_json::from_str(&run.out.text())
            .unwrap_or_else(|e| panic!("{fixture}: {e}: {}", run.out.text()));
        assert_eq!(json["distro"], *distro, "{fixture}");
        let changes = json["changes"].as_array().unwrap();
        for c in changes {
            let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["kind", "target", "action"]), "{fixture}: {c}");
        }
        let planned: Vec<&str> = changes
            .iter()
            .filter(|c| c["kind"] == "package")
            .map(|c| c["target"].as_str().unwrap())
            .collect();
        assert_eq!(planned, *packages, "{fixture}");
        assert!(
            changes.iter().filter(|c| c["kind"] == "package").all(|c| c["action"] == "create"),
            "{fixture}"
        );
        let install_cmd = changes
            .iter()
            .find(|c| c["kind"] == "command")
            .and_then(|c| c["target"].as_str())
            .unwrap_or_else(|| panic!("{fixture}: no install command in {json}"));
        assert!(install_cmd.contains(&format!("{manager} install")), "{fixture}: {install_cmd}");
        for p in packages.iter().filter(|p| **p != "epel-release") {
            assert!(install_cmd.split(' ').any(|w| w == *p), "{fixture}: {p} not in {install_cmd}");
        }
        if *manager == "dnf" && packages.contains(&"epel-release") {
            assert!(install_cmd.contains("epel-release-latest-"), "{fixture}: {install_cmd}");
        }
        // The query went to the right package database, and nothing was changed.
        let query = if *manager == "apt-get" { "dpkg-query" } else { "rpm" };
        assert!(sys.log().iter().any(|c| c.starts_with(query)), "{fixture}: {:?}", sys.log());
        assert!(
            !sys.log().iter().any(|c| c.contains("install -y") || c.contains("useradd")),
            "{fixture}: a dry run ran {:?}",
            sys.log()
        );
        assert_eq!(snapshot(root.path()), before, "{fixture}: the dry run changed the target");
    }
}

#[test]
fn unsupported_systems_say_what_was_found_and_what_is_supported() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    for (fixture, found) in [
        ("unsupported-alpine-3.20", "Alpine Linux v3.20"),
        ("unsupported-debian-10", "Debian GNU/Linux 10 (buster)"),
        ("unsupported-linuxmint-21.3", "Linux Mint 21.3"),
    ] {
        let root = target(fixture);
        let sys = FakeSystem::new(root.path());
        let run = host(root.path(), &sys, &fake_binary(work.path()));
        let err = install::install(&run.host, &InstallArgs { dry_run: true, ..args(&answers) }).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(found), "{fixture}: {msg}");
        assert!(msg.contains("Debian 11, 12, 13") && msg.contains("Ubuntu 22.04, 24.04"), "{msg}");
        assert!(msg.contains("8, 9, 10") && msg.contains("Fedora 41 or later"), "{msg}");
    }
}

#[test]
fn broken_answers_report_every_problem_with_lines_and_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("answers.yaml");
    std::fs::write(
        &bad,
        "hostname: localhost\n\
         domains: [example.test, \"not a domain\"]\n\
         postmaster:\n\
         \x20 password_file: ./\n\
         \x20 colour: blue\n\
         components: {antispam: maybe}\n\
         tls: {mode: files, cert: relative.pem}\n\
         replace_existing_mta: 1\n",
    )
    .unwrap();
    let root = target("debian-12");
    let before = snapshot(root.path());
    let sys = FakeSystem::new(root.path());
    let run = host(root.path(), &sys, &fake_binary(work.path()));
    let err = install::install(&run.host, &args(&bad)).unwrap_err();
    let msg = format!("{err:#}");
    let file = bad.display().to_string();
    for (line, needle) in [
        (1, "hostname \"localhost\" is not a fully qualified domain name"),
        (2, "\"not a domain\" is not a valid mail domain"),
        (4, "cannot read password_file"),
        (5, "unknown key `colour` in postmaster"),
        (6, "`antispam` must be true or false"),
        (7, "tls mode files needs `key`"),
        (7, "tls.cert \"relative.pem\" must be an absolute path"),
        (8, "`replace_existing_mta` must be true or false"),
    ] {
        assert!(
            msg.contains(&format!("{file}:{line}: {needle}")),
            "missing line {line} {needle:?} in:\n{msg}"
        );
    }
    assert!(msg.contains("has 8 problems"), "{msg}");
    assert!(msg.matches("help: ").count() >= 8, "{msg}");
    assert_eq!(snapshot(root.path()), before);
    assert!(sys.log().is_empty(), "{:?}", sys.log());
}

#[test]
fn no_terminal_and_no_answers_is_a_clear_error() {
    let root = target("debian-12");
    let sys = FakeSystem::new(root.path());
    let run = host(root.path(), &sys, Path::new("/nonexistent"));
    let err = install::install(&run.host, &InstallArgs { yes: true, ..InstallArgs::default() }).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no terminal") && msg.contains("help: pass --answers FILE"), "{msg}");
}

/// Install, then check the target file by file.
#[test]
fn install_into_a_root_then_rerun_then_add_a_domain() {
    let work = tempfile::tempdir().unwrap();
    let answers1 = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    let run = host(r, &sys, &binary);

    let outcome =
        install::install(&run.host, &args(&answers1)).unwrap_or_else(|e| panic!("{e:#}\n{}", run.out.text()));
    assert!(outcome.applied);
    let log = sys.log();
    assert!(log.iter().any(|c| c.contains("apt-get install -y --no-install-recommends rspamd redis-server clamav-daemon clamav-freshclam nftables")), "{log:?}");
    assert!(log.iter().any(|c| c.contains("useradd --system") && c.ends_with("posthaste")), "{log:?}");
    // No systemd in the target, and nothing runs under --root: no service is started.
    assert!(!log.iter().any(|c| c.starts_with("service ") || c.contains(" serve")), "{log:?}");
    assert!(run
        .out
        .text()
        .contains("start `/usr/local/sbin/posthaste --config /etc/posthaste/posthaste.toml serve`"));

    // Modes and owners.
    let (uid, gid) = fake_ids();
    for (p, m) in [
        ("etc/posthaste", 0o750),
        ("etc/posthaste/tls", 0o750),
        ("etc/posthaste/posthaste.toml", 0o640),
        ("etc/posthaste/answers.yaml", 0o600),
        ("etc/posthaste/tls/privkey.pem", 0o600),
        ("etc/posthaste/tls/fullchain.pem", 0o644),
        ("var/lib/posthaste", 0o750),
        ("var/log/posthaste", 0o750),
        ("usr/local/sbin/posthaste", 0o755),
        ("etc/rspamd/local.d/redis.conf", 0o644),
    ] {
        assert_eq!(mode(&r.join(p)), m, "{p}");
    }
    let owner = |p: &str| {
        let m = std::fs::metadata(r.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("var/lib/posthaste"), (uid, gid));
    assert_eq!(owner("etc/posthaste/tls/privkey.pem"), (uid, gid));
    assert_eq!(owner("var/lib/posthaste/directory.db"), (uid, gid));
    assert_eq!(owner("var/lib/posthaste/mail/example.test/postmaster/new"), (uid, gid));
    assert_eq!(std::fs::read(r.join("usr/local/sbin/posthaste")).unwrap(), std::fs::read(&binary).unwrap());

    // The config loads with the daemon's loader; its TLS pair loads too.
    let config = posthaste::config::Config::load(&r.join("etc/posthaste/posthaste.toml")).unwrap();
    assert_eq!(config.hostname, "mail.example.test");
    assert_eq!(config.data_dir, Path::new("/var/lib/posthaste"));
    // Both address families on one socket (see the IPv6 test below).
    assert_eq!(config.listen.smtp, ["[::]:25".parse().unwrap()]);
    assert_eq!(config.server.user, "posthaste");
    assert!(config.antispam.is_some() && config.antivirus.is_some());
    let tls = config.tls.clone().unwrap();
    posthaste::tls::load_acceptor(&posthaste::config::TlsConfig {
        cert: r.join(tls.cert.strip_prefix("/").unwrap()),
        key: r.join(tls.key.strip_prefix("/").unwrap()),
    })
    .unwrap();

    // rspamd's controller password: one generated secret in posthaste.toml, in the 0600
    // copy and in rspamd's controller file (in plain text here: no rspamadm ran).
    let pass = std::fs::read_to_string(r.join("etc/posthaste/rspamd-controller.pass")).unwrap();
    let pass = pass.trim();
    assert_eq!(pass.len(), 32, "{pass:?}");
    let spam = config.antispam.clone().unwrap();
    assert_eq!(spam.controller_password.as_deref(), Some(pass));
    assert_eq!(spam.controller.as_deref(), Some("http://127.0.0.1:11334"));
    let ctl = std::fs::read_to_string(r.join("etc/rspamd/override.d/worker-controller.inc")).unwrap();
    assert!(ctl.contains(&format!("password = \"{pass}\";")) && ctl.contains("\"127.0.0.1:11334\""), "{ctl}");
    for (p, m) in [
        ("etc/posthaste/rspamd-controller.pass", 0o600),
        // rspamd runs as _rspamd and must read its controller config.
        ("etc/rspamd/override.d/worker-controller.inc", 0o640),
    ] {
        assert_eq!(mode(&r.join(p)), m, "{p}");
    }
    // (Its group is _rspamd once the rspamd package made it; the vm-test shows the real one.)
    let signing = std::fs::read_to_string(r.join("etc/rspamd/local.d/dkim_signing.conf")).unwrap();
    assert!(signing.contains("enabled = false;"), "{signing}");
    // rspamd itself accepts the installer's local.d/ and override.d/ files.
    let rspamadm = ["/usr/bin/rspamadm", "/usr/sbin/rspamadm"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("rspamadm not found: install the Debian package `rspamd` (bash tests/run.sh does)");
    let out = std::process::Command::new(rspamadm)
        .arg(format!("--var=LOCAL_CONFDIR={}", r.join("etc/rspamd").display()))
        .arg("configtest")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rspamadm configtest: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The directory has the domain and the postmaster with an Argon2id hash of the password.
    let db = format!("sqlite://{}", r.join("var/lib/posthaste/directory.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (domains, hash) = rt.block_on(async {
        let dir = posthaste::directory::Directory::open(&db).await.unwrap();
        let domains: Vec<String> = dir.list_domains().await.unwrap().into_iter().map(|d| d.name).collect();
        let pm = posthaste::address::Address::parse("postmaster@example.test").unwrap();
        (domains, dir.get_account(&pm).await.unwrap().unwrap().password_hash)
    });
    assert_eq!(domains, ["example.test"]);
    assert!(hash.starts_with("{ARGON2ID}"), "{hash}");
    assert!(posthaste::directory::password::verify(&hash, PASSWORD));

    // The answers written back have the hash, never the password.
    let saved = std::fs::read_to_string(r.join("etc/posthaste/answers.yaml")).unwrap();
    assert!(!saved.contains(PASSWORD) && !saved.contains("password_file"), "{saved}");
    assert!(saved.contains(&hash), "{saved}");
    assert!(run.out.text().contains("IN\tMX\t10 mail.example.test."), "{}", run.out.text());
    assert!(!run.out.text().contains(PASSWORD));
    assert!(!r.join("var/backups").join(format!("posthaste-install.{}", std::process::id())).exists());

    // A rerun with the same answers plans only `none` and changes nothing.
    let before = snapshot(r);
    sys.clear_log();
    let run2 = host(r, &sys, &binary);
    let outcome = install::install(&run2.host, &args(&answers1)).unwrap();
    assert_eq!(pending(&outcome.plan), [], "{}", outcome.plan.render());
    assert!(outcome.plan.changes.iter().all(|c| c.action == Action::None));
    assert_eq!(snapshot(r), before, "the rerun changed files");
    assert!(!sys.log().iter().any(|c| c.contains("install -y") || c.contains("useradd")), "{:?}", sys.log());

    // The saved answers reproduce the same deployment.
    let run3 = host(r, &sys, &binary);
    let saved_path = r.join("etc/posthaste/answers.yaml");
    let outcome = install::install(&run3.host, &InstallArgs { dry_run: true, ..args(&saved_path) }).unwrap();
    assert_eq!(pending(&outcome.plan), []);

    // More domains: exactly those are added (and the saved answers record them).
    let answers2 = answers(work.path(), &["example.test", "second.test"]);
    let run4 = host(r, &sys, &binary);
    let dry =
        install::install(&run4.host, &InstallArgs { dry_run: true, json: true, ..args(&answers2) }).unwrap();
    let json: serde_json::Value = serde_json::from_str(&run4.out.text()).unwrap();
    let changed: Vec<(String, String, String)> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "none")
        .map(|c| {
            (
                c["kind"].as_str().unwrap().into(),
                c["target"].as_str().unwrap().into(),
                c["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        changed,
        [
            s("domain", "second.test", "create"),
            s("key", "dkim second.test", "create"),
            s("file", "/etc/posthaste/answers.yaml", "update"),
        ],
        "{}",
        dry.plan.render()
    );
    let run5 = host(r, &sys, &binary);
    install::install(&run5.host, &args(&answers2)).unwrap();
    let domains = rt.block_on(async {
        let dir = posthaste::directory::Directory::open(&db).await.unwrap();
        dir.list_domains().await.unwrap().into_iter().map(|d| d.name).collect::<Vec<_>>()
    });
    assert_eq!(domains, ["example.test", "second.test"]);
    // Each domain's DKIM keys: private, owned like the data directory, printed as records.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = std::fs::metadata(r.join("var/lib/posthaste")).unwrap();
    for d in ["example.test", "second.test"] {
        for sel in ["posthaste-ed25519", "posthaste-rsa"] {
            let key = r.join(format!("var/lib/posthaste/dkim/{d}/{sel}.pem"));
            let meta = std::fs::metadata(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", key.display());
            assert_eq!((meta.uid(), meta.gid()), (data.uid(), data.gid()), "{}", key.display());
        }
    }
    assert!(
        run5.out
            .text()
            .contains("posthaste-rsa._domainkey.second.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=rsa; p="),
        "{}",
        run5.out.text()
    );
}

/// A target with systemd: a hardened unit, and every service enabled (not started).
#[test]
fn systemd_target_gets_a_hardened_unit_and_enabled_services() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    std::fs::write(r.join("usr/lib/systemd/systemd"), "").unwrap();
    let sys = FakeSystem::new(r);
    let run = host(r, &sys, &fake_binary(work.path()));
    install::install(&run.host, &args(&answers)).unwrap_or_else(|e| panic!("{e:#}"));
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/posthaste.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/sbin/posthaste --config /etc/posthaste/posthaste.toml serve",
        "User=posthaste",
        // The guard (on in these answers) keeps its nftables set up to date.
        "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/posthaste\n",
        "PrivateTmp=yes",
        "After=network-online.target redis-server.service rspamd.service clamav-freshclam.service clamav-daemon.service",
    ] {
        assert!(unit.contains(line), "{line:?} missing from\n{unit}");
    }
    // The administrator's SSH address is never banned.
    let config = std::fs::read_to_string(r.join("etc/posthaste/posthaste.toml")).unwrap();
    assert!(config.contains(r#"allow = ["127.0.0.0/8","::1/128","198.51.100.7/32"]"#), "{config}");
    let root_arg = format!("systemctl --root={}", r.display());
    for svc in ["redis-server", "rspamd", "clamav-freshclam", "clamav-daemon", "posthaste"] {
        assert!(sys.log().contains(&format!("{root_arg} enable {svc}")), "{svc}: {:?}", sys.log());
    }
    assert!(!sys.log().iter().any(|c| c.contains("--now") || c.contains("start")), "{:?}", sys.log());
    // Rerun: all enabled already.
    let run2 = host(r, &sys, &fake_binary(work.path()));
    let outcome = install::install(&run2.host, &args(&answers)).unwrap();
    assert_eq!(pending(&outcome.plan), []);
}

/// A command that fails late (enabling posthaste, the last change): everything done before
/// is undone, including a replaced file, the user, enabled services and the database.
#[test]
fn a_failure_mid_apply_rolls_everything_back() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    std::fs::write(r.join("usr/lib/systemd/systemd"), "").unwrap();
    // A file the install replaces: it must come back as it was.
    std::fs::create_dir_all(r.join("etc/rspamd/local.d")).unwrap();
    std::fs::write(r.join("etc/rspamd/local.d/redis.conf"), "servers = \"10.0.0.9\";\n").unwrap();
    let before = snapshot(r);

    let sys = FakeSystem::new(r);
    sys.fail_on("enable posthaste");
    let run = host(r, &sys, &fake_binary(work.path()));
    // The installer did not write that file, so replacing it needs --force (which keeps a
    // dated copy; the rollback removes that copy with everything else it made).
    let err = install::install(&run.host, &InstallArgs { force: true, ..args(&answers) }).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("the install failed at: service posthaste (create)"), "{msg}");
    assert!(msg.contains("injected failure"), "{msg}");
    assert!(msg.contains("everything it had changed was put back"), "{msg}");
    assert!(msg.contains("restored ") && msg.contains("etc/rspamd/local.d/redis.conf"), "{msg}");
    assert!(msg.contains("removed ") && msg.contains("var/lib/posthaste/directory.db"), "{msg}");
    assert!(msg.contains("userdel posthaste"), "{msg}");
    assert!(msg.contains("help: "), "{msg}");
    assert_eq!(snapshot(r), before, "the target was not restored");
    let log = sys.log();
    assert!(log.iter().any(|c| c.ends_with("disable rspamd")), "{log:?}");
    assert!(sys.state.lock().unwrap().enabled.is_empty());
}

/// A target path that cannot be written (a directory where the answers file goes).
#[test]
fn an_unwritable_target_file_rolls_everything_back() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/posthaste/answers.yaml")).unwrap();
    let before = snapshot(r);
    let sys = FakeSystem::new(r);
    let run = host(r, &sys, &fake_binary(work.path()));
    let err = install::install(&run.host, &args(&answers)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("the install failed at: file /etc/posthaste/answers.yaml"), "{msg}");
    assert_eq!(snapshot(r), before, "the target was not restored");
    assert!(!r.join("var/lib/posthaste").exists());
}

/// The binary itself: usage, a JSON dry run, and an answers error exit with 1.
#[test]
fn the_cli_dry_run_and_errors() {
    let bin = env!("CARGO_BIN_EXE_posthaste");
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("rocky-9");
    let out = std::process::Command::new(bin)
        .args(["install", "--dry-run", "--json", "--root"])
        .arg(root.path())
        .arg("--answers")
        .arg(&answers)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["distro"], "rhel-9");
    assert!(json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["kind"] == "key" && c["action"] == "create"));

    std::fs::write(work.path().join("bad.yaml"), "hostname: [x]\nfoo: 1\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["install", "--yes", "--root"])
        .arg(root.path())
        .arg("--answers")
        .arg(work.path().join("bad.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:1: `hostname` must be a string")
            && err.contains("bad.yaml:2: unknown key `foo`"),
        "{err}"
    );

    // No terminal, no answers: an error at once, not a wait for input.
    let out = std::process::Command::new(bin)
        .args(["install", "--root"])
        .arg(root.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The documented example answers file is valid.
#[test]
fn example_answers_file_is_valid() {
    let work = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/answers.yaml")).unwrap();
    std::fs::write(work.path().join("answers.yaml"), text).unwrap();
    std::fs::write(work.path().join("postmaster.pass"), "a long enough secret\n").unwrap();
    let a = install::answers::Answers::from_file(&work.path().join("answers.yaml")).unwrap();
    assert_eq!(a.hostname, "mail.example.test");
    assert_eq!(a.domains, ["example.test"]);
    assert_eq!(a.tls, install::answers::Tls::SelfSigned);
}

/// A person at the terminal, answering from a script ("" takes the offered default). What
/// was asked (with the default offered) and told is recorded in `asked`, in order: told
/// lines start with "told: ".
struct Script {
    answers: Mutex<std::collections::VecDeque<&'static str>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn new(answers: &[&'static str]) -> (Script, Arc<Mutex<Vec<String>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        (Script { answers: Mutex::new(answers.iter().copied().collect()), asked: asked.clone() }, asked)
    }
    fn next(&self, prompt: &str) -> &'static str {
        self.asked.lock().unwrap().push(prompt.to_owned());
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("no scripted answer for {prompt:?}"))
    }
    fn next_with_default(&self, prompt: &str, default: Option<&str>) -> &'static str {
        self.asked.lock().unwrap().push(format!("{prompt} [{}]", default.unwrap_or("")));
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("no scripted answer for {prompt:?}"))
    }
}

impl posthaste::install::host::Prompter for Script {
    fn input(&self, prompt: &str, default: Option<&str>) -> anyhow::Result<String> {
        let a = self.next_with_default(prompt, default);
        Ok(if a.is_empty() { default.unwrap_or("").to_owned() } else { a.to_owned() })
    }
    fn password(&self, prompt: &str) -> anyhow::Result<String> {
        Ok(self.next(prompt).to_owned())
    }
    fn confirm(&self, prompt: &str, default: bool) -> anyhow::Result<bool> {
        Ok(match self.next(prompt) {
            "" => default,
            a => a == "y",
        })
    }
    fn select(&self, prompt: &str, _: &[&str], default: usize) -> anyhow::Result<usize> {
        Ok(self.next(prompt).parse().unwrap_or(default))
    }
    fn tell(&self, message: &str) {
        self.asked.lock().unwrap().push(format!("told: {message}"));
    }
}

#[test]
fn the_wizard_asks_then_offers_the_saved_answers_as_defaults() {
    let work = tempfile::tempdir().unwrap();
    let root = target("ubuntu-24.04");
    let r = root.path();
    let sys = FakeSystem::new(r);
    let mut run = host(r, &sys, &fake_binary(work.path()));
    let (script, _) = Script::new(&[
        "",                    // host name: the machine's, mail.example.test
        "example.test b.test", // domains
        "",                    // postmaster@example.test
        PASSWORD,              // password
        PASSWORD,              // the same again
        "",
        "n",
        "",  // antispam yes, antivirus no, guard yes
        "0", // self-signed
        "y", // apply
    ]);
    run.host.prompter = Some(Box::new(script));
    install::install(&run.host, &InstallArgs::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let saved = install::answers::Answers::from_file(&r.join("etc/posthaste/answers.yaml")).unwrap();
    assert_eq!(saved.hostname, "mail.example.test");
    assert_eq!(saved.domains, ["example.test", "b.test"]);
    assert!(!saved.components.antivirus && saved.components.antispam);
    let text = std::fs::read_to_string(r.join("etc/posthaste/answers.yaml")).unwrap();
    assert!(!text.contains(PASSWORD) && text.contains("{ARGON2ID}"), "{text}");
    assert!(sys.log().iter().any(|c| c.contains("rspamd redis-server nftables")), "{:?}", sys.log());

    // Second time: every default is the saved answer, the password is kept: nothing to do.
    let mut run2 = host(r, &sys, &fake_binary(work.path()));
    let (script, asked) = Script::new(&["", "", "", "", "", "", "", ""]);
    run2.host.prompter = Some(Box::new(script));
    let outcome = install::install(&run2.host, &InstallArgs::default()).unwrap();
    assert_eq!(pending(&outcome.plan), []);
    assert!(asked.lock().unwrap().iter().any(|q| q.contains("Keep the postmaster's current password")));
}

#[test]
fn uninstall_keeps_mail_and_keys_unless_purge() {
    use posthaste::install::uninstall::{uninstall, UninstallArgs};
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-13");
    let r = root.path();
    let sys = FakeSystem::new(r);
    install::install(&host(r, &sys, &fake_binary(work.path())).host, &args(&answers)).unwrap();

    let run = host(r, &sys, &fake_binary(work.path()));
    uninstall(&run.host, &UninstallArgs { yes: true, ..UninstallArgs::default() }).unwrap();
    for gone in ["usr/local/sbin/posthaste", "etc/posthaste/posthaste.toml", "etc/posthaste/answers.yaml"] {
        assert!(!r.join(gone).exists(), "{gone} is still there");
    }
    for kept in [
        "var/lib/posthaste/directory.db",
        "var/lib/posthaste/mail/example.test/postmaster/new",
        "etc/posthaste/tls/privkey.pem",
    ] {
        assert!(r.join(kept).exists(), "{kept} was removed");
    }
    // A new install finds the key and the accounts and keeps them.
    let again = install::install(&host(r, &sys, &fake_binary(work.path())).host, &args(&answers)).unwrap();
    let created: Vec<_> = pending(&again.plan)
        .into_iter()
        .filter(|c| matches!(c.0, Kind::Key | Kind::Domain | Kind::User))
        .collect();
    assert_eq!(created, []);

    // --purge needs a yes; with it, everything of posthaste is gone.
    let run = host(r, &sys, &fake_binary(work.path()));
    let err = uninstall(&run.host, &UninstallArgs { purge: true, ..UninstallArgs::default() }).unwrap_err();
    assert!(format!("{err:#}").contains("--yes"), "{err:#}");
    assert!(r.join("var/lib/posthaste/directory.db").exists());
    uninstall(&run.host, &UninstallArgs { purge: true, yes: true, ..UninstallArgs::default() }).unwrap();
    for gone in ["var/lib/posthaste", "etc/posthaste", "var/log/posthaste", "usr/local/sbin/posthaste"] {
        assert!(!r.join(gone).exists(), "{gone} is still there");
    }
    assert!(!std::fs::read_to_string(r.join("etc/passwd")).unwrap().contains("posthaste"));
    // The component files it rendered went too, so an install after a purge starts clean
    // (regression: the rspamd overrides stayed, and the next install refused to replace
    // files it no longer had a record of).
    assert!(!r.join("etc/rspamd/override.d/worker-controller.inc").exists());
    install::install(&host(r, &sys, &fake_binary(work.path())).host, &args(&answers)).unwrap();
}

/// Not under --root: the host checks run (here against the fake probe), every problem at
/// once; then Postfix is replaced, stopped just before posthaste starts, and started again
/// when the install fails after stopping it.
#[test]
fn on_the_running_system_preflight_reports_all_then_postfix_is_replaced() {
    let work = tempfile::tempdir().unwrap();
    let binary = fake_binary(work.path());
    let plain = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/init.d")).unwrap();
    for svc in ["rspamd", "redis-server"] {
        std::fs::write(r.join("etc/init.d").join(svc), "#!/bin/sh\n").unwrap();
    }
    let before = snapshot(r);
    let sys = FakeSystem::new(r);
    let probe = FakeProbe { holders: vec![(25, "master"), (587, "master"), (143, "nginx")], mem: 1 << 30 };
    let mut run = host_with(r, &sys, &binary, probe);
    run.host.under_root = false;
    let msg = format!("{:#}", install::install(&run.host, &args(&plain)).unwrap_err());
    for needle in [
        "4 problems",
        "port 25 is in use by Postfix (master)",
        "port 587 is in use by Postfix (master)",
        "set replace_existing_mta: true",
        "port 143 is in use by nginx",
        "ClamAV needs about 2 GB of RAM and this machine has 1.0 GB",
        "components: {antivirus: false}",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg}");
    }
    assert_eq!(snapshot(r), before);
    assert!(sys.log().is_empty(), "{:?}", sys.log());

    let replace = work.path().join("replace.yaml");
    std::fs::write(
        &replace,
        "hostname: mail.example.test\ndomains: [example.test]\npostmaster: {password_file: ./postmaster.pass}\ncomponents: {antivirus: false}\nreplace_existing_mta: true\n",
    )
    .unwrap();
    let postfix = || FakeProbe { holders: vec![(25, "master")], mem: 1 << 30 };

    // A failure after Postfix was stopped: it is started again.
    sys.fail_on("posthaste.toml serve");
    let mut run = host_with(r, &sys, &binary, postfix());
    run.host.under_root = false;
    let msg = format!("{:#}", install::install(&run.host, &args(&replace)).unwrap_err());
    assert!(msg.contains("ran `service postfix start`"), "{msg}");
    assert_eq!(snapshot(r), before);

    // And now it works: the plan stops Postfix last but one, posthaste starts, status sees it.
    sys.state.lock().unwrap().fail_on = None;
    sys.clear_log();
    let mut run = host_with(r, &sys, &binary, postfix());
    run.host.under_root = false;
    let outcome = install::install(&run.host, &args(&replace)).unwrap_or_else(|e| panic!("{e:#}"));
    // A blocked outbound port 25 is a warning with advice, not a reason to stop.
    let text = run.out.text();
    assert!(text.contains("outgoing connections to port 25 of other mail servers fail"), "{text}");
    assert!(text.contains("ask yours to open it"), "{text}");
    let changes = pending(&outcome.plan);
    let n = changes.len();
    assert_eq!(changes[n - 2], (Kind::Service, "postfix".to_owned(), Action::Remove));
    assert_eq!(changes[n - 1], (Kind::Service, "posthaste".to_owned(), Action::Create));
    let log = sys.log();
    let stop = log.iter().position(|c| c == "service postfix stop").unwrap_or_else(|| panic!("{log:?}"));
    let start = log.iter().position(|c| c.contains("posthaste.toml serve")).unwrap();
    assert!(stop < start, "{log:?}");
    assert!(log.iter().any(|c| c == "service rspamd start"), "{log:?}");
    let run = host_with(r, &sys, &binary, postfix());
    let mut status_host = run.host;
    status_host.under_root = false;
    install::status(&status_host, &r.join("etc/posthaste/posthaste.toml")).unwrap();
    assert!(
        run.out.text().contains(&format!("posthaste is running (pid {}", std::process::id())),
        "{}",
        run.out.text()
    );
}

#[test]
fn dns_prints_mx_spf_dmarc_for_the_directory_domains() {
    let bin = env!("CARGO_BIN_EXE_posthaste");
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("posthaste.toml");
    std::fs::write(
        &config,
        format!("hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n", work.path().join("data").display()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).arg("--config").arg(&config).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["domain", "add", "example.test"]);
    run(&["domain", "add", "other.test"]);
    let all = run(&["dns"]);
    for d in ["example.test", "other.test"] {
        assert!(all.contains(&format!("{d}.\t3600\tIN\tMX\t10 mail.example.test.\n")), "{all}");
        assert!(all.contains(&format!("_dmarc.{d}.\t3600\tIN\tTXT\t\"v=DMARC1;")), "{all}");
    }
    let one = run(&["dns", "other.test"]);
    assert!(
        one.contains("other.test.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"") && !one.contains("example.test.\t"),
        "{one}"
    );
}

#[test]
fn a_missing_password_file_gets_a_generated_password_that_the_postmaster_has() {
    let work = tempfile::tempdir().unwrap();
    let path = answers(work.path(), &["example.test"]);
    let pass = work.path().join("postmaster.pass");
    std::fs::remove_file(&pass).unwrap();
    let binary = fake_binary(work.path());
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);

    // A dry run plans the account but writes no file.
    let run = host(r, &sys, &binary);
    let dry = InstallArgs { dry_run: true, ..args(&path) };
    install::install(&run.host, &dry).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!pass.exists(), "a dry run wrote the password file");

    let run = host(r, &sys, &binary);
    install::install(&run.host, &args(&path)).unwrap_or_else(|e| panic!("{e:#}\n{}", run.out.text()));
    assert_eq!(mode(&pass), 0o600);
    let pw = std::fs::read_to_string(&pass).unwrap().trim_end().to_owned();
    assert_eq!(pw.len(), 24, "{pw:?}");
    assert!(run.out.text().contains("generated into"), "{}", run.out.text());
    assert!(!run.out.text().contains(&pw), "the generated password was printed");
    // It is the postmaster's password.
    let db = format!("sqlite://{}", r.join("var/lib/posthaste/directory.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ok = rt.block_on(async {
        let dir = posthaste::directory::Directory::open(&db).await.unwrap();
        dir.authenticate("postmaster@example.test", &pw).await.unwrap().is_some()
    });
    assert!(ok, "the postmaster does not have the generated password");

    // The rerun reads the file: nothing to change.
    let run = host(r, &sys, &binary);
    let outcome = install::install(&run.host, &args(&path)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(pending(&outcome.plan).is_empty(), "{:?}", pending(&outcome.plan));

    // The file lost but the account there: an error that says what to do, nothing changed.
    std::fs::remove_file(&pass).unwrap();
    let before = snapshot(r);
    let run = host(r, &sys, &binary);
    let msg = format!("{:#}", install::install(&run.host, &args(&path)).unwrap_err());
    assert!(msg.contains("does not exist, but postmaster@example.test already has a password"), "{msg}");
    assert!(!pass.exists());
    assert_eq!(snapshot(r), before);
}

/// `posthaste install --root DIR` as a separate process (the real binary), so it can be
/// killed with SIGKILL like a crash or a lost SSH session.
fn cli_install(root: &Path, answers: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_posthaste"))
        .args(["install", "--yes", "--root"])
        .arg(root)
        .arg("--answers")
        .arg(answers)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn an_install_killed_at_any_point_converges_on_the_rerun() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test", "second.test"]);
    // How long an uninterrupted install takes here.
    let reference = target("debian-12");
    let started = std::time::Instant::now();
    let out = cli_install(reference.path(), &answers).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full = started.elapsed();
    // Every path with its type, mode and owner (contents differ: keys, hashes).
    let files = |root: &Path| -> BTreeMap<String, String> {
        snapshot(root)
            .into_iter()
            .filter(|(k, _)| !k.ends_with("-wal") && !k.ends_with("-shm") && !k.ends_with("-journal"))
            .map(|(k, v)| (k, v.split(' ').take(3).collect::<Vec<_>>().join(" ")))
            .collect()
    };
    let expected = files(reference.path());

    // Three kills at random points of the install (each run picks new ones; the failure
    // message names the point).
    for _ in 0..3 {
        let step = 1 + rand::random::<u32>() % 99;
        let root = target("debian-12");
        let r = root.path();
        let mut child = cli_install(r, &answers);
        std::thread::sleep(full * step / 100);
        let _ = child.kill(); // SIGKILL: no rollback, no clean-up
        let _ = child.wait();
        // The rerun finishes the job …
        let out = cli_install(r, &answers).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rerun after a kill at {}/100 of the install failed:\n{}{}",
            step,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // … to the same files as an uninterrupted install, with no temp files left …
        let got = files(r);
        assert_eq!(got, expected, "kill at {step}/100: the files differ from an uninterrupted install");
        assert!(!got.keys().any(|f| f.contains("posthaste-tmp")), "{got:?}");
        // … and the config the daemon loads, and a third run has nothing to do.
        posthaste::config::Config::load(&r.join("etc/posthaste/posthaste.toml")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_posthaste"))
            .args(["install", "--dry-run", "--json", "--root"])
            .arg(r)
            .arg("--answers")
            .arg(&answers)
            .output()
            .unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        // (Packages and the system user are never created under --root without
        // --run-commands, so they stay planned.)
        let left: Vec<&serde_json::Value> = plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["action"] != "none"
                    && !["package", "user", "command"].contains(&c["kind"].as_str().unwrap())
            })
            .collect();
        assert!(left.is_empty(), "kill at {step}/100: the third run still plans {left:?}");
    }
}

#[test]
fn a_lone_half_of_the_self_signed_pair_is_replaced_by_a_new_pair() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    let run = host(r, &sys, &binary);
    install::install(&run.host, &args(&answers)).unwrap_or_else(|e| panic!("{e:#}"));
    // As if an install had been killed between writing the key and the certificate.
    let (cert, key) = (r.join("etc/posthaste/tls/fullchain.pem"), r.join("etc/posthaste/tls/privkey.pem"));
    std::fs::remove_file(&cert).unwrap();
    let lone = std::fs::read(&key).unwrap();
    let run = host(r, &sys, &binary);
    let outcome = install::install(&run.host, &args(&answers)).unwrap_or_else(|e| panic!("{e:#}"));
    let changes = pending(&outcome.plan);
    assert!(
        changes.contains(&(Kind::Key, "/etc/posthaste/tls/privkey.pem".to_owned(), Action::Create)),
        "{changes:?}"
    );
    assert!(cert.exists(), "no certificate after the rerun");
    assert_ne!(std::fs::read(&key).unwrap(), lone, "the lone key was kept without a certificate");
    assert_eq!(mode(&key), 0o600);
    // The pair matches: rustls accepts it.
    let config = posthaste::config::Config::load(&r.join("etc/posthaste/posthaste.toml")).unwrap();
    let mut tls = config.tls.clone().unwrap();
    (tls.cert, tls.key) = (cert.clone(), key.clone());
    posthaste::tls::load_acceptor(&tls).unwrap_or_else(|e| panic!("{e:#}"));
    // And the next run has nothing to do.
    let run = host(r, &sys, &binary);
    let outcome = install::install(&run.host, &args(&answers)).unwrap();
    assert_eq!(pending(&outcome.plan), []);
}

/// Regression: a rerun (the upgrade path too) silently replaced an edited posthaste.toml,
/// losing the administrator's settings without a diff, a backup or a word. Settings now
/// live in conf.d, which no rerun touches; an edited file is shown as a diff and replaced
/// only with --force, which keeps it beside itself first.
#[test]
fn a_rerun_threw_away_config_edits_now_conf_d_is_kept_and_edits_need_force() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    install::install(&host(r, &sys, &binary).host, &args(&answers)).unwrap_or_else(|e| panic!("{e:#}"));
    let config_path = r.join("etc/posthaste/posthaste.toml");
    assert!(r.join("etc/posthaste/conf.d").is_dir(), "the install makes the conf.d directory");
    let state = std::fs::read_to_string(r.join("etc/posthaste/install-state.json")).unwrap();
    assert!(state.contains("/etc/posthaste/posthaste.toml") && !state.contains("answers.yaml"), "{state}");
    assert_eq!(mode(&r.join("etc/posthaste/install-state.json")), 0o600);

    // Site settings in conf.d: the daemon's loader merges them; a rerun keeps them and
    // plans nothing.
    let site = r.join("etc/posthaste/conf.d/50-site.toml");
    let site_text = "[log]\nlevel = \"debug\"\n[guard]\nallow = [\"127.0.0.0/8\", \"::1/128\", \"192.0.2.0/24\"]\n[smtp]\nmax_message_size = 104857600\n";
    std::fs::write(&site, site_text).unwrap();
    let before = snapshot(r);
    let outcome = install::install(&host(r, &sys, &binary).host, &args(&answers)).unwrap();
    assert_eq!(pending(&outcome.plan), []);
    assert_eq!(snapshot(r), before);
    let c = posthaste::config::Config::load(&config_path).unwrap();
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.smtp.max_message_size, 104857600);
    assert!(c.guard.allow.contains(&"192.0.2.0/24".to_owned()));
    // One the daemon could not read (it reads conf.d as user posthaste) is warned about.
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = host(r, &sys, &binary);
    install::install(&run.host, &InstallArgs { dry_run: true, ..args(&answers) }).unwrap();
    assert!(
        run.out.text().contains("cannot read") && run.out.text().contains("50-site.toml (mode 0600)"),
        "{}",
        run.out.text()
    );
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A conf.d that does not fit is the administrator's error, named with its file and line.
    std::fs::write(&site, "[smtp]\nmax_message_size = \"lots\"\n").unwrap();
    let msg = format!("{:#}", install::install(&host(r, &sys, &binary).host, &args(&answers)).unwrap_err());
    assert!(msg.contains("50-site.toml, line 2") && msg.contains("help:") && !msg.contains("BUG"), "{msg}");
    std::fs::write(&site, site_text).unwrap();

    // posthaste.toml edited by hand: the plan shows the diff; applying refuses, says where
    // settings go, and changes nothing.
    let rendered = std::fs::read_to_string(&config_path).unwrap();
    let edited = rendered.replace("level = \"info\"", "level = \"trace\"");
    assert_ne!(rendered, edited);
    std::fs::write(&config_path, &edited).unwrap();
    let before = snapshot(r);
    let run = host(r, &sys, &binary);
    install::install(&run.host, &InstallArgs { dry_run: true, ..args(&answers) }).unwrap();
    let text = run.out.text();
    assert!(text.contains("update  file     /etc/posthaste/posthaste.toml  (EDITED by hand"), "{text}");
    assert!(text.contains("      -level = \"trace\"\n      +level = \"info\"\n"), "{text}");
    assert!(text.contains("applying it needs --force"), "{text}");
    let run = host(r, &sys, &binary);
    let msg = format!("{:#}", install::install(&run.host, &args(&answers)).unwrap_err());
    assert!(msg.contains("changed by hand") && msg.contains("  /etc/posthaste/posthaste.toml"), "{msg}");
    assert!(msg.contains("help: settings of your own go in /etc/posthaste/conf.d/*.toml"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    assert!(run.out.text().contains("-level = \"trace\""), "the refusal comes after the diff");
    assert_eq!(snapshot(r), before, "a refused install changed something");

    // --force replaces it, keeping the edited file beside it.
    let run = host(r, &sys, &binary);
    install::install(&run.host, &InstallArgs { force: true, ..args(&answers) })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), rendered);
    let kept: Vec<PathBuf> = std::fs::read_dir(r.join("etc/posthaste"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("posthaste.toml.bak-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), edited);
    assert!(run.out.text().contains("was kept as"), "{}", run.out.text());
    assert!(std::fs::read_to_string(&site).unwrap() == site_text, "conf.d was touched");
    // And the next run is quiet again.
    let outcome = install::install(&host(r, &sys, &binary).host, &args(&answers)).unwrap();
    assert_eq!(pending(&outcome.plan), []);
}

/// A file of ours that someone else wrote first (here rspamd's local.d/redis.conf) is not
/// replaced silently either: the install stops before changing anything.
#[test]
fn a_file_the_installer_did_not_write_is_replaced_only_with_force() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/rspamd/local.d")).unwrap();
    std::fs::write(r.join("etc/rspamd/local.d/redis.conf"), "servers = \"10.0.0.9\";\n").unwrap();
    let before = snapshot(r);
    let sys = FakeSystem::new(r);
    let run = host(r, &sys, &fake_binary(work.path()));
    let msg = format!("{:#}", install::install(&run.host, &args(&answers)).unwrap_err());
    assert!(msg.contains("/etc/rspamd/local.d/redis.conf") && msg.contains("help: "), "{msg}");
    assert!(run.out.text().contains("NOT written by this installer"), "{}", run.out.text());
    assert!(run.out.text().contains("-servers = \"10.0.0.9\";"), "{}", run.out.text());
    assert_eq!(snapshot(r), before);
    assert!(sys.log().iter().all(|c| !c.contains("install -y")), "{:?}", sys.log());
}

/// Regression: on Enterprise Linux the plan ran `dnf install -y rspamd …` before it wrote
/// /etc/yum.repos.d/rspamd.repo, so a real install failed there and rolled back (the fake
/// dnf above fails the same way). Repository packages (EPEL), repository files and their
/// keys now come before the packages.
#[test]
fn rhel_family_installed_rspamd_before_writing_its_repository() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    for fixture in ["rhel-8", "rocky-9", "almalinux-10", "fedora-41"] {
        let root = target(fixture);
        let r = root.path();
        let sys = FakeSystem::new(r);
        let run = host(r, &sys, &binary);
        let outcome = install::install(&run.host, &args(&answers))
            .unwrap_or_else(|e| panic!("{fixture}: {e:#}\n{}", run.out.text()));
        let at = |pred: &dyn Fn(&posthaste::install::plan::Change) -> bool| {
            outcome.plan.changes.iter().position(pred).unwrap_or(usize::MAX)
        };
        let command = at(&|c| c.kind == Kind::Command);
        let repo = at(&|c| c.target == "/etc/yum.repos.d/rspamd.repo");
        let log = sys.log();
        if fixture == "fedora-41" {
            // Fedora packages rspamd itself: no repository of ours.
            assert_eq!(repo, usize::MAX, "{fixture}");
            assert!(!r.join("etc/yum.repos.d").exists(), "{fixture}");
            continue;
        }
        assert!(
            repo < command,
            "{fixture}: the repository file comes after the packages:\n{}",
            outcome.plan.render()
        );
        let first_package = at(&|c| c.kind == Kind::Package);
        assert!(first_package < repo, "{fixture}");
        // EPEL, then rspamd's key, then the packages.
        let pos = |needle: &str| {
            log.iter()
                .position(|c| c.contains(needle))
                .unwrap_or_else(|| panic!("{fixture}: no {needle} in {log:?}"))
        };
        let epel = pos("epel-release-latest-");
        let key = pos("rpm --import https://rspamd.com/rpm/gpg.key");
        let rspamd = pos("dnf install -y rspamd");
        assert!(epel < key && key < rspamd, "{fixture}: {log:?}");
        let repo_file = std::fs::read_to_string(r.join("etc/yum.repos.d/rspamd.repo")).unwrap();
        let major = fixture.rsplit('-').next().unwrap();
        assert!(repo_file.contains(&format!("centos-{major}/")), "{fixture}: {repo_file}");
    }
}

/// Regression: every listener the installer generated was `0.0.0.0:PORT`, so nothing
/// answered on IPv6 while the docs said to publish AAAA records. The generated `[::]:PORT`
/// is one dual-stack socket: here a running daemon with such a listener takes mail over
/// ::1 and over 127.0.0.1. Its site settings come from conf.d, as do the admin commands'
/// (the data directory is only set there).
#[test]
fn the_generated_listeners_were_ipv4_only_now_mail_arrives_over_ipv6() {
    use crate::support::{client::SmtpClient, posthaste::Posthaste, TestDir};
    let work = tempfile::tempdir().unwrap();
    let root = target("debian-12");
    let sys = FakeSystem::new(root.path());
    let run = host(root.path(), &sys, &fake_binary(work.path()));
    install::install(&run.host, &args(&answers(work.path(), &["example.test"]))).unwrap();
    let rendered =
        posthaste::config::Config::load(&root.path().join("etc/posthaste/posthaste.toml")).unwrap();
    for (name, addrs) in rendered.listeners() {
        assert!(
            addrs.len() == 1 && addrs[0].is_ipv6() && addrs[0].ip().is_unspecified(),
            "{name}: {addrs:?}"
        );
    }
    // The records say to publish AAAA, now that it is true.
    assert!(run.out.text().contains("an AAAA record"), "{}", run.out.text());

    let dir = TestDir::new("install-ipv6");
    let port = crate::support::free_port();
    let mut p = Posthaste::builder(&dir).set("listen.smtp", vec![format!("[::]:{port}")]).build();
    let site_data = dir.join("site-data");
    dir.write(
        "conf.d/50-site.toml",
        format!("data_dir = \"{}\"\n[smtp]\nmax_message_size = 2000000\n", site_data.display()),
    );
    p.add_domain("example.test");
    p.add_user("alice@example.test", "a long enough secret");
    assert!(site_data.join("directory.db").exists(), "the admin commands did not read conf.d");
    p.start();
    for ip in ["::1", "127.0.0.1"] {
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
        let t = SmtpClient::new(addr).to("alice@example.test").body(&format!("over {ip}")).send();
        assert!(t.accepted(), "{ip}: {}", t.raw);
        let ehlo = &t.reply("ehlo").unwrap().text;
        assert!(ehlo.contains("SIZE 2000000"), "{ip}: serve did not read conf.d: {ehlo}");
    }
    let inbox = site_data.join("mail/example.test/alice/new");
    let n = crate::support::wait_for("two messages", std::time::Duration::from_secs(10), || {
        let n = std::fs::read_dir(&inbox).map(|d| d.count()).unwrap_or(0);
        (n == 2).then_some(n)
    });
    assert_eq!(n, 2);
    p.stop();
}

/// Regression: the answers file took `password_hash: "{ARGON2ID}garbage"`, which `user add
/// --password-hash` refuses; the postmaster could then never log in. Both now give the same
/// verdict on the same hashes.
#[test]
fn answers_password_hash_accepted_garbage_that_user_add_refuses() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("posthaste.toml");
    std::fs::write(
        &config,
        format!("hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n", work.path().join("data").display()),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_posthaste"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(cli(&["domain", "add", "example.test"]).status.success());
    let sha512 = "{SHA512-CRYPT}$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
    let cases = [
        "{ARGON2ID}garbage",
        "{ARGON2I}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaA",
        "{SHA512-CRYPT}$5$salt$abc",
        "$6$saltsalt$abc",
        "{MD5}abc",
        "{PLAIN}secret",
        "nope",
        sha512,
        "{CRYPT}$5$salt$abc",
    ];
    for (i, hash) in cases.iter().enumerate() {
        let out = cli(&["user", "add", &format!("u{i}@example.test"), "--password-hash", hash]);
        let answers = format!(
            "hostname: mail.example.test\ndomains: [example.test]\npostmaster: {{password_hash: \"{hash}\"}}\n"
        );
        let parsed = install::answers::Answers::from_str(&answers, work.path());
        assert_eq!(
            parsed.is_ok(),
            out.status.success(),
            "{hash}: user add says {:?} ({}), the answers file says {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            parsed.err()
        );
        if let Err(problems) = parsed {
            assert!(problems.iter().all(|p| p.line == 3 && p.help.is_some()), "{problems:?}");
        }
    }
    let p = install::answers::Answers::from_str(
        "hostname: mail.example.test\ndomains: [example.test]\npostmaster: {password_hash: \"{ARGON2ID}garbage\"}\n",
        work.path(),
    )
    .unwrap_err();
    assert!(p[0].message.contains("says {ARGON2ID} but what follows is not a ARGON2ID hash"), "{p:?}");
}

/// Regression: the wizard asked again without saying why (a host name that is not fully
/// qualified, an IDN domain, a postmaster outside the domains, a short password), threw
/// away what was typed at the host name error, took no comma-separated list, and asked for
/// the password once.
#[test]
fn the_wizard_re_asked_without_saying_why() {
    let work = tempfile::tempdir().unwrap();
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    let mut run = host(r, &sys, &fake_binary(work.path()));
    let (script, asked) = Script::new(&[
        "mail",                // not fully qualified
        "mail.example.test",   // offered "mail" back; fixed
        "пример.рф, exa mple", // an IDN domain, a comma, and a word that is no domain
        "пример.рф, example.test",
        "pm@other.test", // outside the domains
        "postmaster@пример.рф",
        "short", // too short
        PASSWORD,
        "something else", // the repetition differs
        PASSWORD,
        PASSWORD,
        "",
        "n",
        "",  // antispam yes, antivirus no, guard yes
        "0", // self-signed
        "y", // apply
    ]);
    run.host.prompter = Some(Box::new(script));
    install::install(&run.host, &InstallArgs::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let asked = asked.lock().unwrap().clone();
    let pos = |needle: &str| {
        asked
            .iter()
            .position(|q| q.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in {asked:#?}"))
    };
    let told = |needle: &str| pos(&format!("told: {needle}"));
    assert!(
        told("\"mail\" is not fully qualified") < pos("Host name of this mail server (the MX name) [mail]")
    );
    told("\"exa\", \"mple\" are not a mail domain");
    told("пример.рф is written xn--e1afmkfd.xn--p1ai in DNS and in the config");
    // The typed list comes back after the error.
    pos("Mail domains (separated by spaces or commas) [пример.рф, exa mple]");
    told("pm@other.test is not in one of the mail domains (xn--e1afmkfd.xn--p1ai, example.test)");
    pos("Postmaster address (the first account) [pm@other.test]");
    told("that password has 5 characters; it needs at least 8");
    told("the two passwords differ; type it again");
    assert_eq!(asked.iter().filter(|q| q.starts_with("The same password again")).count(), 2, "{asked:#?}");

    let saved = install::answers::Answers::from_file(&r.join("etc/posthaste/answers.yaml")).unwrap();
    assert_eq!(saved.domains, ["xn--e1afmkfd.xn--p1ai", "example.test"]);
    assert_eq!(saved.postmaster.address.to_string(), "postmaster@xn--e1afmkfd.xn--p1ai");
    let db = format!("sqlite://{}", r.join("var/lib/posthaste/directory.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ok = rt.block_on(async {
        let dir = posthaste::directory::Directory::open(&db).await.unwrap();
        dir.authenticate("postmaster@xn--e1afmkfd.xn--p1ai", PASSWORD).await.unwrap().is_some()
    });
    assert!(ok, "the postmaster does not have the password typed twice");
    // The answers file takes U-labels too, and stores A-labels.
    std::fs::write(work.path().join("postmaster.pass"), format!("{PASSWORD}\n")).unwrap();
    let a = install::answers::Answers::from_str(
        "hostname: mail.пример.рф\ndomains: [пример.рф]\npostmaster: {address: info@пример.рф, password_file: ./postmaster.pass}\n",
        work.path(),
    )
    .unwrap();
    assert_eq!(
        (a.hostname.as_str(), a.domains[0].as_str(), a.postmaster.address.to_string().as_str()),
        ("mail.xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai", "info@xn--e1afmkfd.xn--p1ai")
    );
}

/// Regression: yes/no questions took single keys, so `yes` typed (with Enter) at one
/// question answered it with `y` and the next one with Enter, and `no` then answered the
/// one after that. The real binary on a pseudo-terminal: each typed word answers one
/// question.
#[test]
fn yes_no_prompts_took_single_keys_so_a_typed_word_answered_several_questions() {
    let root = target("debian-12");
    let script = r#"
import sys, pexpect
binary, root = sys.argv[1], sys.argv[2]
child = pexpect.spawn(binary, ["install", "--dry-run", "--root", root], encoding="utf-8", timeout=30,
                      dimensions=(50, 200), env={"TERM": "dumb", "PATH": "/usr/bin:/bin"})
def answer(prompt, text):
    child.expect(prompt)
    child.send(text + "\r")
answer("Host name", "mail.example.test")
answer("Mail domains", "")
answer("Postmaster address", "")
answer("Postmaster password", "correct horse battery")
answer("The same password again", "correct horse battery")
answer("Spam filtering", "yes")
answer("Virus scanning", "no")
answer("Ban clients", "yes")
answer("TLS certificate", "")
child.expect(pexpect.EOF)
print(child.before)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_posthaste"))
        .arg(root.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let packages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("create  package  "))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    // Spam filtering yes, virus scanning no, bans yes.
    assert!(packages.contains(&"rspamd") && packages.contains(&"nftables"), "{packages:?}\n{text}");
    assert!(!packages.iter().any(|p| p.starts_with("clamav")), "{packages:?}\n{text}");
    assert!(text.contains("dry run:"), "{text}");
}

/// Regression: `serve` created the data directory and its nftables table before it found
/// that `server.user` does not exist, and left both behind. Now it checks first and changes
/// nothing; and it refuses to start beside a running instance (whose table it would take
/// over). Run in a network namespace of its own, so the host's ruleset is never touched.
#[test]
fn serve_made_its_nftables_table_before_finding_its_user_missing() {
    use crate::support::{posthaste::Posthaste, require, TestDir};
    require("nft", "nftables");
    require("ip", "iproute2");
    assert!(crate::support::is_root(), "serve drops root only when started as root");
    let dir = TestDir::new("serve-preflight");
    let ns = format!("ph-pre-{}", std::process::id());
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().unwrap();
    assert!(ip(&["netns", "add", &ns]).status.success());
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _netns = Netns(ns.clone());
    let _ = ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let data = dir.join("data");
    let config = dir.write(
        "posthaste.toml",
        format!(
            "hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n[listen]\nsmtp = [\"127.0.0.1:{}\"]\n[server]\nuser = \"posthaste-no-such-user\"\n[guard]\nnftables = true\n",
            data.display(),
            crate::support::free_port()
        ),
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, crate::support::posthaste::bin(), "--config"])
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("server.user \"posthaste-no-such-user\" does not exist") && err.contains("help:"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    let table = ip(&["netns", "exec", &ns, "nft", "list", "table", "inet", "posthaste"]);
    assert!(
        !table.status.success(),
        "the failed start left its table:\n{}",
        String::from_utf8_lossy(&table.stdout)
    );
    assert!(!data.exists(), "the failed start made the data directory");

    // A second instance beside a running one is refused before it touches anything.
    let pdir = TestDir::new("serve-preflight-running");
    let mut p = Posthaste::new(&pdir);
    p.start();
    // The pidfile is written once the daemon is up (after its ports answer).
    let pidfile = p.data_dir().join("posthaste.pid");
    crate::support::wait_for("the pidfile", std::time::Duration::from_secs(10), || {
        pidfile.exists().then_some(())
    });
    let mut second = std::fs::read_to_string(p.config_path()).unwrap();
    for (_, addr) in p.listeners() {
        second = second.replace(&addr.to_string(), &crate::support::free_addr().to_string());
    }
    let other = pdir.write("second.toml", second);
    // (Bounded: if it were not refused, it would run until killed.)
    let out = std::process::Command::new("timeout")
        .args(["20", crate::support::posthaste::bin(), "--config"])
        .arg(&other)
        .arg("serve")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("posthaste is already running (pid {}", p.pid().unwrap())), "{err}");
    assert!(p.is_running());
    p.stop();
}

/// Regression: a rerun with another hostname kept the self-signed certificate of the old
/// name without a word. It is replaced now, and the plan and a warning say so.
#[test]
fn a_changed_hostname_kept_the_self_signed_certificate_of_the_old_name() {
    let work = tempfile::tempdir().unwrap();
    let first = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    install::install(&host(r, &sys, &binary).host, &args(&first)).unwrap_or_else(|e| panic!("{e:#}"));
    let cert = r.join("etc/posthaste/tls/fullchain.pem");
    assert_eq!(posthaste::tls::CertInfo::read(&cert).unwrap().names, ["mail.example.test"]);
    let renamed = work.path().join("renamed.yaml");
    std::fs::write(
        &renamed,
        std::fs::read_to_string(&first).unwrap().replace("mail.example.test", "mx.example.test"),
    )
    .unwrap();
    let run = host(r, &sys, &binary);
    let outcome = install::install(&run.host, &args(&renamed)).unwrap_or_else(|e| panic!("{e:#}"));
    let key = outcome.plan.changes.iter().find(|c| c.target == "/etc/posthaste/tls/privkey.pem").unwrap();
    assert_eq!(key.action, Action::Update);
    assert!(key.note.contains("replaces the self-signed certificate for mail.example.test"), "{}", key.note);
    assert!(
        run.out.text().contains("warning: the hostname changed to mx.example.test"),
        "{}",
        run.out.text()
    );
    assert_eq!(posthaste::tls::CertInfo::read(&cert).unwrap().names, ["mx.example.test"]);
    let config = posthaste::config::Config::load(&r.join("etc/posthaste/posthaste.toml")).unwrap();
    assert_eq!(config.hostname, "mx.example.test");
    posthaste::tls::load_acceptor(&posthaste::config::TlsConfig {
        cert: cert.clone(),
        key: r.join("etc/posthaste/tls/privkey.pem"),
    })
    .unwrap();
    assert_eq!(mode(&r.join("etc/posthaste/tls/privkey.pem")), 0o600);
    // And a rerun with that name keeps it.
    let outcome = install::install(&host(r, &sys, &binary).host, &args(&renamed)).unwrap();
    assert_eq!(pending(&outcome.plan), []);
}

/// Regression: a private key every user can read was accepted silently. The installer's own
/// key is made 0600 again (with a warning); a key given with `mode: files` is refused.
#[test]
fn a_world_readable_private_key_was_accepted_silently() {
    let work = tempfile::tempdir().unwrap();
    let answers1 = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    install::install(&host(r, &sys, &binary).host, &args(&answers1)).unwrap_or_else(|e| panic!("{e:#}"));
    let key = r.join("etc/posthaste/tls/privkey.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = host(r, &sys, &binary);
    let outcome = install::install(&run.host, &args(&answers1)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        pending(&outcome.plan),
        [(Kind::Key, "/etc/posthaste/tls/privkey.pem".to_owned(), Action::Update)],
        "{}",
        outcome.plan.render()
    );
    assert!(run.out.text().contains("could be read by every user (mode 0644)"), "{}", run.out.text());
    assert_eq!(mode(&key), 0o600);

    // Files of one's own: refused, nothing changed.
    std::fs::create_dir_all(r.join("etc/ssl/mail")).unwrap();
    std::fs::copy(r.join("etc/posthaste/tls/fullchain.pem"), r.join("etc/ssl/mail/fullchain.pem")).unwrap();
    std::fs::copy(&key, r.join("etc/ssl/mail/privkey.pem")).unwrap();
    std::fs::set_permissions(r.join("etc/ssl/mail/privkey.pem"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let files = work.path().join("files.yaml");
    std::fs::write(
        &files,
        std::fs::read_to_string(&answers1).unwrap().replace(
            "tls: {mode: self-signed}",
            "tls: {mode: files, cert: /etc/ssl/mail/fullchain.pem, key: /etc/ssl/mail/privkey.pem}",
        ),
    )
    .unwrap();
    let before = snapshot(r);
    let msg = format!("{:#}", install::install(&host(r, &sys, &binary).host, &args(&files)).unwrap_err());
    assert!(
        msg.contains("/etc/ssl/mail/privkey.pem can be read by every user")
            && msg.contains("help: chmod o-r"),
        "{msg}"
    );
    assert_eq!(snapshot(r), before);
    std::fs::set_permissions(r.join("etc/ssl/mail/privkey.pem"), std::fs::Permissions::from_mode(0o640))
        .unwrap();
    install::install(&host(r, &sys, &binary).host, &args(&files)).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Regression: a rollback that could not put a file back left its temp copy beside it,
/// said "COULD NOT restore … from <backup>", and then deleted that backup: the only copy
/// of the original. Now no temp file stays, the backup stays and the message says where.
#[test]
fn a_rollback_deleted_the_backup_it_could_not_restore_from() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    std::fs::write(r.join("usr/lib/systemd/systemd"), "").unwrap();
    std::fs::create_dir_all(r.join("etc/rspamd/local.d")).unwrap();
    let original = "servers = \"10.0.0.9\";\n";
    std::fs::write(r.join("etc/rspamd/local.d/redis.conf"), original).unwrap();
    let sys = FakeSystem::new(r);
    sys.fail_on("enable posthaste");
    // When the failure comes, something has put a directory where the file was: nothing
    // can be renamed or copied over it.
    sys.state.lock().unwrap().sabotage = Some(r.join("etc/rspamd/local.d/redis.conf"));
    let run = host(r, &sys, &fake_binary(work.path()));
    let msg = format!(
        "{:#}",
        install::install(&run.host, &InstallArgs { force: true, ..args(&answers) }).unwrap_err()
    );
    let backups = r.join(format!("var/backups/posthaste-install.{}", std::process::id()));
    let kept: Vec<PathBuf> = std::fs::read_dir(&backups)
        .unwrap_or_else(|e| panic!("{}: {e}\n{msg}", backups.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), original);
    assert!(msg.contains("COULD NOT restore") && msg.contains("redis.conf"), "{msg}");
    assert!(msg.contains(&format!("its original is kept in {}", kept[0].display())), "{msg}");
    let temp: Vec<String> = snapshot(r).into_keys().filter(|p| p.contains("posthaste-tmp")).collect();
    assert!(temp.is_empty(), "temp files left: {temp:?}");
}

/// Regression: `install --config FILE` was accepted and ignored (the install always writes
/// /etc/posthaste/posthaste.toml). It is refused now, before anything happens.
#[test]
fn install_config_was_accepted_and_ignored() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let before = snapshot(root.path());
    let run = |env: Option<&str>, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_posthaste"));
        cmd.args(extra)
            .args(["install", "--dry-run", "--root"])
            .arg(root.path())
            .arg("--answers")
            .arg(&answers);
        cmd.env_remove("POSTHASTE_CONFIG");
        if let Some(v) = env {
            cmd.env("POSTHASTE_CONFIG", v);
        }
        cmd.output().unwrap()
    };
    for (env, extra) in
        [(None, &["--config", "/srv/mail/posthaste.toml"][..]), (Some("/srv/mail/posthaste.toml"), &[][..])]
    {
        let out = run(env, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("`posthaste install` does not take --config")
                && err.contains("help: leave out --config"),
            "{err}"
        );
    }
    // The default path, spelt out, is what it writes anyway: fine.
    let out = run(None, &["--config", "/etc/posthaste/posthaste.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(snapshot(root.path()), before);
}

/// Regression: the rspamd controller password was generated into a process-wide cell, so
/// every install in one process (an embedding tool, these tests) got the same password.
#[test]
fn every_install_in_one_process_shared_one_rspamd_password() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let binary = fake_binary(work.path());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let root = target("debian-12");
        let sys = FakeSystem::new(root.path());
        install::install(&host(root.path(), &sys, &binary).host, &args(&answers)).unwrap();
        let pass = std::fs::read_to_string(root.path().join("etc/posthaste/rspamd-controller.pass")).unwrap();
        let config =
            posthaste::config::Config::load(&root.path().join("etc/posthaste/posthaste.toml")).unwrap();
        // Within one install: one password everywhere.
        assert_eq!(config.antispam.unwrap().controller_password.as_deref(), Some(pass.trim()));
        seen.push(pass);
    }
    assert_ne!(seen[0], seen[1], "two installs got the same controller password");
}

/// With too little memory for ClamAV, someone at the terminal is asked whether to go on
/// without virus scanning (the finding is recognised by its kind, not by its wording).
#[test]
fn too_little_memory_for_clamav_is_a_question_at_the_terminal() {
    let work = tempfile::tempdir().unwrap();
    let answers = answers(work.path(), &["example.test"]);
    let root = target("debian-12");
    let r = root.path();
    let sys = FakeSystem::new(r);
    let mut run = host_with(r, &sys, &fake_binary(work.path()), FakeProbe { holders: vec![], mem: 1 << 30 });
    run.host.under_root = false;
    let (script, asked) = Script::new(&["y", "y"]);
    run.host.prompter = Some(Box::new(script));
    let outcome = install::install(&run.host, &InstallArgs { yes: false, ..args(&answers) })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", run.out.text()));
    let asked = asked.lock().unwrap().clone();
    assert!(asked[0].contains("too little memory for ClamAV"), "{asked:?}");
    assert!(asked[1].starts_with("Apply these"), "{asked:?}");
    let packages: Vec<String> =
        outcome.plan.changes.iter().filter(|c| c.kind == Kind::Package).map(|c| c.target.clone()).collect();
    assert!(
        !packages.iter().any(|p| p.starts_with("clamav")) && packages.contains(&"rspamd".to_owned()),
        "{packages:?}"
    );
    let saved = install::answers::Answers::from_file(&r.join("etc/posthaste/answers.yaml")).unwrap();
    assert!(!saved.components.antivirus);
}

/// Regression (newcomer issue, item 4): with the answers' postmaster named otherwise
/// (`alice@…`), no `postmaster@` existed at all, so every domain refused mail to its
/// postmaster (RFC 5321 §4.5.1). The install now adds postmaster@<first domain> as an
/// alias to that account, once: a rerun plans `none`.
#[test]
fn a_postmaster_of_another_name_left_no_postmaster_address() {
    let work = tempfile::tempdir().unwrap();
    let root = target("debian-12");
    let r = root.path();
    let binary = fake_binary(work.path());
    let sys = FakeSystem::new(r);
    std::fs::write(work.path().join("postmaster.pass"), format!("{PASSWORD}\n")).unwrap();
    let answers = work.path().join("answers.yaml");
    std::fs::write(
        &answers,
        "hostname: mail.example.test\ndomains: [example.test, second.test]\npostmaster: {address: alice@example.test, password_file: ./postmaster.pass}\ncomponents: {antispam: false, antivirus: false, guard: true}\ntls: {mode: self-signed}\n",
    )
    .unwrap();
    let run = host(r, &sys, &binary);
    let outcome = install::install(&run.host, &args(&answers)).unwrap();
    assert!(
        pending(&outcome.plan).contains(&(Kind::User, "postmaster@example.test".into(), Action::Create)),
        "{}",
        outcome.plan.render()
    );
    let db = format!("sqlite://{}", r.join("var/lib/posthaste/directory.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (first, second) = rt.block_on(async {
        let dir = posthaste::directory::Directory::open(&db).await.unwrap();
        let resolve = |a: &str| {
            let a = posthaste::address::Address::parse(a).unwrap();
            let dir = dir.clone();
            async move { dir.resolve(&a).await.unwrap() }
        };
        (resolve("postmaster@example.test").await, resolve("postmaster@second.test").await)
    });
    for (what, t) in [("example.test", first), ("second.test", second)] {
        let t = t.unwrap_or_else(|| panic!("postmaster@{what} is unknown"));
        let to_alice = |x: &posthaste::directory::Target| matches!(x, posthaste::directory::Target::Local(a) if a.to_string() == "alice@example.test");
        assert!(t.iter().any(to_alice), "postmaster@{what}: {t:?}");
    }
    let run2 = host(r, &sys, &binary);
    let again = install::install(&run2.host, &args(&answers)).unwrap();
    assert_eq!(pending(&again.plan), [], "{}", again.plan.render());
}
