//! The outbound queue against real peers: Postfix's smtp-sink plays the remote MTA. The
//! tests of DNS behaviour (MX lookup, A fallback, null MX and MX loops) ask dnsmasq; the
//! others only need a route to their sink and get it from the in-process double
//! (`posthaste::dns::Zone`). Each test has its own 127.0.1.x addresses, ports and temp dir,
//! so the tests run in parallel.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;
use posthaste::address::Address;
use posthaste::config::Config;
use posthaste::directory::Target;
use posthaste::dns::{Failure, Zone};
use posthaste::queue::spool::{RcptStatus, Spool};
use posthaste::queue::{admin, DsnRouter, Incoming, Queue, QueueError, RemoteDsn};
use posthaste::store::Store;

/// A child process killed (by its own pid) when the test ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tracing_init() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("posthaste=debug").try_init();
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// dnsmasq on 127.0.0.1 with the given record options (`--mx-host=…`, `--host-record=…`).
fn dnsmasq(dir: &Path, records: &[String]) -> (Peer, SocketAddr) {
    let port = free_udp_port();
    let child = Command::new("/usr/sbin/dnsmasq")
        .args(["--no-daemon", "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces"])
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (apt install dnsmasq)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Ready when it answers on TCP (it listens on both).
    wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(addr).is_ok());
    (Peer(child), addr)
}

/// smtp-sink on ip:port dumping every transaction into `dump_dir`.
fn smtp_sink(ip: Ipv4Addr, port: u16, dump_dir: &Path, extra: &[&str]) -> Peer {
    std::fs::create_dir_all(dump_dir).unwrap();
    let child = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "root", "-h", "sink.test"])
        .arg("-d")
        .arg(format!("{}/msg.", dump_dir.display()))
        .args(extra)
        .arg(format!("{ip}:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink (from postfix)");
    wait_until(Duration::from_secs(5), || std::net::TcpStream::connect((ip, port)).is_ok());
    Peer(child)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn dumps(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files.iter().map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()).collect()
}

