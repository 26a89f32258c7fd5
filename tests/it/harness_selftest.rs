//! Checks of the test harness itself, against the real components it drives (dnsmasq,
//! smtp-sink, Postfix, swaks, Python). When an interop test fails, these tell whether the
//! harness or posthaste is at fault.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn ports_and_loopback_addresses_are_unique_and_usable() {
    let mut ports = HashSet::new();
    for _ in 0..50 {
        assert!(ports.insert(free_port()), "free_port handed out a port twice");
    }
    let mut ips = HashSet::new();
    for _ in 0..300 {
        let ip = loopback_ip();
        assert!(ip.is_loopback() && ip.octets()[3] != 0 && ip.octets()[3] != 255, "{ip}");
        assert!(ips.insert(ip), "loopback_ip handed out {ip} twice");
    }
    // The kernel must accept a listener on a fresh address and the real SMTP port.
    let addr = remote_mx_addr();
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
    assert!(port_is_open(l.local_addr().unwrap()));
}

#[test]
fn process_guard_kills_the_whole_group() {
    let dir = TestDir::new("guard");
    let mut cmd = std::process::Command::new("sh");
    // A daemon-like child that forks a helper and reports its PID.
    cmd.arg("-c").arg(format!("sleep 600 & echo $! > {}/helper.pid; wait", dir.path().display()));
    let guard = ProcessGuard::spawn("sleeper", cmd, &dir.join("sleeper.log"));
    let pidfile = dir.join("helper.pid");
    let helper: i32 =
        wait_for("helper pid", T, || std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok());
    let leader = guard.pid() as i32;
    assert!(alive(helper) && alive(leader));
    drop(guard);
    wait_for("the forked helper to die", T, || (!alive(helper)).then_some(()));
    assert!(!alive(leader));
}

fn alive(pid: i32) -> bool {
    // Zombies count as dead: PID 1 of a container may never reap them.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn wait_for_port_fails_loudly_with_the_daemon_log() {
    let dir = TestDir::new("waitport");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg("echo 'fatal: cannot bind, the reason is here' >&2; exit 3");
    let mut guard = ProcessGuard::spawn("doomed", cmd, &dir.join("doomed.log"));
    let addr = free_addr();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for_port(addr, Duration::from_secs(5), &mut guard);
    }))
    .expect_err("wait_for_port must fail when the daemon exits");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("the reason is here") && msg.contains("exited"), "{msg}");
}

#[test]
fn dnsmasq_serves_mx_a_txt_and_nxdomain() {
    let dir = TestDir::new("dnsmasq");
    let mx_ip = loopback_ip();
    let long_txt = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
    let mut dns = Dnsmasq::start(
        &dir,
        &[
            DnsRecord::mx("remote.test", "mx.remote.test", 10),
            DnsRecord::a("mx.remote.test", mx_ip),
            DnsRecord::txt("remote.test", "v=spf1 ip4:127.0.0.0/8 -all"),
            DnsRecord::txt("sel._domainkey.remote.test", &long_txt),
        ],
    );
    let mx = dns.query("remote.test", "MX");
    assert_eq!(mx["rcode"], 0, "{mx}");
    assert_eq!(mx["answers"][0]["data"]["exchange"], "mx.remote.test", "{mx}");
    assert_eq!(mx["answers"][0]["data"]["preference"], 10, "{mx}");
    let a = dns.query("mx.remote.test", "A");
    assert_eq!(a["answers"][0]["data"], mx_ip.to_string(), "{a}");
    let txt = dns.query("remote.test", "TXT");
    assert_eq!(txt["answers"][0]["data"], "v=spf1 ip4:127.0.0.0/8 -all", "{txt}");
    // Longer than one 255-byte string: split by the harness, joined by readers.
    let dkim = dns.query("sel._domainkey.remote.test", "TXT");
    assert_eq!(dkim["answers"][0]["data"], long_txt.as_str(), "{dkim}");
    // The reverse record comes with the A record (SMTP servers look up the client).
    let o = mx_ip.octets();
    let ptr = dns.query(&format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]), "PTR");
    assert_eq!(ptr["answers"][0]["data"], "mx.remote.test", "{ptr}");
    // Anything else: NXDOMAIN (rcode 3) at once, never a timeout or the host's resolver.
    assert_eq!(dns.query("nope.remote.test", "A")["rcode"], 3);
    assert_eq!(dns.query("example.com", "MX")["rcode"], 3);

    // Changing records keeps the address (the config of a running server points at it).
    let before = dns.addr;
    dns.set_records(&[DnsRecord::mx("remote.test", "mx2.remote.test", 20)]);
    assert_eq!(dns.addr, before);
    let mx = dns.wait_resolves("remote.test", "MX");
    assert_eq!(mx["answers"][0]["data"]["exchange"], "mx2.remote.test", "{mx}");
}

