//! The SMTP session driven in memory over a duplex pipe, with the real directory (SQLite),
//! the real store and the real queue in a temp dir: one case per protocol edge.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use posthaste::address::Address;
use posthaste::config::{Config, TlsConfig};
use posthaste::directory::{password, Directory};
use posthaste::guard::Guard;
use posthaste::net::Stream;
use posthaste::queue::Queue;
use posthaste::smtp::{session::Session, Context, Profile};
use posthaste::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

struct Env {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    ctx: Arc<Context>,
    ca: rustls::pki_types::CertificateDer<'static>,
}

const PASSWORD: &str = "correct horse battery";

async fn env_with(tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    posthaste::tls::generate_self_signed("mail.example.test", &[], &cert, &key).unwrap();
    let text = format!("hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n", data.display());
    let mut config = Config::parse(&text, Path::new("test.toml")).unwrap();
    config.tls = Some(TlsConfig { cert: cert.clone(), key });
    tweak(&mut config);
    let directory = Directory::open(&config.directory_url()).await.unwrap();
    directory.add_domain("example.test").await.unwrap();
    let hash = password::hash(PASSWORD);
    for a in ["alice@example.test", "bob@example.test", "postmaster@example.test"] {
        directory.add_account(&Address::parse(a).unwrap(), &hash, 0).await.unwrap();
    }
    directory.add_alias("info@example.test", &Address::parse("alice@example.test").unwrap()).await.unwrap();
    let store = Store::new(config.mail_dir());
    let queue = Queue::open(&config, store, directory.clone()).unwrap();
    let tls = posthaste::tls::load_acceptor(config.tls.as_ref().unwrap()).unwrap();
    let ca = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice()).next().unwrap().unwrap();
    let ctx = Arc::new(Context::new(Arc::new(config), directory, queue, Some(tls), Arc::new(Guard::off())));
    Env { _dir: dir, data, ctx, ca }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

struct Client {
    io: BufReader<Box<dyn Stream>>,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Client {
    async fn connect(env: &Env, profile: Profile) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let tls = profile == Profile::Submissions;
        let session =
            Session::new(env.ctx.clone(), profile, Box::new(server), "192.0.2.7:40000".parse().unwrap(), tls);
        tokio::spawn(session.run());
        let mut c = Client { io: BufReader::new(Box::new(client)), ca: env.ca.clone() };
        let (code, _) = c.reply().await;
        assert_eq!(code, 220);
        c
    }

    async fn send(&mut self, raw: &str) {
        self.io.get_mut().write_all(raw.as_bytes()).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// One complete (possibly multi-line) reply: its code and all its text.
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await.unwrap() == 0 {
                return (0, text);
            }
            let code: u16 = line[..3].parse().unwrap_or_else(|_| panic!("bad reply line {line:?}"));
            text.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return (code, text);
            }
        }
    }

    /// Send a command and check the reply starts with `expect` (e.g. "250" or "550 5.1.1").
    async fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        let (_, text) = self.reply().await;
        assert!(text.starts_with(expect), "{line:?}: expected {expect:?}, got {text:?}");
        text
    }

    async fn starttls(self) -> Client {
        let mut c = self;
        c.cmd("STARTTLS", "220 2.0.0").await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.ca.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("mail.example.test").unwrap();
        let inner = c.io.into_inner();
        let tls = connector.connect(name, inner).await.unwrap();
        Client { io: BufReader::new(Box::new(tls)), ca: c.ca }
    }

    async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.io.read_line(&mut line).await, Ok(0) | Err(_))
    }
}

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// The messages in an account's INBOX new/ (or cur/) directory.
fn inbox(env: &Env, addr: &str) -> Vec<String> {
    let a = Address::parse(addr).unwrap();
    let base = env.data.join("mail").join(a.domain()).join(a.local());
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(base.join(sub)) {
            for e in rd {
                out.push(std::fs::read_to_string(e.unwrap().path()).unwrap());
            }
        }
    }
    out
}

async fn submission_client(env: &Env) -> Client {
    let mut c = Client::connect(env, Profile::Submission).await;
    c.cmd("EHLO client.test", "250").await;
    let mut c = c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)), "235 2.7.0").await;
    c
}

