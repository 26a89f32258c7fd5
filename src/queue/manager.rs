//! The delivery manager: which message is due, one attempt per message, the retry schedule
//! (RFC 5321 §4.5.4.1), expiry and bounces (§6.1, §6.2).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::remote::Job;
use super::spool::{now_ms, Envelope, RcptStatus, Recipient, Update};
use super::{dsn, mx, Incoming, Inner, Queue};
use crate::address::Address;
use crate::directory::Target;

/// The spool is rescanned this often, so edits by the admin CLI (another process) are
/// picked up even without a signal.
const RESCAN: Duration = Duration::from_secs(60);
/// On shutdown, deliveries in progress get this long to finish before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The in-memory schedule: when each message is due, and which are being delivered.
#[derive(Default)]
pub struct Schedule {
    pub due: HashMap<String, i64>,
    pub running: HashSet<String>,
    pub rescan: bool,
}

pub async fn run(inner: Arc<Inner>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let spool = inner.spool.clone();
    match tokio::task::spawn_blocking(move || spool.recover()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(removed = n, "spool recovery removed unfinished files"),
        Ok(Err(e)) => tracing::error!(error = %e, "spool recovery failed"),
        Err(e) => tracing::error!(error = %e, "spool recovery failed"),
    }
    let mut tasks = JoinSet::new();
    let mut last_scan: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let requested = std::mem::take(&mut inner.sched.lock().unwrap().rescan);
        if requested || last_scan.is_none_or(|t| t.elapsed() >= RESCAN) {
            rescan(&inner).await;
            last_scan = Some(Instant::now());
        }
        let until_due = start_due(&inner, &mut tasks);
        let until_scan = RESCAN.saturating_sub(last_scan.map_or(RESCAN, |t| t.elapsed()));
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() { break },
            _ = inner.notify.notified() => {}
            _ = tokio::time::sleep(until_due.min(until_scan)) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("deliveries still running at shutdown were cut; they are retried at the next start");
        tasks.shutdown().await;
    }
}

/// Read every envelope's next-attempt time (the admin CLI may have changed it).
async fn rescan(inner: &Arc<Inner>) {
    let spool = inner.spool.clone();
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(String, i64)>> {
        let mut found = Vec::new();
        for id in spool.ids()? {
            if let Ok(Some(env)) = spool.load_envelope(&id) {
                found.push((id, env.next_attempt));
            }
        }
        Ok(found)
    })
    .await;
    match found {
        Ok(Ok(found)) => {
            let mut sched = inner.sched.lock().unwrap();
            for (id, at) in found {
                if !sched.running.contains(&id) {
                    sched.due.insert(id, at);
                }
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot scan the spool"),
        Err(e) => tracing::error!(error = %e, "cannot scan the spool"),
    }
}

/// Start the due messages (oldest due first) up to the concurrency limit; return how long
/// until the next one is due.
fn start_due(inner: &Arc<Inner>, tasks: &mut JoinSet<()>) -> Duration {
    let now = now_ms();
    let mut sched = inner.sched.lock().unwrap();
    let mut due: Vec<(i64, String)> = sched
        .due
        .iter()
        .filter(|(id, _)| !sched.running.contains(*id))
        .map(|(id, t)| (*t, id.clone()))
        .collect();
    due.sort();
    for (at, id) in &due {
        if *at > now {
            return Duration::from_millis((*at - now) as u64);
        }
        if sched.running.len() >= inner.config.concurrency.max(1) {
            return RESCAN;
        }
        sched.due.remove(id);
        sched.running.insert(id.clone());
        tasks.spawn(attempt(inner.clone(), id.clone()));
    }
    RESCAN
}

/// One delivery attempt of one message; reschedules it (or forgets it when it is done).
async fn attempt(inner: Arc<Inner>, id: String) {
    let next = match deliver_message(&inner, &id).await {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(queue_id = id, error = %e, "delivery attempt failed");
            Some(now_ms() + inner.config.retry_initial.as_millis() as i64)
        }
    };
    let mut sched = inner.sched.lock().unwrap();
    sched.running.remove(&id);
    if let Some(at) = next {
        sched.due.insert(id, at);
    }
    drop(sched);
    inner.notify.notify_one();
}

