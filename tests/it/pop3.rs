//! POP3: the session driven in memory over a duplex pipe (real directory, real store, one
//! case per protocol edge), then the `posthaste serve` binary with real clients: Python
//! poplib over 995 and 110+STLS, curl, fetchmail.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::posthaste::address::Address;
use ::posthaste::config::{Config, TlsConfig};
use ::posthaste::directory::{password, Directory};
use ::posthaste::guard::Guard;
use ::posthaste::net::Stream;
use ::posthaste::pop3::{session::Session, Context};
use ::posthaste::store::{Flag, Store};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

// ---------------------------------------------------------------------------------------
// In-memory sessions
// ---------------------------------------------------------------------------------------

const PASSWORD: &str = "correct horse battery";
const ALICE: &str = "alice@example.test";

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    ctx: Arc<Context>,
    ca: rustls::pki_types::CertificateDer<'static>,
}

async fn env_with(tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    ::posthaste::tls::generate_self_signed("mail.example.test", &[], &cert, &key).unwrap();
    let text = format!("hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n", data.display());
    let mut config = Config::parse(&text, Path::new("test.toml")).unwrap();
    config.tls = Some(TlsConfig { cert: cert.clone(), key });
    config.pop3.auth_failure_delay = Duration::ZERO;
    tweak(&mut config);
    let directory = Directory::open(&config.directory_url()).await.unwrap();
    directory.add_domain("example.test").await.unwrap();
    let hash = password::hash(PASSWORD);
    for a in [ALICE, "bob@example.test"] {
        directory.add_account(&Address::parse(a).unwrap(), &hash, 0).await.unwrap();
    }
    let store = Store::new(config.mail_dir());
    let tls = ::posthaste::tls::load_acceptor(config.tls.as_ref().unwrap()).unwrap();
    let ca = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice()).next().unwrap().unwrap();
    let ctx =
        Arc::new(Context::new(Arc::new(config), directory, store.clone(), Some(tls), Arc::new(Guard::off())));
    Env { _dir: dir, store, ctx, ca }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

fn alice() -> Address {
    Address::parse(ALICE).unwrap()
}

impl Env {
    fn deliver(&self, msg: &str) -> u32 {
        self.store.deliver(&alice(), "INBOX", msg.as_bytes()).unwrap().uid
    }
    /// Number of message files in alice's INBOX.
    fn count(&self) -> usize {
        maildir_files(&self.store.account_dir(&alice())).len()
    }
    fn flags(&self) -> Vec<Vec<Flag>> {
        self.store
            .open_mailbox(&alice(), "INBOX", false)
            .unwrap()
            .messages()
            .into_iter()
            .map(|m| m.flags)
            .collect()
    }
}

struct Client {
    io: BufReader<Box<dyn Stream>>,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Client {
    /// `tls`: the session starts encrypted (as on port 995; the test keeps the pipe plain).
    async fn connect(env: &Env, tls: bool) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let session =
            Session::new(env.ctx.clone(), Box::new(server), "192.0.2.7:40000".parse().unwrap(), tls);
        tokio::spawn(session.run());
        let mut c = Client { io: BufReader::new(Box::new(client)), ca: env.ca.clone() };
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK "), "{greeting}");
        c
    }

    /// Logged in as alice on a session that counts as encrypted.
    async fn login(env: &Env) -> Client {
        let mut c = Client::connect(env, true).await;
        c.cmd(&format!("USER {ALICE}"), "+OK").await;
        c.cmd(&format!("PASS {PASSWORD}"), "+OK").await;
        c
    }

    async fn send(&mut self, raw: &str) {
        self.io.get_mut().write_all(raw.as_bytes()).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// One line without CRLF; "" at EOF. Fails the test after 10 s (a hang).
    async fn line(&mut self) -> String {
        let mut raw = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_until(b'\n', &mut raw))
            .await
            .expect("the server did not answer within 10 s")
            .unwrap();
        if n == 0 {
            return String::new();
        }
        assert!(raw.ends_with(b"\r\n"), "line without CRLF: {raw:?}");
        raw.truncate(raw.len() - 2);
        String::from_utf8(raw).unwrap()
    }