#[tokio::test]
async fn mx_ehlo_offers_extensions_but_no_auth() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    let text = c.cmd("EHLO client.test", "250").await;
    for ext in
        ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "STARTTLS"]
    {
        assert!(text.contains(ext), "{ext} missing in {text}");
    }
    assert!(!text.contains("AUTH"), "AUTH must not be offered on the MX port: {text}");
    c.cmd("AUTH PLAIN AGFAYgBj", "502 5.5.1").await;
    c.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn mx_delivers_to_local_mailbox_with_received_header() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<sender@remote.test>", "250 2.1.0").await;
    c.cmd("RCPT TO:<Alice@Example.TEST>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.cmd("Subject: hello\r\nMessage-ID: <m1@remote.test>\r\n\r\nline one\r\n..dotted\r\n.", "250 2.0.0")
        .await;
    let msgs = inbox(&env, "alice@example.test");
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    // RFC 5321 §4.4: Return-Path is added at final delivery, above our Received: line.
    assert!(
        m.starts_with("Return-Path: <sender@remote.test>\r\nReceived: from client.test ([192.0.2.7])"),
        "{m}"
    );
    assert!(m.contains("by mail.example.test (posthaste) with ESMTP"), "{m}");
    assert!(m.contains("\r\n.dotted\r\n"), "dot-stuffing not undone: {m}");
    assert!(!m.contains("..dotted"));
}

#[tokio::test]
async fn mx_alias_and_plus_address_reach_the_account() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<>", "250").await;
    c.cmd("RCPT TO:<info@example.test>", "250").await;
    c.cmd("RCPT TO:<alice+news@example.test>", "250").await;
    c.cmd("RCPT TO:<postmaster>", "250").await;
    c.cmd("DATA", "354").await;
    c.cmd("Subject: x\r\n\r\nbody\r\n.", "250").await;
    assert_eq!(inbox(&env, "alice@example.test").len(), 1, "alias and +tag go to one mailbox once");
    assert_eq!(inbox(&env, "postmaster@example.test").len(), 1);
}

