//! What a logged-in administrator or an API token may do, one function per action, used
//! by the pages and the API alike: check the actor's scope, call the CLI's function in
//! `admin::*`, and write the change to the audit log (the directory's `audit_log` table and
//! an `admin_change` log line: who, what, from where).
//!
//! Scope: a server admin may do everything; a domain admin only what concerns its
//! domains' accounts and aliases — and never an account that has web rights itself (it
//! could otherwise take over a server admin's account in its domain by resetting the
//! password); a user nothing here.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::StatusCode;
use serde::Serialize;
use tracing::info;

use super::Context;
use crate::address::Address;
use crate::admin::{self, Kind};
use crate::directory::{Account, Alias, AuditEntry, Domain, Role, WebAccess};

/// Who is acting.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The account (`alice@example.org`) or `token:ID`.
    pub name: String,
    pub role: Role,
    pub domains: Vec<String>,
    pub client: IpAddr,
}

impl Actor {
    pub fn from_access(a: &WebAccess, client: IpAddr) -> Actor {
        Actor { name: a.address.clone(), role: a.role, domains: a.domains.clone(), client }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn may_domain(&self, domain: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::DomainAdmin => self.domains.iter().any(|d| d == domain),
            Role::User => false,
        }
    }

    fn need_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(WebError::Forbidden("only a server administrator may do this".into()))
        }
    }

    fn need_domain(&self, domain: &str) -> Result<()> {
        if self.may_domain(domain) {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!("{domain} is not one of your domains")))
        }
    }
}

/// Why a web request failed: an admin error (with its kind and advice), or one of the
/// web's own.
#[derive(Debug)]
pub enum WebError {
    Admin(admin::Error),
    /// Logged in, but not allowed.
    Forbidden(String),
    /// Not logged in (pages: to the login form; API: 401).
    Unauthorized,
    BadRequest(String),
    NotFound,
    /// The form's CSRF token was missing or wrong.
    Csrf,
    /// The guard banned the client.
    Banned,
}

impl From<admin::Error> for WebError {
    fn from(e: admin::Error) -> WebError {
        WebError::Admin(e)
    }
}

impl From<crate::directory::DirectoryError> for WebError {
    fn from(e: crate::directory::DirectoryError) -> WebError {
        WebError::Admin(e.into())
    }
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Admin(e) => match e.kind() {
                Kind::Invalid => StatusCode::BAD_REQUEST,
                Kind::NotFound => StatusCode::NOT_FOUND,
                Kind::Exists | Kind::Refused => StatusCode::CONFLICT,
                Kind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            },
            WebError::Forbidden(_) | WebError::Csrf | WebError::Banned => StatusCode::FORBIDDEN,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// `(kind, message, help)` for the API's error object and the error page.
    pub fn parts(&self) -> (&'static str, String, Option<String>) {
        match self {
            WebError::Admin(e) => {
                let kind = match e.kind() {
                    Kind::Invalid => "invalid",
                    Kind::NotFound => "not_found",
                    Kind::Exists => "exists",
                    Kind::Refused => "refused",
                    Kind::Failed => "failed",
                };
                (kind, e.message().to_owned(), e.help_text().map(str::to_owned))
            }
            WebError::Forbidden(m) => ("forbidden", m.clone(), None),
            WebError::Unauthorized => (
                "unauthorized",
                "not logged in".into(),
                Some(
                    "log in at /admin/login, or send Authorization: Bearer TOKEN (`posthaste token create`)"
                        .into(),
                ),
            ),
            WebError::BadRequest(m) => ("invalid", m.clone(), None),
            WebError::NotFound => ("not_found", "no such page".into(), None),
            WebError::Csrf => (
                "csrf",
                "the form was not sent by this site (its security token is missing or old)".into(),
                Some("reload the page and send the form again".into()),
            ),
            WebError::Banned => (
                "banned",
                "too many failed logins from this address".into(),
                Some("wait until the ban ends, or ask the administrator (`posthaste ban remove IP`)".into()),
            ),
        }
    }
}

