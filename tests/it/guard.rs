//! The guard: in-memory SMTP and POP3 sessions reporting to it, the real binary banning a
//! client that fails logins over SMTP and POP3 (refused at connect, allow list, expiry,
//! `posthaste ban` with --json, persistence across a restart), and nftables inside two
//! network namespaces joined by a veth pair (never the host's own ruleset).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{require, run, Out, Posthaste, ProcessGuard, TestDir};
use base64::Engine;
use posthaste::address::Address;
use posthaste::config::{Config, TlsConfig};
use posthaste::directory::{password, Directory};
use posthaste::guard::{Guard, Verdict};
use posthaste::net::Stream;
use posthaste::queue::Queue;
use posthaste::smtp::Profile;
use posthaste::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PASSWORD: &str = "correct horse battery";
const CLIENT: &str = "192.0.2.7:40000";

// ---- in-memory sessions ------------------------------------------------------------------

struct Env {
    _dir: tempfile::TempDir,
    config: Arc<Config>,
    directory: Directory,
    store: Store,
    queue: Queue,
}

async fn env(tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    posthaste::tls::generate_self_signed("mail.example.test", &[], &cert, &key).unwrap();
    let text = format!("hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n", data.display());
    let mut config = Config::parse(&text, Path::new("test.toml")).unwrap();
    config.tls = Some(TlsConfig { cert, key });
    config.pop3.allow_plaintext_auth = true;
    config.pop3.auth_failure_delay = Duration::ZERO;
    tweak(&mut config);
    let directory = Directory::open(&config.directory_url()).await.unwrap();
    directory.add_domain("example.test").await.unwrap();
    let hash = password::hash(PASSWORD);
    for a in ["alice@example.test", "bob@example.test"] {
        directory.add_account(&Address::parse(a).unwrap(), &hash, 0).await.unwrap();
    }
    let store = Store::new(config.mail_dir());
    let queue = Queue::open(&config, store.clone(), directory.clone()).unwrap();
    Env { _dir: dir, config: Arc::new(config), directory, store, queue }
}

impl Env {
    /// Sessions get a guard as the daemon's (in memory: no ban file, no nftables).
    fn guard(&self) -> Arc<Guard> {
        Arc::new(Guard::in_memory(&self.config.guard))
    }
    fn smtp(&self) -> Arc<posthaste::smtp::Context> {
        let ctx = posthaste::smtp::Context::new(
            self.config.clone(),
            self.directory.clone(),
            self.queue.clone(),
            None,
            self.guard(),
        );
        Arc::new(ctx)
    }
    fn pop3(&self) -> Arc<posthaste::pop3::Context> {
        let ctx = posthaste::pop3::Context::new(
            self.config.clone(),
            self.directory.clone(),
            self.store.clone(),
            None,
            self.guard(),
        );
        Arc::new(ctx)
    }
}

/// A line-oriented client on an in-memory pipe.
struct Client {
    io: BufReader<Box<dyn Stream>>,
}

impl Client {
    fn smtp(ctx: &Arc<posthaste::smtp::Context>, profile: Profile) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        // `tls = true`: the session behaves as on an encrypted stream (AUTH allowed).
        let s = posthaste::smtp::session::Session::new(
            ctx.clone(),
            profile,
            Box::new(server),
            CLIENT.parse().unwrap(),
            true,
        );
        tokio::spawn(s.run());
        Client { io: BufReader::new(Box::new(client)) }
    }
    fn pop3(ctx: &Arc<posthaste::pop3::Context>) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let s = posthaste::pop3::session::Session::new(
            ctx.clone(),
            Box::new(server),
            CLIENT.parse().unwrap(),
            false,
        );
        tokio::spawn(s.run());
        Client { io: BufReader::new(Box::new(client)) }
    }
    async fn send(&mut self, line: &str) {
        self.io.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    }
    /// One line, or "" at EOF.
    async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut l))
            .await
            .expect("reply in time")
            .unwrap();
        l.trim_end().to_owned()
    }
    /// One SMTP reply (the last line of a multi-line one).
    async fn reply(&mut self) -> String {
        loop {
            let l = self.line().await;
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return l;
            }
        }
    }
    async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }
}

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

