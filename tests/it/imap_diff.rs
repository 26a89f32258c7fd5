//! The differential harness: scripted IMAP sessions run against posthaste and against a
//! private Dovecot 2.3 (the harness of `imap_dovecot`), each on its own identical copy of
//! the same seeded Maildir, driven by `tests/py/imap_diff.py` (a raw IMAP client: exactly
//! the bytes of the script, literals inlined in the answers), answers normalised and
//! compared step by step.
//!
//! The scenarios (in the driver) cover every command posthaste implements — LOGIN and the
//! non-authenticated state, CAPABILITY/NOOP/ID/ENABLE/NAMESPACE, SELECT/EXAMINE with every
//! FETCH item and section, STORE/EXPUNGE/UID EXPUNGE, every SEARCH key, LIST/LSUB patterns,
//! CREATE/DELETE/RENAME/SUBSCRIBE/STATUS, APPEND (both literal forms), COPY/MOVE, CLOSE/
//! UNSELECT, CONDSTORE —, edge cases (bad sets, unknown mailboxes, bad names), two
//! concurrent sessions, DELETE/CREATE/RENAME sequences, and random sessions from seeds.
//! `bench/imap-diff.sh` runs a longer seed sweep with the same test.
//!
//! Every difference is either fixed or listed in [`allow`]: a rewrite of one server's
//! normalised answer for the commands it names, with the RFC section that makes our answer
//! correct too. An entry that no longer matches anything fails the test, so the list
//! stays the truth (docs/testing.md has it in prose).

use std::path::Path;

use crate::imap_dovecot::{ensure_os_user, Dovecot, OS_USER};
use crate::support::*;
use serde_json::{json, Value};

const PW: &str = "differential 1";

/// Seeds of the random sessions in the test command (`IMAP_DIFF_SEEDS` replaces them: the
/// bench script's sweep) and their length.
const SEEDS: &[u64] = &[1, 2, 3, 10];
const RANDOM_STEPS: usize = 60;

