//! Directories and the binary. The config directory (and conf.d/ in it, for the site's own
//! settings) is readable by the daemon's group only; the data directory (directory DB,
//! queue, mail) belongs to the daemon, 0750.

use super::{dir_change, Ctx, Mode};
use crate::install::plan::{Action, Change, Kind, Op, Owner};

pub fn plan(ctx: &Ctx) -> Vec<Change> {
    let l = &ctx.layout;
    let daemon = || Owner::of(super::system_user::USER, super::system_user::USER);
    let config_group = Owner::of("root", super::system_user::USER);
    // With ACME the daemon renews the certificate itself, so it must be able to replace the
    // files in the TLS directory (atomically: a new file renamed over the old one).
    let tls_owner = match ctx.answers.tls {
        crate::install::answers::Tls::Acme { .. } => daemon(),
        _ => config_group.clone(),
    };
    let mut changes = vec![
        dir_change(ctx, &l.config_dir, 0o750, config_group.clone()),
        // Made (empty) so administrators find where their settings go; what is in it is theirs.
        dir_change(ctx, &l.conf_d(), 0o750, config_group),
        dir_change(ctx, &l.tls_dir, 0o750, tls_owner),
        dir_change(ctx, &l.data_dir, 0o750, daemon()),
    ];
    if ctx.mode == Mode::Direct {
        changes.push(dir_change(ctx, &l.log_dir, 0o750, daemon()));
    }
    changes.push(binary(ctx));
    changes
}

/// The running binary, copied to the target unless it is already the same file.
fn binary(ctx: &Ctx) -> Change {
    let target = ctx.layout.binary.display().to_string();
    let dest = ctx.host.path(&ctx.layout.binary);
    let op = Op::CopyFile {
        from: ctx.host.binary.clone(),
        path: ctx.layout.binary.clone(),
        mode: 0o755,
        owner: Owner::root(),
    };
    match std::fs::metadata(&dest) {
        Err(_) => Change::new(Kind::File, target, Action::Create, op),
        Ok(_) if same_file(&ctx.host.binary, &dest) => Change::none(Kind::File, target),
        Ok(_) => Change::new(Kind::File, target, Action::Update, op).note("a different posthaste version"),
    }
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
    if ma.len() != mb.len() {
        return false;
    }
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else { return false };
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}
