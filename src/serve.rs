//! `posthaste serve`: bind every configured listener, drop privileges, run the queue and the
//! protocol servers until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::directory::Directory;
use crate::guard::Guard;
use crate::queue::Queue;
use crate::store::Store;
use crate::{imap, net, pop3, smtp, web};

/// Runs under `block_on` on the process's main thread (src/cli.rs), not on a runtime worker:
/// the file I/O here (data dir, pidfile, ban list, SIGHUP's certificate reload) blocks no
/// session. What runs per connection or on a timer is spawned and keeps blocking work off
/// the workers itself (`net::serve`, `Guard::watch`).
pub async fn run(config: Config) -> anyhow::Result<()> {
    preflight(&config)?;
    let config = Arc::new(config);
    // One certificate store for every listener: SIGHUP and ACME renewal swap its contents.
    let certs = match &config.tls {
        Some(t) => Some(crate::tls::CertStore::load(t).map_err(|e| match &config.acme {
            Some(_) => e.context("no usable certificate yet\nhelp: `posthaste install` obtains the first ACME certificate (the daemon only renews)"),
            None => e,
        })?),
        None => None,
    };
    let tls = certs.as_ref().map(|c| c.acceptor());

    // Bind while we still may use ports below 1024; then give up root.
    let mut smtp_listeners: Vec<(smtp::Profile, TcpListener)> = Vec::new();
    for (profile, addrs) in [
        (smtp::Profile::Mx, &config.listen.smtp),
        (smtp::Profile::Submission, &config.listen.submission),
        (smtp::Profile::Submissions, &config.listen.submissions),
    ] {
        for addr in addrs {
            smtp_listeners.push((profile, bind(*addr, profile.name()).await?));
        }
    }
    let mut pop3_listeners: Vec<(pop3::Profile, TcpListener)> = Vec::new();
    for (profile, addrs) in
        [(pop3::Profile::Pop3, &config.listen.pop3), (pop3::Profile::Pop3s, &config.listen.pop3s)]
    {
        for addr in addrs {
            pop3_listeners.push((profile, bind(*addr, profile.name()).await?));
        }
    }
    let mut imap_listeners: Vec<(imap::Profile, TcpListener)> = Vec::new();
    for (profile, addrs) in
        [(imap::Profile::Imap, &config.listen.imap), (imap::Profile::Imaps, &config.listen.imaps)]
    {
        for addr in addrs {
            imap_listeners.push((profile, bind(*addr, profile.name()).await?));
        }
    }
    let mut web_listeners: Vec<(web::Profile, TcpListener)> = Vec::new();
    for (profile, addrs) in
        [(web::Profile::Https, &config.listen.https), (web::Profile::Http, &config.listen.http)]
    {
        for addr in addrs {
            web_listeners
                .push((profile, bind(*addr, <web::Context as net::Protocol>::listener_name(profile)).await?));
        }
    }
    // The ACME HTTP-01 responder's port (80) is bound now, while we may, and served for the
    // daemon's lifetime so renewals work unprivileged (see src/tls/acme.rs for why HTTP-01).
    // When listen.http has its address, the web listener answers the challenges instead.
    let acme_shared = config.acme.as_ref().is_some_and(|a| config.listen.http.contains(&a.http_listen));
    let acme_http = match &config.acme {
        Some(a) if !acme_shared => Some(crate::tls::acme::bind_http(a.http_listen).await?),
        _ => None,
    };
    if smtp_listeners.is_empty() {
        bail!("no SMTP listener is configured\nhelp: add e.g. smtp = [\"0.0.0.0:25\"] under [listen]");
    }

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Before dropping root: setting up the nftables table needs CAP_NET_ADMIN.
    let guard = Arc::new(Guard::open(&config)?);
    guard.start().context("cannot load the ban list")?;
    drop_privileges(&config.server.user, &config.data_dir, guard.nftables())?;
    // This thread kept CAP_NET_ADMIN; the nft thread started from it inherits it.
    guard.start_nft_worker();

    let directory =
        Directory::open(&config.directory_url()).await.context("cannot open the account directory")?;
    let store = Store::new(config.mail_dir());
    let queue = Queue::open(&config, store.clone(), directory.clone()).context("cannot open the queue")?;
    let imap_ctx = Arc::new(imap::Context::new(
        config.clone(),
        directory.clone(),
        store.clone(),
        tls.clone(),
        guard.clone(),
    ));

    // Handlers first: whoever reads the pidfile may signal at once (`queue flush` sends
    // SIGUSR1, whose default action would kill the daemon).
    let signals = Signals::install();
    let pidfile = config.pidfile();
    std::fs::write(&pidfile, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pidfile {}", pidfile.display()))?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let pop3_ctx =
        Arc::new(pop3::Context::new(config.clone(), directory.clone(), store, tls.clone(), guard.clone()));
    let challenges = crate::tls::acme::Challenges::default();
    let web_ctx = Arc::new(web::Context::new(
        config.clone(),
        directory.clone(),
        Store::new(config.mail_dir()),
        certs.clone(),
        guard.clone(),
        acme_shared.then(|| challenges.clone()),
    ));
    let smtp_ctx = Arc::new(smtp::Context::new(config.clone(), directory, queue.clone(), tls, guard.clone()));
    // Every listener through the one front door (src/net/door.rs).
    let mut tasks = Vec::new();
    for (profile, listener) in smtp_listeners {
        tasks.push(tokio::spawn(net::serve(smtp_ctx.clone(), profile, listener, shutdown_rx.clone())));
    }
    for (profile, listener) in pop3_listeners {
        tasks.push(tokio::spawn(net::serve(pop3_ctx.clone(), profile, listener, shutdown_rx.clone())));
    }
    for (profile, listener) in imap_listeners {
        tasks.push(tokio::spawn(net::serve(imap_ctx.clone(), profile, listener, shutdown_rx.clone())));
    }
    for (profile, listener) in web_listeners {
        tasks.push(tokio::spawn(net::serve(web_ctx.clone(), profile, listener, shutdown_rx.clone())));
    }
    // Keep the bans in step with the ban file (`posthaste ban`, edits by hand) and log
    // expiries, off the async workers: the accept path only asks memory (src/guard/mod.rs).
    tasks.push(tokio::spawn(guard.clone().watch(shutdown_rx.clone())));
    if let (true, Some(store)) = (acme_http.is_some() || acme_shared, certs.clone()) {
        if let Some(listener) = acme_http {
            tasks.push(tokio::spawn(challenges.clone().serve(listener, shutdown_rx.clone())));
        }
        check_writable(&config);
        tasks.push(tokio::spawn(crate::tls::acme::renew_loop(
            config.clone(),
            store,
            challenges,
            shutdown_rx.clone(),
        )));
    }
    let queue_task = {
        let q = queue.clone();
        let rx = shutdown_rx.clone();
        tokio::spawn(async move { q.run(rx).await })
    };
    info!(event = "started", pid = std::process::id(), hostname = %config.hostname, "posthaste is running");

    wait_for_signals(signals, &queue, certs.as_deref()).await;
    info!(event = "stopping", "shutting down");
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // Deliveries in flight finish or are retried after the restart: the spool is durable.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), queue_task).await;
    let _ = std::fs::remove_file(&pidfile);
    Ok(())
}

/// Everything a start needs that can be checked without changing anything, checked before
/// anything is changed: the start used to create the data directory and the nftables table
/// and only then find that `server.user` does not exist, leaving both behind (and, with a
/// second instance, replacing the running one's table). Every problem is reported at once.
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    use nix::unistd::{getuid, User};
    let mut problems = Vec::new();
    let pidfile = config.pidfile();
    if let Some(pid) = running_instance(&pidfile) {
        problems.push(format!(
            "posthaste is already running (pid {pid}, {})\nhelp: stop it first (systemctl stop posthaste, or kill {pid}); a second one would take over its nftables table",
            pidfile.display()
        ));
    }
    let user = &config.server.user;
    let data = &config.data_dir;
    let drops_root = getuid().is_root() && user != "root";
    let account = if drops_root {
        match User::from_name(user) {
            Ok(Some(u)) => Some(u),
            Ok(None) => {
                problems.push(format!(
                    "server.user {user:?} does not exist\nhelp: create it (`useradd --system --home-dir {} {user}`) or set [server] user in the config",
                    data.display()
                ));
                None
            }
            Err(e) => {
                problems.push(format!("cannot look up server.user {user:?}: {e}"));
                None
            }
        }
    } else {
        None
    };
    match std::fs::metadata(data) {
        Ok(meta) if !meta.is_dir() => problems.push(format!("data_dir {} is not a directory", data.display())),
        Ok(meta) => {
            if let Some(u) = &account {
                if !writable_by(&meta, u.uid.as_raw(), u.gid.as_raw()) {
                    problems.push(format!(
                        "data_dir {} is not writable by {user}\nhelp: chown -R {user}: {}",
                        data.display(),
                        data.display()
                    ));
                }
            }
        }
        // Made as root it would belong to root, and the daemon could not write it.
        Err(_) if drops_root => problems.push(format!(
            "data_dir {} does not exist\nhelp: create it for {user}: install -d -o {user} -g {user} -m 0750 {} (the installer does)",
            data.display(),
            data.display()
        )),
        Err(_) => {}
    }
    if let Some(tls) = &config.tls {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(&tls.key).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
            warn!(key = %tls.key.display(), "tls.key can be read by every user of this machine; help: chmod o-r it (0600, or 0640 with the daemon's group)");
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    bail!(
        "cannot start ({n} problem{}); nothing was changed:\n{}",
        if n == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n")
    )
}

/// The pid in the pidfile, if it is a live posthaste other than us.
fn running_instance(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    if pid <= 0 || pid == std::process::id() as i32 {
        return None;
    }
    // A stale pidfile's number may belong to another program by now.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim().starts_with("posthaste").then_some(pid)
}

/// Whether the owner, group or others bits let `uid`/`gid` write and enter `meta`'s directory.
fn writable_by(meta: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o300 == 0o300
    } else if meta.gid() == gid {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    let bound = match addr {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => bind_both_families(addr, name, dual_stack),
        _ => TcpListener::bind(addr).await,
    };
    bound.with_context(|| {
        format!("cannot listen on {addr} for {name}\nhelp: another mail server may hold the port (`ss -ltnp 'sport = :{}'`), or change listen.{name}", addr.port())
    })
}

/// `[::]:PORT` takes IPv6 and IPv4 clients on one socket. IPV6_V6ONLY is turned off
/// explicitly (RFC 3493 §5.3), whatever the host's net.ipv6.bindv6only says, so the
/// listener means the same everywhere. A host without IPv6 (a kernel booted with
/// ipv6.disable=1 has no AF_INET6) gets `0.0.0.0:PORT` instead, with a warning: the config
/// the installer writes must start there too.
fn bind_both_families(
    addr: SocketAddr,
    name: &str,
    v6: impl FnOnce(SocketAddr) -> std::io::Result<TcpListener>,
) -> std::io::Result<TcpListener> {
    match v6(addr) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            warn!(listener = name, error = %e, "this host has no IPv6: listening on {v4} instead of {addr}");
            let l = std::net::TcpListener::bind(v4)?;
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        }
        other => other,
    }
}

