//! The system user: the daemon runs as `posthaste` (no login, home = the data directory),
//! never as root. systemd starts it as that user; in direct mode root starts it and it
//! drops to that user after binding its ports.

use super::{lookup, Ctx};
use crate::install::host::Cmd;
use crate::install::plan::{Action, Change, Kind, Op};

pub const USER: &str = "posthaste";

pub fn plan(ctx: &Ctx) -> Vec<Change> {
    if lookup(ctx.host, "/etc/passwd", USER).is_some() {
        return vec![Change::none(Kind::User, USER)];
    }
    let data = ctx.layout.data_dir.display().to_string();
    let nologin = ctx.distro.nologin.display().to_string();
    let add = Cmd::new(
        "useradd",
        &["--system", "--user-group", "--home-dir", &data, "--no-create-home", "--shell", &nologin, USER],
    );
    let undo = Cmd::new("userdel", &[USER]);
    let op = Op::Run { cmd: ctx.host.target_cmd(add), undo: Some(ctx.host.target_cmd(undo)) };
    vec![Change::new(Kind::User, USER, Action::Create, ctx.command_op(op)).note("system user, no login")]
}