#[tokio::test]
async fn mx_refuses_unknown_users_and_relaying() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<sender@remote.test>", "250").await;
    c.cmd("RCPT TO:<nobody@example.test>", "550 5.1.1").await;
    c.cmd("RCPT TO:<victim@remote.test>", "554 5.7.1").await;
    c.cmd("RCPT TO:<victim%remote.test@example.test>", "554 5.7.1").await;
    c.cmd("RCPT TO:<@example.test:victim@remote.test>", "554 5.7.1").await;
    c.cmd("RCPT TO:<remote.test!victim@example.test>", "554 5.7.1").await;
    c.cmd("RCPT TO:<\"victim@remote.test\"@example.test>", "554 5.7.1").await;
    c.cmd("DATA", "554 5.5.1").await;
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("MAIL FROM:<a@remote.test>", "503 5.5.1").await;
    c.cmd("HELO", "501").await;
    c.cmd("FOO bar", "500 5.5.2").await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("MAIL FROM:<a@remote.test> FOO=bar", "555 5.5.4").await;
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    c.cmd("MAIL FROM:<a@remote.test>", "503 5.5.1").await;
    c.cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER", "555 5.5.4").await;
    c.cmd("RSET", "250").await;
    c.cmd("VRFY alice", "252").await;
    c.cmd("NOOP", "250").await;
    c.send(&format!("NOOP {}\r\n", "x".repeat(10_000))).await;
    assert!(c.reply().await.1.starts_with("500 5.5.6"));
    c.cmd("NOOP", "250").await;
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let env = env_with(|c| c.smtp.max_errors = 3).await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("BAD1", "500").await;
    c.cmd("BAD2", "500").await;
    c.send("BAD3\r\n").await;
    assert!(c.reply().await.1.starts_with("500"));
    assert!(c.reply().await.1.starts_with("421 4.7.0"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").await;
    let codes: Vec<u16> = [(); 5].iter().map(|_| 0).collect();
    let mut got = Vec::new();
    for _ in codes {
        got.push(c.reply().await.0);
    }
    assert_eq!(got, vec![250, 250, 550, 250, 354]);
    c.cmd("Subject: p\r\n\r\nx\r\n.", "250").await;
    assert_eq!(inbox(&env, "bob@example.test").len(), 1);
}

#[tokio::test]
async fn oversize_messages_get_552() {
    let env = env_with(|c| c.smtp.max_message_size = 2000).await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<a@remote.test> SIZE=5000", "552 5.3.4").await;
    c.cmd("MAIL FROM:<a@remote.test> SIZE=100", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    let big = "x".repeat(100) + "\r\n";
    c.cmd(&format!("Subject: big\r\n\r\n{}.", big.repeat(50)), "552 5.3.4").await;
    // The session goes on after the refusal.
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    assert!(inbox(&env, "alice@example.test").is_empty());
}

#[tokio::test]
async fn chunking_with_bdat() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    let part1 = "Subject: chunks\r\n\r\n";
    let part2 = ".not stuffed\r\n";
    c.send(&format!("BDAT {}\r\n{part1}", part1.len())).await;
    assert!(c.reply().await.1.starts_with("250"));
    c.send(&format!("BDAT {} LAST\r\n{part2}", part2.len())).await;
    assert!(c.reply().await.1.starts_with("250 2.0.0"));
    let m = &inbox(&env, "alice@example.test")[0];
    assert!(m.ends_with("Subject: chunks\r\n\r\n.not stuffed\r\n"), "{m}");
}

#[tokio::test]
async fn submission_requires_tls_before_auth() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Submission).await;
    let text = c.cmd("EHLO client.test", "250").await;
    assert!(text.contains("STARTTLS") && !text.contains("AUTH"), "{text}");
    c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)), "538 5.7.11").await;
    c.cmd("MAIL FROM:<alice@example.test>", "530 5.7.0").await;
    let mut c = c.starttls().await;
    c.cmd("MAIL FROM:<alice@example.test>", "503").await; // EHLO again after TLS (RFC 3207)
    let text = c.cmd("EHLO client.test", "250").await;
    assert!(text.contains("AUTH PLAIN LOGIN") && !text.contains("STARTTLS"), "{text}");
    c.cmd("MAIL FROM:<alice@example.test>", "530 5.7.0").await;
    c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", "wrong password")), "535 5.7.8").await;
    c.cmd(&format!("AUTH PLAIN {}", plain("nobody@example.test", PASSWORD)), "535 5.7.8").await;
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd(&base64::engine::general_purpose::STANDARD.encode("alice@example.test"), "334 UGFzc3dvcmQ6").await;
    c.cmd(&base64::engine::general_purpose::STANDARD.encode(PASSWORD), "235 2.7.0").await;
    c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)), "503 5.5.1").await;
}

#[tokio::test]
async fn submission_enforces_sender_ownership() {
    let env = env().await;
    let mut c = submission_client(&env).await;
    c.cmd("MAIL FROM:<bob@example.test>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<info@example.test>", "250").await; // an alias that delivers to alice
    c.cmd("RCPT TO:<bob@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.cmd("From: Bob <bob@example.test>\r\nSubject: spoof\r\n\r\nx\r\n.", "553 5.7.1").await;
    c.cmd("MAIL FROM:<alice+x@example.test>", "250").await;
    c.cmd("RCPT TO:<bob@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.cmd("From: Alice <alice@example.test>\r\nSubject: ok\r\n\r\nhi\r\n.", "250 2.0.0").await;
    let msgs = inbox(&env, "bob@example.test");
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert!(m.contains("with ESMTPSA"), "{m}");
    assert!(m.contains("\r\nDate: ") && m.contains("\r\nMessage-ID: <"), "Date/Message-ID not added: {m}");
}

#[tokio::test]
async fn submissions_port_is_tls_from_the_start() {
    let env = env().await;
    let (client, server) = tokio::io::duplex(1 << 16);
    // Port 465 sessions are handed over after the TLS handshake; here we hand the session
    // the plain pipe marked as TLS, which is what the listener does after the handshake.
    let session = Session::new(
        env.ctx.clone(),
        Profile::Submissions,
        Box::new(server),
        "192.0.2.7:1".parse().unwrap(),
        true,
    );
    tokio::spawn(session.run());
    let mut c = Client { io: BufReader::new(Box::new(client)), ca: env.ca.clone() };
    assert_eq!(c.reply().await.0, 220);
    let text = c.cmd("EHLO client.test", "250").await;
    assert!(text.contains("AUTH PLAIN LOGIN") && !text.contains("STARTTLS"), "{text}");
}

#[tokio::test]
async fn data_pipelined_after_starttls_is_not_executed() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Submission).await;
    c.cmd("EHLO client.test", "250").await;
    c.send("STARTTLS\r\nMAIL FROM:<alice@example.test>\r\n").await;
    assert!(c.reply().await.1.starts_with("220"));
    assert!(c.closed().await, "the injected plaintext command must end the session");
}

