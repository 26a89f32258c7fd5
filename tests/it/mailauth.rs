//! Message authentication through the real binary: SPF/DKIM/DMARC verification on the MX
//! with records served by dnsmasq, DMARC enforcement (reject, Junk), DNS failures as
//! temperror, and DKIM signing of submitted mail verified by dkimpy (an independent
//! implementation) with the records `posthaste dns` prints.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::posthaste::HOSTNAME;
use crate::support::*;

const T: Duration = Duration::from_secs(30);
const PW: &str = "Secret-Passw0rd!";

/// posthaste with example.test and alice, using `dns` for every lookup.
fn server(
    dir: &TestDir,
    dns: &Dnsmasq,
    tweak: impl FnOnce(PosthasteBuilder) -> PosthasteBuilder,
) -> Posthaste {
    let mut p = tweak(Posthaste::builder(dir).dns(dns)).build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();
    p
}

/// A message from `from` (header and envelope) to alice, written to a file.
fn message(dir: &TestDir, name: &str, from: &str, subject: &str, extra_headers: &str) -> std::path::PathBuf {
    let text = format!(
        "{extra_headers}From: <{from}>\r\nTo: <alice@example.test>\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{name}@client.remote.test>\r\n\r\n\
         Hello from {from}.\r\n"
    );
    dir.write(format!("{name}.eml"), text)
}

/// Sends `file` over plain SMTP to the MX, envelope sender `from`.
fn deliver(p: &Posthaste, from: &str, file: &Path) -> SmtpTranscript {
    SmtpClient::new(p.smtp())
        .helo("client.remote.test")
        .from(from)
        .to("alice@example.test")
        .data_file(file)
        .send()
}

/// The delivered message whose Subject is `subject`, in Maildir `dir` (waits for it).
fn find(dir: &Path, subject: &str) -> String {
    let needle = format!("Subject: {subject}\r\n");
    wait_for(&format!("message {subject:?} in {}", dir.display()), T, || {
        maildir_files(dir)
            .into_iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
            .find(|m| m.contains(&needle))
    })
}

/// The single `Authentication-Results` header with our authserv-id (unfolded); panics unless
/// there is exactly one.
fn auth_results(message: &str) -> String {
    let head = message.split("\r\n\r\n").next().unwrap();
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    let ours = format!("authentication-results: {HOSTNAME};");
    let found: Vec<&str> = unfolded.lines().filter(|l| l.to_ascii_lowercase().starts_with(&ours)).collect();
    assert_eq!(found.len(), 1, "expected one Authentication-Results header of ours:\n{head}");
    found[0].to_owned()
}

#[test]
fn spf_pass_fail_softfail_none_are_recorded_and_forged_results_removed() {
    let dir = TestDir::new("mailauth-spf");
    let dns = Dnsmasq::start(
        &dir,
        &[
            DnsRecord::txt("pass.test", "v=spf1 ip4:127.0.0.1 -all"),
            DnsRecord::txt("fail.test", "v=spf1 ip4:192.0.2.1 -all"),
            DnsRecord::txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all"),
            // none.test publishes nothing.
        ],
    );
    let p = server(&dir, &dns, |b| b);
    let inbox = p.maildir("alice@example.test");

    // A forged result claiming our authserv-id, and a foreign one that stays.
    let forged = format!(
        "Authentication-Results: {HOSTNAME}; spf=pass smtp.mailfrom=x@pass.test;\r\n\tdmarc=pass header.from=bank.test\r\n\
         Authentication-Results: mx.elsewhere.test; spf=neutral\r\n"
    );
    for (domain, expect) in [("pass", "pass"), ("fail", "fail"), ("soft", "softfail"), ("none", "none")] {
        let from = format!("sender@{domain}.test");
        let extra = if domain == "pass" { forged.as_str() } else { "" };
        let file = message(&dir, domain, &from, &format!("spf {domain}"), extra);
        let t = deliver(&p, &from, &file);
        // SPF alone never refuses (spf_fail_reject = false by default).
        assert!(t.accepted(), "{domain}: {}", t.raw);
        let m = find(&inbox, &format!("spf {domain}"));
        let ar = auth_results(&m);
        assert!(ar.starts_with(&format!("Authentication-Results: {HOSTNAME};")), "{ar}");
        assert!(ar.contains(&format!("spf={expect} ")), "{domain}: {ar}");
        assert!(ar.contains(&format!("smtp.mailfrom={from}")), "{ar}");
        assert!(ar.contains("dkim=none"), "{ar}");
        // No DMARC record for these domains.
        assert!(ar.contains("dmarc=none"), "{ar}");
        assert!(ar.contains("iprev="), "{ar}");
        if domain == "pass" {
            assert!(!m.contains("dmarc=pass header.from=bank.test"), "the forged header survived:\n{m}");
            assert!(m.contains("Authentication-Results: mx.elsewhere.test; spf=neutral\r\n"), "{m}");
        }
    }
    // The log records each verdict for the operator.
    let line = p.wait_for_log(|v| v["event"] == "mailauth" && v["from"] == "sender@fail.test", T);
    assert_eq!(line["spf"], "fail", "{line}");
    assert_eq!(line["action"], "accept", "{line}");
}