fn client_ip() -> std::net::IpAddr {
    CLIENT.parse::<std::net::SocketAddr>().unwrap().ip()
}

#[tokio::test]
async fn smtp_auth_failures_ban_and_close_the_session() {
    let env = env(|c| c.guard.auth_failures = 3).await;
    let ctx = env.smtp();
    let mut c = Client::smtp(&ctx, Profile::Submissions);
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO client.example").await.starts_with("250"));
    for _ in 0..2 {
        assert!(c
            .cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", "wrong")))
            .await
            .starts_with("535 5.7.8"));
    }
    assert_eq!(ctx.guard.check(client_ip()), Verdict::Allow);
    assert!(c
        .cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", "wrong")))
        .await
        .starts_with("535 5.7.8"));
    // The third failure bans: 421 and the connection ends.
    assert!(c.reply().await.starts_with("421 4.7.0"));
    assert_eq!(c.line().await, "");
    assert!(ctx.guard.check(client_ip()).is_banned());
}

#[tokio::test]
async fn smtp_unknown_recipients_and_protocol_errors_ban() {
    let env = env(|c| {
        c.guard.unknown_recipients = 3;
        c.guard.protocol_errors = 3;
    })
    .await;
    let ctx = env.smtp();
    let mut c = Client::smtp(&ctx, Profile::Mx);
    c.reply().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<x@remote.example>").await;
    for n in ["nobody1", "nobody2"] {
        assert!(c.cmd(&format!("RCPT TO:<{n}@example.test>")).await.starts_with("550 5.1.1"));
    }
    assert!(c.cmd("RCPT TO:<alice@example.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<nobody3@example.test>").await.starts_with("550 5.1.1"));
    assert!(c.reply().await.starts_with("421"));
    assert!(ctx.guard.check(client_ip()).is_banned());

    // Syntax errors count separately (a fresh context: a fresh in-memory guard).
    let ctx = env.smtp();
    let mut c = Client::smtp(&ctx, Profile::Mx);
    c.reply().await;
    for _ in 0..2 {
        assert!(c.cmd("FOO bar").await.starts_with("5"));
    }
    assert_eq!(ctx.guard.check(client_ip()), Verdict::Allow);
    assert!(c.cmd("FOO bar").await.starts_with("5"));
    assert!(c.reply().await.starts_with("421"));
    assert!(ctx.guard.check(client_ip()).is_banned());
}

async fn submit(c: &mut Client, rcpts: &[&str]) -> Vec<String> {
    let mut replies = vec![c.cmd("MAIL FROM:<alice@example.test>").await];
    if !replies[0].starts_with("250") {
        return replies;
    }
    for r in rcpts {
        replies.push(c.cmd(&format!("RCPT TO:<{r}>")).await);
    }
    replies.push(c.cmd("DATA").await);
    c.send("From: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n.").await;
    replies.push(c.reply().await);
    replies
}

#[tokio::test]
async fn submission_limits_per_user_and_hour() {
    let env = env(|c| {
        c.guard.messages_per_hour = 2;
        c.guard.recipients_per_hour = 3;
    })
    .await;
    let ctx = env.smtp();
    let mut c = Client::smtp(&ctx, Profile::Submission);
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert!(c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD))).await.starts_with("235"));
    let r = submit(&mut c, &["bob@example.test", "alice@example.test"]).await;
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    // Third recipient of the hour is fine, the fourth is refused with 452 4.5.3.
    let r = submit(&mut c, &["bob@example.test", "x@remote.example"]).await;
    assert!(r[1].starts_with("250") && r[2].starts_with("452 4.5.3"), "{r:?}");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    // Two messages sent: the third MAIL is refused with 451 4.7.1.
    let r = submit(&mut c, &["bob@example.test"]).await;
    assert!(r[0].starts_with("451 4.7.1"), "{r:?}");
    // Limits are per user, not per client, and do not ban.
    assert_eq!(ctx.guard.check(client_ip()), Verdict::Allow);
    assert!(ctx.guard.may_send_message("bob@example.test").is_ok());
}

