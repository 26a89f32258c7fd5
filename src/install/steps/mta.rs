//! An MTA that already holds our ports. With `replace_existing_mta: true` it is stopped and
//! disabled (and started again if the install fails); otherwise preflight stops the
//! install and says how to proceed. Planned last but one, so a failing install never leaves
//! the machine without a mail server.

use super::{Ctx, Mode};
use crate::install::host::Cmd;
use crate::install::plan::{Action, Change, Kind, Op};

/// Mail servers we recognise by the command name of the process on the port:
/// (process, product, service unit).
pub const KNOWN: &[(&str, &str, &str)] = &[
    ("master", "Postfix", "postfix"),
    ("exim4", "Exim", "exim4"),
    ("exim", "Exim", "exim"),
    ("sendmail", "Sendmail", "sendmail"),
    ("sendmail-mta", "Sendmail", "sendmail"),
    ("dovecot", "Dovecot", "dovecot"),
];

/// The product and service for a process name.
pub fn known(process: &str) -> Option<(&'static str, &'static str)> {
    KNOWN.iter().find(|(p, _, _)| *p == process).map(|(_, name, svc)| (*name, *svc))
}

pub fn plan(ctx: &Ctx) -> Vec<Change> {
    if !ctx.answers.replace_existing_mta {
        return vec![];
    }
    let mut services: Vec<(&str, &str)> = Vec::new();
    for (_, process) in &ctx.port_holders {
        if let Some((name, svc)) = known(process) {
            if !services.iter().any(|(_, s)| *s == svc) {
                services.push((name, svc));
            }
        }
    }
    services
        .into_iter()
        .map(|(name, svc)| {
            let (stop, start) = match ctx.mode {
                Mode::Systemd => (
                    Cmd::new("systemctl", &["disable", "--now", svc]),
                    Cmd::new("systemctl", &["enable", "--now", svc]),
                ),
                Mode::Direct => (Cmd::new("service", &[svc, "stop"]), Cmd::new("service", &[svc, "start"])),
            };
            Change::new(
                Kind::Service,
                svc,
                Action::Remove,
                ctx.command_op(Op::Run { cmd: stop, undo: Some(start) }),
            )
            .note(format!("stop and disable {name}: replace_existing_mta is true"))
        })
        .collect()
}
