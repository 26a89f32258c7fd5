//! Spam and virus checks in the SMTP path, through the real `posthaste serve` binary with
//! a real rspamd (+ Redis for Bayes) and a real clamd started by the test
//! (tests/it/support/{rspamd,clamd}.rs): rspamd's actions (reject, add header → Junk, no
//! action → INBOX), EICAR at the MX and at submission, rspamd and clamd down or slow, the
//! size limit, and learning from IMAP MOVE into and out of Junk.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::clamd::{Clamd, EICAR, EICAR_NAME};
use crate::support::posthaste::HOSTNAME;
use crate::support::rspamd::{Redis, Rspamd, GTUBE_ADD_HEADER, GTUBE_REJECT};
use crate::support::*;

const T: Duration = Duration::from_secs(30);
const PW: &str = "Filter-Passw0rd!";

fn server_with(dir: &TestDir, tweak: impl FnOnce(PosthasteBuilder) -> PosthasteBuilder) -> Posthaste {
    let mut p = tweak(Posthaste::builder(dir).listener("imaps")).build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();
    p
}

/// Enough ordinary words for Bayes to learn from (it ignores very short messages).
fn prose(topic: &str) -> String {
    format!(
        "Hello Alice,\n\nhere are the minutes of the {topic} meeting. We discussed the garden \
         project, the budget for the spring festival, the volunteers who will paint the fence, \
         and the schedule for watering the new trees during the summer holidays. Please read \
         the attached notes before Thursday and tell me whether the proposed dates suit you.\n\n\
         Best regards,\nBob\n"
    )
}

fn mx_send(p: &Posthaste, subject: &str, body: &str) -> SmtpTranscript {
    SmtpClient::new(p.smtp())
        .from("bob@remote.test")
        .to("alice@example.test")
        .subject(subject)
        .body(body)
        .send()
}

fn mx_send_file(p: &Posthaste, file: &std::path::Path) -> SmtpTranscript {
    SmtpClient::new(p.smtp()).from("bob@remote.test").to("alice@example.test").data_file(file).send()
}

fn submit_file(p: &Posthaste, file: &std::path::Path) -> SmtpTranscript {
    SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", PW)
        .from("alice@example.test")
        .to("carol@remote.test")
        .data_file(file)
        .send()
}

/// A message with EICAR as a base64-encoded attachment (as a mail client sends a file).
fn eicar_attachment(dir: &TestDir, from: &str) -> PathBuf {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(EICAR);
    dir.write(
        format!("eicar-attached-{}.eml", from.replace('@', "_")),
        format!(
            "From: {from}\r\nTo: alice@example.test\r\nSubject: the file you asked for\r\n\
             Date: Sat, 28 Nov 2026 08:00:00 +0000\r\nMessage-ID: <att-{}@remote.test>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             --b1\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n\
             --b1\r\nContent-Type: application/octet-stream; name=\"tool.com\"\r\n\
             Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"tool.com\"\r\n\r\n\
             {b64}\r\n--b1--\r\n",
            from.len()
        ),
    )
}

fn eicar_inline(dir: &TestDir, from: &str) -> PathBuf {
    dir.write(
        format!("eicar-inline-{}.eml", from.replace('@', "_")),
        format!(
            "From: {from}\r\nTo: alice@example.test\r\nSubject: inline\r\nDate: Sat, 28 Nov 2026 08:00:00 +0000\r\n\
             Message-ID: <inl-{}@remote.test>\r\n\r\n{EICAR}\r\n",
            from.len()
        ),
    )
}

#[track_caller]
fn assert_refused(t: &SmtpTranscript, code: u16, enhanced: &str, what: &str) {
    let r = t.reply("dot").unwrap_or_else(|| panic!("{what}: no reply to the final dot: {}", t.raw));
    assert_eq!(r.code, code, "{what}: {}", t.raw);
    assert!(r.text.contains(enhanced), "{what}: expected {enhanced} in {:?}", r.text);
}

fn junk_files(p: &Posthaste, address: &str) -> Vec<PathBuf> {
    maildir_files(&p.maildir(address).join(".Junk"))
}

fn header_block(msg: &[u8]) -> String {
    let s = String::from_utf8_lossy(msg);
    s.split("\r\n\r\n").next().unwrap_or("").to_owned()
}

