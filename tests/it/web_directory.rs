//! The directory's web parts on SQLite and PostgreSQL alike: the schema 1 → 2 migration on
//! a database with accounts in it, roles, app passwords (the mail path accepts them, the
//! web path never), what an account's or domain's removal takes with it, TOTP replay and
//! recovery codes, API tokens and the audit log's domain filter.

use crate::support::postgres;

use posthaste::address::Address;
use posthaste::admin;
use posthaste::directory::{AuditEntry, Directory, Role, SCHEMA_VERSION};

const HASH: &str = "{SHA256-CRYPT}$5$pepper$I4JtT7ItqoiFALROk4x2EglL0RlsbnhesIq3gG3GPF.";
const PASSWORD: &str = "correct horse";

struct Backend {
    url: String,
    _tmp: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("directory.db").display());
    Backend { url, _tmp: Some(tmp) }
}

async fn postgresql() -> Backend {
    let url = tokio::task::spawn_blocking(postgres::postgres_url_for_new_db).await.unwrap();
    Backend { url, _tmp: None }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let b = super::sqlite().await;
                super::$case(&b.url).await;
            })*
        }
        mod postgresql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let b = super::postgresql().await;
                super::$case(&b.url).await;
            })*
        }
    };
}

on_both_backends!(
    schema_1_databases_are_upgraded_with_their_accounts,
    roles_and_what_removals_take_with_them,
    app_passwords_open_mail_but_not_the_web,
    second_factor_codes_work_once,
    tokens_and_the_audit_log,
);

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

