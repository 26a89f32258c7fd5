//! The front door (`net::serve`) that every listener goes through, over real TCP: a banned
//! client is closed at connect without a byte on all seven listeners (SMTP 25/587/465, IMAP
//! 143/993, POP3 110/995) while other clients get their greeting, and the connection limits
//! answer with each protocol's own refusal line.
//!
//! Loopback clients are never banned, so each test runs in a network namespace of its own
//! (unshare(2) on the test's thread: nothing is left behind, the host's network is not
//! touched) with documentation addresses (RFC 5737) on its loopback device: the server on
//! 192.0.2.1, clients on 192.0.2.7 and up. Needs root and `ip` (iproute2).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{is_root, require, run};
use posthaste::config::{Config, TlsConfig};
use posthaste::directory::Directory;
use posthaste::guard::Guard;
use posthaste::net::{self, Stream};
use posthaste::queue::Queue;
use posthaste::store::Store;
use posthaste::{imap, pop3, smtp};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};

const SERVER: &str = "192.0.2.1";
const BANNED: &str = "192.0.2.7";

/// Run `f` on a new thread in a new network namespace whose loopback device is up and
/// carries `addrs` (/32 each), with a current-thread runtime of its own. unshare(2) moves
/// only the calling thread; the namespace goes away with the thread and its sockets.
fn in_private_netns<T: Send>(addrs: &[&str], f: impl AsyncFnOnce() -> T + Send) -> T {
    let ip = require("ip", "iproute2");
    assert!(is_root(), "the front-door tests create a network namespace and need root");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall; it changes the network namespace of this thread only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            // Children inherit the namespace of the thread that spawns them.
            let mut steps = vec![vec!["link".to_owned(), "set".into(), "lo".into(), "up".into()]];
            for a in addrs {
                steps.push(vec!["addr".into(), "add".into(), format!("{a}/32"), "dev".into(), "lo".into()]);
            }
            for args in steps {
                let mut cmd = Command::new(&ip);
                cmd.args(&args);
                let out = run(cmd, None);
                assert!(out.success(), "ip {args:?}: {}", out.all());
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(f())
        })
        .join()
        .unwrap()
    })
}

struct Env {
    _dir: tempfile::TempDir,
    ca: rustls::pki_types::CertificateDer<'static>,
    smtp: Arc<smtp::Context>,
    imap: Arc<imap::Context>,
    pop3: Arc<pop3::Context>,
}

/// The three protocols' contexts as the daemon builds them, sharing `guard`.
async fn env(guard: Arc<Guard>, tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    posthaste::tls::generate_self_signed("mail.example.test", &[], &cert, &key).unwrap();
    let text = format!("hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n", data.display());
    let mut config = Config::parse(&text, Path::new("test.toml")).unwrap();
    config.tls = Some(TlsConfig { cert: cert.clone(), key });
    tweak(&mut config);
    let config = Arc::new(config);
    let directory = Directory::open(&config.directory_url()).await.unwrap();
    let store = Store::new(config.mail_dir());
    let queue = Queue::open(&config, store.clone(), directory.clone()).unwrap();
    let tls = posthaste::tls::load_acceptor(config.tls.as_ref().unwrap()).unwrap();
    let ca = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice()).next().unwrap().unwrap();
    let smtp = smtp::Context::new(config.clone(), directory.clone(), queue, Some(tls.clone()), guard.clone());
    let imap = imap::Context::new(
        config.clone(),
        directory.clone(),
        store.clone(),
        Some(tls.clone()),
        guard.clone(),
    );
    let pop3 = pop3::Context::new(config, directory, store, Some(tls), guard);
    Env { _dir: dir, ca, smtp: Arc::new(smtp), imap: Arc::new(imap), pop3: Arc::new(pop3) }
}

/// One listener: its name, where it listens, whether TLS starts at once, and how its
/// greeting begins.
struct Listening {
    name: &'static str,
    addr: SocketAddr,
    implicit_tls: bool,
    greeting: &'static str,
}

/// Every listener of the daemon on 192.0.2.1, each through `net::serve`.
async fn serve_all(env: &Env, stop: &tokio::sync::watch::Receiver<bool>) -> Vec<Listening> {
    async fn bind() -> TcpListener {
        TcpListener::bind((SERVER.parse::<IpAddr>().unwrap(), 0)).await.unwrap()
    }
    let mut out = Vec::new();
    let mut note = |name, l: &TcpListener, implicit_tls, greeting| {
        out.push(Listening { name, addr: l.local_addr().unwrap(), implicit_tls, greeting })
    };
    for (p, tls) in
        [(smtp::Profile::Mx, false), (smtp::Profile::Submission, false), (smtp::Profile::Submissions, true)]
    {
        let l = bind().await;
        note(p.name(), &l, tls, "220 mail.example.test ESMTP");
        tokio::spawn(net::serve(env.smtp.clone(), p, l, stop.clone()));
    }
    for (p, tls) in [(imap::Profile::Imap, false), (imap::Profile::Imaps, true)] {
        let l = bind().await;
        note(p.name(), &l, tls, "* OK [CAPABILITY");
        tokio::spawn(net::serve(env.imap.clone(), p, l, stop.clone()));
    }
    for (p, tls) in [(pop3::Profile::Pop3, false), (pop3::Profile::Pop3s, true)] {
        let l = bind().await;
        note(p.name(), &l, tls, "+OK mail.example.test POP3");
        tokio::spawn(net::serve(env.pop3.clone(), p, l, stop.clone()));
    }
    out
}

