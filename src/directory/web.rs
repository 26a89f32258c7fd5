//! What the web side keeps in the directory: roles (server admin, domain admin of some
//! domains, user), TOTP second factors with recovery codes, app passwords, API tokens and
//! the audit log of admin changes. Schema version 2 ([`MIGRATION`]), on SQLite and
//! PostgreSQL through the same statements as the rest of the directory.
//!
//! Secrets are kept as digests ([`super::secret::digest`]); the TOTP secret itself must be
//! kept (codes are computed from it), in the database file that is 0600 already.

use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use super::{Directory, DirectoryError, Result};
use crate::address::{normalize_domain, Address};

/// Schema 1 → 2. Columns on `accounts` go with the account's row; the other tables are
/// cleaned by [`forget_account`] and [`forget_domain`] when an account or domain goes.
pub(super) const MIGRATION: &[&str] = &[
    "ALTER TABLE accounts ADD COLUMN role TEXT NOT NULL DEFAULT 'user'",
    "ALTER TABLE accounts ADD COLUMN totp_secret TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE accounts ADD COLUMN totp_enabled BIGINT NOT NULL DEFAULT 0",
    // The last time step whose code was accepted: a code works once (RFC 6238 §5.2).
    "ALTER TABLE accounts ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0",
    // The domains a domain admin manages, one row each.
    "CREATE TABLE IF NOT EXISTS domain_admins (
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        PRIMARY KEY (address, domain)
    )",
    "CREATE TABLE IF NOT EXISTS recovery_codes (
        address TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (address, digest)
    )",
    "CREATE TABLE IF NOT EXISTS app_passwords (
        id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        created BIGINT NOT NULL,
        last_used BIGINT NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS app_passwords_by_address ON app_passwords (address, digest)",
    "CREATE TABLE IF NOT EXISTS api_tokens (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        domains TEXT NOT NULL,
        created BIGINT NOT NULL,
        last_used BIGINT NOT NULL DEFAULT 0
    )",
    // `domain`: the mail domain a change concerns ('' for server-wide ones), so a domain
    // admin sees the entries of its domains only.
    "CREATE TABLE IF NOT EXISTS audit_log (
        id TEXT PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        client TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        domain TEXT NOT NULL,
        detail TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (at)",
];

