//! The admin CLI end to end: the real `posthaste` binary with a config in a test dir, its
//! exit codes (0 ok, 1 failure, 2 usage), its messages and its `--json` output. The directory
//! commands run once on SQLite and once on a throwaway PostgreSQL database; what they wrote
//! is read back through the library's `Directory` (hashes are not visible through the CLI).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::posthaste::{bin, HOSTNAME};
use crate::support::*;
use ::posthaste::address::Address;
use ::posthaste::directory::{Directory, Target};
use serde_json::{json, Value};

const PW: &str = "Secret-Passw0rd!";
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A server config (not started) on SQLite, or on a new PostgreSQL database.
fn server(dir: &TestDir, postgresql: bool) -> Posthaste {
    let b = Posthaste::builder(dir);
    if postgresql {
        b.directory_url(&crate::support::postgres::postgres_url_for_new_db()).build()
    } else {
        b.build()
    }
}

/// Each listed `fn case(&Posthaste)` becomes `sqlite::case` and `postgresql::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $case() {
                let dir = super::TestDir::new(concat!("cli-sqlite-", stringify!($case)));
                super::$case(&super::server(&dir, false));
            })*
        }
        mod postgresql {
            $(#[test]
            fn $case() {
                let dir = super::TestDir::new(concat!("cli-pg-", stringify!($case)));
                super::$case(&super::server(&dir, true));
            })*
        }
    };
}

on_both_backends!(
    domains_add_list_remove,
    domain_with_accounts_is_removed_only_with_force,
    user_add_password_sources,
    user_add_generates_a_password_shown_once_and_stored_hashed,
    bad_passwords_are_refused_and_nothing_is_created,
    user_add_errors,
    quotas_are_parsed_and_shown_human_readably,
    user_add_creates_the_maildir_with_special_folders,
    passwd_replaces_the_hash,
    user_remove_keeps_the_mail,
    a_mailbox_left_on_disk_is_never_inherited_silently,
    an_account_name_with_a_slash_is_refused,
    quota_changes_and_accounts_are_disabled_and_enabled,
    common_passwords_are_refused_unless_allowed,
    aliases,
    alias_errors,
    alias_add_refuses_a_loop,
    postmaster_of_every_domain_reaches_the_first_postmaster,
    domain_remove_force_leaves_no_alias_forwarding_into_the_removed_domain,
);

/// Exit code `code`, an `error:` line first, and each of `needles` in stderr.
#[track_caller]
fn assert_fails(out: &Out, code: i32, needles: &[&str]) {
    assert_eq!(out.code(), Some(code), "expected exit {code}:\n{}", out.all());
    assert!(out.stderr.starts_with("error: "), "stderr should start with `error: `:\n{}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "stderr lacks {n:?}:\n{}", out.stderr);
    }
}

#[track_caller]
fn parse_json(out: &Out) -> Value {
    out.assert_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.stdout))
}

/// The keys of a JSON object, for exact-shape assertions.
#[track_caller]
fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

fn set(items: &[&'static str]) -> BTreeSet<&'static str> {
    items.iter().copied().collect()
}

fn directory_url(p: &Posthaste) -> String {
    match p.config().get("directory").and_then(|d| d.get("url")).and_then(|u| u.as_str()) {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", p.data_dir().join("directory.db").display()),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The stored password hash of `address`, read from the database itself.
fn stored_hash(p: &Posthaste, address: &str) -> String {
    let url = directory_url(p);
    block_on(async {
        let dir = Directory::open(&url).await.unwrap();
        let addr = Address::parse(address).unwrap();
        dir.get_account(&addr).await.unwrap().unwrap_or_else(|| panic!("no account {address}")).password_hash
    })
}

/// Does `password` log `address` in (the same check SMTP AUTH makes)?
fn authenticates(p: &Posthaste, address: &str, password: &str) -> bool {
    let url = directory_url(p);
    block_on(async {
        let dir = Directory::open(&url).await.unwrap();
        dir.authenticate(address, password).await.unwrap().is_some()
    })
}

fn user_addresses(p: &Posthaste) -> Vec<String> {
    let list = parse_json(&p.cmd(&["user", "list", "--json"]));
    list.as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap().to_owned()).collect()
}

/// Every regular file below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `posthaste ARGS` without `--config`, with the environment variable set (or not).
fn bare_cmd(args: &[&str], config_env: Option<&Path>) -> Out {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("POSTHASTE_CONFIG");
    if let Some(c) = config_env {
        cmd.env("POSTHASTE_CONFIG", c);
    }
    run(cmd, None)
}

// ---------------------------------------------------------------------------------------
// Domains
// ---------------------------------------------------------------------------------------

fn domains_add_list_remove(p: &Posthaste) {
    // An empty list is empty on stdout (scripts read it line by line); the hint is on stderr.
    let out = p.cmd(&["domain", "list"]);
    out.assert_success();
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("no domains yet") && out.stderr.contains("posthaste domain add"),
        "{}",
        out.stderr
    );
    let out = p.cmd_ok(&["user", "list"]);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("no accounts yet") && out.stderr.contains("posthaste user add"),
        "{}",
        out.stderr
    );
    assert_eq!(parse_json(&p.cmd(&["domain", "list", "--json"])), json!([]));

    let out = p.cmd_ok(&["domain", "add", "Example.TEST"]);
    assert_eq!(out.stdout, "added domain example.test\n", "names are stored lowercased");
    p.cmd_ok(&["domain", "add", "another.test"]);
    assert_eq!(p.cmd_ok(&["domain", "list"]).stdout, "another.test\nexample.test\n");
    assert_eq!(
        parse_json(&p.cmd(&["domain", "list", "--json"])),
        json!([{"name": "another.test"}, {"name": "example.test"}])
    );

    // Duplicates, in any spelling.
    for dup in ["example.test", "EXAMPLE.test", "example.test."] {
        assert_fails(&p.cmd(&["domain", "add", dup]), 1, &["domain example.test already exists"]);
    }
    for bad in ["bad_domain.test", "nodot", "trail-.test", "a..b.test", "exa mple.test", "@example.test"] {
        assert_fails(
            &p.cmd(&["domain", "add", bad]),
            1,
            &["is not a valid domain name", "\nhelp: use a name like example.org"],
        );
    }
    assert_eq!(p.cmd_ok(&["domain", "list"]).stdout, "another.test\nexample.test\n");

    assert_eq!(p.cmd_ok(&["domain", "remove", "another.test"]).stdout, "removed domain another.test\n");
    assert_fails(
        &p.cmd(&["domain", "remove", "another.test"]),
        1,
        &["domain another.test does not exist", "help: `posthaste domain list`"],
    );
    assert_eq!(parse_json(&p.cmd(&["domain", "list", "--json"])), json!([{"name": "example.test"}]));
}

fn domain_with_accounts_is_removed_only_with_force(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.add_user("bob@example.test", PW);
    p.cmd_ok(&["alias", "add", "info@example.test", "alice@example.test"]);
    let inbox = p.maildir("alice@example.test");
    std::fs::write(inbox.join("new/1.msg"), "Subject: keep me\r\n\r\nbody\r\n").unwrap();

    let out = p.cmd(&["domain", "remove", "example.test"]);
    assert_fails(
        &out,
        1,
        &[
            "domain example.test still has 2 accounts and 1 alias",
            "alice@example.test",
            "bob@example.test",
            "info@example.test",
            "\nhelp: ",
            "--force",
        ],
    );
    assert_eq!(out.stdout, "");
    assert_eq!(user_addresses(p), ["alice@example.test", "bob@example.test"], "nothing was removed");

    let out = p.cmd_ok(&["domain", "remove", "example.test", "--force"]);
    assert!(
        out.stdout.contains("removed domain example.test with its 2 accounts and 1 alias")
            && out.stdout.contains(&p.data_dir().join("mail/example.test").display().to_string()),
        "{}",
        out.stdout
    );
    assert_eq!(parse_json(&p.cmd(&["domain", "list", "--json"])), json!([]));
    assert_eq!(parse_json(&p.cmd(&["user", "list", "--json"])), json!([]));
    assert_eq!(parse_json(&p.cmd(&["alias", "list", "--json"])), json!([]));
    assert!(inbox.join("new/1.msg").exists(), "the mail stays on disk");

    // The domain can come back, empty.
    p.add_domain("example.test");
    assert_eq!(parse_json(&p.cmd(&["user", "list", "example.test", "--json"])), json!([]));
}

// ---------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------

fn user_add_password_sources(p: &Posthaste) {
    p.add_domain("example.test");

    // --password-stdin: the first line; the rest is ignored.
    let out = p.cmd_stdin(
        &["user", "add", "alice@example.test", "--password-stdin"],
        &format!("{PW}\nsecond line\n"),
    );
    out.assert_success();
    assert_eq!(out.stdout, "added account alice@example.test\n", "no password is echoed");
    assert!(authenticates(p, "alice@example.test", PW));
    assert!(!authenticates(p, "alice@example.test", "second line"));

    // --password-file, with a CRLF line ending.
    let file = p.root().join("bob.pass");
    std::fs::write(&file, "file-Passw0rd\r\n").unwrap();
    p.cmd_ok(&["user", "add", "bob@example.test", "--password-file", file.to_str().unwrap()]);
    assert!(authenticates(p, "bob@example.test", "file-Passw0rd"));
    assert!(stored_hash(p, "bob@example.test").starts_with("{ARGON2ID}$argon2id$"));

    // --password-hash from Dovecot's own tool: stored verbatim, and it logs in.
    let doveadm = require("doveadm", "dovecot-core");
    let made =
        Command::new(doveadm).args(["pw", "-s", "SHA512-CRYPT", "-p", "dovecot-made-pw"]).output().unwrap();
    assert!(made.status.success(), "doveadm pw: {}", String::from_utf8_lossy(&made.stderr));
    let hash = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("{SHA512-CRYPT}$6$"), "{hash}");
    let out = p.cmd_ok(&["user", "add", "carol@example.test", "--password-hash", &hash]);
    assert!(!out.stdout.contains("password:"), "{}", out.stdout);
    assert_eq!(stored_hash(p, "carol@example.test"), hash);
    assert!(authenticates(p, "carol@example.test", "dovecot-made-pw"));
    assert!(!authenticates(p, "carol@example.test", "wrong-password"));

    // `openssl passwd -6` gives the bare crypt string: refused with the fix spelled out, and
    // accepted with the {SHA512-CRYPT} prefix.
    let made = Command::new(require("openssl", "openssl"))
        .args(["passwd", "-6", "openssl-made-pw"])
        .output()
        .unwrap();
    let bare = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(bare.starts_with("$6$"), "{bare}");
    let fixed = format!("{{SHA512-CRYPT}}{bare}");
    assert_fails(
        &p.cmd(&["user", "add", "dave@example.test", "--password-hash", &bare]),
        1,
        &["no {SCHEME} prefix", &format!("help: this looks like a SHA512-CRYPT hash; pass it as '{fixed}'")],
    );
    p.cmd_ok(&["user", "add", "dave@example.test", "--password-hash", &fixed]);
    assert!(authenticates(p, "dave@example.test", "openssl-made-pw"));

    // Unsupported or mislabelled hashes.
    for bad in ["{MD5}1a1dc91c907325c69271ddf0c944bc72", "{PLAIN}secret-password", "{SHA512-CRYPT}", "nohash"]
    {
        assert_fails(
            &p.cmd(&["user", "add", "eve@example.test", "--password-hash", bad]),
            1,
            &["--password-hash is not a supported hash", "help: use Dovecot's {SCHEME} form", "SHA512-CRYPT"],
        );
    }
    assert_fails(
        &p.cmd(&["user", "add", "eve@example.test", "--password-hash", &format!("{{ARGON2ID}}{bare}")]),
        1,
        &["says {ARGON2ID} but what follows is not a ARGON2ID hash"],
    );

    let list = parse_json(&p.cmd(&["user", "list", "--json"]));
    let addresses: Vec<&str> =
        list.as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap()).collect();
    assert_eq!(
        addresses,
        ["alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"]
    );
    for a in list.as_array().unwrap() {
        assert_eq!(keys(a), set(&["address", "quota", "enabled"]), "accounts never show the hash: {a}");
        assert_eq!(a["quota"], 0);
        assert_eq!(a["enabled"], true);
    }
    assert!(!p.cmd_ok(&["user", "list", "--json"]).stdout.contains("$6$"));
    assert!(!p.cmd_ok(&["user", "list"]).stdout.contains("$6$"));
}