/// Known differences, each with the RFC section that makes our answer right too. A rule
/// either rewrites one server's normalised answer lines (`rewrite`: for commands matching
/// `command`, `find` → `replace`, a line rewritten to "" dropped; `when`: only in answers
/// with a line matching it) or accepts a pair of whole answers (`pair`: posthaste's and
/// Dovecot's answers, lines joined by "\n", each matching its pattern).
fn allow() -> Vec<Value> {
    let rewrite =
        |id: &str, server: &str, command: &str, find: &str, replace: &str, when: &str, rfc: &str| {
            json!({"id": id, "server": server, "command": command, "find": find, "replace": replace,
               "when": when, "rfc": rfc})
        };
    let pair = |id: &str, command: &str, posthaste: &str, dovecot: &str, rfc: &str| {
        json!({"id": id, "server": "both", "command": command, "posthaste": posthaste, "dovecot": dovecot,
               "rfc": rfc})
    };
    vec![
        rewrite("forwarded-in-flags", "posthaste", "", r"^(\* (?:FLAGS|OK \[PERMANENTFLAGS) \()\$Forwarded ", r"\1", "",
            "RFC 3501 §7.2.6: FLAGS names the flags applicable in the mailbox; $Forwarded is Maildir's P letter here, so it is always applicable"),
        rewrite("highestmodseq-at-select", "posthaste", r"^(SELECT|EXAMINE) ", r"^\* OK \[HIGHESTMODSEQ MS\]$", "", "",
            "RFC 7162 §3.1.2.1: a server with persistent mod-sequences MUST send HIGHESTMODSEQ at every SELECT/EXAMINE; Dovecot does only once CONDSTORE is on"),
        rewrite("highestmodseq-at-select-condstore", "dovecot", r"^(SELECT|EXAMINE) ", r"^\* OK \[HIGHESTMODSEQ MS\]$", "", "",
            "the same: compared without it at SELECT/EXAMINE"),
        rewrite("highestmodseq-at-enabling-command", "dovecot", r"MODSEQ|CHANGEDSINCE|CONDSTORE", r"^\* OK \[HIGHESTMODSEQ MS\]$", "", "",
            "RFC 7162 §3.1: HIGHESTMODSEQ after the first CONDSTORE-enabling command only if SELECT did not report it, and ours always does"),
        rewrite("recent-after-expunge", "dovecot", "", r"^\* \d+ RECENT$", "", r"^\* \d+ EXPUNGE$",
            "RFC 3501 §7.4.1: an EXPUNGE itself lowers the counts; no new RECENT is needed"),
        rewrite("unsolicited-fetch-uid", "posthaste", r"^(?!UID )(?!FETCH .*\bUID\b)", r"^(\* \d+ FETCH \(FLAGS \([^)]*\)) UID \d+\)$", r"\1)", "",
            "RFC 3501 §7.4.2: a server sends the data items it likes in an unsolicited FETCH; ours carry the UID too"),
        rewrite("inner-multipart-crlf", "dovecot", r"BODY\.PEEK\[2\]", r#"--yy--\\r\\n""#, r#"--yy--""#, "",
            "RFC 2046 §5.1.1: the CRLF before the outer delimiter belongs to that delimiter, not to the inner multipart's body"),
        // Every keyword (no leading backslash) inside the parentheses of FLAGS/PERMANENTFLAGS.
        rewrite("keywords-of-empty-mailbox", "dovecot", r"^(SELECT|EXAMINE) ",
            r"(?<=\()(?:(?!\\)[^ ()\[\]\\]+ )+(?=[^(]*\)\]?$)| (?!\\)[^ ()\[\]\\]+(?=[^(]*\)\]?$)", "", r"^\* 0 EXISTS$",
            "RFC 3501 §7.2.6: FLAGS lists the flags applicable; Dovecot keeps every keyword a mailbox ever had, posthaste those its messages carry (none when empty)"),
        rewrite("clientbug", "dovecot", r"^STATUS ", r"^(t\d+ OK) \[CLIENTBUG\]$", r"\1", "",
            "RFC 5530 §3: CLIENTBUG is optional; Dovecot flags STATUS of the selected mailbox (RFC 9051 §6.3.11 discourages it), which RFC 3501 allows"),
        pair("fetch-of-expunged", r"^FETCH 1 \(UID\)$", r"t\d+ OK", r"\* 1 FETCH .*\n\* 1 FETCH .*\nt\d+ OK",
            "RFC 2180 §4.1: a message another session expunged while EXPUNGE may not be sent (RFC 3501 §7.4.1): posthaste returns no data for it, Dovecot what it still holds"),
        pair("rename-moves-subscriptions", r#"^LSUB "" "\*"$"#, r#"(?s).*"box2/deep".*"#, r#"(?s).*"box/sub/deep".*"#,
            "RFC 3501 §6.3.5 leaves subscriptions to the server: posthaste's follow a RENAME, Dovecot's stay with the old name"),
        pair("rename-inbox", r"^RENAME INBOX ", r"t\d+ OK", r"t\d+ NO \[CANNOT\]",
            "RFC 3501 §6.3.5: renaming INBOX moves its messages to the new name; Dovecot's Maildir++ refuses it"),
        pair("read-only-store", r"^(UID )?(STORE|EXPUNGE)", r"t\d+ NO \[READ-ONLY\]", r"(\* FLAGS .*\n\* OK \[PERMANENTFLAGS.*\n)?t\d+ OK",
            "RFC 3501 §6.3.2: after EXAMINE no change to the mailbox is permitted; Dovecot answers OK and changes nothing"),
        pair("koi8r", r"CHARSET KOI8-R", r"t\d+ NO \[BADCHARSET \(UTF-8 US-ASCII\)\]", r"\* SEARCH.*\nt\d+ OK",
            "RFC 3501 §6.4.4: a charset the server does not support gets NO [BADCHARSET]; ours are UTF-8 and US-ASCII"),
        pair("nonexistent-code", r"^(SUBSCRIBE|STATUS|SELECT|EXAMINE|DELETE|RENAME) ",
            r"(\* OK \[CLOSED\]\n)?t\d+ NO \[NONEXISTENT\]", r"(\* OK \[CLOSED\]\n)?t\d+ NO( \[[A-Z]+\])?",
            "RFC 5530 §3: NONEXISTENT says why; Dovecot gives no code or, renaming a missing name onto itself, ALREADYEXISTS"),
        pair("implicit-parents", r#"^LIST "" "x"#, r#".*\(\\HasChildren\) "/" "x/y".*"#, r#".*\(\\HasChildren \\Noselect\) "/" "x/y".*"#,
            "RFC 3501 §6.3.3: CREATE SHOULD create the superior names it needs; ours are real folders (Maildir++ has no other kind), Dovecot's \\Noselect"),
        pair("rename-onto-inbox", r"^RENAME \S+ INBOX$", r"t\d+ NO \[ALREADYEXISTS\]", r"t\d+ OK",
            "RFC 3501 §6.3.5: renaming onto an existing name is an error; INBOX always exists"),
        rewrite("flags-after-search-keyword", "dovecot", r"SEARCH .*KEYWORD", r"^\* (FLAGS|OK \[PERMANENTFLAGS) .*$", "", "",
            "RFC 3501 §7.2.6: FLAGS is sent when the mailbox's flags change; searching for a keyword defines none in posthaste, Dovecot registers it"),
        pair("search-range-past-the-end", r"^(UID )?SEARCH (UID )?\d+:\*$", r"\* SEARCH \d+\nt\d+ OK", r"\* SEARCH\nt\d+ OK",
            "RFC 3501 §9 (seq-range): n:* is *:n, so it holds the last message even when n is past it (as RFC 3501 §6.4.8 says of UIDs)"),
        pair("quota", r"^GETQUOTAROOT", r"\* QUOTAROOT .*\n\* QUOTA .*\nt\d+ OK", r"t\d+ BAD",
            "RFC 9208 §4.3: posthaste has QUOTA; the Dovecot here runs without its quota plugin"),
    ]
}

