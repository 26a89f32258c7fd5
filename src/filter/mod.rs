//! The content checks a message passes at the end of DATA, before it is made durable:
//! authentication results (see [`crate::mailauth`]), spam (rspamd) and viruses (clamd).
//!
//! Every stage returns a [`Decision`]; the SMTP session merges them in order (the first
//! rejection wins, headers accumulate, any stage may route the message to Junk) and only
//! then queues the message, so a rejected message is never on disk.

use std::net::IpAddr;

use crate::address::Address;
use crate::config::Config;

/// A reply that refuses the message at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
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
pub struct Filter {}

impl Filter {
    /// The checks the config asks for (none when both sections are absent).
    pub fn from_config(_config: &Config) -> Filter {
        Filter::default()
    }

    /// Scan one complete message.
    pub async fn scan(&self, _info: &MessageInfo<'_>, _message: &[u8]) -> Decision {
        Decision::default()
    }
}
