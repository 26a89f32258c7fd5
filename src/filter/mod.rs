//! The content checks a message passes at the end of DATA, before it is made durable:
//! authentication results (see [`crate::mailauth`]), spam (rspamd) and viruses (clamd).
//!
//! Every stage returns a [`Decision`]; the SMTP session merges them in order (the first
//! rejection wins, headers accumulate, any stage may route the message to Junk) and only
//! then queues the message, so a rejected message is never on disk.
//!
//! [`Filter`] holds the two clients configured in `[antispam]` ([`rspamd`]) and
//! `[antivirus]` ([`clamd`]). Both checks of one message run at the same time; the virus
//! verdict is merged first, so an infected message is refused as a virus even when rspamd
//! would also reject it. Learning (IMAP moves into and out of Junk, [`Filter::learn_moved`])
//! goes to rspamd's controller in the background. [`Filter::health`] pings every
//! configured component for `posthaste check`.

pub mod clamd;
pub mod rspamd;

use std::net::IpAddr;
use std::sync::Arc;

use crate::address::Address;
use crate::config::Config;
// Where rspamd and clamd listen; a leaf of its own because config validates with it.
use crate::endpoint::{Conn, Endpoint};

/// A reply that refuses the message at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

impl Reply {
    /// `451 4.7.1`: a check could not be done now; the client retries later.
    pub fn tempfail(text: impl Into<String>) -> Reply {
        Reply { code: 451, enhanced: "4.7.1", text: text.into() }
    }
}

/// What one stage decided about a message.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Header lines (each ending in CRLF) to prepend to the message.
    pub headers: String,
    /// Deliver local copies to the recipient's Junk folder instead of INBOX.
    pub junk: bool,
    /// Refuse the message with this reply (permanent or temporary).
    pub reject: Option<Reply>,
}

impl Decision {
    /// Fold a later stage's decision into this one (the first rejection wins).
    pub fn merge(&mut self, other: Decision) {
        self.headers.push_str(&other.headers);
        self.junk |= other.junk;
        if self.reject.is_none() {
            self.reject = other.reject;
        }
    }

    fn header(mut self, name: &str, value: &str) -> Decision {
        self.headers.push_str(&crate::header::fold(name, value));
        self
    }
}

/// Text from a checker (a virus name, rspamd's message) made safe for a reply or header:
/// printable ASCII only, bounded length.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(200).collect()
}

/// The envelope of the message being checked.
#[derive(Debug, Clone)]
pub struct MessageInfo<'a> {
    pub client_ip: IpAddr,
    pub helo: Option<&'a str>,
    /// None: the null reverse-path `<>`.
    pub sender: Option<&'a Address>,
    pub recipients: &'a [Address],
    /// The authenticated account (submissions).
    pub auth_user: Option<&'a str>,
    /// True for submission/submissions, false for the MX.
    pub submission: bool,
    /// Our hostname (authserv-id, rspamd `Hostname` of the MTA).
    pub hostname: &'a str,
}

/// The spam and virus checks configured in `[antispam]` and `[antivirus]`.
#[derive(Debug, Default)]
pub struct Filter {
    rspamd: Option<Arc<rspamd::Rspamd>>,
    clamd: Option<clamd::Clamd>,
}

impl Filter {
    /// The checks the config asks for (none when both sections are absent). The config was
    /// validated, so the endpoints parse.
    pub fn from_config(config: &Config) -> Filter {
        Filter {
            rspamd: config.antispam.as_ref().and_then(|c| rspamd::Rspamd::new(c).ok()).map(Arc::new),
            clamd: config.antivirus.as_ref().and_then(|c| clamd::Clamd::new(c).ok()),
        }
    }

    /// Whether any check is configured.
    pub fn is_enabled(&self) -> bool {
        self.rspamd.is_some() || self.clamd.is_some()
    }

    /// Scan one complete message: clamd and rspamd at the same time, the virus verdict first.
    pub async fn scan(&self, info: &MessageInfo<'_>, message: &[u8]) -> Decision {
        let virus = async {
            match &self.clamd {
                Some(c) => c.check(info, message).await,
                None => Decision::default(),
            }
        };
        let spam = async {
            match &self.rspamd {
                Some(r) if !info.submission || r.check_submissions() => r.check(info, message).await,
                _ => Decision::default(),
            }
        };
        let (virus, spam) = tokio::join!(virus, spam);
        let mut d = virus;
        d.merge(spam);
        d
    }

    /// After an IMAP COPY or MOVE from folder `from` into `to`: messages that arrive in
    /// Junk from elsewhere are learned as spam, messages that leave Junk for anything but
    /// Trash as ham (deleting spam says nothing about it). `dest_uids` are the copies' UIDs
    /// in `to`. The learning runs in the background; the IMAP reply does not wait for it.
    /// Nothing happens without `[antispam] controller`.
    pub fn learn_moved(
        &self,
        store: &crate::store::Store,
        account: &Address,
        from: &str,
        to: &str,
        dest_uids: &[u32],
    ) {
        let Some(r) = &self.rspamd else { return };
        let is_junk = |f: &str| crate::store::special_use(f) == Some("\\Junk");
        let spam = if is_junk(to) && !is_junk(from) {
            true
        } else if is_junk(from) && !is_junk(to) && crate::store::special_use(to) != Some("\\Trash") {
            false
        } else {
            return;
        };
        if !r.can_learn() || dest_uids.is_empty() {
            return;
        }
        let (r, store, account, to, uids) =
            (r.clone(), store.clone(), account.clone(), to.to_owned(), dest_uids.to_vec());
        tokio::spawn(async move { r.learn_from_store(store, account, to, uids, spam).await });
    }

    /// Pings every configured component (`posthaste check`): one entry per component —
    /// `rspamd`, `rspamd controller` (also checks the password), `clamd` — with what it
    /// answered, or what is wrong and what to do.
    pub async fn health(&self) -> Vec<(&'static str, Result<String, String>)> {
        let mut out = Vec::new();
        if let Some(r) = &self.rspamd {
            out.extend(r.health().await);
        }
        if let Some(c) = &self.clamd {
            out.push(("clamd", c.health().await));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_first_reject_wins() {
        let mut d = Decision::default().header("X-A", "1");
        d.merge(
            Decision { junk: true, reject: Some(Reply::tempfail("x")), ..Default::default() }
                .header("X-B", "2"),
        );
        d.merge(Decision {
            reject: Some(Reply { code: 550, enhanced: "5.7.1", text: "y".into() }),
            ..Default::default()
        });
        assert_eq!(d.headers, "X-A: 1\r\nX-B: 2\r\n");
        assert!(d.junk);
        assert_eq!(d.reject.unwrap().code, 451);
    }
}
