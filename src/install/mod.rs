//! `posthaste install` and `uninstall`: the turnkey part (`status` and `dns` are admin
//! areas in `src/admin/`, which this calls).
//!
//! An install is: detect the distro (os-release against `distros/*.yaml`), get the answers
//! (file or wizard → one validated [`answers::Answers`]), run the preflight checks, compute
//! the [`plan::Plan`] (each step in `steps/` compares the target with what the answers ask
//! for), and then — unless `--dry-run` — apply it with a journal that undoes everything if
//! a change fails. All access to the machine goes through [`host::Host`], so tests run this
//! same code against a temp `--root` with a recording command runner.

pub mod answers;
pub mod apply;
pub mod diff;
pub mod distro;
pub mod host;
pub mod plan;
pub mod preflight;
pub mod render;
pub mod state;
pub mod steps;
pub mod uninstall;
pub mod yaml;

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use answers::{Answers, SAVED_ANSWERS};
use host::Host;
use plan::{Change, Plan};
use preflight::Severity;
use steps::{Ctx, Layout, Mode};

/// `posthaste install` flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct InstallArgs {
    /// Take the answers from this YAML file instead of asking (see examples/answers.yaml).
    #[arg(long, value_name = "FILE")]
    pub answers: Option<PathBuf>,
    /// Apply the plan without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan as JSON ({"distro":…, "changes":[{"kind","target","action"}…]}).
    #[arg(long)]
    pub json: bool,
    /// Install into this directory (a target system's root) instead of this machine.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// With --root: also run package, user and service commands, chrooted into DIR.
    #[arg(long, requires = "root")]
    pub run_commands: bool,
    /// Replace files that were edited by hand since the install wrote them (the plan shows
    /// the diff); each is first kept beside itself as FILE.bak-YYYYMMDD-HHMMSS. Without it
    /// the install refuses to replace them.
    #[arg(long)]
    pub force: bool,
}

/// `install` and `uninstall` work on the fixed layout (`/etc/posthaste/posthaste.toml`,
/// site settings in its conf.d): a `--config` (or `POSTHASTE_CONFIG`) naming another file
/// would be ignored, so it is refused instead (regression: it was accepted and ignored).
pub fn refuse_other_config(config: &std::path::Path, command: &str) -> anyhow::Result<()> {
    let ours = Layout::default().config;
    if config == ours {
        return Ok(());
    }
    bail!(
        "`posthaste {command}` does not take --config: it always writes {} (and your own settings go in {}/)\nhelp: leave out --config {} (and unset POSTHASTE_CONFIG if it is set); with --root DIR everything goes under DIR",
        ours.display(),
        crate::config::conf_dir(&ours).display(),
        config.display()
    )
}

/// What an install did (for tests and embedding).
#[derive(Debug)]
pub struct Outcome {
    pub plan: Plan,
    pub applied: bool,
}

/// systemd on the target: running here, or installed in the `--root` target.
pub fn detect_mode(host: &Host) -> Mode {
    let systemd = if host.under_root {
        ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"].iter().any(|p| host.path(p).exists())
    } else {
        host.probe.systemd_running()
    };
    if systemd {
        Mode::Systemd
    } else {
        Mode::Direct
    }
}

/// The answers: the file, else the wizard, else a clear error (never a hang).
pub fn get_answers(host: &Host, args: &InstallArgs) -> anyhow::Result<Answers> {
    if let Some(file) = &args.answers {
        return Ok(Answers::from_file(file)?);
    }
    let Some(prompter) = &host.prompter else {
        let saved = host.path(SAVED_ANSWERS);
        let hint = if saved.exists() {
            format!("; the previous install's answers are in {}", saved.display())
        } else {
            String::new()
        };
        bail!(
            "no answers: there is no terminal to ask the questions on, and --answers was not given\nhelp: pass --answers FILE (see examples/answers.yaml){hint}"
        );
    };
    let previous = Answers::from_file(&host.path(SAVED_ANSWERS)).ok();
    answers::ask(prompter.as_ref(), previous.as_ref(), host.probe.hostname().as_deref())
}

