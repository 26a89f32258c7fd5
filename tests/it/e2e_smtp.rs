//! The posthaste binary end to end: `serve` as a daemon, real clients (swaks, Python
//! smtplib), dnsmasq for MX records, Postfix as the remote MX, both directory backends.
//! Where DNS only routes mail to the peer, the in-process double (`posthaste::dns::Zone`,
//! served on a loopback port) stands in for dnsmasq.

use std::time::Duration;

use ::posthaste::dns::Zone;

use crate::support::posthaste::HOSTNAME;
use crate::support::*;

const T: Duration = Duration::from_secs(30);
const PW: &str = "Secret-Passw0rd!";

/// A running server with example.test, alice and bob.
fn server_with(dir: &TestDir, tweak: impl FnOnce(PosthasteBuilder) -> PosthasteBuilder) -> Posthaste {
    let mut p = tweak(Posthaste::builder(dir)).build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.add_user("bob@example.test", PW);
    p.start();
    p
}

/// DNS for remote.test whose MX is `mx` (a Postfix peer or nothing at all).
fn remote_dns(dir: &TestDir, mx: std::net::SocketAddr) -> Dnsmasq {
    Dnsmasq::start(
        dir,
        &[DnsRecord::mx("remote.test", "mx.remote.test", 10), DnsRecord::a("mx.remote.test", mx.ip())],
    )
}

/// The same records from the in-process double, for tests where DNS is not under test.
fn remote_zone(mx: std::net::SocketAddr) -> Zone {
    let zone = Zone::new();
    zone.add_mx("remote.test", 10, "mx.remote.test").add_addr("mx.remote.test", mx.ip());
    zone
}

/// `[dns] nameservers` = the zone's loopback server.
fn zone_dns<'a>(b: PosthasteBuilder<'a>, zone: &Zone) -> PosthasteBuilder<'a> {
    b.set("dns.nameservers", vec![zone.nameserver().unwrap().to_string()])
}

fn submit(p: &Posthaste, to: &str) -> SmtpTranscript {
    SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", PW)
        .from("alice@example.test")
        .to(to)
        .subject("outbound test")
        .send()
}

#[test]
fn swaks_through_submission_with_starttls_and_auth() {
    let dir = TestDir::new("swaks-submission");
    let p = server_with(&dir, |b| b);
    let sub = p.submission().to_string();
    let ca = p.ca().display().to_string();
    let out = swaks(&[
        "--server",
        &sub,
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        &ca,
        "--tls-sni",
        HOSTNAME,
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@example.test",
        "--auth-password",
        PW,
        "--from",
        "alice@example.test",
        "--to",
        "bob@example.test",
        "--header",
        "From: alice@example.test",
        "--header",
        "Subject: via swaks",
    ]);
    assert!(out.success(), "swaks failed:\n{}", out.all());
    let msg = p.wait_for_maildir_message("bob@example.test", T);
    let msg = String::from_utf8_lossy(&msg);
    assert!(msg.contains("with ESMTPSA") && msg.contains("Subject: via swaks"), "{msg}");
}

#[test]
fn python_smtplib_over_implicit_tls() {
    let dir = TestDir::new("smtplib-465");
    let p = server_with(&dir, |b| b);
    let t = SmtpClient::new(p.submissions())
        .implicit_tls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", PW)
        .from("alice@example.test")
        .to("bob@example.test")
        .send();
    assert!(t.accepted(), "{}", t.raw);
    assert!(t.tls.is_some());
    p.wait_for_maildir_message("bob@example.test", T);
}

#[test]
fn mx_delivers_locally_and_refuses_unknown_users_and_relaying() {
    let dir = TestDir::new("mx-policy");
    let p = server_with(&dir, |b| b);
    let t = SmtpClient::new(p.smtp())
        .from("someone@remote.test")
        .to("alice@example.test")
        .to("nobody@example.test")
        .to("victim@remote.test")
        .send();
    assert_eq!(t.rcpt_code("alice@example.test"), Some(250), "{}", t.raw);
    assert_eq!(t.rcpt_code("nobody@example.test"), Some(550), "{}", t.raw);
    assert_eq!(t.rcpt_code("victim@remote.test"), Some(554), "{}", t.raw);
    assert!(t.accepted());
    p.wait_for_maildir_message("alice@example.test", T);

    // The classic relay tricks, written by swaks exactly as given.
    let mx = p.smtp().to_string();
    for trick in [
        "victim%remote.test@example.test",
        "@example.test:victim@remote.test",
        "remote.test!victim@example.test",
        "\"victim@remote.test\"@example.test",
    ] {
        let out = swaks(&["--server", &mx, "--from", "a@remote.test", "--to", trick, "--quit-after", "RCPT"]);
        assert!(out.all().contains("554 5.7.1"), "{trick} was not refused:\n{}", out.all());
    }
    // No AUTH on the MX port, even after STARTTLS.
    let t = SmtpClient::new(p.smtp())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .from("a@remote.test")
        .to("bob@example.test")
        .send();
    assert!(!t.last("ehlo").unwrap().text.contains("AUTH"), "{}", t.raw);
    assert!(t.accepted());
}