#[tokio::test]
async fn too_many_recipients_get_452() {
    let env = env_with(|c| c.smtp.max_recipients = 2).await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.cmd("RCPT TO:<bob@example.test>", "250").await;
    c.cmd("RCPT TO:<postmaster@example.test>", "452 4.5.3").await;
}

#[tokio::test]
async fn repeated_identical_rcpt_counts_against_max_recipients_and_max_errors() {
    // Before: a million pipelined identical RCPTs each got 250 (hardening issue).
    let env = env_with(|c| {
        c.smtp.max_recipients = 5;
        c.smtp.max_errors = 100;
    })
    .await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    for _ in 0..5 {
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
    }
    c.cmd("RCPT TO:<alice@example.test>", "452 4.5.3").await;
    c.cmd("RCPT TO:<bob@example.test>", "452 4.5.3").await;
    c.cmd("RSET", "250").await;

    let env = env_with(|c| c.smtp.max_errors = 3).await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250").await;
    c.send(&"RCPT TO:<alice@example.test>\r\n".repeat(1000)).await;
    let mut codes = Vec::new();
    loop {
        let (code, _) = c.reply().await;
        if code == 0 {
            break;
        }
        codes.push(code);
    }
    assert_eq!(codes, vec![250, 250, 250, 421], "three repeats, then the session ends");
    // The message was never sent; nothing was delivered twice or at all.
    assert!(inbox(&env, "alice@example.test").is_empty());
}

// Keep the trait-object helpers honest: the client side is any stream, like the server's.
#[allow(dead_code)]
fn assert_stream<T: AsyncRead + AsyncWrite + Unpin + Send + Sync>() {}

#[tokio::test]
async fn idle_client_gets_421_after_the_command_timeout() {
    let env = env_with(|c| c.smtp.command_timeout = std::time::Duration::from_secs(1)).await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    let started = std::time::Instant::now();
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(c.closed().await);
}

/// Random bytes and random command-like lines: every line gets a well-formed reply and the
/// session neither panics nor hangs (each read below has a deadline).
#[tokio::test]
async fn garbage_input_gets_replies_never_a_crash_or_hang() {
    use rand::{Rng, SeedableRng};
    let env = env_with(|c| c.smtp.max_errors = 1_000_000).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let verbs = [
        "MAIL FROM:",
        "RCPT TO:",
        "EHLO",
        "HELO",
        "BDAT",
        "AUTH",
        "DATA",
        "RSET",
        "VRFY",
        "NOOP",
        "STARTTLS",
    ];
    for round in 0..20 {
        let mut c = Client::connect(&env, Profile::Mx).await;
        for _ in 0..50 {
            let mut line: Vec<u8> = Vec::new();
            if rng.gen_bool(0.5) {
                line.extend_from_slice(verbs[rng.gen_range(0..verbs.len())].as_bytes());
            }
            let n = rng.gen_range(0..40);
            for _ in 0..n {
                // Anything but CR/LF (which would split the line) and NUL-free ASCII most of the time.
                let b: u8 = if rng.gen_bool(0.8) { rng.gen_range(0x20..0x7f) } else { rng.gen() };
                if b != b'\r' && b != b'\n' {
                    line.push(b);
                }
            }
            // Never start a DATA/BDAT/STARTTLS/AUTH exchange by accident: those change the
            // framing and are covered by their own tests.
            let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
            if ["DATA", "BDAT", "STARTTLS", "AUTH"].iter().any(|v| upper.trim_start().starts_with(v)) {
                continue;
            }
            line.extend_from_slice(b"\r\n");
            c.io.get_mut().write_all(&line).await.unwrap();
            let reply = tokio::time::timeout(std::time::Duration::from_secs(5), c.reply()).await;
            let (code, text) = reply.unwrap_or_else(|_| panic!("round {round}: no reply to {line:?}"));
            assert!((200..600).contains(&code), "round {round}: {line:?} -> {text:?}");
        }
        c.cmd("QUIT", "221").await;
    }
}