#[test]
fn spf_fail_is_refused_when_configured() {
    let dir = TestDir::new("mailauth-spf-reject");
    let dns = Dnsmasq::start(&dir, &[DnsRecord::txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")]);
    let p = server(&dir, &dns, |b| b.set("mailauth.spf_fail_reject", true));
    let file = message(&dir, "m", "sender@fail.test", "refused", "");
    let t = deliver(&p, "sender@fail.test", &file);
    assert_eq!(t.code("dot"), 550, "{}", t.raw);
    assert!(t.last("dot").unwrap().text.starts_with("5.7.23"), "{}", t.raw);
    assert!(maildir_files(&p.maildir("alice@example.test")).is_empty());
}

#[test]
fn dmarc_reject_refuses_a_spoof_quarantine_goes_to_junk_aligned_mail_passes() {
    let dir = TestDir::new("mailauth-dmarc");
    let dns = Dnsmasq::start(
        &dir,
        &[
            DnsRecord::txt("bank.test", "v=spf1 ip4:192.0.2.1 -all"),
            DnsRecord::txt("_dmarc.bank.test", "v=DMARC1; p=reject"),
            DnsRecord::txt("shop.test", "v=spf1 ip4:192.0.2.1 -all"),
            DnsRecord::txt("_dmarc.shop.test", "v=DMARC1; p=quarantine"),
            DnsRecord::txt("good.test", "v=spf1 ip4:127.0.0.1 -all"),
            DnsRecord::txt("_dmarc.good.test", "v=DMARC1; p=reject"),
        ],
    );
    let mut p = server(&dir, &dns, |b| b);
    let inbox = p.maildir("alice@example.test");
    let junk = inbox.join(".Junk");

    let spoof = message(&dir, "spoof", "ceo@bank.test", "wire the money", "");
    let t = deliver(&p, "ceo@bank.test", &spoof);
    assert_eq!(t.code("dot"), 550, "{}", t.raw);
    assert!(t.last("dot").unwrap().text.starts_with("5.7.1 "), "{}", t.raw);
    assert!(t.last("dot").unwrap().text.contains("bank.test"), "{}", t.raw);

    let quarantined = message(&dir, "shop", "deals@shop.test", "cheap deals", "");
    assert!(deliver(&p, "deals@shop.test", &quarantined).accepted());
    let m = find(&junk, "cheap deals");
    let ar = auth_results(&m);
    assert!(ar.contains("dmarc=fail") && ar.contains("policy.dmarc=quarantine"), "{ar}");

    // SPF passes for good.test and its domain aligns with From: DMARC passes despite p=reject.
    let good = message(&dir, "good", "news@good.test", "aligned", "");
    assert!(deliver(&p, "news@good.test", &good).accepted());
    let m = find(&inbox, "aligned");
    let ar = auth_results(&m);
    assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass header.from=good.test"), "{ar}");
    // Nothing of the spoof anywhere, and the quarantined one is not in INBOX.
    for f in maildir_files(&inbox).into_iter().chain(maildir_files(&junk)) {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains("wire the money"), "{text}");
    }
    assert!(maildir_files(&inbox)
        .iter()
        .all(|f| !std::fs::read_to_string(f).unwrap().contains("cheap deals")));

    // dmarc_enforce = false: the spoof is delivered, marked dmarc=fail.
    p.set("mailauth.dmarc_enforce", false);
    p.restart();
    let t = deliver(&p, "ceo@bank.test", &spoof);
    assert!(t.accepted(), "{}", t.raw);
    let m = find(&inbox, "wire the money");
    assert!(auth_results(&m).contains("dmarc=fail"), "{m}");
}

#[test]
fn dns_that_never_answers_gives_temperror_in_bounded_time() {
    let dir = TestDir::new("mailauth-temperror");
    // A "DNS server" that receives and never answers, on UDP and TCP. The free UDP port
    // may be taken on TCP by a parallel test: then another one.
    let (udp, _tcp) = (0..20)
        .find_map(|_| {
            let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
            Some((udp, tcp))
        })
        .expect("a loopback port free on UDP and TCP");
    let addr = udp.local_addr().unwrap();
    let mut p = Posthaste::builder(&dir)
        .set("dns.nameservers", vec![addr.to_string()])
        .set("mailauth.dns_timeout", "1s")
        .set("mailauth.timeout", "6s")
        .build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();

    let file = message(&dir, "m", "sender@remote.test", "dns is down", "");
    let start = Instant::now();
    let t = deliver(&p, "sender@remote.test", &file);
    let took = start.elapsed();
    assert!(t.accepted(), "a DNS failure must not refuse mail by default: {}", t.raw);
    assert!(took < Duration::from_secs(15), "the checks took {took:?}");
    let m = find(&p.maildir("alice@example.test"), "dns is down");
    let ar = auth_results(&m);
    assert!(ar.contains("spf=temperror"), "{ar}");
    assert!(ar.contains("dmarc=temperror"), "{ar}");

    // temperror_defer = true: 451, the sender retries later.
    p.set("mailauth.temperror_defer", true);
    p.restart();
    let file = message(&dir, "m2", "sender@remote.test", "dns is still down", "");
    let t = deliver(&p, "sender@remote.test", &file);
    assert_eq!(t.code("dot"), 451, "{}", t.raw);
    assert!(t.last("dot").unwrap().text.starts_with("4.4.3"), "{}", t.raw);
    drop(udp);
}

/// An RSA key made by openssl and its public key as a DKIM record value.
fn openssl_key(dir: &TestDir) -> (std::path::PathBuf, String) {
    let key = dir.join("sender.key");
    let mut cmd = std::process::Command::new(require("openssl", "openssl"));
    cmd.args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&key);
    run(cmd, None).assert_success();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["pkey", "-pubout", "-outform", "DER", "-in"]).arg(&key);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    use base64::Engine as _;
    (key, format!("v=DKIM1; k=rsa; p={}", base64::engine::general_purpose::STANDARD.encode(out.stdout)))
}

