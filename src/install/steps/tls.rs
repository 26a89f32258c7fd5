//! The TLS certificate. Self-signed: made once and never regenerated (a rerun keeps the
//! pair, so clients that pinned it keep working). Files: used where they are, after
//! checking they exist. ACME: obtained from the CA during the install (HTTP-01, with a
//! temporary listener on port 80), unless the certificate in place is still good for the
//! hostname; the running daemon renews it from then on (`[acme]` in its config).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};

use super::{file_change, Ctx};
use crate::install::answers::Tls;
use crate::install::plan::{Action, Change, Kind, Op, Owner};
use crate::tls::acme::{self, Due};

/// Where the ACME directory's CA certificate is copied on the target (`directory_ca`).
pub const DIRECTORY_CA: &str = "/etc/posthaste/tls/acme-directory-ca.pem";
/// The ACME account (key and id) on the target.
pub const ACCOUNT: &str = "/etc/posthaste/tls/acme-account.json";

/// What the daemon config's `[acme]` section says (None: not ACME).
#[derive(Debug, Clone)]
pub struct AcmeOut {
    pub directory: String,
    pub email: String,
    pub http_listen: SocketAddr,
    pub directory_ca: Option<PathBuf>,
    pub account: PathBuf,
}

/// The cert and key paths the daemon config names, plus the changes to get them there.
pub struct TlsPlan {
    pub cert: String,
    pub key: String,
    pub acme: Option<AcmeOut>,
    pub changes: Vec<Change>,
}