fn swaks_send(server: SocketAddr, from: &str, to: &str, body: &str) -> Out {
    swaks(&[
        "--server",
        &server.to_string(),
        "--from",
        from,
        "--to",
        to,
        "--body",
        body,
        "--helo",
        "client.test",
    ])
}

#[test]
fn smtp_sink_records_what_it_receives() {
    let dir = TestDir::new("sink");
    let sink = SmtpSink::start(&dir, remote_mx_addr());
    let out = swaks_send(sink.addr, "alice@example.test", "bob@remote.test", "hello sink");
    out.assert_success();
    let msgs = sink.wait_for_messages(1, T);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.mail_from(), "alice@example.test");
    assert_eq!(m.rcpt_to(), vec!["bob@remote.test".to_string()]);
    assert_eq!(m.helo, "client.test");
    let data = m.data_str();
    assert!(data.contains("\nhello sink\n"), "{data}");
    assert!(data.starts_with("Date: ") && !data.contains("X-Rcpt-Args"), "sink headers leaked: {data}");
}

#[test]
fn smtp_sink_hard_and_soft_rejects() {
    let dir = TestDir::new("sink-reject");
    let hard = SmtpSink::builder(remote_mx_addr())
        .hard_reject(&["RCPT"])
        .hard_reply("550 5.1.1 No such user")
        .start(&dir);
    let out = swaks_send(hard.addr, "a@example.test", "b@remote.test", "x");
    assert!(!out.success());
    assert!(out.stdout.contains("<** 550 5.1.1 No such user"), "{}", out.stdout);

    let soft = SmtpSink::builder(remote_mx_addr()).soft_reject(&["MAIL"]).start(&dir);
    let out = swaks_send(soft.addr, "a@example.test", "b@remote.test", "x");
    assert!(!out.success());
    assert!(out.stdout.contains("<** 450 4.3.0"), "{}", out.stdout);

    std::thread::sleep(Duration::from_millis(300));
    assert!(hard.messages().is_empty() && soft.messages().is_empty(), "a rejected transaction was recorded");
}

#[test]
fn postfix_peer_delivers_to_maildir_and_rejects_chosen_recipient() {
    let dir = TestDir::new("postfix-peer");
    let peer = PostfixPeer::builder(remote_mx_addr()).reject("rejectme@remote.test").start(&dir);

    let out = swaks_send(peer.addr, "alice@example.test", "bob@remote.test", "hello postfix");
    out.assert_success();
    let m = peer.wait_for_message(|m| m.recipient == "bob@remote.test", T);
    assert_eq!(m.return_path, "alice@example.test");
    assert!(m.text().contains("hello postfix"));

    let out = swaks_send(peer.addr, "alice@example.test", "rejectme@remote.test", "no");
    assert!(!out.success());
    assert!(out.stdout.contains("<** 550 5.7.1 <rejectme@remote.test>"), "{}", out.stdout);
    assert!(peer.messages_for("rejectme@remote.test").is_empty());
}

