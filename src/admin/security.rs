//! `posthaste user set --role`, `user 2fa …` and `user app-password …`: who may use the
//! web admin, the second factor of web logins (TOTP, RFC 6238, with recovery codes) and
//! the per-device passwords mail clients use instead of the account password.
//!
//! App passwords work for IMAP, POP3, SMTP submission and ManageSieve (everything that
//! goes through `Directory::authenticate`), never for the web (`authenticate_web`). Once an
//! account has a second factor, its account password no longer opens the mail protocols:
//! a stolen password alone would otherwise skip the second factor.

use serde::Serialize;

use super::{Error, Result};
use crate::address::Address;
use crate::directory::{secret, totp, AppPassword, Directory, DirectoryError, Role, WebAccess};

/// How many recovery codes a user gets (each works once).
pub const RECOVERY_CODES: usize = 10;

async fn access(dir: &Directory, address: &Address) -> Result<WebAccess> {
    dir.web_access(address)
        .await?
        .ok_or_else(|| DirectoryError::NotFound(format!("account {address}")).into())
}

/// The account's role and domains, and whether it has a second factor.
pub async fn show(dir: &Directory, address: &Address) -> Result<WebAccess> {
    access(dir, address).await
}

/// Give `address` a role. A domain admin needs its domains; the others take none.
pub async fn set_role(
    dir: &Directory,
    address: &Address,
    role: Role,
    domains: &[String],
) -> Result<super::user::Changed<WebAccess>> {
    match role {
        Role::DomainAdmin if domains.is_empty() => {
            return Err(Error::invalid("a domain admin needs the domains it manages")
                .help(format!("pass --domains example.org,example.net (see `posthaste domain list`)")));
        }
        Role::Admin | Role::User if !domains.is_empty() => {
            return Err(Error::invalid(format!(
                "--domains is for --role domain-admin; a {} has none",
                role.as_str()
            ))
            .help("leave out --domains, or pass --role domain-admin"));
        }
        _ => {}
    }
    let before = access(dir, address).await?;
    dir.set_role(address, role, domains).await?;
    let after = access(dir, address).await?;
    Ok(super::user::Changed { address: address.to_string(), before, after })
}

/// A second factor as it is handed to the user: the secret (base32), the `otpauth://` URI
/// authenticator apps import, and the recovery codes (each shown once).
#[derive(Debug, Clone, Serialize)]
pub struct TwoFactor {
    pub address: String,
    pub secret: String,
    pub uri: String,
    /// Empty while waiting for the first code (the web's enrolment).
    pub recovery_codes: Vec<String>,
}

fn recovery_digest(code: &str) -> String {
    secret::digest("recovery-code", &secret::normalize_app_password(code))
}

fn new_codes() -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| secret::new_recovery_code()).collect();
    let digests = codes.iter().map(|c| recovery_digest(c)).collect();
    (codes, digests)
}

/// Turn the second factor on now (the CLI: the administrator hands the secret over), with
/// new recovery codes. Replaces an existing secret.
pub async fn enable_2fa(dir: &Directory, issuer: &str, address: &Address) -> Result<TwoFactor> {
    access(dir, address).await?;
    let s = totp::new_secret();
    let (codes, digests) = new_codes();
    dir.set_totp(&address.to_string(), &s, true, &digests).await?;
    Ok(TwoFactor {
        address: address.to_string(),
        uri: totp::uri(&s, issuer, &address.to_string()),
        secret: s,
        recovery_codes: codes,
    })
}

/// The web's enrolment, step 1: a new secret, not yet in force (a second factor the user
/// cannot produce would lock them out). An existing, confirmed one stays until step 2.
pub async fn begin_2fa(dir: &Directory, issuer: &str, address: &Address) -> Result<TwoFactor> {
    let state = dir.totp_state(&address.to_string()).await?;
    if state.enabled {
        return Err(Error::exists(format!("{address} has a second factor already"))
            .help("turn it off first (that needs a current code), then set up the new device"));
    }
    let s = totp::new_secret();
    dir.set_totp(&address.to_string(), &s, false, &[]).await?;
    Ok(TwoFactor {
        address: address.to_string(),
        uri: totp::uri(&s, issuer, &address.to_string()),
        secret: s,
        recovery_codes: vec![],
    })
}