/// The messages every account starts with: (file in the Maildir, mtime, content).
fn seed_messages() -> Vec<(&'static str, i64, String)> {
    let plain = |subject: &str, body: &str, date: &str| {
        format!(
            "From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{subject}@example.test>\r\n\r\n{body}\r\n"
        )
    };
    let multi = "From: Ann <ann@example.test>\r\nTo: <@route.example:joe@example.test>, grp: a@example.test, b@example.test;\r\nCc: \"Q, P\" <q@example.test>\r\nSubject: =?utf-8?q?multi_part?=\r\nDate: Sat, 15 Jul 2023 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xx\"\r\n\r\npreamble\r\n--xx\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ngr=C3=BC=C3=9Fe\r\n--xx\r\nContent-Type: multipart/alternative; boundary=yy\r\n\r\n--yy\r\nContent-Type: text/plain\r\n\r\nplain\r\n--yy\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--yy--\r\n--xx\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"inner.eml\"\r\n\r\nFrom: x@example.test\r\nSubject: inner\r\n\r\ninner body\r\n--xx\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--xx--\r\nepilogue\r\n".to_owned();
    vec![
        (
            "cur/1689300001.M1P1.seed:2,",
            1_689_300_001,
            plain("one", "hello world", "Fri, 14 Jul 2023 02:00:01 +0000"),
        ),
        ("cur/1689300002.M2P1.seed:2,S", 1_689_300_002, multi),
        (
            "cur/1689300003.M3P1.seed:2,FS",
            1_689_300_003,
            plain("three", "third", "Sun, 16 Jul 2023 09:00:00 +0200"),
        ),
        (
            "new/1689300004.M4P1.seed",
            1_689_300_004,
            plain("four", "fourth message", "Mon, 17 Jul 2023 12:00:00 +0000"),
        ),
    ]
}

fn seed(account: &Path) {
    for (name, mtime, text) in seed_messages() {
        let path = account.join(name);
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64)).unwrap();
    }
}

