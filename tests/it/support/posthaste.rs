//! The posthaste binary under test: a config in the test dir, admin commands, and
//! `serve` as a daemon with its JSON log.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::dns::Dnsmasq;
use super::tls::{self_signed, CertPair};
use super::{file_tail, free_addr, maildir_files, run, wait_for_port, Out, ProcessGuard, TestDir};

pub const HOSTNAME: &str = "mail.example.test";

/// The binary Cargo built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_posthaste")
}

/// Builds a posthaste config (DESIGN.md "Daemon config") for one test. Every key can be
/// changed with `set("section.key", value)` before `build()`.
pub struct PosthasteBuilder<'a> {
    dir: &'a TestDir,
    table: toml::Table,
}

impl<'a> PosthasteBuilder<'a> {
    /// `[dns] nameservers = ["<dnsmasq addr>"]`.
    pub fn dns(self, dns: &Dnsmasq) -> Self {
        self.set("dns.nameservers", vec![dns.nameserver()])
    }
    /// `[queue] remote_port`: where the queue connects to MX hosts (25 for peers started on
    /// `remote_mx_addr()`).
    pub fn remote_port(self, port: u16) -> Self {
        self.set("queue.remote_port", port as i64)
    }
    /// `[directory] url`, e.g. a PostgreSQL URL.
    pub fn directory_url(self, url: &str) -> Self {
        self.set("directory.url", url)
    }
    /// Turns a listener on (`imap`, `imaps`, `pop3`, `pop3s`, …) on a free port.
    pub fn listener(self, name: &str) -> Self {
        self.set(&format!("listen.{name}"), vec![free_addr().to_string()])
    }
    /// All seven listeners on free ports.
    pub fn all_listeners(mut self) -> Self {
        for name in ["smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s"] {
            if !has_key(&self.table, &format!("listen.{name}")) {
                self = self.listener(name);
            }
        }
        self
    }
    /// Sets a dotted key (`"queue.retry_max"`, `"hostname"`), creating tables on the way.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        set_key(&mut self.table, key, value.into());
        self
    }
    /// Removes a dotted key (e.g. `"listen.submissions"` to turn that listener off).
    pub fn remove(mut self, key: &str) -> Self {
        remove_key(&mut self.table, key);
        self
    }

    /// Writes the config file and returns the (not yet started) server.
    pub fn build(self) -> Posthaste {
        let root = self.dir.path().to_owned();
        let p = Posthaste {
            root: root.clone(),
            config_path: root.join("posthaste.toml"),
            log: root.join("posthaste.log"),
            cert: self.cert(),
            table: self.table,
            guard: None,
        };
        p.write_config();
        p
    }

    fn cert(&self) -> CertPair {
        CertPair { cert: self.dir.join("tls/cert.pem"), key: self.dir.join("tls/key.pem") }
    }
}

fn has_key(t: &toml::Table, key: &str) -> bool {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut cur = t;
    for p in parts {
        match cur.get(p).and_then(|v| v.as_table()) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.contains_key(last)
}

fn set_key(t: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut cur = t;
    for p in parts {
        cur = cur
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("config key {key}: {p} is not a table"));
    }
    cur.insert(last.to_owned(), value);
}

fn remove_key(t: &mut toml::Table, key: &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut cur = t;
    for p in parts {
        match cur.get_mut(p).and_then(|v| v.as_table_mut()) {
            Some(next) => cur = next,
            None => return,
        }
    }
    cur.remove(last);
}

/// posthaste with its own data dir, config and listeners, in a test dir.
pub struct Posthaste {
    root: PathBuf,
    config_path: PathBuf,
    log: PathBuf,
    cert: CertPair,
    table: toml::Table,
    guard: Option<ProcessGuard>,
}