#[tokio::test]
async fn pop3_login_failures_and_protocol_errors_ban() {
    let env = env(|c| {
        c.guard.auth_failures = 3;
        c.guard.protocol_errors = 3;
    })
    .await;
    let ctx = env.pop3();
    let mut c = Client::pop3(&ctx);
    assert!(c.line().await.starts_with("+OK"));
    for i in 0..3 {
        c.send("USER alice@example.test").await;
        assert!(c.line().await.starts_with("+OK"));
        c.send("PASS wrong").await;
        assert!(c.line().await.starts_with("-ERR [AUTH]"), "attempt {i}");
    }
    assert_eq!(c.line().await, "", "the session ends at the ban");
    assert!(ctx.guard.check(client_ip()).is_banned());

    let ctx = env.pop3();
    let mut c = Client::pop3(&ctx);
    c.line().await;
    for _ in 0..3 {
        c.send("BOGUS").await;
        assert!(c.line().await.starts_with("-ERR"));
    }
    assert_eq!(c.line().await, "");
    assert!(ctx.guard.check(client_ip()).is_banned());
}

// ---- the binary, clients in another network namespace ------------------------------------
//
// Loopback is never banned, so the clients need addresses of their own: the server runs in
// one namespace and the clients in another, joined by a veth pair (see NetnsPair).

/// Connects from `src` and reports what happened: `greeting:<first line>`, `closed` (the
/// server hung up without a word), `timeout` (no answer to SYN), `refused`, `silent`.
const PROBE: &str = r#"
import socket, sys
src, dst, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ':' in dst else socket.AF_INET)
if src:
    s.bind((src, 0))
s.settimeout(timeout)
try:
    s.connect((dst, port))
except socket.timeout:
    print("timeout"); sys.exit()
except ConnectionRefusedError:
    print("refused"); sys.exit()
try:
    d = s.recv(512)
except socket.timeout:
    print("silent"); sys.exit()
except ConnectionResetError:
    print("closed"); sys.exit()
print("greeting:" + d.decode(errors="replace").splitlines()[0] if d else "closed")
"#;

/// `smtp SRC HOST PORT N`: N failed AUTH PLAIN over implicit TLS; `pop3 SRC HOST PORT N`:
/// N failed USER/PASS. Prints each reply code (or `closed`).
const FAIL: &str = r#"
import socket, ssl, smtplib, sys, base64
mode, src, host, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if mode == "smtp":
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP_SSL(host, port, source_address=(src, 0), context=ctx, timeout=20)
    s.ehlo("client.example")
    tok = base64.b64encode(b"\0alice@example.test\0wrong").decode()
    for i in range(n):
        try:
            code, _ = s.docmd("AUTH", "PLAIN " + tok)
            print(code)
        except Exception:
            print("closed"); break
else:
    sock = socket.create_connection((host, port), timeout=20, source_address=(src, 0))
    f = sock.makefile("rb")
    print(f.readline().decode().strip())
    for i in range(n):
        sock.sendall(b"USER alice@example.test\r\n"); f.readline()
        sock.sendall(b"PASS wrong\r\n")
        line = f.readline().decode().strip()
        print(line if line else "closed")
"#;

fn py(script: &str, args: &[String], netns: Option<&str>) -> Out {
    let python = require("python3", "python3");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new(require("ip", "iproute2"));
            c.args(["netns", "exec", ns]).arg(&python);
            c
        }
        None => Command::new(&python),
    };
    cmd.arg("-c").arg(script).args(args);
    run(cmd, None)
}

