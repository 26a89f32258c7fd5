//! `posthaste token create|list|revoke`: bearer tokens for `/api/v1/` (src/web/api.rs).
//!
//! A token is `ph_ID_SECRET`: the id finds the row, the secret (32 symbols, 160 bits) is
//! kept as a digest only, so the database never holds a usable token. It is shown once.

use serde::Serialize;

use super::{Error, Result};
use crate::directory::{secret, ApiToken, Directory, Role};

#[derive(Debug, Clone, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub token: ApiToken,
    /// The bearer token, shown once: only its digest is kept.
    pub secret: String,
}

fn digest(secret_part: &str) -> String {
    secret::digest("api-token", secret_part)
}

/// A new token with `role` (admin or domain-admin; a domain admin token needs domains).
pub async fn create(dir: &Directory, role: Role, domains: &[String], name: &str) -> Result<Created> {
    match role {
        Role::User => {
            return Err(Error::invalid("a token's role is admin or domain-admin")
                .help("users log in to /account/ with their password; pass --role admin, or --role domain-admin --domain DOMAIN"))
        }
        Role::DomainAdmin if domains.is_empty() => {
            return Err(Error::invalid("a domain-admin token needs the domains it may manage")
                .help("add --domain example.org (repeat it for more)"))
        }
        Role::Admin if !domains.is_empty() => {
            return Err(Error::invalid("an admin token manages every domain; --domain is for --role domain-admin")
                .help("leave out --domain, or pass --role domain-admin"))
        }
        _ => {}
    }
    let mut names = Vec::new();
    for d in domains {
        names.push(super::domain::existing(dir, d).await?);
    }
    let id = secret::random_symbols(8);
    let secret_part = secret::random_symbols(32);
    let token = dir.add_token(&id, &digest(&secret_part), name, role, &names).await?;
    Ok(Created { token, secret: format!("ph_{id}_{secret_part}") })
}

pub async fn list(dir: &Directory) -> Result<Vec<ApiToken>> {
    Ok(dir.list_tokens().await?)
}

pub async fn revoke(dir: &Directory, id: &str) -> Result<ApiToken> {
    dir.remove_token(id).await.map_err(|e| Error::from(e).help("`posthaste token list` shows the token ids"))
}

/// The token a bearer string names, if it is one of ours and not revoked.
pub async fn authenticate(dir: &Directory, bearer: &str) -> Result<Option<ApiToken>> {
    let Some(rest) = bearer.strip_prefix("ph_") else { return Ok(None) };
    let Some((id, secret_part)) = rest.split_once('_') else { return Ok(None) };
    Ok(dir.find_token(id, &digest(secret_part)).await?)
}
