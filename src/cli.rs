//! The command line: arguments (clap) → one of the commands below. Errors become exit code
//! 1 with a message and `help:` lines; clap's usage errors exit with 2.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::address::{normalize_domain, Address, AddressError};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::directory::{password, Directory, DirectoryError};
use crate::queue::spool::RcptStatus;
use crate::queue::QueueError;
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(name = "posthaste", version, about = "A turnkey mail server: SMTP, queue, admin CLI")]
pub struct Cli {
    /// The daemon config file.
    #[arg(long, global = true, env = "POSTHASTE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the mail server (all configured listeners and the queue).
    Serve,
    /// Manage the mail domains this server accepts.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Manage mail accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage aliases (forwarding addresses and catch-alls).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Inspect and manage the outbound queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Install posthaste on this machine (or into --root DIR): packages, user, config, TLS, service.
    Install(crate::install::InstallArgs),
    /// Remove posthaste (mail, keys and accounts stay unless --purge).
    Uninstall(crate::install::uninstall::UninstallArgs),
    /// Tell whether the daemon is running.
    Status,
    /// The smoke test: TLS on every listener, the MX refuses to relay, and a message
    /// submitted with AUTH is read back over IMAP and POP3. Exit 0 only if all passed.
    Check(CheckArgs),
    /// Print the DNS records to publish (MX, SPF, DMARC, DKIM) for one domain or all of them.
    /// Makes the DKIM keys of a domain that has none yet.
    Dns {
        domain: Option<String>,
        /// The records as a JSON array of {domain, name, ttl, type, value, strings}.
        #[arg(long)]
        json: bool,
    },
    /// Show, add and lift bans of client addresses (the guard; also in nftables).
    #[command(subcommand)]
    Ban(BanCmd),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Print the results as JSON ({"ok", "passed", "failed", "skipped", "checks":[…]}).
    #[arg(long)]
    pub json: bool,
    /// Send as this account (needs --password-file); without it a temporary account is
    /// created for the run and removed afterwards.
    #[arg(long, requires = "password_file", value_name = "ADDRESS")]
    pub user: Option<String>,
    /// The password of --user: the first line of this file.
    #[arg(long, requires = "user", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum BanCmd {
    /// The active bans.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ban a client address now (refused for addresses in [guard] allow).
    Add {
        ip: std::net::IpAddr,
        /// How long, e.g. 30m, 1h, 7d (default: [guard] ban_time, doubled for repeat offenders).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        #[arg(long, default_value = "banned by the administrator")]
        reason: String,
    },
    /// Lift the ban of a client address.
    Remove { ip: std::net::IpAddr },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match crate::config::duration_str::parse(s)? {
        d if d.is_zero() => Err("the duration must be longer than 0s".into()),
        d => Ok(d),
    }
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Accept mail for a domain.
    Add { name: String },
    /// List the domains.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting mail for a domain. Refused while it has accounts or aliases unless --force.
    Remove {
        name: String,
        /// Also remove its accounts and aliases (their mail stays on disk).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// Read the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Read the password from the first line of a file.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Use an existing hash in Dovecot's {SCHEME} form (ARGON2ID, ARGON2I, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT).
    #[arg(long, value_name = "HASH")]
    pub password_hash: Option<String>,
    /// The password file's contents, read while we are still root (see `preload_secrets`).
    #[arg(skip)]
    pub file_contents: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account. Without a password option a strong one is generated and printed once.
    Add {
        address: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Mailbox quota, e.g. 2G, 500M or 1.5G (binary units; 0 = unlimited).
        #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_quota)]
        quota: u64,
    },
    /// List accounts, optionally of one domain.
    List {
        domain: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change an account's password.
    Passwd {
        address: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Remove an account (its mail stays on disk).
    Remove { address: String },
}

#[derive(Subcommand, Debug)]
pub enum AliasCmd {
    /// Deliver mail for SOURCE (an address, or @domain for a catch-all) to DESTINATIONs.
    Add {
        source: String,
        #[arg(required = true)]
        destinations: Vec<String>,
    },
    /// List aliases, optionally of one domain.
    List {
        domain: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove one destination of an alias, or the whole alias.
    Remove { source: String, destination: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Show queued messages.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Retry deferred messages now (all, or one).
    Flush { id: Option<String> },
    /// Remove a message from the queue without delivering it.
    Delete { id: String },
}

/// The config, or an error that says which file and what to do. The message is flat (no
/// `caused by:` chain): `ConfigError` already names the cause.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| match e {
        ConfigError::Read { path, source } => {
            let from_env = std::env::var_os("POSTHASTE_CONFIG").is_some_and(|v| Path::new(&v) == path);
            let origin = if from_env { " (from POSTHASTE_CONFIG)" } else { "" };
            let problem = if source.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_owned()
            } else {
                format!("cannot be read: {source}")
            };
            anyhow!(
                "the config file {}{origin} {problem}\nhelp: pass --config FILE or set POSTHASTE_CONFIG (the default is {DEFAULT_CONFIG_PATH})",
                path.display()
            )
        }
        other => anyhow!("{other}"),
    })
}

pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("POSTHASTE_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}

/// Admin commands log only warnings, as text, to stderr.
fn init_admin_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the command; the error, if any, is worded for the terminal (see [`friendly`]).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    run_command(cli).map_err(friendly)
}

/// Errors from the directory and the queue carry their advice as a trailing
/// `(help: …)`; on the terminal it goes on a `help:` line of its own. An invalid address
/// gets an example of a valid one.
fn friendly(e: anyhow::Error) -> anyhow::Error {
    let address_error =
        e.downcast_ref::<AddressError>().or_else(|| match e.downcast_ref::<DirectoryError>() {
            Some(DirectoryError::InvalidAddress(a)) => Some(a),
            _ => None,
        });
    if let Some(a) = address_error {
        return anyhow!("{a}\nhelp: an address looks like alice@example.org");
    }
    if let Some(DirectoryError::NotFound(what)) = e.downcast_ref::<DirectoryError>() {
        let list = match what.split(' ').next() {
            Some("domain") => "domain list",
            Some("account") => "user list",
            _ => "alias list",
        };
        return anyhow!("{what} does not exist\nhelp: `posthaste {list}` shows what there is");
    }
    if e.downcast_ref::<DirectoryError>().is_some() || e.downcast_ref::<QueueError>().is_some() {
        let message = e.to_string();
        if let Some((head, help)) = message.strip_suffix(')').and_then(|m| m.split_once(" (help: ")) {
            return anyhow!("{head}\nhelp: {help}");
        }
    }
    e
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    // These work before there is a config (install writes it).
    match cli.command {
        Command::Install(args) => {
            crate::install::refuse_other_config(&cli.config, "install")?;
            let host = crate::install::host::Host::real(args.root.clone())?;
            return crate::install::install(&host, &args).map(|_| ());
        }
        Command::Uninstall(args) => {
            crate::install::refuse_other_config(&cli.config, "uninstall")?;
            let host = crate::install::host::Host::real(args.root.clone())?;
            return crate::install::uninstall::uninstall(&host, &args).map(|_| ());
        }
        Command::Status => {
            return crate::install::status(&crate::install::host::Host::real(None)?, &cli.config)
        }
        _ => {}
    }
    let config = load_config(&cli.config)?;
    let rt = || {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")
    };
    match cli.command {
        Command::Serve => {
            init_logging(&config);
            // Each thread that allocates gets its own glibc malloc arena, which keeps its
            // memory after a burst; two arenas are plenty for a server that mostly waits.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            // Blocking work is fsync-bound Maildir and spool writes and password hashing
            // (limited separately): more threads than this only add memory, not speed.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(64)
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(crate::serve::run(config))
        }
        Command::Check(args) => {
            init_admin_logging();
            check_cmd(&config, args, rt()?)
        }
        Command::Ban(cmd) => {
            init_admin_logging();
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
            ban_cmd(&config, cmd)
        }
        Command::Queue(cmd) => {
            init_admin_logging();
            crate::serve::become_data_owner(&config.data_dir)?;
            queue_cmd(&config, cmd)
        }
        mut cmd => {
            init_admin_logging();
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
            preload_secrets(&mut cmd)?;
            crate::serve::become_data_owner(&config.data_dir)?;
            rt()?.block_on(async move {
                let dir = Directory::open(&config.directory_url())
                    .await
                    .context("cannot open the account directory")?;
                let store = Store::new(config.mail_dir());
                match cmd {
                    Command::Domain(c) => domain_cmd(&config, &dir, &store, c).await,
                    Command::User(c) => user_cmd(&dir, &store, c).await,
                    Command::Alias(c) => alias_cmd(&dir, c).await,
                    Command::Dns { domain, json } => dns_cmd(&config, &dir, domain, json).await,
                    Command::Serve
                    | Command::Queue(_)
                    | Command::Install(_)
                    | Command::Uninstall(_)
                    | Command::Status
                    | Command::Check(_)
                    | Command::Ban(_) => unreachable!(),
                }
            })
        }
    }
}

fn check_cmd(config: &Config, args: CheckArgs, rt: tokio::runtime::Runtime) -> anyhow::Result<()> {
    let credentials = match (&args.user, &args.password_file) {
        (Some(user), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the password file {}", file.display()))?;
            let password = text.lines().next().unwrap_or("").to_owned();
            if password.is_empty() {
                bail!(
                    "the password file {} is empty\nhelp: its first line must be the password of {user}",
                    file.display()
                );
            }
            Some(crate::check::Credentials { address: Address::parse(user)?, password })
        }
        _ => None,
    };
    // The certificate and password file may be root's; the directory and the Maildirs
    // belong to the data owner, so the rest runs as that user.
    let prepared = crate::check::prepare(config, credentials);
    crate::serve::become_data_owner(&config.data_dir)?;
    let report = rt.block_on(crate::check::run(config, prepared));
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", report.table());
    }
    if !report.ok {
        bail!(
            "{} of {} checks failed\nhelp: the DETAIL column says what went wrong; the daemon's log has the server side (`posthaste status` tells whether it runs)",
            report.failed,
            report.checks.len()
        );
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn domain_cmd(config: &Config, dir: &Directory, store: &Store, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::Add { name } => {
            let d = dir.add_domain(&name).await?;
            println!("added domain {}", d.name);
            dkim_keys(config, &d.name)?;
            eprintln!("publish its DNS records (MX, SPF, DMARC, DKIM): posthaste dns {}", d.name);
        }
        DomainCmd::List { json } => {
            let domains = dir.list_domains().await?;
            if json {
                print_json(&domains)?;
            } else if domains.is_empty() {
                eprintln!("no domains yet (add one with `posthaste domain add NAME`)");
            } else {
                for d in domains {
                    println!("{}", d.name);
                }
            }
        }
        DomainCmd::Remove { name, force } => {
            // What goes with it, for the report (or the refusal) below.
            let (accounts, aliases) = domain_contents(dir, &name).await?;
            match dir.remove_domain(&name, force).await {
                Err(DirectoryError::DomainNotEmpty { domain, accounts: n_accounts, aliases: n_aliases }) => {
                    // The counts come from the refusal itself; the names, read just before,
                    // may miss one added in between.
                    let names: Vec<&str> = accounts.iter().chain(&aliases).map(String::as_str).collect();
                    bail!(
                        "domain {domain} still has {} and {}: {}\nhelp: remove them first (`posthaste user remove`, `posthaste alias remove`), or pass --force to remove them with the domain (their mail stays on disk)",
                        count(n_accounts as usize, "account", "accounts"),
                        count(n_aliases as usize, "alias", "aliases"),
                        short_list(&names, 10)
                    );
                }
                r => r?,
            }
            let name = normalize_domain(&name).unwrap_or(name);
            let mut with = Vec::new();
            if !accounts.is_empty() {
                with.push(count(accounts.len(), "account", "accounts"));
            }
            if !aliases.is_empty() {
                with.push(count(aliases.len(), "alias", "aliases"));
            }
            let with =
                if with.is_empty() { String::new() } else { format!(" with its {}", with.join(" and ")) };
            let mail = if accounts.is_empty() {
                String::new()
            } else {
                format!("; the mail stays in {}", store.root().join(&name).display())
            };
            println!("removed domain {name}{with}{mail}");
        }
    }
    Ok(())
}

/// The addresses of the accounts and the sources of the aliases of a domain; empty lists
/// when the domain does not exist (removing it reports that).
async fn domain_contents(dir: &Directory, name: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let accounts = match dir.list_accounts(Some(name)).await {
        Ok(a) => a.into_iter().map(|a| a.address).collect(),
        Err(DirectoryError::UnknownDomain(_) | DirectoryError::InvalidDomain(_)) => {
            return Ok(Default::default())
        }
        Err(e) => return Err(e.into()),
    };
    let aliases = dir.list_aliases(Some(name)).await?.into_iter().map(|a| a.source).collect();
    Ok((accounts, aliases))
}

/// `1 account`, `2 accounts`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `a, b, c` or `a, b and 5 more`.
fn short_list(items: &[&str], max: usize) -> String {
    let mut s = items.iter().take(max).copied().collect::<Vec<_>>().join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

/// Read a `--password-file` before we switch to the data directory's owner: the file is
/// typically root's and mode 0600 (`posthaste user add … --password-file /root/pw`).
fn preload_secrets(cmd: &mut Command) -> anyhow::Result<()> {
    let src = match cmd {
        Command::User(UserCmd::Add { password, .. }) | Command::User(UserCmd::Passwd { password, .. }) => {
            password
        }
        _ => return Ok(()),
    };
    if let Some(f) = &src.password_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the password file {}", f.display()))?;
        src.file_contents = Some(text);
    }
    Ok(())
}

/// The password hash to store, and the generated password if the user chose none (the
/// caller prints it once).
fn read_password(src: &PasswordSource) -> anyhow::Result<(String, Option<String>)> {
    if let Some(hash) = &src.password_hash {
        check_password_hash(hash)?;
        return Ok((hash.clone(), None));
    }
    let plain = if src.password_stdin {
        // One line, so this works from a pipe and from a terminal (Enter, no Ctrl-D).
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        first_line(&line)
    } else if let Some(f) = &src.password_file {
        match &src.file_contents {
            Some(text) => first_line(text),
            None => first_line(
                &std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the password file {}", f.display()))?,
            ),
        }
    } else {
        let p = password::generate();
        return Ok((password::hash(&p), Some(p)));
    };
    if plain.is_empty() {
        let from = if src.password_stdin { "standard input" } else { "the password file" };
        bail!("no password on {from} (an empty first line)\nhelp: put the password on the first line, or omit the password options to get a generated one");
    }
    if plain.chars().count() < 8 {
        bail!("the password is shorter than 8 characters\nhelp: choose a longer one, or omit the password options to get a generated one");
    }
    Ok((password::hash(&plain), None))
}

/// A `--password-hash` must be in Dovecot's `{SCHEME}` form with a scheme we verify, and
/// the part after it must look like that scheme's hashes: a hash nobody can log in with is
/// better refused now than discovered at the first login.
fn check_password_hash(hash: &str) -> anyhow::Result<()> {
    let help = format!(
        "help: use Dovecot's {{SCHEME}} form with one of {}, e.g. from `doveadm pw -s SHA512-CRYPT`",
        password::SCHEMES.join(", ")
    );
    if !hash.starts_with('{') {
        // `openssl passwd -6`, `mkpasswd` and /etc/shadow give the crypt(3) string alone.
        if let Some(scheme) = crypt_scheme(hash) {
            bail!("--password-hash has no {{SCHEME}} prefix\nhelp: this looks like a {scheme} hash; pass it as '{{{scheme}}}{hash}'");
        }
    }
    if !password::is_supported(hash) {
        bail!("--password-hash is not a supported hash\n{help}");
    }
    let (scheme, rest) = hash[1..].split_once('}').expect("is_supported checked the {SCHEME} form");
    let scheme = scheme.to_ascii_uppercase();
    let fits = match scheme.as_str() {
        "ARGON2ID" => rest.starts_with("$argon2id$"),
        "ARGON2I" => rest.starts_with("$argon2i$"),
        "CRYPT" => crypt_scheme(rest).is_some(),
        other => crypt_scheme(rest) == Some(other),
    };
    if !fits {
        bail!("--password-hash says {{{scheme}}} but what follows is not a {scheme} hash\n{help}");
    }
    Ok(())
}

/// The Dovecot scheme of a bare crypt(3) string (`$6$…` → SHA512-CRYPT).
fn crypt_scheme(s: &str) -> Option<&'static str> {
    if s.starts_with("$6$") {
        Some("SHA512-CRYPT")
    } else if s.starts_with("$5$") {
        Some("SHA256-CRYPT")
    } else if ["$2y$", "$2b$", "$2a$"].iter().any(|p| s.starts_with(p)) {
        Some("BLF-CRYPT")
    } else {
        None
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// `2G`, `500M`, `1.5G`, `2GiB`, `2gb`, `1048576` (bytes): binary units. For clap.
fn parse_quota(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size like 500M, 2G or 1.5G (0 = unlimited)");
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix(['I', 'i']).unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let num = num.trim();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let too_large = || format!("{s:?} is too large for a quota");
    let bytes = if num.contains('.') {
        let n: f64 = num.parse().map_err(|_| bad())?;
        let b = (n * mult as f64).round();
        if b >= i64::MAX as f64 {
            return Err(too_large());
        }
        b as u64
    } else {
        num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(too_large)?
    };
    if bytes > i64::MAX as u64 {
        return Err(too_large());
    }
    Ok(bytes)
}

/// `512 B`, `1.5 KiB`, `2.0 GiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

async fn user_cmd(dir: &Directory, store: &Store, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { address, password, quota } => {
            let addr = Address::parse(&address)?;
            let (hash, generated) = read_password(&password)?;
            let account = dir.add_account(&addr, &hash, quota).await?;
            store.create_account(&addr).with_context(|| {
                format!(
                    "the account exists but its Maildir could not be created under {}",
                    store.root().display()
                )
            })?;
            let quota = if quota == 0 { String::new() } else { format!(" (quota {})", human_size(quota)) };
            println!("added account {}{quota}", account.address);
            if let Some(p) = generated {
                // Shown once; we only keep the hash.
                println!("password: {p}");
            }
        }
        UserCmd::List { domain, json } => {
            let accounts = dir.list_accounts(domain.as_deref()).await?;
            if json {
                print_json(&accounts)?;
            } else if accounts.is_empty() {
                eprintln!("no accounts yet (add one with `posthaste user add ADDRESS`)");
            } else {
                let width = accounts.iter().map(|a| a.address.chars().count()).max().unwrap_or(0);
                for a in accounts {
                    let quota = if a.quota == 0 { "unlimited".to_owned() } else { human_size(a.quota) };
                    let state = if a.enabled { "" } else { "  disabled" };
                    println!("{:width$}  quota {quota}{state}", a.address);
                }
            }
        }
        UserCmd::Passwd { address, password } => {
            let addr = Address::parse(&address)?;
            let (hash, generated) = read_password(&password)?;
            dir.set_password(&addr, &hash).await?;
            println!("password changed for {addr}");
            if let Some(p) = generated {
                println!("password: {p}");
            }
        }
        UserCmd::Remove { address } => {
            let addr = Address::parse(&address)?;
            dir.remove_account(&addr).await?;
            println!("removed account {addr}; its mail stays in {}", store.account_dir(&addr).display());
            // Aliases to it stay (they may be meant for a successor) and skip it meanwhile.
            let me = addr.to_string();
            let pointing: Vec<String> = dir
                .list_aliases(None)
                .await?
                .into_iter()
                .filter(|a| a.destinations.contains(&me))
                .map(|a| a.source)
                .collect();
            if !pointing.is_empty() {
                let names: Vec<&str> = pointing.iter().map(String::as_str).collect();
                let (what, verb) = if names.len() == 1 { ("alias", "points") } else { ("aliases", "point") };
                println!(
                    "note: {what} {} still {verb} to it (`posthaste alias remove SOURCE {me}` to change that)",
                    short_list(&names, 10)
                );
            }
        }
    }
    Ok(())
}

/// The normalised form of an alias source (`Info@Example.org`, `@Example.org`), for output.
fn alias_source(source: &str) -> anyhow::Result<String> {
    match source.strip_prefix('@') {
        Some(domain) => Ok(format!(
            "@{}",
            normalize_domain(domain).ok_or_else(|| DirectoryError::InvalidDomain(domain.to_owned()))?
        )),
        None => Ok(Address::parse(source)?.to_string()),
    }
}

async fn alias_cmd(dir: &Directory, cmd: AliasCmd) -> anyhow::Result<()> {
    match cmd {
        AliasCmd::Add { source, destinations } => {
            let key = alias_source(&source)?;
            let mut dests: Vec<Address> = Vec::new();
            for d in &destinations {
                let d = Address::parse(d)?;
                if d.to_string() == key {
                    bail!("alias {key} cannot point to itself");
                }
                if !dests.contains(&d) {
                    dests.push(d);
                }
            }
            // A destination the alias already has is reported, not fatal, so that adding
            // one more destination can be retried; only nothing new at all is an error.
            let mut added = Vec::new();
            let mut present = Vec::new();
            for d in dests {
                match dir.add_alias(&key, &d).await {
                    Ok(()) => added.push(d.to_string()),
                    Err(DirectoryError::Duplicate(what)) if what.starts_with("alias ") => {
                        present.push(d.to_string())
                    }
                    Err(e) => {
                        if !added.is_empty() {
                            eprintln!("note: {key} → {} was added before this error", added.join(", "));
                        }
                        return Err(e.into());
                    }
                }
            }
            if added.is_empty() {
                bail!(
                    "alias {key} → {} already exists\nhelp: `posthaste alias list` shows the aliases",
                    present.join(", ")
                );
            }
            println!("alias {key} → {}", added.join(", "));
            if !present.is_empty() {
                println!("note: {key} → {} was already there", present.join(", "));
            }
        }
        AliasCmd::List { domain, json } => {
            let aliases = dir.list_aliases(domain.as_deref()).await?;
            if json {
                print_json(&aliases)?;
            } else if aliases.is_empty() {
                eprintln!("no aliases yet (add one with `posthaste alias add SOURCE DESTINATION`)");
            } else {
                let width = aliases.iter().map(|a| a.source.chars().count()).max().unwrap_or(0);
                for a in aliases {
                    println!("{:width$}  → {}", a.source, a.destinations.join(", "));
                }
            }
        }
        AliasCmd::Remove { source, destination } => {
            let key = alias_source(&source)?;
            let dest = destination.as_deref().map(Address::parse).transpose()?;
            dir.remove_alias(&key, dest.as_ref()).await?;
            match dest {
                Some(d) => println!("removed {d} from alias {key}"),
                None => println!("removed alias {key}"),
            }
        }
    }
    Ok(())
}

fn queue_cmd(config: &Config, cmd: QueueCmd) -> anyhow::Result<()> {
    use crate::queue::admin;
    let dir = config.queue_dir();
    match cmd {
        QueueCmd::List { json } => {
            let entries = admin::list(&dir)?;
            if json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("the queue is empty");
            }
            for e in entries {
                let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
                println!(
                    "{}  {}  from {sender}  queued {}  attempts {}  next {}",
                    e.id,
                    human_size(e.size),
                    e.created,
                    e.attempts,
                    e.next_attempt
                );
                for r in e.recipients {
                    let reply = r.reply.map(|r| format!("  ({r})")).unwrap_or_default();
                    println!("    {} -> {}  {}{reply}", r.rcpt, r.target, status_name(r.status));
                }
            }
        }
        QueueCmd::Flush { id } => {
            if id.is_none() && admin::list(&dir)?.is_empty() {
                println!("the queue is empty: nothing to flush");
                return Ok(());
            }
            let n = admin::flush(&dir, id.as_deref())?;
            let what = count(n, "message", "messages");
            if signal_daemon(config) {
                println!("{what} due now; the daemon was told to retry at once");
            } else {
                println!("{what} due now, but the daemon is not running: they are retried when it starts");
                eprintln!("help: start it (`systemctl start posthaste`, or `posthaste serve`)");
            }
        }
        QueueCmd::Delete { id } => {
            admin::delete(&dir, &id)?;
            println!("deleted {id} from the queue (not delivered, no bounce sent)");
        }
    }
    Ok(())
}