fn probe(src: &str, dst: std::net::SocketAddr, timeout: f64, netns: Option<&str>) -> String {
    let out =
        py(PROBE, &[src.into(), dst.ip().to_string(), dst.port().to_string(), timeout.to_string()], netns);
    assert!(out.success(), "probe failed: {}", out.all());
    out.stdout.trim().to_owned()
}

fn fail_logins(mode: &str, src: &str, dst: std::net::SocketAddr, n: usize, netns: Option<&str>) -> String {
    let args = [mode.into(), src.into(), dst.ip().to_string(), dst.port().to_string(), n.to_string()];
    let out = py(FAIL, &args, netns);
    assert!(out.success(), "{mode} login failures from {src}: {}", out.all());
    out.stdout
}

// ---- nftables inside network namespaces --------------------------------------------------

/// Two network namespaces joined by a veth pair: the server's (10.77.N.1) and the
/// client's (10.77.N.2). Deleted (with the veth pair) on drop.
struct NetnsPair {
    server: String,
    client: String,
    server_ip: String,
    client_ip: String,
}

impl NetnsPair {
    /// `offset` keeps the subnets of tests running at the same time apart.
    fn new(tag: &str, offset: u32) -> NetnsPair {
        require("ip", "iproute2");
        require("nft", "nftables");
        assert!(crate::support::is_root(), "the nftables test creates network namespaces and needs root");
        let n = (std::process::id() + offset) % 250 + 1;
        let p = NetnsPair {
            server: format!("ph-{tag}-{n}-s"),
            client: format!("ph-{tag}-{n}-c"),
            server_ip: format!("10.77.{n}.1"),
            client_ip: format!("10.77.{n}.2"),
        };
        let (s, c) = (p.server.as_str(), p.client.as_str());
        for args in [
            vec!["netns", "add", s],
            vec!["netns", "add", c],
            vec!["-n", s, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", c],
            vec!["-n", s, "addr", "add", &format!("{}/24", p.server_ip), "dev", "veth0"],
            vec!["-n", c, "addr", "add", &format!("{}/24", p.client_ip), "dev", "veth1"],
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
            vec!["-n", s, "link", "set", "veth0", "up"],
            vec!["-n", c, "link", "set", "veth1", "up"],
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(&args);
            let out = run(cmd, None);
            assert!(out.success(), "ip {args:?}: {}", out.all());
        }
        p
    }

    /// One more address (10.77.N.`host`) for the client end; returns it.
    fn add_client_ip(&self, host: u8) -> String {
        let ip = format!("{}.{host}", self.client_ip.rsplit_once('.').unwrap().0);
        let out = run(
            {
                let mut c = Command::new("ip");
                c.args(["-n", &self.client, "addr", "add", &format!("{ip}/24"), "dev", "veth1"]);
                c
            },
            None,
        );
        assert!(out.success(), "ip addr add {ip}: {}", out.all());
        ip
    }

    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Out {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        run(cmd, None)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `posthaste serve` inside the server namespace; returns once it logged `started`.
fn start_in(net: &NetnsPair, p: &Posthaste) -> ProcessGuard {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.server, crate::support::posthaste::bin(), "--config"])
        .arg(p.config_path())
        .arg("serve");
    cmd.env_remove("POSTHASTE_CONFIG");
    let started = |p: &Posthaste| p.log_lines().iter().filter(|v| v["event"] == "started").count();
    let before = started(p);
    let mut g = ProcessGuard::spawn("posthaste serve (netns)", cmd, p.log_path());
    let t = Instant::now();
    while started(p) == before {
        assert!(g.is_running(), "posthaste exited in the netns:\n{}", p.log_tail(30));
        assert!(t.elapsed() < Duration::from_secs(20), "no start in the netns:\n{}", p.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    g
}

/// `posthaste --config FILE ARGS` inside the server namespace (where its nftables live).
fn cli_in(net: &NetnsPair, p: &Posthaste, args: &[&str]) -> Out {
    let mut full = vec!["--config", p.config_path().to_str().unwrap()];
    full.extend_from_slice(args);
    net.exec(&net.server, crate::support::posthaste::bin(), &full)
}

fn ban_json(net: &NetnsPair, p: &Posthaste) -> Vec<serde_json::Value> {
    let out = cli_in(net, p, &["ban", "list", "--json"]);
    assert!(out.success(), "ban list --json: {}", out.all());
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .expect("ban list --json")
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn binary_bans_across_smtp_and_pop3_allow_list_expiry_cli_and_restart() {
    let net = NetnsPair::new("e2e", 0);
    // Three client addresses in the client namespace.
    let bad = net.client_ip.clone();
    let good = net.add_client_ip(3);
    let allowed = net.add_client_ip(4);
    let dir = TestDir::new("guard-e2e");
    let ip = &net.server_ip;
    let (smtp, smtps, pop3) = (
        format!("{ip}:25").parse().unwrap(),
        format!("{ip}:465").parse().unwrap(),
        format!("{ip}:110").parse().unwrap(),
    );
    let p = Posthaste::builder(&dir)
        .set("listen.smtp", vec![format!("{smtp}")])
        .set("listen.submissions", vec![format!("{smtps}")])
        .set("listen.pop3", vec![format!("{pop3}")])
        .remove("listen.submission")
        .set("pop3.allow_plaintext_auth", true)
        .set("pop3.auth_failure_delay", "0s")
        .set("guard.allow", vec![format!("{allowed}/32")])
        .set("guard.auth_failures", 4i64)
        .set("guard.ban_time", "10s")
        .build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PASSWORD);
    let mut daemon = start_in(&net, &p);
    let c = Some(net.client.as_str());

    // Two failures over SMTP AUTH and two over POP3 make four: banned.
    let s = fail_logins("smtp", &bad, smtps, 2, c);
    assert_eq!(s.split_whitespace().collect::<Vec<_>>(), ["535", "535"], "{s}");
    assert!(probe(&bad, smtp, 5.0, c).starts_with("greeting:220"));
    let s = fail_logins("pop3", &bad, pop3, 2, c);
    assert!(s.lines().nth(2).unwrap().starts_with("-ERR [AUTH]"), "{s}");
    // Refused at connect, on every listener, without a greeting (nftables is off here:
    // the daemon closes the connection).
    assert_eq!(probe(&bad, smtp, 5.0, c), "closed");
    assert_eq!(probe(&bad, pop3, 5.0, c), "closed");
    // Listed at once (before the steps below, which on a loaded machine can outlast the
    // 10 s ban).
    let ban = p.wait_for_log(|v| v["event"] == "ban" && v["client"] == bad.as_str(), Duration::from_secs(5));
    assert!(ban["reason"].as_str().unwrap().contains("auth failures"), "{ban}");
    assert!(ban["until"].as_str().unwrap().ends_with('Z'), "{ban}");
    let list = ban_json(&net, &p);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["client"], bad.as_str());
    // Other clients are served; an allow-listed one is never banned.
    assert!(probe(&good, smtp, 5.0, c).starts_with("greeting:220"));
    fail_logins("pop3", &allowed, pop3, 6, c);
    assert!(probe(&allowed, pop3, 5.0, c).starts_with("greeting:+OK"));

    // The ban expires (ban_time 10s).
    let start = Instant::now();
    while probe(&bad, smtp, 5.0, c) == "closed" {
        assert!(start.elapsed() < Duration::from_secs(30), "the ban did not expire");
        std::thread::sleep(Duration::from_millis(500));
    }
    let unban =
        p.wait_for_log(|v| v["event"] == "unban" && v["client"] == bad.as_str(), Duration::from_secs(10));
    assert_eq!(unban["reason"], "expired");
    assert!(ban_json(&net, &p).is_empty());

    // `posthaste ban add` from another process: the daemon notices without a signal.
    let out = cli_in(&net, &p, &["ban", "add", &bad, "--duration", "1h", "--reason", "manual test"]);
    assert!(out.success() && out.stdout.contains("banned"), "{}", out.all());
    assert_eq!(probe(&bad, pop3, 5.0, c), "closed");
    let list = ban_json(&net, &p);
    assert_eq!(list[0]["reason"], "manual test");
    let left = list[0]["remaining_seconds"].as_u64().unwrap();
    assert!((3500..=3600).contains(&left), "{left}");
    assert_eq!(list[0]["offence"], 2, "a repeat offender");
    for never in [allowed.as_str(), "127.0.0.1"] {
        let refused = cli_in(&net, &p, &["ban", "add", never]);
        assert!(!refused.success() && refused.stderr.contains("never banned"), "{}", refused.all());
    }

    // Persisted: still banned after a restart.
    daemon.terminate(Duration::from_secs(10));
    let _daemon = start_in(&net, &p);
    assert_eq!(probe(&bad, smtp, 5.0, c), "closed");
    assert_eq!(ban_json(&net, &p).len(), 1);

    let out = cli_in(&net, &p, &["ban", "remove", &bad]);
    assert!(out.success() && out.stdout.contains("lifted"), "{}", out.all());
    assert!(probe(&bad, smtp, 5.0, c).starts_with("greeting:220"));
    assert!(ban_json(&net, &p).is_empty());
    assert!(!cli_in(&net, &p, &["ban", "remove", &bad]).success());
    let unban = p.wait_for_log(
        |v| v["event"] == "unban" && v["client"] == bad.as_str() && v["reason"] != "expired",
        Duration::from_secs(10),
    );
    assert!(unban["reason"].as_str().unwrap().contains("administrator"), "{unban}");
}

/// The elements of `set` in our table inside `ns`, as (address, timeout seconds).
fn nft_elements(net: &NetnsPair, set: &str) -> Vec<(String, Option<u64>)> {
    let out = net.exec(&net.server, "nft", &["-j", "list", "set", "inet", "posthaste", set]);
    assert!(out.success(), "nft -j list set: {}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut found = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            match e {
                serde_json::Value::String(a) => found.push((a.clone(), None)),
                other => found.push((
                    other["elem"]["val"].as_str().unwrap_or("").to_owned(),
                    other["elem"]["timeout"].as_u64(),
                )),
            }
        }
    }
    found
}

