//! Web logins: sessions kept in the daemon's memory, named by a random id in a cookie.
//!
//! The cookie is `__Host-ph_session` with `Secure; HttpOnly; SameSite=Strict; Path=/` and a
//! `Max-Age` of `web.session_ttl` (RFC 6265bis §4.1.3.2: the `__Host-` prefix makes the
//! browser refuse it unless it is Secure, host-only and for `/`, so no sibling host can
//! plant or overwrite it). A session also ends after `web.idle_timeout` without a
//! request, at logout, and when the daemon restarts (nothing is written to disk, so a
//! stolen backup holds no session).
//!
//! Every session has its own CSRF token: each form carries it in a hidden field and every
//! POST must return it (compared in constant time). The login form has no session yet, so
//! it uses a short-lived `__Host-ph_login` cookie whose value the form must repeat (the
//! double-submit pattern); SameSite=Strict keeps other sites' forms from sending either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::directory::secret;

pub const COOKIE: &str = "__Host-ph_session";
pub const LOGIN_COOKIE: &str = "__Host-ph_login";

/// How far a login has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The password was right; the second factor is still to come. Nothing but the
    /// second-factor form is open to such a session.
    SecondFactor,
    Full,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub account: String,
    pub csrf: String,
    pub stage: Stage,
    created: Instant,
    last_seen: Instant,
    /// Wrong second-factor codes typed in this session.
    pub factor_failures: u32,
}

pub struct Sessions {
    ttl: Duration,
    idle: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration, idle: Duration) -> Sessions {
        Sessions { ttl, idle, map: Mutex::new(HashMap::new()) }
    }

    /// A new session for `account`; returns it (its id goes into the cookie).
    /// `client` is where the login came from: logged, not bound (mobile clients change
    /// addresses).
    pub fn create(&self, account: &str, stage: Stage, client: IpAddr) -> Session {
        tracing::debug!(account, client = %client, "web session started");
        let now = Instant::now();
        let s = Session {
            id: secret::random_hex(32),
            account: account.to_owned(),
            csrf: secret::random_hex(32),
            stage,
            created: now,
            last_seen: now,
            factor_failures: 0,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Expired sessions go when new ones are made: no timer, and the map stays small.
        map.retain(|_, v| !self.expired(v, now));
        map.insert(s.id.clone(), s.clone());
        s
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.created) >= self.ttl || now.duration_since(s.last_seen) >= self.idle
    }

    /// The live session with this id (its idle timer restarted), or None.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if self.expired(s, now) {
            map.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// A session whose second factor was given becomes a full one under a new id (the id
    /// seen before the second factor is worth nothing afterwards).
    pub fn promote(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = map.remove(id)?;
        s.id = secret::random_hex(32);
        s.csrf = secret::random_hex(32);
        s.stage = Stage::Full;
        s.last_seen = Instant::now();
        map.insert(s.id.clone(), s.clone());
        Some(s)
    }

    /// Count a wrong second-factor code; returns the count.
    pub fn factor_failed(&self, id: &str) -> u32 {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get_mut(id).map_or(0, |s| {
            s.factor_failures += 1;
            s.factor_failures
        })
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// End every session of `account` but `keep` (after a password change, a removal).
    pub fn end_all_of(&self, account: &str, keep: Option<&str>) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, s| s.account != account || Some(id.as_str()) == keep);
    }

    /// The `Set-Cookie` value that starts session `s`.
    pub fn cookie(&self, s: &Session) -> String {
        format!(
            "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            s.id,
            self.ttl.as_secs()
        )
    }
}

/// The `Set-Cookie` value that removes `name`.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The login form's CSRF cookie (10 minutes to fill in the form).
pub fn login_cookie(token: &str) -> String {
    format!("{LOGIN_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=600")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_idle_and_promote_to_a_new_id() {
        let s = Sessions::new(Duration::from_secs(3600), Duration::from_millis(50));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = s.create("a@example.test", Stage::SecondFactor, ip);
        assert_eq!(s.get(&a.id).unwrap().stage, Stage::SecondFactor);
        let full = s.promote(&a.id).unwrap();
        assert!(s.get(&a.id).is_none(), "the pre-factor id must stop working");
        assert_ne!(full.csrf, a.csrf);
        assert_eq!(s.get(&full.id).unwrap().stage, Stage::Full);
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&full.id).is_none(), "idle sessions end");
        let c = s.cookie(&s.create("b@example.test", Stage::Full, ip));
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Max-Age=3600", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
        let b1 = s.create("b@example.test", Stage::Full, ip);
        let b2 = s.create("b@example.test", Stage::Full, ip);
        s.end_all_of("b@example.test", Some(&b2.id));
        assert!(s.get(&b1.id).is_none() && s.get(&b2.id).is_some());
    }
}
