//! The account directory: domains, accounts, aliases.
//!
//! One code path for SQLite (the default, a file in the data dir) and PostgreSQL, through
//! sqlx's `Any` driver. That constrains the SQL we write:
//! - placeholders are `$1`, `$2`…: PostgreSQL's syntax, which sqlx's SQLite driver maps to
//!   parameter indexes as well (SQLite sees them as named parameters `$1`);
//! - column types are `TEXT` and `BIGINT` only, because `Any` decodes just a few types and
//!   both engines agree on those; booleans are stored as 0/1;
//! - `INSERT … ON CONFLICT … DO NOTHING` is the one upsert syntax both engines accept
//!   (SQLite ≥ 3.24), and it lets a duplicate show up as "0 rows affected" instead of an
//!   engine-specific error code.
//!
//! Concurrency: the daemon and the admin CLI open the same database at the same time. Every
//! change that depends on a check ("the domain exists", "no account has this alias's
//! address") runs in a transaction that first bumps the domain's `serial` column. That write
//! takes the domain's row lock in PostgreSQL and the database write lock in SQLite, so two
//! writers on one domain are serialised and the check stays true until commit; it also tells
//! us in the same statement whether the domain exists.

pub mod password;
pub mod secret;
pub mod totp;
mod web;

pub use web::{ApiToken, AppPassword, AuditEntry, Role, TotpState, WebAccess};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, Row, Transaction};

use crate::address::{normalize_domain, Address, AddressError};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    InvalidAddress(#[from] AddressError),
    #[error("{0:?} is not a valid domain name (help: use a name like example.org)")]
    InvalidDomain(String),
    #[error("domain {0} is not configured here (help: `posthaste domain add {0}` first)")]
    UnknownDomain(String),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{}", not_empty_message(domain, *accounts, *aliases, *inbound))]
    DomainNotEmpty {
        domain: String,
        accounts: u64,
        aliases: u64,
        /// Alias destinations of other domains that point into this one (always 0 from
        /// [`Directory::remove_domain`], which leaves them alone).
        inbound: u64,
    },
    #[error("directory database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, DirectoryError>;

fn not_empty_message(domain: &str, accounts: u64, aliases: u64, inbound: u64) -> String {
    let pointing = if inbound == 0 {
        String::new()
    } else {
        format!(", and {inbound} alias destination(s) elsewhere point into it")
    };
    format!(
        "domain {domain} still has {accounts} account(s) and {aliases} alias(es){pointing} (help: remove them first, or pass --force to remove them with the domain; their mail stays on disk)"
    )
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Account {
    pub address: String,
    /// Bytes; 0 = no limit.
    pub quota: u64,
    /// A disabled account cannot log in or send; mail to it is still delivered, so nothing
    /// is lost while an account is suspended.
    pub enabled: bool,
    #[serde(skip)]
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Alias {
    /// `info@example.org`, or `@example.org` for a catch-all.
    pub source: String,
    pub destinations: Vec<String>,
}

/// Where mail for one recipient address ends up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "address", rename_all = "lowercase")]
pub enum Target {
    /// The mailbox of this local account.
    Local(Address),
    /// Forward to an address on another system.
    Remote(Address),
}

/// Alias chains longer than this are cut (and logged): a legitimate setup needs two or three
/// hops, and the limit bounds the work one RCPT TO can cause.
pub const MAX_ALIAS_DEPTH: usize = 10;

/// The schema version this build creates and understands; see [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[n]` brings the schema from version n to n+1. Statements are idempotent
/// (`IF NOT EXISTS`) so a half-applied upgrade from a crashed engine without transactional
/// DDL could be re-run; both engines we support do run DDL inside the transaction.
const MIGRATIONS: &[&[&str]] = &[
    &[
        // `serial` is bumped by every change to the domain's accounts or aliases: see the module
        // comment (it is our lock), and a cache can compare it to know when to reload.
        "CREATE TABLE IF NOT EXISTS domains (
        name TEXT PRIMARY KEY,
        serial BIGINT NOT NULL DEFAULT 0
    )",
        "CREATE TABLE IF NOT EXISTS accounts (
        address TEXT PRIMARY KEY,
        domain TEXT NOT NULL REFERENCES domains (name),
        password_hash TEXT NOT NULL,
        quota BIGINT NOT NULL DEFAULT 0,
        enabled BIGINT NOT NULL DEFAULT 1
    )",
        "CREATE INDEX IF NOT EXISTS accounts_by_domain ON accounts (domain)",
        // One row per (source, destination). `domain` is the source's domain, kept as a column
        // so removing a domain and counting its aliases need no string matching.
        "CREATE TABLE IF NOT EXISTS aliases (
        source TEXT NOT NULL,
        domain TEXT NOT NULL REFERENCES domains (name),
        destination TEXT NOT NULL,
        PRIMARY KEY (source, destination)
    )",
        "CREATE INDEX IF NOT EXISTS aliases_by_domain ON aliases (domain)",
    ],
    web::MIGRATION,
];

/// How many password verifications may run at once, process-wide. Each Argon2 verification
/// holds 32 MiB and a core for ~0.1 s; without a bound, a login flood would fill tokio's
/// blocking pool (512 threads → 16 GiB) instead of queueing. One per core keeps the cores
/// busy and the memory at cores × 32 MiB.
static HASH_SLOTS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cores)
});

