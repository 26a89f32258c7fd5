//! The account directory: domains, accounts, aliases (SQLite or PostgreSQL through sqlx's
//! `Any` driver, one code path). INTERFACE STUB — the directory work replaces the bodies.

pub mod password;

use serde::Serialize;

use crate::address::{Address, AddressError};

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
    #[error("domain {domain} still has {accounts} account(s) and {aliases} alias(es) (help: remove them first, or pass --force to remove them with the domain; their mail stays on disk)")]
    DomainNotEmpty { domain: String, accounts: u64, aliases: u64 },
    #[error("directory database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, DirectoryError>;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Account {
    pub address: String,
    /// Bytes; 0 = no limit.
    pub quota: u64,
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

#[derive(Clone)]
pub struct Directory {
    #[allow(dead_code)]
    pool: sqlx::AnyPool,
}

impl Directory {
    /// Connect (creating the SQLite file with mode 0600 if needed) and create/upgrade the schema.
    pub async fn open(_url: &str) -> Result<Directory> {
        todo!()
    }
    pub async fn add_domain(&self, _name: &str) -> Result<Domain> {
        todo!()
    }
    pub async fn list_domains(&self) -> Result<Vec<Domain>> {
        todo!()
    }
    /// Refused with `DomainNotEmpty` unless `force`, which removes its accounts and aliases too.
    pub async fn remove_domain(&self, _name: &str, _force: bool) -> Result<()> {
        todo!()
    }
    pub async fn is_local_domain(&self, _domain: &str) -> Result<bool> {
        todo!()
    }
    /// `password_hash` is already in `{SCHEME}` form (see [`password::hash`]).
    pub async fn add_account(
        &self,
        _address: &Address,
        _password_hash: &str,
        _quota: u64,
    ) -> Result<Account> {
        todo!()
    }
    pub async fn get_account(&self, _address: &Address) -> Result<Option<Account>> {
        todo!()
    }
    pub async fn list_accounts(&self, _domain: Option<&str>) -> Result<Vec<Account>> {
        todo!()
    }
    pub async fn set_password(&self, _address: &Address, _password_hash: &str) -> Result<()> {
        todo!()
    }
    pub async fn remove_account(&self, _address: &Address) -> Result<()> {
        todo!()
    }
    /// `source` is `local@domain` or `@domain` (catch-all); the domain must be local.
    pub async fn add_alias(&self, _source: &str, _destination: &Address) -> Result<()> {
        todo!()
    }
    pub async fn list_aliases(&self, _domain: Option<&str>) -> Result<Vec<Alias>> {
        todo!()
    }
    /// Remove one destination, or the whole alias when `destination` is None.
    pub async fn remove_alias(&self, _source: &str, _destination: Option<&Address>) -> Result<()> {
        todo!()
    }
    /// Where mail to `address` goes. `Ok(None)`: the domain is local but nobody has that
    /// address (550 5.1.1). Order: account, alias, account without +tag, alias without +tag,
    /// catch-all. Aliases expand recursively (loops and depth > 10 are cut).
    pub async fn resolve(&self, _address: &Address) -> Result<Option<Vec<Target>>> {
        todo!()
    }
    /// The enabled account whose password matches, or None.
    pub async fn authenticate(&self, _username: &str, _password: &str) -> Result<Option<Account>> {
        todo!()
    }
    /// May the authenticated `account` use `from` as envelope sender / From:?  Its own
    /// address (with or without +tag) or an alias that delivers to it.
    pub async fn may_send_as(&self, _account: &Address, _from: &Address) -> Result<bool> {
        todo!()
    }
}