pub type Result<T> = std::result::Result<T, WebError>;

fn domain_of(address_or_catch_all: &str) -> String {
    address_or_catch_all.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default()
}

fn parse_address(s: &str) -> Result<Address> {
    Ok(Address::parse(s.trim()).map_err(admin::Error::from)?)
}

/// Write one audit entry and its log line. A change that happened is reported even if
/// the entry cannot be written (the log line still has it).
async fn audit(ctx: &Context, actor: &Actor, action: &str, target: &str, domain: &str, detail: &str) {
    let e = AuditEntry {
        at: chrono::Utc::now().timestamp_micros(),
        actor: actor.name.clone(),
        client: actor.client.to_string(),
        action: action.to_owned(),
        target: target.to_owned(),
        domain: domain.to_owned(),
        detail: detail.to_owned(),
    };
    info!(event = "admin_change", actor = %e.actor, client = %e.client, action, target, domain, detail, "admin change");
    if let Err(err) = ctx.dir.audit(&e).await {
        tracing::error!(error = %err, action, target, "cannot write the audit entry");
    }
}

// ---- domains ---------------------------------------------------------------------------

pub async fn domains(ctx: &Context, actor: &Actor) -> Result<Vec<Domain>> {
    let all = admin::domain::list(&ctx.dir).await?;
    Ok(all.into_iter().filter(|d| actor.may_domain(&d.name)).collect())
}

pub async fn domain_add(ctx: &Context, actor: &Actor, name: &str) -> Result<admin::domain::Added> {
    actor.need_admin()?;
    let added = admin::domain::add(&ctx.config, &ctx.dir, name).await?;
    audit(ctx, actor, "domain.add", &added.domain, &added.domain, "").await;
    Ok(added)
}

pub async fn domain_remove(
    ctx: &Context,
    actor: &Actor,
    name: &str,
    force: bool,
) -> Result<admin::domain::Removed> {
    actor.need_admin()?;
    let removed = admin::domain::remove(&ctx.dir, &ctx.store, name, force).await?;
    let detail = format!("{} accounts, {} aliases", removed.accounts.len(), removed.aliases.len());
    audit(ctx, actor, "domain.remove", &removed.domain, &removed.domain, &detail).await;
    for a in &removed.accounts {
        ctx.sessions.end_all_of(a, None);
    }
    Ok(removed)
}

/// The records to publish for one domain (DKIM keys made if missing).
pub async fn domain_dns(ctx: &Context, actor: &Actor, name: &str) -> Result<Vec<admin::dns::Record>> {
    let name = admin::domain::existing(&ctx.dir, name).await?;
    actor.need_domain(&name)?;
    let zone = admin::dns::zone(&ctx.config, &ctx.dir, Some(&name)).await?;
    Ok(zone.records()?)
}

// ---- accounts --------------------------------------------------------------------------

/// An account with what the panel shows next to it.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: Account,
    /// Bytes and messages stored now.
    pub used_bytes: u64,
    pub messages: u64,
    pub role: Role,
    pub domains: Vec<String>,
    pub two_factor: bool,
    /// Aliases that deliver to it.
    pub aliases: Vec<String>,
}

/// Accounts of one domain, or of every domain the actor may see (without usage: the
/// list is one query, whatever its length).
pub async fn accounts(ctx: &Context, actor: &Actor, domain: Option<&str>) -> Result<Vec<Account>> {
    match domain {
        Some(d) => {
            let d = admin::domain::existing(&ctx.dir, d).await?;
            actor.need_domain(&d)?;
            Ok(admin::user::list(&ctx.dir, Some(&d)).await?)
        }
        None if actor.is_admin() => Ok(admin::user::list(&ctx.dir, None).await?),
        None if actor.role == Role::User => Err(WebError::Forbidden("users have no account list".into())),
        None => {
            let mut out = Vec::new();
            for d in &actor.domains {
                out.extend(admin::user::list(&ctx.dir, Some(d)).await?);
            }
            Ok(out)
        }
    }
}

