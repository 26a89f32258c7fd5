//! The admin panel, `/admin/`: server-rendered pages that work without JavaScript. Every
//! form posts back to its page with the session's CSRF token; the answer is the page
//! again with what happened (a generated password is shown there once, never put in a
//! URL). What each action may do is `ops`' decision.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Serialize;

use super::auth::{self, Auth};
use super::http::{decode_segment, encode, html, redirect, Form, Req, Response};
use super::i18n::Lang;
use super::ops::{self, WebError};
use super::render::{context, render};
use super::Context;
use crate::admin;
use crate::directory::Role;

/// Accounts per page of the list (each shows its usage, read from its Maildir).
pub const PAGE_SIZE: usize = 50;

/// A page behind the login: the template with the common variables (who is logged in,
/// the navigation, the CSRF token).
pub fn page(req: &Req, auth: &Auth, template: &str, mut c: tera::Context, status: StatusCode) -> Response {
    c.insert("me", &auth.access.address);
    c.insert("role", auth.access.role.as_str());
    c.insert("is_admin", &(auth.access.role == Role::Admin));
    c.insert("is_manager", &(auth.access.role != Role::User));
    c.insert("csrf", &auth.session.csrf);
    c.insert("path", &req.path);
    match render(template, &c) {
        Ok(body) => html(status, body),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, format!("template {template}: {e}")),
    }
}

/// An error as a page (or, not logged in, the way to the login form).
pub fn error_page(req: &Req, auth: Option<&Auth>, e: &WebError) -> Response {
    if matches!(e, WebError::Unauthorized) {
        return redirect(&format!("/admin/login?next={}", encode(&req.path)));
    }
    let (_, message, help) = e.parts();
    let mut c = context(req.lang);
    c.insert("title", &req.lang.t("error_title"));
    c.insert("error", &message);
    c.insert("help", &help);
    c.insert("back", &Some(req.path.clone()));
    match auth {
        Some(a) => page(req, a, "message.html", c, e.status()),
        None => {
            c.insert("path", &req.path);
            html(e.status(), render("message.html", &c).unwrap_or(message))
        }
    }
}

/// A result page after a form: what was done, and (once) a generated secret.
fn done(req: &Req, auth: &Auth, message: String, secret: Option<String>, back: &str) -> Response {
    let mut c = context(req.lang);
    c.insert("title", &req.lang.t("done_title"));
    c.insert("message", &message);
    c.insert("secret", &secret);
    c.insert("back", &Some(back.to_owned()));
    c.insert("error", &Option::<String>::None);
    c.insert("help", &Option::<String>::None);
    page(req, auth, "message.html", c, StatusCode::OK)
}

/// `/admin/…`.
pub async fn route(ctx: &Arc<Context>, req: &Req) -> Response {
    let auth = match auth::require(ctx, req).await {
        Ok(a) => a,
        Err(e) => return error_page(req, None, &e),
    };
    if auth.access.role == Role::User {
        return redirect("/account/");
    }
    let rest = req.path.strip_prefix("/admin").unwrap_or("");
    let segments: Vec<String> = rest.split('/').filter(|s| !s.is_empty()).map(decode_segment).collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let form = req.form();
    if req.is_post() {
        if let Err(e) = auth::check_csrf(&auth, &form) {
            return error_page(req, Some(&auth), &e);
        }
    }
    let result = match (req.is_post(), seg.as_slice()) {
        (false, []) => dashboard(ctx, req, &auth).await,
        (false, ["domains"]) => domains(ctx, req, &auth).await,
        (true, ["domains"]) => domains_post(ctx, req, &auth, &form).await,
        (false, ["domains", d]) => domain(ctx, req, &auth, d).await,
        (false, ["accounts"]) => accounts(ctx, req, &auth).await,
        (true, ["accounts"]) => accounts_post(ctx, req, &auth, &form).await,
        (false, ["accounts", a]) => account(ctx, req, &auth, a).await,
        (true, ["accounts", a]) => account_post(ctx, req, &auth, a, &form).await,
        (false, ["aliases"]) => aliases(ctx, req, &auth).await,
        (true, ["aliases"]) => aliases_post(ctx, req, &auth, &form).await,
        (false, ["queue"]) => queue(ctx, req, &auth).await,
        (true, ["queue"]) => queue_post(ctx, req, &auth, &form).await,
        (false, ["bans"]) => bans(ctx, req, &auth).await,
        (true, ["bans"]) => bans_post(ctx, req, &auth, &form).await,
        (false, ["audit"]) => audit(ctx, req, &auth).await,
        _ => Err(WebError::NotFound),
    };
    result.unwrap_or_else(|e| error_page(req, Some(&auth), &e))
}

type PageResult = Result<Response, WebError>;