#[derive(Clone)]
pub struct Directory {
    pool: sqlx::AnyPool,
}

/// What the database URL says about SQLite storage.
#[derive(Debug, PartialEq, Eq)]
enum SqliteTarget {
    /// Not a SQLite URL.
    None,
    /// `sqlite::memory:`: every connection would get its own empty database.
    Memory,
    File(std::path::PathBuf),
}

/// The SQLite file (or memory) a URL points at, the way sqlx reads it:
/// `sqlite:///abs/path`, `sqlite://rel/path`, `sqlite:rel/path`, optional `?query`.
fn sqlite_target(url: &str) -> SqliteTarget {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return SqliteTarget::None;
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    if path.is_empty() || path == ":memory:" {
        SqliteTarget::Memory
    } else {
        SqliteTarget::File(path.into())
    }
}

/// Create the SQLite file ourselves so it is mode 0600 from the first byte: it holds password
/// hashes. (sqlx would create it with the umask's mode, typically 0644.) SQLite gives its
/// journal files the database file's mode. An existing file keeps the mode the admin chose.
fn create_private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(|e| {
        DirectoryError::Other(format!(
            "cannot open the directory database {}: {e} (help: check that the directory exists and is writable by this user)",
            path.display()
        ))
    })?;
    Ok(())
}

fn db_bool(v: i64) -> bool {
    v != 0
}

fn quota_to_db(quota: u64) -> Result<i64> {
    i64::try_from(quota).map_err(|_| {
        DirectoryError::Other(format!("quota {quota} is too large (at most {} bytes)", i64::MAX))
    })
}

fn account_from_row(row: &AnyRow) -> Result<Account> {
    let quota: i64 = row.try_get("quota")?;
    Ok(Account {
        address: row.try_get("address")?,
        // A negative quota can only come from a hand-edited row; treat it as no limit.
        quota: u64::try_from(quota).unwrap_or(0),
        enabled: db_bool(row.try_get("enabled")?),
        password_hash: row.try_get("password_hash")?,
    })
}

fn check_hash(password_hash: &str) -> Result<()> {
    if password::check_hash(password_hash).is_ok() {
        Ok(())
    } else {
        Err(DirectoryError::Other(format!(
            "the password hash must be in Dovecot's {{SCHEME}} form with one of the schemes {} (help: make one with `doveadm pw -s ARGON2ID`, or give a plain password)",
            password::SCHEMES.join(", ")
        )))
    }
}

/// The local part names the Maildir (`mail/DOMAIN/LOCAL`). `/` is valid in an address
/// (RFC 5322 atext) but would put the mailbox inside another one: `bob/.Sent@…` would read
/// bob's Sent folder as its INBOX.
fn check_account_name(address: &Address) -> Result<()> {
    if address.local().contains('/') {
        return Err(DirectoryError::InvalidAddress(AddressError {
            input: address.to_string(),
            reason: "an account's name cannot contain / (it is the name of its mailbox directory)",
        }));
    }
    Ok(())
}

fn normalize_domain_arg(name: &str) -> Result<String> {
    normalize_domain(name).ok_or_else(|| DirectoryError::InvalidDomain(name.to_owned()))
}

/// An alias source: `local@domain`, or `@domain` for the domain's catch-all.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AliasSource {
    /// The normalised form stored in `aliases.source`.
    key: String,
    domain: String,
}

fn parse_alias_source(source: &str) -> Result<AliasSource> {
    if let Some(domain) = source.strip_prefix('@') {
        let domain = normalize_domain_arg(domain)?;
        Ok(AliasSource { key: format!("@{domain}"), domain })
    } else {
        let address = Address::parse(source)?;
        Ok(AliasSource { key: address.to_string(), domain: address.domain().to_owned() })
    }
}

/// One step of resolving an address.
enum Found {
    /// The domain is not ours.
    Remote,
    Account(Address),
    /// An alias (maybe the catch-all) with its key and destinations.
    Alias(String, Vec<Address>),
    /// `postmaster@` of a domain that has no postmaster of its own: the server's first
    /// postmaster (see [`Directory::first_postmaster`]), under the key `postmaster@DOMAIN`.
    Postmaster(String, Address),
    Nobody,
}

/// The local part RFC 5321 §4.5.1 requires every domain to accept.
pub const POSTMASTER: &str = "postmaster";

/// Where mail to `postmaster@DOMAIN` goes (RFC 5321 §4.5.1: every domain must accept it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "address", rename_all = "lowercase")]
pub enum PostmasterRoute {
    /// The domain's own: an account, an alias or the domain's catch-all.
    Own,
    /// No postmaster of its own: mail goes to the server's first postmaster.
    Shared(Address),
    /// No postmaster anywhere yet: mail to it is refused until there is one.
    Missing,
}

/// An alias that would be added, for a loop check before it exists (see
/// [`Directory::alias_cycle`]): `(source key, destination)`.
type Overlay<'a> = Option<(&'a str, &'a Address)>;

/// What [`Directory::remove_domain_and_references`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRemoval {
    Removed(RemovedDomain),
    /// Not empty and not forced: nothing was changed; this is what is in the way.
    Refused(RemovedDomain),
}