    /// Send a command, check the first reply line starts with `expect`.
    async fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        let reply = self.line().await;
        assert!(reply.starts_with(expect), "{line:?}: expected {expect:?}, got {reply:?}");
        reply
    }

    /// The lines of a multi-line body as sent (still dot-stuffed), up to the "." line.
    async fn body(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            if l == "." {
                return out;
            }
            out.push(l);
        }
    }

    /// A multi-line command: first line checked, the body returned.
    async fn multi(&mut self, line: &str) -> Vec<String> {
        self.cmd(line, "+OK").await;
        self.body().await
    }

    /// RETR n: (the size announced in +OK, the message with stuffing undone, CRLF ends).
    async fn retr(&mut self, n: u32) -> (u64, String) {
        let first = self.cmd(&format!("RETR {n}"), "+OK").await;
        let size = first.split(' ').nth(1).unwrap().parse().unwrap();
        let text = self
            .body()
            .await
            .into_iter()
            .map(|l| format!("{}\r\n", l.strip_prefix('.').unwrap_or(&l)))
            .collect();
        (size, text)
    }

    async fn capa(&mut self) -> Vec<String> {
        self.multi("CAPA").await
    }

    async fn stls(self) -> Client {
        let mut c = self;
        c.cmd("STLS", "+OK").await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.ca.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("mail.example.test").unwrap();
        let tls = connector.connect(name, c.io.into_inner()).await.unwrap();
        Client { io: BufReader::new(Box::new(tls)), ca: c.ca }
    }

    async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// A message with CRLF line ends, lines starting with dots, a lone "." line.
const DOTTY: &str = "Subject: dots\r\nFrom: a@remote.test\r\n\r\nfirst\r\n.\r\n..two\r\n.three\r\nlast\r\n";