#[test]
fn wrong_password_and_auth_before_tls_are_refused() {
    let dir = TestDir::new("auth-refusals");
    let p = server_with(&dir, |b| b);
    let t = SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", "not the password")
        .from("alice@example.test")
        .to("bob@example.test")
        .send();
    assert_eq!(t.code("auth"), 535, "{}", t.raw);
    assert!(!t.accepted());
    let failure = p.wait_for_log(|l| l["event"] == "auth_failure", T);
    assert_eq!(failure["client"], "127.0.0.1");
    assert_eq!(failure["protocol"], "smtp");
    assert!(!std::fs::read_to_string(p.log_path()).unwrap().contains("not the password"), "password logged");

    // A client that tries AUTH in clear text: not offered, and refused when tried anyway.
    let script = r#"
import smtplib, sys, base64
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))
code, ehlo = s.ehlo("client.test")
print("ehlo-has-auth", b"AUTH" in ehlo)
print("auth", s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice@example.test\0" + sys.argv[3].encode()).decode()))
print("mail", s.docmd("MAIL", "FROM:<alice@example.test>"))
"#;
    let port = p.submission().port().to_string();
    let out = python(script, &["127.0.0.1", &port, PW]);
    let stdout = out.stdout.clone();
    assert!(stdout.contains("ehlo-has-auth False"), "{stdout}");
    assert!(stdout.contains("auth (538, b'5.7.11"), "{stdout}");
    assert!(stdout.contains("mail (530, b'5.7.0"), "{stdout}");
}

#[test]
fn oversize_message_gets_552() {
    let dir = TestDir::new("oversize");
    let p = server_with(&dir, |b| b.set("smtp.max_message_size", 10_000i64));
    let body = "0123456789abcdef\n".repeat(2000);
    // smtplib declares SIZE= itself, so the refusal comes at MAIL (RFC 1870 §6.2).
    let t = SmtpClient::new(p.smtp()).from("a@remote.test").to("alice@example.test").body(&body).send();
    assert!(t.replies.iter().any(|r| r.code == 552 && r.text.contains("5.3.4")), "{}", t.raw);
    // swaks does not declare the size: the refusal comes after the data.
    let mx = p.smtp().to_string();
    let out =
        swaks(&["--server", &mx, "--from", "a@remote.test", "--to", "alice@example.test", "--body", &body]);
    assert!(out.all().contains("552 5.3.4"), "{}", out.all());
    assert!(p.maildir_messages("alice@example.test").is_empty());
}

#[test]
fn outbound_to_a_remote_mx_found_in_dns() {
    let dir = TestDir::new("outbound");
    let mx = remote_mx_addr();
    let dns = remote_dns(&dir, mx);
    let peer = PostfixPeer::builder(mx).domain("remote.test").start(&dir);
    let p = server_with(&dir, |b| b.dns(&dns));
    let t = submit(&p, "carol@remote.test");
    assert!(t.accepted(), "{}", t.raw);
    let got = peer.wait_for_message(|m| m.recipient == "carol@remote.test", T);
    assert!(got.return_path.contains("alice@example.test"), "{}", got.return_path);
    // One message traced through the log: accepted with a queue id, delivered under it.
    let tx = p.wait_for_log(|l| l["event"] == "smtp_transaction" && l["result"] == "accepted", T);
    let queue_id = tx["queue_id"].as_str().unwrap().to_owned();
    let message_id = tx["message_id"].as_str().unwrap().to_owned();
    assert!(!message_id.is_empty(), "submission adds a Message-ID: {tx}");
    let delivery = p.wait_for_log(|l| l["queue_id"] == queue_id.as_str() && l["status"] == "delivered", T);
    assert_eq!(delivery["message_id"], message_id.as_str());
    assert_eq!(delivery["rcpt"], "carol@remote.test");
    let queue = p.cmd_ok(&["queue", "list", "--json"]);
    assert_eq!(queue.stdout.trim(), "[]", "delivered mail must leave the queue");
}

