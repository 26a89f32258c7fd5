//! [`Zone`]: the in-process DNS test double. Records are set in code; the trait methods
//! answer from memory (the queue's lookups), and [`Resolver::hickory`] starts a small DNS
//! server on a loopback port that serves the same records over UDP and TCP, so mail-auth's
//! SPF, DKIM, DMARC and iprev run their real lookups against it.
//!
//! For tests where DNS is not the thing under test. Real DNS behaviour (what dnsmasq
//! answers for an MX without data, a server that never answers, long TXT records) is
//! tested against dnsmasq and silent sockets in `tests/it/`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{DnsError, Hickory, Limits, Lookup, Mx, Resolver, TokioResolver};

/// What a name answers instead of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// SERVFAIL (RFC 1035 §4.1.1 RCODE 2).
    ServFail,
    /// No answer at all: the trait methods fail with [`DnsError::Timeout`] at once, the
    /// loopback server stays silent (its clients time out).
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Mx(u16, String),
    Addr(IpAddr),
    Txt(Vec<u8>),
    Ptr(String),
}

impl Rec {
    fn rtype(&self) -> RecordType {
        match self {
            Rec::Mx(..) => RecordType::MX,
            Rec::Addr(IpAddr::V4(_)) => RecordType::A,
            Rec::Addr(IpAddr::V6(_)) => RecordType::AAAA,
            Rec::Txt(_) => RecordType::TXT,
            Rec::Ptr(_) => RecordType::PTR,
        }
    }
}

#[derive(Debug, Default)]
struct Data {
    /// By name: lowercase, without the final dot.
    records: HashMap<String, Vec<Rec>>,
    failures: HashMap<String, Failure>,
    /// Every question asked, as `TYPE name`.
    asked: Vec<String>,
}

impl Data {
    /// The records of `rtype` at `name`, or why there are none.
    fn lookup(&mut self, name: &str, rtype: RecordType) -> Result<Vec<Rec>, DnsError> {
        let name = key(name);
        self.asked.push(format!("{rtype} {name}"));
        match self.failures.get(&name) {
            Some(Failure::ServFail) => return Err(DnsError::Rcode(ResponseCode::ServFail.to_string())),
            Some(Failure::Timeout) => return Err(DnsError::Timeout),
            None => {}
        }
        let Some(all) = self.records.get(&name) else { return Err(DnsError::NxDomain) };
        let found: Vec<Rec> = all.iter().filter(|r| r.rtype() == rtype).cloned().collect();
        if found.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok(found)
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The PTR owner name of `ip` (RFC 1035 §3.5, RFC 3596 §2.5), without the final dot.
fn reverse_name(ip: IpAddr) -> String {
    let name = Name::from(ip).to_ascii();
    key(&name)
}

/// DNS records for tests, shared by the code under test and the test (which may change
/// them while it runs: nothing caches the trait's answers, and the server's have TTL 0).
#[derive(Default)]
pub struct Zone {
    data: Arc<Mutex<Data>>,
    server: OnceLock<Server>,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone").field("server", &self.server.get().map(|s| s.addr)).finish()
    }
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    fn add(&self, name: &str, rec: Rec) -> &Zone {
        self.data.lock().expect("zone lock").records.entry(key(name)).or_default().push(rec);
        self
    }

    /// An MX record; `exchange` "." is a null MX (RFC 7505).
    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) -> &Zone {
        self.add(domain, Rec::Mx(preference, key(exchange)))
    }

    /// An A or AAAA record.
    pub fn add_addr(&self, name: &str, ip: impl Into<IpAddr>) -> &Zone {
        self.add(name, Rec::Addr(ip.into()))
    }

    /// A TXT record (split into 255-byte strings on the wire, RFC 1035 §3.3.14).
    pub fn add_txt(&self, name: &str, text: &str) -> &Zone {
        self.add(name, Rec::Txt(text.as_bytes().to_vec()))
    }

    /// A PTR record for `ip`.
    pub fn add_ptr(&self, ip: impl Into<IpAddr>, name: &str) -> &Zone {
        self.add(&reverse_name(ip.into()), Rec::Ptr(key(name)))
    }

    /// `name` fails every query (of every type) this way.
    pub fn fail(&self, name: &str, failure: Failure) -> &Zone {
        self.data.lock().expect("zone lock").failures.insert(key(name), failure);
        self
    }

    /// Forget every record and failure of `name`.
    pub fn remove(&self, name: &str) -> &Zone {
        let mut d = self.data.lock().expect("zone lock");
        d.records.remove(&key(name));
        d.failures.remove(&key(name));
        self
    }

    /// The questions asked so far, as `MX example.org`, `A mx.example.org`, …
    pub fn asked(&self) -> Vec<String> {
        self.data.lock().expect("zone lock").asked.clone()
    }

