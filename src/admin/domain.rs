//! `posthaste domain add|list|remove`: the mail domains this server accepts.

use std::path::PathBuf;

use serde::Serialize;

use super::{count, short_list, Error, Kind, Result};
use crate::address::normalize_domain;
use crate::config::Config;
use crate::directory::{Directory, DirectoryError, Domain, DomainRemoval, PostmasterRoute, RemovedDomain};
use crate::mailauth::keys;
use crate::store::Store;

/// DKIM keys made for a domain.
#[derive(Debug, Clone, Serialize)]
pub struct DkimKeys {
    pub domain: String,
    pub selectors: Vec<&'static str>,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub domain: String,
    /// The keys made for it (None if they existed already, e.g. from before a removal).
    pub dkim: Option<DkimKeys>,
    /// Where its postmaster@ mail goes (RFC 5321 §4.5.1).
    pub postmaster: PostmasterRoute,
}

pub async fn add(config: &Config, dir: &Directory, name: &str) -> Result<Added> {
    let d = dir.add_domain(name).await?;
    // The domain stays added (undoing that could fail as well), and the advice says how
    // to make the keys once the cause is fixed.
    let dkim = dkim_keys(config, &d.name)
        .map_err(|e| e.reworded(format!("added domain {}, but cannot make its DKIM keys", d.name)))?;
    let postmaster = dir.postmaster_route(&d.name).await?;
    Ok(Added { domain: d.name, dkim, postmaster })
}

pub async fn list(dir: &Directory) -> Result<Vec<Domain>> {
    Ok(dir.list_domains().await?)
}

/// An alias destination that pointed into a removed domain.
#[derive(Debug, Clone, Serialize)]
pub struct AliasLink {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub domain: String,
    pub accounts: Vec<String>,
    pub aliases: Vec<String>,
    /// Destinations of other domains' aliases that pointed into it, removed with it: left
    /// in place they would forward to the Internet once the domain is no longer local.
    pub inbound: Vec<AliasLink>,
    /// Where its accounts' mail stays (None when it had no accounts).
    pub mail_dir: Option<PathBuf>,
    /// Where postmaster@ of the remaining domains goes now, when the removal changed it
    /// (the domain held the first postmaster).
    pub postmaster_now: Option<PostmasterRoute>,
}

/// Stop accepting mail for the domain. Refused while it has accounts or aliases, or other
/// domains' aliases point into it, unless `force`, which removes those with it. The
/// accounts' Maildirs stay on disk (a later `user add` of one of those addresses asks
/// what to do with it).
pub async fn remove(dir: &Directory, store: &Store, name: &str, force: bool) -> Result<Removed> {
    let before = dir.first_postmaster().await?;
    let removed = match dir.remove_domain_and_references(name, force).await? {
        DomainRemoval::Removed(r) => r,
        DomainRemoval::Refused(what) => return Err(not_empty(&what)),
    };
    let after = dir.first_postmaster().await?;
    let postmaster_now = if before != after && !dir.list_domains().await?.is_empty() {
        Some(match after {
            Some(a) => PostmasterRoute::Shared(a),
            None => PostmasterRoute::Missing,
        })
    } else {
        None
    };
    let mail_dir = (!removed.accounts.is_empty()).then(|| store.root().join(&removed.name));
    Ok(Removed {
        domain: removed.name,
        accounts: removed.accounts,
        aliases: removed.aliases,
        inbound: removed
            .inbound
            .into_iter()
            .map(|(source, destination)| AliasLink { source, destination })
            .collect(),
        mail_dir,
        postmaster_now,
    })
}

fn not_empty(what: &RemovedDomain) -> Error {
    let mut parts = Vec::new();
    if !what.accounts.is_empty() || !what.aliases.is_empty() {
        let names: Vec<&str> = what.accounts.iter().chain(&what.aliases).map(String::as_str).collect();
        parts.push(format!(
            "{} and {}: {}",
            count(what.accounts.len(), "account", "accounts"),
            count(what.aliases.len(), "alias", "aliases"),
            short_list(&names, 10)
        ));
    }
    if !what.inbound.is_empty() {
        let links: Vec<String> = what.inbound.iter().map(|(s, d)| format!("{s} → {d}")).collect();
        let links: Vec<&str> = links.iter().map(String::as_str).collect();
        parts.push(format!("aliases of other domains pointing into it: {}", short_list(&links, 10)));
    }
    Error::new(Kind::Refused, format!("domain {} still has {}", what.name, parts.join("; and ")))
        .help("remove them first (`posthaste user remove`, `posthaste alias remove`), or pass --force to remove them with the domain (their mail stays on disk)")
}

/// Makes the domain's missing DKIM keys (the installer's directory step calls the same
/// `ensure_domain_keys`). The CLI already runs as the data directory's owner, so what it
/// creates belongs to the daemon's user.
pub fn dkim_keys(config: &Config, domain: &str) -> Result<Option<DkimKeys>> {
    let created = keys::ensure_domain_keys(&config.dkim_dir(), domain, None).map_err(|e| {
        Error::failed(format!("cannot make the DKIM keys of {domain}"))
            .caused_by(e.as_ref())
            .help(format!("once that is fixed, `posthaste dns {domain}` makes them"))
    })?;
    Ok((!created.is_empty()).then(|| DkimKeys {
        domain: domain.to_owned(),
        selectors: vec![keys::ED25519_SELECTOR, keys::RSA_SELECTOR],
        dir: keys::domain_dir(&config.dkim_dir(), domain),
    }))
}

/// The normalised name of a domain the directory has, or the error to show.
pub async fn existing(dir: &Directory, name: &str) -> Result<String> {
    let Some(domain) = normalize_domain(name) else {
        return Err(DirectoryError::InvalidDomain(name.to_owned()).into());
    };
    if dir.is_local_domain(&domain).await? {
        Ok(domain)
    } else {
        Err(DirectoryError::UnknownDomain(domain).into())
    }
}