fn redis_learns(redis: &Redis, field: &str) -> u64 {
    let cli = require("redis-cli", "redis-tools");
    let out = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &redis.addr.port().to_string(), "HGET", "RS", field])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// IMAP MOVE with Python's imaplib (a real client): the messages of `from` whose Subject
/// contains `subject` go to `to`.
fn imap_move(p: &Posthaste, from: &str, subject: &str, to: &str) {
    let script = r#"
import imaplib, ssl, sys
host, port, ca, src, subj, dst = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
m.login("alice@example.test", sys.argv[7])
typ, _ = m.select(src)
assert typ == "OK", typ
typ, data = m.uid("SEARCH", None, "SUBJECT", '"%s"' % subj)
uids = data[0].decode().split()
assert uids, "no message with subject %r in %s" % (subj, src)
typ, data = m.uid("MOVE", ",".join(uids), dst)
print(typ, data)
assert typ == "OK", (typ, data)
m.logout()
"#;
    let ca = p.ca().display().to_string();
    let port = p.addr("imaps").port().to_string();
    let out = python(script, &["127.0.0.1", &port, &ca, from, subject, to, PW]);
    assert!(out.success(), "imap MOVE {from} -> {to} failed:\n{}", out.all());
}

/// `Filter::health()` (what `posthaste check` reports) for a config with these sections.
fn health(sections: &str) -> Vec<(&'static str, Result<String, String>)> {
    let text = format!("hostname = \"mail.example.test\"\ndata_dir = \"/nonexistent\"\n{sections}");
    let config = ::posthaste::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let filter = ::posthaste::filter::Filter::from_config(&config);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(filter.health())
}