    /// The address of the loopback DNS server (UDP and TCP), started on first use; for
    /// `[dns] nameservers` of code that takes only an address.
    pub fn nameserver(&self) -> std::io::Result<SocketAddr> {
        if let Some(s) = self.server.get() {
            return Ok(s.addr);
        }
        let server = Server::start(self.data.clone())?;
        // A racing caller may have started one too; the loser's thread ends with its Drop.
        Ok(self.server.get_or_init(|| server).addr)
    }

    fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<Rec>, DnsError> {
        self.data.lock().expect("zone lock").lookup(name, rtype)
    }
}

impl Resolver for Zone {
    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, Vec<Mx>> {
        let r = self.lookup(domain, RecordType::MX).map(|recs| {
            recs.into_iter()
                .filter_map(|r| match r {
                    Rec::Mx(preference, exchange) => Some(Mx { preference, exchange }),
                    _ => None,
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn ip<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>> {
        // A first, AAAA when there is no A record (hickory's default order).
        let r = match self.lookup(host, RecordType::A) {
            Err(DnsError::NoRecords) => self.lookup(host, RecordType::AAAA),
            other => other,
        };
        let r = r.map(|recs| {
            recs.into_iter()
                .filter_map(|r| match r {
                    Rec::Addr(ip) => Some(ip),
                    _ => None,
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a, Vec<Vec<u8>>> {
        let r = self.lookup(name, RecordType::TXT).map(|recs| {
            recs.into_iter()
                .filter_map(|r| match r {
                    Rec::Txt(t) => Some(t),
                    _ => None,
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn ptr<'a>(&'a self, ip: IpAddr) -> Lookup<'a, Vec<String>> {
        let r = self.lookup(&reverse_name(ip), RecordType::PTR).map(|recs| {
            recs.into_iter()
                .filter_map(|r| match r {
                    Rec::Ptr(n) => Some(n),
                    _ => None,
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn hickory(&self) -> std::io::Result<TokioResolver> {
        // Loopback answers at once; one attempt of 2 s is plenty and keeps a Failure::Timeout
        // name short.
        let limits = Limits { timeout: Duration::from_secs(2), attempts: 1 };
        Hickory::new(&[self.nameserver()?], limits)?.hickory()
    }
}

/// The loopback DNS server of a [`Zone`]: a thread with its own Tokio runtime, so it
/// serves whichever runtime (or none) its clients run on, until the zone is dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Server {
    fn start(data: Arc<Mutex<Data>>) -> std::io::Result<Server> {
        // UDP and TCP on one port: take a free UDP port, then TCP on it (a few tries, as
        // another process may hold that TCP port).
        let (udp, tcp) = (0..20)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .ok_or_else(|| std::io::Error::other("no free loopback port for the test DNS server"))?;
        let addr = udp.local_addr()?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name(format!("dns-zone-{}", addr.port())).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let udp = tokio::net::UdpSocket::from_std(udp).expect("udp socket");
                let tcp = tokio::net::TcpListener::from_std(tcp).expect("tcp listener");
                tokio::select! {
                    _ = serve_udp(&udp, &data) => {}
                    _ = serve_tcp(&tcp, &data) => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(Server { addr, stop: Some(stop) })
    }
}

async fn serve_udp(socket: &tokio::net::UdpSocket, data: &Arc<Mutex<Data>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
        if let Some(reply) = answer(data, &buf[..n], true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: &tokio::net::TcpListener, data: &Arc<Mutex<Data>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let data = data.clone();
        tokio::spawn(async move {
            // RFC 1035 §4.2.2: each message is preceded by its two-byte length.
            loop {
                let Ok(len) = conn.read_u16().await else { return };
                let mut query = vec![0u8; len as usize];
                if conn.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(reply) = answer(&data, &query, false) else { continue };
                let Ok(len) = u16::try_from(reply.len()) else { return };
                if conn.write_u16(len).await.is_err() || conn.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The response to one query in wire format, or None to stay silent.
fn answer(data: &Mutex<Data>, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let question = request.queries.first()?.clone();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(edns.max_payload().max(512));
        response.set_edns(ours);
    }
    let found = data.lock().expect("zone lock").lookup(&question.name.to_ascii(), question.query_type);
    match found {
        Ok(recs) => {
            for r in recs {
                let rdata = match r {
                    Rec::Mx(p, exchange) => {
                        RData::MX(MX::new(p, Name::from_ascii(format!("{exchange}.")).ok()?))
                    }
                    Rec::Addr(IpAddr::V4(ip)) => RData::A(A(ip)),
                    Rec::Addr(IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
                    Rec::Txt(t) => RData::TXT(TXT::from_bytes(t.chunks(255).collect())),
                    Rec::Ptr(n) => RData::PTR(PTR(Name::from_ascii(format!("{n}.")).ok()?)),
                };
                response.add_answer(Record::from_rdata(question.name.clone(), 0, rdata));
            }
        }
        Err(DnsError::NxDomain) => response.metadata.response_code = ResponseCode::NXDomain,
        Err(DnsError::NoRecords) => {}
        Err(DnsError::Timeout) => return None,
        Err(_) => response.metadata.response_code = ResponseCode::ServFail,
    }
    let bytes = response.to_vec().ok()?;
    // RFC 1035 §4.2.1 / RFC 6891 §7: too long for the client's UDP size: truncated, and
    // the client asks again over TCP.
    if udp && bytes.len() > request.max_payload() as usize {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let z = Zone::new();
        z.add_mx("example.test", 20, "mx2.example.test")
            .add_mx("example.test", 10, "MX1.Example.test.")
            .add_addr("mx1.example.test", [192, 0, 2, 1])
            .add_addr("mx2.example.test", "2001:db8::2".parse::<IpAddr>().unwrap())
            .add_txt("example.test", "v=spf1 ip4:192.0.2.0/24 -all")
            .add_txt("long.example.test", &"k".repeat(700))
            .add_ptr([192, 0, 2, 1], "mx1.example.test")
            .add_mx("nomail.test", 0, ".")
            .fail("broken.test", Failure::ServFail)
            .fail("silent.test", Failure::Timeout);
        z
    }

    /// What the trait methods answer, and what the same records read like through hickory
    /// over the wire: both must agree, since the queue sees one and mail-auth the other.
    #[tokio::test]
    async fn the_double_answers_alike_in_memory_and_over_the_wire() {
        let z = zone();
        let wire =
            Hickory::new(&[z.nameserver().unwrap()], Limits { timeout: Duration::from_secs(2), attempts: 1 })
                .unwrap();
        for r in [&z as &dyn Resolver, &wire as &dyn Resolver] {
            let mut mx = r.mx("Example.TEST.").await.unwrap();
            mx.sort_by_key(|m| m.preference);
            assert_eq!(
                mx,
                [
                    Mx { preference: 10, exchange: "mx1.example.test".into() },
                    Mx { preference: 20, exchange: "mx2.example.test".into() }
                ]
            );
            assert_eq!(r.mx("nomail.test").await.unwrap(), [Mx { preference: 0, exchange: String::new() }]);
            assert_eq!(r.ip("mx1.example.test").await.unwrap(), [IpAddr::from([192, 0, 2, 1])]);
            assert_eq!(r.ip("mx2.example.test").await.unwrap(), ["2001:db8::2".parse::<IpAddr>().unwrap()]);
            assert_eq!(r.txt("example.test").await.unwrap(), [b"v=spf1 ip4:192.0.2.0/24 -all".to_vec()]);
            // Longer than a UDP answer without EDNS and than one TXT string: joined again.
            assert_eq!(r.txt("long.example.test").await.unwrap(), ["k".repeat(700).into_bytes()]);
            assert_eq!(r.ptr(IpAddr::from([192, 0, 2, 1])).await.unwrap(), ["mx1.example.test"]);
            assert_eq!(r.mx("mx1.example.test").await, Err(DnsError::NoRecords));
            assert_eq!(r.ip("nowhere.test").await, Err(DnsError::NxDomain));
            assert_eq!(r.txt("broken.test").await, Err(DnsError::Rcode(ResponseCode::ServFail.to_string())));
        }
        assert_eq!(z.mx("silent.test").await, Err(DnsError::Timeout));
        let asked = z.asked();
        assert!(asked.contains(&"MX example.test".to_owned()), "{asked:?}");
        assert!(asked.contains(&"PTR 1.2.0.192.in-addr.arpa".to_owned()), "{asked:?}");
    }

    /// A name that never answers costs the limits, then reads as a timeout.
    #[tokio::test]
    async fn a_silent_name_times_out_within_the_limits() {
        let z = zone();
        let limits = Limits { timeout: Duration::from_millis(300), attempts: 1 };
        let wire = Hickory::new(&[z.nameserver().unwrap()], limits).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(wire.mx("silent.test").await, Err(DnsError::Timeout));
        assert!(start.elapsed() < limits.bound(1), "{:?}", start.elapsed());
    }

    /// Records changed while code holds the zone are seen at once.
    #[tokio::test]
    async fn changes_are_seen_at_once() {
        let z = Zone::new();
        let wire = Hickory::new(&[z.nameserver().unwrap()], Limits::DELIVERY).unwrap();
        assert_eq!(wire.ip("late.test").await, Err(DnsError::NxDomain));
        z.add_addr("late.test", [192, 0, 2, 9]);
        assert_eq!(z.ip("late.test").await.unwrap(), [IpAddr::from([192, 0, 2, 9])]);
        assert_eq!(wire.ip("late.test").await.unwrap(), [IpAddr::from([192, 0, 2, 9])]);
        z.remove("late.test").fail("late.test", Failure::ServFail);
        assert!(matches!(wire.ip("late.test").await, Err(DnsError::Rcode(_))));
    }
}