impl Posthaste {
    /// Defaults for tests: hostname mail.example.test, data_dir in the test dir, SMTP,
    /// submission and submissions on free ports of 127.0.0.1, a self-signed certificate
    /// for mail.example.test and 127.0.0.1, remote MX port 25, retries after 1 s and 2 s,
    /// JSON log, `[server] user = "root"` (no privilege drop in tests) and `[guard] nftables = false`.
    pub fn builder(dir: &TestDir) -> PosthasteBuilder<'_> {
        let tls = dir.subdir("tls");
        let cert = self_signed(&tls, "cert", HOSTNAME, &[], &["127.0.0.1".parse().unwrap()]);
        // Posthaste reads fixed names; self_signed writes {stem}.crt/.key.
        fs::rename(&cert.cert, tls.join("cert.pem")).unwrap();
        fs::rename(&cert.key, tls.join("key.pem")).unwrap();
        let data_dir = dir.subdir("data");
        let b = PosthasteBuilder { dir, table: toml::Table::new() };
        b.set("hostname", HOSTNAME)
            .set("data_dir", data_dir.display().to_string())
            .listener("smtp")
            .listener("submission")
            .listener("submissions")
            .set("tls.cert", tls.join("cert.pem").display().to_string())
            .set("tls.key", tls.join("key.pem").display().to_string())
            .set("queue.remote_port", 25i64)
            .set("queue.retry_initial", "1s")
            .set("queue.retry_max", "2s")
            .set("log.format", "json")
            .set("log.level", "info")
            .set("server.user", "root")
            // Tests never touch the host's nftables ruleset; tests/it/guard.rs turns nftables on
            // only inside network namespaces it creates.
            .set("guard.nftables", false)
    }

    /// `builder(dir).build()`.
    pub fn new(dir: &TestDir) -> Posthaste {
        Posthaste::builder(dir).build()
    }

    fn write_config(&self) {
        let text = toml::to_string(&self.table).expect("config serializes");
        fs::write(&self.config_path, text).unwrap();
    }

    /// Changes a key in the config file; a running server sees it after `restart()`.
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) {
        set_key(&mut self.table, key, value.into());
        self.write_config();
    }

    pub fn remove(&mut self, key: &str) {
        remove_key(&mut self.table, key);
        self.write_config();
    }

    pub fn config(&self) -> &toml::Table {
        &self.table
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.table["data_dir"].as_str().unwrap())
    }

    /// The self-signed certificate, which clients use as their CA file.
    pub fn ca(&self) -> &Path {
        &self.cert.cert
    }

    pub fn cert(&self) -> &CertPair {
        &self.cert
    }

    /// The first address of listener `name` (`smtp`, `submission`, `imaps`, …).
    #[track_caller]
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners().into_iter().find(|(n, _)| n == name).map(|(_, a)| a).unwrap_or_else(|| {
            panic!("listener {name} is not configured (use the builder's .listener(\"{name}\"))")
        })
    }

    pub fn smtp(&self) -> SocketAddr {
        self.addr("smtp")
    }
    pub fn submission(&self) -> SocketAddr {
        self.addr("submission")
    }
    pub fn submissions(&self) -> SocketAddr {
        self.addr("submissions")
    }

    /// Every configured listener address with its name.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        if let Some(listen) = self.table.get("listen").and_then(|v| v.as_table()) {
            for (name, addrs) in listen {
                for a in addrs.as_array().into_iter().flatten() {
                    out.push((name.clone(), a.as_str().unwrap().parse().expect("listener address")));
                }
            }
        }
        out
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config_path).args(args);
        // The config comes from --config only; a developer's exported variable must not
        // point a test at a real server's config.
        cmd.env_remove("POSTHASTE_CONFIG");
        cmd
    }

    /// `posthaste --config FILE <args>`, e.g. `cmd(&["domain", "add", "example.test"])`.
    pub fn cmd(&self, args: &[&str]) -> Out {
        run(self.command(args), None)
    }

    /// The same with `input` on stdin (`user add … --password-stdin`).
    pub fn cmd_stdin(&self, args: &[&str], input: &str) -> Out {
        run(self.command(args), Some(input.as_bytes()))
    }

    /// `cmd`, panicking with the output unless it succeeded.
    #[track_caller]
    pub fn cmd_ok(&self, args: &[&str]) -> Out {
        let out = self.cmd(args);
        assert!(out.success(), "posthaste {args:?} failed ({}):\n{}", out.status, out.all());
        out
    }

    pub fn add_domain(&self, domain: &str) {
        self.cmd_ok(&["domain", "add", domain]);
    }

    pub fn add_user(&self, address: &str, password: &str) {
        let out = self.cmd_stdin(&["user", "add", address, "--password-stdin"], &format!("{password}\n"));
        assert!(out.success(), "posthaste user add {address} failed ({}):\n{}", out.status, out.all());
    }

    /// Starts `posthaste --config FILE serve` and waits until every configured listener
    /// accepts connections (or fails with the log).
    pub fn start(&mut self) {
        assert!(self.guard.is_none(), "posthaste is already running");
        let mut cmd = self.command(&["serve"]);
        cmd.env("RUST_BACKTRACE", "1");
        let mut guard = ProcessGuard::spawn("posthaste serve", cmd, &self.log);
        for (_, addr) in self.listeners() {
            wait_for_port(addr, Duration::from_secs(20), &mut guard);
        }
        self.guard = Some(guard);
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL). Returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.take().map(|mut g| g.terminate(Duration::from_secs(10)))
    }

    /// SIGKILL: a crash, for durability tests.
    pub fn kill9(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill9();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.as_mut().map(|g| g.is_running()).unwrap_or(false)
    }

    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(|g| g.pid())
    }

    /// Resident memory of the serve process, from /proc/PID/status (VmRSS, KiB).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The daemon's combined stdout/stderr (all runs of this test).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// Log lines that parse as JSON objects (`[log] format = "json"`), in order.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// Waits for a JSON log line matching `pred`.
    pub fn wait_for_log(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.log_lines().into_iter().find(|v| pred(v)) {
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "no matching posthaste log line within {timeout:?}; last lines:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The INBOX Maildir of `address`: `{data_dir}/mail/{domain}/{localpart}/`.
    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.rsplit_once('@').unwrap_or_else(|| panic!("not an address: {address}"));
        self.data_dir().join("mail").join(domain).join(local)
    }

    /// Delivered messages in the INBOX of `address` (new/ and cur/), oldest first.
    pub fn maildir_messages(&self, address: &str) -> Vec<PathBuf> {
        maildir_files(&self.maildir(address))
    }

    /// Waits until the INBOX of `address` holds at least `n` messages; returns their paths.
    pub fn wait_for_maildir_count(&self, address: &str, n: usize, timeout: Duration) -> Vec<PathBuf> {
        let start = Instant::now();
        loop {
            let files = self.maildir_messages(address);
            if files.len() >= n {
                return files;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} has {} message(s), expected {n}, after {timeout:?}; posthaste log:\n{}",
                    self.maildir(address).display(),
                    files.len(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first message in the INBOX of `address` and returns its bytes.
    pub fn wait_for_maildir_message(&self, address: &str, timeout: Duration) -> Vec<u8> {
        let files = self.wait_for_maildir_count(address, 1, timeout);
        fs::read(&files[0]).unwrap()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