#[tokio::test]
async fn auth_login_with_initial_response_and_cancel() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Submission).await;
    c.cmd("EHLO client.test", "250").await;
    let mut c = c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // RFC 4954 §4: "*" cancels the exchange.
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd("*", "501").await;
    c.cmd("AUTH LOGIN not-base64!", "501").await;
    c.cmd(&format!("AUTH LOGIN {}", b64("alice@example.test")), "334 UGFzc3dvcmQ6").await;
    c.cmd(&b64(PASSWORD), "235").await;
}

#[tokio::test]
async fn utf8_addresses_need_smtputf8() {
    let env = env().await;
    let d = env.ctx.directory.clone();
    d.add_account(&Address::parse("jösé@example.test").unwrap(), &password::hash(PASSWORD), 0).await.unwrap();
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<müller@remote.test>", "553 5.6.7").await;
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
    c.cmd("RCPT TO:<jösé@example.test>", "553 5.6.7").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<müller@remote.test> SMTPUTF8", "250").await;
    c.cmd("RCPT TO:<jösé@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.cmd("Subject: grüße\r\n\r\nhallo\r\n.", "250").await;
    assert_eq!(inbox(&env, "jösé@example.test").len(), 1);
}

/// posthaste issue #3: a recipient whose account is at its quota (counted as IMAP QUOTA
/// counts it) gets `452 4.2.2` at RCPT (RFC 3463 §3.3), others in the same transaction are
/// still accepted, and making room lets mail in again.
#[tokio::test]
async fn rcpt_to_an_account_over_its_quota_gets_452_mailbox_full() {
    let env = env().await;
    let alice = Address::parse("alice@example.test").unwrap();
    env.ctx.directory.set_quota(&alice, 1000).await.unwrap();
    let store = Store::new(env.data.join("mail"));
    store.create_account(&alice).unwrap();
    let big = format!("Subject: filler\r\n\r\n{}\r\n", "x".repeat(1200));
    let filler = store.deliver(&alice, "INBOX", big.as_bytes()).unwrap();
    assert!(store.account_usage(&alice).unwrap().bytes >= 1000);

    let mut c = Client::connect(&env, Profile::Mx).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<sender@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "452 4.2.2").await;
    // An alias to the full account is refused the same way; other recipients are fine.
    c.cmd("RCPT TO:<info@example.test>", "452 4.2.2").await;
    c.cmd("RCPT TO:<bob@example.test>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.cmd("Subject: x\r\n\r\nbody\r\n.", "250").await;
    assert_eq!(inbox(&env, "alice@example.test").len(), 1, "only the filler");
    assert_eq!(inbox(&env, "bob@example.test").len(), 1);

    // The user deletes the filler: mail is accepted again.
    std::fs::remove_file(&filler.path).unwrap();
    c.cmd("MAIL FROM:<sender@remote.test>", "250").await;
    c.cmd("RCPT TO:<alice@example.test>", "250 2.1.5").await;
    c.cmd("QUIT", "221").await;
}

// ---- SMTP smuggling (src/smtp/data.rs) ----------------------------------------------------

/// The fake end-of-data sequences of the published smuggling scanners, and more: bare LF,
/// bare CR, NUL, doubled CR, mixed. `true` when the sequence contains only bare LFs (then
/// the message is accepted, normalised to CRLF); otherwise it has a bare CR or a NUL and
/// the message is refused with 554 5.6.0. Either way no second transaction may start.
const SMUGGLING: &[(&str, &[u8], bool)] = &[
    ("LF.LF", b"\n.\n", true),
    ("LF.CRLF", b"\n.\r\n", true),
    ("CRLF.LF", b"\r\n.\n", true),
    ("LFLF.LFLF", b"\n\n.\n\n", true),
    ("CR.CR", b"\r.\r", false),
    ("CR.CRLF", b"\r.\r\n", false),
    ("CRLF.CR", b"\r\n.\r", false),
    ("CRLF NUL.CRLF", b"\r\n\x00.\r\n", false),
    ("CRLF.NUL CRLF", b"\r\n.\x00\r\n", false),
    ("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n", false),
    ("CRLF.CRCRLF", b"\r\n.\r\r\n", false),
    ("LF.CR", b"\n.\r", false),
];

/// A message carrying `seq` followed by a smuggled transaction whose end is the real end of
/// the data (as the scanners send it).
fn smuggling_payload(seq: &[u8]) -> Vec<u8> {
    let mut p = b"From: a@remote.test\r\nSubject: first\r\n\r\nfirst body".to_vec();
    p.extend_from_slice(seq);
    p.extend_from_slice(
        b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
          From: ceo@example.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n",
    );
    p
}

fn assert_crlf_only(m: &str, what: &str) {
    let b = m.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\r' => assert_eq!(b.get(i + 1), Some(&b'\n'), "{what}: bare CR stored: {m:?}"),
            b'\n' => assert!(i > 0 && b[i - 1] == b'\r', "{what}: bare LF stored: {m:?}"),
            0 => panic!("{what}: NUL stored: {m:?}"),
            _ => {}
        }
    }
}