fn user_add_generates_a_password_shown_once_and_stored_hashed(p: &Posthaste) {
    p.add_domain("example.test");
    let out = p.cmd_ok(&["user", "add", "alice@example.test"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0], "added account alice@example.test");
    let generated = lines[1].strip_prefix("password: ").unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(generated.len() >= 16 && generated.chars().all(|c| c.is_ascii_alphanumeric()), "{generated}");
    assert_eq!(out.all().matches(generated).count(), 1, "printed exactly once: {}", out.all());
    assert!(authenticates(p, "alice@example.test", generated));
    assert!(stored_hash(p, "alice@example.test").starts_with("{ARGON2ID}"));

    // Nowhere in clear: not in the SQLite file (and its journals), nor anywhere else under
    // the data dir, nor in any later output.
    let files = files_below(&p.data_dir());
    if directory_url(p).starts_with("sqlite:") {
        assert!(files.iter().any(|f| f.ends_with("directory.db")), "{files:?}");
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(!contains_bytes(&bytes, generated.as_bytes()), "the password is in clear in {}", f.display());
    }
    assert!(!p.cmd_ok(&["user", "list", "--json"]).stdout.contains(generated));
    assert!(!p.cmd_ok(&["user", "list"]).stdout.contains(generated));

    // A second account gets a different one.
    let out = p.cmd_ok(&["user", "add", "bob@example.test"]);
    let second = out.stdout.lines().find_map(|l| l.strip_prefix("password: ")).unwrap();
    assert_ne!(second, generated);
}

fn bad_passwords_are_refused_and_nothing_is_created(p: &Posthaste) {
    p.add_domain("example.test");
    let add = ["user", "add", "alice@example.test", "--password-stdin"];
    assert_fails(&p.cmd_stdin(&add, "short7!\n"), 1, &["shorter than 8 characters", "\nhelp: "]);
    assert_fails(&p.cmd_stdin(&add, ""), 1, &["no password on standard input"]);
    assert_fails(&p.cmd_stdin(&add, "\nSecret-Passw0rd\n"), 1, &["no password on standard input"]);
    let file = p.root().join("short.pass");
    std::fs::write(&file, "1234567\n").unwrap();
    let by_file = ["user", "add", "alice@example.test", "--password-file", file.to_str().unwrap()];
    assert_fails(&p.cmd(&by_file), 1, &["shorter than 8 characters"]);
    assert_fails(
        &p.cmd(&["user", "add", "alice@example.test", "--password-file", "/nonexistent/pass"]),
        1,
        &["cannot read the password file /nonexistent/pass"],
    );
    assert_eq!(user_addresses(p), Vec::<String>::new(), "no account was created");

    // Two password sources at once: a usage error.
    let both = ["user", "add", "alice@example.test", "--password-stdin", "--password-hash", "{X}y"];
    assert_fails(&p.cmd_stdin(&both, "Secret-Passw0rd\n"), 2, &["cannot be used with"]);

    // Exactly 8 is enough, counted in characters (this is 15 bytes).
    p.cmd_stdin(&add, "ñññññññ8\n").assert_success();
    assert!(authenticates(p, "alice@example.test", "ñññññññ8"));
}

