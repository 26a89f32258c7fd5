//! The command line: arguments (clap) → one of the admin areas in `src/admin/` (or the
//! installer, the smoke test, the daemon) → lines or `--json` on stdout. Errors become exit
//! code 1 with a message and `help:` lines; clap's usage errors exit with 2.
//!
//! What a command does lives in `admin::*`; this file only parses, reads what must be read
//! from the terminal or files (passwords), and words the results.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::address::Address;
use crate::admin::{self, count, short_list};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::directory::{Directory, PostmasterRoute};
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "posthaste",
    version,
    about = "A turnkey mail server: SMTP, IMAP, POP3, queue, installer and admin CLI",
    after_help = "Examples:
  posthaste install --answers answers.yaml --yes      install from an answers file
  posthaste domain add example.org                    accept mail for a domain
  posthaste user add alice@example.org                an account with a generated password
  posthaste dns example.org                           the DNS records to publish
  posthaste check                                     the smoke test

`posthaste COMMAND --help` describes each command with examples."
)]
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
    #[command(after_help = "Examples:
  posthaste serve                                     with /etc/posthaste/posthaste.toml
  posthaste --config ./posthaste.toml serve           with another config

The installer starts it as a service; run it by hand only where there is no service manager.")]
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
    #[command(after_help = "Examples:
  posthaste install                                   the wizard asks (needs a terminal)
  posthaste install --answers answers.yaml --dry-run  show the plan, change nothing
  posthaste install --answers answers.yaml --yes      apply it without asking