/// `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn parse_quota(s: &str, lang: Lang) -> Result<u64, WebError> {
    if s.trim().is_empty() {
        return Ok(0);
    }
    admin::user::parse_quota(s).map_err(|e| WebError::BadRequest(format!("{e} ({})", lang.t("quota_hint"))))
}

fn date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

// ---- dashboard -------------------------------------------------------------------------

#[derive(Serialize)]
struct Service {
    name: &'static str,
    addrs: String,
}

async fn dashboard(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let mut c = context(req.lang);
    let domains = ops::domains(ctx, &auth.actor).await?;
    let accounts = ops::accounts(ctx, &auth.actor, None).await?;
    c.insert("domain_count", &domains.len());
    c.insert("account_count", &accounts.len());
    c.insert("domains", &domains);
    if auth.actor.is_admin() {
        let config = &ctx.config;
        let services: Vec<Service> = config
            .listeners()
            .into_iter()
            .chain(config.web_listeners())
            .filter(|(_, a)| !a.is_empty())
            .map(|(name, a)| Service {
                name,
                addrs: a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "),
            })
            .collect();
        c.insert("services", &services);
        let queue = ops::queue(ctx, &auth.actor).await?;
        c.insert("queue_size", &queue.len());
        c.insert("queue_oldest", &queue.iter().map(|e| e.created.clone()).min());
        let data_dir = config.data_dir.clone();
        let free = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&data_dir).ok())
            .await
            .ok()
            .flatten()
            .map(|s| {
                (
                    s.blocks_available() as u64 * s.fragment_size() as u64,
                    s.blocks() as u64 * s.fragment_size() as u64,
                )
            });
        c.insert("disk_free", &free.map(|(f, _)| human_size(f)));
        c.insert("disk_total", &free.map(|(_, t)| human_size(t)));
        let cert = ctx.certs.as_ref().map(|s| s.info());
        c.insert("cert_until", &cert.as_ref().map(|i| date(i.not_after)));
        c.insert("cert_days", &cert.as_ref().map(|i| (i.not_after - chrono::Utc::now().timestamp()) / 86400));
        c.insert("cert_names", &cert.as_ref().map(|i| i.names.join(", ")));
        c.insert("cert_self_signed", &cert.as_ref().is_some_and(|i| i.self_signed));
        c.insert("last_check", &last_check(&ctx.config.data_dir));
        c.insert("bans", &ops::bans(ctx, &auth.actor).await?.len());
    }
    Ok(page(req, auth, "dashboard.html", c, StatusCode::OK))
}

/// The last `posthaste check` (the CLI saves its report in the data directory).
#[derive(Serialize)]
struct LastCheck {
    ok: bool,
    passed: usize,
    failed: usize,
    when: String,
    failures: Vec<String>,
}

fn last_check(data_dir: &std::path::Path) -> Option<LastCheck> {
    let path = data_dir.join(crate::check::LAST_REPORT);
    let text = std::fs::read_to_string(&path).ok()?;
    let report: crate::check::Report = serde_json::from_str(&text).ok()?;
    let when = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| date(crate::guard::bans::unix_secs(t) as i64))
        .unwrap_or_default();
    Some(LastCheck {
        ok: report.ok,
        passed: report.passed,
        failed: report.failed,
        when,
        failures: report
            .checks
            .iter()
            .filter(|c| c.status == crate::check::Status::Fail)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect(),
    })
}

// ---- domains ---------------------------------------------------------------------------

async fn domains(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let mut c = context(req.lang);
    c.insert("domains", &ops::domains(ctx, &auth.actor).await?);
    Ok(page(req, auth, "domains.html", c, StatusCode::OK))
}

async fn domains_post(ctx: &Arc<Context>, req: &Req, auth: &Auth, form: &Form) -> PageResult {
    let name = form.text("name");
    let l = req.lang;
    match form.text("action") {
        "add" => {
            let added = ops::domain_add(ctx, &auth.actor, name).await?;
            Ok(done(
                req,
                auth,
                format!("{} {}", l.t("domain_added"), added.domain),
                None,
                &format!("/admin/domains/{}", encode(&added.domain)),
            ))
        }
        "remove" => {
            let removed = ops::domain_remove(ctx, &auth.actor, name, form.checked("force")).await?;
            Ok(done(
                req,
                auth,
                format!("{} {}", l.t("domain_removed"), removed.domain),
                None,
                "/admin/domains",
            ))
        }
        _ => Err(WebError::BadRequest("unknown action".into())),
    }
}

