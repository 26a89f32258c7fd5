//! The account directory against real databases: every case runs once on a fresh SQLite file
//! and once on a fresh PostgreSQL database (see `support/postgres.rs`), because the point of
//! the single `Any` code path is that both behave the same.

use crate::support::postgres;

use std::time::{Duration, Instant};

use posthaste::address::Address;
use posthaste::directory::{
    password, Directory, DirectoryError, DomainRemoval, PostmasterRoute, RemovedDomain, Target,
    SCHEMA_VERSION,
};

/// A directory on a fresh database; holds what must outlive the test (the SQLite temp dir).
struct Backend {
    dir: Directory,
    url: String,
    _tmp: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("directory.db").display());
    let dir = Directory::open(&url).await.unwrap();
    Backend { dir, url, _tmp: Some(tmp) }
}

async fn postgresql() -> Backend {
    let url = tokio::task::spawn_blocking(postgres::postgres_url_for_new_db).await.unwrap();
    let dir = Directory::open(&url).await.unwrap();
    Backend { dir, url, _tmp: None }
}

/// Each listed `async fn case(&Backend)` becomes `sqlite::case` and `postgresql::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = super::sqlite().await;
                super::$case(&backend).await;
            })*
        }
        mod postgresql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = super::postgresql().await;
                super::$case(&backend).await;
            })*
        }
    };
}

on_both_backends!(
    schema_is_created_once_and_reopens,
    concurrent_opens_agree,
    domains_add_list_remove,
    remove_domain_refused_unless_forced,
    accounts_crud,
    duplicates_and_unknown_domains,
    aliases_with_catch_all_and_external_destinations,
    resolve_order_and_plus_addressing,
    alias_loops_and_depth_are_cut,
    authenticate_right_wrong_disabled_unknown,
    authenticate_imported_hashes,
    may_send_as_rules,
    json_shape_of_lists,
    shared_postmaster_alias_cycles_and_references_into_a_domain,
);

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}
fn local(s: &str) -> Target {
    Target::Local(addr(s))
}
fn remote(s: &str) -> Target {
    Target::Remote(addr(s))
}

/// `doveadm pw -s SHA256-CRYPT`-style hash of "correct horse", made with
/// `openssl passwd -5 -salt pepper 'correct horse'` (OpenSSL 3.0) and prefixed by hand. Cheap
/// to verify, which keeps the tests that only need *some* valid hash fast in debug builds.
const CHEAP_HASH: &str = "{SHA256-CRYPT}$5$pepper$I4JtT7ItqoiFALROk4x2EglL0RlsbnhesIq3gG3GPF.";

async fn schema_is_created_once_and_reopens(b: &Backend) {
    assert_eq!(b.dir.schema_version().await.unwrap(), SCHEMA_VERSION);
    b.dir.add_domain("example.test").await.unwrap();
    // A second open (the daemon while the CLI has it open) sees the data and changes nothing.
    let again = Directory::open(&b.url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(again.list_domains().await.unwrap().len(), 1);
    if let Some(tmp) = &b._tmp {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("directory.db")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the database holds password hashes");
    }
}

async fn concurrent_opens_agree(b: &Backend) {
    // A new, empty database opened by several "processes" at once: all must succeed and the
    // schema must be applied once. For SQLite that is a second file; for PostgreSQL a second DB.
    let url = match &b._tmp {
        Some(tmp) => format!("sqlite://{}", tmp.path().join("race.db").display()),
        None => tokio::task::spawn_blocking(postgres::postgres_url_for_new_db).await.unwrap(),
    };
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Directory::open(&url).await })
    });
    for open in futures::future::join_all(opens).await {
        let dir = open.unwrap().unwrap();
        assert_eq!(dir.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
}

async fn domains_add_list_remove(b: &Backend) {
    let d = &b.dir;
    assert_eq!(d.add_domain("Example.TEST.").await.unwrap().name, "example.test");
    d.add_domain("b.example").await.unwrap();
    assert!(
        matches!(d.add_domain("EXAMPLE.test").await, Err(DirectoryError::Duplicate(m)) if m.contains("example.test"))
    );
    for bad in ["", "localhost", "no spaces.test", "-x.test", "a@b.test"] {
        assert!(matches!(d.add_domain(bad).await, Err(DirectoryError::InvalidDomain(_))), "{bad:?} accepted");
    }
    let names: Vec<String> = d.list_domains().await.unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["b.example", "example.test"]);
    assert!(d.is_local_domain("EXAMPLE.test").await.unwrap());
    assert!(!d.is_local_domain("other.test").await.unwrap());
    assert!(!d.is_local_domain("not a domain").await.unwrap());

    d.remove_domain("b.example", false).await.unwrap();
    assert!(!d.is_local_domain("b.example").await.unwrap());
    assert!(matches!(d.remove_domain("b.example", false).await, Err(DirectoryError::NotFound(_))));
    assert!(matches!(d.remove_domain("bad", true).await, Err(DirectoryError::InvalidDomain(_))));
}