#[test]
fn dkim_signed_by_dkimpy_passes_and_aligns_dmarc_an_altered_copy_fails() {
    let dir = TestDir::new("mailauth-dkim-in");
    let (key, record) = openssl_key(&dir);
    let dns = Dnsmasq::start(
        &dir,
        &[
            DnsRecord::txt("sel._domainkey.sender.test", &record),
            // SPF fails for this client, so DMARC can only pass through DKIM.
            DnsRecord::txt("sender.test", "v=spf1 ip4:192.0.2.1 -all"),
            DnsRecord::txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
        ],
    );
    let p = server(&dir, &dns, |b| b);
    let plain = message(&dir, "signed", "news@sender.test", "signed by dkimpy", "");
    let signed = dkimpy::sign(&key, "sender.test", "sel", &plain);
    let signed_file = dir.write("signed-by-dkimpy.eml", &signed);
    let t = deliver(&p, "news@sender.test", &signed_file);
    assert!(t.accepted(), "{}", t.raw);
    let m = find(&p.maildir("alice@example.test"), "signed by dkimpy");
    let ar = auth_results(&m);
    assert!(
        ar.contains("dkim=pass header.d=sender.test header.s=sel")
            || ar.contains("dkim=pass header.i=@sender.test header.s=sel"),
        "{ar}"
    );
    assert!(ar.contains("spf=fail"), "{ar}");
    assert!(ar.contains("dmarc=pass header.from=sender.test policy.dmarc=reject"), "{ar}");

    // The same signature over a changed body: DKIM fails, and with it DMARC (p=reject).
    let altered = String::from_utf8(signed).unwrap().replace("Hello from", "Send money to");
    let altered_file = dir.write("altered.eml", altered);
    let t = deliver(&p, "news@sender.test", &altered_file);
    assert_eq!(t.code("dot"), 550, "{}", t.raw);
    let line = p.wait_for_log(|v| v["event"] == "mailauth" && v["action"] == "reject (dmarc)", T);
    // mail-auth reports a body-hash mismatch as "neutral" (RFC 6376 §6.1.3 calls it a
    // PERMFAIL); either way the signature does not count for DMARC.
    assert!(matches!(line["dkim"].as_str(), Some("neutral" | "fail")), "{line}");
}

