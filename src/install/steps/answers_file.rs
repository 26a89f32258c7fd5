//! The answers used, written back to /etc/posthaste/answers.yaml (root only, 0600): the
//! password only as its hash. `posthaste install --answers /etc/posthaste/answers.yaml`
//! repeats the deployment, and the wizard offers them as defaults.

use super::{record_change, Ctx};
use crate::install::plan::{Change, Kind, Owner};

pub fn plan(ctx: &Ctx, password_hash: &str) -> Vec<Change> {
    let text = ctx.answers.to_yaml(password_hash);
    vec![record_change(ctx, Kind::File, &ctx.layout.answers, text.into_bytes(), 0o600, Owner::root())]
}