/// Every change, in order; nothing is touched.
pub fn plan_install(ctx: &Ctx) -> anyhow::Result<Plan> {
    let mut warnings = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    changes.extend(steps::packages::plan(ctx)?);
    changes.extend(steps::system_user::plan(ctx));
    changes.extend(steps::layout::plan(ctx));
    let tls = steps::tls::plan(ctx, &mut warnings)?;
    changes.extend(tls.changes.iter().cloned());
    let mut changed_components = Vec::new();
    for (name, step) in
        [("antispam", steps::antispam::plan(ctx)?), ("antivirus", steps::antivirus::plan(ctx)?)]
    {
        if step.iter().any(Change::is_change) {
            changed_components.push(name.to_owned());
        }
        changes.extend(step);
    }
    changes.extend(steps::daemon_config::plan(ctx, &tls, &mut warnings)?);
    changes.extend(steps::service::unit(ctx)?);
    // The daemon reads these: when one changes, a running daemon is restarted.
    let l = &ctx.layout;
    let watched: Vec<String> =
        [&l.config, &l.binary, &l.key, &l.cert, &l.unit].iter().map(|p| p.display().to_string()).collect();
    let restart = changes.iter().any(|c| c.is_change() && watched.contains(&c.target));
    let (directory, hash) = steps::directory::plan(ctx, &mut warnings)?;
    changes.extend(directory);
    changes.extend(steps::answers_file::plan(ctx, &hash));
    changes.extend(steps::service::components(ctx, &changed_components));
    changes.extend(steps::mta::plan(ctx));
    changes.extend(steps::service::posthaste(ctx, restart));
    if ctx.host.under_root && ctx.mode == Mode::Direct {
        warnings.push(format!(
            "the target has no systemd: nothing is set up to start posthaste there; start `{} --config {} serve` (as root) in it",
            l.binary.display(),
            l.config.display()
        ));
    }
    Ok(Plan { distro: ctx.distro.id.clone(), changes, warnings })
}

