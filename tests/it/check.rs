//! `posthaste check`, the smoke test, against the real daemon: every TLS listener, the MX
//! (accepts local mail, refuses to relay), submission → IMAP and POP3 read back; a table
//! or `--json`; exit 0 only when everything passed; nothing left behind.

use std::time::Duration;

use crate::support::clamd::Clamd;
use crate::support::rspamd::Rspamd;
use crate::support::tls::self_signed;
use crate::support::*;
use serde_json::Value;

const PW: &str = "Check-Passw0rd!";

fn server(dir: &TestDir) -> Posthaste {
    let mut p = Posthaste::builder(dir).all_listeners().build();
    p.add_domain("example.test");
    p.add_user("postmaster@example.test", PW);
    p.start();
    p
}

fn check_json(p: &Posthaste, extra: &[&str]) -> (Out, Value) {
    let mut args = vec!["check", "--json"];
    args.extend_from_slice(extra);
    let out = p.cmd(&args);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}):\n{}", out.all()));
    (out, v)
}

/// The checks whose name starts with `prefix`.
fn named<'a>(report: &'a Value, prefix: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .collect()
}

fn status(c: &Value) -> &str {
    c["status"].as_str().unwrap()
}

#[test]
fn everything_passes_with_a_temporary_account_that_is_removed_afterwards() {
    let dir = TestDir::new("check-pass");
    let p = server(&dir);
    let (out, report) = check_json(&p, &[]);
    assert!(out.success(), "check failed:\n{}", out.all());
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");

    // One TLS row per listener (seven), each a real handshake with the configured cert.
    let tls = named(&report, "tls ");
    assert_eq!(tls.len(), 7, "{report:#}");
    for c in &tls {
        assert_eq!(status(c), "pass", "{c:#}");
        assert!(c["detail"].as_str().unwrap().contains("presents the configured certificate"), "{c:#}");
    }
    for name in [
        "mx accepts local mail",
        "mx refuses relaying",
        "submission",
        "imap reads it back",
        "pop3 reads it back",
    ] {
        let rows = named(&report, name);
        assert_eq!(rows.len(), 1, "{name}: {report:#}");
        assert_eq!(status(rows[0]), "pass", "{name}: {:#}", rows[0]);
    }
    // Components that are off are skipped with the reason, never passed.
    for (name, why) in
        [("spam filter (GTUBE)", "antispam is off"), ("virus filter (EICAR)", "antivirus is off")]
    {
        let row = named(&report, name);
        assert_eq!(row.len(), 1, "{name}: {report:#}");
        assert_eq!(status(row[0]), "skip", "{:#}", row[0]);
        assert!(row[0]["detail"].as_str().unwrap().contains(why), "{:#}", row[0]);
    }
    // The message read back carries both our DKIM signatures, and they verify.
    let dkim = named(&report, "dkim signatures");
    assert_eq!(status(dkim[0]), "pass", "{:#}", dkim[0]);
    let detail = dkim[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("ed25519-sha256")
            && detail.contains("rsa-sha256")
            && detail.contains("d=example.test"),
        "{detail}"
    );
    let relay = named(&report, "mx refuses relaying")[0]["detail"].as_str().unwrap().to_owned();
    assert!(relay.contains("→ 5"), "{relay}");

    // The temporary account and its Maildir are gone; the postmaster's INBOX is untouched.
    let temp = named(&report, "temporary account")[0]["detail"].as_str().unwrap().to_owned();
    let address = temp.split_whitespace().next().unwrap();
    assert!(address.starts_with("posthaste-check-"), "{temp}");
    let users = p.cmd_ok(&["user", "list"]).stdout;
    assert!(!users.contains("posthaste-check-"), "temporary account left behind:\n{users}");
    assert!(!p.maildir(address).exists(), "Maildir of {address} left behind");
    assert!(!p.data_dir().join("mail/.removed").exists(), "nothing of it archived either");
    assert!(p.maildir_messages("postmaster@example.test").is_empty());
}

