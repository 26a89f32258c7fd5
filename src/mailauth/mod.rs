//! Message authentication: DKIM signing of submitted mail and, on the MX, SPF/DKIM/DMARC/
//! ARC/iprev verification with an `Authentication-Results` header (RFC 8601).

use crate::config::Config;
use crate::filter::{Decision, MessageInfo};

/// Signing keys and the verifier's resolver, shared by all SMTP sessions.
#[derive(Debug, Default)]
pub struct MailAuth {}

impl MailAuth {
    pub fn from_config(_config: &Config) -> MailAuth {
        MailAuth::default()
    }

    /// Verify an inbound (MX) message and decide by the sender domain's DMARC policy.
    pub async fn verify_inbound(&self, _info: &MessageInfo<'_>, _message: &[u8]) -> Decision {
        Decision::default()
    }

    /// `DKIM-Signature` header lines (CRLF-terminated) for a message submitted by a local
    /// user of `domain`; empty when the domain has no keys.
    pub fn sign(&self, _domain: &str, _message: &[u8]) -> String {
        String::new()
    }
}