/// Runs the driver with `seeds`; returns its report.
pub(crate) fn run_diff(name: &str, seeds: &[u64]) -> Value {
    ensure_os_user();
    let dir = TestDir::new(name);
    let mut p = Posthaste::builder(&dir).listener("imaps").build();
    p.add_domain("example.test");
    let mut cfg = json!({
        "servers": {},
        "accounts": {},
        "password": PW,
        "scenarios": "all",
        "seeds": seeds,
        "random_steps": RANDOM_STEPS,
        "allow": allow(),
    });
    let cfg_path = dir.path().join("diff.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let list = python("imap_diff.py", &["--list", &cfg_path.display().to_string()]);
    list.assert_success();
    let scenarios: Vec<String> = serde_json::from_str(list.stdout.trim()).unwrap();
    let users: Vec<String> = (1..=scenarios.len()).map(|i| format!("user{i}@example.test")).collect();
    for u in &users {
        p.add_user(u, PW);
    }
    p.start();
    // One login each makes the account (INBOX, the special folders, subscriptions); then
    // the seed messages go in, and Dovecot gets a copy of that Maildir.
    let mut args = vec![p.addr("imaps").port().to_string(), p.ca().display().to_string()];
    args.extend(users.iter().cloned());
    let login = python(
        "import imaplib, ssl, sys\nfor u in sys.argv[3:]:\n    m = imaplib.IMAP4_SSL('127.0.0.1', int(sys.argv[1]), ssl_context=ssl.create_default_context(cafile=sys.argv[2]))\n    m.login(u, 'differential 1'); m.logout()",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    login.assert_success();
    let dovecot_root = dir.subdir("dovecot-mail");
    let mut homes = Vec::new();
    for u in &users {
        let account = p.maildir(u);
        seed(&account);
        let copy = dovecot_root.join(u.split('@').next().unwrap());
        let out = std::process::Command::new("cp").arg("-a").arg(&account).arg(&copy).output().unwrap();
        assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
        homes.push(copy);
    }
    let chown =
        std::process::Command::new("chown").arg("-R").arg(format!("{OS_USER}:")).arg(&dovecot_root).status();
    assert!(chown.unwrap().success());
    let accounts: Vec<(&str, &str, &Path)> =
        users.iter().zip(&homes).map(|(u, h)| (u.as_str(), PW, h.as_path())).collect();
    // The special-use folders as posthaste announces them (RFC 6154), as an installation
    // moving from Dovecot would have them.
    let special = ["Sent", "Drafts", "Junk", "Trash", "Archive"]
        .iter()
        .map(|f| format!("  mailbox {f} {{\n    special_use = \\{f}\n  }}\n"))
        .collect::<String>();
    let dv = Dovecot::start_with(&dir, &accounts, &special);
    cfg["servers"] = json!({
        "posthaste": {"host": "127.0.0.1", "port": p.addr("imaps").port(), "tls": true, "ca": p.ca()},
        "dovecot": {"host": "127.0.0.1", "port": dv.addr.port(), "tls": false},
    });
    cfg["accounts"] =
        scenarios.iter().cloned().zip(users.iter().cloned()).map(|(s, u)| (s, Value::from(u))).collect();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = python("imap_diff.py", &[&cfg_path.display().to_string()]);
    out.assert_success();
    let report: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    std::fs::write(dir.path().join("report.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    report
}

fn seeds_from_env() -> Vec<u64> {
    match std::env::var("IMAP_DIFF_SEEDS") {
        Ok(s) if !s.trim().is_empty() => s
            .split([',', ' '])
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().expect("IMAP_DIFF_SEEDS: numbers"))
            .collect(),
        _ => SEEDS.to_vec(),
    }
}

#[test]
fn posthaste_answers_as_dovecot_does() {
    let seeds = seeds_from_env();
    let report = run_diff("imap-diff", &seeds);
    let diffs = report["differences"].as_array().unwrap();
    let mut text = String::new();
    for d in diffs {
        text.push_str(&format!(
            "\n[{} step {} session {}] {}\n  posthaste: {}\n  dovecot:   {}\n",
            d["scenario"].as_str().unwrap(),
            d["step"],
            d["session"].as_str().unwrap(),
            d["command"].as_str().unwrap(),
            d["posthaste"],
            d["dovecot"]
        ));
    }
    assert!(diffs.is_empty(), "{} unexplained differences in {} steps:{text}", diffs.len(), report["steps"]);
    // Only the default seeds must use every entry (a sweep may not meet them all).
    if seeds == SEEDS {
        let unused: Vec<String> = allow()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .filter(|id| report["used"][id].as_u64().unwrap_or(0) == 0)
            .collect();
        assert!(unused.is_empty(), "allow-list entries that match nothing any more: {unused:?}");
    }
    assert!(report["steps"].as_u64().unwrap() > 300, "{report}");
}