/// Who may do what on the web and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything: every domain, the queue, bans, the audit log.
    Admin,
    /// The accounts and aliases of its domains, and their audit entries.
    DomainAdmin,
    /// Self-service only.
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::DomainAdmin => "domain-admin",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "domain-admin" => Some(Role::DomainAdmin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// An account's web rights and whether it has a second factor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebAccess {
    pub address: String,
    pub role: Role,
    /// For a domain admin, the domains it manages (sorted).
    pub domains: Vec<String>,
    pub totp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpState {
    pub secret: String,
    pub enabled: bool,
    pub last_step: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppPassword {
    pub id: String,
    pub address: String,
    /// What the user called it: the device or program.
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds of the last login with it; 0 = never.
    pub last_used: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// A domain admin token's domains.
    pub domains: Vec<String>,
    pub created: i64,
    pub last_used: i64,
}

/// One admin change: who did what to which thing, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Unix microseconds.
    pub at: i64,
    /// `alice@example.org` (a web login), `token:ID` (the API), `cli` (a local command).
    pub actor: String,
    /// The client's IP address, or `local`.
    pub client: String,
    /// `domain.add`, `user.passwd`, `ban.remove`, …
    pub action: String,
    pub target: String,
    /// The mail domain it concerns; empty for server-wide changes.
    pub domain: String,
    pub detail: String,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn split_domains(s: &str) -> Vec<String> {
    s.split(',').filter(|d| !d.is_empty()).map(str::to_owned).collect()
}

/// Remove what belongs to an account that is being removed (inside its transaction).
pub(super) async fn forget_account(tx: &mut Transaction<'_, Any>, address: &str) -> Result<()> {
    for statement in [
        "DELETE FROM app_passwords WHERE address = $1",
        "DELETE FROM recovery_codes WHERE address = $1",
        "DELETE FROM domain_admins WHERE address = $1",
    ] {
        sqlx::query(statement).bind(address).execute(&mut **tx).await?;
    }
    Ok(())
}

/// A removed domain is no longer anyone's to manage: a domain added again later under the
/// same name starts without domain admins.
pub(super) async fn forget_domain(tx: &mut Transaction<'_, Any>, domain: &str) -> Result<()> {
    sqlx::query("DELETE FROM domain_admins WHERE domain = $1").bind(domain).execute(&mut **tx).await?;
    Ok(())
}

impl Directory {
    /// The account's role, its domains and whether it has a second factor; None when
    /// there is no such account.
    pub async fn web_access(&self, address: &Address) -> Result<Option<WebAccess>> {
        let key = address.to_string();
        let row = sqlx::query("SELECT role, totp_enabled FROM accounts WHERE address = $1")
            .bind(&key)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role")?;
        let totp: i64 = row.try_get("totp_enabled")?;
        // An unknown value can only come from a hand edit: the least rights.
        let role = Role::parse(&role).unwrap_or(Role::User);
        let domains = if role == Role::DomainAdmin {
            sqlx::query_scalar("SELECT domain FROM domain_admins WHERE address = $1 ORDER BY domain")
                .bind(&key)
                .fetch_all(&self.pool)
                .await?
        } else {
            vec![]
        };
        Ok(Some(WebAccess { address: key, role, domains, totp: totp != 0 }))
    }

    /// Give the account `role`; a domain admin manages exactly `domains` (each must be a
    /// domain of this server), others none. One transaction.
    pub async fn set_role(&self, address: &Address, role: Role, domains: &[String]) -> Result<()> {
        let key = address.to_string();
        let mut names = Vec::new();
        for d in domains {
            let n = normalize_domain(d).ok_or_else(|| DirectoryError::InvalidDomain(d.clone()))?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let mut tx = self.pool.begin().await?;
        for n in &names {
            let found = sqlx::query("SELECT name FROM domains WHERE name = $1")
                .bind(n)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(DirectoryError::UnknownDomain(n.clone()));
            }
        }
        let done = sqlx::query("UPDATE accounts SET role = $1 WHERE address = $2")
            .bind(role.as_str())
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound(format!("account {key}")));
        }
        sqlx::query("DELETE FROM domain_admins WHERE address = $1").bind(&key).execute(&mut *tx).await?;
        if role == Role::DomainAdmin {
            for n in &names {
                sqlx::query("INSERT INTO domain_admins (address, domain) VALUES ($1, $2)")
                    .bind(&key)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The web roles of every account that has more than the user role (for the panel).
    pub async fn list_admins(&self) -> Result<Vec<WebAccess>> {
        let addresses: Vec<String> =
            sqlx::query_scalar("SELECT address FROM accounts WHERE role <> 'user' ORDER BY address")
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::new();
        for a in addresses {
            if let Ok(address) = Address::parse(&a) {
                out.extend(self.web_access(&address).await?);
            }
        }
        Ok(out)
    }

    pub async fn totp_state(&self, address: &str) -> Result<TotpState> {
        let row =
            sqlx::query("SELECT totp_secret, totp_enabled, totp_last_step FROM accounts WHERE address = $1")
                .bind(address)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| DirectoryError::NotFound(format!("account {address}")))?;
        let enabled: i64 = row.try_get("totp_enabled")?;
        Ok(TotpState {
            secret: row.try_get("totp_secret")?,
            enabled: enabled != 0,
            last_step: row.try_get("totp_last_step")?,
        })
    }

    /// Store a TOTP secret (`enabled` false: waiting for the first code to confirm it) and
    /// the digests of new recovery codes (replacing the old ones); an empty secret turns
    /// the second factor off and removes the codes.
    pub async fn set_totp(
        &self,
        address: &str,
        secret: &str,
        enabled: bool,
        recovery: &[String],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE accounts SET totp_secret = $1, totp_enabled = $2, totp_last_step = 0 WHERE address = $3",
        )
        .bind(secret)
        .bind(i64::from(enabled && !secret.is_empty()))
        .bind(address)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound(format!("account {address}")));
        }
        sqlx::query("DELETE FROM recovery_codes WHERE address = $1").bind(address).execute(&mut *tx).await?;
        for d in recovery {
            sqlx::query("INSERT INTO recovery_codes (address, digest) VALUES ($1, $2) ON CONFLICT (address, digest) DO NOTHING")
                .bind(address)
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Confirm a pending secret (the user typed a valid code from it).
    pub async fn enable_totp(&self, address: &str, step: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE accounts SET totp_enabled = 1, totp_last_step = $1 WHERE address = $2 AND totp_secret <> ''",
        )
        .bind(step)
        .bind(address)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(DirectoryError::NotFound(format!("a pending second factor of {address}")));
        }
        Ok(())
    }

    /// Record that the code of `step` was used; false if that step (or a later one) was
    /// used already, so a code seen over someone's shoulder cannot log in again.
    pub async fn use_totp_step(&self, address: &str, step: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE accounts SET totp_last_step = $1 WHERE address = $2 AND totp_last_step < $1")
                .bind(step)
                .bind(address)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Use up a recovery code; false if there is no such (unused) code.
    pub async fn use_recovery_code(&self, address: &str, digest: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM recovery_codes WHERE address = $1 AND digest = $2")
            .bind(address)
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn recovery_codes_left(&self, address: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM recovery_codes WHERE address = $1")
            .bind(address)
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// A new app password for the account, stored as `digest`. Names are unique per
    /// account (they are how a user tells devices apart and removes one).
    pub async fn add_app_password(&self, address: &Address, name: &str, digest: &str) -> Result<AppPassword> {
        let key = address.to_string();
        if self.get_account(address).await?.is_none() {
            return Err(DirectoryError::NotFound(format!("account {key}")));
        }
        if self.list_app_passwords(address).await?.iter().any(|p| p.name == name) {
            return Err(DirectoryError::Duplicate(format!("app password {name:?} of {key}")));
        }
        let p = AppPassword {
            id: super::secret::random_symbols(8),
            address: key,
            name: name.to_owned(),
            created: now_secs(),
            last_used: 0,
        };
        sqlx::query("INSERT INTO app_passwords (id, address, name, digest, created, last_used) VALUES ($1, $2, $3, $4, $5, 0)")
            .bind(&p.id)
            .bind(&p.address)
            .bind(&p.name)
            .bind(digest)
            .bind(p.created)
            .execute(&self.pool)
            .await?;
        Ok(p)
    }

    pub async fn list_app_passwords(&self, address: &Address) -> Result<Vec<AppPassword>> {
        let rows = sqlx::query(
            "SELECT id, address, name, created, last_used FROM app_passwords WHERE address = $1 ORDER BY created, name",
        )
        .bind(address.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AppPassword {
                    id: r.try_get("id")?,
                    address: r.try_get("address")?,
                    name: r.try_get("name")?,
                    created: r.try_get("created")?,
                    last_used: r.try_get("last_used")?,
                })
            })
            .collect()
    }

    /// Revoke the app password with this id or name.
    pub async fn remove_app_password(&self, address: &Address, id_or_name: &str) -> Result<AppPassword> {
        let found = self
            .list_app_passwords(address)
            .await?
            .into_iter()
            .find(|p| p.id == id_or_name || p.name == id_or_name)
            .ok_or_else(|| DirectoryError::NotFound(format!("app password {id_or_name:?} of {address}")))?;
        sqlx::query("DELETE FROM app_passwords WHERE id = $1").bind(&found.id).execute(&self.pool).await?;
        Ok(found)
    }

    /// Does `normalized` (see [`super::secret::normalize_app_password`]) match one of the
    /// account's app passwords? Records the use.
    pub(super) async fn use_app_password(&self, address: &str, normalized: &str) -> Result<bool> {
        if normalized.is_empty() {
            return Ok(false);
        }
        let digest = super::secret::digest("app-password", normalized);
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM app_passwords WHERE address = $1 AND digest = $2")
                .bind(address)
                .bind(&digest)
                .fetch_optional(&self.pool)
                .await?;
        let Some(id) = id else { return Ok(false) };
        sqlx::query("UPDATE app_passwords SET last_used = $1 WHERE id = $2")
            .bind(now_secs())
            .bind(&id)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    pub async fn add_token(
        &self,
        id: &str,
        digest: &str,
        name: &str,
        role: Role,
        domains: &[String],
    ) -> Result<ApiToken> {
        for d in domains {
            if !self.is_local_domain(d).await? {
                return Err(DirectoryError::UnknownDomain(d.clone()));
            }
        }
        let t = ApiToken {
            id: id.to_owned(),
            name: name.to_owned(),
            role,
            domains: domains.to_vec(),
            created: now_secs(),
            last_used: 0,
        };
        sqlx::query("INSERT INTO api_tokens (id, digest, name, role, domains, created, last_used) VALUES ($1, $2, $3, $4, $5, $6, 0)")
            .bind(&t.id)
            .bind(digest)
            .bind(&t.name)
            .bind(role.as_str())
            .bind(domains.join(","))
            .bind(t.created)
            .execute(&self.pool)
            .await?;
        Ok(t)
    }

    fn token_from_row(r: &sqlx::any::AnyRow) -> Result<ApiToken> {
        let role: String = r.try_get("role")?;
        let domains: String = r.try_get("domains")?;
        Ok(ApiToken {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            role: Role::parse(&role).unwrap_or(Role::User),
            domains: split_domains(&domains),
            created: r.try_get("created")?,
            last_used: r.try_get("last_used")?,
        })
    }

    /// The token with this id and digest (records the use), or None.
    pub async fn find_token(&self, id: &str, digest: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(
            "SELECT id, digest, name, role, domains, created, last_used FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("digest")?;
        if !super::secret::same(&stored, digest) {
            return Ok(None);
        }
        let t = Self::token_from_row(&row)?;
        let now = now_secs();
        // One write a minute at most: a script calling in a loop should not write each time.
        if now - t.last_used >= 60 {
            sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(t))
    }

    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT id, name, role, domains, created, last_used FROM api_tokens ORDER BY created, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::token_from_row).collect()
    }

    pub async fn remove_token(&self, id: &str) -> Result<ApiToken> {
        let t = self
            .list_tokens()
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| DirectoryError::NotFound(format!("token {id}")))?;
        sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(t)
    }

    pub async fn audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (id, at, actor, client, action, target, domain, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(e.at)
            .bind(&e.actor)
            .bind(&e.client)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.domain)
            .bind(&e.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest `limit` entries, newest first; with `domains`, only those concerning them.
    pub async fn audit_log(&self, limit: u32, domains: Option<&[String]>) -> Result<Vec<AuditEntry>> {
        let mut sql = "SELECT at, actor, client, action, target, domain, detail FROM audit_log".to_owned();
        if let Some(ds) = domains {
            if ds.is_empty() {
                return Ok(vec![]);
            }
            let marks: Vec<String> = (0..ds.len()).map(|i| format!("${}", i + 2)).collect();
            sql += &format!(" WHERE domain IN ({})", marks.join(", "));
        }
        sql += " ORDER BY at DESC, id LIMIT $1";
        let mut q = sqlx::query(&sql).bind(i64::from(limit));
        for d in domains.unwrap_or(&[]) {
            q = q.bind(d);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    client: r.try_get("client")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    domain: r.try_get("domain")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
