//! The IMAP server in the `posthaste serve` binary with real clients: Python imaplib (993
//! and 143+STARTTLS, verified with the test CA), curl, mbsync (isync), IDLE push after an
//! SMTP delivery, and the auth-failure log line.

use std::time::Duration;

use crate::support::*;

const PW: &str = "imap secret 1";
const T: Duration = Duration::from_secs(15);

fn server(dir: &TestDir) -> Posthaste {
    let mut p = Posthaste::builder(dir).listener("imap").listener("imaps").build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();
    p
}

fn deliver(p: &Posthaste, subject: &str) {
    let t = SmtpClient::new(p.smtp())
        .from("sender@remote.test")
        .to("alice@example.test")
        .subject(subject)
        .body("Hello over IMAP\n")
        .send();
    assert!(t.accepted(), "{}", t.raw);
}

#[test]
fn imaplib_flow_over_993_and_starttls() {
    let dir = TestDir::new("imap-imaplib");
    let p = server(&dir);
    deliver(&p, "via the MX");
    p.wait_for_maildir_count("alice@example.test", 1, T);
    let (p993, p143) = (p.addr("imaps").port().to_string(), p.addr("imap").port().to_string());
    let ca = p.ca().display().to_string();
    let out = python("imap_flow.py", &["127.0.0.1", &p993, &p143, &ca, "alice@example.test", PW]);
    out.assert_success();
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    assert_eq!(v["login"], "OK");
    let list = v["list"].to_string();
    for f in
        ["\\\\Sent) \\\"/\\\" \\\"Sent\\\"", "\\\\Junk", "\\\\Trash", "\\\\Drafts", "\\\\Archive", "INBOX"]
    {
        assert!(list.contains(f), "{f} in {list}");
    }
    assert_eq!(v["exists"], 1);
    assert!(v["message"].as_str().unwrap().contains("Subject: via the MX"), "{v}");
    assert!(v["message"].as_str().unwrap().contains("Hello over IMAP"), "{v}");
    assert!(v["flags_after_fetch"].as_str().unwrap().contains("\\Seen"), "{v}");
    assert_eq!(v["copy"], "OK");
    assert_eq!(v["move"], "OK");
    assert_eq!(v["exists_after_move"], 0);
    assert_eq!(v["junk_exists"], 1);
    assert_eq!(v["expunge"], serde_json::json!(["1"]));
    assert!(v["junk_status"].as_str().unwrap().contains("MESSAGES 0"), "{v}");
    let plain_caps = v["plain_caps"].to_string();
    assert!(plain_caps.contains("STARTTLS") && plain_caps.contains("LOGINDISABLED"), "{plain_caps}");
    assert_eq!(v["tls_login"], "OK");
    assert_eq!(v["append"], "OK");
    assert!(v["append_resp"].as_str().unwrap().contains("APPENDUID"), "{v}");
    assert!(v["sent"].as_str().unwrap().contains("Subject: appended"), "{v}");
    // The flags reached the Maildir: the moved message in Trash is \Seen and \Flagged.
    let trash = p.maildir("alice@example.test").join(".Trash/cur");
    let names: Vec<String> = std::fs::read_dir(&trash)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(":2,FS")), "{names:?}");
}

#[test]
fn failed_login_is_logged_once_with_client_and_user() {
    let dir = TestDir::new("imap-authfail");
    let p = server(&dir);
    let script = r#"
import imaplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
m = imaplib.IMAP4_SSL(sys.argv[1], int(sys.argv[2]), ssl_context=ctx)
try:
    m.login("alice@example.test", "not the password")
except imaplib.IMAP4.error as e:
    print("refused", e)
"#;
    let ca = p.ca().display().to_string();
    let out = python(script, &["127.0.0.1", &p.addr("imaps").port().to_string(), &ca]);
    assert!(out.stdout.contains("refused") && out.stdout.contains("AUTHENTICATIONFAILED"), "{}", out.all());
    let l = p.wait_for_log(|l| l["event"] == "auth_failure", T);
    assert_eq!(l["protocol"], "imap");
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["user"], "alice@example.test");
    assert!(!std::fs::read_to_string(p.log_path()).unwrap().contains("not the password"), "password logged");
}