#[test]
fn submitted_mail_carries_two_signatures_that_dkimpy_verifies_with_the_published_records() {
    let dir = TestDir::new("mailauth-sign");
    let mut dns = Dnsmasq::start(&dir, &[]);
    let mut p = Posthaste::builder(&dir).dns(&dns).build();
    let out = p.cmd_ok(&["domain", "add", "example.test"]);
    assert!(out.all().contains("posthaste dns example.test"), "{}", out.all());
    p.add_user("alice@example.test", PW);
    p.add_user("bob@example.test", PW);

    // The keys: 0600 files named by selector; `posthaste dns` keeps them as they are.
    let keys = p.data_dir().join("dkim/example.test");
    let ed = keys.join("posthaste-ed25519.pem");
    let rsa = keys.join("posthaste-rsa.pem");
    use std::os::unix::fs::PermissionsExt;
    for k in [&ed, &rsa] {
        assert_eq!(std::fs::metadata(k).unwrap().permissions().mode() & 0o777, 0o600, "{}", k.display());
    }
    let before = std::fs::read(&rsa).unwrap();

    // Publish exactly what `posthaste dns --json` says.
    let json = p.cmd_ok(&["dns", "example.test", "--json"]).stdout;
    let records: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dkim: Vec<&serde_json::Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"].as_str().unwrap().contains("._domainkey."))
        .collect();
    assert_eq!(dkim.len(), 2, "{json}");
    let rsa_rec = dkim.iter().find(|r| r["name"] == "posthaste-rsa._domainkey.example.test").unwrap();
    assert!(
        rsa_rec["strings"].as_array().unwrap().len() >= 2,
        "an RSA-2048 key needs two strings: {rsa_rec}"
    );
    dns.set_records(
        &dkim
            .iter()
            .map(|r| DnsRecord::txt(r["name"].as_str().unwrap(), r["value"].as_str().unwrap()))
            .collect::<Vec<_>>(),
    );
    let zone = p.cmd_ok(&["dns", "example.test"]).stdout;
    assert!(
        zone.contains("posthaste-rsa._domainkey.example.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=rsa; p="),
        "{zone}"
    );
    assert!(zone.contains("\" \""), "the RSA record is split into strings: {zone}");
    assert_eq!(std::fs::read(&rsa).unwrap(), before, "posthaste dns must never replace a key");
    p.start();

    // Port 587 (STARTTLS) and 465 (implicit TLS), to a local recipient.
    let sent_587 = SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", PW)
        .from("alice@example.test")
        .to("bob@example.test")
        .subject("signed on 587")
        .send();
    assert!(sent_587.accepted(), "{}", sent_587.raw);
    let sent_465 = SmtpClient::new(p.submissions())
        .implicit_tls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", PW)
        .from("alice@example.test")
        .to("bob@example.test")
        .subject("signed on 465")
        .send();
    assert!(sent_465.accepted(), "{}", sent_465.raw);

    let inbox = p.maildir("bob@example.test");
    for subject in ["signed on 587", "signed on 465"] {
        let m = find(&inbox, subject);
        let file = dir.write("delivered.eml", &m);
        let sigs = dkimpy::verify(&dns, &file);
        assert_eq!(sigs.len(), 2, "{sigs:?}\n{m}");
        let algs: Vec<&str> = sigs.iter().map(|s| s.a.as_str()).collect();
        assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"], "{sigs:?}");
        for s in &sigs {
            assert!(s.ok, "dkimpy rejects the {} signature: {:?}\n{m}", s.a, s.error);
            assert_eq!(s.d, "example.test");
            // From is signed, and oversigned (RFC 6376 §8.15).
            let h: Vec<String> = s.h.split(':').map(|x| x.trim().to_ascii_lowercase()).collect();
            assert_eq!(h.iter().filter(|x| *x == "from").count(), 2, "{}", s.h);
            for needed in ["to", "subject", "date", "message-id"] {
                assert!(h.iter().any(|x| x == needed), "{needed} not signed: {}", s.h);
            }
        }
        assert_eq!(sigs[0].s, "posthaste-ed25519");
        assert_eq!(sigs[1].s, "posthaste-rsa");
        // relaxed/relaxed
        assert!(m.contains("c=relaxed/relaxed"), "{m}");

        // One changed body character and neither verifies.
        let altered = m.replacen("Hello", "Jello", 1);
        assert_ne!(altered, m, "the test message has no \"Hello\" to alter:\n{m}");
        let file = dir.write("altered.eml", &altered);
        let sigs = dkimpy::verify(&dns, &file);
        assert_eq!(sigs.len(), 2);
        assert!(sigs.iter().all(|s| !s.ok), "an altered body still verifies: {sigs:?}");
    }
}