pub fn plan(ctx: &Ctx, warnings: &mut Vec<String>) -> anyhow::Result<TlsPlan> {
    let l = &ctx.layout;
    let daemon = || Owner::of(super::system_user::USER, super::system_user::USER);
    match &ctx.answers.tls {
        Tls::Files { cert, key } => {
            for (what, p) in [("certificate", cert), ("key", key)] {
                if !ctx.host.path(p).is_file() {
                    bail!("the TLS {what} {} does not exist on the target\nhelp: put it there first, or use tls: {{mode: self-signed}}", p.display());
                }
            }
            // Someone else's key: not ours to change, and a key every user can read may have
            // been read already. Refused, with what to do (silently accepted before).
            if let Some(m) = world_readable(ctx, key) {
                bail!(
                    "the TLS key {} can be read by every user of the machine (mode {m:04o})\nhelp: chmod o-r {} (the daemon reads it as user posthaste: chgrp posthaste it and chmod 640 it); if other users could read it for a while, get a new key and certificate",
                    key.display(),
                    key.display()
                );
            }
            warnings.push(format!(
                "the daemon runs as user posthaste and must be able to read {}",
                key.display()
            ));
            Ok(TlsPlan {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                acme: None,
                changes: vec![Change::none(Kind::Key, key.display().to_string())],
            })
        }
        Tls::Acme { email, directory, http_listen, directory_ca } => {
            let http_listen = http_listen.unwrap_or_else(|| "0.0.0.0:80".parse().expect("valid"));
            let mut changes = Vec::new();
            // The CA of a private ACME directory goes to the target for the daemon's renewals.
            let target_ca = match directory_ca {
                Some(src) => {
                    let pem = std::fs::read(src)
                        .with_context(|| format!("cannot read tls.directory_ca {}", src.display()))?;
                    changes.push(file_change(
                        ctx,
                        Kind::File,
                        &PathBuf::from(DIRECTORY_CA),
                        pem,
                        0o644,
                        Owner::root(),
                    ));
                    Some(PathBuf::from(DIRECTORY_CA))
                }
                None => None,
            };
            let names = vec![ctx.answers.hostname.clone()];
            let state = acme::due(&ctx.host.path(&l.cert), &names, None, acme::now());
            let key_there = ctx.host.path(&l.key).is_file();
            let target = l.cert.display().to_string();
            let change = if !state.is_due() && key_there {
                changes.extend(key_mode_fix(ctx, warnings));
                Change::none(Kind::Key, target).note(state.reason())
            } else {
                let action = if state == Due::Missing { Action::Create } else { Action::Update };
                let settings = acme::Settings {
                    directory: directory.clone(),
                    email: email.clone(),
                    names,
                    // Read from the installing machine: the target may not be running yet.
                    directory_ca: directory_ca.clone(),
                    account: ACCOUNT.into(),
                    cert: l.cert.clone(),
                    key: l.key.clone(),
                };
                let note = format!(
                    "from the ACME CA {directory} for {} over HTTP-01 on {http_listen}; {}",
                    ctx.answers.hostname,
                    if state.is_due() { state.reason() } else { "the key is missing".into() }
                );
                Change::new(
                    Kind::Key,
                    target,
                    action,
                    Op::AcmeIssue { settings, http_listen, owner: daemon() },
                )
                .note(note)
            };
            if change.is_change() {
                warnings.push(format!(
                    "the ACME CA will connect to http://{}/ (port 80): it must resolve to this host and reach {http_listen}",
                    ctx.answers.hostname
                ));
            }
            changes.push(change);
            Ok(TlsPlan {
                cert: l.cert.display().to_string(),
                key: l.key.display().to_string(),
                acme: Some(AcmeOut {
                    directory: directory.clone(),
                    email: email.clone(),
                    http_listen,
                    directory_ca: target_ca,
                    account: ACCOUNT.into(),
                }),
                changes,
            })
        }
        Tls::SelfSigned => {
            let (c, k) = (ctx.host.path(&l.cert), ctx.host.path(&l.key));
            let target = l.key.display().to_string();
            let create = |note: String| {
                Change::new(
                    Kind::Key,
                    target.clone(),
                    Action::Create,
                    Op::SelfSigned {
                        hostname: ctx.answers.hostname.clone(),
                        cert: l.cert.clone(),
                        key: l.key.clone(),
                        owner: daemon(),
                    },
                )
                .note(note)
            };
            let made = format!("self-signed for {}, with {}", ctx.answers.hostname, l.cert.display());
            let hostname = &ctx.answers.hostname;
            let change = match (c.exists(), k.exists()) {
                (true, true) => {
                    match crate::tls::CertInfo::read(&c) {
                        // Ours, for the old name: a certificate that names another host is no
                        // use to clients (regression: it was kept without a word).
                        Ok(info) if info.self_signed && !info.covers(std::slice::from_ref(hostname)) => {
                            let old = info.names.join(", ");
                            warnings.push(format!(
                            "the hostname changed to {hostname}: the self-signed certificate for {old} is replaced by one for {hostname} (clients that accepted the old one will ask again)"
                        ));
                            let mut change = create(format!("replaces the self-signed certificate for {old}: the hostname is now {hostname}"));
                            change.action = Action::Update;
                            change
                        }
                        _ => key_mode_fix(ctx, warnings)
                            .unwrap_or_else(|| Change::none(Kind::Key, target.clone())),
                    }
                }
                (false, false) => create(made),
                // Only one half: an install stopped between writing the two files. The half
                // is useless alone (the daemon needs both), so a new pair replaces it.
                _ => create(format!("{made}; replaces an incomplete pair (an interrupted install?)")),
            };
            Ok(TlsPlan {
                cert: l.cert.display().to_string(),
                key: l.key.display().to_string(),
                acme: None,
                changes: vec![change],
            })
        }
    }
}

/// The mode of a file every user may read (the "others" read bit), if it is one.
fn world_readable(ctx: &Ctx, path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ctx.host.path(path)).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Our own private key, readable by every user (a `chmod` by hand, a copy restored with
/// the wrong mode): made 0600 again, and said so, rather than kept silently.
fn key_mode_fix(ctx: &Ctx, warnings: &mut Vec<String>) -> Option<Change> {
    let key = &ctx.layout.key;
    let mode = world_readable(ctx, key)?;
    warnings.push(format!(
        "the private key {} could be read by every user (mode {mode:04o}): the install makes it 0600; if other users could read it for a while, remove it and {} and rerun for a new pair",
        key.display(),
        ctx.layout.cert.display()
    ));
    let owner = Owner::of(super::system_user::USER, super::system_user::USER);
    Some(
        Change::new(
            Kind::Key,
            key.display().to_string(),
            Action::Update,
            Op::Meta { path: key.clone(), mode: 0o600, owner },
        )
        .note(format!("mode {mode:04o} -> 0600: it was readable by every user")),
    )
}