#[test]
fn curl_lists_and_fetches() {
    require("curl", "curl");
    let dir = TestDir::new("imap-curl");
    let p = server(&dir);
    deliver(&p, "for curl");
    p.wait_for_maildir_count("alice@example.test", 1, T);
    let base = format!("imaps://127.0.0.1:{}", p.addr("imaps").port());
    let ca = p.ca().display().to_string();
    let curl = |url: &str| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--max-time", "20", "--cacert", &ca, "-u", &format!("alice@example.test:{PW}"), url]);
        run(c, None)
    };
    let out = curl(&format!("{base}/"));
    out.assert_success();
    assert!(out.stdout.contains("\"Sent\"") && out.stdout.contains("INBOX"), "{}", out.all());
    let out = curl(&format!("{base}/INBOX;UID=1"));
    out.assert_success();
    assert!(
        out.stdout.contains("Subject: for curl") && out.stdout.contains("Hello over IMAP"),
        "{}",
        out.all()
    );
    // STARTTLS on 143 with --ssl-reqd.
    let mut c = std::process::Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "--ssl-reqd",
        "--cacert",
        &ca,
        "-u",
        &format!("alice@example.test:{PW}"),
    ]);
    c.arg(format!(
        "imap://127.0.0.1:{}/INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)",
        p.addr("imap").port()
    ));
    let out = run(c, None);
    out.assert_success();
    assert!(out.stdout.contains("Subject: for curl"), "{}", out.all());
}

#[test]
fn mbsync_syncs_both_ways() {
    require("mbsync", "isync");
    let dir = TestDir::new("imap-mbsync");
    // isync 1.4 matches the host name against DNS names and the CN only, never an IP
    // address: give it a certificate whose CN is the address it connects to.
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let cert =
        crate::support::tls::self_signed(dir.path(), "mbsync", "127.0.0.1", &["mail.example.test"], &[ip]);
    let mut p = Posthaste::builder(&dir)
        .listener("imap")
        .listener("imaps")
        .set("tls.cert", cert.cert.display().to_string())
        .set("tls.key", cert.key.display().to_string())
        .build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();
    deliver(&p, "to be synced");
    p.wait_for_maildir_count("alice@example.test", 1, T);
    let local = dir.subdir("local");
    let cfg = dir.write(
        "mbsyncrc",
        format!(
            "IMAPAccount ph\nHost 127.0.0.1\nPort {port}\nUser alice@example.test\nPass \"{PW}\"\nSSLType IMAPS\nCertificateFile {ca}\nAuthMechs PLAIN\n\n\
             IMAPStore ph-remote\nAccount ph\n\n\
             MaildirStore ph-local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n\
             Channel ph\nFar :ph-remote:\nNear :ph-local:\nPatterns INBOX Sent\nCreate Both\nExpunge Both\nSyncState *\nSync All\n",
            port = p.addr("imaps").port(),
            ca = cert.ca().display(),
            local = local.display(),
        ),
    );
    let sync = || {
        let mut c = std::process::Command::new("mbsync");
        c.arg("-c").arg(&cfg).arg("-a");
        let out = run(c, None);
        out.assert_success();
        out
    };
    sync();
    let inbox = maildir_files(&local.join("INBOX"));
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(std::fs::read_to_string(&inbox[0]).unwrap().contains("Subject: to be synced"));
    // A message written locally into Sent goes up; a local flag change goes up too.
    let sent_new = local.join("Sent/new");
    std::fs::create_dir_all(&sent_new).unwrap();
    std::fs::write(
        sent_new.join("1700000000.local1.host"),
        "From: alice@example.test\r\nSubject: written offline\r\n\r\nhi\r\n",
    )
    .unwrap();
    let old = &inbox[0];
    let flagged = local
        .join("INBOX/cur")
        .join(format!("{}:2,FS", old.file_name().unwrap().to_string_lossy().split(":2,").next().unwrap()));
    std::fs::rename(old, &flagged).unwrap();
    sync();
    let server_sent = p.maildir_messages("alice@example.test");
    assert_eq!(server_sent.len(), 1);
    let sent_dir = p.maildir("alice@example.test").join(".Sent");
    let up = maildir_files(&sent_dir);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(std::fs::read_to_string(&up[0]).unwrap().contains("Subject: written offline"));
    let names: Vec<String> = maildir_files(&p.maildir("alice@example.test"))
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(":2,FS")), "flags synced up: {names:?}");
    // A second delivery comes down on the next run.
    deliver(&p, "second");
    p.wait_for_maildir_count("alice@example.test", 2, T);
    sync();
    assert_eq!(maildir_files(&local.join("INBOX")).len(), 2);
}