fn user_add_errors(p: &Posthaste) {
    p.add_domain("example.test");
    assert_fails(
        &p.cmd_stdin(&["user", "add", "alice@nope.test", "--password-stdin"], "Secret-Passw0rd\n"),
        1,
        &["domain nope.test is not configured here", "\nhelp: `posthaste domain add nope.test`"],
    );
    for bad in ["alice", "@example.test", "alice@", "al ice@example.test", "alice@bad_domain"] {
        assert_fails(
            &p.cmd_stdin(&["user", "add", bad, "--password-stdin"], "Secret-Passw0rd\n"),
            1,
            &["is not a valid mail address", "\nhelp: an address looks like alice@example.org"],
        );
    }
    p.add_user("alice@example.test", PW);
    for dup in ["alice@example.test", "Alice@EXAMPLE.test"] {
        assert_fails(
            &p.cmd_stdin(&["user", "add", dup, "--password-stdin"], "Secret-Passw0rd\n"),
            1,
            &["account alice@example.test already exists"],
        );
    }
    // An alias's address cannot also be an account.
    p.cmd_ok(&["alias", "add", "info@example.test", "alice@example.test"]);
    assert_fails(
        &p.cmd_stdin(&["user", "add", "info@example.test", "--password-stdin"], "Secret-Passw0rd\n"),
        1,
        &["alias info@example.test already exists"],
    );
    assert_fails(
        &p.cmd(&["user", "list", "nope.test"]),
        1,
        &["domain nope.test is not configured here", "posthaste domain add nope.test"],
    );
    assert_fails(&p.cmd(&["user", "list", "not_a_domain"]), 1, &["is not a valid domain name"]);
    assert_eq!(user_addresses(p), ["alice@example.test"]);
}

