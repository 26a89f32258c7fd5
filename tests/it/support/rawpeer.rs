//! A remote MX that records the exact bytes it receives: what an SMTP client (our queue)
//! really put on the wire, line ends and all, which smtp-sink and Postfix normalise away.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One SMTP session as received: every byte from the client, in order.
#[derive(Debug, Clone, Default)]
pub struct RawSession {
    pub bytes: Vec<u8>,
    /// How many MAIL commands the session had (one per transaction).
    pub transactions: usize,
    /// The RCPT TO commands' lines, as sent (commands, never data).
    pub rcpts: Vec<String>,
}

pub struct RawPeer {
    addr: SocketAddr,
    sessions: Arc<Mutex<Vec<RawSession>>>,
}

impl RawPeer {
    /// Listens on `addr` (e.g. `remote_mx_addr()`); accepts any sender and recipient.
    pub fn start(addr: SocketAddr) -> RawPeer {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("raw peer on {addr}: {e}"));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let s = sessions.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || {
                    let session = serve(conn);
                    s.lock().unwrap().push(session);
                });
            }
        });
        RawPeer { addr, sessions }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The finished sessions so far.
    pub fn sessions(&self) -> Vec<RawSession> {
        self.sessions.lock().unwrap().clone()
    }
}

/// A minimal SMTP server: commands end at LF, the data at the first CRLF . CRLF, exactly as
/// RFC 5321 says (a weaker receiver would end it elsewhere; the test checks there is no
/// other candidate).
fn serve(conn: TcpStream) -> RawSession {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut session = RawSession::default();
    let _ = out.write_all(b"220 raw.remote.test ESMTP\r\n");
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return session,
            Ok(_) => {}
        }
        session.bytes.extend_from_slice(&line);
        let verb = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") {
            b"250-raw.remote.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
        } else if verb.starts_with("MAIL") {
            session.transactions += 1;
            b"250 ok\r\n"
        } else if verb.starts_with("RCPT") {
            session.rcpts.push(String::from_utf8_lossy(&line).trim_end().to_owned());
            b"250 ok\r\n"
        } else if verb.starts_with("DATA") {
            let _ = out.write_all(b"354 go\r\n");
            let mut data = Vec::new();
            while !data.ends_with(b"\r\n.\r\n") {
                let mut l = Vec::new();
                match r.read_until(b'\n', &mut l) {
                    Ok(0) | Err(_) => {
                        session.bytes.extend_from_slice(&data);
                        return session;
                    }
                    Ok(_) => data.extend_from_slice(&l),
                }
            }
            session.bytes.extend_from_slice(&data);
            b"250 queued\r\n"
        } else if verb.starts_with("QUIT") {
            let _ = out.write_all(b"221 bye\r\n");
            return session;
        } else {
            b"250 ok\r\n"
        };
        let _ = out.write_all(reply);
    }
}