#[test]
fn remote_down_then_up_is_retried_and_delivered() {
    let dir = TestDir::new("retry");
    let mx = remote_mx_addr();
    let zone = remote_zone(mx);
    let p = server_with(&dir, |b| zone_dns(b, &zone));
    assert!(submit(&p, "carol@remote.test").accepted());
    p.wait_for_log(|l| l["status"] == "deferred" && l["rcpt"] == "carol@remote.test", T);
    let listed = p.cmd_ok(&["queue", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["recipients"][0]["status"], "deferred", "{entries}");
    let peer = PostfixPeer::builder(mx).domain("remote.test").start(&dir);
    p.cmd_ok(&["queue", "flush"]);
    peer.wait_for_message(|m| m.recipient == "carol@remote.test", T);
}

#[test]
fn permanent_remote_failure_bounces_to_the_sender() {
    let dir = TestDir::new("dsn");
    let mx = remote_mx_addr();
    let zone = remote_zone(mx);
    let _peer = PostfixPeer::builder(mx).domain("remote.test").reject("rejectme@remote.test").start(&dir);
    let p = server_with(&dir, |b| zone_dns(b, &zone));
    assert!(submit(&p, "rejectme@remote.test").accepted());
    let dsn = String::from_utf8_lossy(&p.wait_for_maildir_message("alice@example.test", T)).into_owned();
    assert!(dsn.contains("Return-Path: <>"), "a DSN has the null sender: {dsn}");
    assert!(dsn.contains("multipart/report") && dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; rejectme@remote.test"), "{dsn}");
    assert!(dsn.contains("Action: failed") && dsn.contains("Status: 5."), "{dsn}");
    assert!(dsn.contains("Subject: outbound test"), "original headers are returned: {dsn}");
}

#[test]
fn kill_9_after_250_loses_nothing() {
    let dir = TestDir::new("kill9");
    let mx = remote_mx_addr();
    let zone = remote_zone(mx);
    let mut p = server_with(&dir, |b| {
        zone_dns(b, &zone).set("queue.retry_initial", "1h").set("queue.retry_max", "4h")
    });
    assert!(submit(&p, "carol@remote.test").accepted());
    // Local mail right after: acknowledged means on disk, even if we die now.
    let t = SmtpClient::new(p.smtp()).from("x@remote.test").to("bob@example.test").send();
    assert!(t.accepted());
    p.kill9();
    assert_eq!(p.maildir_messages("bob@example.test").len(), 1);
    let peer = PostfixPeer::builder(mx).domain("remote.test").start(&dir);
    // The first attempt failed (nothing listened) and the next is an hour away: only the
    // restart's recovery and a flush can deliver it now.
    p.start();
    p.cmd_ok(&["queue", "flush"]);
    peer.wait_for_message(|m| m.recipient == "carol@remote.test", T);
}

#[test]
fn postgresql_directory_backend_end_to_end() {
    let dir = TestDir::new("postgres-e2e");
    let url = crate::support::postgres::postgres_url_for_new_db();
    let p = server_with(&dir, |b| b.directory_url(&url));
    let t = SmtpClient::new(p.smtp())
        .from("x@remote.test")
        .to("alice@example.test")
        .to("nobody@example.test")
        .send();
    assert_eq!(t.rcpt_code("nobody@example.test"), Some(550));
    assert!(t.accepted());
    p.wait_for_maildir_message("alice@example.test", T);
    let t = SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("bob@example.test", PW)
        .from("bob@example.test")
        .to("alice@example.test")
        .send();
    assert!(t.accepted(), "{}", t.raw);
    p.wait_for_maildir_count("alice@example.test", 2, T);
    assert!(!dir.join("data/directory.db").exists(), "the SQLite file must not be used");
}

#[test]
fn serve_drops_root_privileges() {
    let dir = TestDir::new("privdrop");
    let user = "posthaste";
    if !std::process::Command::new("id").arg(user).output().unwrap().status.success() {
        let out = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
            .output()
            .unwrap();
        // Another test binary may have created it at the same moment.
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists"));
    }
    let mut p = Posthaste::builder(&dir).set("server.user", user).build();
    let data = p.data_dir();
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{user}:"), &data.display().to_string()])
        .status();
    assert!(chown.unwrap().success());
    // Admin commands run as root act as the data directory's owner.
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    // A root-only password file is read before the command becomes the data owner.
    let pwfile = dir.join("bob.pass");
    std::fs::write(&pwfile, format!("{PW}\n")).unwrap();
    std::fs::set_permissions(&pwfile, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p.cmd_ok(&["user", "add", "bob@example.test", "--password-file", &pwfile.display().to_string()]);
    p.start();
    // The ports are bound as root; the switch to the server user follows right after.
    p.wait_for_log(|l| l["message"] == "dropped root privileges", T);
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid().unwrap())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.split_whitespace().skip(1).any(|u| u == "0"), "still root: {uid_line}");
    let t = SmtpClient::new(p.smtp()).from("x@remote.test").to("alice@example.test").send();
    assert!(t.accepted(), "{}", t.raw);
    let msg = p.wait_for_maildir_count("alice@example.test", 1, T);
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&msg[0]).unwrap().uid();
    assert_ne!(owner, 0, "mail must belong to the server user");
    let t = SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("bob@example.test", PW)
        .from("bob@example.test")
        .to("alice@example.test")
        .send();
    assert!(t.accepted(), "{}", t.raw);
}

