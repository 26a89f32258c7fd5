//! Connection limits: how many connections one protocol serves in all and per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections in all and per client IP, for one protocol's listeners (SMTP,
/// IMAP and POP3 each have their own, shared by that protocol's ports).
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Connections>,
}

#[derive(Default)]
struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why `ConnectionLimiter::admit` refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` of the protocol are open.
    Total,
    /// `max_connections_per_ip` are open from this client.
    PerIp,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter { max_total, max_per_ip, state: Mutex::new(Connections::default()) })
    }

    /// Count a new connection from `ip`; the slot releases it when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut c = self.state.lock().unwrap();
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnectionSlot { limiter: self.clone(), ip })
    }
}

/// Releases the connection count when the session ends, however it ends.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.limiter.state.lock().unwrap();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_all_and_per_ip_and_slots_release_on_drop() {
        let l = ConnectionLimiter::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refused::PerIp));
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Refused::Total));
        drop(a1);
        let _b2 = l.admit(b).unwrap();
        assert!(l.state.lock().unwrap().per_ip.len() == 2);
    }
}