#[tokio::test]
async fn before_tls_capa_offers_stls_only_and_logins_are_refused() {
    let env = env().await;
    let mut c = Client::connect(&env, false).await;
    let caps = c.capa().await;
    for want in ["STLS", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"] {
        assert!(caps.iter().any(|l| l == want), "{want} missing: {caps:?}");
    }
    assert!(!caps.iter().any(|l| l == "USER" || l.starts_with("SASL")), "login offered in clear: {caps:?}");
    c.cmd(&format!("USER {ALICE}"), "-ERR [AUTH]").await;
    let refusal = c.cmd(&format!("PASS {PASSWORD}"), "-ERR [AUTH]").await;
    assert!(refusal.contains("STLS"), "{refusal}");
    c.cmd(&format!("AUTH PLAIN {}", plain(ALICE, PASSWORD)), "-ERR [AUTH]").await;
    c.cmd("STAT", "-ERR").await;
    c.cmd("QUIT", "+OK").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn stls_then_capa_offers_user_and_sasl_and_login_works() {
    let env = env().await;
    env.deliver("Subject: one\r\n\r\nhello\r\n");
    let c = Client::connect(&env, false).await;
    let mut c = c.stls().await;
    let caps = c.capa().await;
    assert!(caps.iter().any(|l| l == "USER"), "{caps:?}");
    assert!(caps.iter().any(|l| l == "SASL PLAIN"), "{caps:?}");
    assert!(!caps.iter().any(|l| l == "STLS"), "STLS offered again under TLS: {caps:?}");
    c.cmd("STLS", "-ERR").await;
    c.cmd(&format!("USER {ALICE}"), "+OK").await;
    c.cmd(&format!("PASS {PASSWORD}"), "+OK").await;
    c.cmd("STAT", "+OK 1 ").await;
    // After login: no login capabilities, no STLS (RFC 2595 §4).
    let caps = c.capa().await;
    assert!(!caps.iter().any(|l| l == "USER" || l == "STLS" || l.starts_with("SASL")), "{caps:?}");
    c.cmd("STLS", "-ERR").await;
    c.cmd("QUIT", "+OK").await;
}

#[tokio::test]
async fn stls_with_pipelined_plaintext_closes_the_connection() {
    let env = env().await;
    let mut c = Client::connect(&env, false).await;
    c.send("STLS\r\nUSER injected\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.closed().await, "commands injected before the TLS handshake must not run");
}

#[tokio::test]
async fn plaintext_login_when_the_config_allows_it() {
    let env = env_with(|c| c.pop3.allow_plaintext_auth = true).await;
    let mut c = Client::connect(&env, false).await;
    let caps = c.capa().await;
    assert!(caps.iter().any(|l| l == "USER") && caps.iter().any(|l| l == "STLS"), "{caps:?}");
    c.cmd(&format!("USER {ALICE}"), "+OK").await;
    c.cmd(&format!("PASS {PASSWORD}"), "+OK").await;
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let env = env().await;
    // With the initial response (RFC 5034 §4).
    let mut c = Client::connect(&env, true).await;
    c.cmd(&format!("AUTH PLAIN {}", plain(ALICE, PASSWORD)), "+OK").await;
    c.cmd("QUIT", "+OK").await;
    // Without: "+ " then the response on its own line.
    let mut c = Client::connect(&env, true).await;
    c.cmd("AUTH PLAIN", "+ ").await;
    c.cmd(&plain(ALICE, PASSWORD), "+OK").await;
    c.cmd("QUIT", "+OK").await;
    // Cancelled, bad base64, wrong password, unknown mechanism, the mechanism list.
    let mut c = Client::connect(&env, true).await;
    c.cmd("AUTH PLAIN", "+ ").await;
    c.cmd("*", "-ERR").await;
    c.cmd("AUTH PLAIN !!!notbase64", "-ERR").await;
    c.cmd(&format!("AUTH PLAIN {}", plain(ALICE, "wrong")), "-ERR [AUTH]").await;
    c.cmd("AUTH PLAIN =", "-ERR").await;
    c.cmd("AUTH CRAM-MD5", "-ERR").await;
    assert_eq!(c.multi("AUTH").await, vec!["PLAIN"]);
    c.cmd(&format!("AUTH PLAIN {}", plain("bob@example.test", PASSWORD)), "+OK").await;
}

#[tokio::test]
async fn user_pass_sequence_and_wrong_password() {
    let env = env().await;
    let mut c = Client::connect(&env, true).await;
    c.cmd(&format!("PASS {PASSWORD}"), "-ERR").await; // no USER yet
    c.cmd(&format!("USER {ALICE}"), "+OK").await;
    c.cmd("PASS wrong", "-ERR [AUTH]").await;
    // RFC 1939 §7: after a failed PASS, USER must be given again.
    c.cmd(&format!("PASS {PASSWORD}"), "-ERR").await;
    c.cmd("USER nobody@example.test", "+OK").await; // no hint whether the user exists
    c.cmd(&format!("PASS {PASSWORD}"), "-ERR [AUTH]").await;
    c.cmd("APOP alice 0123456789abcdef", "-ERR").await;
    c.cmd(&format!("USER {ALICE}"), "+OK").await;
    c.cmd(&format!("PASS {PASSWORD}"), "+OK").await;
}

#[tokio::test]
async fn commands_in_the_wrong_state() {
    let env = env().await;
    env.deliver("Subject: x\r\n\r\nbody\r\n");
    let mut c = Client::connect(&env, true).await;
    for cmd in ["STAT", "LIST", "UIDL", "RETR 1", "TOP 1 0", "DELE 1", "RSET", "NOOP"] {
        c.cmd(cmd, "-ERR").await;
    }
    let mut c = Client::login(&env).await;
    for cmd in ["USER x", "PASS y", "AUTH PLAIN", "STLS", "APOP a b"] {
        c.cmd(cmd, "-ERR").await;
    }
    c.cmd("NOOP", "+OK").await;
}

#[tokio::test]
async fn stat_list_uidl_retr_with_crlf_sizes() {
    let env = env().await;
    // Stored with LF only and no final line end (another tool wrote it): sent with CRLF.
    let lf_only = "Subject: lf\nFrom: b@remote.test\n\nline one\nno newline at the end";
    env.deliver(DOTTY);
    env.deliver(lf_only);
    let mut c = Client::login(&env).await;
    let (s1, m1) = c.retr(1).await;
    let (s2, m2) = c.retr(2).await;
    assert_eq!(m1, DOTTY);
    assert_eq!(m2, "Subject: lf\r\nFrom: b@remote.test\r\n\r\nline one\r\nno newline at the end\r\n");
    assert_eq!((s1, s2), (m1.len() as u64, m2.len() as u64), "sizes are octets with CRLF");
    c.cmd("STAT", &format!("+OK 2 {}", s1 + s2)).await;
    assert_eq!(c.multi("LIST").await, vec![format!("1 {s1}"), format!("2 {s2}")]);
    c.cmd("LIST 2", &format!("+OK 2 {s2}")).await;
    let uidl = c.multi("UIDL").await;
    assert_eq!(uidl.len(), 2);
    let (u1, u2) = (uidl[0].split_once(' ').unwrap().1, uidl[1].split_once(' ').unwrap().1);
    assert_ne!(u1, u2);
    for u in [u1, u2] {
        // RFC 1939 §7: 1 to 70 characters in 0x21..0x7E.
        assert!(!u.is_empty() && u.len() <= 70 && u.bytes().all(|b| (0x21..0x7f).contains(&b)), "{u}");
    }
    c.cmd("UIDL 1", &format!("+OK 1 {u1}")).await;
    c.cmd("QUIT", "+OK").await;
}

#[tokio::test]
async fn literal_dot_lines_are_byte_stuffed() {
    let env = env().await;
    env.deliver(DOTTY);
    let mut c = Client::login(&env).await;
    c.cmd("RETR 1", "+OK").await;
    let raw = c.body().await;
    assert_eq!(raw, ["Subject: dots", "From: a@remote.test", "", "first", "..", "...two", "..three", "last"]);
}

#[tokio::test]
async fn top_sends_headers_and_n_body_lines() {
    let env = env().await;
    env.deliver(DOTTY);
    let mut c = Client::login(&env).await;
    assert_eq!(c.multi("TOP 1 0").await, ["Subject: dots", "From: a@remote.test", ""]);
    assert_eq!(c.multi("TOP 1 2").await, ["Subject: dots", "From: a@remote.test", "", "first", ".."]);
    assert_eq!(c.multi("TOP 1 100").await.len(), 8);
    c.cmd("TOP 2 0", "-ERR").await;
    c.cmd("TOP 1", "-ERR").await;
    c.cmd("TOP 1 -1", "-ERR").await;
    // TOP does not count as reading the message.
    c.cmd("QUIT", "+OK").await;
    assert!(!env.flags()[0].contains(&Flag::Seen));
}

#[tokio::test]
async fn dele_then_rset_deletes_nothing() {
    let env = env().await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    env.deliver("Subject: b\r\n\r\nb\r\n");
    let mut c = Client::login(&env).await;
    c.cmd("DELE 1", "+OK").await;
    c.cmd("DELE 1", "-ERR").await;
    c.cmd("RETR 1", "-ERR").await;
    c.cmd("LIST 1", "-ERR").await;
    c.cmd("STAT", "+OK 1 ").await;
    assert_eq!(c.multi("LIST").await.len(), 1);
    assert!(c.multi("UIDL").await[0].starts_with("2 "), "message 2 keeps its number");
    c.cmd("RSET", "+OK").await;
    c.cmd("STAT", "+OK 2 ").await;
    c.cmd("QUIT", "+OK").await;
    assert_eq!(env.count(), 2);
}

#[tokio::test]
async fn dele_then_quit_removes_the_messages() {
    let env = env().await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    env.deliver("Subject: b\r\n\r\nb\r\n");
    env.deliver("Subject: c\r\n\r\nc\r\n");
    let mut c = Client::login(&env).await;
    c.cmd("DELE 1", "+OK").await;
    c.cmd("DELE 3", "+OK").await;
    assert_eq!(env.count(), 3, "nothing is removed before UPDATE");
    c.cmd("QUIT", "+OK").await;
    assert!(c.closed().await);
    assert_eq!(env.count(), 1);
    let mut c = Client::login(&env).await;
    c.cmd("STAT", "+OK 1 ").await;
    let (_, m) = c.retr(1).await;
    assert!(m.starts_with("Subject: b\r\n"), "{m}");
}

/// Log in as alice, retrying while the previous session still holds the maildrop lock (its
/// task notices the dropped connection asynchronously).
async fn login_when_unlocked(env: &Env) -> Client {
    for _ in 0..100 {
        let mut c = Client::connect(env, true).await;
        c.cmd(&format!("USER {ALICE}"), "+OK").await;
        c.send(&format!("PASS {PASSWORD}\r\n")).await;
        let reply = c.line().await;
        if reply.starts_with("+OK") {
            return c;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the maildrop lock was never released");
}

#[tokio::test]
async fn dele_then_disconnect_deletes_nothing() {
    let env = env().await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    env.deliver("Subject: b\r\n\r\nb\r\n");
    let mut c = Client::login(&env).await;
    c.cmd("DELE 1", "+OK").await;
    c.cmd("DELE 2", "+OK").await;
    c.cmd("RETR 2", "-ERR").await;
    drop(c);
    let mut c = login_when_unlocked(&env).await;
    c.cmd("STAT", "+OK 2 ").await;
    assert_eq!(env.count(), 2);
}

#[tokio::test]
async fn invalid_message_numbers() {
    // More than the default max_errors: each refusal counts.
    let env = env_with(|c| c.pop3.max_errors = 100).await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    let mut c = Client::login(&env).await;
    for cmd in [
        "LIST 0",
        "LIST 2",
        "LIST -1",
        "LIST x",
        "LIST 4294967296",
        "UIDL 2",
        "RETR 0",
        "RETR",
        "RETR 1 2",
        "DELE 99",
        "TOP 0 1",
        "TOP x 1",
        "LIST 1 2",
    ] {
        c.cmd(cmd, "-ERR").await;
    }
    c.cmd("LIST 1", "+OK 1 ").await;
}

#[tokio::test]
async fn second_session_gets_in_use_until_the_first_quits() {
    let env = env().await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    let mut first = Client::login(&env).await;
    let mut second = Client::connect(&env, true).await;
    second.cmd(&format!("AUTH PLAIN {}", plain(ALICE, PASSWORD)), "-ERR [IN-USE]").await;
    // Still in AUTHORIZATION: another account works on the same connection.
    second.cmd(&format!("AUTH PLAIN {}", plain("bob@example.test", PASSWORD)), "+OK").await;
    first.cmd("QUIT", "+OK").await;
    assert!(first.closed().await);
    let mut third = Client::connect(&env, true).await;
    third.cmd(&format!("AUTH PLAIN {}", plain(ALICE, PASSWORD)), "+OK").await;
    // Meanwhile other readers of the INBOX are not locked out (IMAP uses the index lock).
    env.store.open_mailbox(&alice(), "INBOX", false).unwrap();
}

#[tokio::test]
async fn retr_marks_seen_at_quit_but_not_after_rset_or_disconnect() {
    let env = env().await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    env.deliver("Subject: b\r\n\r\nb\r\n");
    let mut c = Client::login(&env).await;
    c.retr(1).await;
    drop(c);
    let mut c = login_when_unlocked(&env).await;
    assert!(env.flags().iter().all(|f| !f.contains(&Flag::Seen)), "disconnect changed flags");
    c.retr(1).await;
    c.cmd("RSET", "+OK").await;
    c.retr(2).await;
    c.cmd("QUIT", "+OK").await;
    assert!(c.closed().await);
    assert_eq!(env.flags(), vec![vec![], vec![Flag::Seen]]);
}

#[tokio::test]
async fn numbering_is_stable_while_others_change_the_mailbox() {
    let env = env().await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    let uid_b = env.deliver("Subject: b\r\n\r\nb\r\n");
    env.deliver("Subject: c\r\n\r\nc\r\n");
    let mut c = Client::login(&env).await;
    let uidl_before = c.multi("UIDL").await;
    // Another client (IMAP, later) expunges message 2; a new message arrives.
    let mut other = env.store.open_mailbox(&alice(), "INBOX", false).unwrap();
    other.expunge(&[uid_b]).unwrap();
    env.deliver("Subject: d\r\n\r\nd\r\n");
    assert_eq!(c.multi("UIDL").await, uidl_before, "the numbering of the session does not change");
    c.cmd("STAT", "+OK 3 ").await;
    c.cmd("RETR 2", "-ERR").await;
    c.cmd("TOP 2 0", "-ERR").await;
    let (_, m3) = c.retr(3).await;
    assert!(m3.starts_with("Subject: c"), "{m3}");
    c.cmd("DELE 2", "+OK").await;
    c.cmd("DELE 3", "+OK").await;
    c.cmd("QUIT", "+OK").await;
    assert!(c.closed().await);
    let mut c = Client::login(&env).await;
    c.cmd("STAT", "+OK 2 ").await;
    assert!(c.retr(2).await.1.starts_with("Subject: d"));
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let env = env().await;
    env.deliver(DOTTY);
    env.deliver("Subject: b\r\n\r\nb\r\n");
    let mut c = Client::connect(&env, true).await;
    c.send(&format!(
        "USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 2\r\nNOOP\r\nBOGUS\r\nQUIT\r\n"
    ))
    .await;
    assert!(c.line().await.starts_with("+OK")); // USER
    assert!(c.line().await.starts_with("+OK")); // PASS
    assert!(c.line().await.starts_with("+OK 2 ")); // STAT
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.body().await.len(), 2); // LIST
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.body().await.len(), 8); // RETR 1
    assert!(c.line().await.starts_with("+OK")); // DELE
    assert!(c.line().await.starts_with("+OK")); // NOOP
    assert!(c.line().await.starts_with("-ERR")); // BOGUS
    assert!(c.line().await.starts_with("+OK")); // QUIT
    assert!(c.closed().await);
    assert_eq!(env.count(), 1);
}

#[tokio::test]
async fn overlong_lines_get_err_and_too_many_errors_close() {
    let env = env_with(|c| c.pop3.max_errors = 3).await;
    let mut c = Client::connect(&env, true).await;
    c.cmd(&format!("USER {}", "x".repeat(10_000)), "-ERR").await;
    c.cmd("NOOP", "-ERR").await; // not logged in
    c.send("BOGUS\r\n").await;
    assert!(c.line().await.starts_with("-ERR"));
    let bye = c.line().await;
    assert!(bye.starts_with("-ERR") && bye.contains("Too many errors"), "{bye}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn idle_session_is_logged_out_without_update() {
    let env = env_with(|c| c.pop3.timeout = Duration::from_secs(1)).await;
    env.deliver("Subject: a\r\n\r\na\r\n");
    let mut c = Client::login(&env).await;
    c.cmd("DELE 1", "+OK").await;
    let bye = c.line().await;
    assert!(bye.starts_with("-ERR") && bye.contains("Autologout"), "{bye}");
    assert!(c.closed().await);
    assert_eq!(env.count(), 1, "the autologout must not enter UPDATE (RFC 1939 §3)");
}

#[tokio::test]
async fn an_account_without_mail_yet_has_an_empty_maildrop() {
    let env = env().await;
    let mut c = Client::login(&env).await;
    c.cmd("STAT", "+OK 0 0").await;
    assert!(c.multi("LIST").await.is_empty());
    assert!(c.multi("UIDL").await.is_empty());
    c.cmd("RETR 1", "-ERR").await;
    c.cmd("QUIT", "+OK").await;
}

#[tokio::test]
async fn garbage_input_gets_replies_never_a_crash_or_hang() {
    use rand::{Rng, SeedableRng};
    let env = env_with(|c| c.pop3.max_errors = 1_000_000).await;
    env.deliver(DOTTY);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9093);
    let verbs =
        ["USER", "PASS", "LIST", "UIDL", "RETR", "TOP", "DELE", "STAT", "AUTH", "CAPA", "NOOP", "RSET"];
    for round in 0..10 {
        let mut c =
            if round % 2 == 0 { Client::connect(&env, true).await } else { Client::login(&env).await };
        for _ in 0..40 {
            let mut line: Vec<u8> = Vec::new();
            if rng.gen_bool(0.5) {
                line.extend_from_slice(verbs[rng.gen_range(0..verbs.len())].as_bytes());
                line.push(b' ');
            }
            for _ in 0..rng.gen_range(0..60) {
                // Anything but CR, LF and "*" (a lone "*" would just cancel an AUTH).
                let b: u8 = rng.gen_range(0..=255);
                if b != b'\r' && b != b'\n' {
                    line.push(b);
                }
            }
            if line.starts_with(b"AUTH") || line.starts_with(b"PASS") || line.starts_with(b"USER") {
                // Keep the session's state simple: no SASL continuations, no logins.
                line = b"NOOP x".to_vec();
            }
            line.extend_from_slice(b"\r\n");
            c.io.get_mut().write_all(&line).await.unwrap();
            let first = c.line().await;
            assert!(first.starts_with("+OK") || first.starts_with("-ERR"), "{line:?} -> {first:?}");
            if first.starts_with("+OK")
                && (line.starts_with(b"LIST")
                    || line.starts_with(b"UIDL")
                    || line.starts_with(b"CAPA")
                    || line.starts_with(b"RETR")
                    || line.starts_with(b"TOP"))
            {
                // A multi-line answer (or a single-line LIST/UIDL n): read to the end if it is one.
                let l = String::from_utf8_lossy(&line).into_owned();
                let args = l.split_whitespace().count();
                let single = (l.starts_with("LIST") || l.starts_with("UIDL")) && args == 2;
                if !single {
                    c.body().await;
                }
            }
        }
        c.cmd("NOOP", "").await;
    }
}

// ---------------------------------------------------------------------------------------
// The binary with real clients
// ---------------------------------------------------------------------------------------

const T: Duration = Duration::from_secs(30);
const PW: &str = "Pop-Secret-Passw0rd!";

fn server(dir: &TestDir) -> Posthaste {
    let mut p = Posthaste::builder(dir).listener("pop3").listener("pop3s").build();
    p.add_domain("example.test");
    p.add_user(ALICE, PW);
    p.start();
    p
}

/// Mail for alice through the MX; waits until it is in the Maildir.
fn deliver(p: &Posthaste, subject: &str, body: &str) {
    let before = p.maildir_messages(ALICE).len();
    let t = SmtpClient::new(p.smtp()).from("sender@remote.test").to(ALICE).subject(subject).body(body).send();
    assert!(t.accepted(), "{}", t.raw);
    p.wait_for_maildir_count(ALICE, before + 1, T);
}

/// Python poplib: connects (`ssl`: port 995; `stls`: 110 then STLS; `plain`), logs in and
/// does `action`: `read` (STAT, LIST, UIDL, RETR each), `delete` (read, then DELE each),
/// `none`. Prints JSON.
const POPLIB: &str = r#"
import json, poplib, ssl, sys
host, port, mode, ca, user, pw, action = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
out = {}
try:
    if mode == "ssl":
        p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=20)
    else:
        p = poplib.POP3(host, int(port), timeout=20)
        out["capa_plain"] = sorted(p.capa().keys())
        if mode == "stls":
            out["stls"] = p.stls(context=ctx).decode()
    out["capa"] = sorted(p.capa().keys())
    p.user(user)
    out["pass"] = p.pass_(pw).decode()
    if action in ("read", "delete"):
        count, size = p.stat()
        out["stat"] = [count, size]
        out["list"] = [l.decode() for l in p.list()[1]]
        out["uidl"] = [l.decode() for l in p.uidl()[1]]
        out["messages"] = []
        for i in range(1, count + 1):
            resp, lines, octets = p.retr(i)
            out["messages"].append({"octets": octets, "text": "\r\n".join(l.decode() for l in lines) + "\r\n"})
            if action == "delete":
                p.dele(i)
    out["quit"] = p.quit().decode()
except poplib.error_proto as e:
    out["error"] = e.args[0].decode(errors="replace")
print(json.dumps(out))
"#;

fn poplib(p: &Posthaste, mode: &str, pw: &str, action: &str) -> serde_json::Value {
    let listener = if mode == "ssl" { "pop3s" } else { "pop3" };
    let addr = p.addr(listener);
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let ca = p.ca().display().to_string();
    let out = python(POPLIB, &[&host, &port, mode, &ca, ALICE, pw, action]);
    out.assert_success();
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()))
}