#[test]
fn as_a_given_account_the_test_message_is_read_back_and_then_deleted() {
    let dir = TestDir::new("check-user");
    let p = server(&dir);
    let pw = dir.write("postmaster.pass", format!("{PW}\n"));
    let (out, report) =
        check_json(&p, &["--user", "postmaster@example.test", "--password-file", pw.to_str().unwrap()]);
    assert!(out.success(), "check failed:\n{}", out.all());
    assert!(named(&report, "temporary account").is_empty(), "{report:#}");
    assert!(named(&report, "submission")[0]["detail"].as_str().unwrap().contains("postmaster@example.test"));
    // Deleted over IMAP at the end: nothing left in cur/ or new/.
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.maildir_messages("postmaster@example.test").is_empty(), "the check message was left in INBOX");

    // The table form prints the same verdicts.
    let out = p.cmd(&["check", "--user", "postmaster@example.test", "--password-file", pw.to_str().unwrap()]);
    assert!(out.success(), "{}", out.all());
    assert!(out.stdout.starts_with("CHECK"), "{}", out.stdout);
    assert!(out.stdout.contains("passed, 0 failed"), "{}", out.stdout);
}

#[test]
fn a_wrong_password_fails_the_submission_and_the_exit_code() {
    let dir = TestDir::new("check-wrong-pw");
    let p = server(&dir);
    let pw = dir.write("wrong.pass", "not-the-password\n");
    let (out, report) =
        check_json(&p, &["--user", "postmaster@example.test", "--password-file", pw.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.all());
    assert_eq!(report["ok"], false);
    let sub = named(&report, "submission")[0];
    assert_eq!(status(sub), "fail", "{sub:#}");
    assert!(sub["detail"].as_str().unwrap().contains("authentication failed"), "{sub:#}");
    // What depends on it is skipped with the reason, not passed.
    assert_eq!(status(named(&report, "imap reads it back")[0]), "skip");
    assert!(out.stderr.contains("help:"), "{}", out.stderr);
    // The secret never shows up in the output.
    assert!(!out.all().contains("not-the-password"));
}

#[test]
fn a_listener_serving_another_certificate_fails_and_missing_listeners_are_skipped() {
    let dir = TestDir::new("check-cert");
    let mut p = Posthaste::builder(&dir).listener("imaps").build();
    p.add_domain("example.test");
    p.start();
    // Replace the certificate file after the daemon loaded the old one: a stale cert.
    let other = self_signed(&dir.subdir("other"), "other", "other.example.test", &[], &[]);
    std::fs::copy(&other.cert, p.ca()).unwrap();
    let (out, report) = check_json(&p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.all());
    for c in named(&report, "tls ") {
        assert_eq!(status(c), "fail", "{c:#}");
        assert!(c["detail"].as_str().unwrap().contains("different certificate"), "{c:#}");
    }
    let pop = named(&report, "pop3 reads it back")[0];
    assert_eq!(status(pop), "skip");
    assert!(pop["detail"].as_str().unwrap().contains("listen.pop3s"), "{pop:#}");
}

#[test]
fn a_stopped_daemon_fails_every_network_check() {
    let dir = TestDir::new("check-down");
    let mut p = server(&dir);
    p.stop();
    let (out, report) = check_json(&p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.all());
    for c in named(&report, "tls ") {
        assert_eq!(status(c), "fail", "{c:#}");
        assert!(c["detail"].as_str().unwrap().contains("cannot connect"), "{c:#}");
    }
    // The temporary account was still cleaned up.
    assert!(!p.cmd_ok(&["user", "list"]).stdout.contains("posthaste-check-"));
}

#[test]
fn with_rspamd_and_clamd_the_filters_answer_gtube_is_stopped_and_eicar_refused() {
    let dir = TestDir::new("check-filters");
    let rspamd = Rspamd::start(&dir, None);
    let mut clamd = Clamd::start(&dir);
    let mut p = Posthaste::builder(&dir)
        .all_listeners()
        .set("antispam.rspamd", rspamd.url())
        .set("antispam.controller", rspamd.controller_url())
        .set("antispam.controller_password", Rspamd::PASSWORD)
        .set("antivirus.clamd", clamd.socket_str())
        .build();
    p.add_domain("example.test");
    p.start();
    let (out, report) = check_json(&p, &[]);
    assert!(out.success(), "check failed:\n{}", out.all());
    for name in [
        "rspamd answers",
        "rspamd controller answers",
        "clamd answers",
        "spam filter (GTUBE)",
        "virus filter (EICAR)",
    ] {
        let rows = named(&report, name);
        assert_eq!(rows.len(), 1, "{name}: {report:#}");
        assert_eq!(status(rows[0]), "pass", "{name}: {:#}", rows[0]);
    }
    let eicar = named(&report, "virus filter (EICAR)")[0]["detail"].as_str().unwrap();
    assert!(eicar.contains("554"), "{eicar}");
    // rspamd's verdict for GTUBE is reject; were it add-header, the row would have found it in Junk.
    let gtube = named(&report, "spam filter (GTUBE)")[0]["detail"].as_str().unwrap();
    assert!(gtube.contains("refused") || gtube.contains("found in Junk"), "{gtube}");

    // clamd down: the check says so, and fails.
    clamd.stop();
    let (out, report) = check_json(&p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.all());
    assert_eq!(status(named(&report, "clamd answers")[0]), "fail", "{report:#}");
    let eicar = named(&report, "virus filter (EICAR)")[0];
    assert_eq!(status(eicar), "fail", "{eicar:#}");
    // Mail itself is refused temporarily while clamd is down (fail closed by default).
    assert_eq!(status(named(&report, "submission")[0]), "fail", "{report:#}");
}

#[test]
fn check_json_rows_have_stable_ids_without_addresses() {
    let dir = TestDir::new("check-ids");
    let p = server(&dir);
    let (out, report) = check_json(&p, &[]);
    assert!(out.success(), "check failed:\n{}", out.all());
    let ids: Vec<&str> =
        report["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "tls.smtp",
            "tls.submission",
            "tls.submissions",
            "tls.imap",
            "tls.imaps",
            "tls.pop3",
            "tls.pop3s",
            "account.temporary",
            "mx.local",
            "mx.relay",
            "submission",
            "imap.read",
            "pop3.read",
            "dkim",
            "filter.gtube",
            "filter.eicar",
        ],
        "{report:#}"
    );
    // The names still say where (for people); the ids never do.
    let relay = report["checks"].as_array().unwrap().iter().find(|c| c["id"] == "mx.relay").unwrap();
    assert!(relay["name"].as_str().unwrap().contains("127.0.0.1:"), "{relay}");
    // A second run gives the same ids, though the temporary account differs.
    let (_, again) = check_json(&p, &[]);
    let again: Vec<&str> =
        again["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(again, ids);
}

/// An "MX" that refuses every recipient with `reply`, and a config pointing the check at it.
fn refusing_mx(dir: &TestDir, reply: &str) -> (crate::support::SmtpSink, Posthaste) {
    let addr = free_addr();
    let sink = crate::support::SmtpSink::builder(addr).hard_reject(&["RCPT"]).hard_reply(reply).start(dir);
    let p = Posthaste::builder(dir).set("listen.smtp", vec![addr.to_string()]).build();
    p.add_domain("example.test");
    (sink, p)
}

#[test]
fn mx_relay_check_fails_on_a_refusal_that_is_not_about_relaying() {
    // A server that answers every RCPT with `550 5.1.1 User unknown` tells nothing about
    // relaying; it used to pass "mx refuses relaying".
    let dir = TestDir::new("check-relay-5-1-1");
    let (_sink, p) = refusing_mx(&dir, "550 5.1.1 User unknown");
    let (_, report) = check_json(&p, &[]);
    let relay = report["checks"].as_array().unwrap().iter().find(|c| c["id"] == "mx.relay").unwrap();
    assert_eq!(status(relay), "fail", "{relay:#}");
    let detail = relay["detail"].as_str().unwrap();
    assert!(detail.contains("550 5.1.1 User unknown") && detail.contains("not a relay refusal"), "{detail}");
    // The sender was local (the check's own account), the recipient remote.
    assert!(detail.contains("from <posthaste-check-") && detail.contains("@example.test>"), "{detail}");

    let dir = TestDir::new("check-relay-5-7-1");
    let (_sink, p) = refusing_mx(&dir, "554 5.7.1 Relay access denied");
    let (_, report) = check_json(&p, &[]);
    let relay = report["checks"].as_array().unwrap().iter().find(|c| c["id"] == "mx.relay").unwrap();
    assert_eq!(status(relay), "pass", "{relay:#}");
}