async fn remove_domain_refused_unless_forced(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    d.add_domain("keep.test").await.unwrap();
    d.add_account(&addr("alice@example.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_alias("info@example.test", &addr("alice@example.test")).await.unwrap();
    d.add_alias("info@example.test", &addr("bob@elsewhere.test")).await.unwrap();
    d.add_alias("@example.test", &addr("alice@example.test")).await.unwrap();
    d.add_account(&addr("carol@keep.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_alias("x@keep.test", &addr("alice@example.test")).await.unwrap();

    match d.remove_domain("example.test", false).await {
        Err(DirectoryError::DomainNotEmpty { domain, accounts: 1, aliases: 2, inbound: 0 }) => {
            assert_eq!(domain, "example.test")
        }
        other => panic!("expected DomainNotEmpty with 1 account and 2 aliases, got {other:?}"),
    }
    // Refusal changed nothing.
    assert!(d.is_local_domain("example.test").await.unwrap());
    assert_eq!(d.list_accounts(Some("example.test")).await.unwrap().len(), 1);
    assert_eq!(d.list_aliases(Some("example.test")).await.unwrap().len(), 2);

    d.remove_domain("example.test", true).await.unwrap();
    assert!(!d.is_local_domain("example.test").await.unwrap());
    assert!(d.get_account(&addr("alice@example.test")).await.unwrap().is_none());
    let rest: Vec<String> = d.list_aliases(None).await.unwrap().into_iter().map(|a| a.source).collect();
    assert_eq!(rest, ["x@keep.test"], "only the other domain's aliases are left");
    assert_eq!(d.list_accounts(None).await.unwrap().len(), 1);

    // Added again, the domain starts empty: nothing was left behind.
    d.add_domain("example.test").await.unwrap();
    assert!(d.list_accounts(Some("example.test")).await.unwrap().is_empty());
    assert!(d.list_aliases(Some("example.test")).await.unwrap().is_empty());
    assert_eq!(d.resolve(&addr("anyone@example.test")).await.unwrap(), None);
}

async fn accounts_crud(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    d.add_domain("b.example").await.unwrap();
    let alice = addr("Alice@Example.test");
    let created = d.add_account(&alice, CHEAP_HASH, 1 << 30).await.unwrap();
    assert_eq!(
        (created.address.as_str(), created.quota, created.enabled),
        ("alice@example.test", 1 << 30, true)
    );
    d.add_account(&addr("zed@b.example"), CHEAP_HASH, 0).await.unwrap();
    d.add_account(&addr("bob@example.test"), CHEAP_HASH, 0).await.unwrap();

    let got = d.get_account(&addr("alice@example.test")).await.unwrap().unwrap();
    assert_eq!(got, created);
    assert!(d.get_account(&addr("nobody@example.test")).await.unwrap().is_none());

    let all: Vec<String> = d.list_accounts(None).await.unwrap().into_iter().map(|a| a.address).collect();
    assert_eq!(all, ["alice@example.test", "bob@example.test", "zed@b.example"]);
    let one: Vec<String> =
        d.list_accounts(Some("B.Example")).await.unwrap().into_iter().map(|a| a.address).collect();
    assert_eq!(one, ["zed@b.example"]);
    assert!(matches!(d.list_accounts(Some("other.test")).await, Err(DirectoryError::UnknownDomain(_))));

    let new_hash = password::hash("new secret");
    d.set_password(&alice, &new_hash).await.unwrap();
    d.set_quota(&alice, 0).await.unwrap();
    d.set_enabled(&alice, false).await.unwrap();
    let got = d.get_account(&alice).await.unwrap().unwrap();
    assert_eq!((got.password_hash.as_str(), got.quota, got.enabled), (new_hash.as_str(), 0, false));
    d.set_enabled(&alice, true).await.unwrap();
    assert!(d.get_account(&alice).await.unwrap().unwrap().enabled);

    // Hashes must be in a {SCHEME} form we can verify; a plaintext password is refused.
    assert!(matches!(d.set_password(&alice, "plaintext").await, Err(DirectoryError::Other(_))));
    assert!(matches!(
        d.add_account(&addr("c@example.test"), "{PLAIN}x", 0).await,
        Err(DirectoryError::Other(_))
    ));
    assert!(matches!(d.set_quota(&alice, u64::MAX).await, Err(DirectoryError::Other(_))));

    let ghost = addr("ghost@example.test");
    assert!(matches!(d.set_password(&ghost, CHEAP_HASH).await, Err(DirectoryError::NotFound(_))));
    assert!(matches!(d.set_quota(&ghost, 1).await, Err(DirectoryError::NotFound(_))));
    assert!(matches!(d.set_enabled(&ghost, true).await, Err(DirectoryError::NotFound(_))));

    d.remove_account(&alice).await.unwrap();
    assert!(d.get_account(&alice).await.unwrap().is_none());
    assert!(matches!(d.remove_account(&alice).await, Err(DirectoryError::NotFound(_))));
}

async fn duplicates_and_unknown_domains(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    let alice = addr("alice@example.test");
    d.add_account(&alice, CHEAP_HASH, 0).await.unwrap();

    let dup = d.add_account(&addr("ALICE@example.TEST"), CHEAP_HASH, 0).await;
    assert!(matches!(dup, Err(DirectoryError::Duplicate(m)) if m == "account alice@example.test"));
    assert!(matches!(
        d.add_account(&addr("alice@other.test"), CHEAP_HASH, 0).await,
        Err(DirectoryError::UnknownDomain(dom)) if dom == "other.test"
    ));
    assert!(matches!(d.add_alias("info@other.test", &alice).await, Err(DirectoryError::UnknownDomain(_))));
    assert!(matches!(d.add_alias("@other.test", &alice).await, Err(DirectoryError::UnknownDomain(_))));
    assert!(matches!(d.add_alias("not an address", &alice).await, Err(DirectoryError::InvalidAddress(_))));
    assert!(matches!(d.add_alias("@bad", &alice).await, Err(DirectoryError::InvalidDomain(_))));

    d.add_alias("info@example.test", &alice).await.unwrap();
    assert!(matches!(
        d.add_alias("Info@example.test", &alice).await,
        Err(DirectoryError::Duplicate(m)) if m.contains("info@example.test")
    ));
    // An address is an account or an alias, never both, in either order.
    assert!(matches!(
        d.add_account(&addr("info@example.test"), CHEAP_HASH, 0).await,
        Err(DirectoryError::Duplicate(m)) if m == "alias info@example.test"
    ));
    assert!(matches!(
        d.add_alias("alice@example.test", &addr("bob@elsewhere.test")).await,
        Err(DirectoryError::Duplicate(m)) if m == "account alice@example.test"
    ));
    assert!(matches!(
        d.add_alias("self@example.test", &addr("self@example.test")).await,
        Err(DirectoryError::Other(_))
    ));
    // The error messages carry the CLI's help.
    let e = d.add_account(&addr("x@nowhere.test"), CHEAP_HASH, 0).await.unwrap_err();
    assert!(e.to_string().contains("posthaste domain add nowhere.test"), "{e}");
}

async fn aliases_with_catch_all_and_external_destinations(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    d.add_domain("b.example").await.unwrap();
    d.add_account(&addr("alice@example.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_account(&addr("bob@example.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_alias("team@example.test", &addr("bob@example.test")).await.unwrap();
    d.add_alias("team@example.test", &addr("alice@example.test")).await.unwrap();
    d.add_alias("team@example.test", &addr("Partner@Elsewhere.test")).await.unwrap();
    d.add_alias("@example.test", &addr("alice@example.test")).await.unwrap();
    d.add_alias("sales@b.example", &addr("team@example.test")).await.unwrap();

    let all = d.list_aliases(None).await.unwrap();
    let shape: Vec<(&str, Vec<&str>)> = all
        .iter()
        .map(|a| (a.source.as_str(), a.destinations.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        shape,
        [
            ("sales@b.example", vec!["team@example.test"]),
            ("@example.test", vec!["alice@example.test"]),
            ("team@example.test", vec!["alice@example.test", "bob@example.test", "partner@elsewhere.test"]),
        ]
    );
    assert_eq!(d.list_aliases(Some("b.example")).await.unwrap().len(), 1);
    assert!(matches!(d.list_aliases(Some("other.test")).await, Err(DirectoryError::UnknownDomain(_))));

    assert_eq!(
        d.resolve(&addr("sales@b.example")).await.unwrap().unwrap(),
        [local("alice@example.test"), local("bob@example.test"), remote("partner@elsewhere.test")]
    );

    d.remove_alias("team@example.test", Some(&addr("bob@example.test"))).await.unwrap();
    assert_eq!(
        d.resolve(&addr("team@example.test")).await.unwrap().unwrap(),
        [local("alice@example.test"), remote("partner@elsewhere.test")]
    );
    assert!(matches!(
        d.remove_alias("team@example.test", Some(&addr("bob@example.test"))).await,
        Err(DirectoryError::NotFound(_))
    ));
    d.remove_alias("team@example.test", None).await.unwrap();
    assert!(matches!(d.remove_alias("team@example.test", None).await, Err(DirectoryError::NotFound(_))));
    // With the alias gone, the catch-all takes its mail.
    assert_eq!(d.resolve(&addr("team@example.test")).await.unwrap().unwrap(), [local("alice@example.test")]);
    d.remove_alias("@EXAMPLE.test", None).await.unwrap();
    assert_eq!(d.resolve(&addr("team@example.test")).await.unwrap(), None);
}

async fn resolve_order_and_plus_addressing(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    d.add_account(&addr("alice@example.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_account(&addr("bob@example.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_account(&addr("carol@example.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_alias("info@example.test", &addr("bob@example.test")).await.unwrap();
    d.add_alias("@example.test", &addr("carol@example.test")).await.unwrap();
    // An exact alias on a tagged address beats plus-addressing to the base account.
    d.add_alias("alice+sales@example.test", &addr("bob@example.test")).await.unwrap();

    let cases = [
        ("alice@example.test", local("alice@example.test")),
        ("ALICE@Example.Test", local("alice@example.test")),
        ("alice+news@example.test", local("alice@example.test")),
        ("alice+sales@example.test", local("bob@example.test")),
        ("info@example.test", local("bob@example.test")),
        ("info+x@example.test", local("bob@example.test")),
        ("nobody@example.test", local("carol@example.test")),
        ("nobody+x@example.test", local("carol@example.test")),
    ];
    for (input, want) in cases {
        assert_eq!(d.resolve(&addr(input)).await.unwrap(), Some(vec![want]), "{input}");
    }
    // Not our domain: the address itself, to relay (the SMTP layer decides whether it may).
    assert_eq!(d.resolve(&addr("x@elsewhere.test")).await.unwrap(), Some(vec![remote("x@elsewhere.test")]));

    d.remove_alias("@example.test", None).await.unwrap();
    assert_eq!(d.resolve(&addr("nobody@example.test")).await.unwrap(), None);
    assert_eq!(d.resolve(&addr("nobody+x@example.test")).await.unwrap(), None);
    // "+x" has no base to strip to; it is just an unknown local part.
    assert_eq!(d.resolve(&addr("+x@example.test")).await.unwrap(), None);

    // Duplicates collapse: the alias reaches bob twice (directly and through info).
    d.add_alias("all@example.test", &addr("bob@example.test")).await.unwrap();
    d.add_alias("all@example.test", &addr("info@example.test")).await.unwrap();
    d.add_alias("all@example.test", &addr("bob+tag@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("all@example.test")).await.unwrap(), Some(vec![local("bob@example.test")]));
    // A destination that names a local address nobody has is skipped, not an error.
    d.add_alias("old@example.test", &addr("gone@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("old@example.test")).await.unwrap(), None);
    d.add_alias("old@example.test", &addr("alice@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("old@example.test")).await.unwrap(), Some(vec![local("alice@example.test")]));
}

async fn alias_loops_and_depth_are_cut(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    d.add_account(&addr("alice@example.test"), CHEAP_HASH, 0).await.unwrap();

    // a ⇄ b: nothing to deliver to, and it terminates.
    d.add_alias("a@example.test", &addr("b@example.test")).await.unwrap();
    d.add_alias("b@example.test", &addr("a@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("a@example.test")).await.unwrap(), None);
    // A loop with an exit delivers to the exit once.
    d.add_alias("b@example.test", &addr("alice@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("a@example.test")).await.unwrap(), Some(vec![local("alice@example.test")]));

    // A catch-all pointing at an unknown local address would feed itself forever.
    d.add_alias("@example.test", &addr("void@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("x@example.test")).await.unwrap(), None);

    // A chain of exactly MAX_ALIAS_DEPTH (10) aliases works; one more is cut.
    for i in 0..10 {
        let next = if i == 9 { "alice@example.test".to_owned() } else { format!("c{}@example.test", i + 1) };
        d.add_alias(&format!("c{i}@example.test"), &addr(&next)).await.unwrap();
    }
    assert_eq!(d.resolve(&addr("c0@example.test")).await.unwrap(), Some(vec![local("alice@example.test")]));
    d.add_alias("start@example.test", &addr("c0@example.test")).await.unwrap();
    assert_eq!(d.resolve(&addr("start@example.test")).await.unwrap(), None);
}

async fn authenticate_right_wrong_disabled_unknown(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    // A real Argon2id hash from our own hasher, as `user add` stores it.
    d.add_account(&addr("alice@example.test"), &password::hash("s3cret!"), 0).await.unwrap();

    let ok = d.authenticate("Alice@EXAMPLE.test", "s3cret!").await.unwrap().expect("right password");
    assert_eq!(ok.address, "alice@example.test");
    assert!(d.authenticate("alice@example.test", "s3cret").await.unwrap().is_none());
    assert!(d.authenticate("alice@example.test", "").await.unwrap().is_none());
    assert!(d.authenticate("alice", "s3cret!").await.unwrap().is_none(), "bare local part is no username");

    // Unknown users cost a verification like a wrong password does. Argon2 takes a good
    // fraction of a second here, a DB lookup milliseconds, so the ratio is a robust signal.
    // Each is the fastest of three tries: the test binary runs many suites at once, and a
    // single try can be slowed several times over by the others' hashing.
    let mut wrong = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        assert!(d.authenticate("alice@example.test", "wrong").await.unwrap().is_none());
        wrong = wrong.min(start.elapsed());
        let start = Instant::now();
        assert!(d.authenticate("nobody@example.test", "s3cret!").await.unwrap().is_none());
        unknown = unknown.min(start.elapsed());
    }
    assert!(
        unknown * 3 > wrong && wrong > Duration::from_millis(5),
        "unknown user took {unknown:?}, wrong password {wrong:?}"
    );

    d.set_enabled(&addr("alice@example.test"), false).await.unwrap();
    assert!(d.authenticate("alice@example.test", "s3cret!").await.unwrap().is_none(), "disabled account");
    d.set_enabled(&addr("alice@example.test"), true).await.unwrap();
    assert!(d.authenticate("alice@example.test", "s3cret!").await.unwrap().is_some());
}

async fn authenticate_imported_hashes(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    // Hashes of "correct horse" as other systems wrote them; the unit tests in
    // src/directory/password.rs cover more variants. Sources:
    let imported = [
        // `doveadm pw -s SHA512-CRYPT -p 'correct horse'` (Dovecot 2.3.19)
        ("sha512@example.test", "{SHA512-CRYPT}$6$JGC.pXmYaqJw.9Hi$zyBZ0G1jc4vIEgZArMQTv4TSK1erBik5Gli.dRC05O2Erskvwaj5pQP6MXwXIaucBQZAu.EKRtAnwPq.p1DFS/"),
        // `doveadm pw -s SHA256-CRYPT -p 'correct horse'`
        ("sha256@example.test", "{SHA256-CRYPT}$5$xBF.kC5BANWPXlsO$MfnZ.yuOWTAqTy5E6a/Ben4oYMf9CnfC5znDVRGzCy6"),
        // `doveadm pw -s BLF-CRYPT -p 'correct horse'`
        ("blf@example.test", "{BLF-CRYPT}$2y$05$8ZXHjq1mfKDw.VGhIdbXjedQP9TKmVQ8QYOVjA9czpNdzWD.jHydW"),
        // `openssl passwd -6 -salt saltsalt 'correct horse'`, prefixed by hand
        ("openssl@example.test", "{SHA512-CRYPT}$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0"),
        // `doveadm pw -s ARGON2I -p 'correct horse'`
        ("argon2i@example.test", "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$lAHQQTbKj1/eQ2d1IM3kmg$ST05UV0xgrqiYMrMF/bWW9zhfykgd8ob2eA+Dtftfp8"),
    ];
    for (user, hash) in imported {
        d.add_account(&addr(user), hash, 0).await.unwrap();
    }
    for (user, _) in imported {
        assert!(d.authenticate(user, "correct horse").await.unwrap().is_some(), "{user}");
        assert!(d.authenticate(user, "Correct horse").await.unwrap().is_none(), "{user}");
    }
}

async fn may_send_as_rules(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    let alice = addr("alice@example.test");
    let bob = addr("bob@example.test");
    d.add_account(&alice, CHEAP_HASH, 0).await.unwrap();
    d.add_account(&bob, CHEAP_HASH, 0).await.unwrap();
    d.add_alias("info@example.test", &alice).await.unwrap();
    d.add_alias("support@example.test", &addr("info@example.test")).await.unwrap(); // via info
    d.add_alias("sales@example.test", &bob).await.unwrap();
    d.add_alias("ext@example.test", &addr("alice@elsewhere.test")).await.unwrap();
    d.add_alias("@example.test", &alice).await.unwrap();

    for from in [
        "alice@example.test",
        "alice+x@example.test",
        "info@example.test",
        "info+x@example.test",
        "support@example.test",
    ] {
        assert!(d.may_send_as(&alice, &addr(from)).await.unwrap(), "alice may send as {from}");
    }
    for from in [
        "bob@example.test",       // another account
        "bob+alice@example.test", // another account, tagged
        "sales@example.test",     // an alias for someone else
        "ext@example.test",       // an alias to an external address
        "anything@example.test",  // caught by the catch-all: no sending rights
        "alice@elsewhere.test",   // not ours at all
    ] {
        assert!(!d.may_send_as(&alice, &addr(from)).await.unwrap(), "alice may not send as {from}");
    }
    assert!(d.may_send_as(&bob, &addr("sales@example.test")).await.unwrap());
}

async fn json_shape_of_lists(b: &Backend) {
    let d = &b.dir;
    d.add_domain("example.test").await.unwrap();
    d.add_account(&addr("alice@example.test"), CHEAP_HASH, 1024).await.unwrap();
    d.add_alias("info@example.test", &addr("alice@example.test")).await.unwrap();
    d.add_alias("@example.test", &addr("alice@example.test")).await.unwrap();

    let json = |v: serde_json::Result<String>| v.unwrap();
    assert_eq!(json(serde_json::to_string(&d.list_domains().await.unwrap())), r#"[{"name":"example.test"}]"#);
    // The hash never appears in JSON output.
    assert_eq!(
        json(serde_json::to_string(&d.list_accounts(None).await.unwrap())),
        r#"[{"address":"alice@example.test","quota":1024,"enabled":true}]"#
    );
    assert_eq!(
        json(serde_json::to_string(&d.list_aliases(None).await.unwrap())),
        r#"[{"source":"@example.test","destinations":["alice@example.test"]},{"source":"info@example.test","destinations":["alice@example.test"]}]"#
    );
    let targets = d.resolve(&addr("info@example.test")).await.unwrap().unwrap();
    assert_eq!(json(serde_json::to_string(&targets)), r#"[{"kind":"local","address":"alice@example.test"}]"#);
    assert_eq!(
        json(serde_json::to_string(&remote("x@elsewhere.test"))),
        r#"{"kind":"remote","address":"x@elsewhere.test"}"#
    );
}

async fn shared_postmaster_alias_cycles_and_references_into_a_domain(b: &Backend) {
    let d = &b.dir;
    d.add_domain("a.test").await.unwrap();
    d.add_domain("b.test").await.unwrap();
    // RFC 5321 §4.5.1: no postmaster anywhere yet.
    assert_eq!(d.first_postmaster().await.unwrap(), None);
    assert_eq!(d.postmaster_route("b.test").await.unwrap(), PostmasterRoute::Missing);
    assert_eq!(d.resolve(&addr("postmaster@b.test")).await.unwrap(), None);
    // An alias counts while there is no account; the first account wins over it.
    d.add_account(&addr("carol@b.test"), CHEAP_HASH, 0).await.unwrap();
    d.add_alias("postmaster@b.test", &addr("carol@b.test")).await.unwrap();
    assert_eq!(d.first_postmaster().await.unwrap(), Some(addr("postmaster@b.test")));
    assert_eq!(d.resolve(&addr("postmaster@a.test")).await.unwrap(), Some(vec![local("carol@b.test")]));
    d.add_account(&addr("postmaster@a.test"), CHEAP_HASH, 0).await.unwrap();
    assert_eq!(d.first_postmaster().await.unwrap(), Some(addr("postmaster@a.test")));
    assert_eq!(d.postmaster_route("b.test").await.unwrap(), PostmasterRoute::Own);
    d.remove_alias("postmaster@b.test", None).await.unwrap();
    assert_eq!(
        d.postmaster_route("b.test").await.unwrap(),
        PostmasterRoute::Shared(addr("postmaster@a.test"))
    );
    assert_eq!(
        d.resolve(&addr("postmaster+x@b.test")).await.unwrap(),
        Some(vec![local("postmaster@a.test")])
    );
    // Sending as it is not implied: only named aliases count for that.
    assert!(!d.may_send_as(&addr("postmaster@a.test"), &addr("postmaster@b.test")).await.unwrap());

    // Cycles, before the alias exists.
    d.add_alias("x@a.test", &addr("y@a.test")).await.unwrap();
    assert_eq!(
        d.alias_cycle("y@a.test", &addr("x@a.test")).await.unwrap(),
        Some(vec!["y@a.test".to_owned(), "x@a.test".to_owned(), "y@a.test".to_owned()])
    );
    assert_eq!(d.alias_cycle("y@a.test", &addr("carol@b.test")).await.unwrap(), None);
    assert_eq!(d.alias_cycle("y@a.test", &addr("z@remote.test")).await.unwrap(), None);
    // Several destinations in one transaction, with those already there reported.
    let (added, present) =
        d.add_aliases("x@a.test", &[addr("carol@b.test"), addr("y@a.test")]).await.unwrap();
    assert_eq!((added, present), (vec!["carol@b.test".to_owned()], vec!["y@a.test".to_owned()]));

    // References into b.test refuse its removal and are listed; forced, they go with it.
    assert!(matches!(d.check_new_account(&addr("x@a.test")).await, Err(DirectoryError::Duplicate(_))));
    match d.remove_domain_and_references("b.test", false).await.unwrap() {
        DomainRemoval::Refused(RemovedDomain { accounts, aliases, inbound, .. }) => {
            assert_eq!(accounts, ["carol@b.test"]);
            assert!(aliases.is_empty());
            assert_eq!(inbound, [("x@a.test".to_owned(), "carol@b.test".to_owned())]);
        }
        other => panic!("{other:?}"),
    }
    assert!(d.is_local_domain("b.test").await.unwrap(), "refused: nothing changed");
    match d.remove_domain_and_references("b.test", true).await.unwrap() {
        DomainRemoval::Removed(r) => assert_eq!(r.inbound.len(), 1),
        other => panic!("{other:?}"),
    }
    let left: Vec<_> =
        d.list_aliases(None).await.unwrap().into_iter().map(|a| (a.source, a.destinations)).collect();
    assert_eq!(left, [("x@a.test".to_owned(), vec!["y@a.test".to_owned()])]);
}