/// `posthaste ban …`. Runs as root (nftables needs CAP_NET_ADMIN) and edits the ban file in
/// the data directory, which it then gives to the directory's owner (the daemon's user).
/// The running daemon notices the change by the file's mtime (see src/guard/mod.rs).
fn ban_cmd(config: &Config, cmd: BanCmd) -> anyhow::Result<()> {
    use crate::guard::bans::{now_secs, rfc3339};
    let guard = crate::guard::Guard::open(config)?;
    let fmt_left = |until: u64| human_duration(until.saturating_sub(now_secs()));
    match cmd {
        BanCmd::List { json } => {
            let bans = guard.list();
            if json {
                let out: Vec<serde_json::Value> = bans
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "client": b.client.to_string(),
                            "since": rfc3339(b.since),
                            "until": rfc3339(b.until),
                            "remaining_seconds": b.until.saturating_sub(now_secs()),
                            "reason": b.reason,
                            "offence": b.offence,
                        })
                    })
                    .collect();
                return print_json(&out);
            }
            if bans.is_empty() {
                println!("no client is banned");
            }
            for b in bans {
                println!(
                    "{}  until {} ({} left)  offence {}  {}",
                    b.client,
                    rfc3339(b.until),
                    fmt_left(b.until),
                    b.offence,
                    b.reason
                );
            }
        }
        BanCmd::Add { ip, duration, reason } => {
            let b = guard.ban(ip, duration, &reason)?;
            give_to_data_owner(config);
            let fw = if guard.nftables() { " and in nftables" } else { "" };
            println!("banned {} until {} ({}){fw}", b.client, rfc3339(b.until), fmt_left(b.until));
        }
        BanCmd::Remove { ip } => {
            let removed = guard.unban(ip, "removed by the administrator")?;
            give_to_data_owner(config);
            match removed {
                Some(_) => println!("lifted the ban of {ip}"),
                None => bail!("{ip} is not banned\nhelp: `posthaste ban list` shows the bans"),
            }
        }
    }
    Ok(())
}