fn uidls(v: &serde_json::Value) -> Vec<String> {
    v["uidl"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect()
}

#[test]
fn poplib_over_pop3s_reads_and_deletes() {
    let dir = TestDir::new("pop3-poplib-995");
    let p = server(&dir);
    deliver(&p, "first", "hello\n.dot line\n..two dots\n.");
    deliver(&p, "second", "world");
    let v = poplib(&p, "ssl", PW, "read");
    assert!(v.get("error").is_none(), "{v}");
    assert_eq!(v["stat"][0], 2);
    let msgs = v["messages"].as_array().unwrap();
    let total: u64 = msgs.iter().map(|m| m["octets"].as_u64().unwrap()).sum();
    assert_eq!(v["stat"][1].as_u64().unwrap(), total, "STAT size = octets received: {v}");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(v["list"][i], format!("{} {}", i + 1, m["octets"]), "{v}");
    }
    let first = msgs[0]["text"].as_str().unwrap();
    assert!(first.contains("Subject: first\r\n"), "{first}");
    assert!(first.contains("\r\n.dot line\r\n..two dots\r\n"), "dot lines survive: {first}");
    assert_eq!(p.maildir_messages(ALICE).len(), 2, "read without DELE keeps the mail");
    let v = poplib(&p, "ssl", PW, "delete");
    assert!(v["quit"].as_str().unwrap().starts_with("+OK"), "{v}");
    assert_eq!(p.maildir_messages(ALICE).len(), 0);
    p.wait_for_log(|l| l["event"] == "pop3_logout" && l["deleted"] == 2, T);
}

