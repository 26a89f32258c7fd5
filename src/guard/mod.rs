//! The guard: abuse counters per client IP, bans, the nftables set, and sending limits per
//! authenticated user.
//!
//! Protocol servers call two things, one line each:
//!
//! ```text
//! if guard.connect(peer.ip()).is_banned() { return; }            // at accept, before any greeting
//! guard.record(peer.ip(), Event::AuthFailure { protocol: "imap" }); // where a login fails
//! ```
//!
//! `record` returns the [`Verdict`] after counting, so a session can hang up at once when the
//! event it just reported got its client banned.
//!
//! Counting: for each client and kind of event we keep the times of the events within that
//! kind's window (a sliding window); reaching the threshold bans. A ban lasts `ban_time`,
//! doubled for each earlier ban of the same client that ended less than `repeat_window` ago,
//! capped at `max_ban_time` (the usual "recidive" escalation, decided here; no code from
//! other projects). Allow-listed clients are neither counted nor banned.
//!
//! Bans live in `{data_dir}/guard-bans.json` ([`bans`]), shared with `posthaste ban`. The
//! accept path ([`Guard::check`], [`Guard::connect`]) answers from memory only: no file I/O
//! on the async workers, and no file I/O under the state lock that every accept takes. The
//! daemon's [`Guard::watch`] task re-reads the file off the async workers when it is
//! replaced (inotify, `watch.rs`) and every [`SWEEP_INTERVAL`] (which also logs expiries),
//! so a `posthaste ban` is in force as soon as the CLI has renamed the new file into
//! place. A ban the daemon makes itself is written to the file before [`Guard::record`]
//! returns, but outside the state lock and with the session's worker thread handing its
//! other connections over first (`net::blocking`); a re-read meanwhile keeps it.

pub mod bans;
pub mod nft;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{Config, GuardConfig, NftMode};
use bans::{now_secs, rfc3339, FileStamp};
pub use bans::{Ban, BanFile};
pub use nft::Nft;

/// How often the daemon re-reads the ban file (if it changed) and logs expired bans, in
/// case a change notification is missed (no inotify, a file system without events).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Something a client did that counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A failed login: SMTP AUTH, POP3 USER/PASS or AUTH, IMAP LOGIN or AUTHENTICATE.
    AuthFailure { protocol: &'static str },
    /// RCPT TO an address of one of our domains that does not exist.
    UnknownRecipient,
    /// A line that is not a valid command (syntax, overlong, not UTF-8).
    ProtocolError { protocol: &'static str },
    /// A new connection (counted for floods).
    Connection,
}

impl Event {
    fn kind(self) -> usize {
        match self {
            Event::AuthFailure { .. } => 0,
            Event::UnknownRecipient => 1,
            Event::ProtocolError { .. } => 2,
            Event::Connection => 3,
        }
    }
    fn reason(self) -> String {
        match self {
            Event::AuthFailure { protocol } => format!("auth failures (the last over {protocol})"),
            Event::UnknownRecipient => "unknown recipients".into(),
            Event::ProtocolError { protocol } => format!("protocol errors ({protocol})"),
            Event::Connection => "connections (flood)".into(),
        }
    }
}

/// Whether a client may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Banned until this Unix time.
    Banned {
        until: u64,
    },
}

impl Verdict {
    pub fn is_banned(self) -> bool {
        matches!(self, Verdict::Banned { .. })
    }
}

/// Why a submission was refused by the per-user limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    Messages,
    Recipients,
}

pub struct Guard {
    cfg: GuardConfig,
    allow: Vec<IpNet>,
    file: Option<BanFile>,
    nft: Option<Nft>,
    /// The thread that runs `nft` in the daemon (see [`Guard::start_nft_worker`]).
    nft_worker: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// Taken briefly by every accept: never held across file I/O.
    state: Mutex<State>,
    /// Held while the ban file is read or written (never by an accept), so a re-read and a
    /// save never interleave: a save's stamp always belongs to what it wrote.
    file_io: Mutex<()>,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    /// (client, kind) → times (Unix seconds) of events within the kind's window.
    counters: HashMap<(IpAddr, usize), VecDeque<u64>>,
    /// Every known ban, recently expired ones included (they decide escalation).
    bans: BTreeMap<IpAddr, Ban>,
    /// Clients whose ban we last saw active (to log expiries and removals once).
    active: HashSet<IpAddr>,
    /// The version of the ban file `bans` was last read from or written to.
    stamp: Option<FileStamp>,
    /// Bans made here that the ban file does not hold yet (being saved, or the save failed
    /// and is retried at the next sweep). Part of `bans` too; a re-read keeps them.
    unsaved: BTreeMap<IpAddr, Ban>,
    /// user → (time, recipients) of messages submitted in the last hour.
    users: HashMap<String, VecDeque<(u64, u32)>>,
}

