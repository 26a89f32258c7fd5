//! The account directory: the answers' domains and the postmaster account. Existing
//! entries are never changed: a rerun does not reset a password, and domains added later
//! with `posthaste domain add` stay.
//!
//! The plan reads a copy of the database, so a dry run cannot change it (opening runs the
//! schema check, which writes).

use std::path::Path;

use anyhow::Context as _;

use super::Ctx;
use crate::directory::{password, Directory};
use crate::install::answers::Password;
use crate::install::plan::{Action, Change, Kind, Op};

/// What the directory holds now.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub domains: Vec<String>,
    /// The postmaster's current password hash, if the account exists.
    pub postmaster_hash: Option<String>,
    /// `postmaster@` sources of aliases (lowercase), and accounts named postmaster.
    pub postmasters: Vec<String>,
}

pub fn snapshot(db: &Path, postmaster: &crate::address::Address) -> anyhow::Result<Snapshot> {
    if !db.exists() {
        return Ok(Snapshot::default());
    }
    let tmp = std::env::temp_dir().join(format!("posthaste-plan-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| {
        // With the write-ahead log, and with a hot rollback journal (an install killed in
        // the middle of a transaction): SQLite rolls that back when the real database is
        // opened, so the copy must be rolled back the same way, or the plan would see rows
        // that are not there (regression: a killed install's rerun found a domain that the
        // apply then did not have).
        for suffix in ["", "-wal", "-journal"] {
            let src = db.with_file_name(format!("directory.db{suffix}"));
            if src.exists() {
                std::fs::copy(&src, tmp.join(format!("directory.db{suffix}")))
                    .with_context(|| format!("cannot read {}", src.display()))?;
            }
        }
        let url = format!("sqlite://{}", tmp.join("directory.db").display());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let dir = Directory::open(&url).await?;
            let domains = dir.list_domains().await?.into_iter().map(|d| d.name).collect();
            let postmaster_hash = dir.get_account(postmaster).await?.map(|a| a.password_hash);
            let mut postmasters: Vec<String> = dir
                .list_aliases(None)
                .await?
                .into_iter()
                .map(|a| a.source)
                .chain(dir.list_accounts(None).await?.into_iter().map(|a| a.address))
                .filter(|a| a.to_ascii_lowercase().starts_with("postmaster@"))
                .collect();
            postmasters.dedup();
            anyhow::Ok(Snapshot { domains, postmaster_hash, postmasters })
        })
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.with_context(|| format!("cannot read the account directory {}", db.display()))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The changes, and the postmaster hash the answers file records.
pub fn plan(ctx: &Ctx, warnings: &mut Vec<String>) -> anyhow::Result<(Vec<Change>, String)> {
    let pm = &ctx.answers.postmaster;
    let snap = snapshot(&ctx.host.path(ctx.layout.db()), &pm.address)?;
    let mut changes = Vec::new();
    for d in &ctx.answers.domains {
        if snap.domains.contains(d) {
            changes.push(Change::none(Kind::Domain, d));
        } else {
            changes.push(Change::new(Kind::Domain, d, Action::Create, Op::AddDomain { name: d.clone() }));
        }
        // The DKIM keys: made with the domain, and on a rerun if one is missing; existing
        // keys are never replaced (their records are published).
        let target = format!("dkim {d}");
        let dkim_dir = ctx.layout.dkim_dir();
        if crate::mailauth::keys::missing(&ctx.host.path(&dkim_dir), d) {
            changes.push(
                Change::new(Kind::Key, target, Action::Create, Op::DkimKeys { domain: d.clone(), dkim_dir })
                    .note("Ed25519 and RSA-2048 DKIM keys (publish them: posthaste dns)"),
            );
        } else {
            changes.push(Change::none(Kind::Key, target));
        }
    }
    let address = pm.address.to_string();
    let hash = match (&snap.postmaster_hash, &pm.password) {
        (Some(current), wanted) => {
            let differs = match wanted {
                Password::Plain(p) => !password::verify(current, p),
                Password::Hash(h) => h != current,
            };
            if differs {
                warnings.push(format!(
                    "{address} already exists with another password; a rerun never changes passwords (to change it: posthaste user passwd {address})"
                ));
            }
            changes.push(Change::none(Kind::User, &address));
            current.clone()
        }
        (None, wanted) => {
            let hash = match wanted {
                Password::Plain(p) => password::hash(p),
                Password::Hash(h) => h.clone(),
            };
            changes.push(
                Change::new(
                    Kind::User,
                    &address,
                    Action::Create,
                    Op::AddAccount { address: address.clone(), hash: hash.clone() },
                )
                .note("postmaster account and its Maildir"),
            );
            hash
        }
    };
    // RFC 5321 §4.5.1: every domain has a postmaster. With an account of another name as
    // the answers' postmaster (`postmaster: {address: alice@…}`), postmaster@ of the first
    // domain becomes an alias to it; every other domain's postmaster@ reaches the first
    // postmaster@ the directory has (`Directory::postmaster_route`), so one alias serves all.
    if pm.address.local() != "postmaster" {
        if let Some(first) = ctx.answers.domains.first() {
            let source = format!("postmaster@{first}");
            if snap.postmasters.iter().any(|p| p.eq_ignore_ascii_case(&source)) {
                changes.push(Change::none(Kind::User, &source));
            } else {
                changes.push(
                    Change::new(
                        Kind::User,
                        &source,
                        Action::Create,
                        Op::AddAlias { source: source.clone(), destination: address.clone() },
                    )
                    .note(format!("alias to {address}: every domain's postmaster@ reaches it")),
                );
            }
        }
    }
    Ok((changes, hash))
}