/// What [`Directory::remove_domain_and_references`] removed (or would have to remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemovedDomain {
    pub name: String,
    /// The domain's accounts (their Maildirs are not touched).
    pub accounts: Vec<String>,
    /// The sources of the domain's aliases.
    pub aliases: Vec<String>,
    /// `(source, destination)` of other domains' aliases that pointed into the domain.
    pub inbound: Vec<(String, String)>,
}

impl Directory {
    /// Connect (creating the SQLite file with mode 0600 if needed) and create/upgrade the schema.
    pub async fn open(url: &str) -> Result<Directory> {
        sqlx::any::install_default_drivers();
        let mut options = AnyPoolOptions::new();
        match sqlite_target(url) {
            SqliteTarget::File(path) => create_private_file(&path)?,
            // Each new connection to `:memory:` would see a fresh, empty database, so keep
            // exactly one connection alive for the pool's lifetime. Only tests use this.
            SqliteTarget::Memory => {
                options = options.min_connections(1).max_connections(1).idle_timeout(None).max_lifetime(None)
            }
            SqliteTarget::None => {}
        }
        let pool = options.connect(url).await?;
        let directory = Directory { pool };
        directory.migrate().await?;
        Ok(directory)
    }

    /// Create or upgrade the schema. Two processes may open the database at the same moment
    /// (the daemon starting while the installer adds the first domain): the loser of the race
    /// either waits on the version row's lock, or — in PostgreSQL, when both create the first
    /// table at once — gets a unique-violation error, rolls back and retries, and then finds
    /// the schema current.
    async fn migrate(&self) -> Result<()> {
        let mut attempt = 0u64;
        loop {
            match self.try_migrate().await {
                Ok(()) => return Ok(()),
                Err(DirectoryError::Db(e)) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "directory schema setup raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_version (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
            .execute(&mut *tx)
            .await?;
        // A write to the one row before reading it: a concurrent migrator waits here until we
        // commit, and then reads the version we wrote instead of applying the same steps.
        sqlx::query("UPDATE schema_version SET version = version WHERE id = 1").execute(&mut *tx).await?;
        let current: i64 =
            sqlx::query_scalar("SELECT version FROM schema_version WHERE id = 1").fetch_one(&mut *tx).await?;
        if current > SCHEMA_VERSION {
            return Err(DirectoryError::Other(format!(
                "the directory database has schema version {current}, newer than this posthaste understands ({SCHEMA_VERSION}) (help: run the newer posthaste binary, or restore a backup)"
            )));
        }
        for (from, statements) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            tracing::info!(from, to = from + 1, "upgrading the directory schema");
            for statement in *statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
        }
        sqlx::query("UPDATE schema_version SET version = $1 WHERE id = 1")
            .bind(SCHEMA_VERSION)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The schema version of the open database (for `posthaste status` and tests).
    pub async fn schema_version(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT version FROM schema_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Take the domain's lock for the rest of `tx` (see the module comment); false if the
    /// domain does not exist.
    async fn lock_domain(tx: &mut Transaction<'_, Any>, domain: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE domains SET serial = serial + 1 WHERE name = $1")
            .bind(domain)
            .execute(&mut **tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn add_domain(&self, name: &str) -> Result<Domain> {
        let name = normalize_domain_arg(name)?;
        let done =
            sqlx::query("INSERT INTO domains (name, serial) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
                .bind(&name)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::Duplicate(format!("domain {name}")));
        }
        Ok(Domain { name })
    }

    pub async fn list_domains(&self) -> Result<Vec<Domain>> {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM domains ORDER BY name").fetch_all(&self.pool).await?;
        Ok(names.into_iter().map(|name| Domain { name }).collect())
    }

    /// Refused with `DomainNotEmpty` unless `force`, which removes its accounts and aliases too.
    /// Aliases of other domains that point into it are left as they are; the admin command
    /// uses [`Directory::remove_domain_and_references`], which takes them along.
    pub async fn remove_domain(&self, name: &str, force: bool) -> Result<()> {
        match self.remove_domain_inner(name, force, false).await? {
            DomainRemoval::Removed(_) => Ok(()),
            DomainRemoval::Refused(what) => Err(DirectoryError::DomainNotEmpty {
                domain: what.name,
                accounts: what.accounts.len() as u64,
                aliases: what.aliases.len() as u64,
                inbound: 0,
            }),
        }
    }

    /// [`Directory::remove_domain`], and also the destinations of other domains' aliases
    /// that point into the domain: once it is gone those addresses are no longer local, and
    /// mail to the alias would be forwarded to the Internet instead (an alias left without
    /// any destination goes too). Without `force`, such references refuse the removal like
    /// accounts do, and the refusal names everything that is in the way. One transaction:
    /// all of it, or nothing.
    pub async fn remove_domain_and_references(&self, name: &str, force: bool) -> Result<DomainRemoval> {
        self.remove_domain_inner(name, force, true).await
    }

    async fn remove_domain_inner(&self, name: &str, force: bool, references: bool) -> Result<DomainRemoval> {
        let name = normalize_domain_arg(name)?;
        let mut tx = self.pool.begin().await?;
        if !Self::lock_domain(&mut tx, &name).await? {
            return Err(DirectoryError::NotFound(format!("domain {name}")));
        }
        let accounts: Vec<String> =
            sqlx::query_scalar("SELECT address FROM accounts WHERE domain = $1 ORDER BY address")
                .bind(&name)
                .fetch_all(&mut *tx)
                .await?;
        let aliases: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT source FROM aliases WHERE domain = $1 ORDER BY source")
                .bind(&name)
                .fetch_all(&mut *tx)
                .await?;
        let mut inbound = Vec::new();
        if references {
            let suffix = format!("@{name}");
            let rows = sqlx::query(
                "SELECT source, destination FROM aliases WHERE domain <> $1 ORDER BY source, destination",
            )
            .bind(&name)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let (source, destination): (String, String) =
                    (row.try_get("source")?, row.try_get("destination")?);
                if destination.ends_with(&suffix) {
                    inbound.push((source, destination));
                }
            }
        }
        let what = RemovedDomain { name, accounts, aliases, inbound };
        if (!what.accounts.is_empty() || !what.aliases.is_empty() || !what.inbound.is_empty()) && !force {
            return Ok(DomainRemoval::Refused(what));
        }
        let (name, inbound) = (&what.name, &what.inbound);
        // The other domains whose aliases change get their serial bumped like any change.
        let mut touched: Vec<String> =
            inbound.iter().filter_map(|(s, _)| parse_alias_source(s).ok()).map(|s| s.domain).collect();
        touched.sort();
        touched.dedup();
        for domain in &touched {
            Self::lock_domain(&mut tx, domain).await?;
        }
        for (source, destination) in inbound {
            sqlx::query("DELETE FROM aliases WHERE source = $1 AND destination = $2")
                .bind(source)
                .bind(destination)
                .execute(&mut *tx)
                .await?;
        }
        for account in &what.accounts {
            web::forget_account(&mut tx, account).await?;
        }
        web::forget_domain(&mut tx, name).await?;
        // Children first: the foreign keys (enforced in both engines) would refuse otherwise.
        for statement in [
            "DELETE FROM aliases WHERE domain = $1",
            "DELETE FROM accounts WHERE domain = $1",
            "DELETE FROM domains WHERE name = $1",
        ] {
            sqlx::query(statement).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(DomainRemoval::Removed(what))
    }

    /// Is mail for `domain` ours to deliver? False for names that are not valid domains.
    pub async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        let Some(domain) = normalize_domain(domain) else {
            return Ok(false);
        };
        let found = sqlx::query("SELECT name FROM domains WHERE name = $1")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Would [`Directory::add_account`] accept `address`? The same checks without a write, so a
    /// caller can prepare (e.g. move an old mailbox aside) only for an account that will be
    /// created. `add_account` checks again inside its transaction.
    pub async fn check_new_account(&self, address: &Address) -> Result<()> {
        check_account_name(address)?;
        if !self.is_local_domain(address.domain()).await? {
            return Err(DirectoryError::UnknownDomain(address.domain().to_owned()));
        }
        let key = address.to_string();
        if self.alias_destinations(&key).await?.is_some() {
            return Err(DirectoryError::Duplicate(format!("alias {key}")));
        }
        if self.account_exists(address).await? {
            return Err(DirectoryError::Duplicate(format!("account {key}")));
        }
        Ok(())
    }

    /// `password_hash` is already in `{SCHEME}` form (see [`password::hash`]).
    pub async fn add_account(&self, address: &Address, password_hash: &str, quota: u64) -> Result<Account> {
        check_account_name(address)?;
        check_hash(password_hash)?;
        let db_quota = quota_to_db(quota)?;
        let key = address.to_string();
        let mut tx = self.pool.begin().await?;
        if !Self::lock_domain(&mut tx, address.domain()).await? {
            return Err(DirectoryError::UnknownDomain(address.domain().to_owned()));
        }
        // An address is an account or an alias, never both, so resolution is unambiguous.
        if self.alias_destinations_in(&mut tx, &key).await?.is_some() {
            return Err(DirectoryError::Duplicate(format!("alias {key}")));
        }
        let done = sqlx::query(
            "INSERT INTO accounts (address, domain, password_hash, quota, enabled) VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(&key)
        .bind(address.domain())
        .bind(password_hash)
        .bind(db_quota)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::Duplicate(format!("account {key}")));
        }
        tx.commit().await?;
        Ok(Account { address: key, quota, enabled: true, password_hash: password_hash.to_owned() })
    }

    pub async fn get_account(&self, address: &Address) -> Result<Option<Account>> {
        let row =
            sqlx::query("SELECT address, password_hash, quota, enabled FROM accounts WHERE address = $1")
                .bind(address.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// All accounts, or those of one domain (which must exist), ordered by address.
    pub async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<Account>> {
        let rows = match domain {
            Some(domain) => {
                let domain = self.existing_domain(domain).await?;
                sqlx::query(
                    "SELECT address, password_hash, quota, enabled FROM accounts WHERE domain = $1 ORDER BY address",
                )
                .bind(domain)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT address, password_hash, quota, enabled FROM accounts ORDER BY address")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(account_from_row).collect()
    }

    /// The normalised name of a configured domain, or the error the CLI should show.
    async fn existing_domain(&self, domain: &str) -> Result<String> {
        let name = normalize_domain_arg(domain)?;
        if self.is_local_domain(&name).await? {
            Ok(name)
        } else {
            Err(DirectoryError::UnknownDomain(name))
        }
    }

    pub async fn set_password(&self, address: &Address, password_hash: &str) -> Result<()> {
        check_hash(password_hash)?;
        self.update_account(
            address,
            "UPDATE accounts SET password_hash = $1 WHERE address = $2",
            password_hash,
        )
        .await
    }

    /// Change the quota in bytes (0 = no limit).
    pub async fn set_quota(&self, address: &Address, quota: u64) -> Result<()> {
        self.update_account(address, "UPDATE accounts SET quota = $1 WHERE address = $2", quota_to_db(quota)?)
            .await
    }

    /// Enable or disable login (and sending) for the account; delivery to it continues.
    pub async fn set_enabled(&self, address: &Address, enabled: bool) -> Result<()> {
        self.update_account(
            address,
            "UPDATE accounts SET enabled = $1 WHERE address = $2",
            i64::from(enabled),
        )
        .await
    }

    async fn update_account<'q, T>(&self, address: &Address, sql: &'q str, value: T) -> Result<()>
    where
        T: 'q + sqlx::Encode<'q, Any> + sqlx::Type<Any> + Send,
    {
        let done = sqlx::query(sql).bind(value).bind(address.to_string()).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound(format!("account {address}")));
        }
        Ok(())
    }

    /// Remove the account. Aliases that point to it stay (they may be meant for a successor);
    /// until then `resolve` skips the dangling destination.
    pub async fn remove_account(&self, address: &Address) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM accounts WHERE address = $1")
            .bind(address.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound(format!("account {address}")));
        }
        // Its app passwords, recovery codes and domain-admin rights go with it: a later
        // account of the same address must not inherit them.
        web::forget_account(&mut tx, &address.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `source` is `local@domain` or `@domain` (catch-all); the domain must be local.
    /// The destination may be local (an account or another alias, which is expanded) or on
    /// another system (forwarded). It need not exist yet, so aliases can be set up before
    /// the accounts they point to.
    pub async fn add_alias(&self, source: &str, destination: &Address) -> Result<()> {
        let (_, present) = self.add_aliases(source, std::slice::from_ref(destination)).await?;
        match present.into_iter().next() {
            Some(d) => {
                Err(DirectoryError::Duplicate(format!("alias {} → {d}", parse_alias_source(source)?.key)))
            }
            None => Ok(()),
        }
    }

    /// [`Directory::add_alias`] for several destinations in one transaction: every one is
    /// added, or (on an error) none. Returns the destinations added and those the alias
    /// already had, in the order given.
    pub async fn add_aliases(
        &self,
        source: &str,
        destinations: &[Address],
    ) -> Result<(Vec<String>, Vec<String>)> {
        let source = parse_alias_source(source)?;
        for d in destinations {
            if source.key == d.to_string() {
                return Err(DirectoryError::Other(format!("alias {d} cannot point to itself")));
            }
        }
        let mut tx = self.pool.begin().await?;
        if !Self::lock_domain(&mut tx, &source.domain).await? {
            return Err(DirectoryError::UnknownDomain(source.domain));
        }
        let account = sqlx::query("SELECT address FROM accounts WHERE address = $1")
            .bind(&source.key)
            .fetch_optional(&mut *tx)
            .await?;
        if account.is_some() {
            return Err(DirectoryError::Duplicate(format!("account {}", source.key)));
        }
        let (mut added, mut present) = (Vec::new(), Vec::new());
        for destination in destinations {
            let destination = destination.to_string();
            let done = sqlx::query(
                "INSERT INTO aliases (source, domain, destination) VALUES ($1, $2, $3)
                 ON CONFLICT (source, destination) DO NOTHING",
            )
            .bind(&source.key)
            .bind(&source.domain)
            .bind(&destination)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                present.push(destination);
            } else {
                added.push(destination);
            }
        }
        tx.commit().await?;
        Ok((added, present))
    }

    /// Would `source → destination` close a loop, i.e. does mail to `destination` come back
    /// to `source` (through aliases, plus-addressing, catch-alls or the shared postmaster)?
    /// The loop as alias keys, from `source` back to it, or None. Resolution cuts loops
    /// anyway ([`Directory::resolve`]); this lets `alias add` refuse to make one.
    pub async fn alias_cycle(&self, source: &str, destination: &Address) -> Result<Option<Vec<String>>> {
        let source = parse_alias_source(source)?;
        let overlay = Some((source.key.as_str(), destination));
        // Breadth first from the destination, each address with the path that led to it
        // (alias graphs are small, and this runs only when an alias is added).
        let mut seen = HashSet::new();
        let mut work = std::collections::VecDeque::from([(destination.clone(), vec![source.key.clone()])]);
        let mut local = HashMap::new();
        while let Some((address, mut path)) = work.pop_front() {
            path.push(address.to_string());
            let (key, next) = match self.find(&address, &mut local, overlay).await? {
                Found::Alias(key, destinations) => (key, destinations),
                Found::Postmaster(key, to) => (key, vec![to]),
                Found::Remote | Found::Account(_) | Found::Nobody => continue,
            };
            if key == source.key {
                if path.last() != Some(&key) {
                    path.push(key);
                }
                return Ok(Some(path));
            }
            if !seen.insert(key) {
                continue;
            }
            work.extend(next.into_iter().map(|d| (d, path.clone())));
        }
        Ok(None)
    }

    /// All aliases, or those of one domain (which must exist), ordered by source; the
    /// catch-all `@domain` sorts before the domain's named aliases.
    pub async fn list_aliases(&self, domain: Option<&str>) -> Result<Vec<Alias>> {
        let rows = match domain {
            Some(domain) => {
                let domain = self.existing_domain(domain).await?;
                sqlx::query(
                    "SELECT source, destination FROM aliases WHERE domain = $1 ORDER BY source, destination",
                )
                .bind(domain)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT source, destination FROM aliases ORDER BY domain, source, destination")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut aliases: Vec<Alias> = Vec::new();
        for row in rows {
            let source: String = row.try_get("source")?;
            let destination: String = row.try_get("destination")?;
            match aliases.last_mut() {
                Some(last) if last.source == source => last.destinations.push(destination),
                _ => aliases.push(Alias { source, destinations: vec![destination] }),
            }
        }
        Ok(aliases)
    }

    /// Remove one destination, or the whole alias when `destination` is None.
    pub async fn remove_alias(&self, source: &str, destination: Option<&Address>) -> Result<()> {
        let source = parse_alias_source(source)?;
        let done = match destination {
            Some(destination) => {
                sqlx::query("DELETE FROM aliases WHERE source = $1 AND destination = $2")
                    .bind(&source.key)
                    .bind(destination.to_string())
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM aliases WHERE source = $1")
                    .bind(&source.key)
                    .execute(&self.pool)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound(match destination {
                Some(d) => format!("alias {} → {d}", source.key),
                None => format!("alias {}", source.key),
            }));
        }
        Ok(())
    }

    /// The destinations of the alias `key`, or None if there is no such alias.
    async fn alias_destinations_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        key: &str,
    ) -> Result<Option<Vec<String>>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT destination FROM aliases WHERE source = $1 ORDER BY destination")
                .bind(key)
                .fetch_all(&mut **tx)
                .await?;
        Ok((!rows.is_empty()).then_some(rows))
    }

    async fn alias_destinations(&self, key: &str) -> Result<Option<Vec<Address>>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT destination FROM aliases WHERE source = $1 ORDER BY destination")
                .bind(key)
                .fetch_all(&self.pool)
                .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut destinations = Vec::with_capacity(rows.len());
        for row in rows {
            // add_alias only stores parsed addresses; a row that does not parse was edited by
            // hand, and skipping it beats refusing all mail to the alias.
            match Address::parse(&row) {
                Ok(a) => destinations.push(a),
                Err(e) => tracing::warn!(alias = key, error = %e, "skipping an invalid alias destination"),
            }
        }
        Ok(Some(destinations))
    }

    async fn account_exists(&self, address: &Address) -> Result<bool> {
        let row = sqlx::query("SELECT address FROM accounts WHERE address = $1")
            .bind(address.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The alias's destinations, with the overlay's if it is the alias being added.
    async fn alias_destinations_with(&self, key: &str, overlay: Overlay<'_>) -> Result<Option<Vec<Address>>> {
        let mut found = self.alias_destinations(key).await?;
        if let Some((_, d)) = overlay.filter(|(k, _)| *k == key) {
            found.get_or_insert_with(Vec::new).push(d.clone());
        }
        Ok(found)
    }

    /// The server's first postmaster, who gets `postmaster@` of every domain that has none
    /// of its own (RFC 5321 §4.5.1): the first `postmaster@` account (by domain name), or,
    /// when there is none, the first `postmaster@` alias. None while there is neither.
    pub async fn first_postmaster(&self) -> Result<Option<Address>> {
        self.first_postmaster_with(None).await
    }

    async fn first_postmaster_with(&self, overlay: Overlay<'_>) -> Result<Option<Address>> {
        let pattern = format!("{POSTMASTER}@%");
        let account: Option<String> =
            sqlx::query_scalar("SELECT address FROM accounts WHERE address LIKE $1 ORDER BY address LIMIT 1")
                .bind(&pattern)
                .fetch_optional(&self.pool)
                .await?;
        let found = match account {
            Some(a) => Some(a),
            None => {
                let alias: Option<String> = sqlx::query_scalar(
                    "SELECT source FROM aliases WHERE source LIKE $1 ORDER BY source LIMIT 1",
                )
                .bind(&pattern)
                .fetch_optional(&self.pool)
                .await?;
                let added =
                    overlay.map(|(k, _)| k.to_owned()).filter(|k| k.starts_with(&format!("{POSTMASTER}@")));
                [alias, added].into_iter().flatten().min()
            }
        };
        Ok(found.and_then(|a| Address::parse(&a).ok()))
    }

    /// Where `postmaster@domain` goes; the domain must exist.
    pub async fn postmaster_route(&self, domain: &str) -> Result<PostmasterRoute> {
        let domain = self.existing_domain(domain).await?;
        let address = Address::parse(&format!("{POSTMASTER}@{domain}"))?;
        Ok(match self.find(&address, &mut HashMap::new(), None).await? {
            Found::Postmaster(_, to) => PostmasterRoute::Shared(to),
            Found::Nobody => PostmasterRoute::Missing,
            Found::Remote | Found::Account(_) | Found::Alias(..) => PostmasterRoute::Own,
        })
    }

    /// One lookup in the documented order: account, alias, account without +tag, alias
    /// without +tag, catch-all, and for `postmaster@` the server's first postmaster.
    /// `overlay`: an alias that is about to be added, as if it existed.
    async fn find(
        &self,
        address: &Address,
        local: &mut HashMap<String, bool>,
        overlay: Overlay<'_>,
    ) -> Result<Found> {
        let domain = address.domain();
        let is_local = match local.get(domain) {
            Some(&known) => known,
            None => {
                let known = self.is_local_domain(domain).await?;
                local.insert(domain.to_owned(), known);
                known
            }
        };
        if !is_local {
            return Ok(Found::Remote);
        }
        let mut candidates = vec![address.clone()];
        candidates.extend(address.without_tag());
        for candidate in candidates {
            if self.account_exists(&candidate).await? {
                return Ok(Found::Account(candidate));
            }
            let key = candidate.to_string();
            if let Some(destinations) = self.alias_destinations_with(&key, overlay).await? {
                return Ok(Found::Alias(key, destinations));
            }
        }
        let catch_all = format!("@{domain}");
        if let Some(destinations) = self.alias_destinations_with(&catch_all, overlay).await? {
            return Ok(Found::Alias(catch_all, destinations));
        }
        // RFC 5321 §4.5.1: every domain must accept mail for its postmaster. One without a
        // postmaster of its own (a second domain, one added later) shares the first one.
        let base = address.local().split_once('+').map_or(address.local(), |(base, _)| base);
        if base == POSTMASTER {
            if let Some(first) = self.first_postmaster_with(overlay).await? {
                if first.domain() != domain {
                    return Ok(Found::Postmaster(format!("{POSTMASTER}@{domain}"), first));
                }
            }
        }
        Ok(Found::Nobody)
    }

    /// Expand `work` (address, depth) into final targets. Each alias is expanded at most once
    /// per call: that cuts loops (a → b → a) and keeps diamond-shaped alias graphs linear.
    async fn expand(
        &self,
        mut work: Vec<(Address, usize)>,
        mut expanded: HashSet<String>,
    ) -> Result<BTreeSet<Target>> {
        let mut targets = BTreeSet::new();
        let mut local = HashMap::new();
        while let Some((address, depth)) = work.pop() {
            let (key, destinations) = match self.find(&address, &mut local, None).await? {
                Found::Remote => {
                    targets.insert(Target::Remote(address));
                    continue;
                }
                Found::Account(account) => {
                    targets.insert(Target::Local(account));
                    continue;
                }
                Found::Nobody => {
                    if depth > 0 {
                        tracing::warn!(%address, "alias destination is a local address without an account; skipped")
                    }
                    continue;
                }
                Found::Alias(key, destinations) => (key, destinations),
                Found::Postmaster(key, first) => (key, vec![first]),
            };
            if depth >= MAX_ALIAS_DEPTH {
                tracing::warn!(alias = %key, "alias chain longer than {MAX_ALIAS_DEPTH} hops; cut");
                continue;
            }
            // Marked only when actually expanded, so an alias first met too deep can
            // still be expanded when met again on a shorter path.
            if !expanded.insert(key.clone()) {
                tracing::debug!(alias = %key, "alias already expanded (loop or shared destination)");
                continue;
            }
            work.extend(destinations.into_iter().map(|d| (d, depth + 1)));
        }
        Ok(targets)
    }

    /// Where mail to `address` goes. `Ok(None)`: the domain is local but nobody has that
    /// address (550 5.1.1). Order: account, alias, account without +tag, alias without +tag,
    /// catch-all. Aliases expand recursively (loops and depth > 10 are cut).
    ///
    /// `postmaster@` of a domain without a postmaster of its own goes to the server's first
    /// postmaster ([`Directory::first_postmaster`]; RFC 5321 §4.5.1).
    ///
    /// The result is sorted and deduplicated. An address on a domain that is not local
    /// resolves to itself as `Target::Remote` (whether to relay it is the caller's decision).
    /// An alias whose every destination is dangling or cut also gives `Ok(None)`: refusing at
    /// RCPT time beats accepting mail that can only bounce.
    pub async fn resolve(&self, address: &Address) -> Result<Option<Vec<Target>>> {
        let targets = self.expand(vec![(address.clone(), 0)], HashSet::new()).await?;
        Ok((!targets.is_empty()).then(|| targets.into_iter().collect()))
    }

    /// The enabled account whose password matches, or None.
    ///
    /// `username` is the full address, compared case-insensitively. Unknown users, malformed
    /// usernames and disabled accounts cost the same password verification as a wrong
    /// password, so response time does not reveal which addresses exist. Hashing runs on the
    /// blocking pool, at most one per core at a time (see `HASH_SLOTS`).
    pub async fn authenticate(&self, username: &str, password: &str) -> Result<Option<Account>> {
        let account = match Address::parse(username.trim()) {
            Ok(address) => self.get_account(&address).await?,
            Err(_) => None,
        };
        let stored = account.as_ref().map_or(password::dummy_hash(), |a| a.password_hash.as_str()).to_owned();
        let given = password.to_owned();
        let matched = {
            let _slot = HASH_SLOTS.acquire().await.expect("the hashing semaphore is never closed");
            tokio::task::spawn_blocking(move || password::verify(&stored, &given))
                .await
                .map_err(|e| DirectoryError::Other(format!("password verification failed: {e}")))?
        };
        let Some(account) = account.filter(|a| a.enabled) else { return Ok(None) };
        // With a second factor on, the account password alone would skip it: mail clients
        // (which cannot ask for a code) use app passwords instead.
        if matched && !self.totp_state(&account.address).await?.enabled {
            return Ok(Some(account));
        }
        if self.use_app_password(&account.address, &password_digest_input(password)).await? {
            return Ok(Some(account));
        }
        Ok(None)
    }

    /// The enabled account whose *account* password matches, for web logins: app passwords
    /// are for IMAP/POP3/SMTP/ManageSieve only, never the web. The second factor, if the
    /// account has one, is the caller's next step. Costs one verification like
    /// [`Directory::authenticate`].
    pub async fn authenticate_web(&self, username: &str, password: &str) -> Result<Option<Account>> {
        let account = match Address::parse(username.trim()) {
            Ok(address) => self.get_account(&address).await?,
            Err(_) => None,
        };
        let stored = account.as_ref().map_or(password::dummy_hash(), |a| a.password_hash.as_str()).to_owned();
        let password = password.to_owned();
        let matched = {
            let _slot = HASH_SLOTS.acquire().await.expect("the hashing semaphore is never closed");
            tokio::task::spawn_blocking(move || password::verify(&stored, &password))
                .await
                .map_err(|e| DirectoryError::Other(format!("password verification failed: {e}")))?
        };
        Ok(account.filter(|a| matched && a.enabled))
    }

    /// May the authenticated `account` use `from` as envelope sender / From:?  Its own
    /// address (with or without +tag) or an alias that delivers to it.
    ///
    /// Only named aliases count (also with a +tag: `info+x@` if `info@` delivers to the
    /// account). A catch-all never does: it would let its recipient send as any address of
    /// the domain, including other users'.
    pub async fn may_send_as(&self, account: &Address, from: &Address) -> Result<bool> {
        if from == account || from.without_tag().as_ref() == Some(account) {
            return Ok(true);
        }
        let mut sources = vec![from.to_string()];
        sources.extend(from.without_tag().map(|a| a.to_string()));
        let wanted = Target::Local(account.clone());
        for source in sources {
            let Some(destinations) = self.alias_destinations(&source).await? else {
                continue;
            };
            let work = destinations.into_iter().map(|d| (d, 1)).collect();
            let targets = self.expand(work, HashSet::from([source])).await?;
            if targets.contains(&wanted) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// App passwords are compared as typed without the dashes, spaces and case they are
/// shown with.
fn password_digest_input(password: &str) -> String {
    secret::normalize_app_password(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_target("sqlite:///var/lib/posthaste/directory.db"),
            SqliteTarget::File("/var/lib/posthaste/directory.db".into())
        );
        assert_eq!(sqlite_target("sqlite://rel/d.db?mode=rwc"), SqliteTarget::File("rel/d.db".into()));
        assert_eq!(sqlite_target("sqlite:d.db"), SqliteTarget::File("d.db".into()));
        assert_eq!(sqlite_target("sqlite::memory:"), SqliteTarget::Memory);
        assert_eq!(sqlite_target("postgres://u@h/db"), SqliteTarget::None);
    }

    #[test]
    fn alias_sources() {
        assert_eq!(
            parse_alias_source("@Example.TEST").unwrap(),
            AliasSource { key: "@example.test".into(), domain: "example.test".into() }
        );
        assert_eq!(parse_alias_source("Info@Example.test").unwrap().key, "info@example.test");
        assert!(matches!(parse_alias_source("@nodot"), Err(DirectoryError::InvalidDomain(_))));
        assert!(matches!(parse_alias_source("info"), Err(DirectoryError::InvalidAddress(_))));
        assert!(matches!(parse_alias_source("@"), Err(DirectoryError::InvalidDomain(_))));
    }

    #[test]
    fn quota_range() {
        assert_eq!(quota_to_db(0).unwrap(), 0);
        assert!(quota_to_db(u64::MAX).is_err());
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    // A quick in-memory smoke test of the whole flow; the full matrix against real SQLite
    // files and PostgreSQL is in tests/it/directory.rs.
    #[tokio::test]
    async fn in_memory_round_trip() {
        let dir = Directory::open("sqlite::memory:").await.unwrap();
        assert_eq!(dir.schema_version().await.unwrap(), SCHEMA_VERSION);
        dir.add_domain("Example.TEST").await.unwrap();
        let hash = "{SHA256-CRYPT}$5$pepper$I4JtT7ItqoiFALROk4x2EglL0RlsbnhesIq3gG3GPF.";
        dir.add_account(&addr("alice@example.test"), hash, 0).await.unwrap();
        dir.add_alias("info@example.test", &addr("alice@example.test")).await.unwrap();
        assert_eq!(
            dir.resolve(&addr("info+x@example.test")).await.unwrap(),
            Some(vec![Target::Local(addr("alice@example.test"))])
        );
        assert!(dir.authenticate("ALICE@example.test", "correct horse").await.unwrap().is_some());
        // Opening twice (a second process) is a no-op for the schema.
        dir.migrate().await.unwrap();
        assert_eq!(dir.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
}