fn host_has_our_table() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", "posthaste"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn nftables_drops_banned_clients_in_a_namespace() {
    let host_table_before = {
        require("nft", "nftables");
        host_has_our_table()
    };
    let net = NetnsPair::new("nft", 1);
    let dir = TestDir::new("guard-nft");
    let smtp: std::net::SocketAddr = format!("{}:25", net.server_ip).parse().unwrap();
    let pop3: std::net::SocketAddr = format!("{}:110", net.server_ip).parse().unwrap();
    let p = Posthaste::builder(&dir)
        .set("listen.smtp", vec![smtp.to_string()])
        .set("listen.pop3", vec![pop3.to_string()])
        .remove("listen.submission")
        .remove("listen.submissions")
        .set("pop3.allow_plaintext_auth", true)
        .set("pop3.auth_failure_delay", "0s")
        .set("guard.nftables", true)
        .set("guard.auth_failures", 3i64)
        .build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PASSWORD);
    let ban_cli = |args: &[&str]| {
        let out = cli_in(&net, &p, args);
        assert!(out.success(), "posthaste {args:?}: {}", out.all());
        out
    };
    let client = Some(net.client.as_str());
    let mut daemon = start_in(&net, &p);
    assert!(probe("", pop3, 5.0, client).starts_with("greeting:+OK"));

    // The daemon bans after three failed logins and adds the client to the kernel set.
    fail_logins("pop3", &net.client_ip, pop3, 3, client);
    let t = Instant::now();
    while !nft_elements(&net, "banned4").iter().any(|(a, _)| *a == net.client_ip) {
        assert!(t.elapsed() < Duration::from_secs(10), "no nftables element:\n{}", p.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kernel drops the SYN: the connect times out (the daemon would close, not time out).
    assert_eq!(probe("", smtp, 3.0, client), "timeout");
    assert_eq!(probe("", pop3, 3.0, client), "timeout");

    ban_cli(&["ban", "remove", &net.client_ip]);
    assert!(nft_elements(&net, "banned4").is_empty());
    assert!(probe("", smtp, 5.0, client).starts_with("greeting:220"));

    // `posthaste ban add` puts it in the set with a timeout.
    ban_cli(&["ban", "add", &net.client_ip, "--duration", "1h"]);
    let elems = nft_elements(&net, "banned4");
    assert_eq!(elems.len(), 1, "{elems:?}");
    assert_eq!(elems[0].0, net.client_ip);
    assert_eq!(elems[0].1, Some(3600), "{elems:?}");
    assert_eq!(probe("", smtp, 3.0, client), "timeout");

    // A restart rebuilds the table from the ban file.
    daemon.terminate(Duration::from_secs(10));
    assert!(net.exec(&net.server, "nft", &["delete", "table", "inet", "posthaste"]).success());
    // With the daemon down and our table gone, the CLI creates the table itself.
    let other = format!("{}.9", net.server_ip.rsplit_once('.').unwrap().0);
    ban_cli(&["ban", "add", &other, "--duration", "30m"]);
    assert!(nft_elements(&net, "banned4").iter().any(|(a, t)| *a == other && *t == Some(1800)));
    let _daemon = start_in(&net, &p);
    let elems = nft_elements(&net, "banned4");
    assert!(elems.iter().any(|(a, t)| *a == net.client_ip && t.is_some_and(|t| t > 3500)), "{elems:?}");
    assert!(elems.iter().any(|(a, _)| *a == other), "{elems:?}");
    assert_eq!(probe("", pop3, 3.0, client), "timeout");
    ban_cli(&["ban", "remove", &net.client_ip]);
    assert!(probe("", pop3, 5.0, client).starts_with("greeting:+OK"));

    assert_eq!(host_has_our_table(), host_table_before, "the host's ruleset must not change");
}

/// `serve` started as root drops to the `posthaste` user but keeps CAP_NET_ADMIN for the
/// guard: a ban it makes afterwards still reaches the kernel set.
#[test]
fn unprivileged_daemon_still_adds_bans_to_nftables() {
    let net = NetnsPair::new("caps", 2);
    let user = "posthaste";
    if !Command::new("id").arg(user).output().unwrap().status.success() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
            .output()
            .unwrap();
        // Another test binary may have created it at the same moment.
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists"));
    }
    let dir = TestDir::new("guard-caps");
    let smtp: std::net::SocketAddr = format!("{}:25", net.server_ip).parse().unwrap();
    let p = Posthaste::builder(&dir)
        .set("listen.smtp", vec![smtp.to_string()])
        .remove("listen.submission")
        .remove("listen.submissions")
        .set("server.user", user)
        .set("guard.nftables", true)
        .set("guard.connections", 2i64)
        .build();
    let out = run(
        {
            let mut c = Command::new("chown");
            c.args(["-R", &format!("{user}:"), &p.data_dir().display().to_string()]);
            c
        },
        None,
    );
    assert!(out.success(), "chown: {}", out.all());
    let _daemon = start_in(&net, &p);
    p.wait_for_log(|v| v["message"] == "dropped root privileges", Duration::from_secs(5));
    let c = Some(net.client.as_str());
    assert!(probe("", smtp, 5.0, c).starts_with("greeting:220"));
    // The second connection within the minute is a flood (connections = 2).
    assert_eq!(probe("", smtp, 5.0, c), "closed");
    let t = Instant::now();
    while !nft_elements(&net, "banned4").iter().any(|(a, _)| *a == net.client_ip) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the unprivileged daemon did not reach nftables:\n{}",
            p.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(probe("", smtp, 3.0, c), "timeout");
    assert!(!p
        .log_lines()
        .iter()
        .any(|v| v["message"].as_str().is_some_and(|m| m.contains("cannot add the ban"))));
}