fn dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    s.set_only_v6(false)?;
    // As std and tokio do for every listener on Unix: a restart can bind at once.
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// ACME renewal replaces the certificate files: warn at start when this user cannot.
fn check_writable(config: &Config) {
    let Some(tls) = &config.tls else { return };
    let dir = tls.cert.parent().unwrap_or(Path::new("/"));
    let probe = dir.join(".posthaste-write-test");
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(probe);
        }
        Err(e) => warn!(
            dir = %dir.display(),
            error = %e,
            "ACME renewal will fail: the certificate directory is not writable by this user; help: chown it to the [server] user (the installer does)"
        ),
    }
}

/// The signals the daemon handles, registered as one step.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(usr1), Ok(hup)) => Some(Signals { term, int, usr1, hup }),
            _ => None,
        }
    }
}

async fn wait_for_signals(signals: Option<Signals>, queue: &Queue, certs: Option<&crate::tls::CertStore>) {
    let Some(Signals { mut term, mut int, mut usr1, mut hup }) = signals else {
        error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            // `posthaste queue flush` sends SIGUSR1: retry deferred mail now.
            _ = usr1.recv() => queue.wake(),
            // SIGHUP: read the certificate files again (for `mode: files` users who rotate
            // them). The rest of the config is read at start only.
            _ = hup.recv() => match certs.map(|c| c.reload()) {
                Some(Ok(info)) => info!(event = "certificate_reloaded", serial = %info.serial, "SIGHUP: certificate reloaded (other config changes need a restart)"),
                Some(Err(e)) => error!(event = "certificate_reload_failed", error = %format!("{e:#}"), "SIGHUP: the certificate files cannot be used; the previous certificate stays in use"),
                None => warn!("SIGHUP received: no [tls] section, nothing to reload; restart to apply config changes"),
            },
        }
    }
}