/// `1h 59m`, `5m 3s`, `42s`: what is left of a ban, for people.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Files the CLI wrote as root must stay writable by the daemon after it dropped root.
fn give_to_data_owner(config: &Config) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(&config.data_dir) else { return };
    let file = crate::guard::BanFile::new(&config.data_dir);
    let lock = format!("{}.lock", file.path().display());
    for p in [file.path(), Path::new(&lock)] {
        let _ = std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid()));
    }
}

/// As in `--json` (and the log): lowercase.
fn status_name(s: RcptStatus) -> &'static str {
    match s {
        RcptStatus::Queued => "queued",
        RcptStatus::Deferred => "deferred",
        RcptStatus::Delivered => "delivered",
        RcptStatus::Failed => "failed",
    }
}

/// SIGUSR1 to the running daemon (its pid from the pidfile): retry the queue now. False if
/// there is none. A pidfile left by a crash may name a pid that now belongs to another
/// program, for which SIGUSR1 would be fatal: only a `posthaste … serve` process is signalled.
fn signal_daemon(config: &Config) -> bool {
    let Ok(text) = std::fs::read_to_string(crate::serve::pidfile_path(config)) else { return false };
    let Ok(pid) = text.trim().parse::<i32>() else { return false };
    if pid <= 0 || !is_posthaste_serve(pid) {
        return false;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).is_ok()
}

