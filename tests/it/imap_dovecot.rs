//! Interop with Dovecot 2.3 on the same Maildir++: a private Dovecot (started by the test,
//! its own config, base_dir and state_dir in the test dir, `ssl = no`, a passwd-file user)
//! serves posthaste's account directory, and Python imaplib reads both servers.
//!
//! - `dovecot_sees_what_posthaste_wrote`: mail delivered by posthaste's MX, a UTF-8 folder
//!   created and a message appended through posthaste's IMAP, flags and keywords set through
//!   posthaste's IMAP: Dovecot lists the same folders, subscriptions, messages, sizes, bodies,
//!   flags and keywords (Dovecot's `a`–`z` file-name letters mapped by `dovecot-keywords`).
//! - `posthaste_sees_what_dovecot_wrote`: `doveadm save`, `doveadm flags add/remove` (also
//!   keywords), `doveadm mailbox create` and `dovecot-lda` write; posthaste's IMAP (already
//!   running, with its index cache warm) shows all of it, a keyword posthaste adds then
//!   joins Dovecot's list, and again both servers agree — also on the hierarchy levels that
//!   are no folder on disk (`\Noselect`).
//!
//! Both servers run as the `posthaste` system user (Dovecot refuses mail access as root), as
//! they would when an installation moves from Dovecot to posthaste or runs both. Dovecot's
//! mail location is `maildir:~:LAYOUT=maildir++:UTF-8` (Maildir++ with `.` between folder
//! levels, folder names in UTF-8 on disk — posthaste's layout) with `separator = /` in the
//! namespace, so both servers show the same IMAP names.
//!

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const USER: &str = "alice@example.test";
const PW: &str = "dovecot interop 1";
const T: Duration = Duration::from_secs(20);
pub(crate) const OS_USER: &str = "posthaste";

/// Dumps every folder of one account as JSON: folder names (LIST), subscriptions (LSUB),
/// and per folder the messages (subject, flags without \Recent, RFC822.SIZE, SHA-256 of
/// BODY.PEEK[]) sorted by subject, because the two servers number messages independently.
const DUMP: &str = r#"
import hashlib, imaplib, json, re, ssl, sys
host, port, mode, ca, user, pw = sys.argv[1:7]
if mode == "tls":
    m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ssl.create_default_context(cafile=ca))
else:
    m = imaplib.IMAP4(host, int(port))
m.login(user, pw)

