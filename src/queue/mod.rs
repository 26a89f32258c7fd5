//! The durable outbound queue: spool, retry schedule, MX delivery, DSN bounces.
//!
//! SMTP hands an accepted message to [`Queue::accept`]; it returns only once the message is
//! durably on disk (delivered into every local Maildir, or fsynced into the spool), so the
//! SMTP layer may answer 250. [`Queue::run`] delivers what is in the spool.
//!
//! # Spool layout (`{data_dir}/queue`, mode 0700)
//!
//! ```text
//! tmp/                    files being written; removed at daemon start (half-written)
//! msg/{id}                the message as accepted (with our Received:), never modified
//! env/{id}.json           the envelope (spool::Envelope): sender, per-recipient target,
//!                         status (queued|deferred|delivered|failed), last reply and
//!                         remote MTA, attempts, created and next-attempt times (unix ms)
//! ```
//!
//! `id` is 13 hex digits of the arrival time in milliseconds and 8 random hex digits:
//! unique, and sorting ids sorts by arrival.
//!
//! # Crash safety
//!
//! Every file is written to `tmp/`, fsynced, renamed into place, and its directory fsynced.
//! A message is stored message-file first, envelope last: the envelope's rename is the
//! commit point, and `accept` returns (SMTP says 250) only after it. At start the daemon
//! removes `tmp/` leftovers and message files without an envelope (never acknowledged).
//!
//! Envelope updates are read-modify-write under an exclusive `flock` on `msg/{id}` (the
//! envelope itself is replaced by rename, so it cannot hold the lock). The admin CLI, a
//! separate process, takes the same lock for `flush` and `delete`; a delivery that ends
//! after a `delete` finds no envelope and writes nothing, so a deleted message stays deleted.
//!
//! A recipient's `delivered` status is written durably right after each local delivery and
//! after each remote domain's transaction, so a restart never delivers again to a recipient
//! marked delivered (a crash between the remote 250 and that write can still repeat one
//! delivery: RFC 5321 §6.1 accepts duplicates over losses). Failures are written only after
//! their DSN is safely queued: a crash in between retries the failed recipients (harmless,
//! they got nothing) instead of losing the bounce.

pub mod admin;
mod dsn;
mod manager;
mod mx;
mod remote;
pub mod spool;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::address::Address;
use crate::config::{Config, QueueConfig};
use crate::directory::{Directory, Target};
use crate::store::Store;
use spool::{Envelope, RcptStatus, Recipient, Spool};

pub use admin::QueueEntry;

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
    /// Local copies go to this folder instead of INBOX (the content checks chose Junk).
    #[serde(default)]
    pub folder: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no message {0} in the queue (help: `posthaste queue list` shows the queue ids)")]
    UnknownId(String),
    #[error("{0}")]
    Other(String),
}

/// Where a bounce for `sender` goes. The queue asks this instead of the [`Directory`]
/// directly so it can be tested without a database.
pub trait DsnRouter: Send + Sync {
    /// The targets for a DSN to `sender`; an empty list drops the DSN (logged).
    fn dsn_targets<'a>(
        &'a self,
        sender: &'a Address,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Target>, String>> + Send + 'a>>;
}

/// A local sender's DSN goes to its mailbox through the directory (aliases included); a
/// remote sender's goes out by MX.
impl DsnRouter for Directory {
    fn dsn_targets<'a>(
        &'a self,
        sender: &'a Address,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Target>, String>> + Send + 'a>> {
        Box::pin(async move {
            if !self.is_local_domain(sender.domain()).await.map_err(|e| e.to_string())? {
                return Ok(vec![Target::Remote(sender.clone())]);
            }
            Ok(self.resolve(sender).await.map_err(|e| e.to_string())?.unwrap_or_default())
        })
    }
}

/// Every DSN goes out by MX (for tests and setups without local accounts).
pub struct RemoteDsn;

impl DsnRouter for RemoteDsn {
    fn dsn_targets<'a>(
        &'a self,
        sender: &'a Address,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Target>, String>> + Send + 'a>> {
        Box::pin(async move { Ok(vec![Target::Remote(sender.clone())]) })
    }
}

#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    hostname: String,
    config: QueueConfig,
    spool: Spool,
    store: Store,
    router: Arc<dyn DsnRouter>,
    resolver: mx::Router,
    tls: Arc<rustls::ClientConfig>,
    sched: Mutex<manager::Schedule>,
    notify: Notify,
}

impl Queue {
    pub fn open(config: &Config, store: Store, directory: Directory) -> Result<Queue, QueueError> {
        Self::open_with(config, store, Arc::new(directory))
    }

    /// Like [`Queue::open`], with any [`DsnRouter`] in place of the directory.
    pub fn open_with(config: &Config, store: Store, router: Arc<dyn DsnRouter>) -> Result<Queue, QueueError> {
        Self::open_with_dns(config, store, router, None)
    }