fn quotas_are_parsed_and_shown_human_readably(p: &Posthaste) {
    p.add_domain("example.test");
    let add = |addr: &str, quota: Option<&str>| {
        let mut args =
            vec!["user".to_owned(), "add".to_owned(), addr.to_owned(), "--password-stdin".to_owned()];
        if let Some(q) = quota {
            // `--quota=-1G`: as two arguments, clap would take -1G for an option.
            args.push(format!("--quota={q}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        p.cmd_stdin(&args, "Secret-Passw0rd\n")
    };
    let out = add("a@example.test", Some("2G"));
    out.assert_success();
    assert_eq!(out.stdout, "added account a@example.test (quota 2.0 GiB)\n");
    add("b@example.test", Some("500M")).assert_success();
    add("c@example.test", None).assert_success();
    add("d@example.test", Some("1.5g")).assert_success();
    add("e@example.test", Some("0")).assert_success();
    for bad in ["2X", "-1G", "lots", "G", "1.2.3M", "99999999999T"] {
        assert_fails(&add("f@example.test", Some(bad)), 2, &["--quota", &format!("{bad:?}")]);
    }

    let list = parse_json(&p.cmd(&["user", "list", "--json"]));
    let quotas: Vec<(String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["address"].as_str().unwrap().to_owned(), a["quota"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        quotas,
        [
            ("a@example.test".to_owned(), 2 << 30),
            ("b@example.test".to_owned(), 500 << 20),
            ("c@example.test".to_owned(), 0),
            ("d@example.test".to_owned(), 3 << 29),
            ("e@example.test".to_owned(), 0),
        ]
    );
    let human = p.cmd_ok(&["user", "list", "example.test"]).stdout;
    assert_eq!(
        human,
        "a@example.test  quota 2.0 GiB\n\
         b@example.test  quota 500.0 MiB\n\
         c@example.test  quota unlimited\n\
         d@example.test  quota 1.5 GiB\n\
         e@example.test  quota unlimited\n"
    );
}

fn user_add_creates_the_maildir_with_special_folders(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("Alice@Example.test", PW);
    let inbox = p.data_dir().join("mail/example.test/alice");
    assert_eq!(inbox, p.maildir("alice@example.test"));
    for sub in ["cur", "new", "tmp"] {
        assert!(inbox.join(sub).is_dir(), "{} missing", inbox.join(sub).display());
    }
    for folder in [".Sent", ".Drafts", ".Junk", ".Trash", ".Archive"] {
        for sub in ["cur", "new", "tmp"] {
            let d = inbox.join(folder).join(sub);
            assert!(d.is_dir(), "{} missing", d.display());
        }
    }
}

fn passwd_replaces_the_hash(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    let before = stored_hash(p, "alice@example.test");

    let out = p.cmd_stdin(&["user", "passwd", "ALICE@example.test", "--password-stdin"], "New-Passw0rd-2\n");
    out.assert_success();
    assert_eq!(out.stdout, "password changed for alice@example.test\n");
    let after = stored_hash(p, "alice@example.test");
    assert_ne!(before, after);
    assert!(authenticates(p, "alice@example.test", "New-Passw0rd-2"));
    assert!(!authenticates(p, "alice@example.test", PW), "the old password no longer works");

    // Generated, shown once.
    let out = p.cmd_ok(&["user", "passwd", "alice@example.test"]);
    let generated =
        out.stdout.lines().find_map(|l| l.strip_prefix("password: ")).expect("a generated password");
    assert!(authenticates(p, "alice@example.test", generated));
    assert_ne!(stored_hash(p, "alice@example.test"), after);

    assert_fails(
        &p.cmd_stdin(&["user", "passwd", "alice@example.test", "--password-stdin"], "short\n"),
        1,
        &["shorter than 8"],
    );
    assert!(authenticates(p, "alice@example.test", generated), "a refused change changes nothing");
    assert_fails(
        &p.cmd_stdin(&["user", "passwd", "nobody@example.test", "--password-stdin"], "New-Passw0rd-3\n"),
        1,
        &["account nobody@example.test does not exist", "help: `posthaste user list`"],
    );
    assert_fails(
        &p.cmd(&["user", "passwd", "alice@example.test", "--password-hash", "{MD5}x"]),
        1,
        &["not a supported hash"],
    );
}

fn user_remove_keeps_the_mail(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.add_user("bob@example.test", PW);
    p.cmd_ok(&["alias", "add", "info@example.test", "alice@example.test", "bob@example.test"]);
    let inbox = p.maildir("alice@example.test");
    std::fs::write(inbox.join("new/1.msg"), "Subject: keep me\r\n\r\nbody\r\n").unwrap();

    // Kept, but out of the way: moved to the archive under a dated name, and the output
    // says where.
    let out = p.cmd_ok(&["user", "remove", "alice@example.test"]);
    let archive = archived(p, "alice@example.test");
    assert_eq!(archive.len(), 1, "{archive:?}");
    let archive = &archive[0];
    assert!(
        out.stdout.starts_with(&format!(
            "removed account alice@example.test; its mail (1 message) was moved to {}\n",
            archive.display()
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("note: alias info@example.test still points to it"), "{}", out.stdout);
    assert!(archive.join("new/1.msg").exists(), "the mail is kept");
    assert!(archive.join(".Sent/cur").is_dir(), "with its folders");
    assert!(!inbox.exists(), "nothing is left where a new account would find it");
    assert_eq!(user_addresses(p), ["bob@example.test"]);
    assert!(!authenticates(p, "alice@example.test", PW));

    assert_fails(
        &p.cmd(&["user", "remove", "alice@example.test"]),
        1,
        &["account alice@example.test does not exist", "help: `posthaste user list`"],
    );
    assert_fails(&p.cmd(&["user", "remove", "alice"]), 1, &["not a valid mail address"]);
    // Re-adding gives an empty mailbox; the old mail stays in the archive.
    p.add_user("alice@example.test", PW);
    assert!(p.maildir_messages("alice@example.test").is_empty());
    assert!(archive.join("new/1.msg").exists());

    // --keep-mail says the default explicitly; --purge deletes the mailbox.
    std::fs::write(p.maildir("bob@example.test").join("new/2.msg"), "Subject: x\r\n\r\nx\r\n").unwrap();
    let out = p.cmd_ok(&["user", "remove", "alice@example.test", "--keep-mail"]);
    assert!(out.stdout.contains("its mail (0 messages) was moved to"), "{}", out.stdout);
    let out = p.cmd_ok(&["user", "remove", "bob@example.test", "--purge"]);
    assert!(
        out.stdout.starts_with("removed account bob@example.test and deleted its mail (1 message)\n"),
        "{}",
        out.stdout
    );
    assert!(!p.maildir("bob@example.test").exists());
    assert!(archived(p, "bob@example.test").is_empty(), "purged, not archived");
    assert_fails(
        &p.cmd(&["user", "remove", "x@example.test", "--purge", "--keep-mail"]),
        2,
        &["cannot be used with"],
    );
}

/// The archived mailboxes of `address` (`mail/.removed/DOMAIN/LOCAL.removed-…`).
fn archived(p: &Posthaste, address: &str) -> Vec<PathBuf> {
    let (local, domain) = address.split_once('@').unwrap();
    let dir = p.data_dir().join("mail/.removed").join(domain);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with(&format!("{local}.removed-")))
        .collect();
    found.sort();
    found
}

fn a_mailbox_left_on_disk_is_never_inherited_silently(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    let inbox = p.maildir("alice@example.test");
    std::fs::write(inbox.join("new/1.msg"), "Subject: the predecessor's\r\n\r\nprivate\r\n").unwrap();
    // `domain remove --force` leaves the mail where it was (as it says).
    p.cmd_ok(&["domain", "remove", "example.test", "--force"]);
    p.add_domain("example.test");

    let add = ["user", "add", "alice@example.test", "--password-stdin"];
    let out = p.cmd_stdin(&add, &format!("{PW}\n"));
    assert_fails(
        &out,
        1,
        &[
            &format!(
                "{} already holds a mailbox (1 message), left by an earlier account alice@example.test",
                inbox.display()
            ),
            "\nhelp: pass --archive-old-mail",
            "or --reuse-old-mail",
        ],
    );
    assert_eq!(user_addresses(p), Vec::<String>::new(), "nothing was created");
    assert!(inbox.join("new/1.msg").exists(), "nothing was moved");

    // Archived: the new account starts empty.
    let out = p.cmd_stdin(
        &["user", "add", "alice@example.test", "--password-stdin", "--archive-old-mail"],
        &format!("{PW}\n"),
    );
    out.assert_success();
    let archive = archived(p, "alice@example.test");
    assert_eq!(archive.len(), 1);
    assert!(out.stderr.contains(&format!("was moved to {}", archive[0].display())), "{}", out.stderr);
    assert!(archive[0].join("new/1.msg").exists());
    assert!(p.maildir_messages("alice@example.test").is_empty());

    // Reused on purpose (restoring an account): the mail is there, and the output says so.
    p.cmd_ok(&["user", "remove", "alice@example.test", "--purge"]);
    std::fs::create_dir_all(inbox.join("new")).unwrap();
    std::fs::write(inbox.join("new/2.msg"), "Subject: restored\r\n\r\nx\r\n").unwrap();
    let out = p.cmd_stdin(
        &["user", "add", "alice@example.test", "--password-stdin", "--reuse-old-mail"],
        &format!("{PW}\n"),
    );
    out.assert_success();
    assert!(out.stderr.contains("has the mailbox an earlier account left"), "{}", out.stderr);
    assert_eq!(p.maildir_messages("alice@example.test").len(), 1);
    assert_fails(
        &p.cmd(&["user", "add", "x@example.test", "--archive-old-mail", "--reuse-old-mail"]),
        2,
        &["cannot be used with"],
    );
}

fn an_account_name_with_a_slash_is_refused(p: &Posthaste) {
    // `alice/.Sent@…` would get alice's Sent folder as its INBOX.
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    for bad in ["alice/.Sent@example.test", "a/b@example.test"] {
        assert_fails(
            &p.cmd_stdin(&["user", "add", bad, "--password-stdin"], &format!("{PW}\n")),
            1,
            &["cannot contain /", "help:"],
        );
    }
    assert_eq!(user_addresses(p), ["alice@example.test"]);
    // As an alias source (no mailbox) it is fine.
    p.cmd_ok(&["alias", "add", "a/b@example.test", "alice@example.test"]);
}

fn quota_changes_and_accounts_are_disabled_and_enabled(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    let out = p.cmd_ok(&["user", "set", "alice@example.test", "--quota", "2G"]);
    assert_eq!(out.stdout, "quota of alice@example.test is now 2.0 GiB (was unlimited)\n");
    assert_eq!(parse_json(&p.cmd(&["user", "list", "--json"]))[0]["quota"], 2u64 << 30);
    let out = p.cmd_ok(&["user", "set", "ALICE@example.test", "--quota", "0"]);
    assert_eq!(out.stdout, "quota of alice@example.test is now unlimited (was 2.0 GiB)\n");
    assert_fails(&p.cmd(&["user", "set", "alice@example.test", "--quota", "lots"]), 2, &["--quota"]);
    assert_fails(&p.cmd(&["user", "set", "alice@example.test"]), 2, &["--quota"]);
    assert_fails(
        &p.cmd(&["user", "set", "nobody@example.test", "--quota", "1G"]),
        1,
        &["account nobody@example.test does not exist", "help: `posthaste user list`"],
    );

    let out = p.cmd_ok(&["user", "disable", "alice@example.test"]);
    assert!(
        out.stdout.starts_with(
            "disabled alice@example.test: it can no longer log in or send; mail to it is still delivered"
        ),
        "{}",
        out.stdout
    );
    assert!(!authenticates(p, "alice@example.test", PW), "a disabled account cannot log in");
    assert_eq!(p.cmd_ok(&["user", "list"]).stdout, "alice@example.test  quota unlimited  disabled\n");
    assert_eq!(parse_json(&p.cmd(&["user", "list", "--json"]))[0]["enabled"], false);
    assert_eq!(
        p.cmd_ok(&["user", "disable", "alice@example.test"]).stdout,
        "alice@example.test was already disabled\n"
    );
    let out = p.cmd_ok(&["user", "enable", "alice@example.test"]);
    assert_eq!(out.stdout, "enabled alice@example.test: it can log in and send again\n");
    assert!(authenticates(p, "alice@example.test", PW));
    assert_eq!(
        p.cmd_ok(&["user", "enable", "alice@example.test"]).stdout,
        "alice@example.test was already enabled\n"
    );
    assert_fails(&p.cmd(&["user", "disable", "nobody@example.test"]), 1, &["does not exist"]);
}

fn common_passwords_are_refused_unless_allowed(p: &Posthaste) {
    p.add_domain("example.test");
    let add = |pw: &str, extra: &[&str]| {
        let mut args = vec!["user", "add", "alice@example.test", "--password-stdin"];
        args.extend_from_slice(extra);
        p.cmd_stdin(&args, &format!("{pw}\n"))
    };
    for weak in ["password", "Password1!", "P@ssw0rd", "12345678", "qwertyuiop", "Welcome2024!", "alice2024!"]
    {
        assert_fails(&add(weak, &[]), 1, &["the password is", "\nhelp: ", "--allow-weak-password"]);
    }
    assert_eq!(user_addresses(p), Vec::<String>::new(), "no account was created");
    // The override is for the list, never for the length.
    assert_fails(&add("short1!", &["--allow-weak-password"]), 1, &["shorter than 8 characters"]);
    add("Password1!", &["--allow-weak-password"]).assert_success();
    assert!(authenticates(p, "alice@example.test", "Password1!"));
    let passwd = ["user", "passwd", "alice@example.test", "--password-stdin"];
    assert_fails(&p.cmd_stdin(&passwd, "letmein123\n"), 1, &["one of the most common passwords"]);
    assert!(authenticates(p, "alice@example.test", "Password1!"), "a refused change changes nothing");
    p.cmd_stdin(
        &["user", "passwd", "alice@example.test", "--password-stdin", "--allow-weak-password"],
        "letmein123\n",
    )
    .assert_success();
    assert!(authenticates(p, "alice@example.test", "letmein123"));
}

// ---------------------------------------------------------------------------------------
// Aliases
// ---------------------------------------------------------------------------------------

fn aliases(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_domain("other.test");
    p.add_user("alice@example.test", PW);
    p.add_user("bob@example.test", PW);
    let out = p.cmd(&["alias", "list"]);
    out.assert_success();
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no aliases yet"), "{}", out.stderr);
    assert_eq!(parse_json(&p.cmd(&["alias", "list", "--json"])), json!([]));

    // Several destinations at once, one of them on another system.
    let out = p.cmd_ok(&[
        "alias",
        "add",
        "Info@Example.test",
        "alice@example.test",
        "bob@example.test",
        "Ext@Remote.test",
    ]);
    assert_eq!(
        out.stdout,
        "alias info@example.test → alice@example.test, bob@example.test, ext@remote.test\n"
    );
    // Adding to an existing alias; a destination it already has is noted, not an error.
    let out = p.cmd_ok(&["alias", "add", "info@example.test", "alice@example.test", "carol@example.test"]);
    assert_eq!(
        out.stdout,
        "alias info@example.test → carol@example.test\nnote: info@example.test → alice@example.test was already there\n"
    );
    // The catch-all.
    p.cmd_ok(&["alias", "add", "@Example.test", "alice@example.test"]);
    p.cmd_ok(&["alias", "add", "postmaster@other.test", "alice@example.test"]);

    let list = parse_json(&p.cmd(&["alias", "list", "--json"]));
    assert_eq!(
        list,
        json!([
            {"source": "@example.test", "destinations": ["alice@example.test"]},
            {"source": "info@example.test",
             "destinations": ["alice@example.test", "bob@example.test", "carol@example.test", "ext@remote.test"]},
            {"source": "postmaster@other.test", "destinations": ["alice@example.test"]},
        ])
    );
    for a in list.as_array().unwrap() {
        assert_eq!(keys(a), set(&["source", "destinations"]));
    }
    assert_eq!(
        parse_json(&p.cmd(&["alias", "list", "other.test", "--json"])),
        json!([{"source": "postmaster@other.test", "destinations": ["alice@example.test"]}])
    );
    assert_eq!(
        p.cmd_ok(&["alias", "list", "example.test"]).stdout,
        "@example.test      → alice@example.test\n\
         info@example.test  → alice@example.test, bob@example.test, carol@example.test, ext@remote.test\n"
    );

    // Remove one destination, then the whole alias.
    assert_eq!(
        p.cmd_ok(&["alias", "remove", "info@example.test", "bob@example.test"]).stdout,
        "removed bob@example.test from alias info@example.test\n"
    );
    assert_eq!(
        parse_json(&p.cmd(&["alias", "list", "example.test", "--json"]))[1]["destinations"],
        json!(["alice@example.test", "carol@example.test", "ext@remote.test"])
    );
    assert_eq!(
        p.cmd_ok(&["alias", "remove", "INFO@example.test"]).stdout,
        "removed alias info@example.test\n"
    );
    assert_eq!(p.cmd_ok(&["alias", "remove", "@example.test"]).stdout, "removed alias @example.test\n");
    assert_eq!(
        parse_json(&p.cmd(&["alias", "list", "--json"])),
        json!([{"source": "postmaster@other.test", "destinations": ["alice@example.test"]}])
    );
}

fn alias_errors(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.cmd_ok(&["alias", "add", "info@example.test", "alice@example.test"]);

    assert_fails(
        &p.cmd(&["alias", "add", "info@example.test", "alice@example.test"]),
        1,
        &["alias info@example.test → alice@example.test already exists", "\nhelp: "],
    );
    assert_fails(
        &p.cmd(&["alias", "add", "info@nope.test", "alice@example.test"]),
        1,
        &["domain nope.test is not configured here", "help: `posthaste domain add nope.test`"],
    );
    assert_fails(
        &p.cmd(&["alias", "add", "@nope.test", "alice@example.test"]),
        1,
        &["domain nope.test is not configured here"],
    );
    assert_fails(
        &p.cmd(&["alias", "add", "@bad_domain", "alice@example.test"]),
        1,
        &["not a valid domain name"],
    );
    assert_fails(
        &p.cmd(&["alias", "add", "info", "alice@example.test"]),
        1,
        &["not a valid mail address", "help:"],
    );
    // A bad destination anywhere in the list: nothing is added.
    assert_fails(
        &p.cmd(&["alias", "add", "sales@example.test", "alice@example.test", "not-an-address"]),
        1,
        &["\"not-an-address\" is not a valid mail address"],
    );
    assert_fails(
        &p.cmd(&["alias", "add", "sales@example.test", "bob@example.test", "sales@example.test"]),
        1,
        &["cannot point to itself"],
    );
    // An account's address cannot also be an alias.
    assert_fails(
        &p.cmd(&["alias", "add", "alice@example.test", "bob@example.test"]),
        1,
        &["account alice@example.test already exists"],
    );
    assert_fails(
        &p.cmd(&["alias", "remove", "sales@example.test"]),
        1,
        &["alias sales@example.test does not exist", "help: `posthaste alias list`"],
    );
    assert_fails(
        &p.cmd(&["alias", "remove", "info@example.test", "bob@example.test"]),
        1,
        &["alias info@example.test → bob@example.test does not exist"],
    );
    assert_fails(&p.cmd(&["alias", "list", "nope.test"]), 1, &["domain nope.test is not configured here"]);
    // Usage: no destination.
    assert_fails(&p.cmd(&["alias", "add", "sales@example.test"]), 2, &["<DESTINATIONS>"]);

    assert_eq!(
        parse_json(&p.cmd(&["alias", "list", "--json"])),
        json!([{"source": "info@example.test", "destinations": ["alice@example.test"]}]),
        "the failed commands changed nothing"
    );
}

fn alias_add_refuses_a_loop(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.cmd_ok(&["alias", "add", "sales@example.test", "team@example.test"]);
    p.cmd_ok(&["alias", "add", "team@example.test", "alice@example.test", "desk@example.test"]);
    // desk → sales would close sales → team → desk → sales.
    assert_fails(
        &p.cmd(&["alias", "add", "desk@example.test", "sales@example.test"]),
        1,
        &[
            "alias desk@example.test → sales@example.test would make a loop: desk@example.test → sales@example.test → team@example.test → desk@example.test",
            "\nhelp: ",
        ],
    );
    // Through plus-addressing, and through a catch-all that takes an unknown address back.
    assert_fails(
        &p.cmd(&["alias", "add", "desk@example.test", "sales+x@example.test"]),
        1,
        &["would make a loop"],
    );
    assert_fails(
        &p.cmd(&["alias", "add", "@example.test", "ghost@example.test"]),
        1,
        &["would make a loop: @example.test → ghost@example.test → @example.test"],
    );
    // Nothing of a refused command was added, not even its other destinations.
    assert_fails(
        &p.cmd(&["alias", "add", "desk@example.test", "alice@example.test", "sales@example.test"]),
        1,
        &["would make a loop"],
    );
    assert_eq!(
        parse_json(&p.cmd(&["alias", "list", "--json"])),
        json!([
            {"source": "sales@example.test", "destinations": ["team@example.test"]},
            {"source": "team@example.test", "destinations": ["alice@example.test", "desk@example.test"]},
        ])
    );
    // A chain that ends in a mailbox, and a remote destination, are fine.
    p.cmd_ok(&["alias", "add", "desk@example.test", "alice@example.test", "ext@remote.test"]);
    p.cmd_ok(&["alias", "add", "@example.test", "alice@example.test"]);
}

/// Where the directory sends mail for `address` (the lookup SMTP RCPT makes).
fn resolve(p: &Posthaste, address: &str) -> Option<Vec<Target>> {
    let url = directory_url(p);
    block_on(async {
        let dir = Directory::open(&url).await.unwrap();
        dir.resolve(&Address::parse(address).unwrap()).await.unwrap()
    })
}

fn local(a: &str) -> Target {
    Target::Local(Address::parse(a).unwrap())
}

fn postmaster_of_every_domain_reaches_the_first_postmaster(p: &Posthaste) {
    // The first domain, before it has a postmaster: said, not hidden.
    let out = p.cmd_ok(&["domain", "add", "example.test"]);
    assert!(
        out.stderr.contains("there is no postmaster yet, so mail to postmaster@example.test is refused"),
        "{}",
        out.stderr
    );
    p.add_user("postmaster@example.test", PW);
    // RFC 5321 §4.5.1: every domain, also those added later.
    let out = p.cmd_ok(&["domain", "add", "other.test"]);
    assert!(
        out.stderr.contains("postmaster@other.test reaches postmaster@example.test, the server's postmaster"),
        "{}",
        out.stderr
    );
    p.add_domain("later.test");
    for d in ["example.test", "other.test", "later.test"] {
        assert_eq!(
            resolve(p, &format!("postmaster@{d}")),
            Some(vec![local("postmaster@example.test")]),
            "{d}"
        );
        assert_eq!(
            resolve(p, &format!("Postmaster+reports@{d}")),
            Some(vec![local("postmaster@example.test")]),
            "{d}"
        );
    }
    // A domain's own postmaster, or its catch-all, wins.
    p.add_user("alice@later.test", PW);
    p.cmd_ok(&["alias", "add", "postmaster@later.test", "alice@later.test"]);
    assert_eq!(resolve(p, "postmaster@later.test"), Some(vec![local("alice@later.test")]));
    p.cmd_ok(&["alias", "add", "@other.test", "alice@later.test"]);
    assert_eq!(resolve(p, "postmaster@other.test"), Some(vec![local("alice@later.test")]));
    // Other addresses are not affected.
    assert_eq!(resolve(p, "nobody@example.test"), None);
    // Without the first postmaster, an explicit postmaster alias serves the others.
    p.cmd_ok(&["alias", "remove", "@other.test"]);
    p.cmd_ok(&["user", "remove", "postmaster@example.test", "--purge"]);
    assert_eq!(resolve(p, "postmaster@other.test"), Some(vec![local("alice@later.test")]));
    assert_eq!(resolve(p, "postmaster@example.test"), Some(vec![local("alice@later.test")]));
    // postmaster@example → postmaster@other would loop back through the shared postmaster.
    p.cmd_ok(&["alias", "remove", "postmaster@later.test"]);
    assert_eq!(resolve(p, "postmaster@other.test"), None, "no postmaster left anywhere");
    assert_fails(
        &p.cmd(&["alias", "add", "postmaster@example.test", "postmaster@other.test"]),
        1,
        &["would make a loop"],
    );
}

fn domain_remove_force_leaves_no_alias_forwarding_into_the_removed_domain(p: &Posthaste) {
    p.add_domain("example.test");
    p.add_domain("keep.test");
    p.add_user("alice@example.test", PW);
    p.add_user("carol@keep.test", PW);
    p.cmd_ok(&["alias", "add", "x@keep.test", "alice@example.test"]);
    p.cmd_ok(&["alias", "add", "team@keep.test", "carol@keep.test", "alice@example.test"]);
    p.cmd_ok(&["alias", "add", "info@example.test", "alice@example.test"]);

    // Without --force the references are named along with the domain's own.
    assert_fails(
        &p.cmd(&["domain", "remove", "example.test"]),
        1,
        &[
            "domain example.test still has 1 account and 1 alias: alice@example.test, info@example.test; and aliases of other domains pointing into it: team@keep.test → alice@example.test, x@keep.test → alice@example.test",
            "--force",
        ],
    );
    let out = p.cmd_ok(&["domain", "remove", "example.test", "--force"]);
    assert!(
        out.stdout.contains("removed from aliases of other domains (they would have forwarded to the Internet): team@keep.test → alice@example.test, x@keep.test → alice@example.test"),
        "{}",
        out.stdout
    );
    // Once example.test is not local, alice@example.test would be a remote address: mail to
    // x@keep.test must not be relayed there.
    assert_eq!(resolve(p, "x@keep.test"), None);
    assert_eq!(resolve(p, "team@keep.test"), Some(vec![local("carol@keep.test")]));
    assert_eq!(
        parse_json(&p.cmd(&["alias", "list", "--json"])),
        json!([{"source": "team@keep.test", "destinations": ["carol@keep.test"]}])
    );

    // A domain with nothing but references into it is not removed silently either.
    p.add_domain("gone.test");
    p.cmd_ok(&["alias", "add", "fwd@keep.test", "someone@gone.test"]);
    assert_fails(
        &p.cmd(&["domain", "remove", "gone.test"]),
        1,
        &["aliases of other domains pointing into it: fwd@keep.test → someone@gone.test"],
    );
    p.cmd_ok(&["domain", "remove", "gone.test", "--force"]);
    assert_eq!(resolve(p, "fwd@keep.test"), None);
}

// ---------------------------------------------------------------------------------------
// With the daemon
// ---------------------------------------------------------------------------------------

/// An inline imaplib client: logs in over 993 and reports what INBOX holds.
const IMAP_INBOX: &str = r#"
import imaplib, json, ssl, sys
port, ca, user, password = sys.argv[1:5]
m = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ssl.create_default_context(cafile=ca))
try:
    m.login(user, password)
except imaplib.IMAP4.error as e:
    print(json.dumps({"login": "NO"}))
    sys.exit(0)
typ, data = m.select("INBOX")
n = int(data[0])
subjects = []
if n:
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [x[1].decode().strip() for x in data if isinstance(x, tuple)]
print(json.dumps({"login": "OK", "exists": n, "subjects": subjects}))
m.logout()
"#;

fn imap_inbox(p: &Posthaste, user: &str, password: &str) -> Value {
    let out =
        python(IMAP_INBOX, &[&p.addr("imaps").port().to_string(), p.ca().to_str().unwrap(), user, password]);
    out.assert_success();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()))
}

fn deliver(p: &Posthaste, to: &str, subject: &str) {
    let t =
        SmtpClient::new(p.smtp()).from("sender@remote.test").to(to).subject(subject).body("private\n").send();
    assert!(t.accepted(), "{}", t.raw);
}

#[test]
fn a_removed_accounts_mail_is_never_shown_to_the_next_account_with_the_same_address() {
    let dir = TestDir::new("cli-successor");
    let mut p = Posthaste::builder(&dir).listener("imaps").build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();
    deliver(&p, "alice@example.test", "for the predecessor only");
    p.wait_for_maildir_count("alice@example.test", 1, T);
    // The daemon has the mailbox open (its index is cached in the process).
    let before = imap_inbox(&p, "alice@example.test", PW);
    assert_eq!(before["exists"], 1, "{before}");

    p.cmd_ok(&["user", "remove", "alice@example.test"]);
    p.add_user("alice@example.test", "Successor-Passw0rd!");
    let after = imap_inbox(&p, "alice@example.test", "Successor-Passw0rd!");
    assert_eq!(after["login"], "OK", "{after}");
    assert_eq!(after["exists"], 0, "the new alice sees the old alice's mail: {after}");
    assert_eq!(imap_inbox(&p, "alice@example.test", PW)["login"], "NO", "the old password is gone");
    // New mail reaches the new account only.
    deliver(&p, "alice@example.test", "for the successor");
    p.wait_for_maildir_count("alice@example.test", 1, T);
    let after = imap_inbox(&p, "alice@example.test", "Successor-Passw0rd!");
    assert_eq!(after["subjects"], json!(["Subject: for the successor"]), "{after}");
    let archive = archived(&p, "alice@example.test");
    assert_eq!(maildir_files(&archive[0]).len(), 1, "the old mail is kept in the archive");
}

#[test]
fn postmaster_of_a_domain_added_later_is_accepted_over_smtp() {
    let dir = TestDir::new("cli-postmaster-smtp");
    let mut p = Posthaste::new(&dir);
    p.add_domain("example.test");
    p.add_domain("second.test");
    p.add_user("postmaster@example.test", PW);
    p.start();
    // Added while the daemon runs.
    p.add_domain("later.test");
    for (i, d) in ["second.test", "later.test"].iter().enumerate() {
        let t = SmtpClient::new(p.smtp())
            .from("reporter@remote.test")
            .to(&format!("postmaster@{d}"))
            .subject(&format!("report {i}"))
            .send();
        assert!(t.accepted(), "postmaster@{d}: {}", t.raw);
        p.wait_for_maildir_count("postmaster@example.test", i + 1, T);
    }
}

/// `posthaste ARGS` as the unprivileged user nobody (65534).
fn cmd_as_nobody(p: &Posthaste, args: &[&str]) -> Out {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin());
    cmd.arg("--config").arg(p.config_path()).args(args).env_remove("POSTHASTE_CONFIG").uid(65534).gid(65534);
    run(cmd, None)
}

#[test]
fn ban_add_that_cannot_be_saved_is_an_error() {
    let dir = TestDir::new("cli-ban-nonroot");
    let p = Posthaste::new(&dir);
    // As root: the data directory and an (empty) ban list exist, owned by root.
    p.cmd_ok(&["ban", "list"]);
    let out = cmd_as_nobody(&p, &["ban", "add", "192.0.2.7", "--duration", "1h"]);
    assert_fails(&out, 1, &["cannot save the ban list", "the ban was not made", "\nhelp: run it as root"]);
    assert!(!out.stdout.contains("banned"), "{}", out.all());
    assert_eq!(p.cmd_ok(&["ban", "list"]).stdout, "no client is banned\n");
    // As root it works, and the daemon's user could read it.
    let out = p.cmd_ok(&["ban", "add", "192.0.2.7", "--duration", "1h"]);
    assert!(out.stdout.starts_with("banned 192.0.2.7 until "), "{}", out.stdout);
    assert_eq!(parse_json(&cmd_as_nobody(&p, &["ban", "list", "--json"]))[0]["client"], "192.0.2.7");
}

#[test]
fn status_as_a_non_root_user_sees_the_running_daemon() {
    let dir = TestDir::new("cli-status-nonroot");
    let mut p = Posthaste::new(&dir);
    let out = cmd_as_nobody(&p, &["status"]);
    assert_fails(&out, 1, &["posthaste is not running", "help: start it"]);
    p.start();
    let pid = p.pid().unwrap();
    // The daemon binds its ports before it writes its pidfile.
    let pidfile = p.data_dir().join("posthaste.pid");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&pidfile).map_or(true, |t| t.trim() != pid.to_string()) {
        assert!(started.elapsed() < T, "no pidfile {}", pidfile.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The daemon is root's here (the posthaste user's in production): kill(pid, 0) from
    // another user is EPERM, which means it lives.
    let out = cmd_as_nobody(&p, &["status"]);
    out.assert_success();
    assert!(
        out.stdout.starts_with(&format!("posthaste is running (pid {pid}, direct mode")),
        "{}",
        out.all()
    );
    let v = parse_json(&cmd_as_nobody(&p, &["status", "--json"]));
    assert_eq!(
        (v["running"].clone(), v["mode"].clone(), v["pid"].clone()),
        (json!(true), json!("direct"), json!(pid))
    );
    // A config the user may not read (0640 in production): found in the process list.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cmd_as_nobody(&p, &["status"]);
    std::fs::set_permissions(p.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    out.assert_success();
    assert!(
        out.stdout.starts_with(&format!("posthaste is running (pid {pid}, direct mode)")),
        "{}",
        out.all()
    );
    assert!(
        out.stderr.contains("note: cannot read") && out.stderr.contains("process list"),
        "{}",
        out.stderr
    );
    p.stop();
    assert_fails(&cmd_as_nobody(&p, &["status"]), 1, &["posthaste is not running"]);
}

#[test]
fn a_garbage_hash_is_refused_by_the_shared_validator() {
    let dir = TestDir::new("cli-garbage-hash");
    let p = Posthaste::new(&dir);
    p.add_domain("example.test");
    for garbage in [
        "{ARGON2ID}garbage",
        "{ARGON2ID}$argon2id$v=19$garbage",
        "{SHA512-CRYPT}$6$saltsalt$cut-short",
        "{BLF-CRYPT}$2y$05$short",
    ] {
        let scheme = &garbage[1..garbage.find('}').unwrap()];
        assert_fails(
            &p.cmd(&["user", "add", "pm@example.test", "--password-hash", garbage]),
            1,
            &[
                &format!("--password-hash says {{{scheme}}} but what follows is not a {scheme} hash"),
                "help: use Dovecot's {SCHEME} form",
            ],
        );
    }
    assert_eq!(user_addresses(&p), Vec::<String>::new());
}

#[test]
fn dns_prints_only_configured_listeners_with_their_ports_and_refuses_unknown_domains() {
    let dir = TestDir::new("cli-dns");
    // Submission on a non-standard port, IMAPS reachable, IMAP on loopback only, no POP3.
    let p = Posthaste::builder(&dir)
        .remove("listen.submissions")
        .set("listen.submission", vec!["0.0.0.0:2587"])
        .set("listen.imaps", vec!["[::]:10993"])
        .set("listen.imap", vec!["127.0.0.1:10143"])
        .build();
    p.add_domain("example.test");
    let zone = p.cmd_ok(&["dns", "example.test"]).stdout;
    assert!(
        zone.contains(&format!("_submission._tcp.example.test.\t3600\tIN\tSRV\t10 1 2587 {HOSTNAME}.\n")),
        "{zone}"
    );
    assert!(
        zone.contains(&format!("_imaps._tcp.example.test.\t3600\tIN\tSRV\t0 1 10993 {HOSTNAME}.\n")),
        "{zone}"
    );
    for absent in [
        "_submissions._tcp.example.test.",
        "_imap._tcp.example.test.",
        "_pop3._tcp.example.test.",
        "_pop3s._tcp.example.test.",
        " 587 ",
        " 993 ",
        " 143 ",
    ] {
        assert!(!zone.contains(absent), "{absent} in:\n{zone}");
    }
    assert!(zone.contains("; listen.imap listens on loopback only: no _imap._tcp record"), "{zone}");
    // The test config's smtp listener is on 127.0.0.1: the MX has no use yet, and it says so.
    assert!(zone.contains("; listen.smtp listens on loopback only"), "{zone}");
    assert!(
        zone.contains("In a registrar's web form") && zone.contains("`_dmarc` for _dmarc.example.test."),
        "{zone}"
    );
    let json = parse_json(&p.cmd(&["dns", "example.test", "--json"]));
    let srv: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "SRV")
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(srv, ["_submission._tcp", "_imaps._tcp"]);
    let dmarc = json.as_array().unwrap().iter().find(|r| r["name"] == "_dmarc.example.test").unwrap();
    assert_eq!(dmarc["host"], "_dmarc");

    // A domain that was never added: refused, and nothing made for it.
    assert_fails(
        &p.cmd(&["dns", "other.test"]),
        1,
        &["domain other.test is not configured here", "help: `posthaste domain add other.test`"],
    );
    assert!(!p.data_dir().join("dkim/other.test").exists());
    assert_fails(&p.cmd(&["dns", "not_a_domain"]), 1, &["is not a valid domain name"]);
}

#[test]
fn help_shows_examples_and_describes_every_flag() {
    let dir = TestDir::new("cli-help");
    let p = Posthaste::new(&dir);
    for args in [
        &["--help"][..],
        &["user", "add", "--help"],
        &["user", "remove", "--help"],
        &["domain", "remove", "--help"],
        &["alias", "add", "--help"],
        &["dns", "--help"],
        &["check", "--help"],
        &["ban", "add", "--help"],
        &["status", "--help"],
    ] {
        let out = p.cmd_ok(args);
        assert!(out.stdout.contains("Examples:\n  posthaste "), "{args:?}:\n{}", out.stdout);
        // clap prints an option without a description as the bare flag on its line.
        for line in out.stdout.lines().filter(|l| l.trim_start().starts_with("--")) {
            assert!(line.trim().contains("  "), "{args:?}: undescribed option {line:?}");
        }
    }
    let out = p.cmd_ok(&["user", "remove", "--help"]);
    assert!(out.stdout.contains("--purge") && out.stdout.contains("--keep-mail"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------

#[test]
fn queue_commands_on_an_empty_or_missing_spool() {
    let dir = TestDir::new("cli-queue-empty");
    let p = Posthaste::new(&dir);
    assert!(!p.data_dir().join("queue").exists());
    assert_eq!(p.cmd_ok(&["queue", "list"]).stdout, "the queue is empty\n");
    assert_eq!(parse_json(&p.cmd(&["queue", "list", "--json"])), json!([]));
    assert_eq!(p.cmd_ok(&["queue", "flush"]).stdout, "the queue is empty: nothing to flush\n");
    let id = "0123456789abcdef01234";
    assert_fails(
        &p.cmd(&["queue", "delete", id]),
        1,
        &[&format!("no message {id} in the queue"), "\nhelp: `posthaste queue list` shows the queue ids"],
    );
    assert_fails(&p.cmd(&["queue", "delete", "not-an-id"]), 1, &["no message not-an-id in the queue"]);
    assert_fails(&p.cmd(&["queue", "flush", id]), 1, &[&format!("no message {id} in the queue")]);
    assert_fails(&p.cmd(&["queue", "delete"]), 2, &["<ID>"]);
    // Still empty afterwards (a spool directory may now exist).
    assert_eq!(parse_json(&p.cmd(&["queue", "list", "--json"])), json!([]));
}

#[test]
fn queue_list_flush_delete_with_a_deferred_message() {
    let dir = TestDir::new("cli-queue");
    // DNS sends remote.test to an MX where nothing listens: the message stays deferred, and
    // the next retry is an hour away.
    let mx = remote_mx_addr();
    let dns = Dnsmasq::start(
        &dir,
        &[DnsRecord::mx("remote.test", "mx.remote.test", 10), DnsRecord::a("mx.remote.test", mx.ip())],
    );
    let mut p = Posthaste::builder(&dir)
        .dns(&dns)
        .set("queue.retry_initial", "1h")
        .set("queue.retry_max", "4h")
        .build();
    p.add_domain("example.test");
    p.add_user("alice@example.test", PW);
    p.start();
    let sent = SmtpClient::new(p.submission())
        .starttls(p.ca())
        .tls_name(HOSTNAME)
        .login("alice@example.test", PW)
        .from("alice@example.test")
        .to("carol@remote.test")
        .subject("stuck")
        .send();
    assert!(sent.accepted(), "{sent:?}");
    p.wait_for_log(|l| l["status"] == "deferred" && l["rcpt"] == "carol@remote.test", T);

    let list = parse_json(&p.cmd(&["queue", "list", "--json"]));
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    let e = &entries[0];
    assert_eq!(keys(e), set(&["id", "sender", "recipients", "size", "created", "attempts", "next_attempt"]));
    assert_eq!(e["sender"], "alice@example.test");
    assert_eq!(e["attempts"], 1);
    let r = &e["recipients"][0];
    assert_eq!(keys(r), set(&["rcpt", "target", "status", "reply"]));
    assert_eq!(r["rcpt"], "carol@remote.test");
    assert_eq!(r["target"], "remote:carol@remote.test");
    assert_eq!(r["status"], "deferred");
    let id = e["id"].as_str().unwrap().to_owned();

    let human = p.cmd_ok(&["queue", "list"]).stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{id}  ")) && lines[0].contains("from alice@example.test"),
        "{human}"
    );
    assert!(lines[0].contains(" KiB") || lines[0].contains(" B "), "size in human units: {human}");
    assert!(lines[1].contains("carol@remote.test -> remote:carol@remote.test  deferred"), "{human}");
    assert!(!human.contains("Deferred"), "statuses are lowercase: {human}");

    // Flush with the daemon running: it is told.
    let out = p.cmd_ok(&["queue", "flush"]);
    assert_eq!(out.stdout, "1 message due now; the daemon was told to retry at once\n");
    p.wait_for_log(|l| l["status"] == "deferred" && l["rcpt"] == "carol@remote.test" && l["attempt"] == 2, T);

    // Without a daemon (a crash leaves a stale pidfile behind): the flush says so.
    p.kill9();
    let out = p.cmd_ok(&["queue", "flush", &id]);
    assert!(out.stdout.contains("1 message due now, but the daemon is not running"), "{}", out.all());
    assert!(out.stderr.contains("help: start it"), "{}", out.stderr);
    // A pidfile naming some other live process (here: this test) must not get SIGUSR1,
    // whose default action would kill it.
    std::fs::write(p.data_dir().join("posthaste.pid"), format!("{}\n", std::process::id())).unwrap();
    let out = p.cmd_ok(&["queue", "flush"]);
    assert!(out.stdout.contains("the daemon is not running"), "{}", out.all());

    assert_eq!(
        p.cmd_ok(&["queue", "delete", &id.to_uppercase()]).stdout,
        format!("deleted {} from the queue (not delivered, no bounce sent)\n", id.to_uppercase())
    );
    assert_eq!(parse_json(&p.cmd(&["queue", "list", "--json"])), json!([]));
    assert_fails(&p.cmd(&["queue", "delete", &id]), 1, &["no message"]);
}

// ---------------------------------------------------------------------------------------
// Usage, config, environment
// ---------------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2() {
    let dir = TestDir::new("cli-usage");
    let p = Posthaste::new(&dir);
    let cases: &[&[&str]] = &[
        &[],
        &["domain"],
        &["domain", "frob"],
        &["domain", "add"],
        &["domain", "add", "a.test", "b.test"],
        &["domain", "list", "--yaml"],
        &["user", "add"],
        &["user", "add", "a@example.test", "--quota"],
        &["user", "add", "a@example.test", "--password-file", "f", "--password-hash", "h"],
        &["alias", "add", "a@example.test"],
        &["queue", "delete"],
        &["frobnicate"],
        &["--bogus", "domain", "list"],
    ];
    for args in cases {
        let out = p.cmd(args);
        if args.len() == 1 && ["domain", "user", "alias", "queue"].contains(&args[0]) {
            // A command group alone shows its help (on stderr, as a usage error).
            assert_eq!(out.code(), Some(2), "{args:?}: {}", out.all());
            assert!(
                out.stderr.contains("Usage: posthaste") && out.stderr.contains("Commands:"),
                "{}",
                out.stderr
            );
        } else {
            assert_fails(&out, 2, &["For more information, try '--help'."]);
        }
        assert_eq!(out.stdout, "", "{args:?}");
    }
    // Help and version are not errors.
    let out = p.cmd_ok(&["user", "add", "--help"]);
    assert!(
        out.stdout.contains("--password-stdin") && out.stdout.contains("--quota <SIZE>"),
        "{}",
        out.stdout
    );
    assert!(p.cmd_ok(&["--version"]).stdout.starts_with("posthaste "));
}

#[test]
fn missing_or_invalid_config_file() {
    let dir = TestDir::new("cli-config");
    let out = bare_cmd(&["--config", "/nonexistent/posthaste.toml", "domain", "list"], None);
    assert_fails(
        &out,
        1,
        &[
            "error: the config file /nonexistent/posthaste.toml does not exist",
            "\nhelp: pass --config FILE or set POSTHASTE_CONFIG",
        ],
    );
    assert!(!out.stderr.contains("caused by"), "the cause is named once: {}", out.stderr);
    assert_eq!(out.stdout, "");

    let unreadable = dir.subdir("a-directory");
    let out = bare_cmd(&["--config", unreadable.to_str().unwrap(), "user", "list"], None);
    assert_fails(&out, 1, &["cannot be read", "help:"]);

    // Every problem at once.
    let bad = dir.write(
        "bad.toml",
        "hostname = \"nodot\"\ndata_dir = \"relative/dir\"\n[log]\nformat = \"xml\"\n[queue]\nconcurrency = 0\n",
    );
    let out = bare_cmd(&["--config", bad.to_str().unwrap(), "domain", "list"], None);
    assert_fails(
        &out,
        1,
        &[
            &format!("{} has 4 problem(s)", bad.display()),
            "hostname \"nodot\"",
            "data_dir \"relative/dir\" must be an absolute path",
            "log.format \"xml\"",
            "queue.concurrency",
        ],
    );
    assert!(!dir.join("relative").exists(), "nothing was created");

    let broken = dir.write("broken.toml", "hostname = \"mail.example.test\"\ndata_dir = \n");
    let out = bare_cmd(&["--config", broken.to_str().unwrap(), "queue", "list"], None);
    assert_fails(&out, 1, &[&broken.display().to_string(), "line 2"]);

    // The arguments are checked first: a usage error stays a usage error.
    let out = bare_cmd(&["--config", "/nonexistent/posthaste.toml", "domain", "frob"], None);
    assert_eq!(out.code(), Some(2), "{}", out.all());
}

#[test]
fn posthaste_config_environment_variable() {
    let dir = TestDir::new("cli-env");
    let p = Posthaste::new(&dir);
    p.add_domain("example.test");
    let out = bare_cmd(&["domain", "list"], Some(p.config_path()));
    out.assert_success();
    assert_eq!(out.stdout, "example.test\n");
    let out = bare_cmd(&["domain", "add", "env.test"], Some(p.config_path()));
    out.assert_success();
    assert_eq!(p.cmd_ok(&["domain", "list"]).stdout, "env.test\nexample.test\n");

    // --config wins over the variable.
    let other_dir = TestDir::new("cli-env-other");
    let other = Posthaste::new(&other_dir);
    let out = bare_cmd(
        &["--config", other.config_path().to_str().unwrap(), "domain", "list", "--json"],
        Some(p.config_path()),
    );
    assert_eq!(parse_json(&out), json!([]));

    // A variable naming a missing file says where the name came from.
    let out = bare_cmd(&["domain", "list"], Some(Path::new("/nonexistent/env.toml")));
    assert_fails(&out, 1, &["the config file /nonexistent/env.toml (from POSTHASTE_CONFIG) does not exist"]);
    // Neither: the default path, named in the help.
    let out = bare_cmd(&["--help"], None);
    assert!(
        out.stdout.contains("POSTHASTE_CONFIG") && out.stdout.contains("/etc/posthaste/posthaste.toml"),
        "{}",
        out.stdout
    );
}
