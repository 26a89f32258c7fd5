//! `posthaste alias add|list|remove`: forwarding addresses and catch-alls.

use serde::Serialize;

use super::{Error, Result};
use crate::address::{normalize_domain, Address};
use crate::directory::{Alias, Directory, DirectoryError};

/// The normalised form of an alias source (`Info@Example.org` → `info@example.org`,
/// `@Example.org` → `@example.org` for the catch-all).
pub fn source_key(source: &str) -> Result<String> {
    match source.strip_prefix('@') {
        Some(domain) => Ok(format!(
            "@{}",
            normalize_domain(domain).ok_or_else(|| DirectoryError::InvalidDomain(domain.to_owned()))?
        )),
        None => Ok(Address::parse(source)?.to_string()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub source: String,
    /// The destinations that are new.
    pub added: Vec<String>,
    /// The destinations the alias had already (reported, not an error, so adding one more
    /// destination can be retried).
    pub present: Vec<String>,
}

/// Deliver mail for `source` to `destinations` as well. All destinations are checked
/// first (addresses, no loop) and added in one transaction; only nothing new at all is an
/// error.
pub async fn add(dir: &Directory, source: &str, destinations: &[String]) -> Result<Added> {
    let key = source_key(source)?;
    let mut dests: Vec<Address> = Vec::new();
    for d in destinations {
        let d = Address::parse(d)?;
        if d.to_string() == key {
            return Err(Error::invalid(format!("alias {key} cannot point to itself")));
        }
        if !dests.contains(&d) {
            dests.push(d);
        }
    }
    for d in &dests {
        if let Some(cycle) = dir.alias_cycle(&key, d).await? {
            return Err(Error::refused(format!(
                "alias {key} → {d} would make a loop: {}",
                cycle.join(" → ")
            ))
            .help(format!(
                "mail would go round without reaching a mailbox: point {key} at an account, or first remove one link of the loop (`posthaste alias remove SOURCE DESTINATION`)"
            )));
        }
    }
    let (added, present) = dir.add_aliases(&key, &dests).await?;
    if added.is_empty() {
        return Err(Error::exists(format!("alias {key} → {} already exists", present.join(", ")))
            .help("`posthaste alias list` shows the aliases"));
    }
    Ok(Added { source: key, added, present })
}

pub async fn list(dir: &Directory, domain: Option<&str>) -> Result<Vec<Alias>> {
    Ok(dir.list_aliases(domain).await?)
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub source: String,
    /// The destination removed; None: the whole alias.
    pub destination: Option<String>,
}

/// Remove one destination of an alias, or the whole alias.
pub async fn remove(dir: &Directory, source: &str, destination: Option<&str>) -> Result<Removed> {
    let key = source_key(source)?;
    let dest = destination.map(Address::parse).transpose()?;
    dir.remove_alias(&key, dest.as_ref()).await?;
    Ok(Removed { source: key, destination: dest.map(|d| d.to_string()) })
}