/// Is process `pid` a `posthaste … serve`? (From /proc/PID/cmdline.)
fn is_posthaste_serve(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
    let Some(argv0) = args.next() else { return false };
    let name = Path::new(argv0.as_ref()).file_name().map(|n| n.to_string_lossy().into_owned());
    name.is_some_and(|n| n.contains("posthaste")) && args.any(|a| a == "serve")
}

/// Makes the domain's missing DKIM keys (the installer's directory step calls the same
/// function). The CLI already runs as the data directory's owner (`become_data_owner`), so
/// what it creates belongs to the daemon's user.
fn dkim_keys(config: &Config, domain: &str) -> anyhow::Result<()> {
    let created = crate::mailauth::keys::ensure_domain_keys(&config.dkim_dir(), domain, None)
        .with_context(|| format!("cannot make the DKIM keys of {domain}"))?;
    if !created.is_empty() {
        eprintln!(
            "made DKIM keys for {domain} (selectors {} and {}) in {}",
            crate::mailauth::keys::ED25519_SELECTOR,
            crate::mailauth::keys::RSA_SELECTOR,
            crate::mailauth::keys::domain_dir(&config.dkim_dir(), domain).display()
        );
    }
    Ok(())
}

/// `posthaste dns [DOMAIN] [--json]`: the records for one domain, or for every domain. A
/// domain without DKIM keys (added before signing existed, or keys moved away) gets them
/// here, so the printed records can be published at once.
async fn dns_cmd(config: &Config, dir: &Directory, domain: Option<String>, json: bool) -> anyhow::Result<()> {
    let domains = match domain {
        Some(d) => vec![normalize_domain(&d).ok_or_else(|| anyhow::anyhow!("{d:?} is not a valid domain"))?],
        None => dir.list_domains().await?.into_iter().map(|d| d.name).collect(),
    };
    if domains.is_empty() {
        bail!("no domains yet\nhelp: posthaste domain add example.org");
    }
    let known: Vec<String> = dir.list_domains().await?.into_iter().map(|d| d.name).collect();
    for d in &domains {
        // Keys only for domains we serve: `dns other.org` must not leave key files behind.
        if known.contains(d) {
            dkim_keys(config, d)?;
        }
    }
    let postmaster = format!("postmaster@{}", domains[0]);
    let dkim_dir = config.dkim_dir();
    if json {
        let mut all = Vec::new();
        for d in &domains {
            all.extend(crate::install::dns::domain_records(
                &config.hostname,
                d,
                &postmaster,
                Some(&dkim_dir),
            )?);
        }
        return print_json(&all);
    }
    print!(
        "{}",
        crate::install::dns::records(
            &config.hostname,
            &domains,
            &postmaster,
            Some(&dkim_dir),
            &config.listen
        )?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas() {
        assert_eq!(parse_quota("0"), Ok(0));
        assert_eq!(parse_quota("1024"), Ok(1024));
        assert_eq!(parse_quota("500M"), Ok(500 << 20));
        assert_eq!(parse_quota("2G"), Ok(2 << 30));
        assert_eq!(parse_quota("2g"), Ok(2 << 30));
        assert_eq!(parse_quota("2GB"), Ok(2 << 30));
        assert_eq!(parse_quota("2GiB"), Ok(2 << 30));
        assert_eq!(parse_quota("1.5G"), Ok(3 << 29));
        assert_eq!(parse_quota("1T"), Ok(1 << 40));
        for bad in ["", "G", "2X", "-1G", "1.2.3G", "two", "2 G B", "99999999999999999999"] {
            assert!(parse_quota(bad).is_err(), "{bad:?}");
        }
        assert!(parse_quota("9999999T").is_err());
        assert!(parse_quota("99999999999T").is_err());
    }

    #[test]
    fn ban_durations_for_people() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(303), "5m 3s");
        assert_eq!(human_duration(7199), "1h 59m");
        assert_eq!(human_duration(3 * 86400 + 7200), "3d 2h");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(500 << 20), "500.0 MiB");
        assert_eq!(human_size(2 << 30), "2.0 GiB");
    }

    #[test]
    fn hashes() {
        let sha512 = "{SHA512-CRYPT}$6$salt$abc";
        assert!(check_password_hash(sha512).is_ok());
        assert!(check_password_hash("{sha512-crypt}$6$salt$abc").is_ok());
        assert!(check_password_hash("{CRYPT}$5$salt$abc").is_ok());
        assert!(check_password_hash("{ARGON2ID}$argon2id$v=19$m=1,t=1,p=1$a$b").is_ok());
        assert!(check_password_hash("{MD5}abc").is_err());
        assert!(check_password_hash("{SHA512-CRYPT}$5$salt$abc").is_err());
        assert!(check_password_hash("{ARGON2I}$argon2id$v=19$a$b").is_err());
        let bare = check_password_hash("$6$salt$abc").unwrap_err().to_string();
        assert!(bare.contains("'{SHA512-CRYPT}$6$salt$abc'"), "{bare}");
    }
}