/// What one attempt found for one recipient (an index into the envelope's recipients).
struct Outcome {
    idx: usize,
    status: RcptStatus,
    reply: String,
    mta: Option<String>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// Returns the next attempt time, or None when the message left the spool.
async fn deliver_message(inner: &Arc<Inner>, id: &str) -> std::io::Result<Option<i64>> {
    let spool = inner.spool.clone();
    let owned_id = id.to_owned();
    let Some((env, message)) = blocking(move || {
        let Some(env) = spool.load_envelope(&owned_id)? else { return Ok(None) };
        Ok(Some((env, spool.load_message(&owned_id)?)))
    })
    .await?
    else {
        return Ok(None);
    };
    if env.next_attempt > now_ms() {
        return Ok(Some(env.next_attempt)); // rescheduled on disk (the schedule was stale)
    }
    let message = Arc::new(message);
    let mut outcomes = deliver_local(inner, &env, &message).await;
    if !persist(inner, id, &outcomes).await? {
        return Ok(None);
    }
    for (domain, idxs) in remote_domains(&env) {
        let batch = deliver_remote(inner, &env, &message, &domain, &idxs).await;
        if !persist(inner, id, &batch).await? {
            return Ok(None);
        }
        outcomes.extend(batch);
    }
    finish(inner, env, outcomes, &message).await
}

async fn deliver_local(inner: &Arc<Inner>, env: &Envelope, message: &Arc<Vec<u8>>) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (idx, r) in env.recipients.iter().enumerate() {
        if r.status.is_pending() && matches!(r.target, Target::Local(_)) {
            let (status, reply) =
                inner.deliver_local(&env.id, env.sender.as_ref(), env.folder.as_deref(), r, message).await;
            out.push(Outcome { idx, status, reply, mta: None });
        }
    }
    out
}

/// The pending remote recipients grouped by domain: one SMTP transaction per domain.
fn remote_domains(env: &Envelope) -> BTreeMap<String, Vec<usize>> {
    let mut domains: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (idx, r) in env.recipients.iter().enumerate() {
        if let (true, Target::Remote(a)) = (r.status.is_pending(), &r.target) {
            domains.entry(a.domain().to_owned()).or_default().push(idx);
        }
    }
    domains
}

async fn deliver_remote(
    inner: &Arc<Inner>,
    env: &Envelope,
    message: &[u8],
    domain: &str,
    idxs: &[usize],
) -> Vec<Outcome> {
    let rcpts: Vec<Address> = idxs
        .iter()
        .map(|&i| match &env.recipients[i].target {
            Target::Local(a) | Target::Remote(a) => a.clone(),
        })
        .collect();
    let job = Job {
        sender: env.sender.as_ref(),
        rcpts: &rcpts,
        message,
        helo_name: &inner.hostname,
        timeout: inner.config.remote_timeout,
        tls: Some(inner.tls.clone()),
    };
    let result = mx::deliver_domain(&inner.resolver, domain, inner.config.remote_port, &job).await;
    idxs.iter()
        .zip(result.results)
        .map(|(&idx, r)| Outcome { idx, status: r.status, reply: r.reply, mta: result.remote_mta.clone() })
        .collect()
}

/// Write the delivered and deferred outcomes (failures wait for their DSN, see the module
/// documentation). False when the message is gone from the spool.
async fn persist(inner: &Arc<Inner>, id: &str, outcomes: &[Outcome]) -> std::io::Result<bool> {
    let updates: Vec<(usize, RcptStatus, String, Option<String>)> = outcomes
        .iter()
        .filter(|o| o.status != RcptStatus::Failed)
        .map(|o| (o.idx, o.status, o.reply.clone(), o.mta.clone()))
        .collect();
    if updates.is_empty() {
        return Ok(true);
    }
    let spool = inner.spool.clone();
    let id = id.to_owned();
    let env = blocking(move || {
        spool.update(&id, |env| {
            for (idx, status, reply, mta) in updates {
                set(&mut env.recipients[idx], status, reply, mta);
            }
            Update::Write
        })
    })
    .await?;
    Ok(env.is_some())
}

fn set(r: &mut Recipient, status: RcptStatus, reply: String, mta: Option<String>) {
    r.status = status;
    r.reply = Some(reply);
    r.remote_mta = mta;
}

