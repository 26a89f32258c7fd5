//! The command line: arguments (clap) → one of the commands below. Errors become exit code
//! 1 with a message and `help:` lines; clap's usage errors exit with 2.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::address::{normalize_domain, Address};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::directory::{password, Directory};
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
    /// Print the DNS records to publish (MX, SPF, DMARC) for one domain or all of them.
    Dns { domain: Option<String> },
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
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account. Without a password option a strong one is generated and printed once.
    Add {
        address: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Mailbox quota, e.g. 2G or 500M (0 = unlimited).
        #[arg(long, default_value = "0")]
        quota: String,
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

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
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

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // These work before there is a config (install writes it).
    match cli.command {
        Command::Install(args) => {
            let host = crate::install::host::Host::real(args.root.clone())?;
            return crate::install::install(&host, &args).map(|_| ());
        }
        Command::Uninstall(args) => {
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
            rt()?.block_on(crate::serve::run(config))
        }
        Command::Queue(cmd) => {
            init_admin_logging();
            crate::serve::become_data_owner(&config.data_dir)?;
            queue_cmd(&config, cmd)
        }
        cmd => {
            init_admin_logging();
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
            crate::serve::become_data_owner(&config.data_dir)?;
            rt()?.block_on(async move {
                let dir = Directory::open(&config.directory_url())
                    .await
                    .context("cannot open the account directory")?;
                let store = Store::new(config.mail_dir());
                match cmd {
                    Command::Domain(c) => domain_cmd(&dir, c).await,
                    Command::User(c) => user_cmd(&dir, &store, c).await,
                    Command::Alias(c) => alias_cmd(&dir, c).await,
                    Command::Dns { domain } => dns_cmd(&config, &dir, domain).await,
                    Command::Serve
                    | Command::Queue(_)
                    | Command::Install(_)
                    | Command::Uninstall(_)
                    | Command::Status => unreachable!(),
                }
            })
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn domain_cmd(dir: &Directory, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::Add { name } => {
            let d = dir.add_domain(&name).await?;
            println!("added domain {}", d.name);
        }
        DomainCmd::List { json } => {
            let domains = dir.list_domains().await?;
            if json {
                print_json(&domains)?;
            } else {
                for d in domains {
                    println!("{}", d.name);
                }
            }
        }
        DomainCmd::Remove { name, force } => {
            dir.remove_domain(&name, force).await?;
            println!("removed domain {name}");
        }
    }
    Ok(())
}

/// The password the user chose, or a generated one (printed once by the caller).
fn read_password(src: &PasswordSource) -> anyhow::Result<(String, Option<String>)> {
    if let Some(hash) = &src.password_hash {
        if !password::is_supported(hash) {
            bail!("--password-hash is not a supported hash\nhelp: use Dovecot's {{SCHEME}} form with one of {}, e.g. from `doveadm pw -s SHA512-CRYPT`", password::SCHEMES.join(", "));
        }
        return Ok((hash.clone(), None));
    }
    let plain = if src.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the password from stdin")?;
        first_line(&s)
    } else if let Some(f) = &src.password_file {
        first_line(
            &std::fs::read_to_string(f)
                .with_context(|| format!("cannot read password file {}", f.display()))?,
        )
    } else {
        let p = password::generate();
        return Ok((password::hash(&p), Some(p)));
    };
    if plain.chars().count() < 8 {
        bail!("the password is shorter than 8 characters\nhelp: choose a longer one, or omit the password options to get a generated one");
    }
    Ok((password::hash(&plain), None))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

fn parse_quota(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("quota {s:?} is not a size like 500M or 2G"))?;
    Ok(n * mult)
}

async fn user_cmd(dir: &Directory, store: &Store, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { address, password, quota } => {
            let addr = Address::parse(&address)?;
            let quota = parse_quota(&quota)?;
            let (hash, generated) = read_password(&password)?;
            let account = dir.add_account(&addr, &hash, quota).await?;
            store.create_account(&addr).with_context(|| {
                format!(
                    "the account exists but its Maildir could not be created under {}",
                    store.root().display()
                )
            })?;
            println!("added account {}", account.address);
            if let Some(p) = generated {
                // Shown once; we only keep the hash.
                println!("password: {p}");
            }
        }
        UserCmd::List { domain, json } => {
            let domain = domain
                .map(|d| normalize_domain(&d).ok_or_else(|| anyhow::anyhow!("{d:?} is not a valid domain")))
                .transpose()?;
            let accounts = dir.list_accounts(domain.as_deref()).await?;
            if json {
                print_json(&accounts)?;
            } else {
                for a in accounts {
                    let quota =
                        if a.quota == 0 { "unlimited".to_owned() } else { format!("{} bytes", a.quota) };
                    let state = if a.enabled { "" } else { " (disabled)" };
                    println!("{}\tquota {quota}{state}", a.address);
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
        }
    }
    Ok(())
}

async fn alias_cmd(dir: &Directory, cmd: AliasCmd) -> anyhow::Result<()> {
    match cmd {
        AliasCmd::Add { source, destinations } => {
            let dests = destinations.iter().map(|d| Address::parse(d)).collect::<Result<Vec<_>, _>>()?;
            for d in &dests {
                dir.add_alias(&source, d).await?;
            }
            println!("alias {source} → {}", destinations.join(", "));
        }
        AliasCmd::List { domain, json } => {
            let aliases = dir.list_aliases(domain.as_deref()).await?;
            if json {
                print_json(&aliases)?;
            } else {
                for a in aliases {
                    println!("{}\t{}", a.source, a.destinations.join(", "));
                }
            }
        }
        AliasCmd::Remove { source, destination } => {
            let dest = destination.as_deref().map(Address::parse).transpose()?;
            dir.remove_alias(&source, dest.as_ref()).await?;
            println!("removed alias {source}{}", destination.map(|d| format!(" → {d}")).unwrap_or_default());
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
                    "{}  {} bytes  from {sender}  queued {}  attempts {}  next {}",
                    e.id, e.size, e.created, e.attempts, e.next_attempt
                );
                for r in e.recipients {
                    let reply = r.reply.map(|r| format!("  ({r})")).unwrap_or_default();
                    println!("    {} -> {}  {:?}{reply}", r.rcpt, r.target, r.status);
                }
            }
        }
        QueueCmd::Flush { id } => {
            let n = admin::flush(&dir, id.as_deref())?;
            let woke = signal_daemon(config);
            println!(
                "{n} message(s) due now{}",
                if woke {
                    "; the daemon was told to retry at once"
                } else {
                    "; the daemon (not running?) retries them at its next scan"
                }
            );
        }
        QueueCmd::Delete { id } => {
            admin::delete(&dir, &id)?;
            println!("deleted {id} from the queue (not delivered, no bounce sent)");
        }
    }
    Ok(())
}

/// SIGUSR1 to the running daemon (its pid from the pidfile): retry the queue now.
fn signal_daemon(config: &Config) -> bool {
    let Ok(text) = std::fs::read_to_string(crate::serve::pidfile_path(config)) else { return false };
    let Ok(pid) = text.trim().parse::<i32>() else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).is_ok()
}

/// `posthaste dns [DOMAIN]`: the records for one domain, or for every domain.
async fn dns_cmd(config: &Config, dir: &Directory, domain: Option<String>) -> anyhow::Result<()> {
    let domains = match domain {
        Some(d) => vec![normalize_domain(&d).ok_or_else(|| anyhow::anyhow!("{d:?} is not a valid domain"))?],
        None => dir.list_domains().await?.into_iter().map(|d| d.name).collect(),
    };
    if domains.is_empty() {
        bail!("no domains yet\nhelp: posthaste domain add example.org");
    }
    let postmaster = format!("postmaster@{}", domains[0]);
    print!("{}", crate::install::dns::records(&config.hostname, &domains, &postmaster));
    Ok(())
}