A rerun with the same answers changes only what differs (see docs/install.md).")]
    Install(crate::install::InstallArgs),
    /// Remove posthaste (mail, keys and accounts stay unless --purge).
    #[command(after_help = "Examples:
  posthaste uninstall --dry-run                       what would be removed
  posthaste uninstall --yes                           remove the program, keep mail and accounts
  posthaste uninstall --purge --yes                   remove mail, keys and accounts too")]
    Uninstall(crate::install::uninstall::UninstallArgs),
    /// Tell whether the daemon is running (exit 1 when it is not). Works for any user.
    #[command(after_help = "Examples:
  posthaste status
  posthaste status --json")]
    Status {
        /// Print {"running", "mode", "pid", "pidfile", "notes"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The smoke test: TLS on every listener, the MX refuses to relay, and a message
    /// submitted with AUTH is read back over IMAP and POP3. Exit 0 only if all passed.
    #[command(after_help = "Examples:
  posthaste check                                     as a temporary account, removed afterwards
  posthaste check --json                              rows with stable ids (tls.imaps, mx.relay, …)
  posthaste check --user alice@example.org --password-file alice.pass")]
    Check(CheckArgs),
    /// Print the DNS records to publish (MX, SPF, DMARC, DKIM, and SRV for the configured
    /// listeners) for one domain or all of them. Makes the DKIM keys of a domain that has
    /// none yet.
    #[command(after_help = "Examples:
  posthaste dns                                       every domain, as zone-file lines
  posthaste dns example.org                           one domain
  posthaste dns example.org --json                    objects with host and value for web forms")]
    Dns {
        /// The domain (one that `posthaste domain list` shows); all of them when omitted.
        domain: Option<String>,
        /// The records as a JSON array of {domain, name, host, ttl, type, value, strings}.
        #[arg(long)]
        json: bool,
    },
    /// Show, add and lift bans of client addresses (the guard; also in nftables).
    #[command(subcommand)]
    Ban(BanCmd),
    /// Bearer tokens for the web API (/api/v1/).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token for /api/v1/ (printed once; only its digest is kept).
    #[command(after_help = "Examples:
  posthaste token create --role admin --name backup-script
  posthaste token create --role domain-admin --domain example.org --domain example.net

Use it as: curl -H \"Authorization: Bearer TOKEN\" https://HOST/api/v1/accounts")]
    Create {
        /// What it may do: admin (everything) or domain-admin (the accounts and aliases of --domain).
        #[arg(long, value_parser = parse_role)]
        role: crate::directory::Role,
        /// A domain a domain-admin token manages (repeat for more).
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
        /// What it is for, shown by `token list`.
        #[arg(long, default_value = "")]
        name: String,
        /// Print {id, name, role, domains, created, last_used, secret} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The tokens (without their secrets).
    #[command(after_help = "Examples:
  posthaste token list
  posthaste token list --json")]
    List {
        /// Print [{id, name, role, domains, created, last_used}] as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once.
    #[command(after_help = "Examples:
  posthaste token revoke abcd2345")]
    Revoke {
        /// The token's id (from `token list`; the part after ph_ in the token).
        id: String,
    },
}

fn parse_role(s: &str) -> Result<crate::directory::Role, String> {
    crate::directory::Role::parse(s)
        .ok_or_else(|| format!("{s:?} is not a role: use admin, domain-admin or user"))
}

#[derive(Subcommand, Debug)]
pub enum TwoFaCmd {
    /// Turn on the second factor of web logins now, and print the secret, its otpauth://
    /// URI and recovery codes (once). The account password then no longer opens IMAP/POP3/SMTP:
    /// mail programs need app passwords.
    #[command(after_help = "Examples:
  posthaste user 2fa enable alice@example.org

Users can also set it up themselves at https://HOST/account/.")]
    Enable {
        /// The account's address.
        address: String,
        /// Print {address, secret, uri, recovery_codes} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn the second factor off (a user who lost the phone and the recovery codes).
    #[command(after_help = "Examples:
  posthaste user 2fa disable alice@example.org")]
    Disable {
        /// The account's address.
        address: String,
    },
    /// Whether the account has a second factor, and how many recovery codes are left.
    #[command(after_help = "Examples:
  posthaste user 2fa status alice@example.org --json")]
    Status {
        /// The account's address.
        address: String,
        /// Print {address, enabled, recovery_codes_left} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// New recovery codes (printed once; the old ones stop working).
    #[command(after_help = "Examples:
  posthaste user 2fa recovery-codes alice@example.org")]
    RecoveryCodes {
        /// The account's address.
        address: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppPasswordCmd {
    /// A new password for one mail program or device (IMAP, POP3, SMTP, ManageSieve; never
    /// the web), printed once.
    #[command(after_help = "Examples:
  posthaste user app-password add alice@example.org phone
  posthaste user app-password add alice@example.org \"Thunderbird at home\" --json")]
    Add {
        /// The account's address.
        address: String,
        /// What it is for (unique per account): the device or program.
        name: String,
        /// Print {id, address, name, created, last_used, password} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The account's app passwords (names and use, never the passwords).
    #[command(after_help = "Examples:
  posthaste user app-password list alice@example.org")]
    List {
        /// The account's address.
        address: String,
        /// Print [{id, address, name, created, last_used}] as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one: programs using it can no longer log in.
    #[command(after_help = "Examples:
  posthaste user app-password remove alice@example.org phone")]
    Remove {
        /// The account's address.
        address: String,
        /// Its name or id (from `list`).
        name: String,
    },
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Print the results as JSON ({"ok", "passed", "failed", "skipped", "checks":[{"id", "name", …}]}).
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
    #[command(after_help = "Examples:
  posthaste ban list
  posthaste ban list --json")]
    List {
        /// Print [{client, since, until, remaining_seconds, reason, offence}] as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ban a client address now (refused for addresses in [guard] allow). Needs write
    /// access to the data directory (root, or the daemon's user).
    #[command(after_help = "Examples:
  posthaste ban add 192.0.2.7
  posthaste ban add 2001:db8::7 --duration 7d --reason \"password spraying\"")]
    Add {
        /// The client's IPv4 or IPv6 address.
        ip: std::net::IpAddr,
        /// How long, e.g. 30m, 1h, 7d (default: [guard] ban_time, doubled for repeat offenders).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Why, for the log and `ban list`.
        #[arg(long, default_value = "banned by the administrator")]
        reason: String,
    },
    /// Lift the ban of a client address.
    #[command(after_help = "Examples:
  posthaste ban remove 192.0.2.7")]
    Remove {
        /// The banned client's address.
        ip: std::net::IpAddr,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match crate::config::duration_str::parse(s)? {
        d if d.is_zero() => Err("the duration must be longer than 0s".into()),
        d => Ok(d),
    }
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Accept mail for a domain (and make its DKIM keys).
    #[command(after_help = "Examples:
  posthaste domain add example.org

Its postmaster@ reaches the server's first postmaster until the domain has its own
(RFC 5321 §4.5.1). Then publish its records: posthaste dns example.org")]
    Add {
        /// The domain name, e.g. example.org.
        name: String,
    },
    /// List the domains.
    #[command(after_help = "Examples:
  posthaste domain list
  posthaste domain list --json")]
    List {
        /// Print [{name}] as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting mail for a domain. Refused while it has accounts or aliases, or
    /// aliases of other domains point into it, unless --force.
    #[command(after_help = "Examples:
  posthaste domain remove old.example
  posthaste domain remove old.example --force         with its accounts and aliases")]
    Remove {
        /// The domain name.
        name: String,
        /// Also remove its accounts and aliases, and the destinations of other domains'
        /// aliases that point into it (their mail stays on disk).
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

#[derive(Args, Debug, Clone, Copy)]
#[group(multiple = false)]
pub struct OldMailChoice {
    /// If a mailbox of an earlier account with this address is still on disk, move it to
    /// the archive (mail/.removed/) and start with an empty one.
    #[arg(long)]
    pub archive_old_mail: bool,
    /// If a mailbox of an earlier account with this address is still on disk, give it to
    /// this account (restoring a removed account).
    #[arg(long)]
    pub reuse_old_mail: bool,
}

#[derive(Args, Debug, Clone, Copy)]
#[group(multiple = false)]
pub struct RemoveMailChoice {
    /// Keep the mail: move the mailbox to mail/.removed/DOMAIN/NAME.removed-DATE (the default).
    #[arg(long)]
    pub keep_mail: bool,
    /// Delete the mailbox with the account.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account. Without a password option a strong one is generated and printed once.
    #[command(after_help = "Examples:
  posthaste user add alice@example.org                a generated password, printed once
  posthaste user add bob@example.org --password-stdin --quota 2G
  posthaste user add carol@example.org --password-hash \"$(doveadm pw -s SHA512-CRYPT)\"

Passwords need 8 characters and must not be a common one or the account's name.")]
    Add {
        /// The account's address, e.g. alice@example.org (its domain must be added first).
        address: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Mailbox quota, e.g. 2G, 500M or 1.5G (binary units; 0 = unlimited).
        #[arg(long, value_name = "SIZE", default_value = "0", value_parser = admin::user::parse_quota)]
        quota: u64,
        /// Accept a password from the list of common passwords, or the account's own name
        /// (the 8-character minimum still holds).
        #[arg(long)]
        allow_weak_password: bool,
        #[command(flatten)]
        old_mail: OldMailChoice,
    },
    /// List accounts, optionally of one domain.
    #[command(after_help = "Examples:
  posthaste user list
  posthaste user list example.org --json")]
    List {
        /// Only this domain's accounts.
        domain: Option<String>,
        /// Print [{address, quota, enabled}] as JSON (quota in bytes, 0 = unlimited).
        #[arg(long)]
        json: bool,
    },
    /// Change an account's password.
    #[command(after_help = "Examples:
  posthaste user passwd alice@example.org             a generated password, printed once
  posthaste user passwd alice@example.org --password-stdin")]
    Passwd {
        /// The account's address.
        address: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Accept a password from the list of common passwords, or the account's own name
        /// (the 8-character minimum still holds).
        #[arg(long)]
        allow_weak_password: bool,
    },
    /// Change an account's settings.
    #[command(after_help = "Examples:
  posthaste user set alice@example.org --quota 5G
  posthaste user set alice@example.org --quota 0      unlimited
  posthaste user set alice@example.org --role admin   the web admin, every domain
  posthaste user set bob@example.org --role domain-admin --domains example.org,example.net")]
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["quota", "role"])))]
    Set {
        /// The account's address.
        address: String,
        /// The new mailbox quota, e.g. 2G, 500M or 1.5G (binary units; 0 = unlimited).
        #[arg(long, value_name = "SIZE", value_parser = admin::user::parse_quota)]
        quota: Option<u64>,
        /// Its web role: admin (everything), domain-admin (the accounts and aliases of
        /// --domains) or user (self-service only).
        #[arg(long, value_parser = parse_role)]
        role: Option<crate::directory::Role>,
        /// The domains a domain-admin manages, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "role")]
        domains: Vec<String>,
    },
    /// The second factor of web logins (TOTP).
    #[command(name = "2fa", subcommand)]
    TwoFa(TwoFaCmd),
    /// Passwords for mail programs, one per device, revocable.
    #[command(subcommand)]
    AppPassword(AppPasswordCmd),
    /// Stop an account from logging in and sending; mail to it is still delivered.
    #[command(after_help = "Examples:
  posthaste user disable alice@example.org            `user enable` undoes it")]
    Disable {
        /// The account's address.
        address: String,
    },
    /// Let a disabled account log in and send again.
    #[command(after_help = "Examples:
  posthaste user enable alice@example.org")]
    Enable {
        /// The account's address.
        address: String,
    },
    /// Remove an account. Its mail is kept in an archive (mail/.removed/) unless --purge;
    /// a later account with the same address never sees it.
    #[command(after_help = "Examples:
  posthaste user remove alice@example.org             mail moved to mail/.removed/example.org/
  posthaste user remove alice@example.org --purge     mail deleted")]
    Remove {
        /// The account's address.
        address: String,
        #[command(flatten)]
        mail: RemoveMailChoice,
    },
}

#[derive(Subcommand, Debug)]
pub enum AliasCmd {
    /// Deliver mail for SOURCE (an address, or @domain for a catch-all) to DESTINATIONs.
    /// Refused when it would make a loop.
    #[command(after_help = "Examples:
  posthaste alias add info@example.org alice@example.org bob@example.org
  posthaste alias add @example.org alice@example.org  the catch-all
  posthaste alias add sales@example.org partner@elsewhere.example    forwarded")]
    Add {
        /// The address mail is sent to (its domain must be added), or @domain for all
        /// addresses of the domain that have no account or alias.
        source: String,
        /// Where the mail goes: local accounts or aliases, or addresses elsewhere.
        #[arg(required = true)]
        destinations: Vec<String>,
    },
    /// List aliases, optionally of one domain.
    #[command(after_help = "Examples:
  posthaste alias list
  posthaste alias list example.org --json")]
    List {
        /// Only this domain's aliases.
        domain: Option<String>,
        /// Print [{source, destinations}] as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove one destination of an alias, or the whole alias.
    #[command(after_help = "Examples:
  posthaste alias remove info@example.org bob@example.org
  posthaste alias remove info@example.org             every destination")]
    Remove {
        /// The alias's address, or @domain for the catch-all.
        source: String,
        /// The destination to remove; the whole alias when omitted.
        destination: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Show queued messages.
    #[command(after_help = "Examples:
  posthaste queue list
  posthaste queue list --json")]
    List {
        /// Print [{id, sender, recipients, size, created, attempts, next_attempt}] as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retry deferred messages now (all, or one).
    #[command(after_help = "Examples:
  posthaste queue flush
  posthaste queue flush 0123456789abcdef01234")]
    Flush {
        /// The queue id (from `queue list`); every message when omitted.
        id: Option<String>,
    },
    /// Remove a message from the queue without delivering it (no bounce is sent).
    #[command(after_help = "Examples:
  posthaste queue delete 0123456789abcdef01234")]
    Delete {
        /// The queue id (from `queue list`).
        id: String,
    },
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

/// Runs the command. Admin errors carry their advice (`admin::Error`'s `\nhelp: …`), which
/// `main` prints on a `help:` line of its own.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // These work before there is a config (install writes it; status may not be allowed
    // to read it).
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
        Command::Status { json } => return status_cmd(&cli.config, json),
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
            // As root, not as the data owner: nftables needs CAP_NET_ADMIN.
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
                    Command::User(c) => user_cmd(&dir, &store, &config.hostname, c).await,
                    Command::Token(c) => token_cmd(&dir, c).await,
                    Command::Alias(c) => alias_cmd(&dir, c).await,
                    Command::Dns { domain, json } => dns_cmd(&config, &dir, domain, json).await,
                    Command::Serve
                    | Command::Queue(_)
                    | Command::Install(_)
                    | Command::Uninstall(_)
                    | Command::Status { .. }
                    | Command::Check(_)
                    | Command::Ban(_) => unreachable!("dispatched above"),
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
            let address = Address::parse(user).map_err(admin::Error::from)?;
            Some(crate::check::Credentials { address, password })
        }
        _ => None,
    };
    // The certificate and password file may be root's; the directory and the Maildirs
    // belong to the data owner, so the rest runs as that user.
    let prepared = crate::check::prepare(config, credentials);
    crate::serve::become_data_owner(&config.data_dir)?;
    let report = rt.block_on(crate::check::run(config, prepared));
    // For the web dashboard's "last check" (best effort: the check's result is what counts).
    if let Ok(text) = serde_json::to_vec_pretty(&report) {
        let _ = crate::tls::write_atomic(&config.data_dir.join(crate::check::LAST_REPORT), &text, 0o640);
    }
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

fn status_cmd(config: &Path, json: bool) -> anyhow::Result<()> {
    let log = crate::install::steps::Layout::default().log();
    let st = admin::status::status(&admin::status::System, config, &log)?;
    if json {
        print_json(&st)?;
    } else if st.running {
        println!("{}", st.summary());
    }
    if !json {
        for note in &st.notes {
            eprintln!("note: {note}");
        }
    }
    Ok(st.require_running()?)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn address(s: &str) -> Result<Address, admin::Error> {
    Ok(Address::parse(s)?)
}

async fn domain_cmd(config: &Config, dir: &Directory, store: &Store, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::Add { name } => {
            let added = admin::domain::add(config, dir, &name).await?;
            println!("added domain {}", added.domain);
            if let Some(k) = &added.dkim {
                print_keys_made(k);
            }
            let d = &added.domain;
            match &added.postmaster {
                PostmasterRoute::Own => {}
                PostmasterRoute::Shared(to) => eprintln!(
                    "postmaster@{d} reaches {to}, the server's postmaster (RFC 5321 §4.5.1); `posthaste user add postmaster@{d}` or `posthaste alias add postmaster@{d} ADDRESS` gives it its own"
                ),
                PostmasterRoute::Missing => eprintln!(
                    "note: there is no postmaster yet, so mail to postmaster@{d} is refused; every domain must accept it (RFC 5321 §4.5.1): `posthaste user add postmaster@{d}`"
                ),
            }
            eprintln!("publish its DNS records (MX, SPF, DMARC, DKIM): posthaste dns {d}");
        }
        DomainCmd::List { json } => {
            let domains = admin::domain::list(dir).await?;
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
            let r = admin::domain::remove(dir, store, &name, force).await?;
            let mut with = Vec::new();
            if !r.accounts.is_empty() {
                with.push(count(r.accounts.len(), "account", "accounts"));
            }
            if !r.aliases.is_empty() {
                with.push(count(r.aliases.len(), "alias", "aliases"));
            }
            let with =
                if with.is_empty() { String::new() } else { format!(" with its {}", with.join(" and ")) };
            let mail = match &r.mail_dir {
                Some(m) => format!("; the mail stays in {}", m.display()),
                None => String::new(),
            };
            println!("removed domain {}{with}{mail}", r.domain);
            if !r.inbound.is_empty() {
                let links: Vec<String> =
                    r.inbound.iter().map(|l| format!("{} → {}", l.source, l.destination)).collect();
                let links: Vec<&str> = links.iter().map(String::as_str).collect();
                println!(
                    "removed from aliases of other domains (they would have forwarded to the Internet): {}",
                    short_list(&links, 10)
                );
            }
            match &r.postmaster_now {
                None | Some(PostmasterRoute::Own) => {}
                Some(PostmasterRoute::Shared(to)) => {
                    eprintln!("note: postmaster@ of the domains without their own now reaches {to}")
                }
                Some(PostmasterRoute::Missing) => eprintln!(
                    "note: there is no postmaster left, so mail to postmaster@ is refused (RFC 5321 §4.5.1 requires it): `posthaste user add postmaster@DOMAIN`"
                ),
            }
        }
    }
    Ok(())
}

fn print_keys_made(k: &admin::domain::DkimKeys) {
    eprintln!(
        "made DKIM keys for {} (selectors {}) in {}",
        k.domain,
        k.selectors.join(" and "),
        k.dir.display()
    );
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

/// The password the options name, read from where they say (checking it is the admin
/// layer's job).
fn password_input(src: &PasswordSource) -> anyhow::Result<admin::user::Password> {
    use admin::user::Password;
    if let Some(hash) = &src.password_hash {
        return Ok(Password::Hash(hash.clone()));
    }
    if src.password_stdin {
        // One line, so this works from a pipe and from a terminal (Enter, no Ctrl-D).
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        return Ok(Password::Plain { text: line, from: "standard input" });
    }
    if let Some(f) = &src.password_file {
        let text = match &src.file_contents {
            Some(text) => text.clone(),
            None => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the password file {}", f.display()))?,
        };
        return Ok(Password::Plain { text, from: "the password file" });
    }
    Ok(Password::Generate)
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

fn human_quota(quota: u64) -> String {
    if quota == 0 {
        "unlimited".to_owned()
    } else {
        human_size(quota)
    }
}

async fn twofa_cmd(dir: &Directory, issuer: &str, cmd: TwoFaCmd) -> anyhow::Result<()> {
    match cmd {
        TwoFaCmd::Enable { address: a, json } => {
            let t = admin::security::enable_2fa(dir, issuer, &address(&a)?).await?;
            if json {
                return print_json(&t);
            }
            println!("second factor on for {}", t.address);
            println!("secret: {}", t.secret);
            println!("uri: {}", t.uri);
            println!("recovery codes (each works once; shown only now):");
            for c in &t.recovery_codes {
                println!("  {c}");
            }
            eprintln!(
                "note: its mail programs now need app passwords (`posthaste user app-password add {} NAME`)",
                t.address
            );
        }
        TwoFaCmd::Disable { address: a } => {
            let addr = address(&a)?;
            if admin::security::disable_2fa(dir, &addr).await? {
                println!("second factor off for {addr}: the password alone logs in again");
            } else {
                println!("{addr} had no second factor");
            }
        }
        TwoFaCmd::Status { address: a, json } => {
            let s = admin::security::status_2fa(dir, &address(&a)?).await?;
            if json {
                return print_json(&s);
            }
            if s.enabled {
                println!("{}: second factor on, {} recovery codes left", s.address, s.recovery_codes_left);
            } else {
                println!("{}: no second factor", s.address);
            }
        }
        TwoFaCmd::RecoveryCodes { address: a } => {
            let codes = admin::security::new_recovery_codes(dir, &address(&a)?).await?;
            println!("new recovery codes (the old ones no longer work):");
            for c in codes {
                println!("  {c}");
            }
        }
    }
    Ok(())
}

async fn app_password_cmd(dir: &Directory, cmd: AppPasswordCmd) -> anyhow::Result<()> {
    match cmd {
        AppPasswordCmd::Add { address: a, name, json } => {
            let n = admin::security::add_app_password(dir, &address(&a)?, &name).await?;
            if json {
                return print_json(&n);
            }
            println!("app password {:?} for {}: {}", n.app_password.name, n.app_password.address, n.password);
            eprintln!("note: shown only now; it works for IMAP, POP3, SMTP and ManageSieve, not the web");
        }
        AppPasswordCmd::List { address: a, json } => {
            let list = admin::security::list_app_passwords(dir, &address(&a)?).await?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("no app passwords (add one with `posthaste user app-password add {a} NAME`)");
            }
            let date = |t: i64| {
                if t == 0 {
                    "never".to_owned()
                } else {
                    chrono::DateTime::from_timestamp(t, 0)
                        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default()
                }
            };
            for p in list {
                println!(
                    "{}  {}  created {}  last used {}",
                    p.id,
                    p.name,
                    date(p.created),
                    date(p.last_used)
                );
            }
        }
        AppPasswordCmd::Remove { address: a, name } => {
            let p = admin::security::remove_app_password(dir, &address(&a)?, &name).await?;
            println!("revoked the app password {:?} of {}", p.name, p.address);
        }
    }
    Ok(())
}

async fn token_cmd(dir: &Directory, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { role, domains, name, json } => {
            let c = admin::token::create(dir, role, &domains, &name).await?;
            if json {
                return print_json(&c);
            }
            let scope = if c.token.domains.is_empty() {
                String::new()
            } else {
                format!(" of {}", c.token.domains.join(", "))
            };
            println!("token {} ({}{scope}): {}", c.token.id, c.token.role.as_str(), c.secret);
            eprintln!("note: shown only now; send it as `Authorization: Bearer TOKEN` to /api/v1/");
        }
        TokenCmd::List { json } => {
            let list = admin::token::list(dir).await?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("no tokens (make one with `posthaste token create --role admin`)");
            }
            for t in list {
                let scope = if t.domains.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", t.domains.join(", "))
                };
                println!("{}  {}{scope}  {}", t.id, t.role.as_str(), t.name);
            }
        }
        TokenCmd::Revoke { id } => {
            let t = admin::token::revoke(dir, &id).await?;
            println!("revoked token {}", t.id);
        }
    }
    Ok(())
}

async fn user_cmd(dir: &Directory, store: &Store, issuer: &str, cmd: UserCmd) -> anyhow::Result<()> {
    use admin::user::{MailOutcome, OldMail, OldMailOutcome, RemoveMail};
    match cmd {
        UserCmd::Add { address: a, password, quota, allow_weak_password, old_mail } => {
            let addr = address(&a)?;
            let input = password_input(&password)?;
            let choice = match (old_mail.archive_old_mail, old_mail.reuse_old_mail) {
                (true, _) => OldMail::Archive,
                (_, true) => OldMail::Reuse,
                _ => OldMail::Refuse,
            };
            let added =
                admin::user::add(dir, store, &addr, &input, quota, choice, allow_weak_password).await?;
            match &added.old_mail {
                None => {}
                Some(OldMailOutcome::Archived { path, messages }) => eprintln!(
                    "note: the mailbox an earlier {addr} left ({}) was moved to {}",
                    count(*messages as usize, "message", "messages"),
                    path.display()
                ),
                Some(OldMailOutcome::Reused { path, messages }) => eprintln!(
                    "note: {addr} has the mailbox an earlier account left in {} ({})",
                    path.display(),
                    count(*messages as usize, "message", "messages")
                ),
            }
            let quota = if quota == 0 { String::new() } else { format!(" (quota {})", human_size(quota)) };
            println!("added account {}{quota}", added.account.address);
            if let Some(p) = added.password {
                // Shown once; we only keep the hash.
                println!("password: {p}");
            }
        }
        UserCmd::List { domain, json } => {
            let accounts = admin::user::list(dir, domain.as_deref()).await?;
            if json {
                print_json(&accounts)?;
            } else if accounts.is_empty() {
                eprintln!("no accounts yet (add one with `posthaste user add ADDRESS`)");
            } else {
                let width = accounts.iter().map(|a| a.address.chars().count()).max().unwrap_or(0);
                for a in accounts {
                    let state = if a.enabled { "" } else { "  disabled" };
                    println!("{:width$}  quota {}{state}", a.address, human_quota(a.quota));
                }
            }
        }
        UserCmd::Passwd { address: a, password, allow_weak_password } => {
            let addr = address(&a)?;
            let input = password_input(&password)?;
            let generated = admin::user::passwd(dir, &addr, &input, allow_weak_password).await?;
            println!("password changed for {addr}");
            if let Some(p) = generated {
                println!("password: {p}");
            }
        }
        UserCmd::Set { address: a, quota, role, domains } => {
            let addr = address(&a)?;
            if let Some(role) = role {
                let c = admin::security::set_role(dir, &addr, role, &domains).await?;
                let with = |w: &crate::directory::WebAccess| match w.role {
                    crate::directory::Role::DomainAdmin => {
                        format!("domain-admin of {}", w.domains.join(", "))
                    }
                    r => r.as_str().to_owned(),
                };
                println!("web role of {} is now {} (was {})", c.address, with(&c.after), with(&c.before));
            }
            if let Some(q) = quota {
                let c = admin::user::set_quota(dir, &addr, q).await?;
                println!(
                    "quota of {} is now {} (was {})",
                    c.address,
                    human_quota(c.after),
                    human_quota(c.before)
                );
            }
        }
        UserCmd::Disable { address: a } => {
            let c = admin::user::set_enabled(dir, &address(&a)?, false).await?;
            if c.before {
                println!(
                    "disabled {0}: it can no longer log in or send; mail to it is still delivered (`posthaste user enable {0}` undoes this)",
                    c.address
                );
            } else {
                println!("{} was already disabled", c.address);
            }
        }
        UserCmd::Enable { address: a } => {
            let c = admin::user::set_enabled(dir, &address(&a)?, true).await?;
            if c.before {
                println!("{} was already enabled", c.address);
            } else {
                println!("enabled {}: it can log in and send again", c.address);
            }
        }
        UserCmd::TwoFa(c) => twofa_cmd(dir, issuer, c).await?,
        UserCmd::AppPassword(c) => app_password_cmd(dir, c).await?,
        UserCmd::Remove { address: a, mail } => {
            let addr = address(&a)?;
            let choice = if mail.purge { RemoveMail::Purge } else { RemoveMail::Keep };
            let r = admin::user::remove(dir, store, &addr, choice).await?;
            match &r.mail {
                MailOutcome::Archived { path, messages } => println!(
                    "removed account {}; its mail ({}) was moved to {}",
                    r.address,
                    count(*messages as usize, "message", "messages"),
                    path.display()
                ),
                MailOutcome::Purged { messages } => println!(
                    "removed account {} and deleted its mail ({})",
                    r.address,
                    count(*messages as usize, "message", "messages")
                ),
                MailOutcome::None => println!("removed account {} (it had no mailbox)", r.address),
            }
            if !r.aliases.is_empty() {
                let names: Vec<&str> = r.aliases.iter().map(String::as_str).collect();
                let (what, verb) = if names.len() == 1 { ("alias", "points") } else { ("aliases", "point") };
                println!(
                    "note: {what} {} still {verb} to it (`posthaste alias remove SOURCE {}` to change that)",
                    short_list(&names, 10),
                    r.address
                );
            }
        }
    }
    Ok(())
}

async fn alias_cmd(dir: &Directory, cmd: AliasCmd) -> anyhow::Result<()> {
    match cmd {
        AliasCmd::Add { source, destinations } => {
            let a = admin::alias::add(dir, &source, &destinations).await?;
            println!("alias {} → {}", a.source, a.added.join(", "));
            if !a.present.is_empty() {
                println!("note: {} → {} was already there", a.source, a.present.join(", "));
            }
        }
        AliasCmd::List { domain, json } => {
            let aliases = admin::alias::list(dir, domain.as_deref()).await?;
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
            let r = admin::alias::remove(dir, &source, destination.as_deref()).await?;
            match r.destination {
                Some(d) => println!("removed {d} from alias {}", r.source),
                None => println!("removed alias {}", r.source),
            }
        }
    }
    Ok(())
}

fn queue_cmd(config: &Config, cmd: QueueCmd) -> anyhow::Result<()> {
    use admin::queue::{status_name, Flushed};
    match cmd {
        QueueCmd::List { json } => {
            let entries = admin::queue::list(config)?;
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
        QueueCmd::Flush { id } => match admin::queue::flush(config, id.as_deref())? {
            Flushed::Empty => println!("the queue is empty: nothing to flush"),
            Flushed::Due { count: n, daemon_told } => {
                let what = count(n, "message", "messages");
                if daemon_told {
                    println!("{what} due now; the daemon was told to retry at once");
                } else {
                    println!(
                        "{what} due now, but the daemon is not running: they are retried when it starts"
                    );
                    eprintln!("help: start it (`systemctl start posthaste`, or `posthaste serve`)");
                }
            }
        },
        QueueCmd::Delete { id } => {
            admin::queue::delete(config, &id)?;
            println!("deleted {id} from the queue (not delivered, no bounce sent)");
        }
    }
    Ok(())
}

fn ban_cmd(config: &Config, cmd: BanCmd) -> anyhow::Result<()> {
    match cmd {
        BanCmd::List { json } => {
            let bans = admin::ban::list(config)?;
            if json {
                return print_json(&bans);
            }
            if bans.is_empty() {
                println!("no client is banned");
            }
            for b in bans {
                println!(
                    "{}  until {} ({} left)  offence {}  {}",
                    b.client,
                    b.until,
                    human_duration(b.remaining_seconds),
                    b.offence,
                    b.reason
                );
            }
        }
        BanCmd::Add { ip, duration, reason } => {
            let b = admin::ban::add(config, ip, duration, &reason)?;
            let fw = if b.nftables { " and in nftables" } else { "" };
            println!(
                "banned {} until {} ({}){fw}",
                b.ban.client,
                b.ban.until,
                human_duration(b.ban.remaining_seconds)
            );
        }
        BanCmd::Remove { ip } => {
            admin::ban::remove(config, ip)?;
            println!("lifted the ban of {ip}");
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

/// `posthaste dns [DOMAIN] [--json]`.
async fn dns_cmd(config: &Config, dir: &Directory, domain: Option<String>, json: bool) -> anyhow::Result<()> {
    let zone = admin::dns::zone(config, dir, domain.as_deref()).await?;
    for k in &zone.keys_made {
        print_keys_made(k);
    }
    if json {
        return print_json(&zone.records()?);
    }
    print!("{}", zone.text()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `--help` of every command: each argument and flag described, and examples.
    #[test]
    fn help_describes_every_flag_and_shows_examples() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    problems.push(format!("{path}: {id} has no description"));
                }
            }
            let subs: Vec<&clap::Command> =
                cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
            if subs.is_empty() {
                let examples = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                if !examples.contains("Examples:\n  posthaste ") {
                    problems.push(format!("{path}: no examples"));
                }
            }
            for sub in subs {
                walk(sub, &path, problems);
            }
        }
        let mut problems = Vec::new();
        walk(&Cli::command(), "", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