    /// Like [`Queue::open_with`], with a resolver in place of the one `[dns]` configures
    /// (tests give a [`crate::dns::Zone`]; None: the configured one).
    pub fn open_with_dns(
        config: &Config,
        store: Store,
        router: Arc<dyn DsnRouter>,
        dns: Option<Arc<dyn crate::dns::Resolver>>,
    ) -> Result<Queue, QueueError> {
        let resolver = match dns {
            Some(dns) => mx::Router::with_dns(config, dns),
            None => mx::Router::new(config)?,
        };
        let spool = Spool::open(&config.queue_dir())?;
        let inner = Inner {
            hostname: config.hostname.clone(),
            config: config.queue.clone(),
            spool,
            store,
            router,
            resolver,
            tls: remote::opportunistic_tls(),
            sched: Mutex::new(manager::Schedule::default()),
            notify: Notify::new(),
        };
        Ok(Queue { inner: Arc::new(inner) })
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.inner.spool.root().to_owned()
    }

    /// Make `message` (complete, with our Received: header) durable and return its queue id.
    pub async fn accept(&self, incoming: Incoming, message: Vec<u8>) -> Result<String, QueueError> {
        let inner = &self.inner;
        let mut env = envelope_for(&incoming, message.len() as u64);
        if env.recipients.is_empty() {
            return Err(QueueError::Other("a message needs at least one recipient".into()));
        }
        tracing::info!(
            queue_id = env.id,
            message_id = env.message_id.as_deref().unwrap_or(""),
            sender = env.sender.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            recipients = env.recipients.len(),
            size = env.size,
            "accepted"
        );
        let message = Arc::new(message);
        let all_local = env.recipients.iter().all(|r| matches!(r.target, Target::Local(_)));
        if all_local {
            // Straight into the Maildirs: the store fsyncs, so this is as durable as the spool.
            for r in &mut env.recipients {
                let (status, reply) = inner
                    .deliver_local(&env.id, env.sender.as_ref(), env.folder.as_deref(), r, &message)
                    .await;
                r.status = status;
                r.reply = Some(reply);
            }
            if env.is_done() {
                return Ok(env.id);
            }
        }
        let id = env.id.clone();
        let spool = inner.spool.clone();
        tokio::task::spawn_blocking(move || spool.store(&env, &message))
            .await
            .map_err(|e| QueueError::Other(e.to_string()))??;
        inner.schedule(&id, spool::now_ms());
        Ok(id)
    }

    /// Deliver now everything that is due, and rescan the spool (for `queue flush` from the
    /// CLI: serve calls this on SIGUSR1).
    pub fn wake(&self) {
        self.inner.sched.lock().unwrap().rescan = true;
        self.inner.notify.notify_one();
    }

    /// Run deliveries until `shutdown` turns true. Picks up everything left in the spool.
    pub async fn run(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        manager::run(self.inner.clone(), shutdown).await
    }
}

/// One spool recipient per distinct target (an alias and its account in the same message
/// get one copy), in the order given.
fn envelope_for(incoming: &Incoming, size: u64) -> Envelope {
    let now = spool::now_ms();
    let mut recipients: Vec<Recipient> = Vec::new();
    for (rcpt, targets) in &incoming.recipients {
        for target in targets {
            if recipients.iter().any(|r| &r.target == target) {
                continue;
            }
            recipients.push(Recipient {
                rcpt: rcpt.clone(),
                target: target.clone(),
                status: RcptStatus::Queued,
                reply: None,
                remote_mta: None,
            });
        }
    }
    Envelope {
        id: spool::new_id(),
        sender: incoming.sender.clone(),
        message_id: incoming.message_id.clone(),
        client_ip: incoming.client_ip,
        helo: incoming.helo.clone(),
        auth_user: incoming.auth_user.clone(),
        folder: incoming.folder.clone(),
        size,
        created: now,
        attempts: 0,
        next_attempt: now,
        recipients,
    }
}

impl Inner {
    /// Deliver to one local mailbox. RFC 5321 §4.4: the final delivery adds Return-Path.
    /// Errors are temporary: the store fails on I/O (disk full, permissions).
    async fn deliver_local(
        &self,
        queue_id: &str,
        sender: Option<&Address>,
        folder: Option<&str>,
        r: &Recipient,
        message: &Arc<Vec<u8>>,
    ) -> (RcptStatus, String) {
        let Target::Local(account) = r.target.clone() else {
            return (RcptStatus::Failed, "5.3.0 not a local target".into());
        };
        let store = self.store.clone();
        let return_path = sender.map(|s| s.to_string()).unwrap_or_default();
        let message = message.clone();
        let acct = account.clone();
        let folder = folder.unwrap_or("INBOX").to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let mut data = format!("Return-Path: <{return_path}>\r\n").into_bytes();
            data.extend_from_slice(&message);
            store.deliver(&acct, &folder, &data)
        })
        .await;
        match result {
            Ok(Ok(d)) => {
                tracing::info!(queue_id, rcpt = %r.rcpt, mailbox = %account, path = %d.path.display(), uid = d.uid, status = "delivered", "local delivery");
                (RcptStatus::Delivered, format!("2.0.0 delivered to mailbox ({})", d.path.display()))
            }
            Ok(Err(e)) => {
                tracing::warn!(queue_id, rcpt = %r.rcpt, mailbox = %account, error = %e, status = "deferred", "local delivery failed");
                (RcptStatus::Deferred, format!("4.3.0 mailbox delivery failed: {e}"))
            }
            Err(e) => (RcptStatus::Deferred, format!("4.3.0 mailbox delivery failed: {e}")),
        }
    }

    fn schedule(&self, id: &str, at: i64) {
        self.sched.lock().unwrap().due.insert(id.to_owned(), at);
        self.notify.notify_one();
    }
}