/// RFC 5321 §4.5.4.1: retry after `retry_initial`, doubling up to `retry_max`; give up
/// after `expire` (the RFC suggests 4–5 days), but always attempt once at the expiry time.
fn next_attempt(inner: &Inner, env: &Envelope, attempts: u32, now: i64) -> i64 {
    let c = &inner.config;
    let factor = 1u32.checked_shl(attempts.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
    let delay = c.retry_initial.saturating_mul(factor).min(c.retry_max);
    let expiry = env.created + c.expire.as_millis() as i64;
    (now + delay.as_millis() as i64).min(expiry.max(now))
}

/// Expire what is left if it is time, bounce the failures, write the attempt to the spool.
async fn finish(
    inner: &Arc<Inner>,
    env: Envelope,
    mut outcomes: Vec<Outcome>,
    message: &[u8],
) -> std::io::Result<Option<i64>> {
    let now = now_ms();
    let attempts = env.attempts + 1;
    if now >= env.created + inner.config.expire.as_millis() as i64 {
        for o in outcomes.iter_mut().filter(|o| o.status == RcptStatus::Deferred) {
            o.status = RcptStatus::Failed;
            o.reply = format!("4.4.7 delivery time expired; last error: {}", o.reply);
        }
    }
    let next = next_attempt(inner, &env, attempts, now);
    log_outcomes(&env, &outcomes, attempts, next);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == RcptStatus::Failed).collect();
    let bounced = failed.is_empty() || bounce(inner, &env, &failed, message).await;
    let updates: Vec<(usize, RcptStatus, String, Option<String>)> = failed
        .iter()
        .map(|o| {
            // Without a queued DSN the failure is not recorded: the recipient is retried.
            let status = if bounced { RcptStatus::Failed } else { RcptStatus::Deferred };
            (o.idx, status, o.reply.clone(), o.mta.clone())
        })
        .collect();
    let spool = inner.spool.clone();
    let id = env.id.clone();
    let result = blocking(move || {
        spool.update(&id, |disk| {
            for (idx, status, reply, mta) in updates {
                set(&mut disk.recipients[idx], status, reply, mta);
            }
            disk.attempts = attempts;
            disk.next_attempt = next;
            if disk.is_done() {
                Update::Remove
            } else {
                Update::Write
            }
        })
    })
    .await?;
    Ok(result.filter(|disk| !disk.is_done()).map(|_| next))
}

fn log_outcomes(env: &Envelope, outcomes: &[Outcome], attempt: u32, next: i64) {
    let next = chrono::DateTime::from_timestamp_millis(next).unwrap_or_default().to_rfc3339();
    for o in outcomes {
        let r = &env.recipients[o.idx];
        let status = match o.status {
            RcptStatus::Delivered => "delivered",
            RcptStatus::Failed => "failed",
            _ => "deferred",
        };
        let mx = match (&r.target, &o.mta) {
            (Target::Local(_), _) => "local",
            (_, Some(mta)) => mta.as_str(),
            (_, None) => "",
        };
        let next_attempt = if o.status == RcptStatus::Deferred { next.as_str() } else { "" };
        tracing::info!(
            queue_id = env.id,
            message_id = env.message_id.as_deref().unwrap_or(""),
            rcpt = %r.rcpt,
            mx,
            status,
            reply = o.reply,
            attempt,
            next_attempt,
            "delivery attempt"
        );
    }
}

/// Queue one DSN for all recipients that failed in this attempt. RFC 5321 §6.1/§6.2 and
/// RFC 3464: never for a null reverse-path (no bounce loops); the DSN itself has a null
/// reverse-path. False when it could not be queued (the failures are then retried).
async fn bounce(inner: &Arc<Inner>, env: &Envelope, failed: &[&Outcome], message: &[u8]) -> bool {
    let Some(sender) = &env.sender else {
        tracing::info!(queue_id = env.id, failed = failed.len(), "no DSN: the sender is <>");
        return true;
    };
    let targets = match inner.router.dsn_targets(sender).await {
        Ok(t) if t.is_empty() => {
            tracing::warn!(queue_id = env.id, sender = %sender, "no DSN: the sender has no mailbox here");
            return true;
        }
        Ok(t) => t,
        Err(e) => {
            tracing::error!(queue_id = env.id, error = e, "cannot route the DSN");
            return false;
        }
    };
    let rcpts: Vec<Recipient> = failed
        .iter()
        .map(|o| {
            let mut r = env.recipients[o.idx].clone();
            set(&mut r, RcptStatus::Failed, o.reply.clone(), o.mta.clone());
            r
        })
        .collect();
    let bytes = dsn::build(&inner.hostname, env, &rcpts, message);
    let incoming = Incoming {
        sender: None,
        recipients: vec![(sender.clone(), targets)],
        message_id: Some(format!("<{}.dsn@{}>", env.id, inner.hostname)),
        client_ip: None,
        helo: None,
        auth_user: None,
        folder: None,
    };
    match (Queue { inner: inner.clone() }).accept(incoming, bytes).await {
        Ok(dsn_id) => {
            tracing::info!(queue_id = env.id, dsn_id, sender = %sender, failed = rcpts.len(), "DSN generated");
            true
        }
        Err(e) => {
            tracing::error!(queue_id = env.id, error = %e, "cannot queue the DSN");
            false
        }
    }
}