/// A client connection from `src`.
struct Conn {
    io: BufReader<Box<dyn Stream>>,
}

impl Conn {
    async fn open(src: &str, to: &Listening, ca: &rustls::pki_types::CertificateDer<'static>) -> Conn {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind((src.parse::<IpAddr>().unwrap(), 0).into()).unwrap();
        let tcp = sock.connect(to.addr).await.unwrap();
        let io: Box<dyn Stream> = if to.implicit_tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
            let name = rustls::pki_types::ServerName::try_from("mail.example.test").unwrap();
            Box::new(connector.connect(name, tcp).await.unwrap())
        } else {
            Box::new(tcp)
        };
        Conn { io: BufReader::new(io) }
    }

    /// The first line the server sends, or "" when it closes without a byte.
    async fn first_line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
            .await
            .expect("an answer or a close within 10 s")
            .unwrap();
        line
    }
}

/// A raw TCP connection from `src` (no TLS: the front door decides before any handshake).
async fn raw(src: &str, to: &Listening) -> tokio::net::TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((src.parse::<IpAddr>().unwrap(), 0).into()).unwrap();
    sock.connect(to.addr).await.unwrap()
}

/// What the server sends before it closes the connection (up to 10 s).
async fn all_until_close(mut s: tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server closes the connection within 10 s")
        .unwrap();
    got
}

#[test]
fn banned_clients_are_closed_at_connect_on_every_listener() {
    in_private_netns(&[SERVER, BANNED, "192.0.2.8"], async || {
        let guard = Arc::new(Guard::in_memory(&Default::default()));
        let env = env(guard.clone(), |_| {}).await;
        guard.ban(BANNED.parse().unwrap(), None, "front door test").unwrap();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let listeners = serve_all(&env, &stop).await;
        assert_eq!(listeners.len(), 7);
        for l in &listeners {
            // Closed before a greeting (or a TLS handshake on 465, 993, 995): not one byte.
            let got = all_until_close(raw(BANNED, l).await).await;
            assert!(got.is_empty(), "{}: a banned client got {:?}", l.name, String::from_utf8_lossy(&got));
            // Any other client is served by the same listener.
            let line = Conn::open("192.0.2.8", l, &env.ca).await.first_line().await;
            assert!(line.starts_with(l.greeting), "{}: {line:?}", l.name);
        }
    });
}

#[test]
fn connection_limits_refuse_with_each_protocols_own_line() {
    let clients = ["192.0.2.8", "192.0.2.9", "192.0.2.10"];
    let mut addrs = vec![SERVER];
    addrs.extend(clients);
    in_private_netns(&addrs, async || {
        let guard = Arc::new(Guard::in_memory(&Default::default()));
        let env = env(guard, |c| {
            (c.smtp.max_connections, c.smtp.max_connections_per_ip) = (2, 1);
            (c.imap.max_connections, c.imap.max_connections_per_ip) = (2, 1);
            (c.pop3.max_connections, c.pop3.max_connections_per_ip) = (2, 1);
        })
        .await;
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let listeners = serve_all(&env, &stop).await;
        // The clear-text listener of each protocol; the limits count all its listeners.
        let expect = [
            (
                "smtp",
                "421 4.7.0 Too many connections from your address, try again later\r\n",
                "421 4.3.2 Too many connections, try again later\r\n",
            ),
            (
                "imap",
                "* BYE Too many connections from your address\r\n",
                "* BYE Too many connections, try again later\r\n",
            ),
            (
                "pop3",
                "-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n",
                "-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            ),
        ];
        for (name, per_ip, total) in expect {
            let l = listeners.iter().find(|l| l.name == name).unwrap();
            let mut first = Conn::open(clients[0], l, &env.ca).await;
            assert!(first.first_line().await.starts_with(l.greeting), "{name}");
            // A second connection from the same address: over max_connections_per_ip.
            let got = all_until_close(raw(clients[0], l).await).await;
            assert_eq!(String::from_utf8_lossy(&got), per_ip, "{name}: per-IP refusal");
            // Another address is still served…
            let mut second = Conn::open(clients[1], l, &env.ca).await;
            assert!(second.first_line().await.starts_with(l.greeting), "{name}");
            // …until max_connections are open.
            let got = all_until_close(raw(clients[2], l).await).await;
            assert_eq!(String::from_utf8_lossy(&got), total, "{name}: refusal over the total");
            // A session that ends gives its slot back.
            drop(first);
            let mut line = String::new();
            for _ in 0..50 {
                let mut again = Conn::open(clients[2], l, &env.ca).await;
                line = again.first_line().await;
                if line.starts_with(l.greeting) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(line.starts_with(l.greeting), "{name}: the slot was not released: {line:?}");
            drop(second);
        }
    });
}