#[test]
fn idle_push_within_one_second_of_smtp_delivery() {
    let dir = TestDir::new("imap-idle");
    let p = server(&dir);
    let ca = p.ca().display().to_string();
    let out = python(
        "imap_idle.py",
        &[
            "127.0.0.1",
            &p.addr("imaps").port().to_string(),
            &ca,
            "alice@example.test",
            PW,
            &p.smtp().port().to_string(),
        ],
    );
    out.assert_success();
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    assert_eq!(v["exists"], "* 1 EXISTS", "{v}");
    assert!(v["delay"].as_f64().unwrap() < 1.0, "{v}");
    assert!(
        v["done"].as_str().unwrap().contains("OK") || v["done"].as_str().unwrap().contains("RECENT"),
        "{v}"
    );
}

#[test]
fn connections_per_ip_are_limited() {
    use std::io::{BufRead, BufReader};
    let dir = TestDir::new("imap-perip");
    let mut p = Posthaste::builder(&dir).listener("imap").set("imap.max_connections_per_ip", 2i64).build();
    p.start();
    let addr = p.addr("imap");
    let greet = |s: &std::net::TcpStream| {
        s.set_read_timeout(Some(T)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    // The harness's own probe connections may still hold slots for a moment.
    let (a, _b) = wait_for("two sessions", T, || {
        let a = std::net::TcpStream::connect(addr).ok()?;
        let b = std::net::TcpStream::connect(addr).ok()?;
        (greet(&a).starts_with("* OK") && greet(&b).starts_with("* OK")).then_some((a, b))
    });
    let c = std::net::TcpStream::connect(addr).unwrap();
    assert!(greet(&c).starts_with("* BYE"));
    drop(a);
    // The slot is given back when a session ends.
    wait_for("a free slot", T, || {
        let d = std::net::TcpStream::connect(addr).ok()?;
        greet(&d).starts_with("* OK").then_some(())
    });
}

/// The 40 ms stall: a client that leaves Nagle on (imaplib's default socket) sends a
/// synchronizing literal after `+`, and its last small TLS record waits for the ACK of the
/// literal; a server whose kernel delays that ACK adds ~40 ms to every APPEND. A default and
/// a TCP_NODELAY client take turns and their median APPEND times are compared, so machine
/// load (which slows both) cannot fail the test and the stall (which only hits the first)
/// cannot pass it.
#[test]
fn default_socket_append_does_not_wait_for_a_delayed_ack() {
    let dir = TestDir::new("imap-quickack");
    let p = server(&dir);
    let port = p.addr("imaps").port().to_string();
    let ca = p.ca().display().to_string();
    let out = python("literal_stall.py", &["imap", "127.0.0.1", &port, &ca, "alice@example.test", PW, "20"]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let (default, nodelay) = (v["default_ms"].as_f64().unwrap(), v["nodelay_ms"].as_f64().unwrap());
    assert!(default - nodelay < 20.0, "APPEND with a default client socket waits for a delayed ACK: {v}");
}

/// Hardening issue: "before authentication nothing large is buffered". Twenty clients each
/// announcing a 50 MB literal in LOGIN (LITERAL+) and sending it, on 143 before STARTTLS
/// and on 993, took the daemon from 54 MB to 1,108 MB RSS while they stalled. Now each gets
/// a BYE at the announcement and the literal is never read: the daemon stays near its
/// baseline while the connections are still open.
#[test]
fn preauth_literal_flood_keeps_the_daemon_small() {
    let dir = TestDir::new("imap-preauth-literal");
    let p = server(&dir);
    let pid = p.pid().unwrap().to_string();
    let ca = p.ca().display().to_string();
    let baseline = p.rss_kib().unwrap();
    for (listener, mode) in [("imap", "plain"), ("imaps", "tls")] {
        let port = p.addr(listener).port().to_string();
        let out = python("imap_preauth_literal.py", &["127.0.0.1", &port, mode, &ca, "20", "50000000", &pid]);
        out.assert_success();
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
        let replies = v["replies"].as_array().unwrap();
        assert_eq!(replies.len(), 20, "{v}");
        for r in replies {
            assert!(r.as_str().unwrap().starts_with("* BYE"), "{listener}: {v}");
        }
        let rss = v["rss_kib"].as_u64().unwrap();
        assert!(
            rss < baseline + 100 * 1024,
            "{listener}: RSS {rss} KiB with 20 stalled clients, baseline {baseline} KiB: {v}"
        );
    }
    // And the daemon still serves a real client.
    let out = python(
        "import imaplib, ssl, sys\nm = imaplib.IMAP4_SSL('127.0.0.1', int(sys.argv[1]), ssl_context=ssl.create_default_context(cafile=sys.argv[2]))\nprint(m.login('alice@example.test', sys.argv[3])[0])",
        &[&p.addr("imaps").port().to_string(), &ca, PW],
    );
    out.assert_success();
    assert_eq!(out.stdout.trim(), "OK");
}