def names(cmd, pattern="*", selectable=True):
    typ, data = getattr(m, cmd)('""', pattern)
    assert typ == "OK", (cmd, data)
    out = []
    for line in data:
        if line is None:
            continue
        if isinstance(line, tuple):  # name sent as a literal
            attrs, n = line[0], line[1].decode()
        else:
            mt = re.match(rb'\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$', line)
            assert mt, line
            attrs, n = mt.group(1), mt.group(2).decode()
        # Hierarchy levels that are not mailboxes themselves (\Noselect, \NonExistent) are
        # listed separately.
        if selectable == (b"\\noselect" in attrs.lower() or b"\\nonexistent" in attrs.lower()):
            continue
        if n.startswith('"'):
            n = n[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out.append(n)
    return sorted(out)

result = {"list": names("list"), "lsub": names("lsub"), "folders": {},
          "noselect": names("list", "*", False), "top": names("list", "%"),
          "top_noselect": names("list", "%", False)}
for name in result["list"]:
    typ, data = m.select('"' + name + '"', readonly=True)
    assert typ == "OK", (name, data)
    exists = int(data[0])
    msgs = {}
    if exists:
        typ, data = m.fetch("1:*", "(FLAGS RFC822.SIZE)")
        for item in data:
            mt = re.match(rb"(\d+) \((.*)\)$", item)
            seq = int(mt.group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", mt.group(2)).group(1).decode().split()
            size = int(re.search(rb"RFC822\.SIZE (\d+)", mt.group(2)).group(1))
            msgs[seq] = {"flags": sorted(f for f in flags if f != "\\Recent"), "size": size}
        typ, data = m.fetch("1:*", "(BODY.PEEK[])")
        for item in data:
            if not isinstance(item, tuple):
                continue
            seq = int(item[0].split()[0])
            body = item[1]
            msgs[seq]["sha256"] = hashlib.sha256(body).hexdigest()
            msgs[seq]["len"] = len(body)
            subject = re.search(rb"(?im)^Subject: (.*?)\r?$", body)
            msgs[seq]["subject"] = subject.group(1).decode() if subject else ""
    assert len(msgs) == exists, (name, exists, msgs)
    result["folders"][name] = sorted(msgs.values(), key=lambda v: (v["subject"], v["sha256"]))
m.logout()
print(json.dumps(result, sort_keys=True))
"#;

/// A private Dovecot (IMAP on a free loopback port, no TLS) for the account directory of
/// `USER` in posthaste's data dir (or, with [`Dovecot::start_with`], for any accounts).
pub(crate) struct Dovecot {
    conf: PathBuf,
    pub(crate) addr: SocketAddr,
    _guard: ProcessGuard,
}

impl Dovecot {
    fn start(dir: &TestDir, account_dir: &Path) -> Dovecot {
        Dovecot::start_with(dir, &[(USER, PW, account_dir)], "")
    }

    /// Dovecot for `accounts` (address, password, Maildir++ home), with `namespace` added
    /// to the inbox namespace's block (e.g. `mailbox Sent { special_use = \Sent }`).
    pub(crate) fn start_with(dir: &TestDir, accounts: &[(&str, &str, &Path)], namespace: &str) -> Dovecot {
        let bin = require("dovecot", "dovecot-core");
        require("doveadm", "dovecot-core");
        assert!(
            Path::new("/usr/lib/dovecot/imap").exists(),
            "Dovecot IMAP missing: install the Debian package dovecot-imapd"
        );
        assert!(is_root(), "the Dovecot interop tests run as root (Dovecot switches to the mail user)");
        let home = dir.subdir("dovecot");
        let addr = free_addr();
        let passwd: String = accounts
            .iter()
            .map(|(user, pw, home)| format!("{user}:{{PLAIN}}{pw}::::{}::\n", home.display()))
            .collect();
        let passwd = dir.write("dovecot/passwd", passwd);
        let conf = dir.write(
            "dovecot/dovecot.conf",
            format!(
                r#"base_dir = {h}/run
state_dir = {h}/state
log_path = {h}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = {OS_USER}
mail_gid = {OS_USER}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~:LAYOUT=maildir++:UTF-8
namespace inbox {{
  inbox = yes
  separator = /
{namespace}
}}
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
protocol lda {{
  postmaster_address = postmaster@example.test
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"#,
                h = home.display(),
                passwd = passwd.display(),
                port = addr.port()
            ),
        );
        let mut cmd = Command::new(bin);
        cmd.arg("-F").arg("-c").arg(&conf);
        let mut guard = ProcessGuard::spawn("dovecot", cmd, &home.join("dovecot.stdout"));
        wait_for_port(addr, T, &mut guard);
        Dovecot { conf, addr, _guard: guard }
    }

    /// `doveadm -c CONF <args> ` for the user, panicking with its output unless it succeeded.
    #[track_caller]
    fn doveadm(&self, args: &[&str]) -> String {
        let mut c = Command::new("doveadm");
        c.arg("-c").arg(&self.conf).args(args);
        let out = run(c, None);
        assert!(out.success(), "doveadm {args:?} failed:\n{}", out.all());
        out.stdout
    }

    /// Reads a message on stdin into a mailbox, as `doveadm save` or `dovecot-lda` does.
    #[track_caller]
    fn with_stdin(&self, program: &str, args: &[&str], message: &str) {
        let mut c = Command::new(program);
        c.arg("-c").arg(&self.conf).args(args);
        let out = run(c, Some(message.as_bytes()));
        assert!(out.success(), "{program} {args:?} failed:\n{}", out.all());
    }
}

pub(crate) fn ensure_os_user() {
    if !Command::new("id").arg(OS_USER).output().unwrap().status.success() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER])
            .output()
            .unwrap();
        // Another test binary may have created it at the same moment.
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists"));
    }
}

/// posthaste running as the `posthaste` user with IMAP (143) and IMAPS (993), one account.
fn posthaste(dir: &TestDir) -> Posthaste {
    ensure_os_user();
    let mut p =
        Posthaste::builder(dir).listener("imap").listener("imaps").set("server.user", OS_USER).build();
    let chown =
        Command::new("chown").arg("-R").arg(format!("{OS_USER}:")).arg(p.data_dir()).status().unwrap();
    assert!(chown.success());
    p.add_domain("example.test");
    p.add_user(USER, PW);
    p.start();
    p
}

fn deliver(p: &Posthaste, subject: &str, body: &str) {
    let t = SmtpClient::new(p.smtp()).from("sender@remote.test").to(USER).subject(subject).body(body).send();
    assert!(t.accepted(), "{}", t.raw);
}

fn dump_posthaste(p: &Posthaste) -> Value {
    let port = p.addr("imaps").port().to_string();
    let ca = p.ca().display().to_string();
    parse(python(DUMP, &["127.0.0.1", &port, "tls", &ca, USER, PW]))
}

fn dump_dovecot(d: &Dovecot) -> Value {
    parse(python(DUMP, &["127.0.0.1", &d.addr.port().to_string(), "plain", "", USER, PW]))
}

#[track_caller]
fn parse(out: Out) -> Value {
    out.assert_success();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()))
}

