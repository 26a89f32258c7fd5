//! The IMAP session driven in memory over a duplex pipe, with the real directory (SQLite)
//! and the real store in a temp dir: one case per protocol edge.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use posthaste::address::Address;
use posthaste::config::{Config, TlsConfig};
use posthaste::directory::{password, Directory};
use posthaste::guard::Guard;
use posthaste::imap::{session::Session, Context};
use posthaste::net::Stream;
use posthaste::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PASSWORD: &str = "correct horse battery";

struct Env {
    _dir: tempfile::TempDir,
    ctx: Arc<Context>,
    store: Store,
    directory: Directory,
    ca: rustls::pki_types::CertificateDer<'static>,
}

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
    for a in ["alice@example.test", "bob@example.test"] {
        directory.add_account(&Address::parse(a).unwrap(), &hash, 0).await.unwrap();
    }
    let store = Store::new(config.mail_dir());
    for a in ["alice@example.test", "bob@example.test"] {
        store.create_account(&Address::parse(a).unwrap()).unwrap();
    }
    let tls = posthaste::tls::load_acceptor(config.tls.as_ref().unwrap()).unwrap();
    let ca = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice()).next().unwrap().unwrap();
    let ctx = Arc::new(Context::new(
        Arc::new(config),
        directory.clone(),
        store.clone(),
        Some(tls),
        Arc::new(Guard::off()),
    ));
    Env { _dir: dir, ctx, store, directory, ca }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

fn alice() -> Address {
    Address::parse("alice@example.test").unwrap()
}