#[test]
fn a_domain_without_keys_sends_unsigned_with_one_warning() {
    let dir = TestDir::new("mailauth-nokeys");
    // DNS is not under test here: the in-process double, with no records at all.
    let zone = ::posthaste::dns::Zone::new();
    let mut p =
        Posthaste::builder(&dir).set("dns.nameservers", vec![zone.nameserver().unwrap().to_string()]).build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.add_user("bob@example.test", PW);
    std::fs::remove_dir_all(p.data_dir().join("dkim/example.test")).unwrap();
    p.start();
    for n in 0..2 {
        let t = SmtpClient::new(p.submission())
            .starttls(p.ca())
            .tls_name(HOSTNAME)
            .login("alice@example.test", PW)
            .from("alice@example.test")
            .to("bob@example.test")
            .subject(&format!("unsigned {n}"))
            .send();
        assert!(t.accepted(), "a missing key must never fail the submission: {}", t.raw);
    }
    let m = find(&p.maildir("bob@example.test"), "unsigned 1");
    assert!(!m.contains("DKIM-Signature:"), "{m}");
    let warnings = p
        .log_lines()
        .into_iter()
        .filter(|v| v["domain"] == "example.test" && v["level"] == "WARN" && v["problem"].is_string())
        .count();
    assert_eq!(warnings, 1, "{}", p.log_tail(30));
}