#[test]
fn connections_per_ip_are_limited() {
    let dir = TestDir::new("conn-limit");
    let p = server_with(&dir, |b| b.set("smtp.max_connections_per_ip", 2i64));
    use std::io::{BufRead, BufReader};
    let greet = |s: &std::net::TcpStream| {
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
        line
    };
    // The harness's readiness probes may still hold a slot for a moment after start().
    let (a, _b) = wait_for("two connections greeted with 220", T, || {
        let a = std::net::TcpStream::connect(p.smtp()).ok()?;
        let b = std::net::TcpStream::connect(p.smtp()).ok()?;
        (greet(&a).starts_with("220") && greet(&b).starts_with("220")).then_some((a, b))
    });
    let c = std::net::TcpStream::connect(p.smtp()).unwrap();
    let refused = greet(&c);
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    drop(a);
    // The slot is released when a session ends.
    let ok = wait_for("a free connection slot", T, || {
        let d = std::net::TcpStream::connect(p.smtp()).ok()?;
        let l = greet(&d);
        l.starts_with("220").then_some(l)
    });
    assert!(ok.starts_with("220"));
}

/// The fake end-of-data sequences a smuggling scanner tries (src/smtp/data.rs), with
/// whether the message is accepted (bare LFs only: normalised) or refused (bare CR, NUL).
const SMUGGLING: &[(&str, &str, bool)] = &[
    ("LF.LF", "0a2e0a", true),
    ("LF.CRLF", "0a2e0d0a", true),
    ("CRLF.LF", "0d0a2e0a", true),
    ("CR.CR", "0d2e0d", false),
    ("CR.CRLF", "0d2e0d0a", false),
    ("CRLF.CR", "0d0a2e0d", false),
    ("CRLF NUL.CRLF", "0d0a002e0d0a", false),
    ("CRCRLF.CRCRLF", "0d0d0a2e0d0d0a", false),
];

fn smuggle(
    p: &Posthaste,
    port: std::net::SocketAddr,
    extra: &[&str],
    to: &str,
    smuggled_to: &str,
    seq: &str,
) -> Vec<String> {
    let host = port.ip().to_string();
    let port_s = port.port().to_string();
    let ca = p.ca().display().to_string();
    let mut args = vec![
        "--host",
        &host,
        "--port",
        &port_s,
        "--cafile",
        &ca,
        "--tls-name",
        HOSTNAME,
        "--to",
        to,
        "--smuggled-to",
        smuggled_to,
        "--seq",
        seq,
    ];
    args.extend_from_slice(extra);
    let out = python("smtp_smuggle.py", &args);
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|_| panic!("{}", out.all()));
    assert!(v["error"].is_null(), "{seq}: {v}");
    v["data_replies"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect()
}