/// A config for `data_dir` using the dnsmasq at `dns`; `queue_extra` adds `[queue]` keys
/// (retry 1 s doubling to 2 s unless it sets them).
fn config(data_dir: &Path, dns: SocketAddr, port: u16, queue_extra: &str) -> Config {
    let retry =
        if queue_extra.contains("retry_") { "" } else { "retry_initial = \"1s\"\nretry_max = \"2s\"" };
    let text = format!(
        "hostname = \"mail.local.test\"\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"{dns}\"]\n\
         [queue]\nremote_port = {port}\nremote_timeout = \"5s\"\n{retry}\n{queue_extra}\n",
        data_dir.display()
    );
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn incoming(sender: Option<&str>, rcpts: &[&str]) -> Incoming {
    Incoming {
        sender: sender.map(addr),
        recipients: rcpts.iter().map(|r| (addr(r), vec![Target::Remote(addr(r))])).collect(),
        message_id: Some("<test@local.test>".into()),
        client_ip: None,
        helo: None,
        auth_user: None,
        folder: None,
    }
}

const MESSAGE: &str = "Received: from client.test by mail.local.test\r\n\
    From: Sender <sender@sender.test>\r\n\
    To: rcpt@remote.test\r\n\
    Subject: queue test\r\n\
    Message-ID: <test@local.test>\r\n\
    \r\n\
    Hello.\r\n\
    .a line starting with a dot\r\n\
    Bye.\r\n";

struct Daemon {
    queue: Queue,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    fn start(queue: &Queue) -> Daemon {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let q = queue.clone();
        let task = tokio::spawn(async move { q.run(rx).await });
        Daemon { queue: queue.clone(), stop, task }
    }
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

fn open(config: &Config) -> Queue {
    Queue::open_with(config, Store::new(config.mail_dir()), Arc::new(RemoteDsn)).unwrap()
}

/// Nothing listens here: a test whose DNS is a [`Zone`] must not ask a real server.
const NO_DNS: &str = "127.0.0.1:9";

/// A queue asking `zone` instead of `[dns]`.
fn open_zone(config: &Config, zone: &Arc<Zone>) -> Queue {
    let dns: Arc<dyn posthaste::dns::Resolver> = zone.clone();
    Queue::open_with_dns(config, Store::new(config.mail_dir()), Arc::new(RemoteDsn), Some(dns)).unwrap()
}

/// `domain`'s MX is mx.`domain` at `ip`.
fn route(zone: &Zone, domain: &str, ip: Ipv4Addr) {
    let mx = format!("mx.{domain}");
    zone.add_mx(domain, 10, &mx).add_addr(&mx, ip);
}

fn spool_ids(config: &Config) -> Vec<String> {
    Spool::open(&config.queue_dir()).unwrap().ids().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_lookup_and_delivery() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let ip = Ipv4Addr::new(127, 0, 1, 1);
    let port = free_tcp_port(ip);
    let (_dns, dns) = dnsmasq(
        tmp.path(),
        &["--mx-host=remote.test,mx.remote.test,10".into(), format!("--address=/mx.remote.test/{ip}")],
    );
    let _sink = smtp_sink(ip, port, &tmp.path().join("sink"), &[]);
    let config = config(&tmp.path().join("data"), dns, port, "");
    let queue = open(&config);
    let id = queue
        .accept(incoming(Some("sender@sender.test"), &["a@remote.test", "b@remote.test"]), MESSAGE.into())
        .await
        .unwrap();
    assert_eq!(spool_ids(&config), vec![id]);
    let daemon = Daemon::start(&queue);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    let dumps = dumps(&tmp.path().join("sink"));
    assert_eq!(dumps.len(), 1, "one transaction for the domain: {dumps:?}");
    let d = &dumps[0];
    assert!(d.contains("X-Mail-Args: <sender@sender.test>"), "{d}");
    assert!(d.contains("X-Rcpt-Args: <a@remote.test>") && d.contains("X-Rcpt-Args: <b@remote.test>"), "{d}");
    assert!(d.contains("X-Helo-Args: mail.local.test"), "{d}");
    assert!(d.contains("Subject: queue test"), "{d}");
    // Dot-stuffed on the wire, unstuffed by the receiver (RFC 5321 §4.5.2).
    assert!(d.contains("\n.a line starting with a dot") && !d.contains("..a line"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_fallback_without_mx() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let ip = Ipv4Addr::new(127, 0, 1, 2);
    let port = free_tcp_port(ip);
    // --local makes dnsmasq answer "no MX" (NOERROR, no data) instead of REFUSED.
    let (_dns, dns) =
        dnsmasq(tmp.path(), &[format!("--host-record=arec.test,{ip}"), "--local=/arec.test/".into()]);
    let _sink = smtp_sink(ip, port, &tmp.path().join("sink"), &[]);
    let config = config(&tmp.path().join("data"), dns, port, "");
    let queue = open(&config);
    queue.accept(incoming(Some("sender@sender.test"), &["x@arec.test"]), MESSAGE.into()).await.unwrap();
    let daemon = Daemon::start(&queue);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    let dumps = dumps(&tmp.path().join("sink"));
    assert!(dumps.len() == 1 && dumps[0].contains("X-Rcpt-Args: <x@arec.test>"), "{dumps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_down_then_up_is_deferred_then_delivered() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let ip = Ipv4Addr::new(127, 0, 1, 3);
    let port = free_tcp_port(ip);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", ip);
    let config = config(&tmp.path().join("data"), NO_DNS.parse().unwrap(), port, "");
    let queue = open_zone(&config, &zone);
    let id =
        queue.accept(incoming(Some("sender@sender.test"), &["a@remote.test"]), MESSAGE.into()).await.unwrap();
    let daemon = Daemon::start(&queue);
    let deferred = eventually(Duration::from_secs(10), || {
        let list = admin::list(&config.queue_dir()).unwrap();
        list.len() == 1 && list[0].attempts >= 1 && list[0].recipients[0].status == RcptStatus::Deferred
    })
    .await;
    let list = admin::list(&config.queue_dir()).unwrap();
    assert!(deferred, "{list:?}");
    assert_eq!(list[0].id, id);
    assert!(
        list[0].recipients[0].reply.as_deref().unwrap().contains("connect to mx.remote.test"),
        "{list:?}"
    );
    let _sink = smtp_sink(ip, port, &tmp.path().join("sink"), &[]);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "never retried");
    daemon.stop().await;
    assert_eq!(dumps(&tmp.path().join("sink")).len(), 1);
}

/// hickory 0.24 reported SERVFAIL as "no records", and the queue turned "no records" for
/// an MX host's address into `5.1.2 host has no address`: a resolver's bad minute bounced
/// mail. A SERVFAIL is a temporary DNS failure (RFC 5321 §5.1, RFC 3463 4.4.3): deferred,
/// no DSN, delivered once DNS answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_for_the_mx_hosts_address_defers_instead_of_bouncing() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let (ip, sender_ip) = (crate::support::loopback_ip(), crate::support::loopback_ip());
    let port = free_tcp_port(ip);
    let zone = Arc::new(Zone::new());
    zone.add_mx("remote.test", 10, "mx.remote.test").fail("mx.remote.test", Failure::ServFail);
    route(&zone, "sender.test", sender_ip);
    let _sink = smtp_sink(ip, port, &tmp.path().join("sink"), &[]);
    let _sender = smtp_sink(sender_ip, port, &tmp.path().join("sender"), &[]);
    let config = config(
        &tmp.path().join("data"),
        NO_DNS.parse().unwrap(),
        port,
        "retry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    let queue = open_zone(&config, &zone);
    let id =
        queue.accept(incoming(Some("sender@sender.test"), &["a@remote.test"]), MESSAGE.into()).await.unwrap();
    let daemon = Daemon::start(&queue);
    let qdir = config.queue_dir();
    assert!(
        eventually(Duration::from_secs(10), || admin::list(&qdir)
            .unwrap()
            .first()
            .is_some_and(|e| e.attempts == 1))
        .await
    );
    let entry = &admin::list(&qdir).unwrap()[0];
    assert_eq!(entry.recipients[0].status, RcptStatus::Deferred, "{entry:?}");
    let reply = entry.recipients[0].reply.clone().unwrap_or_default();
    assert!(reply.starts_with("4.4.3 DNS lookup for mx.remote.test failed"), "{reply}");
    assert!(zone.asked().contains(&"A mx.remote.test".to_owned()), "{:?}", zone.asked());
    // DNS is back: the retry delivers, and the sender never got a DSN.
    zone.remove("mx.remote.test").add_addr("mx.remote.test", ip);
    assert_eq!(admin::flush(&qdir, Some(&id)).unwrap(), 1);
    daemon.queue.wake();
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    assert_eq!(dumps(&tmp.path().join("sink")).len(), 1);
    assert!(dumps(&tmp.path().join("sender")).is_empty(), "a DSN went to the sender");
}

/// The sink on `bad` rejects every RCPT with 5xx; the sender's domain has its MX on `good`.
/// The queue of the returned config asks the returned zone.
fn bounce_setup(tmp: &Path, bad: Ipv4Addr, good: Ipv4Addr) -> (Vec<Peer>, Config, Arc<Zone>) {
    let port = free_tcp_port(bad);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", bad);
    route(&zone, "sender.test", good);
    let bad_sink = smtp_sink(bad, port, &tmp.join("bad"), &["-f", "RCPT"]);
    let good_sink = smtp_sink(good, port, &tmp.join("good"), &[]);
    let config = config(&tmp.join("data"), NO_DNS.parse().unwrap(), port, "");
    (vec![bad_sink, good_sink], config, zone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_5xx_fails_and_bounces_to_the_sender_by_mx() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let (_peers, config, zone) =
        bounce_setup(tmp.path(), Ipv4Addr::new(127, 0, 1, 4), Ipv4Addr::new(127, 0, 1, 5));
    let queue = open_zone(&config, &zone);
    let id = queue
        .accept(incoming(Some("sender@sender.test"), &["a@remote.test", "b@remote.test"]), MESSAGE.into())
        .await
        .unwrap();
    let daemon = Daemon::start(&queue);
    let good = tmp.path().join("good");
    assert!(eventually(Duration::from_secs(10), || !dumps(&good).is_empty()).await, "no DSN");
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    let dumps = dumps(&good);
    assert_eq!(dumps.len(), 1, "one DSN for both recipients: {dumps:?}");
    let dsn = &dumps[0];
    // RFC 5321 §4.5.5: the DSN has the null reverse-path.
    assert!(dsn.contains("X-Mail-Args: <>"), "{dsn}");
    assert!(dsn.contains("X-Rcpt-Args: <sender@sender.test>"), "{dsn}");
    let raw = dsn.split_once("\nReceived: ").unwrap().1; // skip smtp-sink's own lines
    let raw = raw.split_once("\nFrom: ").map(|(_, r)| format!("From: {r}")).unwrap();
    let msg = mail_parser::MessageParser::default().parse(raw.as_bytes()).expect("DSN parses");
    let ct = msg.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert!(msg
        .from()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .eq_ignore_ascii_case("MAILER-DAEMON@mail.local.test"));
    assert_eq!(msg.parts.len(), 4, "multipart + text + delivery-status + headers");
    let status = String::from_utf8_lossy(msg.parts[2].contents());
    assert!(status.contains("Reporting-MTA: dns; mail.local.test"), "{status}");
    assert!(status.contains(&format!("X-Posthaste-Queue-ID: {id}")), "{status}");
    assert!(status.contains("Final-Recipient: rfc822; a@remote.test"), "{status}");
    assert!(status.contains("Final-Recipient: rfc822; b@remote.test"), "{status}");
    assert!(status.contains("Action: failed") && status.contains("Status: 5.3.0"), "{status}");
    assert!(status.contains("Remote-MTA: dns; mx.remote.test"), "{status}");
    assert!(status.contains("Diagnostic-Code: smtp; 500 5.3.0"), "{status}");
    let headers = String::from_utf8_lossy(msg.parts[3].contents());
    assert!(headers.contains("Subject: queue test") && !headers.contains("Hello."), "{headers}");
    assert!(!raw.contains("base64"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_sender_is_never_bounced() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let (_peers, config, zone) =
        bounce_setup(tmp.path(), Ipv4Addr::new(127, 0, 1, 6), Ipv4Addr::new(127, 0, 1, 7));
    let queue = open_zone(&config, &zone);
    queue.accept(incoming(None, &["a@remote.test"]), MESSAGE.into()).await.unwrap();
    let daemon = Daemon::start(&queue);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;
    assert!(spool_ids(&config).is_empty(), "a DSN was queued for a <> sender");
    assert!(dumps(&tmp.path().join("good")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_mail_expires_and_bounces() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let down = Ipv4Addr::new(127, 0, 1, 8);
    let good = Ipv4Addr::new(127, 0, 1, 9);
    let port = free_tcp_port(good);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", down);
    route(&zone, "sender.test", good);
    let _sink = smtp_sink(good, port, &tmp.path().join("good"), &[]);
    let config = config(&tmp.path().join("data"), NO_DNS.parse().unwrap(), port, "expire = \"3s\"");
    let queue = open_zone(&config, &zone);
    queue.accept(incoming(Some("sender@sender.test"), &["a@remote.test"]), MESSAGE.into()).await.unwrap();
    let daemon = Daemon::start(&queue);
    let good_dir = tmp.path().join("good");
    assert!(eventually(Duration::from_secs(15), || !dumps(&good_dir).is_empty()).await, "no DSN");
    assert!(eventually(Duration::from_secs(5), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    let dsn = &dumps(&good_dir)[0];
    assert!(dsn.contains("Status: 4.4.7") && dsn.contains("delivery time expired"), "{dsn}");
    assert!(dsn.contains("connect to mx.remote.test"), "{dsn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_mx_loop_fail_at_once_in_one_dsn() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let good = Ipv4Addr::new(127, 0, 1, 10);
    let port = free_tcp_port(good);
    let (_dns, dns) = dnsmasq(
        tmp.path(),
        &[
            "--mx-host=nullmx.test,.,0".into(),
            "--mx-host=loop.test,mail.local.test,10".into(),
            "--host-record=mail.local.test,127.0.1.11".into(),
            "--mx-host=sender.test,mx.sender.test,10".into(),
            format!("--address=/mx.sender.test/{good}"),
        ],
    );
    let _sink = smtp_sink(good, port, &tmp.path().join("good"), &[]);
    let config = config(&tmp.path().join("data"), dns, port, "");
    let queue = open(&config);
    queue
        .accept(incoming(Some("sender@sender.test"), &["a@nullmx.test", "b@loop.test"]), MESSAGE.into())
        .await
        .unwrap();
    let daemon = Daemon::start(&queue);
    let good_dir = tmp.path().join("good");
    assert!(eventually(Duration::from_secs(10), || !dumps(&good_dir).is_empty()).await, "no DSN");
    assert!(eventually(Duration::from_secs(5), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    let d = dumps(&good_dir);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("Status: 5.1.10") && d[0].contains("null MX"), "{}", d[0]);
    assert!(d[0].contains("Status: 5.4.6") && d[0].contains("loops back to myself"), "{}", d[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_delivers_what_was_accepted_and_cleans_temp_files() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let ip = Ipv4Addr::new(127, 0, 1, 12);
    let port = free_tcp_port(ip);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", ip);
    let _sink = smtp_sink(ip, port, &tmp.path().join("sink"), &[]);
    let config = config(&tmp.path().join("data"), NO_DNS.parse().unwrap(), port, "");
    // "Before the crash": accepted, never delivered (no manager ran), process gone.
    let id = {
        let queue = open_zone(&config, &zone);
        queue.accept(incoming(Some("sender@sender.test"), &["a@remote.test"]), MESSAGE.into()).await.unwrap()
    };
    // What a crash in the middle of writing leaves: a temp file and an uncommitted message.
    let qdir = config.queue_dir();
    std::fs::write(qdir.join("tmp/0123456789abc01234567.json.deadbeef"), b"{\"half").unwrap();
    std::fs::write(qdir.join("msg/0123456789abc01234567"), b"never acknowledged").unwrap();
    let queue = open_zone(&config, &zone);
    let daemon = Daemon::start(&queue);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "not delivered");
    daemon.stop().await;
    assert_eq!(std::fs::read_dir(qdir.join("tmp")).unwrap().count(), 0, "temp file left");
    assert_eq!(std::fs::read_dir(qdir.join("msg")).unwrap().count(), 0, "orphan message left");
    let dumps = dumps(&tmp.path().join("sink"));
    assert_eq!(dumps.len(), 1, "delivered once: {dumps:?}");
    assert!(!id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_recipients_are_not_delivered_again_after_restart() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let ip = Ipv4Addr::new(127, 0, 1, 13);
    let down = Ipv4Addr::new(127, 0, 1, 14);
    let port = free_tcp_port(ip);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", ip);
    route(&zone, "down.test", down);
    let _sink = smtp_sink(ip, port, &tmp.path().join("sink"), &[]);
    let config = config(
        &tmp.path().join("data"),
        NO_DNS.parse().unwrap(),
        port,
        "retry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    let queue = open_zone(&config, &zone);
    let id = queue
        .accept(incoming(Some("sender@sender.test"), &["a@remote.test", "b@down.test"]), MESSAGE.into())
        .await
        .unwrap();
    let daemon = Daemon::start(&queue);
    assert!(
        eventually(Duration::from_secs(10), || {
            admin::list(&config.queue_dir()).unwrap().first().is_some_and(|e| e.attempts == 1)
        })
        .await
    );
    daemon.stop().await;
    let entry = &admin::list(&config.queue_dir()).unwrap()[0];
    assert_eq!(entry.recipients[0].status, RcptStatus::Delivered);
    assert_eq!(entry.recipients[1].status, RcptStatus::Deferred);
    // Restart and force a retry: only b@down.test is tried again.
    assert_eq!(admin::flush(&config.queue_dir(), Some(&id)).unwrap(), 1);
    let queue = open_zone(&config, &zone);
    let daemon = Daemon::start(&queue);
    assert!(
        eventually(Duration::from_secs(10), || {
            admin::list(&config.queue_dir()).unwrap().first().is_some_and(|e| e.attempts == 2)
        })
        .await
    );
    daemon.stop().await;
    assert_eq!(dumps(&tmp.path().join("sink")).len(), 1, "a@remote.test got it twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_list_flush_delete() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let down = Ipv4Addr::new(127, 0, 1, 15);
    let port = free_tcp_port(down);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", down);
    let config = config(
        &tmp.path().join("data"),
        NO_DNS.parse().unwrap(),
        port,
        "retry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    let qdir = config.queue_dir();
    let queue = open_zone(&config, &zone);
    let id1 =
        queue.accept(incoming(Some("sender@sender.test"), &["a@remote.test"]), MESSAGE.into()).await.unwrap();
    let id2 = queue.accept(incoming(None, &["b@remote.test"]), MESSAGE.into()).await.unwrap();
    let daemon = Daemon::start(&queue);
    assert!(
        eventually(Duration::from_secs(10), || admin::list(&qdir).unwrap().iter().all(|e| e.attempts == 1))
            .await
    );
    let list = admin::list(&qdir).unwrap();
    assert_eq!(list.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![id1.clone(), id2.clone()]);
    assert_eq!(list[0].sender, "sender@sender.test");
    assert_eq!(list[1].sender, "");
    assert_eq!(list[0].size, MESSAGE.len() as u64);
    assert_eq!(list[0].recipients[0].rcpt, "a@remote.test");
    let json = serde_json::to_value(&list).unwrap();
    assert_eq!(json[0]["recipients"][0]["status"], "deferred");
    let next_before = list[0].next_attempt.clone();

    // flush makes it due now; the daemon picks it up when woken (the CLI signals it).
    assert_eq!(admin::flush(&qdir, None).unwrap(), 2);
    daemon.queue.wake();
    assert!(
        eventually(Duration::from_secs(10), || admin::list(&qdir).unwrap().iter().all(|e| e.attempts == 2))
            .await,
        "flush not picked up"
    );
    assert_ne!(admin::list(&qdir).unwrap()[0].next_attempt, next_before);

    // delete while the daemon holds it in its schedule: gone, and not resurrected.
    admin::delete(&qdir, &id1).unwrap();
    assert!(matches!(admin::delete(&qdir, &id1), Err(QueueError::UnknownId(_))));
    assert!(matches!(admin::delete(&qdir, "../../etc/passwd"), Err(QueueError::UnknownId(_))));
    assert!(matches!(admin::flush(&qdir, Some(&id1)), Err(QueueError::UnknownId(_))));
    admin::flush(&qdir, None).unwrap();
    daemon.queue.wake();
    assert!(eventually(Duration::from_secs(10), || admin::list(&qdir).unwrap()[0].attempts == 3).await);
    daemon.stop().await;
    let ids = spool_ids(&config);
    assert_eq!(ids, vec![id2]);
}

/// A router that sends every DSN to the sender's local mailbox.
struct LocalDsn;

impl DsnRouter for LocalDsn {
    fn dsn_targets<'a>(
        &'a self,
        sender: &'a Address,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Target>, String>> + Send + 'a>> {
        Box::pin(async move { Ok(vec![Target::Local(sender.clone())]) })
    }
}

fn maildir_new(config: &Config, account: &str) -> Vec<String> {
    let a = addr(account);
    dumps(&config.mail_dir().join(a.domain()).join(a.local()).join("new"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_message_goes_straight_to_the_maildir() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp.path().join("data"), "127.0.0.1:9".parse().unwrap(), 25, "");
    let queue = open(&config);
    let mut inc = incoming(Some("sender@sender.test"), &[]);
    inc.recipients = vec![
        (addr("alice@local.test"), vec![Target::Local(addr("alice@local.test"))]),
        // An alias that expands to alice too: one copy.
        (
            addr("info@local.test"),
            vec![Target::Local(addr("alice@local.test")), Target::Local(addr("bob@local.test"))],
        ),
    ];
    queue.accept(inc, MESSAGE.into()).await.unwrap();
    // No manager runs: accept itself delivered.
    let alice = maildir_new(&config, "alice@local.test");
    assert_eq!(alice.len(), 1);
    assert!(
        alice[0].starts_with("Return-Path: <sender@sender.test>\r\n")
            && alice[0].contains("Subject: queue test")
    );
    assert_eq!(maildir_new(&config, "bob@local.test").len(), 1);
    assert!(spool_ids(&config).is_empty());
    assert_eq!(std::fs::read_dir(config.queue_dir().join("msg")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_message_local_part_from_spool_and_local_sender_bounce_to_mailbox() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let bad = Ipv4Addr::new(127, 0, 1, 16);
    let port = free_tcp_port(bad);
    let zone = Arc::new(Zone::new());
    route(&zone, "remote.test", bad);
    let _sink = smtp_sink(bad, port, &tmp.path().join("bad"), &["-f", "RCPT"]);
    let config = config(&tmp.path().join("data"), NO_DNS.parse().unwrap(), port, "");
    let dns: Arc<dyn posthaste::dns::Resolver> = zone.clone();
    let queue =
        Queue::open_with_dns(&config, Store::new(config.mail_dir()), Arc::new(LocalDsn), Some(dns)).unwrap();
    let mut inc = incoming(Some("carol@local.test"), &["x@remote.test"]);
    inc.recipients.push((addr("alice@local.test"), vec![Target::Local(addr("alice@local.test"))]));
    queue.accept(inc, MESSAGE.into()).await.unwrap();
    assert!(maildir_new(&config, "alice@local.test").is_empty(), "mixed: the manager delivers locally");
    assert_eq!(spool_ids(&config).len(), 1);
    let daemon = Daemon::start(&queue);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    assert_eq!(maildir_new(&config, "alice@local.test").len(), 1);
    let bounces = maildir_new(&config, "carol@local.test");
    assert_eq!(bounces.len(), 1, "the DSN is in the local sender's mailbox");
    assert!(bounces[0].starts_with("Return-Path: <>\r\n"), "{}", bounces[0]);
    assert!(
        bounces[0].contains("Final-Recipient: rfc822; x@remote.test") && bounces[0].contains("Status: 5.3.0")
    );
}

/// A minimal SMTP server with real STARTTLS (Python's ssl module, i.e. OpenSSL, with the
/// system's snakeoil certificate): smtp-sink has no TLS. Kept inline so this test file is
/// self-contained; it is written to the test's temp dir and run with python3.
const TLS_PEER: &str = r#""""A minimal SMTP server with real STARTTLS (Python's ssl = OpenSSL), for the queue tests.

usage: tls_peer.py IP PORT OUTDIR MODE
MODE "good": STARTTLS works. MODE "badtls": after "220 ready" it sends garbage instead of a
TLS handshake. Each received message is written to OUTDIR/msg.N with a first line
"tls=True|False" (whether the transaction ran inside TLS).
"""
import socket, ssl, sys, os

ip, port, outdir, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key")
srv = socket.create_server((ip, port))
count = 0

def session(conn):
    global count
    tls = False
    f = conn.makefile("rwb")
    def send(line):
        f.write(line.encode() + b"\r\n"); f.flush()
    send("220 peer.test ESMTP")
    mail, rcpts = None, []
    while True:
        line = f.readline()
        if not line:
            return
        cmd = line.decode().strip()
        verb = cmd.split(" ")[0].upper()
        if verb == "EHLO":
            send("250-peer.test"); send("250-8BITMIME")
            if not tls: send("250-STARTTLS")
            send("250 SIZE 1000000")
        elif verb == "STARTTLS":
            send("220 2.0.0 ready")
            if mode == "badtls":
                conn.sendall(b"this is not a TLS server hello\r\n"); conn.close(); return
            conn = ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rwb"); tls = True
        elif verb == "MAIL":
            mail = cmd; send("250 2.1.0 ok")
        elif verb == "RCPT":
            rcpts.append(cmd); send("250 2.1.5 ok")
        elif verb == "DATA":
            send("354 go ahead")
            data = b""
            while True:
                l = f.readline()
                if l in (b".\r\n", b""):
                    break
                data += l
            count += 1
            with open(os.path.join(outdir, "msg.%d" % count), "wb") as out:
                out.write(("tls=%s\n%s\n%s\n" % (tls, mail, "\n".join(rcpts))).encode() + data)
            send("250 2.0.0 queued")
        elif verb == "QUIT":
            send("221 bye"); return
        else:
            send("250 ok")

while True:
    c, _ = srv.accept()
    try:
        session(c)
    except Exception as e:
        print("session error:", e, flush=True)
    finally:
        try: c.close()
        except Exception: pass
"#;

fn tls_peer(dir: &Path, ip: Ipv4Addr, port: u16, mode: &str) -> Peer {
    let script = dir.join("tls_peer.py");
    std::fs::write(&script, TLS_PEER).unwrap();
    let out = dir.join(format!("tls-{mode}"));
    std::fs::create_dir_all(&out).unwrap();
    let child = Command::new("python3")
        .arg(&script)
        .arg(ip.to_string())
        .arg(port.to_string())
        .arg(&out)
        .arg(mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    assert!(wait_until(Duration::from_secs(5), || std::net::TcpStream::connect((ip, port)).is_ok()));
    Peer(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_used_when_offered_and_a_failed_handshake_falls_back_to_plaintext() {
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let good = Ipv4Addr::new(127, 0, 1, 17);
    let bad = Ipv4Addr::new(127, 0, 1, 18);
    let port = free_tcp_port(good);
    let zone = Arc::new(Zone::new());
    route(&zone, "tls.test", good);
    route(&zone, "badtls.test", bad);
    let _good = tls_peer(tmp.path(), good, port, "good");
    let _bad = tls_peer(tmp.path(), bad, port, "badtls");
    let config = config(&tmp.path().join("data"), NO_DNS.parse().unwrap(), port, "");
    let queue = open_zone(&config, &zone);
    let mut message = MESSAGE.replace("Bye.", "Tsch\u{fc}ss.").into_bytes();
    message.extend_from_slice(b"..two dots\r\n");
    let size = message.len();
    queue
        .accept(incoming(Some("sender@sender.test"), &["a@tls.test", "b@badtls.test"]), message)
        .await
        .unwrap();
    let daemon = Daemon::start(&queue);
    assert!(eventually(Duration::from_secs(10), || spool_ids(&config).is_empty()).await, "still queued");
    daemon.stop().await;
    let over_tls = dumps(&tmp.path().join("tls-good"));
    assert_eq!(over_tls.len(), 1);
    let d = &over_tls[0];
    assert!(d.starts_with("tls=True\n"), "{d}");
    // RFC 1870 SIZE and RFC 6152 BODY=8BITMIME, both offered by the peer and needed.
    assert!(d.contains(&format!("MAIL FROM:<sender@sender.test> SIZE={} BODY=8BITMIME", size)), "{d}");
    // On the wire the dot-stuffing is visible (RFC 5321 §4.5.2).
    assert!(d.contains("\r\n..a line starting with a dot\r\n") && d.contains("\r\n...two dots\r\n"), "{d}");
    let plain = dumps(&tmp.path().join("tls-badtls"));
    assert_eq!(plain.len(), 1, "retried in plaintext after the TLS failure");
    assert!(plain[0].starts_with("tls=False\n"), "{}", plain[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_edits_as_root_keep_the_spool_owner() {
    use std::os::unix::fs::MetadataExt;
    tracing_init();
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp.path().join("data"), "127.0.0.1:9".parse().unwrap(), 25, "");
    let qdir = config.queue_dir();
    // Before the daemon ever ran: nothing to list, and the CLI creates no root-owned spool.
    assert!(admin::list(&qdir).unwrap().is_empty());
    assert_eq!(admin::flush(&qdir, None).unwrap(), 0);
    assert!(!qdir.exists());
    let queue = open(&config);
    let id =
        queue.accept(incoming(Some("sender@sender.test"), &["a@remote.test"]), MESSAGE.into()).await.unwrap();
    // The daemon's user owns the spool (here: nobody); root's CLI rewrites keep that owner.
    std::os::unix::fs::chown(&qdir, Some(65534), Some(65534)).unwrap();
    admin::flush(&qdir, Some(&id)).unwrap();
    let meta = std::fs::metadata(qdir.join(format!("env/{id}.json"))).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
}