impl State {
    /// `bans` from the file's `loaded` list, keeping the bans not saved yet.
    fn set_bans(&mut self, loaded: BTreeMap<IpAddr, Ban>, stamp: Option<FileStamp>) {
        self.bans = loaded;
        for (ip, b) in &self.unsaved {
            self.bans.insert(*ip, b.clone());
        }
        self.stamp = stamp;
    }
}

impl Guard {
    /// A guard that keeps everything in memory: no ban file, no nftables (session tests).
    pub fn in_memory(cfg: &GuardConfig) -> Guard {
        Guard {
            cfg: cfg.clone(),
            allow: cfg.allow_nets(),
            file: None,
            nft: None,
            nft_worker: Mutex::new(None),
            state: Mutex::new(State::default()),
            file_io: Mutex::new(()),
        }
    }

    /// A guard that does nothing: no counting, no bans, no sending limits. For tests that
    /// want none: every listener's `Context::new` takes its guard as a required argument.
    pub fn off() -> Guard {
        let cfg = GuardConfig {
            enabled: false,
            messages_per_hour: 0,
            recipients_per_hour: 0,
            nftables: NftMode::Off,
            ..GuardConfig::default()
        };
        Guard::in_memory(&cfg)
    }

    /// The guard of a data directory, with nftables as `[guard] nftables` says. Nothing is
    /// changed yet: the daemon calls [`Guard::start`], the CLI [`Guard::ban`]/[`Guard::unban`].
    pub fn open(config: &Config) -> anyhow::Result<Guard> {
        let cfg = &config.guard;
        let mut g = Guard::in_memory(cfg);
        let ports: Vec<u16> =
            config.listeners().iter().flat_map(|(_, addrs)| addrs.iter().map(|a| a.port())).collect();
        g.nft = match cfg.nftables {
            NftMode::Off => None,
            NftMode::On => match Nft::available() {
                Ok(()) => Some(Nft::new(ports)),
                Err(e) => anyhow::bail!(
                    "guard.nftables = true, but nft does not work: {e}\nhelp: install the package `nftables` and run as root (or with CAP_NET_ADMIN), or set nftables = \"auto\""
                ),
            },
            NftMode::Auto => match Nft::available() {
                Ok(()) => Some(Nft::new(ports)),
                Err(e) => {
                    info!(reason = %e, "guard: nftables not available, bans are enforced at accept only");
                    None
                }
            },
        };
        // What is in the file now is the starting point, not news: only later changes are
        // logged as bans and unbans.
        let file = BanFile::new(&config.data_dir);
        {
            let now = now_secs();
            let mut st = g.state.lock().unwrap();
            st.stamp = file.stamp();
            st.bans =
                file.load().with_context(|| format!("cannot read the ban list {}", file.path().display()))?;
            st.active = st.bans.values().filter(|b| b.active_at(now)).map(|b| b.client).collect();
        }
        g.file = Some(file);
        Ok(g)
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    pub fn nftables(&self) -> bool {
        self.nft.is_some()
    }

    /// Daemon start: put the active bans of the ban file into nftables (our table is
    /// rebuilt from it).
    pub fn start(&self) -> anyhow::Result<()> {
        let now = now_secs();
        self.reload();
        let mut st = self.state.lock().unwrap();
        log_changes(&mut st, now);
        if let Some(nft) = &self.nft {
            let list: Vec<(IpAddr, Duration)> =
                st.bans.values().filter(|b| b.active_at(now)).map(|b| (b.client, b.remaining(now))).collect();
            match nft.setup(&list) {
                Ok(()) => info!(bans = list.len(), "guard: nftables table inet posthaste ready"),
                Err(e) => {
                    warn!(error = %e, "guard: cannot set up nftables; bans are enforced at accept only")
                }
            }
        }
        info!(bans = st.active.len(), nftables = self.nft.is_some(), "guard: loaded bans");
        Ok(())
    }

    /// Never counted, never banned: loopback always (a local webmail or the smoke test must
    /// not lock everyone out, whatever `allow` says), and the `allow` list.
    /// Run later `nft` calls on a thread of their own, started now by the caller. The daemon
    /// calls this on the thread that kept CAP_NET_ADMIN when it dropped root: capabilities
    /// belong to threads (capabilities(7)), and the runtime's threads do not have it.
    pub fn start_nft_worker(&self) {
        if self.nft.is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("guard-nft".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        if spawned.is_ok() {
            *self.nft_worker.lock().unwrap() = Some(tx);
        }
    }

    /// Run an nftables change off the async threads: on the nft thread if there is one, on
    /// a blocking thread in a runtime, inline otherwise (the CLI).
    fn nft_job(&self, f: impl FnOnce() + Send + 'static) {
        if let Some(tx) = self.nft_worker.lock().unwrap().as_ref() {
            let _ = tx.send(Box::new(f));
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(f);
            }
            Err(_) => f(),
        }
    }

    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Is `ip` banned? From memory only (the accept path): the file is re-read elsewhere
    /// ([`Guard::watch`], [`Guard::sweep`]).
    pub fn check(&self, ip: IpAddr) -> Verdict {
        self.check_at(ip, now_secs())
    }

    pub fn check_at(&self, ip: IpAddr, now: u64) -> Verdict {
        let ip = canonical(ip);
        if !self.cfg.enabled || self.is_allowed(ip) {
            return Verdict::Allow;
        }
        let st = self.state.lock().unwrap();
        match st.bans.get(&ip) {
            Some(b) if b.active_at(now) => Verdict::Banned { until: b.until },
            _ => Verdict::Allow,
        }
    }

    /// At accept: the verdict, and the connection counted (floods).
    pub fn connect(&self, ip: IpAddr) -> Verdict {
        match self.check(ip) {
            Verdict::Allow => self.record(ip, Event::Connection),
            banned => banned,
        }
    }

    /// Count `event` for `ip`; bans when a threshold is reached. Returns the verdict after.
    pub fn record(&self, ip: IpAddr, event: Event) -> Verdict {
        self.record_at(ip, event, now_secs())
    }

    pub fn record_at(&self, ip: IpAddr, event: Event, now: u64) -> Verdict {
        let ip = canonical(ip);
        if !self.cfg.enabled || self.is_allowed(ip) {
            return Verdict::Allow;
        }
        let (limit, window) = self.threshold(event);
        let mut st = self.state.lock().unwrap();
        if let Some(b) = st.bans.get(&ip).filter(|b| b.active_at(now)) {
            return Verdict::Banned { until: b.until };
        }
        let times = st.counters.entry((ip, event.kind())).or_default();
        times.push_back(now);
        while times.front().is_some_and(|t| *t + window.as_secs() <= now) {
            times.pop_front();
        }
        if (times.len() as u32) < limit {
            return Verdict::Allow;
        }
        let reason =
            format!("{} {} in {}", times.len(), event.reason(), crate::config::duration_str::format(&window));
        let ban = self.ban_locked(&mut st, ip, None, &reason, now);
        drop(st);
        // Saved before the session hears of it (as the CLI sees it at once, and a restart
        // keeps it), without the state lock, and with the worker's other connections handed
        // to another worker first (sessions call this on the async workers).
        crate::net::blocking(|| self.save_now());
        self.announce(&ban);
        Verdict::Banned { until: ban.until }
    }

    fn threshold(&self, event: Event) -> (u32, Duration) {
        let c = &self.cfg;
        match event {
            Event::AuthFailure { .. } => (c.auth_failures, c.auth_failure_window),
            Event::UnknownRecipient => (c.unknown_recipients, c.unknown_recipient_window),
            Event::ProtocolError { .. } => (c.protocol_errors, c.protocol_error_window),
            Event::Connection => (c.connections, c.connection_window),
        }
    }

    /// How long the next ban of a client lasts, given its previous one.
    pub fn next_ban(&self, previous: Option<&Ban>, now: u64) -> (u32, Duration) {
        let offence = match previous {
            Some(p) if p.until + self.cfg.repeat_window.as_secs() > now => p.offence + 1,
            _ => 1,
        };
        let factor = 1u64.checked_shl(offence.saturating_sub(1).min(62)).unwrap_or(u64::MAX);
        let secs = self.cfg.ban_time.as_secs().saturating_mul(factor).min(self.cfg.max_ban_time.as_secs());
        (offence, Duration::from_secs(secs))
    }

    /// Ban `ip` for `duration` (None: the escalated default). Refused for allow-listed ones.
    pub fn ban(&self, ip: IpAddr, duration: Option<Duration>, reason: &str) -> anyhow::Result<Ban> {
        let ip = canonical(ip);
        if self.is_allowed(ip) {
            anyhow::bail!(
                "{ip} is never banned: it is a loopback address or in [guard] allow\nhelp: to ban it, remove it from [guard] allow (loopback cannot be banned)"
            );
        }
        let now = now_secs();
        self.reload();
        let ban = {
            let mut st = self.state.lock().unwrap();
            log_changes(&mut st, now);
            self.ban_locked(&mut st, ip, duration, reason, now)
        };
        // The CLI's call: saved before it says "banned" (and exits). A ban that is not saved
        // would never reach the daemon: it is an error and is taken back here.
        if let Some(file) = &self.file {
            if let Err(e) = save(file, &self.state, &self.file_io, self.cfg.repeat_window) {
                let mut st = self.state.lock().unwrap();
                st.unsaved.remove(&ip);
                st.bans.remove(&ip);
                st.active.remove(&ip);
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot save the ban list {}: the ban was not made",
                    file.path().display()
                )));
            }
        }
        self.announce(&ban);
        Ok(ban)
    }

    fn ban_locked(
        &self,
        st: &mut State,
        ip: IpAddr,
        duration: Option<Duration>,
        reason: &str,
        now: u64,
    ) -> Ban {
        let (offence, auto) = self.next_ban(st.bans.get(&ip), now);
        let duration = duration.unwrap_or(auto);
        let ban = Ban {
            client: ip,
            since: now,
            until: now + duration.as_secs(),
            reason: reason.to_owned(),
            offence,
            lifted: None,
        };
        if self.file.is_some() {
            // Written by the caller once the lock is released (`save`), then announced.
            st.unsaved.insert(ip, ban.clone());
        }
        st.bans.insert(ip, ban.clone());
        st.active.insert(ip);
        st.counters.retain(|(c, _), _| *c != ip);
        ban
    }

    /// After a ban is saved: the log line, and the ban into nftables (off this thread).
    fn announce(&self, ban: &Ban) {
        let (ip, duration) = (ban.client, Duration::from_secs(ban.until - ban.since));
        warn!(event = "ban", client = %ip, reason = %ban.reason, until = %rfc3339(ban.until),
              duration = duration.as_secs(), offence = ban.offence, "client banned");
        if let Some(nft) = self.nft.clone() {
            self.nft_job(move || {
                if let Err(e) = nft.ban(ip, duration) {
                    warn!(client = %ip, error = %e, "guard: cannot add the ban to nftables");
                }
            });
        }
    }

    /// Lift the ban of `ip`; returns it if there was an active one.
    /// The CLI's call: the file is changed under the state lock (no accept waits for it in
    /// that process).
    pub fn unban(&self, ip: IpAddr, reason: &str) -> anyhow::Result<Option<Ban>> {
        let ip = canonical(ip);
        let now = now_secs();
        self.reload();
        let _io = self.file_io.lock().unwrap();
        let mut st = self.state.lock().unwrap();
        log_changes(&mut st, now);
        let mut removed = st.bans.get(&ip).filter(|b| b.active_at(now)).cloned();
        if let Some(f) = &self.file {
            // Ending the ban now (rather than deleting it) keeps the offence count for
            // escalation.
            let (was, stamp) = f.update(self.cfg.repeat_window, |all| {
                let b = all.get_mut(&ip).filter(|b| b.active_at(now))?;
                let was = b.clone();
                b.until = now;
                b.lifted = Some(reason.to_owned());
                Some(was)
            })?;
            removed = was;
            st.unsaved.remove(&ip);
            st.set_bans(f.load()?, Some(stamp));
        } else if let Some(b) = st.bans.get_mut(&ip).filter(|b| b.active_at(now)) {
            b.until = now;
            b.lifted = Some(reason.to_owned());
        }
        st.active.remove(&ip);
        st.counters.retain(|(c, _), _| *c != ip);
        if let Some(b) = &removed {
            info!(event = "unban", client = %ip, reason, until = %rfc3339(b.until), "client unbanned");
        }
        if let Some(nft) = &self.nft {
            if let Err(e) = nft.unban(ip) {
                warn!(client = %ip, error = %e, "guard: cannot remove the ban from nftables");
            }
        }
        Ok(removed)
    }

    /// The active bans.
    pub fn list(&self) -> Vec<Ban> {
        let now = now_secs();
        self.reload();
        let mut st = self.state.lock().unwrap();
        log_changes(&mut st, now);
        st.bans.values().filter(|b| b.active_at(now)).cloned().collect()
    }

    /// Periodic housekeeping (blocking: file I/O): notice CLI changes, save bans whose save
    /// failed, log expiries, forget old counters.
    pub fn sweep(&self) {
        self.sweep_at(now_secs());
    }

    pub fn sweep_at(&self, now: u64) {
        self.reload();
        self.save_now();
        let mut st = self.state.lock().unwrap();
        log_changes(&mut st, now);
        let longest = [
            self.cfg.auth_failure_window,
            self.cfg.unknown_recipient_window,
            self.cfg.protocol_error_window,
            self.cfg.connection_window,
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
        .as_secs();
        st.counters.retain(|_, t| t.back().is_some_and(|last| last + longest > now));
        st.users.retain(|_, v| v.back().is_some_and(|(t, _)| t + 3600 > now));
    }

    /// Blocking: re-read the ban file if it changed, then log what appeared or ended.
    pub fn refresh(&self) {
        self.reload();
        log_changes(&mut self.state.lock().unwrap(), now_secs());
    }

    /// The daemon's task that keeps the bans in step with the ban file: a re-read when the
    /// file is replaced (inotify) and a [`Guard::sweep`] every [`SWEEP_INTERVAL`], each on
    /// a blocking thread. Without inotify the sweep alone notices changes.
    pub async fn watch(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut changes = match &self.file {
            Some(f) => match watch::FileWatch::new(f.path()) {
                Ok(w) => Some(w),
                Err(e) => {
                    info!(error = %e, every = ?SWEEP_INTERVAL, "guard: cannot watch the ban file; it is re-read on a timer only");
                    None
                }
            },
            None => None,
        };
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            let changed = async {
                match changes.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            };
            let job: fn(&Guard) = tokio::select! {
                _ = tick.tick() => Guard::sweep,
                r = changed => match r {
                    Ok(()) => Guard::refresh,
                    Err(e) => {
                        warn!(error = %e, every = ?SWEEP_INTERVAL, "guard: watching the ban file failed; it is re-read on a timer only");
                        changes = None;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let g = self.clone();
            let _ = tokio::task::spawn_blocking(move || job(&g)).await;
        }
    }

    /// Blocking: read the ban file if it is not the version `bans` holds. Read outside the
    /// state lock, so accepts never wait for the disk.
    fn reload(&self) {
        let Some(f) = &self.file else { return };
        let _io = self.file_io.lock().unwrap();
        let stamp = f.stamp();
        if stamp == self.state.lock().unwrap().stamp {
            return;
        }
        // A change between the stat and the read leaves a stamp older than the contents:
        // the next look reads again, nothing is missed.
        match f.load() {
            Ok(bans) => self.state.lock().unwrap().set_bans(bans, stamp),
            Err(e) => warn!(error = %e, "guard: cannot read the ban list; keeping the previous one"),
        }
    }

    /// Blocking: write the bans not in the file yet, now. A failure is logged in `save`
    /// and the bans stay in force in memory, retried at the next sweep.
    fn save_now(&self) {
        if let Some(file) = &self.file {
            if let Err(e) = save(file, &self.state, &self.file_io, self.cfg.repeat_window) {
                warn!(error = %e, file = %file.path().display(), "guard: cannot save the ban list");
            }
        }
    }

    // ---- per-user sending limits (submission) ---------------------------------------

    /// May `user` start another message (MAIL FROM)? `Err` once `messages_per_hour` is used up.
    pub fn may_send_message(&self, user: &str) -> Result<(), LimitExceeded> {
        self.may_send_at(user, 0, now_secs())
    }

    /// May `user` add a recipient to a message that already has `pending` of them?
    pub fn may_add_recipient(&self, user: &str, pending: usize) -> Result<(), LimitExceeded> {
        self.may_send_at(user, pending as u32 + 1, now_secs())
    }

    pub fn may_send_at(&self, user: &str, recipients: u32, now: u64) -> Result<(), LimitExceeded> {
        let mut st = self.state.lock().unwrap();
        let Some(q) = st.users.get_mut(user) else { return Ok(()) };
        while q.front().is_some_and(|(t, _)| t + 3600 <= now) {
            q.pop_front();
        }
        let max_msgs = self.cfg.messages_per_hour;
        let max_rcpts = self.cfg.recipients_per_hour;
        if recipients == 0 && max_msgs > 0 && q.len() as u32 >= max_msgs {
            return Err(LimitExceeded::Messages);
        }
        let sent: u32 = q.iter().map(|(_, n)| n).sum();
        if max_rcpts > 0 && sent + recipients > max_rcpts {
            return Err(LimitExceeded::Recipients);
        }
        Ok(())
    }

    /// A message from `user` to `recipients` addresses was accepted.
    pub fn record_message(&self, user: &str, recipients: usize) {
        self.record_message_at(user, recipients, now_secs());
    }

    pub fn record_message_at(&self, user: &str, recipients: usize, now: u64) {
        let mut st = self.state.lock().unwrap();
        st.users.entry(user.to_owned()).or_default().push_back((now, recipients as u32));
    }
}

/// Write the bans of `state` that the file does not hold yet (blocking). The file is
/// written outside the state lock; `io` keeps re-reads out meanwhile. A failed save leaves
/// them unsaved (and in force in memory): the next sweep tries again.
fn save(file: &BanFile, state: &Mutex<State>, io: &Mutex<()>, keep_expired: Duration) -> std::io::Result<()> {
    let _io = io.lock().unwrap();
    let pending = state.lock().unwrap().unsaved.clone();
    if pending.is_empty() {
        return Ok(());
    }
    let written = file.update(keep_expired, |all| {
        for (ip, b) in &pending {
            all.insert(*ip, b.clone());
        }
        all.clone()
    });
    match written {
        Ok((all, stamp)) => {
            let mut st = state.lock().unwrap();
            // A ban made again while this one was written stays unsaved for the next save.
            st.unsaved.retain(|ip, b| pending.get(ip) != Some(b));
            // What the file holds now, other writers' changes included.
            st.set_bans(all, Some(stamp));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Log the bans that appeared, ended or were removed since we last looked (and forget the
/// counters of clients whose ban ended).
fn log_changes(st: &mut State, now: u64) {
    let active: HashSet<IpAddr> = st.bans.values().filter(|b| b.active_at(now)).map(|b| b.client).collect();
    if active == st.active {
        return;
    }
    for ip in active.difference(&st.active) {
        let b = &st.bans[ip];
        warn!(event = "ban", client = %ip, reason = %b.reason, until = %rfc3339(b.until),
              duration = b.until.saturating_sub(b.since), offence = b.offence, source = "ban file", "client banned");
    }
    let gone: Vec<IpAddr> = st.active.difference(&active).copied().collect();
    for ip in gone {
        let (reason, until) = match st.bans.get(&ip) {
            Some(b) => (b.lifted.clone().unwrap_or_else(|| "expired".into()), b.until),
            None => ("removed from the ban file".into(), now),
        };
        info!(event = "unban", client = %ip, reason, until = %rfc3339(until), "client unbanned");
        st.counters.retain(|(c, _), _| *c != ip);
    }
    st.active = active;
}

/// The front door's question at accept (src/net/door.rs): refused while banned; the
/// connection is counted (floods).
impl crate::net::Gate for Guard {
    fn refuse(&self, ip: IpAddr) -> bool {
        self.connect(ip).is_banned()
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports) is the IPv4
/// client: count and ban it as such.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