/// A database as schema version 1 left it (the tables of the first release), with an
/// account, opened by this build.
async fn schema_1_databases_are_upgraded_with_their_accounts(url: &str) {
    sqlx::any::install_default_drivers();
    if url.starts_with("sqlite") {
        let path = url.strip_prefix("sqlite://").unwrap();
        std::fs::File::create(path).unwrap();
    }
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    for sql in [
        "CREATE TABLE schema_version (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO schema_version (id, version) VALUES (1, 1)",
        "CREATE TABLE domains (name TEXT PRIMARY KEY, serial BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE accounts (address TEXT PRIMARY KEY, domain TEXT NOT NULL REFERENCES domains (name), password_hash TEXT NOT NULL, quota BIGINT NOT NULL DEFAULT 0, enabled BIGINT NOT NULL DEFAULT 1)",
        "CREATE TABLE aliases (source TEXT NOT NULL, domain TEXT NOT NULL REFERENCES domains (name), destination TEXT NOT NULL, PRIMARY KEY (source, destination))",
        "INSERT INTO domains (name) VALUES ('example.test')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    sqlx::query("INSERT INTO accounts (address, domain, password_hash) VALUES ('old@example.test', 'example.test', $1)")
        .bind(HASH)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let dir = Directory::open(url).await.unwrap();
    assert_eq!(dir.schema_version().await.unwrap(), SCHEMA_VERSION);
    let a = dir.web_access(&addr("old@example.test")).await.unwrap().unwrap();
    assert_eq!((a.role, a.totp), (Role::User, false));
    assert!(dir.authenticate("old@example.test", PASSWORD).await.unwrap().is_some());
    // A second open finds it current.
    drop(dir);
    let again = Directory::open(url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
}

async fn setup(url: &str) -> Directory {
    let dir = Directory::open(url).await.unwrap();
    dir.add_domain("example.test").await.unwrap();
    dir.add_domain("other.test").await.unwrap();
    for a in ["ann@example.test", "bob@example.test", "zed@other.test"] {
        dir.add_account(&addr(a), HASH, 0).await.unwrap();
    }
    dir
}

async fn roles_and_what_removals_take_with_them(url: &str) {
    let dir = setup(url).await;
    let bob = addr("bob@example.test");
    let c = admin::security::set_role(
        &dir,
        &bob,
        Role::DomainAdmin,
        &["Other.Test".into(), "example.test".into()],
    )
    .await
    .unwrap();
    assert_eq!(c.after.domains, ["example.test", "other.test"]);
    let e = admin::security::set_role(&dir, &bob, Role::DomainAdmin, &[]).await.unwrap_err();
    assert!(e.help_text().unwrap().contains("--domains"), "{e}");
    let e =
        admin::security::set_role(&dir, &bob, Role::DomainAdmin, &["nope.test".into()]).await.unwrap_err();
    assert_eq!(e.kind(), admin::Kind::NotFound);
    assert_eq!(dir.list_admins().await.unwrap().len(), 1);
    // The other domain goes: bob no longer manages it, even if it comes back.
    dir.remove_domain_and_references("other.test", true).await.unwrap();
    dir.add_domain("other.test").await.unwrap();
    assert_eq!(dir.web_access(&bob).await.unwrap().unwrap().domains, ["example.test"]);
    // Bob goes: a new bob has no rights and no app passwords.
    admin::security::add_app_password(&dir, &bob, "phone").await.unwrap();
    dir.remove_account(&bob).await.unwrap();
    dir.add_account(&bob, HASH, 0).await.unwrap();
    let fresh = dir.web_access(&bob).await.unwrap().unwrap();
    assert_eq!((fresh.role, fresh.domains.len()), (Role::User, 0));
    assert!(dir.list_app_passwords(&bob).await.unwrap().is_empty());
}

async fn app_passwords_open_mail_but_not_the_web(url: &str) {
    let dir = setup(url).await;
    let ann = addr("ann@example.test");
    let n = admin::security::add_app_password(&dir, &ann, "phone").await.unwrap();
    assert!(dir.authenticate("ann@example.test", &n.password).await.unwrap().is_some());
    assert!(dir
        .authenticate("ann@example.test", &n.password.replace('-', " ").to_uppercase())
        .await
        .unwrap()
        .is_some());
    assert!(dir.authenticate_web("ann@example.test", &n.password).await.unwrap().is_none());
    // Another account's app password is not this one's.
    assert!(dir.authenticate("bob@example.test", &n.password).await.unwrap().is_none());
    let listed = dir.list_app_passwords(&ann).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used > 0, "the login was recorded");
    let e = admin::security::add_app_password(&dir, &ann, "phone").await.unwrap_err();
    assert_eq!(e.kind(), admin::Kind::Exists);
    // A disabled account: neither.
    dir.set_enabled(&ann, false).await.unwrap();
    assert!(dir.authenticate("ann@example.test", &n.password).await.unwrap().is_none());
    dir.set_enabled(&ann, true).await.unwrap();
    admin::security::remove_app_password(&dir, &ann, "phone").await.unwrap();
    assert!(dir.authenticate("ann@example.test", &n.password).await.unwrap().is_none());
}

async fn second_factor_codes_work_once(url: &str) {
    let dir = setup(url).await;
    let ann = addr("ann@example.test");
    let t = admin::security::begin_2fa(&dir, "mail.example.test", &ann).await.unwrap();
    assert!(!dir.web_access(&ann).await.unwrap().unwrap().totp, "not in force before the first code");
    let now = 1_800_000_000;
    let code = posthaste::directory::totp::code_at(&t.secret, now).unwrap();
    assert!(admin::security::confirm_2fa(&dir, &ann, "123456", now).await.is_err());
    let recovery = admin::security::confirm_2fa(&dir, &ann, &code, now).await.unwrap();
    assert_eq!(recovery.len(), 10);
    // The confirming code was used: not again, the next step's is.
    assert!(!admin::security::check_second_factor(&dir, "ann@example.test", &code, now).await.unwrap());
    let next = posthaste::directory::totp::code_at(&t.secret, now + 30).unwrap();
    assert!(admin::security::check_second_factor(&dir, "ann@example.test", &next, now + 30).await.unwrap());
    assert!(admin::security::check_second_factor(&dir, "ann@example.test", &recovery[3], now).await.unwrap());
    assert!(!admin::security::check_second_factor(&dir, "ann@example.test", &recovery[3], now)
        .await
        .unwrap());
    assert_eq!(admin::security::status_2fa(&dir, &ann).await.unwrap().recovery_codes_left, 9);
    // With the factor on, the account password no longer opens the mail protocols.
    assert!(dir.authenticate("ann@example.test", PASSWORD).await.unwrap().is_none());
    assert!(dir.authenticate_web("ann@example.test", PASSWORD).await.unwrap().is_some());
    assert!(admin::security::disable_2fa(&dir, &ann).await.unwrap());
    assert!(dir.authenticate("ann@example.test", PASSWORD).await.unwrap().is_some());
}

async fn tokens_and_the_audit_log(url: &str) {
    let dir = setup(url).await;
    let c = admin::token::create(&dir, Role::DomainAdmin, &["example.test".into()], "script").await.unwrap();
    let t = admin::token::authenticate(&dir, &c.secret).await.unwrap().unwrap();
    assert_eq!((t.role, t.domains.clone()), (Role::DomainAdmin, vec!["example.test".to_owned()]));
    assert!(admin::token::authenticate(&dir, &format!("{}x", c.secret)).await.unwrap().is_none());
    assert!(admin::token::create(&dir, Role::User, &[], "").await.is_err());
    assert!(admin::token::create(&dir, Role::Admin, &["example.test".into()], "").await.is_err());
    assert!(dir.list_tokens().await.unwrap().iter().all(|t| !format!("{t:?}").contains(&c.secret[12..])));
    admin::token::revoke(&dir, &t.id).await.unwrap();
    assert!(admin::token::authenticate(&dir, &c.secret).await.unwrap().is_none());
    for (i, domain) in ["example.test", "other.test", ""].iter().enumerate() {
        let e = AuditEntry {
            at: 1_000 + i as i64,
            actor: "admin@example.test".into(),
            client: "192.0.2.1".into(),
            action: "user.add".into(),
            target: format!("t{i}"),
            domain: domain.to_string(),
            detail: String::new(),
        };
        dir.audit(&e).await.unwrap();
    }
    let all = dir.audit_log(10, None).await.unwrap();
    assert_eq!(all.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["t2", "t1", "t0"], "newest first");
    let mine = dir.audit_log(10, Some(&["example.test".into()])).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].target, "t0");
}