async fn domain(ctx: &Arc<Context>, req: &Req, auth: &Auth, name: &str) -> PageResult {
    let records = ops::domain_dns(ctx, &auth.actor, name).await?;
    let mut c = context(req.lang);
    c.insert("domain", &records.first().map(|r| r.domain.clone()).unwrap_or_else(|| name.to_owned()));
    c.insert("records", &records);
    c.insert("zone", &records.iter().map(|r| r.zone_line()).collect::<String>());
    Ok(page(req, auth, "domain.html", c, StatusCode::OK))
}

// ---- accounts --------------------------------------------------------------------------

#[derive(Serialize)]
struct AccountRow {
    address: String,
    quota: String,
    used: String,
    percent: u64,
    enabled: bool,
}

async fn accounts(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let domain = req.query("domain").filter(|d| !d.is_empty());
    let all = ops::accounts(ctx, &auth.actor, domain).await?;
    let pages = all.len().div_ceil(PAGE_SIZE).max(1);
    let page_no = req.query("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, pages);
    let shown = &all[((page_no - 1) * PAGE_SIZE).min(all.len())..(page_no * PAGE_SIZE).min(all.len())];
    let usage = ops::usage_of(ctx, shown).await;
    let rows: Vec<AccountRow> = shown
        .iter()
        .zip(usage)
        .map(|(a, (bytes, _))| AccountRow {
            address: a.address.clone(),
            quota: if a.quota == 0 { req.lang.t("unlimited") } else { human_size(a.quota) },
            used: human_size(bytes),
            percent: if a.quota == 0 { 0 } else { (bytes.saturating_mul(100) / a.quota).min(100) },
            enabled: a.enabled,
        })
        .collect();
    let mut c = context(req.lang);
    c.insert("accounts", &rows);
    c.insert("total", &all.len());
    c.insert("page", &page_no);
    c.insert("pages", &pages);
    c.insert("domain", &domain);
    c.insert("domains", &ops::domains(ctx, &auth.actor).await?);
    Ok(page(req, auth, "accounts.html", c, StatusCode::OK))
}

async fn accounts_post(ctx: &Arc<Context>, req: &Req, auth: &Auth, form: &Form) -> PageResult {
    let quota = parse_quota(form.text("quota"), req.lang)?;
    let password = form.get("password").filter(|p| !p.is_empty());
    let added = ops::account_add(ctx, &auth.actor, form.text("address"), password, quota).await?;
    let back = format!("/admin/accounts/{}", encode(&added.account.address));
    Ok(done(
        req,
        auth,
        format!("{} {}", req.lang.t("account_added"), added.account.address),
        added.password,
        &back,
    ))
}

async fn account(ctx: &Arc<Context>, req: &Req, auth: &Auth, address: &str) -> PageResult {
    let view = ops::account(ctx, &auth.actor, address).await?;
    let mut c = context(req.lang);
    c.insert(
        "quota_h",
        &if view.account.quota == 0 { req.lang.t("unlimited") } else { human_size(view.account.quota) },
    );
    c.insert("used_h", &human_size(view.used_bytes));
    c.insert("account", &view);
    c.insert("domains", &ops::domains(ctx, &auth.actor).await?);
    Ok(page(req, auth, "account_admin.html", c, StatusCode::OK))
}

async fn account_post(ctx: &Arc<Context>, req: &Req, auth: &Auth, address: &str, form: &Form) -> PageResult {
    let l = req.lang;
    let back = format!("/admin/accounts/{}", encode(address));
    match form.text("action") {
        "passwd" => {
            let generated = ops::account_passwd(ctx, &auth.actor, address, form.get("password")).await?;
            Ok(done(req, auth, format!("{} {address}", l.t("password_changed")), generated, &back))
        }
        "quota" => {
            let c =
                ops::account_quota(ctx, &auth.actor, address, parse_quota(form.text("quota"), l)?).await?;
            let q = if c.after == 0 { l.t("unlimited") } else { human_size(c.after) };
            Ok(done(req, auth, format!("{}: {q}", l.t("quota_changed")), None, &back))
        }
        "disable" | "enable" => {
            let enable = form.text("action") == "enable";
            ops::account_enabled(ctx, &auth.actor, address, enable).await?;
            Ok(done(req, auth, l.t(if enable { "account_enabled" } else { "account_disabled" }), None, &back))
        }
        "remove" => {
            let r = ops::account_remove(ctx, &auth.actor, address, form.checked("purge")).await?;
            Ok(done(req, auth, format!("{} {}", l.t("account_removed"), r.address), None, "/admin/accounts"))
        }
        "role" => {
            let role =
                Role::parse(form.text("role")).ok_or_else(|| WebError::BadRequest("unknown role".into()))?;
            let domains: Vec<String> =
                form.text("domains").split([',', ' ']).filter(|d| !d.is_empty()).map(str::to_owned).collect();
            let c = ops::account_role(ctx, &auth.actor, address, role, &domains).await?;
            Ok(done(req, auth, format!("{}: {}", l.t("role_changed"), c.after.role.as_str()), None, &back))
        }
        _ => Err(WebError::BadRequest("unknown action".into())),
    }
}

// ---- aliases ---------------------------------------------------------------------------

async fn aliases(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let domain = req.query("domain").filter(|d| !d.is_empty());
    let mut c = context(req.lang);
    c.insert("aliases", &ops::aliases(ctx, &auth.actor, domain).await?);
    c.insert("domain", &domain);
    c.insert("domains", &ops::domains(ctx, &auth.actor).await?);
    Ok(page(req, auth, "aliases.html", c, StatusCode::OK))
}

async fn aliases_post(ctx: &Arc<Context>, req: &Req, auth: &Auth, form: &Form) -> PageResult {
    let l = req.lang;
    match form.text("action") {
        "add" => {
            let dests: Vec<String> = form
                .text("destinations")
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
            let a = ops::alias_add(ctx, &auth.actor, form.text("source"), &dests).await?;
            Ok(done(
                req,
                auth,
                format!("{} {} → {}", l.t("alias_added"), a.source, a.added.join(", ")),
                None,
                "/admin/aliases",
            ))
        }
        "remove" => {
            let dest = form.get("destination").filter(|d| !d.is_empty());
            let r = ops::alias_remove(ctx, &auth.actor, form.text("source"), dest).await?;
            Ok(done(req, auth, format!("{} {}", l.t("alias_removed"), r.source), None, "/admin/aliases"))
        }
        _ => Err(WebError::BadRequest("unknown action".into())),
    }
}

// ---- queue, bans, audit ----------------------------------------------------------------

async fn queue(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let entries = ops::queue(ctx, &auth.actor).await?;
    let mut c = context(req.lang);
    c.insert("entries", &entries);
    Ok(page(req, auth, "queue.html", c, StatusCode::OK))
}

async fn queue_post(ctx: &Arc<Context>, req: &Req, auth: &Auth, form: &Form) -> PageResult {
    let id = form.get("id").filter(|i| !i.is_empty());
    match form.text("action") {
        "retry" => {
            ops::queue_retry(ctx, &auth.actor, id).await?;
            Ok(done(req, auth, req.lang.t("queue_retried"), None, "/admin/queue"))
        }
        "delete" => {
            let id = id.ok_or_else(|| WebError::BadRequest("which message?".into()))?;
            ops::queue_delete(ctx, &auth.actor, id).await?;
            Ok(done(req, auth, format!("{} {id}", req.lang.t("queue_deleted")), None, "/admin/queue"))
        }
        _ => Err(WebError::BadRequest("unknown action".into())),
    }
}

async fn bans(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let mut c = context(req.lang);
    c.insert("bans", &ops::bans(ctx, &auth.actor).await?);
    c.insert("allow", &ctx.config.guard.allow);
    Ok(page(req, auth, "bans.html", c, StatusCode::OK))
}

async fn bans_post(ctx: &Arc<Context>, req: &Req, auth: &Auth, form: &Form) -> PageResult {
    let ip: std::net::IpAddr = form
        .text("ip")
        .parse()
        .map_err(|_| WebError::BadRequest(format!("{:?} is not an IP address", form.text("ip"))))?;
    match form.text("action") {
        "unban" => {
            ops::unban(ctx, &auth.actor, ip).await?;
            Ok(done(req, auth, format!("{} {ip}", req.lang.t("unbanned")), None, "/admin/bans"))
        }
        "ban" => {
            let reason = Some(form.text("reason"))
                .filter(|r| !r.is_empty())
                .unwrap_or("banned by the administrator (web)");
            let b = ops::ban(ctx, &auth.actor, ip, None, reason).await?;
            Ok(done(
                req,
                auth,
                format!("{} {ip} ({})", req.lang.t("banned_until"), b.until),
                None,
                "/admin/bans",
            ))
        }
        _ => Err(WebError::BadRequest("unknown action".into())),
    }
}

#[derive(Serialize)]
struct AuditRow {
    when: String,
    actor: String,
    client: String,
    action: String,
    target: String,
    detail: String,
}

async fn audit(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> PageResult {
    let rows: Vec<AuditRow> = ops::audit_log(ctx, &auth.actor, 200)
        .await?
        .into_iter()
        .map(|e| AuditRow {
            when: chrono::DateTime::from_timestamp_micros(e.at)
                .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            actor: e.actor,
            client: e.client,
            action: e.action,
            target: e.target,
            detail: e.detail,
        })
        .collect();
    let mut c = context(req.lang);
    c.insert("entries", &rows);
    Ok(page(req, auth, "audit.html", c, StatusCode::OK))
}