#[test]
fn poplib_over_110_with_stls() {
    let dir = TestDir::new("pop3-poplib-stls");
    let p = server(&dir);
    deliver(&p, "over stls", "body");
    let v = poplib(&p, "stls", PW, "read");
    assert!(v.get("error").is_none(), "{v}");
    let before: Vec<&str> = v["capa_plain"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(before.contains(&"STLS") && !before.contains(&"USER") && !before.contains(&"SASL"), "{v}");
    let after: Vec<&str> = v["capa"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(after.contains(&"USER") && after.contains(&"SASL") && !after.contains(&"STLS"), "{v}");
    assert_eq!(v["stat"][0], 1);
    // Without STLS the login is refused with [AUTH].
    let v = poplib(&p, "plain", PW, "none");
    assert!(v["error"].as_str().unwrap().starts_with("-ERR [AUTH]"), "{v}");
}

#[test]
fn wrong_password_is_refused_and_logged() {
    let dir = TestDir::new("pop3-auth-failure");
    let p = server(&dir);
    let v = poplib(&p, "ssl", "not-the-password", "none");
    assert!(v["error"].as_str().unwrap().starts_with("-ERR [AUTH]"), "{v}");
    let failure = p.wait_for_log(|l| l["event"] == "auth_failure" && l["protocol"] == "pop3", T);
    assert_eq!(failure["client"], "127.0.0.1");
    assert_eq!(failure["user"], ALICE);
    let log = std::fs::read_to_string(dir.join("posthaste.log")).unwrap();
    assert!(!log.contains("not-the-password"), "password logged");
    assert_eq!(log.matches("\"auth_failure\"").count(), 1, "one line per failure");
}

#[test]
fn curl_lists_and_retrieves_over_pop3s_and_stls() {
    let dir = TestDir::new("pop3-curl");
    let p = server(&dir);
    deliver(&p, "for curl", "curl body line");
    let curl = require("curl", "curl");
    let ca = p.ca().display().to_string();
    let user = format!("{ALICE}:{PW}");
    let run_curl = |url: String, extra: &[&str]| {
        let mut cmd = std::process::Command::new(&curl);
        cmd.args(["-sS", "--max-time", "20", "--cacert", &ca, "--user", &user]).args(extra).arg(url);
        let out = run(cmd, None);
        out.assert_success();
        out.stdout
    };
    let s = p.addr("pop3s");
    let list = run_curl(format!("pop3s://{s}/"), &[]);
    let size = p.maildir_messages(ALICE).len();
    assert_eq!(size, 1);
    assert!(list.starts_with("1 "), "{list}");
    let msg = run_curl(format!("pop3s://{s}/1"), &[]);
    assert!(msg.contains("Subject: for curl") && msg.contains("curl body line"), "{msg}");
    let octets: usize = list.trim().split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(msg.len(), octets, "LIST size matches the bytes curl received");
    // Port 110 with STLS required.
    let plain = p.addr("pop3");
    let msg = run_curl(format!("pop3://{plain}/1"), &["--ssl-reqd"]);
    assert!(msg.contains("Subject: for curl"), "{msg}");
}

#[test]
fn fetchmail_downloads_the_inbox() {
    let dir = TestDir::new("pop3-fetchmail");
    let p = server(&dir);
    deliver(&p, "fetch one", "first body");
    deliver(&p, "fetch two", ".leading dot\nsecond body");
    let fetchmail = require("fetchmail", "fetchmail");
    let out_file = dir.join("fetched.mbox");
    let s = p.addr("pop3s");
    let rc = format!(
        "set no syslog\n\
         poll {ip} with proto POP3 port {port}\n  \
         user \"{ALICE}\" there with password \"{PW}\" is \"{local}\" here\n  \
         options ssl sslcertck sslcertfile \"{ca}\" sslcommonname \"mail.example.test\" fetchall\n  \
         mda \"cat >> {out}\"\n",
        ip = s.ip(),
        port = s.port(),
        local = std::env::var("USER").unwrap_or_else(|_| "root".into()),
        ca = p.ca().display(),
        out = out_file.display(),
    );
    let rc_path = dir.write("fetchmailrc", rc);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = dir.subdir("fetchmail-home");
    let mut cmd = std::process::Command::new(fetchmail);
    cmd.env("FETCHMAILHOME", &home).env("HOME", &home).args(["-v", "-f"]).arg(&rc_path);
    let out = run(cmd, None);
    out.assert_success();
    let got = std::fs::read_to_string(&out_file).unwrap_or_else(|e| panic!("{e}\n{}", out.all()));
    assert!(got.contains("Subject: fetch one") && got.contains("first body"), "{got}");
    assert!(got.contains("Subject: fetch two") && got.contains("\n.leading dot"), "{got}");
    // fetchmail deletes what it fetched (no `keep`): DELE + QUIT applied.
    assert_eq!(p.maildir_messages(ALICE).len(), 0, "{}", out.all());
}

#[test]
fn uidl_is_stable_across_restart_and_index_rebuild() {
    let dir = TestDir::new("pop3-uidl-restart");
    let mut p = server(&dir);
    deliver(&p, "one", "1");
    deliver(&p, "two", "2");
    let before = uidls(&poplib(&p, "ssl", PW, "read"));
    assert_eq!(before.len(), 2);
    p.restart();
    assert_eq!(uidls(&poplib(&p, "ssl", PW, "read")), before);
    // Even when the UID index is lost and rebuilt (new UIDVALIDITY), UIDLs stay.
    p.stop();
    std::fs::remove_file(p.maildir(ALICE).join("posthaste-uidlist")).unwrap();
    p.start();
    assert_eq!(uidls(&poplib(&p, "ssl", PW, "read")), before);
}