fn msg(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\nDate: Mon, 7 Feb 2022 21:52:25 -0800\r\nMessage-ID: <{subject}@example.test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

struct Client {
    io: BufReader<Box<dyn Stream>>,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Client {
    /// `tls`: as on port 993.
    async fn connect(env: &Env, tls: bool) -> (Client, String) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let session =
            Session::new(env.ctx.clone(), Box::new(server), "192.0.2.7:40000".parse().unwrap(), tls);
        tokio::spawn(session.run());
        let mut c = Client { io: BufReader::new(Box::new(client)), ca: env.ca.clone() };
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK "), "{greeting}");
        (c, greeting)
    }

    async fn logged_in(env: &Env) -> Client {
        let (mut c, _) = Client::connect(env, true).await;
        c.ok(&format!("l LOGIN alice@example.test \"{PASSWORD}\"")).await;
        c
    }

    async fn send(&mut self, raw: &str) {
        self.send_bytes(raw.as_bytes()).await;
    }

    async fn send_bytes(&mut self, raw: &[u8]) {
        self.io.get_mut().write_all(raw).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// One response line, with any literals it carries inlined.
    async fn line(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("server answered within 10 s")
                .unwrap();
            if n == 0 {
                return text;
            }
            text.push_str(&line);
            let t = line.trim_end();
            if let Some(n) = t
                .strip_suffix('}')
                .and_then(|x| x.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut buf = vec![0; n];
                self.io.read_exact(&mut buf).await.unwrap();
                text.push_str(&String::from_utf8_lossy(&buf));
                continue;
            }
            return text;
        }
    }

    /// Everything up to and including the tagged response of `tag`.
    async fn until(&mut self, tag: &str) -> String {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            assert!(!l.is_empty(), "connection closed while waiting for {tag}; got {all}");
            all.push_str(&l);
            if l.starts_with(&format!("{tag} ")) {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        let tag = line.split(' ').next().unwrap();
        self.until(tag).await
    }

    /// Run a command and require a tagged OK.
    async fn ok(&mut self, line: &str) -> String {
        let r = self.cmd(line).await;
        let tag = line.split(' ').next().unwrap();
        let last = r.lines().last().unwrap_or("");
        assert!(last.starts_with(&format!("{tag} OK")), "{line:?} → {r}");
        r
    }

    async fn expect(&mut self, line: &str, status: &str) -> String {
        let r = self.cmd(line).await;
        let tag = line.split(' ').next().unwrap();
        let last = r.lines().last().unwrap_or("");
        assert!(last.starts_with(&format!("{tag} {status}")), "{line:?}: expected {status} → {r}");
        r
    }

    async fn tls_handshake(self) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("mail.example.test").unwrap();
        let tls = connector.connect(name, self.io.into_inner()).await.unwrap();
        Client { io: BufReader::new(Box::new(tls)), ca: self.ca }
    }

    /// Every line until the server closes the connection.
    async fn rest(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            if l.is_empty() {
                return all;
            }
            all.push_str(&l);
        }
    }

    async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

#[tokio::test]
async fn plaintext_port_requires_starttls_before_login() {
    let env = env().await;
    let (mut c, greeting) = Client::connect(&env, false).await;
    assert!(greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"), "{greeting}");
    assert!(!greeting.contains("AUTH=PLAIN"), "{greeting}");
    c.expect(&format!("a LOGIN alice@example.test \"{PASSWORD}\""), "NO [PRIVACYREQUIRED]").await;
    c.expect(&format!("b AUTHENTICATE PLAIN {}", plain("alice@example.test", PASSWORD)), "NO").await;
    c.expect("c SELECT INBOX", "BAD").await;
    c.ok("d NOOP").await;
    c.ok("e STARTTLS").await;
    let mut c = c.tls_handshake().await;
    let caps = c.ok("f CAPABILITY").await;
    assert!(
        caps.contains("AUTH=PLAIN") && !caps.contains("LOGINDISABLED") && !caps.contains("STARTTLS"),
        "{caps}"
    );
    let r = c.ok(&format!("g LOGIN alice@example.test \"{PASSWORD}\"")).await;
    assert!(r.contains("[CAPABILITY ") && r.contains("IDLE") && r.contains("UIDPLUS"), "{r}");
    c.expect("h STARTTLS", "BAD").await;
    c.ok("i LOGOUT").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn starttls_discards_pipelined_plaintext() {
    let env = env().await;
    let (mut c, _) = Client::connect(&env, false).await;
    // The injected command must never run inside TLS (CVE-2011-0411).
    c.send(&format!("a STARTTLS\r\nb LOGIN alice@example.test \"{PASSWORD}\"\r\n")).await;
    let r = c.until("a").await;
    assert!(r.starts_with("a OK"), "{r}");
    let mut c = c.tls_handshake().await;
    let r = c.ok("c NOOP").await;
    assert!(!r.contains("b "), "the pipelined command ran: {r}");
    c.expect("d SELECT INBOX", "BAD").await;
}

#[tokio::test]
async fn login_and_authenticate_variants() {
    let env = env().await;
    let (mut c, greeting) = Client::connect(&env, true).await;
    assert!(greeting.contains("AUTH=PLAIN") && greeting.contains("SASL-IR"), "{greeting}");
    c.expect("a LOGIN alice@example.test wrong", "NO [AUTHENTICATIONFAILED]").await;
    c.expect("a2 LOGIN nobody@example.test wrong", "NO [AUTHENTICATIONFAILED]").await;
    c.expect("b AUTHENTICATE CRAM-MD5", "NO").await;
    // A third failure ends the connection (after the next reply).
    c.expect("b2 LOGIN alice@example.test wrong", "NO [AUTHENTICATIONFAILED]").await;
    let l = c.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
    assert!(c.closed().await);
    let (mut c, _) = Client::connect(&env, true).await;
    // Without an initial response: an empty challenge; "*" cancels.
    c.send("c AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await.trim_end(), "+");
    c.send("*\r\n").await;
    assert!(c.until("c").await.starts_with("c BAD"));
    c.send("d AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await.trim_end(), "+");
    c.send("!!notbase64\r\n").await;
    assert!(c.until("d").await.starts_with("d BAD"));
    c.send("e AUTHENTICATE PLAIN\r\n").await;
    c.line().await;
    c.send(&format!("{}\r\n", plain("alice@example.test", PASSWORD))).await;
    let r = c.until("e").await;
    assert!(r.starts_with("e OK"), "{r}");
    c.expect("f LOGIN alice@example.test x", "BAD").await;

    // SASL-IR.
    let (mut c, _) = Client::connect(&env, true).await;
    c.ok(&format!("a AUTHENTICATE PLAIN {}", plain("bob@example.test", PASSWORD))).await;
    c.ok("b SELECT INBOX").await;
}

#[tokio::test]
async fn malformed_input_gets_bad_never_a_hang() {
    let env = env().await;
    let (mut c, _) = Client::connect(&env, true).await;
    for junk in
        ["", "a", "a FOO", "a LOGIN", "* NOOP", "+ x", "a SELECT", "a FETCH 1 (", "a LOGIN \"unterminated"]
    {
        c.send(&format!("{junk}\r\n")).await;
        let l = c.line().await;
        assert!(l.contains(" BAD "), "{junk:?} → {l}");
    }
    // Tagged BAD when the tag is readable.
    c.send("x1 BLAH\r\n").await;
    assert!(c.line().await.starts_with("x1 BAD"));
    c.send_bytes(b"q \xff\xfe\x00\x01\r\n").await;
    assert!(c.line().await.contains("BAD"));
    c.ok("z NOOP").await;
    // A line longer than the limit.
    let long = format!("y NOOP {}\r\n", "x".repeat(70_000));
    c.send(&long).await;
    assert!(c.line().await.starts_with("y BAD"));
    c.ok("z2 NOOP").await;
    // Too many errors in a row end the session.
    for i in 0..30 {
        c.send(&format!("e{i} GARBAGE\r\n")).await;
    }
    let mut all = String::new();
    loop {
        let l = c.line().await;
        if l.is_empty() {
            break;
        }
        all.push_str(&l);
    }
    assert!(all.contains("* BYE"), "{all}");
}

#[tokio::test]
async fn literals_sync_nonsync_and_size_limit() {
    let env = env_with(|c| c.imap.max_literal_size = 2048).await;
    let (mut c, _) = Client::connect(&env, true).await;
    let user = "alice@example.test";
    c.send(&format!("a LOGIN {{{}}}\r\n", user.len())).await;
    assert!(c.line().await.starts_with("+ "));
    c.send(&format!("{user} {{{}+}}\r\n{PASSWORD}\r\n", PASSWORD.len())).await;
    let r = c.until("a").await;
    assert!(r.starts_with("a OK"), "{r}");
    // Synchronising literal over the limit: refused before the client sends it.
    c.send("b APPEND INBOX {100000}\r\n").await;
    assert!(c.line().await.starts_with("b NO [TOOBIG]"));
    // LITERAL+ over the limit: the bytes are skipped, the command refused.
    let big = "x".repeat(5000);
    c.send(&format!("c APPEND INBOX {{5000+}}\r\n{big}\r\n")).await;
    assert!(c.line().await.starts_with("c NO [TOOBIG]"));
    c.ok("d NOOP").await;
    let m = msg("lit", "hello");
    c.send(&format!("e APPEND INBOX {{{}+}}\r\n", m.len())).await;
    c.send_bytes(&m).await;
    c.send("\r\n").await;
    let r = c.until("e").await;
    assert!(r.contains("e OK [APPENDUID "), "{r}");
}

#[tokio::test]
async fn list_special_use_children_and_names() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    let r = c.ok("a LIST \"\" \"*\"").await;
    for (name, attr) in [
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Junk", "\\Junk"),
        ("Trash", "\\Trash"),
        ("Archive", "\\Archive"),
    ] {
        assert!(r.contains(&format!("{attr}) \"/\" \"{name}\"")), "{name} in {r}");
    }
    assert!(r.contains("* LIST (\\HasNoChildren) \"/\" \"INBOX\""), "{r}");
    // RFC 6154 §5.1, as Thunderbird asks for the special folders.
    let r = c.ok("a2 LIST (SPECIAL-USE) \"\" \"*\"").await;
    assert_eq!(r.lines().filter(|l| l.starts_with("* LIST")).count(), 5, "{r}");
    assert!(!r.contains("INBOX"), "{r}");
    let r = c.ok("a3 LIST \"\" \"INBOX\" RETURN (CHILDREN SUBSCRIBED)").await;
    assert!(r.contains("* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\""), "{r}");
    let r = c.ok("b LIST \"\" \"\"").await;
    assert!(r.contains("* LIST (\\Noselect) \"/\" \"\""), "{r}");
    c.ok("c CREATE Archive/2024").await;
    c.ok("d CREATE \"Entw&APw-rfe\"").await;
    assert!(std::fs::metadata(env.store.account_dir(&alice()).join(".Archive.2024")).is_ok());
    assert!(std::fs::metadata(env.store.account_dir(&alice()).join(".Entwürfe")).is_ok());
    let r = c.ok("e LIST \"\" \"%\"").await;
    assert!(r.contains("(\\HasChildren \\Archive) \"/\" \"Archive\""), "{r}");
    assert!(!r.contains("Archive/2024"), "{r}");
    assert!(r.contains("\"Entw&APw-rfe\""), "{r}");
    let r = c.ok("f LIST \"Archive/\" \"%\"").await;
    assert!(r.contains("\"Archive/2024\""), "{r}");
    c.expect("g CREATE Archive/2024", "NO [ALREADYEXISTS]").await;
    c.expect("h CREATE INBOX", "NO").await;
    for bad in ["\"a.b\"", "\"../x\"", "\"/etc\"", "\"a//b\"", "\"x&AGE-\""] {
        c.expect(&format!("i CREATE {bad}"), "NO").await;
    }
    // Control characters can only come in a literal; they are refused too.
    c.send("i2 CREATE {3+}\r\na\x01b\r\n").await;
    assert!(c.until("i2").await.starts_with("i2 NO"));
    c.ok("j RENAME Archive/2024 Archive/Old").await;
    let r = c.ok("k LIST \"\" \"Archive/*\"").await;
    assert!(r.contains("Archive/Old") && !r.contains("Archive/2024"), "{r}");
    c.expect("l RENAME Nope Other", "NO").await;
    c.ok("m SUBSCRIBE Archive/Old").await;
    let r = c.ok("n LSUB \"\" \"*\"").await;
    assert!(r.contains("\"Archive/Old\""), "{r}");
    c.ok("o UNSUBSCRIBE Archive/Old").await;
    let r = c.ok("p LSUB \"\" \"*\"").await;
    assert!(!r.contains("\"Archive/Old\""), "{r}");
    c.ok("q DELETE Archive/Old").await;
    c.expect("r DELETE Archive/Old", "NO").await;
    c.expect("s DELETE INBOX", "NO").await;
    let r = c.ok("t NAMESPACE").await;
    assert!(r.contains("* NAMESPACE ((\"\" \"/\")) NIL NIL"), "{r}");
    env.store.deliver(&alice(), "INBOX", &msg("s1", "x")).unwrap();
    let r = c.ok("u STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT HIGHESTMODSEQ)").await;
    assert!(
        r.contains("MESSAGES 1")
            && r.contains("UNSEEN 1")
            && r.contains("UIDNEXT 2")
            && r.contains("RECENT 1"),
        "{r}"
    );
    c.expect("v STATUS Nope (MESSAGES)", "NO").await;
}

/// posthaste issue #3: Maildir++ can hold `.a.b` without `.a` (Dovecot and other tools
/// create such trees); LIST shows the missing level as \Noselect with children (RFC 3501
/// §6.3.8), for `%` and `*` alike, and SELECT of it fails.
#[tokio::test]
async fn list_shows_missing_hierarchy_levels_as_noselect() {
    let env = env().await;
    let base = env.store.account_dir(&alice());
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(base.join(".a.b").join(d)).unwrap();
        std::fs::create_dir_all(base.join(".x.y.z").join(d)).unwrap();
    }
    let mut c = Client::logged_in(&env).await;
    let r = c.ok("a LIST \"\" \"%\"").await;
    assert!(r.contains("* LIST (\\Noselect \\HasChildren) \"/\" \"a\"\r\n"), "{r}");
    assert!(r.contains("* LIST (\\Noselect \\HasChildren) \"/\" \"x\"\r\n"), "{r}");
    assert!(!r.contains("\"a/b\"") && !r.contains("\"x/y\""), "% stops at the first level: {r}");
    let r = c.ok("b LIST \"\" \"*\"").await;
    assert!(r.contains("* LIST (\\Noselect \\HasChildren) \"/\" \"a\"\r\n"), "{r}");
    assert!(r.contains("* LIST (\\HasNoChildren) \"/\" \"a/b\"\r\n"), "{r}");
    assert!(r.contains("* LIST (\\Noselect \\HasChildren) \"/\" \"x/y\"\r\n"), "{r}");
    assert!(r.contains("* LIST (\\HasNoChildren) \"/\" \"x/y/z\"\r\n"), "{r}");
    // The order stays INBOX first, then by name.
    let names: Vec<&str> =
        r.lines().filter(|l| l.starts_with("* LIST")).map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(names[0], "\"INBOX\"", "{r}");
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("\"a\"") < pos("\"a/b\"") && pos("\"x/y\"") < pos("\"x/y/z\""), "{r}");
    let r = c.ok("c LIST \"x/\" \"%\"").await;
    assert!(r.contains("(\\Noselect \\HasChildren) \"/\" \"x/y\""), "{r}");
    c.expect("d SELECT a", "NO").await;
    // A real folder is never \Noselect; creating the level makes it selectable.
    c.ok("e CREATE a").await;
    let r = c.ok("f LIST \"\" \"a\"").await;
    assert!(r.contains("* LIST (\\HasChildren) \"/\" \"a\""), "{r}");
    c.ok("g SELECT a").await;
    // LSUB lists subscriptions only.
    let r = c.ok("h LSUB \"\" \"*\"").await;
    assert!(!r.contains("Noselect"), "{r}");
}

/// posthaste issue #3 (b): what FETCH and SEARCH derive from a message file (size, header
/// block, ENVELOPE, BODYSTRUCTURE) is kept per folder and shared by its sessions, so the
/// file is read once. The test swaps the file's content behind the server's back (which no
/// real writer does: Maildir content never changes) to show the answers come from the cache.
#[tokio::test]
async fn fetch_and_search_answer_from_the_shared_message_cache() {
    let env = env().await;
    let d = env.store.deliver(&alice(), "INBOX", &msg("cached", "body")).unwrap();
    let mut c = Client::logged_in(&env).await;
    c.ok("a SELECT INBOX").await;
    let items = "(RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (Subject)])";
    let first = c.ok(&format!("b FETCH 1 {items}")).await;
    assert!(first.contains("Subject: cached"), "{first}");
    // SELECT moved the file from new/ to cur/.
    let cur = env.store.account_dir(&alice()).join("cur");
    let path = std::fs::read_dir(&cur).unwrap().next().unwrap().unwrap().path();
    assert!(path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(d.path.file_name().unwrap().to_str().unwrap()));
    let size = std::fs::metadata(&path).unwrap().len();
    std::fs::write(&path, "Subject: swapped\r\n\r\nother body, longer than before\r\n").unwrap();
    let again = c.ok(&format!("c FETCH 1 {items}")).await;
    assert_eq!(
        again.replacen("* 1 FETCH", "", 1).lines().next(),
        first.replacen("* 1 FETCH", "", 1).lines().next()
    );
    assert!(again.contains(&format!("RFC822.SIZE {size}")), "{again}");
    let r = c.ok("d SEARCH SUBJECT cached").await;
    assert!(r.contains("* SEARCH 1\r\n"), "SEARCH reads the cached header: {r}");
    // Another session of the same folder gets the same cached answers.
    let mut c2 = Client::logged_in(&env).await;
    c2.ok("e EXAMINE INBOX").await;
    let r = c2.ok("f FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])").await;
    assert!(r.contains("Subject: cached"), "{r}");
    // The body itself is read from the file, as always.
    let r = c2.ok("g FETCH 1 (BODY.PEEK[TEXT])").await;
    assert!(r.contains("other body"), "{r}");
}

#[tokio::test]
async fn select_fetch_sections_and_seen() {
    let env = env().await;
    let mixed = b"From: \"Fred Foo\" <fred@example.test>\r\nTo: alice@example.test\r\nSubject: parts\r\nMessage-ID: <p@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npre\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--XX--\r\n";
    env.store.deliver(&alice(), "INBOX", &msg("one", "body one")).unwrap();
    env.store.deliver(&alice(), "INBOX", mixed).unwrap();
    let mut c = Client::logged_in(&env).await;
    let r = c.ok("a SELECT INBOX").await;
    for want in [
        "* 2 EXISTS",
        "* 2 RECENT",
        "[UIDVALIDITY ",
        "[UIDNEXT 3]",
        "[PERMANENTFLAGS (",
        "* FLAGS (",
        "[HIGHESTMODSEQ ",
        "a OK [READ-WRITE]",
        "[UNSEEN 1]",
    ] {
        assert!(r.contains(want), "{want} in {r}");
    }
    let r = c.ok("b FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)").await;
    assert!(r.contains("* 1 FETCH (FLAGS (\\Recent) UID 1 RFC822.SIZE "), "{r}");
    assert!(r.contains("INTERNALDATE \""), "{r}");
    let r = c.ok("c FETCH 1 (ENVELOPE)").await;
    assert!(
        r.contains(
            "ENVELOPE (\"Mon, 7 Feb 2022 21:52:25 -0800\" \"one\" ((\"Bob\" NIL \"bob\" \"example.test\"))"
        ),
        "{r}"
    );
    let r = c.ok("d FETCH 2 (BODYSTRUCTURE)").await;
    assert!(
        // 0 lines: the part's only CRLF belongs to the boundary (RFC 2046 §5.1.1).
        r.contains("BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 10 0"),
        "{r}"
    );
    assert!(r.contains("(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"BASE64\" 8"), "{r}");
    assert!(r.contains("\"MIXED\" (\"boundary\" \"XX\")"), "{r}");
    let r = c.ok("e FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await;
    assert!(r.contains("BODY[1] {10}\r\nfirst part"), "{r}");
    assert!(r.contains("BODY[2.MIME] {") && r.contains("Content-Transfer-Encoding: base64\r\n\r\n"), "{r}");
    assert!(r.contains("BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: parts\r\n\r\n"), "{r}");
    let r = c.ok("f FETCH 2 (BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT TO FROM MESSAGE-ID MIME-VERSION)])").await;
    assert!(r.contains("Content-Type: multipart/mixed") && !r.contains("Subject:"), "{r}");
    let r = c.ok("g FETCH 1 (BODY.PEEK[TEXT]<0.4> BODY.PEEK[]<6.3> RFC822.HEADER)").await;
    assert!(r.contains("BODY[TEXT]<0> {4}\r\nbody"), "{r}");
    assert!(r.contains("BODY[]<6> {3}\r\nBob"), "{r}");
    assert!(r.contains("RFC822.HEADER {"), "{r}");
    let r = c.ok("h FETCH 1 (FLAGS)").await;
    assert!(!r.contains("\\Seen"), "PEEK must not set \\Seen: {r}");
    let r = c.ok("i FETCH 1 (BODY[TEXT])").await;
    assert!(r.contains("FLAGS (\\Seen \\Recent)"), "{r}");
    let r = c.ok("j FETCH 2 (RFC822.TEXT)").await;
    assert!(r.contains("\\Seen"), "{r}");
    let r = c.ok("k UID FETCH 2 (BODY.PEEK[3] BODY.PEEK[2.1])").await;
    assert!(r.contains("* 2 FETCH (UID 2 BODY[3] {0}"), "{r}");
    c.expect("l FETCH 3 (FLAGS)", "BAD").await;
    let r = c.ok("m UID FETCH 3:* (FLAGS)").await;
    assert!(r.contains("* 2 FETCH (UID 2"), "3:* includes the highest UID: {r}");
    let r = c.ok("n FETCH 1 FAST").await;
    assert!(r.contains("RFC822.SIZE"), "{r}");
    let r = c.ok("o FETCH 1 (BODY)").await;
    assert!(r.contains("BODY (\"TEXT\" \"PLAIN\""), "{r}");
    // EXAMINE is read-only: no \Seen, no STORE.
    c.ok("p EXAMINE INBOX").await;
    c.expect("q STORE 1 +FLAGS (\\Flagged)", "NO").await;
    c.ok("r UNSELECT").await;
    c.expect("s FETCH 1 FLAGS", "BAD").await;
    c.expect("t SELECT Nope", "NO").await;
}

#[tokio::test]
async fn store_expunge_numbering_copy_move_append() {
    let env = env().await;
    for i in 1..=4 {
        env.store.deliver(&alice(), "INBOX", &msg(&format!("m{i}"), "x")).unwrap();
    }
    let mut c = Client::logged_in(&env).await;
    c.ok("a SELECT INBOX").await;
    let r = c.ok("b STORE 1,3 +FLAGS (\\Deleted $Label1)").await;
    // A new keyword is announced in FLAGS (RFC 3501 §7.2.6) before it is used.
    assert!(
        r.starts_with("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Label1)"),
        "{r}"
    );
    assert!(r.contains("* 1 FETCH (FLAGS (\\Deleted $Label1 \\Recent))"), "{r}");
    assert!(r.contains("* 3 FETCH (FLAGS ("), "{r}");
    let r = c.ok("c STORE 2 +FLAGS.SILENT (\\Flagged)").await;
    assert!(!r.contains("FETCH"), "{r}");
    let r = c.ok("d STORE 2 FLAGS (\\Answered)").await;
    assert!(r.contains("* 2 FETCH (FLAGS (\\Answered \\Recent))"), "{r}");
    let r = c.ok("d2 STORE 2 -FLAGS (\\Answered)").await;
    assert!(r.contains("* 2 FETCH (FLAGS (\\Recent))"), "{r}");
    c.expect("e STORE 1 +FLAGS (\\Recent)", "BAD").await;
    let r = c.ok("f EXPUNGE").await;
    // Highest first, so each number is right when it is read.
    let exp: Vec<&str> = r.lines().filter(|l| l.ends_with("EXPUNGE")).collect();
    assert_eq!(exp, ["* 3 EXPUNGE", "* 1 EXPUNGE"], "{r}");
    let r = c.ok("g FETCH 1:* (UID)").await;
    assert!(r.contains("* 1 FETCH (UID 2)") && r.contains("* 2 FETCH (UID 4)"), "{r}");
    let r = c.ok("h COPY 1:2 Junk").await;
    assert!(r.contains("[COPYUID "), "{r}");
    assert!(r.contains(" 2,4 1:2]"), "{r}");
    c.expect("i COPY 1 Nope", "NO [TRYCREATE]").await;
    let r = c.ok("j UID MOVE 4 Trash").await;
    assert!(r.contains("* OK [COPYUID ") && r.contains("* 2 EXPUNGE"), "{r}");
    let r = c.ok("k STATUS Trash (MESSAGES)").await;
    assert!(r.contains("MESSAGES 1"), "{r}");
    // UID EXPUNGE removes only the listed \Deleted messages.
    env.store.deliver(&alice(), "INBOX", &msg("m5", "x")).unwrap();
    let r = c.ok("l NOOP").await;
    assert!(r.contains("* 2 EXISTS"), "{r}");
    c.ok("m STORE 1:2 +FLAGS.SILENT (\\Deleted)").await;
    let r = c.ok("n UID EXPUNGE 5").await;
    assert!(r.contains("* 2 EXPUNGE") && !r.contains("* 1 EXPUNGE"), "{r}");
    // APPEND with flags and a date.
    let m = msg("sent", "hello");
    let r = c
        .cmd(&format!(
            "o APPEND Sent (\\Seen) \"14-Jul-2023 02:44:25 +0200\" {{{}+}}\r\n{}",
            m.len(),
            String::from_utf8_lossy(&m)
        ))
        .await;
    assert!(r.contains("o OK [APPENDUID ") && r.contains(" 1]"), "{r}");
    c.ok("p SELECT Sent").await;
    let r = c.ok("q FETCH 1 (FLAGS INTERNALDATE)").await;
    assert!(r.contains("\\Seen") && r.contains("14-Jul-2023 00:44:25 +0000"), "{r}");
    c.expect(&format!("r APPEND Nope {{{}+}}\r\n{}", m.len(), String::from_utf8_lossy(&m)), "NO [TRYCREATE]")
        .await;
    // CLOSE expunges silently.
    c.ok("s STORE 1 +FLAGS (\\Deleted)").await;
    let r = c.ok("t CLOSE").await;
    assert!(!r.contains("EXPUNGE"), "{r}");
    let r = c.ok("u STATUS Sent (MESSAGES)").await;
    assert!(r.contains("MESSAGES 0"), "{r}");
    c.ok("v SELECT INBOX").await;
    c.ok("w CHECK").await;
    let r = c.ok("x COPY 1 INBOX").await;
    assert!(r.contains("* 2 EXISTS") && r.contains("x OK [COPYUID "), "{r}");
}

#[tokio::test]
async fn search_keys() {
    let env = env().await;
    env.store.deliver(&alice(), "INBOX", &msg("Hello world", "the quick brown fox")).unwrap();
    env.store.deliver(&alice(), "INBOX", &msg("Other", "lazy dog")).unwrap();
    env.store
        .deliver(
            &alice(),
            "INBOX",
            b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\r\nDate: Tue, 1 Mar 2022 10:00:00 +0000\r\nX-Tag: special\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsch=C3=B6n\r\n",
        )
        .unwrap();
    let mut c = Client::logged_in(&env).await;
    c.ok("a SELECT INBOX").await;
    c.ok("b STORE 2 +FLAGS (\\Flagged \\Seen)").await;
    let cases: &[(&str, &str)] = &[
        ("ALL", "1 2 3"),
        ("SUBJECT hello", "1"),
        ("FROM bob", "1 2"),
        ("TO alice", "1 2"),
        ("BODY fox", "1"),
        ("TEXT lazy", "2"),
        ("TEXT world", "1"),
        ("FLAGGED", "2"),
        ("UNFLAGGED", "1 3"),
        ("SEEN", "2"),
        ("UNSEEN", "1 3"),
        ("NOT SEEN", "1 3"),
        ("OR SUBJECT hello SUBJECT other", "1 2"),
        ("2:3", "2 3"),
        ("UID 1,3", "1 3"),
        ("1:* NOT 2", "1 3"),
        ("HEADER X-Tag special", "3"),
        ("HEADER X-Tag \"\"", "3"),
        ("CHARSET UTF-8 SUBJECT {7+}\r\nGrüße", "3"),
        ("CHARSET UTF-8 BODY {6+}\r\nschön", "3"),
        ("FROM {7+}\r\nJürgen", "3"),
        ("SENTBEFORE 1-Mar-2022", "1 2"),
        ("SENTON 1-Mar-2022", "3"),
        ("SENTSINCE 1-Jan-2022", "1 2 3"),
        ("SINCE 1-Jan-2000", "1 2 3"),
        ("BEFORE 1-Jan-2000", ""),
        ("LARGER 10", "1 2 3"),
        ("SMALLER 10", ""),
        ("RECENT", "1 2 3"),
        ("NEW", "1 3"),
        ("OLD", ""),
        ("KEYWORD $Forwarded", ""),
        ("UNKEYWORD $Forwarded", "1 2 3"),
        ("DELETED", ""),
        ("UNDELETED ANSWERED", ""),
    ];
    for (i, (key, want)) in cases.iter().enumerate() {
        let r = c.ok(&format!("s{i} SEARCH {key}")).await;
        let line = r.lines().find(|l| l.starts_with("* SEARCH")).unwrap_or_else(|| panic!("{key}: {r}"));
        assert_eq!(line.trim_end(), format!("* SEARCH {want}").trim_end(), "SEARCH {key}");
    }
    let r = c.ok("u UID SEARCH SUBJECT other").await;
    assert!(r.contains("* SEARCH 2\r\n"), "{r}");
    c.expect("v SEARCH CHARSET KOI8-R ALL", "NO [BADCHARSET").await;
    c.expect("w SEARCH FOO", "BAD").await;
}

/// A Maildir copied in (Dovecot-style names with the delivery time and S=) is indexed without
/// a stat per file; INTERNALDATE is still the file's mtime (not the time in the name),
/// learnt when SEARCH or FETCH first asks, for every session (after a restart:
/// tests/it/store.rs `copied_in_mail_is_indexed_without_a_stat_and_dated_by_its_mtime`).
#[tokio::test]
async fn internal_date_of_copied_in_mail_is_its_mtime_learnt_on_demand() {
    let env = env().await;
    env.store.deliver(&alice(), "INBOX", &msg("ours", "x")).unwrap();
    let inbox = env.store.account_dir(&alice());
    // Named as delivered in Nov 2023, but its mtime (an APPEND with a date, or a migration)
    // says 5 Jan 2021.
    let path = inbox.join("cur/1700000001.M5P6Q7.elsewhere,S=16,W=16:2,S");
    std::fs::write(&path, b"Subject: old\r\n\r\nx\r\n").unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_609_851_600); // 2021-01-05 13:00 UTC
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    for (round, fetch_first) in [(0, false), (1, true)] {
        let mut c = Client::logged_in(&env).await;
        c.ok(&format!("a{round} SELECT INBOX")).await;
        if fetch_first {
            let r = c.ok("f FETCH 2 INTERNALDATE").await;
            assert!(r.contains("* 2 FETCH (INTERNALDATE \"05-Jan-2021 13:00:00 +0000\")"), "{r}");
        }
        let r = c.ok("s SEARCH BEFORE 1-Jan-2022").await;
        assert!(r.contains("* SEARCH 2\r\n"), "{r}");
        let r = c.ok("t SEARCH ON 5-Jan-2021").await;
        assert!(r.contains("* SEARCH 2\r\n"), "{r}");
        let r = c.ok("u FETCH 1:* (INTERNALDATE RFC822.SIZE)").await;
        assert!(r.contains("INTERNALDATE \"05-Jan-2021 13:00:00 +0000\" RFC822.SIZE 16"), "{r}");
    }
}

/// SEARCH decides from the index and the folder's cache where it can and reads a message only
/// for what the cache lacks; it decodes a field or a body only when the raw bytes did not
/// match. Every case runs twice: first with nothing cached (the messages are read), then
/// with the header blocks cached by the first run — the answers must not differ.
#[tokio::test]
async fn search_raw_decoded_cached_and_uncached() {
    let env = env().await;
    // 1: a quoted display name and a base64 text part; 2: a comment in From, QP body with a
    // soft line break inside the word; 3: plain.
    env.store
        .deliver(
            &alice(),
            "INBOX",
            b"From: \"Smith, John\" <js@example.test>\r\nSubject: Quarterly\r\nDate: Tue, 1 Mar 2022 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\nVGhlIHNlY3JldHdvcmQgaXMgaGVyZQ==\r\n",
        )
        .unwrap();
    env.store
        .deliver(
            &alice(),
            "INBOX",
            b"From: mary@example.test (Mary Major)\r\nSubject: =?us-ascii?q?Budget_plan?=\r\nDate: Wed, 2 Mar 2022 10:00:00 +0000\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nthe hol=\r\niday list\r\n",
        )
        .unwrap();
    env.store.deliver(&alice(), "INBOX", &msg("Holiday", "see you")).unwrap();
    let mut c = Client::logged_in(&env).await;
    c.ok("a SELECT INBOX").await;
    c.ok("b STORE 2 +FLAGS (work)").await;
    let cases: &[(&str, &str)] = &[
        ("BODY secretword", "1"),
        ("BODY VGhlIHNl", "1"),
        ("TEXT secretword", "1"),
        ("BODY holiday", "2"),
        ("TEXT holiday", "2 3"),
        ("FROM \"John <js\"", "1"),
        ("FROM \"Smith, John\"", "1"),
        ("FROM \"Mary Major\"", "2"),
        ("SUBJECT \"budget plan\"", "2"),
        ("SUBJECT HOLIDAY", "3"),
        ("KEYWORD work", "2"),
        ("KEYWORD WORK", "2"),
        ("UNKEYWORD work", "1 3"),
        ("NOT KEYWORD work SUBJECT quarterly", "1"),
        ("OR BODY secretword SUBJECT holiday", "1 3"),
        ("SENTSINCE 2-Mar-2022 NOT SENTON 7-Feb-2022", "2"),
        ("NOT BODY secretword", "2 3"),
    ];
    for round in ["uncached", "cached"] {
        for (i, (key, want)) in cases.iter().enumerate() {
            let r = c.ok(&format!("s{i} SEARCH {key}")).await;
            let line = r.lines().find(|l| l.starts_with("* SEARCH")).unwrap_or_else(|| panic!("{key}: {r}"));
            assert_eq!(line.trim_end(), format!("* SEARCH {want}").trim_end(), "SEARCH {key} ({round})");
        }
    }
}

#[tokio::test]
async fn idle_sees_delivery_and_concurrent_expunge() {
    let env = env().await;
    env.store.deliver(&alice(), "INBOX", &msg("first", "x")).unwrap();
    let mut a = Client::logged_in(&env).await;
    let mut b = Client::logged_in(&env).await;
    a.ok("a SELECT INBOX").await;
    b.ok("b SELECT INBOX").await;
    a.send("i IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));
    let t = std::time::Instant::now();
    env.store.deliver(&alice(), "INBOX", &msg("second", "x")).unwrap();
    assert_eq!(a.line().await.trim_end(), "* 2 EXISTS");
    assert!(t.elapsed() < Duration::from_secs(1), "EXISTS after {:?}", t.elapsed());
    assert!(a.line().await.starts_with("* "), "RECENT follows");
    // Another session flags and expunges message 1.
    b.ok("c STORE 1 +FLAGS (\\Deleted)").await;
    let l = a.line().await;
    assert!(l.starts_with("* 1 FETCH (UID 1 FLAGS (\\Deleted"), "{l}");
    b.ok("d EXPUNGE").await;
    assert_eq!(a.line().await.trim_end(), "* 1 EXPUNGE");
    a.send("DONE\r\n").await;
    assert!(a.until("i").await.starts_with("i OK"));
    let r = a.ok("e FETCH 1 (UID)").await;
    assert!(r.contains("* 1 FETCH (UID 2)"), "{r}");
    // Another session's flag change arrives at the next command.
    b.ok("f STORE 1 +FLAGS (\\Flagged)").await;
    let r = a.ok("g NOOP").await;
    assert!(r.contains("* 1 FETCH (UID 2 FLAGS (\\Flagged"), "{r}");
    // Expunges are held back during FETCH (RFC 3501 §7.4.1) and sent at NOOP.
    b.ok("h STORE 1 +FLAGS (\\Deleted)").await;
    b.ok("h2 EXPUNGE").await;
    let r = a.ok("j FETCH 1 (FLAGS)").await;
    assert!(!r.contains("EXPUNGE"), "{r}");
    let r = a.ok("k NOOP").await;
    assert!(r.contains("* 1 EXPUNGE"), "{r}");
    a.send("l IDLE\r\n").await;
    a.line().await;
    a.send("NOTDONE\r\n").await;
    assert!(a.until("l").await.starts_with("l BAD"));
}

#[tokio::test]
async fn id_enable_condstore_quota() {
    let env = env().await;
    env.store.deliver(&alice(), "INBOX", &msg("one", "x")).unwrap();
    env.store.deliver(&alice(), "INBOX", &msg("two", "x")).unwrap();
    let (mut c, _) = Client::connect(&env, true).await;
    let r = c.ok("a ID (\"name\" \"test\")").await;
    assert!(r.contains("* ID (\"name\" \"posthaste\""), "{r}");
    c.expect("b ENABLE CONDSTORE", "BAD").await;
    c.ok(&format!("c LOGIN alice@example.test \"{PASSWORD}\"")).await;
    let r = c.ok("d ENABLE CONDSTORE").await;
    assert!(r.contains("* ENABLED CONDSTORE"), "{r}");
    c.ok("e SELECT INBOX").await;
    let r = c.ok("f FETCH 1:* (FLAGS)").await;
    assert!(r.contains("MODSEQ ("), "{r}");
    let ms: u64 = r.split("MODSEQ (").nth(2).unwrap().split(')').next().unwrap().parse().unwrap();
    let r = c.ok(&format!("g STORE 2 (UNCHANGEDSINCE {ms}) +FLAGS (\\Seen)")).await;
    assert!(r.contains("g OK") && !r.contains("MODIFIED"), "{r}");
    let r = c.ok(&format!("h STORE 1:2 (UNCHANGEDSINCE {ms}) +FLAGS (\\Flagged)")).await;
    assert!(r.contains("[MODIFIED 2]"), "{r}");
    let r = c.ok(&format!("i FETCH 1:* (UID) (CHANGEDSINCE {ms})")).await;
    assert!(r.contains("* 1 FETCH") && r.contains("* 2 FETCH"), "{r}");
    let r = c.ok(&format!("j SEARCH MODSEQ {}", ms + 1)).await;
    assert!(r.contains("* SEARCH 1 2 (MODSEQ "), "{r}");
    let r = c.ok("k GETQUOTAROOT INBOX").await;
    assert!(r.contains("* QUOTAROOT \"INBOX\" \"\""), "{r}");
    env.directory.set_quota(&alice(), 2048).await.unwrap();
    // The quota is read at login.
    let mut c = Client::logged_in(&env).await;
    let r = c.ok("l GETQUOTA \"\"").await;
    assert!(r.contains("* QUOTA \"\" (STORAGE 1 2)"), "{r}");
    let big = "y".repeat(4000);
    c.expect(&format!("m APPEND INBOX {{{}+}}\r\n{big}", big.len()), "NO [OVERQUOTA]").await;
    c.expect("n SETQUOTA \"\" (STORAGE 1)", "NO").await;
}

#[tokio::test]
async fn autologout_after_idle_timeout() {
    let env = env_with(|c| c.imap.idle_timeout = Duration::from_millis(300)).await;
    let (mut c, _) = Client::connect(&env, true).await;
    let l = c.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
    assert!(c.closed().await);
}

/// The command sequence Thunderbird sends on startup, opening INBOX, reading, flagging and
/// deleting a message (as seen in its IMAP logs).
#[tokio::test]
async fn thunderbird_like_sequence() {
    let env = env().await;
    env.store.deliver(&alice(), "INBOX", &msg("tb", "Thunderbird reads this")).unwrap();
    let (mut c, _) = Client::connect(&env, true).await;
    c.ok("1 capability").await;
    c.ok(&format!("2 authenticate PLAIN {}", plain("alice@example.test", PASSWORD))).await;
    c.ok("3 ID (\"name\" \"Thunderbird\" \"version\" \"128.0\")").await;
    c.ok("4 namespace").await;
    c.ok("5 enable CONDSTORE").await;
    let r = c.ok("6 lsub \"\" \"*\"").await;
    assert!(r.contains("\"INBOX\"") && r.contains("\"Sent\""), "{r}");
    let r = c.ok("7 list (SPECIAL-USE) \"\" \"*\"").await;
    assert!(r.contains("\\Trash) \"/\" \"Trash\""), "{r}");
    let r = c.ok("8 getquotaroot \"INBOX\"").await;
    assert!(r.contains("* QUOTAROOT"), "{r}");
    let r = c.ok("9 select \"INBOX\" (CONDSTORE)").await;
    assert!(r.contains("[HIGHESTMODSEQ "), "{r}");
    let r = c.ok("10 UID fetch 1:* (FLAGS)").await;
    assert!(r.contains("* 1 FETCH (UID 1 FLAGS (\\Recent) MODSEQ ("), "{r}");
    let r = c
        .ok("11 UID fetch 1 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])")
        .await;
    assert!(r.contains("Subject: tb\r\n") && !r.contains("Thunderbird reads"), "{r}");
    let r = c.ok("12 UID fetch 1 (UID RFC822.SIZE BODY[]<0.32768>)").await;
    assert!(r.contains("BODY[]<0> {") && r.contains("Thunderbird reads this") && r.contains("\\Seen"), "{r}");
    c.ok("13 UID store 1 +Flags (\\Flagged)").await;
    let r = c.ok("14 STATUS \"Sent\" (UIDNEXT MESSAGES UNSEEN RECENT)").await;
    assert!(r.contains("* STATUS \"Sent\" (UIDNEXT 1 MESSAGES 0 UNSEEN 0 RECENT 0)"), "{r}");
    let r = c.ok("15 UID move 1 \"Trash\"").await;
    assert!(r.contains("* 1 EXPUNGE"), "{r}");
    c.send("16 IDLE\r\n").await;
    assert!(c.line().await.starts_with("+"));
    env.store.deliver(&alice(), "INBOX", &msg("tb2", "x")).unwrap();
    assert_eq!(c.line().await.trim_end(), "* 1 EXISTS");
    c.send("DONE\r\n").await;
    c.until("16").await;
    let r = c.ok("17 UID fetch 1:* (FLAGS) (CHANGEDSINCE 1)").await;
    assert!(r.contains("* 1 FETCH (UID 2 FLAGS (\\Recent) MODSEQ ("), "{r}");
    c.ok("18 logout").await;
}

/// Random bytes as commands: every line gets a reply (BAD, or BYE after too many errors),
/// the session never hangs or panics.
#[tokio::test]
async fn random_garbage_always_gets_a_reply() {
    let env = env().await;
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut c = Client::logged_in(&env).await;
    c.ok("s SELECT INBOX").await;
    let mut sent = 0;
    while sent < 300 {
        let len = (next() % 80) as usize;
        // No CR/LF (one line each) and no `{` (a literal announcement would wait for data).
        let mut line: Vec<u8> =
            (0..len).map(|_| (next() % 256) as u8).filter(|b| !matches!(b, b'\r' | b'\n' | b'{')).collect();
        if next() % 3 == 0 {
            // Garbage after a real command name reaches the command parsers too.
            let cmds: [&[u8]; 8] = [
                b"t FETCH ",
                b"t UID SEARCH ",
                b"t STORE ",
                b"t LIST ",
                b"t SELECT ",
                b"t APPEND ",
                b"t COPY ",
                b"t STATUS ",
            ];
            let mut l = cmds[(next() % 8) as usize].to_vec();
            l.extend_from_slice(&line);
            line = l;
        }
        line.extend_from_slice(b"\r\n");
        let written = async {
            c.io.get_mut().write_all(&line).await?;
            c.io.get_mut().flush().await
        }
        .await;
        if written.is_err() {
            // The server hung up: only after telling us why.
            let mut rest = String::new();
            loop {
                let l = c.line().await;
                if l.is_empty() {
                    break;
                }
                rest.push_str(&l);
            }
            assert!(rest.contains("* BYE"), "closed without BYE: {rest:?}");
            c = Client::logged_in(&env).await;
            c.ok("s SELECT INBOX").await;
            continue;
        }
        let reply = c.line().await;
        assert!(!reply.is_empty(), "no reply to {:?}", String::from_utf8_lossy(&line));
        sent += 1;
        if reply.starts_with("* BYE") {
            c = Client::logged_in(&env).await;
            c.ok("s SELECT INBOX").await;
        } else if reply.starts_with("* ") && !reply.contains("BAD") {
            // An untagged response before the tagged one (a command that parsed).
            c.until("t").await;
        }
    }
}

/// Messages stored with bare LF (written by another Maildir tool) are served with CRLF, and
/// RFC822.SIZE counts what is sent; nested multiparts are numbered per RFC 3501 §6.4.5.
#[tokio::test]
async fn lf_messages_and_nested_parts() {
    let env = env().await;
    let nested = b"Subject: nested\nContent-Type: multipart/mixed; boundary=outer\n\n--outer\nContent-Type: multipart/alternative; boundary=inner\n\n--inner\nContent-Type: text/plain\n\nplain text\n--inner\nContent-Type: text/html\n\n<p>html</p>\n--inner--\n--outer\nContent-Type: message/rfc822\n\nSubject: attached\nFrom: x@example.test\n\nattached body\n--outer--\n";
    env.store.deliver(&alice(), "INBOX", nested).unwrap();
    env.store.deliver(&alice(), "INBOX", b"Subject: header only\n").unwrap();
    let mut c = Client::logged_in(&env).await;
    c.ok("a SELECT INBOX").await;
    let r = c.ok("b FETCH 1 (RFC822.SIZE BODY.PEEK[])").await;
    let size: usize = r.split("RFC822.SIZE ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let lit: usize = r.split("BODY[] {").nth(1).unwrap().split('}').next().unwrap().parse().unwrap();
    assert_eq!(size, lit, "{r}");
    assert_eq!(size, nested.len() + nested.iter().filter(|&&b| b == b'\n').count());
    assert!(!r.replace("\r\n", "").contains('\n'), "bare LF sent: {r:?}");
    let r = c.ok("c FETCH 1 (BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2.1])").await;
    assert!(r.contains("BODY[1.1] {10}\r\nplain text"), "{r}");
    assert!(r.contains("BODY[1.2.MIME] {27}\r\nContent-Type: text/html\r\n\r\n"), "{r}");
    assert!(r.contains("BODY[2.HEADER] {43}\r\nSubject: attached\r\nFrom: x@example.test\r\n\r\n"), "{r}");
    assert!(r.contains("BODY[2.TEXT] {13}\r\nattached body"), "{r}");
    assert!(r.contains("BODY[2.1] {13}\r\nattached body"), "{r}");
    let r = c.ok("d FETCH 1 (BODYSTRUCTURE)").await;
    assert!(r.contains("\"ALTERNATIVE\""), "{r}");
    assert!(r.contains("(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" "), "{r}");
    assert!(r.contains("\"attached\""), "the embedded ENVELOPE: {r}");
    let r = c.ok("e FETCH 2 (ENVELOPE BODYSTRUCTURE BODY.PEEK[TEXT] BODY.PEEK[1])").await;
    assert!(r.contains("ENVELOPE (NIL \"header only\" NIL NIL NIL NIL NIL NIL NIL NIL)"), "{r}");
    assert!(r.contains("BODY[TEXT] {0}"), "{r}");
}

/// Failed IMAP logins count with the guard shared by all protocols: the banning failure
/// ends the session, and the client's next connection gets no greeting at all.
#[tokio::test]
async fn failed_logins_are_counted_by_the_guard() {
    let mut env = env_with(|c| c.guard.auth_failures = 2).await;
    let guard = Arc::new(posthaste::guard::Guard::in_memory(&env.ctx.config.guard));
    let ctx =
        Context::new(env.ctx.config.clone(), env.directory.clone(), env.store.clone(), None, guard.clone());
    env.ctx = Arc::new(ctx);
    let (mut c, _) = Client::connect(&env, true).await;
    c.send("a LOGIN alice@example.test wrong1\r\n").await;
    assert!(c.line().await.starts_with("a NO"));
    c.send("b LOGIN alice@example.test wrong2\r\n").await;
    assert!(c.line().await.starts_with("b NO"));
    assert!(c.line().await.starts_with("* BYE"), "the ban ends the session");
    let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    assert!(guard.check(ip).is_banned(), "192.0.2.7 must be banned after two failures");
}

/// Appends `n` messages with subjects `{prefix}1…` to `folder` through the session,
/// returning every response.
async fn append_n(c: &mut Client, folder: &str, prefix: &str, n: usize) -> String {
    let mut all = String::new();
    for i in 1..=n {
        let m = msg(&format!("{prefix}{i}"), "body");
        all.push_str(
            &c.ok(&format!("ap{i} APPEND {folder} {{{}+}}\r\n{}", m.len(), String::from_utf8_lossy(&m)))
                .await,
        );
    }
    all
}

fn uidvalidity_of(r: &str) -> u32 {
    r.split("[UIDVALIDITY ")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no UIDVALIDITY in {r}"))
}

/// Issue "IMAP as complete and correct as Dovecot", bug 1: after DELETE "box", CREATE
/// "box", SELECT "box" and a few APPENDs, the selected session got `* 1 EXPUNGE` after each
/// APPEND and its view shrank to nothing while the Maildir held every message: the
/// in-memory index of the deleted folder (its expunge tombstones, its UIDVALIDITY) lived on
/// for the new one. The new folder must get a new, greater UIDVALIDITY (RFC 3501 §2.3.1.1)
/// even within the same second, and show every message appended to it.
#[tokio::test]
async fn deleted_and_recreated_folder_shows_its_appends() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    c.ok("a CREATE box").await;
    let old = uidvalidity_of(&c.ok("b SELECT box").await);
    append_n(&mut c, "box", "old", 4).await;
    c.ok("c STORE 1:2 +FLAGS (\\Deleted)").await;
    c.ok("d EXPUNGE").await;
    c.ok("e SELECT INBOX").await;
    c.ok("f DELETE box").await;
    c.ok("g CREATE box").await;
    let r = c.ok("h SELECT box").await;
    assert!(r.contains("* 0 EXISTS"), "{r}");
    let new = uidvalidity_of(&r);
    assert!(new > old, "a re-created folder needs a greater UIDVALIDITY: {old} then {new}");
    let r = append_n(&mut c, "box", "new", 3).await;
    assert!(!r.contains("EXPUNGE"), "{r}");
    assert!(r.contains("* 3 EXISTS"), "{r}");
    let r = c.ok("i CHECK").await;
    assert!(!r.contains("EXPUNGE"), "{r}");
    let r = c.ok("j FETCH 1:* (UID FLAGS)").await;
    assert_eq!(r.matches(" FETCH (").count(), 3, "{r}");
    assert!(r.contains("* 3 FETCH (UID 3 "), "{r}");
    let r = c.ok("k SEARCH ALL").await;
    assert!(r.contains("* SEARCH 1 2 3\r\n"), "{r}");
    // A second session agrees, and so does the Maildir.
    let mut d = Client::logged_in(&env).await;
    let r = d.ok("a STATUS box (MESSAGES UIDNEXT UIDVALIDITY)").await;
    assert!(r.contains("MESSAGES 3 UIDNEXT 4 UIDVALIDITY "), "{r}");
    let dir = env.store.account_dir(&alice()).join(".box");
    let files = std::fs::read_dir(dir.join("cur")).unwrap().count()
        + std::fs::read_dir(dir.join("new")).unwrap().count();
    assert_eq!(files, 3);
}

/// Bug 1's audit: a session that has the folder selected while another deletes it and
/// creates it again never takes the new folder's messages for its own (its UIDs are void:
/// RFC 3501 §2.3.1.1), and cannot change them with its old numbers.
#[tokio::test]
async fn deleted_and_recreated_folder_ends_the_stale_selection() {
    let env = env().await;
    let mut a = Client::logged_in(&env).await;
    let mut b = Client::logged_in(&env).await;
    a.ok("a CREATE box").await;
    append_n(&mut a, "box", "old", 2).await;
    b.ok("a SELECT box").await;
    a.ok("b DELETE box").await;
    a.ok("c CREATE box").await;
    append_n(&mut a, "box", "new", 2).await;
    // b's next command may not touch the new folder's messages with b's old view…
    let r = b.cmd("b STORE 1 +FLAGS (\\Flagged)").await;
    assert!(r.lines().last().unwrap().starts_with("b NO"), "{r}");
    // …and the next sync ends the session: its UIDs are void (RFC 3501 §2.3.1.1).
    b.send("c NOOP\r\n").await;
    let r = b.rest().await;
    assert!(r.starts_with("* BYE"), "{r}");
    let r = a.ok("d SELECT box").await;
    assert!(r.contains("* 2 EXISTS"), "{r}");
    let r = a.ok("e FETCH 1:* (FLAGS)").await;
    assert!(!r.contains("\\Flagged"), "{r}");
}

/// Bug 1's audit: RENAME onto the name of a deleted folder, and a folder removed and made
/// again on disk by another program while posthaste had it in memory.
#[tokio::test]
async fn rename_onto_old_name_and_folder_replaced_on_disk() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    c.ok("a CREATE b").await;
    append_n(&mut c, "b", "b", 3).await;
    let old_b = uidvalidity_of(&c.ok("c SELECT b").await);
    c.ok("d STORE 1:3 +FLAGS (\\Deleted)").await;
    c.ok("e EXPUNGE").await;
    c.ok("f CREATE a").await;
    append_n(&mut c, "a", "a", 2).await;
    let va = uidvalidity_of(&c.ok("g SELECT a").await);
    c.ok("h SELECT INBOX").await;
    c.ok("i DELETE b").await;
    c.ok("j RENAME a b").await;
    let r = c.ok("k SELECT b").await;
    assert!(r.contains("* 2 EXISTS"), "{r}");
    let vb = uidvalidity_of(&r);
    assert_eq!(vb, va, "RENAME keeps the folder's UIDVALIDITY");
    assert_ne!(vb, old_b);
    let r = append_n(&mut c, "b", "more", 2).await;
    assert!(!r.contains("EXPUNGE") && r.contains("* 4 EXISTS"), "{r}");
    let r = c.ok("l SEARCH ALL").await;
    assert!(r.contains("* SEARCH 1 2 3 4\r\n"), "{r}");
    c.ok("m SELECT INBOX").await;

    // Another program removes "b" and makes an empty Maildir under the same name.
    let dir = env.store.account_dir(&alice()).join(".b");
    std::fs::remove_dir_all(&dir).unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let r = c.ok("n SELECT b").await;
    assert!(r.contains("* 0 EXISTS"), "{r}");
    assert!(uidvalidity_of(&r) > vb, "{r}");
    let r = append_n(&mut c, "b", "fresh", 2).await;
    assert!(!r.contains("EXPUNGE") && r.contains("* 2 EXISTS"), "{r}");
    let r = c.ok("o FETCH 1:* (UID)").await;
    assert!(r.contains("* 1 FETCH (UID 1)") && r.contains("* 2 FETCH (UID 2)"), "{r}");
}

/// Bug 1's audit: RENAME INBOX moves its messages into a new folder (RFC 3501 §6.3.5) and
/// leaves INBOX empty; a session with INBOX selected hears of the expunges, and both
/// folders take new mail normally afterwards.
#[tokio::test]
async fn rename_inbox_then_both_folders_take_new_mail() {
    let env = env().await;
    for i in 1..=3 {
        env.store.deliver(&alice(), "INBOX", &msg(&format!("m{i}"), "x")).unwrap();
    }
    let mut a = Client::logged_in(&env).await;
    let mut b = Client::logged_in(&env).await;
    b.ok("a SELECT INBOX").await;
    a.ok("a RENAME INBOX Old").await;
    let r = b.ok("b NOOP").await;
    assert_eq!(r.matches("EXPUNGE").count(), 3, "{r}");
    env.store.deliver(&alice(), "INBOX", &msg("m4", "x")).unwrap();
    let r = b.ok("c NOOP").await;
    assert!(r.contains("* 1 EXISTS"), "{r}");
    let r = a.ok("b STATUS Old (MESSAGES UIDNEXT)").await;
    assert!(r.contains("MESSAGES 3 UIDNEXT 4"), "{r}");
    append_n(&mut a, "Old", "o", 1).await;
    let r = a.ok("c SELECT Old").await;
    assert!(r.contains("* 4 EXISTS"), "{r}");
    // A folder created again under the old name of a renamed one starts empty.
    a.ok("d RENAME Old Older").await;
    a.ok("e CREATE Old").await;
    let r = a.ok("f SELECT Old").await;
    assert!(r.contains("* 0 EXISTS"), "{r}");
    let r = append_n(&mut a, "Old", "n", 1).await;
    assert!(!r.contains("EXPUNGE") && r.contains("* 1 EXISTS"), "{r}");
}

/// Bug 6 of the same issue: a client library saw BODYSTRUCTURE report a multipart message
/// as single-part and SEARCH return fewer messages than it had appended, in folders its
/// suite deletes and creates again. Both are bug 1: pinned on a re-created folder.
#[tokio::test]
async fn bodystructure_and_search_counts_in_a_recreated_folder() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    let multi = "From: a@example.test\r\nSubject: multi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=xx\r\n\r\n--xx\r\nContent-Type: text/plain\r\n\r\none\r\n--xx\r\nContent-Type: text/html\r\n\r\n<b>two</b>\r\n--xx--\r\n";
    let plain = "From: a@example.test\r\nSubject: plain\r\n\r\njust text\r\n";
    for round in 0..2 {
        c.ok("a CREATE box").await;
        c.ok("b SELECT box").await;
        for m in [plain, multi, plain, multi] {
            c.ok(&format!("c APPEND box {{{}+}}\r\n{m}", m.len())).await;
        }
        let r = c.ok("d FETCH 1:4 (BODYSTRUCTURE)").await;
        let lines: Vec<&str> = r.lines().filter(|l| l.contains("BODYSTRUCTURE")).collect();
        assert_eq!(lines.len(), 4, "round {round}: {r}");
        for (i, l) in lines.iter().enumerate() {
            let multipart = l.contains("BODYSTRUCTURE ((");
            assert_eq!(multipart, i % 2 == 1, "round {round}, message {}: {l}", i + 1);
        }
        let r = c.ok("e SEARCH ALL").await;
        assert!(r.contains("* SEARCH 1 2 3 4\r\n"), "round {round}: {r}");
        let r = c.ok("f SEARCH SUBJECT multi").await;
        assert!(r.contains("* SEARCH 2 4\r\n"), "round {round}: {r}");
        c.ok("g SELECT INBOX").await;
        c.ok("h DELETE box").await;
    }
}

/// Bug 2 of the issue: EXAMINE (and SELECT) said `* 0 RECENT` for messages just APPENDed
/// while STATUS counted them. RFC 3501 §2.3.2: \Recent belongs to the first session that
/// is told of the message; EXAMINE reports it without taking it (§6.3.2), SELECT takes
/// it, and STATUS counts what no session has taken (§6.3.10).
#[tokio::test]
async fn recent_of_appended_messages_in_examine_select_and_status() {
    let env = env().await;
    let mut a = Client::logged_in(&env).await;
    a.ok("a CREATE box").await;
    append_n(&mut a, "box", "m", 2).await;
    let r = a.ok("b STATUS box (RECENT MESSAGES)").await;
    assert!(r.contains("(RECENT 2 MESSAGES 2)"), "{r}");
    let r = a.ok("c EXAMINE box").await;
    assert!(r.contains("* 2 RECENT"), "EXAMINE: {r}");
    let r = a.ok("d FETCH 1:* (FLAGS)").await;
    assert_eq!(r.matches("\\Recent").count(), 2, "{r}");
    let r = a.ok("e STATUS box (RECENT)").await;
    assert!(r.contains("(RECENT 2)"), "EXAMINE takes no \\Recent away: {r}");
    let r = a.ok("f SELECT box").await;
    assert!(r.contains("* 2 RECENT"), "SELECT: {r}");
    let mut b = Client::logged_in(&env).await;
    let r = b.ok("a STATUS box (RECENT)").await;
    assert!(r.contains("(RECENT 0)"), "{r}");
    let r = b.ok("b SELECT box").await;
    assert!(r.contains("* 0 RECENT"), "{r}");
    // A message appended by the session that has the folder selected is its own \Recent.
    let r = append_n(&mut a, "box", "n", 1).await;
    assert!(r.contains("* 3 EXISTS") && r.contains("* 3 RECENT"), "{r}");
    // One appended while an EXAMINE session looks is \Recent there too.
    let mut e = Client::logged_in(&env).await;
    e.ok("a EXAMINE box").await;
    let m = msg("late", "x");
    let r = e.ok(&format!("b APPEND box {{{}+}}\r\n{}", m.len(), String::from_utf8_lossy(&m))).await;
    assert!(r.contains("* 4 EXISTS") && r.contains("* 1 RECENT"), "{r}");
}

/// Bug 3 of the issue: `LSUB "" "box/%"` left out the unsubscribed parent of a subscribed
/// child. RFC 3501 §6.3.9: with `%` such a parent is listed, flagged \Noselect.
#[tokio::test]
async fn lsub_lists_unsubscribed_parents_of_subscribed_children_as_noselect() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    c.ok("a CREATE box/test1").await;
    c.ok("b CREATE box/test2/deep").await;
    c.ok("c SUBSCRIBE box/test1").await;
    c.ok("d SUBSCRIBE box/test2/deep").await;
    let r = c.ok("e LSUB \"\" \"box/%\"").await;
    let lines: Vec<&str> = r.lines().filter(|l| l.starts_with("* LSUB")).collect();
    assert_eq!(lines, ["* LSUB () \"/\" \"box/test1\"", "* LSUB (\\Noselect) \"/\" \"box/test2\""], "{r}");
    let r = c.ok("f LSUB \"\" \"box/*\"").await;
    let lines: Vec<&str> = r.lines().filter(|l| l.starts_with("* LSUB")).collect();
    assert_eq!(lines, ["* LSUB () \"/\" \"box/test1\"", "* LSUB () \"/\" \"box/test2/deep\""], "{r}");
    let r = c.ok("g LSUB \"\" \"%\"").await;
    assert!(r.contains("* LSUB (\\Noselect) \"/\" \"box\"\r\n"), "{r}");
    // A subscribed parent is listed as itself, not \Noselect.
    c.ok("h SUBSCRIBE box/test2").await;
    let r = c.ok("i LSUB \"\" \"box/%\"").await;
    assert!(r.contains("* LSUB () \"/\" \"box/test2\"\r\n"), "{r}");
}

/// Bug 4 of the issue: the ENVELOPE of an address with a source route put the route into
/// the mailbox name. RFC 3501 §7.4.2: the route is the second field (adl).
#[tokio::test]
async fn envelope_of_source_routed_address_puts_the_route_in_adl() {
    let env = env().await;
    let m = b"From: Joe Q <@route.example:joe@example.test>\r\nTo: <@a.example,@b.example:ann@example.test>\r\nCc: plain@example.test\r\nSubject: routed\r\n\r\nx\r\n";
    env.store.deliver(&alice(), "INBOX", m).unwrap();
    let mut c = Client::logged_in(&env).await;
    c.ok("a SELECT INBOX").await;
    let r = c.ok("b FETCH 1 (ENVELOPE)").await;
    assert!(r.contains("((\"Joe Q\" \"@route.example\" \"joe\" \"example.test\"))"), "{r}");
    assert!(r.contains("((NIL \"@a.example,@b.example\" \"ann\" \"example.test\"))"), "{r}");
    assert!(r.contains("((NIL NIL \"plain\" \"example.test\"))"), "{r}");
}

/// Bug 5 of the issue: an empty folder said HIGHESTMODSEQ 1 and the first message appended
/// to it also got MODSEQ 1, so a client that synced the empty folder never learnt of it
/// with CHANGEDSINCE 1. RFC 7162 §3.1.1: every change gets a MODSEQ above any the client
/// has seen.
#[tokio::test]
async fn first_message_modseq_is_above_the_empty_folders_highestmodseq() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    c.ok("a ENABLE CONDSTORE").await;
    c.ok("b CREATE box").await;
    let r = c.ok("c SELECT box").await;
    let empty: u64 = r.split("[HIGHESTMODSEQ ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
    assert!(empty >= 1, "{r}");
    append_n(&mut c, "box", "m", 1).await;
    let r = c.ok(&format!("d FETCH 1:* (FLAGS) (CHANGEDSINCE {empty})")).await;
    assert!(r.contains("* 1 FETCH ("), "the new message is a change since {empty}: {r}");
    let r = c.ok("e STATUS box (HIGHESTMODSEQ)").await;
    let after: u64 = r.split("HIGHESTMODSEQ ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    assert!(after > empty, "{r}");
    // The same for a folder whose index was written before the fix (HIGHESTMODSEQ 0 in
    // its header).
    c.ok("f CREATE old").await;
    let idx = env.store.account_dir(&alice()).join(".old").join("posthaste-uidlist");
    c.ok("g STATUS old (HIGHESTMODSEQ)").await;
    let text = std::fs::read_to_string(&idx).unwrap();
    let mut head: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    *head.last_mut().unwrap() = "0";
    std::fs::write(&idx, format!("{}\n", head.join(" "))).unwrap();
    let mut d = Client::logged_in(&env).await;
    d.ok("a ENABLE CONDSTORE").await;
    let r = d.ok("b SELECT old").await;
    assert!(r.contains("[HIGHESTMODSEQ 1]"), "{r}");
    append_n(&mut d, "old", "m", 1).await;
    let r = d.ok("c FETCH 1:* (FLAGS) (CHANGEDSINCE 1)").await;
    assert!(r.contains("* 1 FETCH ("), "{r}");
}

/// Bug 5 (b): SEARCH MODSEQ's answer (RFC 7162 §3.1.5: the highest MODSEQ of the matched
/// messages) grows after a STORE changes one of them, here in a re-created folder too.
#[tokio::test]
async fn search_modseq_grows_after_store() {
    let env = env().await;
    let mut c = Client::logged_in(&env).await;
    for round in 0..2 {
        c.ok("a CREATE box").await;
        append_n(&mut c, "box", "m", 3).await;
        c.ok("b SELECT box (CONDSTORE)").await;
        let highest = |r: &str| -> u64 {
            r.split("(MODSEQ ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap()
        };
        let r = c.ok("c SEARCH MODSEQ 1").await;
        assert!(r.contains("* SEARCH 1 2 3 (MODSEQ "), "round {round}: {r}");
        let before = highest(&r);
        c.ok("d STORE 2 +FLAGS (\\Seen)").await;
        let r = c.ok("e SEARCH MODSEQ 1").await;
        let after = highest(&r);
        assert!(after > before, "round {round}: {before} then {after}: {r}");
        let r = c.ok(&format!("f SEARCH MODSEQ {after}")).await;
        assert!(r.contains(&format!("* SEARCH 2 (MODSEQ {after})")), "round {round}: {r}");
        c.ok("g SELECT INBOX").await;
        c.ok("h DELETE box").await;
    }
}

/// Hardening issue: before authentication nothing large is buffered. posthaste read and
/// kept a literal up to `max_literal_size` (50 MiB) from a client that had not logged in;
/// twenty such connections took the daemon from 54 MB to 1,108 MB. Before login a literal
/// is at most 8 KiB: a larger synchronizing one is refused before the client sends it, a
/// larger non-synchronizing one (RFC 7888 §4) ends the connection unread, as Dovecot does.
#[tokio::test]
async fn large_literal_before_login_is_never_read() {
    let env = env().await;
    // LITERAL+: BYE at once; the 50 MB never need to arrive (the pipe holds 1 MiB, so a
    // server that read them would wait here for the rest and the test would time out).
    let (mut c, _) = Client::connect(&env, true).await;
    c.send("a LOGIN {50000000+}\r\n").await;
    c.send_bytes(&vec![b'x'; 64 * 1024]).await;
    let r = c.rest().await;
    assert_eq!(r, "* BYE Literal size too large\r\n");
    // Synchronizing: refused without "+", and the session goes on.
    let (mut c, _) = Client::connect(&env, true).await;
    c.send("b LOGIN {100000}\r\n").await;
    let r = c.line().await;
    assert!(r.starts_with("b NO [TOOBIG]"), "{r}");
    c.ok("c NOOP").await;
    // The limit counts the whole command: many small literals add up.
    let mut cmd = "d ID (".to_owned();
    for i in 0..12 {
        cmd.push_str(&format!("\"k{i}\" {{7000+}}\r\n{} ", "v".repeat(7000)));
    }
    cmd.push_str(")\r\n");
    c.send(&cmd).await;
    let r = c.rest().await;
    assert!(r.starts_with("* BYE Literal size too large"), "{r}");
    // What login needs still works with literals, and after login the configured limit
    // (50 MiB) applies again.
    let (mut c, _) = Client::connect(&env, true).await;
    let user = "alice@example.test";
    c.send(&format!("e LOGIN {{{}+}}\r\n{user} {{{}+}}\r\n{PASSWORD}\r\n", user.len(), PASSWORD.len())).await;
    assert!(c.until("e").await.contains("e OK"));
    let m = msg("big", &"y".repeat(100_000));
    c.ok(&format!("f APPEND INBOX {{{}+}}\r\n{}", m.len(), String::from_utf8_lossy(&m))).await;
}

/// Hardening issue: on port 143 before STARTTLS, LOGIN is refused anyway, so its literals
/// are refused without being read: a synchronizing one gets the tagged NO instead of "+",
/// a non-synchronizing one a BYE (RFC 7888 §4) — the password never crosses in clear.
#[tokio::test]
async fn login_literal_before_starttls_is_refused_unread() {
    let env = env().await;
    let (mut c, _) = Client::connect(&env, false).await;
    c.send("a LOGIN {18}\r\n").await;
    let r = c.line().await;
    assert!(r.starts_with("a NO [PRIVACYREQUIRED]"), "{r}");
    c.ok("b NOOP").await;
    c.send("c login {18+}\r\nalice@example.test {21+}\r\n").await;
    let r = c.rest().await;
    assert!(r.starts_with("* BYE"), "{r}");
    // Other commands' literals before STARTTLS are read as usual (within 8 KiB).
    let (mut c, _) = Client::connect(&env, false).await;
    let r = c.cmd("d ID ({4+}\r\nname {4+}\r\ntest)").await;
    assert!(r.contains("d OK"), "{r}");
}
