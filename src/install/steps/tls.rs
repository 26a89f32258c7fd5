//! The TLS certificate. Self-signed: made once and never regenerated (a rerun keeps the
//! pair, so clients that pinned it keep working). Files: used where they are, after
//! checking they exist. ACME: not available in this version; a self-signed pair stands in.

use anyhow::bail;

use super::Ctx;
use crate::install::answers::Tls;
use crate::install::plan::{Action, Change, Kind, Op, Owner};

/// The cert and key paths the daemon config names, plus the changes to get them there.
pub fn plan(ctx: &Ctx, warnings: &mut Vec<String>) -> anyhow::Result<(String, String, Vec<Change>)> {
    let l = &ctx.layout;
    match &ctx.answers.tls {
        Tls::Files { cert, key } => {
            for (what, p) in [("certificate", cert), ("key", key)] {
                if !ctx.host.path(p).is_file() {
                    bail!("the TLS {what} {} does not exist on the target\nhelp: put it there first, or use tls: {{mode: self-signed}}", p.display());
                }
            }
            warnings.push(format!(
                "the daemon runs as user posthaste and must be able to read {}",
                key.display()
            ));
            Ok((
                cert.display().to_string(),
                key.display().to_string(),
                vec![Change::none(Kind::Key, key.display().to_string())],
            ))
        }
        tls => {
            if matches!(tls, Tls::Acme { .. }) {
                warnings.push("tls mode acme is not implemented in this version yet: a self-signed certificate is used until it is (rerun the install after upgrading)".into());
            }
            let (c, k) = (ctx.host.path(&l.cert), ctx.host.path(&l.key));
            let target = l.key.display().to_string();
            let change = match (c.exists(), k.exists()) {
                (true, true) => Change::none(Kind::Key, target),
                (false, false) => Change::new(
                    Kind::Key,
                    target,
                    Action::Create,
                    Op::SelfSigned {
                        hostname: ctx.answers.hostname.clone(),
                        cert: l.cert.clone(),
                        key: l.key.clone(),
                        owner: Owner::of(super::system_user::USER, super::system_user::USER),
                    },
                )
                .note(format!("self-signed for {}, with {}", ctx.answers.hostname, l.cert.display())),
                _ => bail!(
                    "only one of {} and {} exists\nhelp: restore the missing one, or remove both to get a new self-signed pair",
                    l.cert.display(),
                    l.key.display()
                ),
            };
            Ok((l.cert.display().to_string(), l.key.display().to_string(), vec![change]))
        }
    }
}