#[test]
fn smtp_smuggling_scan_of_the_mx_and_submissions_ports_finds_nothing() {
    let dir = TestDir::new("smuggling");
    let mx = remote_mx_addr();
    let dns = remote_dns(&dir, mx);
    let peer = RawPeer::start(mx);
    let p = server_with(&dir, |b| b.dns(&dns));
    let mut relayed = 0;
    for &(name, seq, accepted) in SMUGGLING {
        let want = if accepted { "250" } else { "554 5.6.0" };
        // Inbound on the MX: a forged second message to bob must never be delivered.
        let replies = smuggle(
            &p,
            p.smtp(),
            &["--from", "someone@remote.test"],
            "alice@example.test",
            "bob@example.test",
            seq,
        );
        assert_eq!(replies.len(), 2, "{name} on the MX: {replies:?}");
        assert!(
            replies[0].starts_with(want) && replies[1].starts_with("221"),
            "{name} on the MX: {replies:?}"
        );
        // Submission over implicit TLS (465), relayed to the remote MX.
        let replies = smuggle(
            &p,
            p.submissions(),
            &[
                "--mode",
                "ssl",
                "--user",
                "alice@example.test",
                "--password",
                PW,
                "--from",
                "alice@example.test",
            ],
            "carol@remote.test",
            "dave@remote.test",
            seq,
        );
        assert_eq!(replies.len(), 2, "{name} on submissions: {replies:?}");
        assert!(
            replies[0].starts_with(want) && replies[1].starts_with("221"),
            "{name} on submissions: {replies:?}"
        );
        relayed += accepted as usize;
    }
    for m in maildir_files(&p.maildir("bob@example.test")) {
        let text = std::fs::read_to_string(&m).unwrap();
        assert!(!text.contains("Subject: smuggled"), "a smuggled message was delivered: {text}");
    }
    // Outbound: what reached the next hop has CRLF line ends only, and its one CRLF.CRLF
    // is the end of the data: no receiver can find a second message in it.
    let sessions = wait_for("the relayed messages at the raw peer", T, || {
        let s = peer.sessions();
        (s.iter().map(|s| s.transactions).sum::<usize>() >= relayed).then_some(s)
    });
    assert_eq!(sessions.iter().map(|s| s.transactions).sum::<usize>(), relayed, "{sessions:?}");
    for s in &sessions {
        let raw = &s.bytes;
        let text = String::from_utf8_lossy(raw);
        assert!(s.rcpts.iter().all(|r| r == "RCPT TO:<carol@remote.test>"), "{:?}", s.rcpts);
        for (i, &b) in raw.iter().enumerate() {
            assert!(b != 0, "NUL relayed: {text:?}");
            if b == b'\r' {
                assert_eq!(raw.get(i + 1), Some(&b'\n'), "bare CR relayed: {text:?}");
            }
            if b == b'\n' {
                assert_eq!(raw[i - 1], b'\r', "bare LF relayed: {text:?}");
            }
        }
        let data_start = text.find("\r\nDATA\r\n").expect("DATA") + 8;
        let data = &raw[data_start..];
        let end = data.windows(5).position(|w| w == b"\r\n.\r\n").map(|i| i + 5);
        let after = &data[end.expect("end of data")..];
        assert!(
            after.starts_with(b"QUIT") || after.starts_with(b"RSET") || after.starts_with(b"MAIL"),
            "the data ended before the message did: {text:?}"
        );
        assert!(text.contains("Subject: smuggled"), "the smuggled text travels as content: {text:?}");
    }
}

/// The 40 ms stall on SMTP (src/net/tcp.rs, `Tcp`): a client with Nagle on that writes the body
/// of DATA and then `.` CRLF separately (or a BDAT command and then its chunk) waits for our
/// ACK of the body before the last bytes leave it. Default and TCP_NODELAY clients take
/// turns; their median times differ by the stall (~40 ms) or by nothing.
#[test]
fn default_socket_data_and_bdat_do_not_wait_for_a_delayed_ack() {
    let dir = TestDir::new("smtp-quickack");
    // The MX checks SPF and iprev: a DNS server that answers at once keeps lookups out of
    // the timing (the machine's own resolver may be unreachable).
    let zone = Zone::new();
    let p = server_with(&dir, |b| zone_dns(b, &zone));
    let port = p.smtp().port().to_string();
    for kind in ["smtp", "bdat"] {
        let out = python("literal_stall.py", &[kind, "127.0.0.1", &port, "20", "bob@example.test"]);
        out.assert_success();
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        let (default, nodelay) = (v["default_ms"].as_f64().unwrap(), v["nodelay_ms"].as_f64().unwrap());
        assert!(default - nodelay < 20.0, "{kind}: a default client socket waits for a delayed ACK: {v}");
    }
}