#[test]
fn postfix_peer_offers_starttls_to_python_client() {
    let dir = TestDir::new("postfix-tls");
    let smtps = SocketAddr::new(loopback_ip().into(), 465);
    let peer = PostfixPeer::builder(remote_mx_addr()).smtps(smtps).start(&dir);
    let ca = peer.cert().expect("TLS is on by default").ca().to_owned();
    let t = SmtpClient::new(peer.addr)
        .starttls(&ca)
        .tls_name("mx.remote.test")
        .from("alice@example.test")
        .to("carol@remote.test")
        .to("rejectme-not@elsewhere.test")
        .body("over TLS")
        .send();
    assert_eq!(t.error, None, "{}", t.raw);
    assert_eq!(t.code("connect"), 220);
    assert_eq!(t.code("starttls"), 220);
    assert!(t.tls.is_some(), "{}", t.raw);
    assert_eq!(t.rcpt_code("carol@remote.test"), Some(250));
    // Not a domain of this peer and no relay: Postfix refuses to relay (RFC 5321 §3.6.2 /
    // reject_unauth_destination) — unless the client is in mynetworks, which 127/8 is, so
    // it accepts and then bounces via default_transport. Either way, carol got hers.
    assert!(t.accepted(), "{}", t.raw);
    let m = peer.wait_for_message(|m| m.recipient == "carol@remote.test", T);
    assert!(m.text().contains("over TLS"));
    // "with ESMTPS": Postfix saw the message over TLS (RFC 3848).
    assert!(m.header("Received").unwrap_or_default().contains("with ESMTPS"), "{}", m.text());

    // Implicit TLS (port 465) through the same client.
    let t = SmtpClient::new(smtps)
        .implicit_tls(&ca)
        .tls_name("mx.remote.test")
        .from("alice@example.test")
        .to("frank@remote.test")
        .send();
    assert_eq!(t.error, None, "{}", t.raw);
    assert!(t.tls.is_some() && t.reply("starttls").is_none() && t.accepted(), "{}", t.raw);
    peer.wait_for_message(|m| m.recipient == "frank@remote.test", T);

    // AUTH against a server that offers none is reported, not a crash.
    let t = SmtpClient::new(peer.addr)
        .starttls(&ca)
        .tls_name("mx.remote.test")
        .login("u", "p")
        .to("x@remote.test")
        .send();
    assert!(t.error.as_deref().unwrap_or("").contains("AUTH not offered"), "{}", t.raw);

    // swaks with TLS (needs the Perl TLS modules run.sh installs): replies after TLS are `<~`.
    let out = swaks(&[
        "--server",
        &peer.addr.to_string(),
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        ca.to_str().unwrap(),
        "--from",
        "alice@example.test",
        "--to",
        "grace@remote.test",
    ]);
    out.assert_success();
    assert!(out.stdout.contains("<~  250 2.0.0 Ok: queued"), "{}", out.stdout);
    peer.wait_for_message(|m| m.recipient == "grace@remote.test", T);

    // A wrong name must fail verification: the client really verifies.
    let bad = SmtpClient::new(peer.addr).starttls(&ca).tls_name("wrong.test").to("carol@remote.test").send();
    assert!(bad.error.as_deref().unwrap_or("").contains("CERTIFICATE_VERIFY_FAILED"), "{}", bad.raw);
}

#[test]
fn postfix_relays_to_another_host_via_transport_maps() {
    let dir = TestDir::new("postfix-relay");
    // The sink plays posthaste's MX; Postfix is the sending MTA.
    let sink = SmtpSink::start(&dir, remote_mx_addr());
    let peer = PostfixPeer::builder(remote_mx_addr()).relay("example.test", sink.addr).start(&dir);
    swaks_send(peer.addr, "dave@remote.test", "erin@example.test", "relayed by postfix").assert_success();
    let msgs = sink.wait_for_messages(1, T);
    assert_eq!(msgs[0].rcpt_to(), vec!["erin@example.test".to_string()]);
    assert_eq!(msgs[0].mail_from(), "dave@remote.test");
    // Postfix connects from its own loopback address (smtp_bind_address).
    assert_eq!(msgs[0].client_addr, peer.addr.ip().to_string());
    assert!(msgs[0].data_str().contains("relayed by postfix"));
    peer.wait_queue_empty(T);
}

#[test]
fn posthaste_config_written_by_the_harness_is_valid() {
    let dir = TestDir::new("config");
    let dns = Dnsmasq::start(&dir, &[]);
    let p = Posthaste::builder(&dir)
        .dns(&dns)
        .listener("imap")
        .set("queue.concurrency", 4i64)
        .remove("listen.submissions")
        .build();
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    // The daemon's own loader (src/config.rs) must accept what the harness writes.
    let cfg = ::posthaste::config::Config::parse(&text, p.config_path())
        .unwrap_or_else(|e| panic!("harness config rejected by posthaste:\n{e}\n{text}"));
    assert_eq!(cfg.hostname, "mail.example.test");
    assert_eq!(cfg.dns.nameservers, vec![dns.addr]);
    assert_eq!(cfg.queue.retry_initial, Duration::from_secs(1));
    assert_eq!(cfg.queue.concurrency, 4);
    assert_eq!(cfg.queue.remote_port, 25);
    assert_eq!(cfg.server.user, "root");
    assert!(cfg.listen.submissions.is_empty());
    assert_eq!(cfg.listen.imap, vec![p.addr("imap")]);
    assert!(cfg.data_dir.starts_with(dir.path()));
    let ports: HashSet<u16> = p.listeners().iter().map(|(_, a)| a.port()).collect();
    assert_eq!(ports.len(), 3, "smtp, submission, imap on distinct ports");
    assert_eq!(p.maildir("Bob@Example.test"), cfg.data_dir.join("mail/Example.test/Bob"));

    // The certificate names mail.example.test and 127.0.0.1, and the key matches it.
    let x = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(p.ca())
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&x.stdout);
    assert!(san.contains("DNS:mail.example.test") && san.contains("IP Address:127.0.0.1"), "{san}");
    assert!(Path::new(&cfg.tls.unwrap().key).exists());
}