/// A short per-message description for failure messages and assertions.
fn summary(v: &Value, folder: &str) -> Vec<(String, String)> {
    v["folders"][folder]
        .as_array()
        .unwrap_or_else(|| panic!("no folder {folder} in {v}"))
        .iter()
        .map(|m| {
            let flags: Vec<&str> =
                m["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
            (m["subject"].as_str().unwrap().to_owned(), flags.join(" "))
        })
        .collect()
}

fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Runs Python imaplib code against posthaste's IMAPS with `m` logged in.
#[track_caller]
fn posthaste_imap(p: &Posthaste, code: &str) -> String {
    let script = format!(
        "import imaplib, ssl, sys\n\
         m = imaplib.IMAP4_SSL('127.0.0.1', int(sys.argv[1]), ssl_context=ssl.create_default_context(cafile=sys.argv[2]))\n\
         m.login(sys.argv[3], sys.argv[4])\n{code}\nm.logout()\n"
    );
    let out =
        python(&script, &[&p.addr("imaps").port().to_string(), &p.ca().display().to_string(), USER, PW]);
    out.assert_success();
    out.stdout
}

#[test]
fn dovecot_sees_what_posthaste_wrote() {
    let dir = TestDir::new("imap-dovecot-a");
    let p = posthaste(&dir);
    for (subject, body) in
        [("one", "first\n"), ("two", "second\n"), ("three", "third\n"), ("four", "fourth\n")]
    {
        deliver(&p, subject, body);
    }
    p.wait_for_maildir_count(USER, 4, T);
    // Flags, a UTF-8 folder (modified UTF-7 on the wire), an appended message, a move.
    posthaste_imap(
        &p,
        r#"
assert m.create('"Projekte/Entw&APw-rfe"')[0] == "OK"
assert m.subscribe('"Projekte/Entw&APw-rfe"')[0] == "OK"
assert m.append('"Projekte/Entw&APw-rfe"', "(\\Draft \\Seen)", None,
                b"From: alice@example.test\r\nSubject: draft\r\n\r\nEntwurf\r\n")[0] == "OK"
m.select("INBOX")
typ, data = m.search(None, "SUBJECT", "one")
one = data[0].decode()
typ, data = m.search(None, "SUBJECT", "two")
two = data[0].decode()
typ, data = m.search(None, "SUBJECT", "four")
four = data[0].decode()
typ, data = m.search(None, "SUBJECT", "three")
three = data[0].decode()
assert m.store(one, "+FLAGS", "(\\Seen)")[0] == "OK"
assert m.store(three, "+FLAGS", "(work $Label1)")[0] == "OK"
assert m.store(two, "+FLAGS", "(\\Flagged \\Answered)")[0] == "OK"
assert m.store(two, "+FLAGS", "(\\Seen)")[0] == "OK"
typ, data = m.fetch(one, "(BODY[TEXT])")  # not PEEK: sets \Seen again (already set)
assert m.copy(four, "Archive")[0] == "OK"
assert m.store(four, "+FLAGS", "(\\Deleted)")[0] == "OK"
assert m.expunge()[0] == "OK"
"#,
    );

    let ph = dump_posthaste(&p);
    let dv = Dovecot::start(&dir, &p.maildir(USER));
    let dc = dump_dovecot(&dv);

    // What posthaste shows is what we did…
    assert_eq!(
        summary(&ph, "INBOX"),
        s(&[("one", "\\Seen"), ("three", "$Label1 work"), ("two", "\\Answered \\Flagged \\Seen")])
    );
    assert_eq!(summary(&ph, "Archive"), s(&[("four", "")]));
    assert_eq!(summary(&ph, "Projekte/Entw&APw-rfe"), s(&[("draft", "\\Draft \\Seen")]));
    // …and Dovecot shows the same folders, subscriptions, messages, sizes, bodies and flags.
    assert_eq!(ph["list"], dc["list"], "LIST differs\nposthaste: {ph}\nDovecot:   {dc}");
    assert_eq!(ph["lsub"], dc["lsub"], "LSUB differs\nposthaste: {ph}\nDovecot:   {dc}");
    for folder in ph["list"].as_array().unwrap() {
        let f = folder.as_str().unwrap();
        assert_eq!(
            ph["folders"][f], dc["folders"][f],
            "folder {f} differs\nposthaste: {ph}\nDovecot:   {dc}"
        );
    }
    for f in ["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive", "Projekte", "Projekte/Entw&APw-rfe"] {
        assert!(dc["list"].as_array().unwrap().iter().any(|n| n == f), "Dovecot does not list {f}: {dc}");
    }
    // On disk, Dovecot's doveadm (its own Maildir code, no IMAP) agrees on the flags too.
    let fetched = dv.doveadm(&["fetch", "-u", USER, "flags hdr.subject", "mailbox", "INBOX", "all"]);
    assert_eq!(fetched.matches("\\Seen").count(), 2, "{fetched}");
    assert_eq!(fetched.matches("\\Flagged").count(), 1, "{fetched}");
    assert!(
        fetched.contains("$Label1") && fetched.contains("work"),
        "keywords as Dovecot letters: {fetched}"
    );
    let boxes = dv.doveadm(&["mailbox", "list", "-u", USER]);
    assert!(boxes.lines().any(|l| l == "Projekte/Entwürfe"), "{boxes}");
}

#[test]
fn posthaste_sees_what_dovecot_wrote() {
    let dir = TestDir::new("imap-dovecot-b");
    let p = posthaste(&dir);
    deliver(&p, "from posthaste", "delivered by the MX\n");
    p.wait_for_maildir_count(USER, 1, T);
    // posthaste has the INBOX open (its index cache is warm) before Dovecot writes.
    let before = dump_posthaste(&p);
    assert_eq!(summary(&before, "INBOX"), s(&[("from posthaste", "")]));

    let dv = Dovecot::start(&dir, &p.maildir(USER));
    dv.with_stdin(
        "doveadm",
        &["save", "-u", USER, "-m", "INBOX"],
        "From: bob@remote.test\nTo: alice@example.test\nSubject: saved by doveadm\n\nbody written by doveadm save\n",
    );
    dv.doveadm(&["mailbox", "create", "-u", USER, "-s", "Reisen/Übersee"]);
    dv.with_stdin(
        "/usr/lib/dovecot/dovecot-lda",
        &["-d", USER, "-m", "Reisen/Übersee"],
        "From: carol@remote.test\nTo: alice@example.test\nSubject: via dovecot-lda\n\nbody written by dovecot-lda\n",
    );
    dv.with_stdin(
        "/usr/lib/dovecot/dovecot-lda",
        &["-d", USER],
        "From: dave@remote.test\nTo: alice@example.test\nSubject: lda inbox\n\nsecond lda message\n",
    );
    dv.doveadm(&[
        "flags",
        "add",
        "-u",
        USER,
        "\\Flagged \\Seen",
        "mailbox",
        "INBOX",
        "subject",
        "saved by doveadm",
    ]);
    dv.doveadm(&["flags", "add", "-u", USER, "\\Answered", "mailbox", "INBOX", "subject", "from posthaste"]);
    // Keywords: Dovecot writes them as a–z letters named in `dovecot-keywords`.
    dv.doveadm(&["flags", "add", "-u", USER, "work $Junk", "mailbox", "INBOX", "subject", "from posthaste"]);
    dv.doveadm(&["flags", "remove", "-u", USER, "$Junk", "mailbox", "INBOX", "subject", "from posthaste"]);
    dv.doveadm(&["flags", "add", "-u", USER, "\\Seen \\Deleted", "mailbox", "INBOX", "subject", "lda inbox"]);
    dv.doveadm(&["flags", "remove", "-u", USER, "\\Deleted", "mailbox", "INBOX", "subject", "lda inbox"]);

    let ph = dump_posthaste(&p);
    assert_eq!(
        summary(&ph, "INBOX"),
        s(&[
            ("from posthaste", "\\Answered work"),
            ("lda inbox", "\\Seen"),
            ("saved by doveadm", "\\Flagged \\Seen")
        ])
    );
    // posthaste adds a keyword Dovecot has a letter for and one it has not: both land in
    // Dovecot's list and file names (compared below).
    posthaste_imap(
        &p,
        r#"
m.select("INBOX")
typ, data = m.search(None, "SUBJECT", "lda")
assert m.store(data[0].decode(), "+FLAGS", "(Work urgent)")[0] == "OK"
typ, data = m.search(None, "KEYWORD", "WORK")
assert len(data[0].split()) == 2, data
"#,
    );
    assert_eq!(summary(&ph, "Reisen/&ANw-bersee"), s(&[("via dovecot-lda", "")]), "{ph}");
    assert!(ph["lsub"].as_array().unwrap().iter().any(|n| n == "Reisen/&ANw-bersee"), "{ph}");
    // BODY[] of a message Dovecot wrote (bare LF in the file) arrives with CRLF and whole.
    let body = posthaste_imap(
        &p,
        r#"
m.select('"Reisen/&ANw-bersee"')
typ, data = m.fetch("1", "(BODY[] FLAGS)")
sys.stdout.write(repr(data))
"#,
    );
    assert!(body.contains("Subject: via dovecot-lda\\r\\n"), "{body}");
    assert!(body.contains("body written by dovecot-lda\\r\\n"), "{body}");
    assert!(body.contains("\\\\Seen"), "BODY[] (not PEEK) sets \\Seen: {body}");

    let dc = dump_dovecot(&dv);
    let ph = dump_posthaste(&p);
    assert_eq!(
        summary(&ph, "INBOX"),
        s(&[
            ("from posthaste", "\\Answered work"),
            ("lda inbox", "\\Seen urgent work"),
            ("saved by doveadm", "\\Flagged \\Seen")
        ])
    );
    assert_eq!(ph["list"], dc["list"], "LIST differs\nposthaste: {ph}\nDovecot:   {dc}");
    // The hierarchy level "Reisen" is no folder on disk: both list it as \Noselect.
    for key in ["noselect", "top", "top_noselect"] {
        assert_eq!(ph[key], dc[key], "{key} differs\nposthaste: {ph}\nDovecot:   {dc}");
    }
    assert!(ph["top_noselect"].as_array().unwrap().iter().any(|n| n == "Reisen"), "{ph}");
    for folder in ph["list"].as_array().unwrap() {
        let f = folder.as_str().unwrap();
        assert_eq!(
            ph["folders"][f], dc["folders"][f],
            "folder {f} differs\nposthaste: {ph}\nDovecot:   {dc}"
        );
    }
}
