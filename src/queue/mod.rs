//! The durable outbound queue. INTERFACE STUB — the queue work replaces the bodies.
//!
//! SMTP hands an accepted message to [`Queue::accept`]; it returns only once the message is
//! durably on disk (delivered into every local Maildir, or fsynced into the spool), so the
//! SMTP layer may answer 250.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::config::Config;
use crate::directory::{Directory, Target};
use crate::store::Store;

/// One message as SMTP accepted it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incoming {
    /// Envelope sender; None for the null reverse-path `<>` (bounces: never bounced again).
    pub sender: Option<Address>,
    /// Each RCPT TO with the targets the directory resolved it to.
    pub recipients: Vec<(Address, Vec<Target>)>,
    /// Message-ID header value (for the log), if any.
    pub message_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub helo: Option<String>,
    /// The authenticated account for submissions.
    pub auth_user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

#[derive(Clone)]
pub struct Queue {
    #[allow(dead_code)]
    inner: Arc<()>,
}

impl Queue {
    pub fn open(_config: &Config, _store: Store, _directory: Directory) -> Result<Queue, QueueError> {
        todo!()
    }

    /// Make `message` (complete, with our Received: header) durable and return its queue id.
    pub async fn accept(&self, _incoming: Incoming, _message: Vec<u8>) -> Result<String, QueueError> {
        todo!()
    }

    /// Retry deferred messages now (SIGUSR1, `queue flush`).
    pub fn wake(&self) {
        todo!()
    }

    /// Run deliveries until `shutdown` resolves. Picks up everything left in the spool.
    pub async fn run(&self, _shutdown: tokio::sync::watch::Receiver<bool>) {
        todo!()
    }
}