/// Bytes and messages of each account (reads the Maildirs, off the async workers).
pub async fn usage_of(ctx: &Context, accounts: &[Account]) -> Vec<(u64, u64)> {
    let store = ctx.store.clone();
    let addrs: Vec<String> = accounts.iter().map(|a| a.address.clone()).collect();
    tokio::task::spawn_blocking(move || {
        addrs
            .iter()
            .map(|a| {
                Address::parse(a)
                    .ok()
                    .and_then(|a| store.account_usage(&a).ok())
                    .map_or((0, 0), |u| (u.bytes, u.messages))
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn existing_account(
    ctx: &Context,
    actor: &Actor,
    address: &str,
) -> Result<(Address, Account, WebAccess)> {
    let addr = parse_address(address)?;
    actor.need_domain(addr.domain())?;
    let account = ctx.dir.get_account(&addr).await?.ok_or_else(|| {
        admin::Error::from(crate::directory::DirectoryError::NotFound(format!("account {addr}")))
    })?;
    let access = ctx.dir.web_access(&addr).await?.ok_or(WebError::NotFound)?;
    Ok((addr, account, access))
}

/// A domain admin may change user accounts only (and its own account through /account/).
async fn changeable(ctx: &Context, actor: &Actor, address: &str) -> Result<(Address, Account, WebAccess)> {
    let found = existing_account(ctx, actor, address).await?;
    if !actor.is_admin() && found.2.role != Role::User {
        return Err(WebError::Forbidden(format!(
            "{} has administrator rights: only a server administrator may change it",
            found.0
        )));
    }
    Ok(found)
}

pub async fn account(ctx: &Context, actor: &Actor, address: &str) -> Result<AccountView> {
    let (addr, account, access) = existing_account(ctx, actor, address).await?;
    let usage = usage_of(ctx, std::slice::from_ref(&account)).await;
    let me = addr.to_string();
    let aliases = admin::alias::list(&ctx.dir, Some(addr.domain()))
        .await?
        .into_iter()
        .filter(|a| a.destinations.contains(&me))
        .map(|a| a.source)
        .collect();
    let (used_bytes, messages) = usage.first().copied().unwrap_or((0, 0));
    Ok(AccountView {
        account,
        used_bytes,
        messages,
        role: access.role,
        domains: access.domains,
        two_factor: access.totp,
        aliases,
    })
}

fn password_input(password: Option<&str>) -> admin::user::Password {
    match password.filter(|p| !p.is_empty()) {
        Some(p) => admin::user::Password::Plain { text: p.to_owned(), from: "the form" },
        None => admin::user::Password::Generate,
    }
}

pub async fn account_add(
    ctx: &Context,
    actor: &Actor,
    address: &str,
    password: Option<&str>,
    quota: u64,
) -> Result<admin::user::Added> {
    let addr = parse_address(address)?;
    actor.need_domain(addr.domain())?;
    let added = admin::user::add(
        &ctx.dir,
        &ctx.store,
        &addr,
        &password_input(password),
        quota,
        admin::user::OldMail::Refuse,
        false,
    )
    .await?;
    audit(ctx, actor, "user.add", &added.account.address, addr.domain(), &format!("quota {quota}")).await;
    Ok(added)
}

pub async fn account_passwd(
    ctx: &Context,
    actor: &Actor,
    address: &str,
    password: Option<&str>,
) -> Result<Option<String>> {
    let (addr, ..) = changeable(ctx, actor, address).await?;
    let generated = admin::user::passwd(&ctx.dir, &addr, &password_input(password), false).await?;
    audit(ctx, actor, "user.passwd", &addr.to_string(), addr.domain(), "").await;
    ctx.sessions.end_all_of(&addr.to_string(), None);
    Ok(generated)
}

pub async fn account_quota(
    ctx: &Context,
    actor: &Actor,
    address: &str,
    quota: u64,
) -> Result<admin::user::Changed<u64>> {
    let (addr, ..) = changeable(ctx, actor, address).await?;
    let c = admin::user::set_quota(&ctx.dir, &addr, quota).await?;
    audit(ctx, actor, "user.quota", &c.address, addr.domain(), &format!("{} → {}", c.before, c.after)).await;
    Ok(c)
}

pub async fn account_enabled(
    ctx: &Context,
    actor: &Actor,
    address: &str,
    enabled: bool,
) -> Result<admin::user::Changed<bool>> {
    let (addr, ..) = changeable(ctx, actor, address).await?;
    let c = admin::user::set_enabled(&ctx.dir, &addr, enabled).await?;
    let action = if enabled { "user.enable" } else { "user.disable" };
    audit(ctx, actor, action, &c.address, addr.domain(), "").await;
    if !enabled {
        ctx.sessions.end_all_of(&c.address, None);
    }
    Ok(c)
}

pub async fn account_remove(
    ctx: &Context,
    actor: &Actor,
    address: &str,
    purge: bool,
) -> Result<admin::user::Removed> {
    let (addr, ..) = changeable(ctx, actor, address).await?;
    let mail = if purge { admin::user::RemoveMail::Purge } else { admin::user::RemoveMail::Keep };
    let r = admin::user::remove(&ctx.dir, &ctx.store, &addr, mail).await?;
    audit(
        ctx,
        actor,
        "user.remove",
        &r.address,
        addr.domain(),
        if purge { "mail deleted" } else { "mail archived" },
    )
    .await;
    ctx.sessions.end_all_of(&r.address, None);
    Ok(r)
}

pub async fn account_role(
    ctx: &Context,
    actor: &Actor,
    address: &str,
    role: Role,
    domains: &[String],
) -> Result<admin::user::Changed<WebAccess>> {
    actor.need_admin()?;
    let addr = parse_address(address)?;
    let c = admin::security::set_role(&ctx.dir, &addr, role, domains).await?;
    let detail =
        format!("{} → {} {}", c.before.role.as_str(), c.after.role.as_str(), c.after.domains.join(","));
    audit(ctx, actor, "user.role", &c.address, addr.domain(), detail.trim()).await;
    Ok(c)
}

// ---- aliases ---------------------------------------------------------------------------

pub async fn aliases(ctx: &Context, actor: &Actor, domain: Option<&str>) -> Result<Vec<Alias>> {
    match domain {
        Some(d) => {
            let d = admin::domain::existing(&ctx.dir, d).await?;
            actor.need_domain(&d)?;
            Ok(admin::alias::list(&ctx.dir, Some(&d)).await?)
        }
        None => {
            let all = admin::alias::list(&ctx.dir, None).await?;
            Ok(all.into_iter().filter(|a| actor.may_domain(&domain_of(&a.source))).collect())
        }
    }
}

pub async fn alias_add(
    ctx: &Context,
    actor: &Actor,
    source: &str,
    destinations: &[String],
) -> Result<admin::alias::Added> {
    let key = admin::alias::source_key(source)?;
    let domain = domain_of(&key);
    actor.need_domain(&domain)?;
    let a = admin::alias::add(&ctx.dir, &key, destinations).await?;
    audit(ctx, actor, "alias.add", &a.source, &domain, &a.added.join(", ")).await;
    Ok(a)
}

pub async fn alias_remove(
    ctx: &Context,
    actor: &Actor,
    source: &str,
    destination: Option<&str>,
) -> Result<admin::alias::Removed> {
    let key = admin::alias::source_key(source)?;
    let domain = domain_of(&key);
    actor.need_domain(&domain)?;
    let r = admin::alias::remove(&ctx.dir, &key, destination).await?;
    audit(
        ctx,
        actor,
        "alias.remove",
        &r.source,
        &domain,
        r.destination.as_deref().unwrap_or("all destinations"),
    )
    .await;
    Ok(r)
}

// ---- queue and bans (server admins) ----------------------------------------------------

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> {
    async move { tokio::task::spawn_blocking(f).await.expect("a blocking admin task panicked") }
}

pub async fn queue(ctx: &Arc<Context>, actor: &Actor) -> Result<Vec<crate::queue::QueueEntry>> {
    actor.need_admin()?;
    let config = ctx.config.clone();
    Ok(blocking(move || admin::queue::list(&config)).await?)
}

pub async fn queue_retry(
    ctx: &Arc<Context>,
    actor: &Actor,
    id: Option<&str>,
) -> Result<admin::queue::Flushed> {
    actor.need_admin()?;
    let (config, owned) = (ctx.config.clone(), id.map(str::to_owned));
    let f = blocking(move || admin::queue::flush(&config, owned.as_deref())).await?;
    audit(ctx, actor, "queue.retry", id.unwrap_or("all"), "", "").await;
    Ok(f)
}

pub async fn queue_delete(ctx: &Arc<Context>, actor: &Actor, id: &str) -> Result<()> {
    actor.need_admin()?;
    let (config, owned) = (ctx.config.clone(), id.to_owned());
    blocking(move || admin::queue::delete(&config, &owned)).await?;
    audit(ctx, actor, "queue.delete", id, "", "not delivered, no bounce").await;
    Ok(())
}

pub async fn bans(ctx: &Arc<Context>, actor: &Actor) -> Result<Vec<admin::ban::BanView>> {
    actor.need_admin()?;
    let guard = ctx.guard.clone();
    Ok(blocking(move || guard.list().iter().map(admin::ban::BanView::from).collect()).await)
}

/// Lift a ban through the daemon's own guard (its memory and the ban file at once).
pub async fn unban(ctx: &Arc<Context>, actor: &Actor, ip: IpAddr) -> Result<admin::ban::BanView> {
    actor.need_admin()?;
    let guard = ctx.guard.clone();
    let removed = blocking(move || guard.unban(ip, "removed by the administrator (web)")).await;
    let removed = removed.map_err(|e| admin::Error::from_anyhow(Kind::Failed, &e))?;
    match removed {
        Some(b) => {
            audit(ctx, actor, "ban.remove", &ip.to_string(), "", "").await;
            Ok(admin::ban::BanView::from(&b))
        }
        None => Err(admin::Error::not_found(format!("{ip} is not banned")).into()),
    }
}

pub async fn ban(
    ctx: &Arc<Context>,
    actor: &Actor,
    ip: IpAddr,
    duration: Option<std::time::Duration>,
    reason: &str,
) -> Result<admin::ban::BanView> {
    actor.need_admin()?;
    let (guard, why) = (ctx.guard.clone(), reason.to_owned());
    let ban = blocking(move || guard.ban(ip, duration, &why)).await;
    let ban = ban.map_err(|e| admin::Error::from_anyhow(Kind::Refused, &e))?;
    audit(ctx, actor, "ban.add", &ip.to_string(), "", reason).await;
    Ok(admin::ban::BanView::from(&ban))
}

pub async fn audit_log(ctx: &Context, actor: &Actor, limit: u32) -> Result<Vec<AuditEntry>> {
    match actor.role {
        Role::Admin => Ok(ctx.dir.audit_log(limit, None).await?),
        Role::DomainAdmin => Ok(ctx.dir.audit_log(limit, Some(&actor.domains)).await?),
        Role::User => Err(WebError::Forbidden("only administrators see the audit log".into())),
    }
}

/// Audit a change a user made to its own account (self-service).
pub async fn audit_self(ctx: &Context, address: &str, client: IpAddr, action: &str, detail: &str) {
    let actor = Actor { name: address.to_owned(), role: Role::User, domains: vec![], client };
    audit(ctx, &actor, action, address, &domain_of(address), detail).await;
}