/// When started as root, continue as `user` (the data directory must be theirs).
/// `keep_net_admin`: keep CAP_NET_ADMIN (and nothing else) so the guard can still change its
/// nftables set; it is made ambient so the `nft` children inherit it (capabilities(7),
/// "Ambient capability set" and PR_SET_KEEPCAPS).
pub fn drop_privileges(user: &str, data_dir: &Path, keep_net_admin: bool) -> anyhow::Result<()> {
    use nix::unistd::{getuid, setgid, setgroups, setuid, User};
    if !getuid().is_root() || user == "root" {
        return Ok(());
    }
    let Some(u) = User::from_name(user).context("cannot look up the server user")? else {
        bail!("server.user {user:?} does not exist\nhelp: create it (`useradd --system --home-dir {} {user}`) or set [server] user in the config", data_dir.display());
    };
    setgroups(&[u.gid]).context("setgroups")?;
    setgid(u.gid).context("setgid")?;
    if keep_net_admin {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    setuid(u.uid).context("setuid")?;
    if keep_net_admin {
        if let Err(e) = keep_only_net_admin() {
            warn!(error = %e, "cannot keep CAP_NET_ADMIN: bans made from now on are enforced at accept only, not in nftables");
        }
    }
    let probe = data_dir.join(".posthaste-write-test");
    if std::fs::write(&probe, b"").is_err() {
        bail!(
            "data_dir {} is not writable by {user}\nhelp: chown -R {user}: {}",
            data_dir.display(),
            data_dir.display()
        );
    }
    let _ = std::fs::remove_file(probe);
    info!(user, uid = u.uid.as_raw(), "dropped root privileges");
    Ok(())
}

/// After setuid with PR_SET_KEEPCAPS: CAP_NET_ADMIN effective, permitted, inheritable and
/// ambient; every other capability dropped.
fn keep_only_net_admin() -> std::io::Result<()> {
    // linux/capability.h: _LINUX_CAPABILITY_VERSION_3 uses two 32-bit data words.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let bit = 1u32 << CAP_NET_ADMIN;
    let header = Header { version: VERSION_3, pid: 0 };
    let data = [
        Data { effective: bit, permitted: bit, inheritable: bit },
        Data { effective: 0, permitted: 0, inheritable: 0 },
    ];
    // SAFETY: capset(2) reads a header and two data words that live for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN as libc::c_ulong, 0, 0)
            != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    Ok(())
}

/// Admin commands run as root write files the daemon must own later: act as the owner of
/// the data directory so everything we create is theirs.
pub fn become_data_owner(data_dir: &Path) -> anyhow::Result<()> {
    use nix::unistd::{getuid, setgid, setgroups, setuid, Gid, Uid};
    use std::os::unix::fs::MetadataExt;
    if !getuid().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(data_dir) else { return Ok(()) };
    if meta.uid() == 0 {
        return Ok(());
    }
    setgroups(&[Gid::from_raw(meta.gid())]).context("setgroups")?;
    setgid(Gid::from_raw(meta.gid())).context("setgid")?;
    setuid(Uid::from_raw(meta.uid())).context("setuid")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[::]` is one socket for both families.
    #[tokio::test]
    async fn an_unspecified_ipv6_listener_takes_ipv4_and_ipv6_clients() {
        let l = bind("[::]:0".parse().unwrap(), "smtp").await.unwrap();
        let port = l.local_addr().unwrap().port();
        for client in ["127.0.0.1", "::1"] {
            let target = SocketAddr::new(client.parse().unwrap(), port);
            let (c, a) = tokio::join!(tokio::net::TcpStream::connect(target), l.accept());
            c.unwrap_or_else(|e| panic!("{target}: {e}"));
            a.unwrap();
        }
    }

    /// On a host without IPv6 the listener still starts, on IPv4.
    #[tokio::test]
    async fn without_ipv6_the_listener_falls_back_to_ipv4() {
        let no_v6 = |_| Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        let l = bind_both_families("[::]:0".parse().unwrap(), "smtp", no_v6).unwrap();
        assert!(l.local_addr().unwrap().is_ipv4());
        // Other errors (the port is taken) stay errors.
        let taken = |_| Err(std::io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert!(bind_both_families("[::]:0".parse().unwrap(), "smtp", taken).is_err());
    }
}