/// Step 2: the first code from the app proves it holds the secret; the factor is then in
/// force and the recovery codes are returned (once).
pub async fn confirm_2fa(dir: &Directory, address: &Address, code: &str, now: u64) -> Result<Vec<String>> {
    let key = address.to_string();
    let state = dir.totp_state(&key).await?;
    if state.enabled || state.secret.is_empty() {
        return Err(Error::refused("there is no second factor waiting for confirmation")
            .help("start the setup again"));
    }
    let Some(step) = totp::verify(&state.secret, code, now) else {
        return Err(Error::invalid("that code does not match")
            .help("type the six digits the app shows now; check that this device's clock is right"));
    };
    let (codes, digests) = new_codes();
    dir.set_totp(&key, &state.secret, true, &digests).await?;
    dir.enable_totp(&key, step as i64).await?;
    Ok(codes)
}

/// Is `code` a valid, unused TOTP code or recovery code of the account? A recovery code
/// is used up. For web logins and for turning the factor off.
pub async fn check_second_factor(dir: &Directory, address: &str, code: &str, now: u64) -> Result<bool> {
    let state = dir.totp_state(address).await?;
    if !state.enabled {
        return Ok(true);
    }
    let trimmed = code.trim();
    if trimmed.len() == totp::DIGITS as usize && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(match totp::verify(&state.secret, trimmed, now) {
            Some(step) => dir.use_totp_step(address, step as i64).await?,
            None => false,
        });
    }
    Ok(dir.use_recovery_code(address, &recovery_digest(trimmed)).await?)
}

/// Turn the second factor off (the account password alone logs in again, and opens the
/// mail protocols again).
pub async fn disable_2fa(dir: &Directory, address: &Address) -> Result<bool> {
    let was = access(dir, address).await?.totp;
    dir.set_totp(&address.to_string(), "", false, &[]).await?;
    Ok(was)
}

/// New recovery codes (the old ones stop working).
pub async fn new_recovery_codes(dir: &Directory, address: &Address) -> Result<Vec<String>> {
    let key = address.to_string();
    let state = dir.totp_state(&key).await?;
    if !state.enabled {
        return Err(Error::refused(format!("{address} has no second factor"))
            .help(format!("`posthaste user 2fa enable {address}` sets one up")));
    }
    let (codes, digests) = new_codes();
    dir.set_totp(&key, &state.secret, true, &digests).await?;
    Ok(codes)
}

#[derive(Debug, Clone, Serialize)]
pub struct TwoFactorStatus {
    pub address: String,
    pub enabled: bool,
    pub recovery_codes_left: u64,
}

pub async fn status_2fa(dir: &Directory, address: &Address) -> Result<TwoFactorStatus> {
    let a = access(dir, address).await?;
    Ok(TwoFactorStatus {
        address: a.address.clone(),
        enabled: a.totp,
        recovery_codes_left: if a.totp { dir.recovery_codes_left(&a.address).await? } else { 0 },
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct NewAppPassword {
    #[serde(flatten)]
    pub app_password: AppPassword,
    /// Shown once: only its digest is kept.
    pub password: String,
}

/// A new app password called `name` (the device or program, unique per account).
pub async fn add_app_password(dir: &Directory, address: &Address, name: &str) -> Result<NewAppPassword> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::invalid("an app password needs a name of 1 to 64 characters")
            .help("name the device or program that will use it, e.g. \"phone\" or \"Thunderbird at home\""));
    }
    let password = secret::new_app_password();
    let digest = secret::digest("app-password", &secret::normalize_app_password(&password));
    let app_password = dir.add_app_password(address, name, &digest).await.map_err(|e| match e {
        DirectoryError::Duplicate(_) => {
            Error::exists(format!("{address} has an app password called {name:?} already"))
                .help("choose another name, or remove that one first")
        }
        other => other.into(),
    })?;
    Ok(NewAppPassword { app_password, password })
}

pub async fn list_app_passwords(dir: &Directory, address: &Address) -> Result<Vec<AppPassword>> {
    access(dir, address).await?;
    Ok(dir.list_app_passwords(address).await?)
}

/// Revoke one (by id or name): mail clients using it can no longer log in.
pub async fn remove_app_password(
    dir: &Directory,
    address: &Address,
    id_or_name: &str,
) -> Result<AppPassword> {
    dir.remove_app_password(address, id_or_name).await.map_err(|e| match e {
        DirectoryError::NotFound(what) => Error::not_found(format!("{what} does not exist"))
            .help(format!("`posthaste user app-password list {address}` shows them")),
        other => other.into(),
    })
}