/// `posthaste install`.
pub fn install(host: &Host, args: &InstallArgs) -> anyhow::Result<Outcome> {
    let distro = distro::detect_host(host)?;
    let mut answers = get_answers(host, args)?;
    let layout = Layout::default();
    let mode = detect_mode(host);
    let holders = preflight::port_holders(host);

    // With someone at the terminal, an MTA on our ports is a question, not an error.
    if let (Some(p), false) = (&host.prompter, answers.replace_existing_mta) {
        let known: Vec<&str> =
            holders.iter().filter_map(|(_, who)| steps::mta::known(who)).map(|(n, _)| n).collect();
        if let Some(name) = known.first() {
            answers.replace_existing_mta = p.confirm(
                &format!("{name} is using the mail ports. Stop and disable it (once posthaste is ready)?"),
                false,
            )?;
        }
    }
    let mut findings = preflight::check(host, &answers, &layout, &holders);
    // The one finding a person can settle right here.
    if let Some(p) = &host.prompter {
        if findings.iter().any(|f| f.severity == Severity::Error && f.check == preflight::Check::ClamavMemory)
            && p.confirm(
                "This machine has too little memory for ClamAV. Install without virus scanning?",
                true,
            )?
        {
            answers.components.antivirus = false;
            findings = preflight::check(host, &answers, &layout, &holders);
        }
    }
    let errors: Vec<String> =
        findings.iter().filter(|f| f.severity == Severity::Error).map(ToString::to_string).collect();
    if !errors.is_empty() {
        bail!(
            "the preflight checks failed ({} problem{}); nothing was changed:\n{}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" },
            errors.iter().map(|e| format!("- {e}")).collect::<Vec<_>>().join("\n")
        );
    }

    if let Some(file) = &answers.postmaster.generated_file {
        let snap = steps::directory::snapshot(&host.path(layout.db()), &answers.postmaster.address)?;
        if snap.postmaster_hash.is_some() {
            bail!(
                "password_file {} does not exist, but {} already has a password\nhelp: put the postmaster's password in that file (first line), or replace password_file by password_hash (see {SAVED_ANSWERS})",
                file.display(),
                answers.postmaster.address
            );
        }
    }
    let ctx = Ctx {
        host,
        distro: &distro,
        answers: &answers,
        layout,
        mode,
        renderer: render::Renderer::new(),
        port_holders: holders,
        state: state::State::read(host),
        secrets: steps::Secrets::default(),
    };
    let mut plan = plan_install(&ctx)?;
    let mut warnings: Vec<String> =
        findings.iter().filter(|f| f.severity == Severity::Warning).map(ToString::to_string).collect();
    warnings.append(&mut plan.warnings);
    plan.warnings = warnings;

    let say = |s: String| {
        if !args.json {
            host.say(s)
        }
    };
    say(format!(
        "posthaste install: {} ({}), {} mode{}",
        distro.pretty,
        distro.id,
        if mode == Mode::Systemd { "systemd" } else { "direct" },
        if host.under_root { format!(", into {}", host.root.display()) } else { String::new() }
    ));
    let edited = plan.edited();
    if args.dry_run {
        if args.json {
            host.say(plan.to_json());
        } else {
            host.say(plan.render());
            host.say(format!("dry run: {} change(s) planned, nothing changed", plan.pending()));
            if !edited.is_empty() && !args.force {
                host.say(format!(
                    "note: applying it needs --force: {}",
                    edited_refusal(&edited, &ctx.layout)
                ));
            }
        }
        return Ok(Outcome { plan, applied: false });
    }
    say(plan.render());
    if !edited.is_empty() && !args.force {
        bail!("not replacing {}", edited_refusal(&edited, &ctx.layout));
    }
    let pending = plan.pending();
    if pending == 0 {
        say("Everything is already as the answers ask: nothing to do.".into());
        // Still record the files an earlier install left without a record (nothing else
        // is written when there is none).
        apply::apply(host, &ctx.layout, &plan, |_| {}).map_err(anyhow::Error::new)?;
    } else {
        if !args.yes {
            match &host.prompter {
                Some(p) => {
                    if !p.confirm(&format!("Apply these {pending} changes?"), true)? {
                        bail!("stopped: nothing was changed");
                    }
                }
                None => bail!(
                    "not applying {pending} changes without confirmation: there is no terminal to ask\nhelp: add --yes to apply them, or --dry-run to only see them"
                ),
            }
        }
        if let (Some(file), answers::Password::Plain(pw)) =
            (&answers.postmaster.generated_file, &answers.postmaster.password)
        {
            write_secret(file, pw)?;
            say(format!(
                "The postmaster's password was generated into {} (mode 0600): keep it, it is not shown again.",
                file.display()
            ));
        }
        let bar = progress_bar(host, pending as u64);
        let result = apply::apply(host, &ctx.layout, &plan, |c| {
            bar.set_message(c.target.clone());
            bar.inc(1);
        });
        bar.finish_and_clear();
        let extra = result.map_err(anyhow::Error::new)?;
        for w in extra {
            say(format!("warning: {w}"));
        }
        say(format!("Done: {pending} change(s) applied."));
    }
    if args.json {
        host.say(plan.to_json());
    }
    say("Smoke test (posthaste check):".into());
    let spinner = progress_spinner(
        host,
        "waiting for the filters to start, then sending a message and reading it back over IMAP and POP3",
    );
    let smoke = smoke_test(host, &ctx.layout, &answers);
    spinner.finish_and_clear();
    match smoke? {
        None => {
            say("Not checked: the target is not running here (--root), there is no daemon to talk to.".into())
        }
        Some(report) => {
            say(report.table());
            if !report.ok {
                bail!(
                    "the install finished but the smoke test failed ({} of {} checks)\nhelp: the DETAIL column says what went wrong; fix it and rerun the install (it changes only what differs) or run `posthaste check`",
                    report.failed,
                    report.checks.len()
                );
            }
        }
    }
    if args.json {
        return Ok(Outcome { plan, applied: pending > 0 });
    }
    // The DKIM keys are in the target's data directory (made by the directory step); the
    // listeners as the daemon reads them (conf.d may change them).
    let dkim_dir = host.path(ctx.layout.dkim_dir());
    // The SRV records follow the listeners of the config just written.
    let config = crate::config::Config::load(&host.path(&ctx.layout.config))
        .context("cannot read the config the install wrote")?;
    let records = crate::admin::dns::zone_text(
        &config,
        &answers.domains,
        &answers.postmaster.address.to_string(),
        &dkim_dir,
    )?;
    host.say(format!("\nPublish these DNS records (posthaste dns prints them again):\n{records}"));
    Ok(Outcome { plan, applied: pending > 0 })
}

/// Why the plan is not applied without `--force`, and where the settings belong instead.
fn edited_refusal(edited: &[&Change], layout: &Layout) -> String {
    let n = edited.len();
    let files: Vec<String> = edited.iter().map(|c| format!("  {}", c.target)).collect();
    let config = layout.config.display().to_string();
    let conf_d = crate::config::conf_dir(&layout.config);
    let mut help = Vec::new();
    if edited.iter().any(|c| c.target == config) {
        help.push(format!(
            "help: settings of your own go in {}/*.toml (e.g. {}/50-site.toml: [log] level = \"debug\"): the daemon merges them over {config} key by key, and no rerun or upgrade touches them",
            conf_d.display(),
            conf_d.display()
        ));
    }
    if edited.iter().any(|c| c.target != config) {
        help.push("help: the installer owns the other files; keep changes of yours in files of your own beside them (rspamd: /etc/rspamd/override.d/ wins over local.d/)".to_owned());
    }
    help.push(
        "help: the diff above (- on disk, + what the install writes) shows what would be lost; once your settings are elsewhere, rerun with --force: each file is first kept beside itself as FILE.bak-YYYYMMDD-HHMMSS".to_owned(),
    );
    format!(
        "{n} file{} changed by hand (or not written by this installer), which the install would replace:\n{}\n{}",
        if n == 1 { "" } else { "s" },
        files.join("\n"),
        help.join("\n")
    )
}