#[test]
fn rspamd_and_clamd_verdicts_learning_and_timeouts() {
    let dir = TestDir::new("filter-verdicts");
    let redis = Redis::start(&dir);
    let rspamd = Rspamd::start(&dir, Some(&redis));
    let clamd = Clamd::start(&dir);
    let mut p = server_with(&dir, |b| {
        b.set("antispam.rspamd", rspamd.url())
            .set("antispam.controller", rspamd.controller_url())
            .set("antispam.controller_password", Rspamd::PASSWORD)
            .set("antispam.timeout", "3s")
            .set("antivirus.clamd", clamd.socket_str())
    });

    // The health check sees all three, and a wrong controller password.
    let ok = health(&format!(
        "[antispam]\nrspamd = \"{}\"\ncontroller = \"{}\"\ncontroller_password = \"{}\"\n[antivirus]\nclamd = \"{}\"\n",
        rspamd.url(), rspamd.controller_url(), Rspamd::PASSWORD, clamd.socket_str()
    ));
    let names: Vec<&str> = ok.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["rspamd", "rspamd controller", "clamd"]);
    assert!(ok.iter().all(|(_, r)| r.is_ok()), "{ok:?}");
    assert!(
        ok[0].1.as_ref().unwrap().contains("pong") && ok[2].1.as_ref().unwrap().contains("PONG"),
        "{ok:?}"
    );
    let bad = health(&format!(
        "[antispam]\nrspamd = \"{}\"\ncontroller = \"{}\"\ncontroller_password = \"wrong\"\n",
        rspamd.url(),
        rspamd.controller_url()
    ));
    let e = bad[1].1.as_ref().unwrap_err();
    assert!(e.contains("controller_password"), "{e}");

    // A clean message: INBOX, with rspamd's and clamd's status headers.
    let t = mx_send(&p, "garden minutes", &prose("garden"));
    assert!(t.accepted(), "{}", t.raw);
    let msg = p.wait_for_maildir_message("alice@example.test", T);
    let head = header_block(&msg);
    assert!(head.contains("X-Spam-Status: No, score="), "{head}");
    assert!(head.contains("X-Spam-Action: no action"), "{head}");
    assert!(head.contains("X-Virus-Scanned: clamd; clean"), "{head}");
    assert!(junk_files(&p, "alice@example.test").is_empty());

    // A sender's own verdict headers are removed; only ours arrive.
    let forged = dir.write(
        "forged.eml",
        format!(
            "From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: forged verdict\r\n\
             Date: Sat, 28 Nov 2026 08:00:00 +0000\r\nMessage-ID: <forged@remote.test>\r\n\
             X-Spam-Status: No, score=-100 (trust me)\r\nX-Spam-Flag: NO\r\nX-Virus-Scanned: clean, honest\r\n\r\n{}",
            prose("forged").replace('\n', "\r\n")
        ),
    );
    let before = p.maildir_messages("alice@example.test").len();
    let t = mx_send_file(&p, &forged);
    assert!(t.accepted(), "{}", t.raw);
    let files = p.wait_for_maildir_count("alice@example.test", before + 1, T);
    let path = files
        .iter()
        .find(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).contains("forged verdict"))
        .unwrap()
        .clone();
    let head = header_block(&std::fs::read(&path).unwrap());
    assert!(
        !head.contains("trust me") && !head.contains("X-Spam-Flag: NO") && !head.contains("honest"),
        "{head}"
    );
    assert_eq!(head.matches("X-Spam-Status:").count(), 1, "{head}");
    // Out of the way of the counts below.
    std::fs::remove_file(&path).unwrap();

    // GTUBE: rspamd's action is "reject" (asserted on rspamd's own counter too) → 550 5.7.1.
    let rejects_before = rspamd.stat()["actions"]["reject"].as_u64().unwrap();
    let t = mx_send(&p, "gtube", &format!("Spam test {GTUBE_REJECT}\n"));
    assert_refused(&t, 550, "5.7.1", "GTUBE");
    assert_eq!(rspamd.stat()["actions"]["reject"].as_u64().unwrap(), rejects_before + 1);
    let l = p.wait_for_log(|l| l["event"] == "antispam" && l["action"] == "reject", T);
    assert_eq!(l["client"], "127.0.0.1");

    // The add-header pattern: accepted into .Junk with the X-Spam headers.
    let t = mx_send(&p, "probably spam", &format!("{}\n{GTUBE_ADD_HEADER}\n", prose("lottery")));
    assert!(t.accepted(), "{}", t.raw);
    let junk = wait_for("a message in .Junk", T, || {
        let f = junk_files(&p, "alice@example.test");
        (!f.is_empty()).then_some(f)
    });
    let head = header_block(&std::fs::read(&junk[0]).unwrap());
    for needle in [
        "X-Spam-Status: Yes, score=",
        "X-Spam-Action: add header",
        "X-Spam-Flag: YES",
        "X-Spam-Symbols: GTUBE",
    ] {
        assert!(head.contains(needle), "{needle} missing:\n{head}");
    }
    assert_eq!(p.maildir_messages("alice@example.test").len(), 1, "the junk message also went to INBOX");

    // EICAR inline and as a base64 attachment, at the MX and at submission: 554 5.7.1,
    // the signature in the reply and in the log.
    for (what, t) in [
        ("inline at MX", mx_send_file(&p, &eicar_inline(&dir, "bob@remote.test"))),
        ("attachment at MX", mx_send_file(&p, &eicar_attachment(&dir, "bob@remote.test"))),
        ("inline at submission", submit_file(&p, &eicar_inline(&dir, "alice@example.test"))),
        ("attachment at submission", submit_file(&p, &eicar_attachment(&dir, "alice@example.test"))),
    ] {
        assert_refused(&t, 554, "5.7.1", what);
        assert!(t.reply("dot").unwrap().text.contains(EICAR_NAME), "{what}: {}", t.raw);
    }
    let l = p.wait_for_log(|l| l["event"] == "antivirus" && l["result"] == "virus", T);
    assert_eq!(l["signature"], EICAR_NAME);
    assert_eq!(p.maildir_messages("alice@example.test").len(), 1, "a virus was delivered");

    // Learning: MOVE the clean message into Junk → spam, and back out to INBOX → ham.
    // (rspamd skips its GTUBE test messages entirely, learning included: they cannot be used.)
    let learned0 = rspamd.learned();
    let spam0 = redis_learns(&redis, "learns_spam");
    let ham0 = redis_learns(&redis, "learns_ham");
    imap_move(&p, "INBOX", "garden minutes", "Junk");
    wait_for("rspamd to learn the message as spam", T, || {
        (redis_learns(&redis, "learns_spam") > spam0).then_some(())
    });
    p.wait_for_log(|l| l["event"] == "antispam_learn" && l["learned"] == "spam", T);
    imap_move(&p, "Junk", "garden minutes", "INBOX");
    wait_for("rspamd to learn the message as ham", T, || {
        (redis_learns(&redis, "learns_ham") > ham0).then_some(())
    });
    assert_eq!(rspamd.learned(), learned0 + 2, "controller /stat learned count");
    // Deleting spam (Junk → Trash) teaches nothing.
    imap_move(&p, "Junk", "probably spam", "Trash");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rspamd.learned(), learned0 + 2, "a move to Trash was learned");

    // A hung rspamd (SIGSTOP: the socket accepts, nobody answers): after antispam.timeout
    // (3s) the message is accepted with the "not checked" header (on_failure = accept).
    rspamd.freeze();
    let start = Instant::now();
    let t = mx_send(&p, "while rspamd hangs", "hello\n");
    let took = start.elapsed();
    rspamd.thaw();
    assert!(t.accepted(), "{}", t.raw);
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "took {took:?}");
    let files = p.wait_for_maildir_count("alice@example.test", 2, T);
    let head = header_block(&std::fs::read(files.last().unwrap()).unwrap());
    let all: String = files.iter().map(|f| header_block(&std::fs::read(f).unwrap())).collect();
    assert!(all.contains("X-Spam-Status: Unchecked (rspamd: no answer"), "{head}\n---\n{all}");

    // rspamd down: accepted and marked (default), or 451 4.7.1 with on_failure = tempfail.
    let closed = free_addr();
    p.set("antispam.rspamd", format!("http://{closed}"));
    p.restart();
    let t = mx_send(&p, "rspamd down", "hello\n");
    assert!(t.accepted(), "{}", t.raw);
    let files = p.wait_for_maildir_count("alice@example.test", 3, T);
    let all: String = files.iter().map(|f| header_block(&std::fs::read(f).unwrap())).collect();
    assert!(all.contains("X-Spam-Status: Unchecked (rspamd: cannot connect"), "{all}");
    p.set("antispam.on_failure", "tempfail");
    p.restart();
    let t = mx_send(&p, "rspamd down, tempfail", "hello\n");
    assert_refused(&t, 451, "4.7.1", "rspamd down with on_failure = tempfail");
}

