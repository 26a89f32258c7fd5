//! A real rspamd (and the Redis it keeps Bayes statistics in) for one test.
//!
//! rspamd runs offline (docs/testing.md, ENVIRONMENT.md): every module that would query
//! DNS or fetch maps from the internet is disabled, Hyperscan is off (a cold start then
//! takes seconds instead of a rule compile), and `enable_test_patterns` makes rspamd's
//! GTUBE variants deterministic: `XJS*…` → reject, `YJS*…` → add header. It refuses to
//! run as root, so it runs as `_rspamd` with its db/run/log directories chowned to it.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_addr, require, wait_for_port, ProcessGuard, TestDir};

/// rspamd's GTUBE test pattern: `"action": "reject"`.
pub const GTUBE_REJECT: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// The add-header variant (needs `enable_test_patterns`, which [`Rspamd`] sets).
pub const GTUBE_ADD_HEADER: &str = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// rspamd's Hyperscan cache, shared by every test run on this machine.
const HS_CACHE: &str = "/var/tmp/posthaste-test-rspamd-hs-cache";

fn chown_rspamd(p: &Path) {
    let out = Command::new("chown").arg("-R").arg("_rspamd:_rspamd").arg(p).output().unwrap();
    assert!(
        out.status.success(),
        "chown _rspamd {} (rspamd runs as _rspamd; the Debian package `rspamd` creates that user): {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `redis-server` on a free loopback port, in memory only.
pub struct Redis {
    pub addr: SocketAddr,
    _guard: ProcessGuard,
}

impl Redis {
    pub fn start(dir: &TestDir) -> Redis {
        let bin = require("redis-server", "redis-server");
        let addr = free_addr();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", &dir.subdir("redis").display().to_string()]);
        let mut guard = ProcessGuard::spawn("redis-server", cmd, &dir.join("redis.log"));
        wait_for_port(addr, Duration::from_secs(20), &mut guard);
        Redis { addr, _guard: guard }
    }
}

/// A running rspamd: the normal worker (`/checkv2`) and the controller (password
/// [`Rspamd::PASSWORD`]).
pub struct Rspamd {
    pub normal: SocketAddr,
    pub controller: SocketAddr,
    pub log: PathBuf,
    guard: ProcessGuard,
}

impl Rspamd {
    pub const PASSWORD: &'static str = "test-controller-password";

    /// Starts rspamd (with Bayes in `redis` when given) and waits until both workers answer.
    pub fn start(dir: &TestDir, redis: Option<&Redis>) -> Rspamd {
        let bin = require("rspamd", "rspamd");
        let root = dir.subdir("rspamd");
        for sub in ["local.d", "override.d", "db", "run", "log"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let (normal, controller, proxy) = (free_addr(), free_addr(), free_addr());
        // Every module that would wait for DNS or download maps, off.
        for m in [
            "rbl",
            "asn",
            "dmarc",
            "spf",
            "dkim",
            "hfilter",
            "fuzzy_check",
            "phishing",
            "url_reputation",
            "reputation",
            "neural",
            "ratelimit",
            "greylist",
            "replies",
            "mx_check",
            "emails",
            "surbl",
            "multimap",
            "dcc",
            "spamassassin",
            "external_services",
            "antivirus",
            "whitelist",
            "mime_types",
            "mid",
            "dkim_signing",
            "arc",
            "rspamd_update",
        ] {
            fs::write(root.join(format!("local.d/{m}.conf")), "enabled = false;\n").unwrap();
        }
        // override.d replaces the distro's `secure_ip = 127.0.0.1` (which lets every local
        // process in without the password, so a wrong one would go unnoticed) and its `bind_socket = "localhost:1133x"` (local.d would
        // add to it, and other test runs may hold the default ports).
        fs::write(
            root.join("override.d/worker-normal.inc"),
            format!("bind_socket = \"{normal}\";\ncount = 1;\n"),
        )
        .unwrap();
        fs::write(
            root.join("override.d/worker-controller.inc"),
            format!(
                "bind_socket = \"{controller}\";\ncount = 1;\npassword = \"{p}\";\nenable_password = \"{p}\";\nsecure_ip = [];\n",
                p = Self::PASSWORD
            ),
        )
        .unwrap();
        fs::write(
            root.join("override.d/worker-proxy.inc"),
            format!("bind_socket = \"{proxy}\";\nenabled = false;\n"),
        )
        .unwrap();
        // The compiled Hyperscan databases are kept between runs (content-addressed file
        // names, so runs with other rules do not collide): a cold compile takes minutes on
        // a loaded machine, a warm start seconds.
        fs::create_dir_all(HS_CACHE).unwrap();
        chown_rspamd(Path::new(HS_CACHE));
        fs::write(
            root.join("local.d/options.inc"),
            format!(
                "dns {{ nameserver = [\"127.0.0.1:1\"]; timeout = 1s; retransmits = 1; }}\n\
                 enable_test_patterns = true;\nhs_cache_dir = \"{HS_CACHE}\";\n"
            ),
        )
        .unwrap();
        match redis {
            Some(r) => {
                fs::write(root.join("local.d/redis.conf"), format!("servers = \"{}\";\n", r.addr)).unwrap();
                // Bayes in Redis; learn from one message on (the default waits for 200).
                fs::write(
                    root.join("local.d/classifier-bayes.conf"),
                    "backend = \"redis\";\nmin_learns = 1;\nautolearn = false;\n",
                )
                .unwrap();
            }
            None => {
                fs::write(root.join("local.d/classifier-bayes.conf"), "enabled = false;\n").unwrap();
            }
        }
        // rspamd runs as _rspamd: it must reach and write its directories.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["db", "run", "log"] {
            chown_rspamd(&root.join(sub));
        }
        let log = root.join("log/rspamd.log");
        let mut cmd = Command::new(bin);
        cmd.args(["-f", "-u", "_rspamd", "-g", "_rspamd"])
            .arg(format!("--var=LOCAL_CONFDIR={}", root.display()))
            .arg(format!("--var=DBDIR={}", root.join("db").display()))
            .arg(format!("--var=RUNDIR={}", root.join("run").display()))
            .arg(format!("--var=LOGDIR={}", root.join("log").display()));
        let mut guard = ProcessGuard::spawn("rspamd", cmd, &dir.join("rspamd.out"));
        // A cold start compiles rules for seconds (much longer on a loaded machine).
        let limit = Duration::from_secs(300);
        wait_for_port(normal, limit, &mut guard);
        wait_for_port(controller, limit, &mut guard);
        let r = Rspamd { normal, controller, log, guard };
        let start = Instant::now();
        while r.get(r.normal, "/ping", false).map(|b| !b.contains("pong")).unwrap_or(true) {
            assert!(
                start.elapsed() < limit,
                "rspamd does not answer /ping; log:\n{}",
                super::file_tail(&r.log, 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    }

    /// `http://<normal worker>` for `[antispam] rspamd`.
    pub fn url(&self) -> String {
        format!("http://{}", self.normal)
    }

    pub fn controller_url(&self) -> String {
        format!("http://{}", self.controller)
    }

    /// A GET with curl (a client independent of ours); the body.
    pub fn get(&self, addr: SocketAddr, path: &str, auth: bool) -> Option<String> {
        let curl = require("curl", "curl");
        let mut cmd = Command::new(curl);
        cmd.args(["-s", "-m", "10"]);
        if auth {
            cmd.args(["-H", &format!("Password: {}", Self::PASSWORD)]);
        }
        cmd.arg(format!("http://{addr}{path}"));
        let out = cmd.output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The controller's `/stat` as JSON (`learned`, `scanned`, `statfiles`, …).
    pub fn stat(&self) -> serde_json::Value {
        let body = self.get(self.controller, "/stat", true).expect("GET /stat on the rspamd controller");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/stat is not JSON ({e}): {body}"))
    }

    /// Messages learned so far (the controller's `learned` counter).
    pub fn learned(&self) -> u64 {
        self.stat()["learned"].as_u64().unwrap_or(0)
    }

    /// Bayes statistics: learned messages per class symbol (`BAYES_SPAM`, `BAYES_HAM`).
    pub fn bayes_revisions(&self) -> (u64, u64) {
        let stat = self.stat();
        let mut spam = 0;
        let mut ham = 0;
        for f in stat["statfiles"].as_array().into_iter().flatten() {
            let n = f["revision"].as_u64().unwrap_or(0);
            match f["symbol"].as_str() {
                Some("BAYES_SPAM") => spam += n,
                Some("BAYES_HAM") => ham += n,
                _ => {}
            }
        }
        (spam, ham)
    }

    /// SIGSTOP: the workers stop answering but their sockets stay open (a hung rspamd).
    pub fn freeze(&self) {
        self.guard.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.guard.signal(libc::SIGCONT);
    }
}