/// The install's last step: `posthaste check` against the daemon just started. With the
/// postmaster's plaintext password (from the answers) it runs here and sends as the
/// postmaster; with only a hash it runs the installed binary, which uses a temporary
/// account (it needs the data owner's rights for that). Under `--root` nothing runs.
fn smoke_test(
    host: &Host,
    layout: &Layout,
    answers: &Answers,
) -> anyhow::Result<Option<crate::check::Report>> {
    if !host.smoke_test {
        return Ok(None);
    }
    let config = crate::config::Config::load(&host.path(&layout.config))
        .context("cannot read the config the install wrote")?;
    // The daemon binds before it writes its pidfile, but give a restart a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    for (_, addrs) in config.listeners() {
        for addr in addrs {
            let target = crate::check::local_target(*addr);
            while std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_millis(200))
                .is_err()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    // rspamd compiles its rules on a cold start (a minute or two on a small machine) and
    // clamd loads its signatures: wait until the filters answer before judging them.
    wait_for_filters(&config, std::time::Duration::from_secs(300));
    if let answers::Password::Plain(password) = &answers.postmaster.password {
        let creds = crate::check::Credentials {
            address: answers.postmaster.address.clone(),
            password: password.clone(),
        };
        let prepared = crate::check::prepare(&config, Some(creds));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?;
        return Ok(Some(rt.block_on(crate::check::run(&config, prepared))));
    }
    let binary = host.path(&layout.binary).display().to_string();
    let config_path = host.path(&layout.config).display().to_string();
    let out = host
        .run(&host::Cmd::new(&binary, &["--config", &config_path, "check", "--json"]))
        .with_context(|| format!("cannot run {binary} check"))?;
    let report: crate::check::Report = serde_json::from_str(&out.stdout).with_context(|| {
        format!("`posthaste check` printed no report (exit {}):\n{}", out.status, out.stderr.trim())
    })?;
    Ok(Some(report))
}

/// Poll the configured filters' health until all answer or `limit` passes (the check
/// then reports whichever still does not).
fn wait_for_filters(config: &crate::config::Config, limit: std::time::Duration) {
    if config.antispam.is_none() && config.antivirus.is_none() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let filter = crate::filter::Filter::from_config(config);
    let deadline = std::time::Instant::now() + limit;
    rt.block_on(async {
        while std::time::Instant::now() < deadline {
            if filter.health().await.iter().all(|(_, r)| r.is_ok()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
}

/// A new file with mode 0600 holding `secret` and a newline.
fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the password file {}", path.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn progress_spinner(host: &Host, message: &'static str) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    if host.progress && host.smoke_test {
        spinner.set_message(message);
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    } else {
        spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    spinner
}

fn progress_bar(host: &Host, len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if host.progress {
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}") {
            bar.set_style(style);
        }
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// `posthaste status`: is the daemon running?
pub fn status(host: &Host, config_path: &std::path::Path) -> anyhow::Result<()> {
    let st = crate::admin::status::status(&HostProbe(host), config_path, &Layout::default().log())?;
    st.require_running()?;
    host.say(st.summary());
    Ok(())
}

/// `posthaste status` through the host seam (the installer's tests fake it).
struct HostProbe<'a>(&'a Host);

impl crate::admin::status::Probe for HostProbe<'_> {
    fn systemd_state(&self) -> Option<String> {
        let host = self.0;
        if !host.probe.systemd_running() {
            return None;
        }
        let out = host.run(&host::Cmd::new("systemctl", &["is-active", "posthaste"]));
        Some(out.map(|o| o.stdout.trim().to_owned()).unwrap_or_default())
    }
    fn is_daemon(&self, pid: i32) -> bool {
        !self.0.under_root && self.0.probe.pid_alive(pid)
    }
    fn daemons_of(&self, _config: &std::path::Path) -> Vec<i32> {
        Vec::new()
    }
    fn read(&self, path: &std::path::Path) -> std::io::Result<String> {
        std::fs::read_to_string(self.0.path(path))
    }
}