#[test]
fn clamd_down_and_size_limit() {
    let dir = TestDir::new("filter-clamd");
    let mut clamd = Clamd::start(&dir);
    // clamd over TCP this time.
    let mut p = server_with(&dir, |b| b.set("antivirus.clamd", clamd.tcp.to_string()));
    let t = mx_send_file(&p, &eicar_inline(&dir, "bob@remote.test"));
    assert_refused(&t, 554, "5.7.1", "EICAR over TCP");

    // Above max_size: oversize = reject → 552 5.3.4; accept → delivered with a header.
    p.set("antivirus.max_size", 2048i64);
    p.set("antivirus.oversize", "reject");
    p.restart();
    let big = "x".repeat(70);
    let body: String = (0..60).map(|_| format!("{big}\n")).collect();
    let t = mx_send(&p, "big", &body);
    assert_refused(&t, 552, "5.3.4", "oversize = reject");
    p.set("antivirus.oversize", "accept");
    p.restart();
    let t = mx_send(&p, "big", &body);
    assert!(t.accepted(), "{}", t.raw);
    let msg = p.wait_for_maildir_message("alice@example.test", T);
    assert!(header_block(&msg).contains("X-Virus-Status: Unchecked (message of"), "{}", header_block(&msg));
    p.remove("antivirus.max_size");
    p.remove("antivirus.oversize");

    // clamd down: the health check says so, 451 4.7.1 (default), the message accepted with
    // a header when fail-open.
    clamd.stop();
    let h = health(&format!("[antivirus]\nclamd = \"{}\"\n", clamd.socket_str()));
    assert!(h[0].1.as_ref().unwrap_err().contains("help:"), "{h:?}");
    p.restart();
    let t = mx_send(&p, "clamd down", "hello\n");
    assert_refused(&t, 451, "4.7.1", "clamd down");
    p.set("antivirus.on_failure", "accept");
    p.restart();
    let t = mx_send(&p, "clamd down, fail open", "hello\n");
    assert!(t.accepted(), "{}", t.raw);
    let files = p.wait_for_maildir_count("alice@example.test", 2, T);
    let all: String = files.iter().map(|f| header_block(&std::fs::read(f).unwrap())).collect();
    assert!(all.contains("X-Virus-Status: Unchecked (clamd: cannot connect"), "{all}");
}