/// Checks one session after the payload: exactly one reply to the data, then QUIT's 221 —
/// a smuggled MAIL/RCPT/DATA would have produced replies of its own before it.
async fn expect_one_transaction(c: &mut Client, name: &str, accepted: bool) {
    let (code, text) = c.reply().await;
    if accepted {
        assert_eq!(code, 250, "{name}: {text}");
    } else {
        assert!(text.starts_with("554 5.6.0"), "{name}: {text}");
    }
    c.send("QUIT\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 221, "{name}: a smuggled command was executed: {text}");
}

fn assert_not_smuggled(env: &Env, name: &str, accepted: bool) {
    for m in inbox(env, "bob@example.test") {
        assert!(!m.contains("Subject: smuggled"), "{name}: the smuggled message was delivered: {m}");
    }
    let alice = inbox(env, "alice@example.test");
    if accepted {
        assert_eq!(alice.len(), 1, "{name}");
        // The smuggled transaction is content of the one message, with CRLF line ends.
        assert!(alice[0].contains("MAIL FROM:<ceo@example.test>\r\n"), "{name}: {}", alice[0]);
        assert_crlf_only(&alice[0], name);
    } else {
        assert!(alice.is_empty(), "{name}: a malformed message was stored");
    }
}

#[tokio::test]
async fn smtp_smuggling_on_the_mx_never_starts_a_second_transaction() {
    for &(name, seq, accepted) in SMUGGLING {
        let env = env().await;
        let mut c = Client::connect(&env, Profile::Mx).await;
        c.cmd("EHLO client.test", "250").await;
        c.cmd("MAIL FROM:<a@remote.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        c.cmd("DATA", "354").await;
        c.io.get_mut().write_all(&smuggling_payload(seq)).await.unwrap();
        expect_one_transaction(&mut c, name, accepted).await;
        assert_not_smuggled(&env, name, accepted);
    }
}

#[tokio::test]
async fn smtp_smuggling_pipelined_with_data_never_starts_a_second_transaction() {
    // PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write, then the payload and QUIT in
    // one more, so the smuggled commands sit in the same buffer as the real ones.
    for &(name, seq, accepted) in SMUGGLING {
        let env = env().await;
        let mut c = Client::connect(&env, Profile::Mx).await;
        c.cmd("EHLO client.test", "250").await;
        c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n").await;
        for want in [250, 250, 354] {
            assert_eq!(c.reply().await.0, want, "{name}");
        }
        let mut p = smuggling_payload(seq);
        p.extend_from_slice(b"QUIT\r\n");
        c.io.get_mut().write_all(&p).await.unwrap();
        let (code, text) = c.reply().await;
        assert_eq!(code, if accepted { 250 } else { 554 }, "{name}: {text}");
        let (code, text) = c.reply().await;
        assert_eq!(code, 221, "{name}: a smuggled command was executed: {text}");
        assert_not_smuggled(&env, name, accepted);
    }
}

#[tokio::test]
async fn smtp_smuggling_on_submission_never_starts_a_second_transaction() {
    for &(name, seq, accepted) in SMUGGLING {
        let env = env().await;
        let mut c = submission_client(&env).await;
        c.cmd("MAIL FROM:<alice@example.test>", "250").await;
        c.cmd("RCPT TO:<alice@example.test>", "250").await;
        c.cmd("DATA", "354").await;
        let payload = smuggling_payload(seq);
        let payload =
            String::from_utf8(payload).unwrap().replace("From: a@remote.test", "From: alice@example.test");
        c.io.get_mut().write_all(payload.as_bytes()).await.unwrap();
        c.io.get_mut().flush().await.unwrap();
        expect_one_transaction(&mut c, name, accepted).await;
        assert_not_smuggled(&env, name, accepted);
    }
}

#[tokio::test]
async fn smtp_smuggling_in_bdat_chunks_is_normalised_or_refused() {
    // Each sequence split at every position across two chunks; a CR at the end of one chunk
    // and an LF at the start of the next are one CRLF.
    for &(name, seq, accepted) in SMUGGLING {
        for cut in 0..=seq.len() {
            let env = env().await;
            let mut c = Client::connect(&env, Profile::Mx).await;
            c.cmd("EHLO client.test", "250").await;
            c.cmd("MAIL FROM:<a@remote.test>", "250").await;
            c.cmd("RCPT TO:<alice@example.test>", "250").await;
            let mut first = b"Subject: chunked\r\n\r\nbody".to_vec();
            first.extend_from_slice(&seq[..cut]);
            let mut second = seq[cut..].to_vec();
            second.extend_from_slice(b"MAIL FROM:<ceo@example.test>\r\n");
            let mut w = format!("BDAT {}\r\n", first.len()).into_bytes();
            w.extend_from_slice(&first);
            w.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
            w.extend_from_slice(&second);
            c.io.get_mut().write_all(&w).await.unwrap();
            let what = format!("{name} cut at {cut}");
            assert_eq!(c.reply().await.0, 250, "{what}");
            let (code, text) = c.reply().await;
            if accepted {
                assert_eq!(code, 250, "{what}: {text}");
                let m = &inbox(&env, "alice@example.test")[0];
                assert_crlf_only(m, &what);
                assert!(m.ends_with("MAIL FROM:<ceo@example.test>\r\n"), "{what}: {m:?}");
            } else {
                assert!(text.starts_with("554 5.6.0"), "{what}: {text}");
                assert!(inbox(&env, "alice@example.test").is_empty(), "{what}");
            }
            c.cmd("QUIT", "221").await;
        }
    }
}

#[tokio::test]
async fn bare_cr_or_nul_in_a_command_line_is_refused_and_bare_lf_ends_a_command() {
    let env = env().await;
    let mut c = Client::connect(&env, Profile::Mx).await;
    c.send("EHLO client.test\n").await;
    assert_eq!(c.reply().await.0, 250, "LF alone ends a command line");
    c.send("MAIL FROM:<a@remote.test>\rRCPT TO:<alice@example.test>\r\n").await;
    assert!(c.reply().await.1.starts_with("500 5.5.2"));
    c.send("MAIL FROM:<a@remote.test>\r\r\n").await;
    assert!(c.reply().await.1.starts_with("500 5.5.2"));
    c.send("NOOP\0\r\n").await;
    assert!(c.reply().await.1.starts_with("500 5.5.2"));
    c.cmd("MAIL FROM:<a@remote.test>", "250").await;
}
