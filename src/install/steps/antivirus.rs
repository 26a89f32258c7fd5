//! Virus scanning: clamd, with freshclam keeping the signatures current. The daemon streams
//! each message to clamd's socket (`[antivirus] clamd`). Debian and Ubuntu's clamd listens
//! on its socket out of the box; on Enterprise Linux and Fedora we add our own clamd
//! instance (clamd@posthaste) with its own config file, leaving scan.conf alone.
//! freshclam's first download (~250 MB) takes minutes; clamd starts once it is there.

use super::Ctx;
use crate::install::plan::Change;

pub fn plan(ctx: &Ctx) -> anyhow::Result<Vec<Change>> {
    if !ctx.answers.components.antivirus {
        return Ok(vec![]);
    }
    super::antispam::component_files(ctx, "antivirus")
}
