//! Self-service, `/account/`: any account logs in with its address and password and can
//! change its password (the current one required), see its quota, manage app passwords
//! and its second factor, and find how to set up a mail client (including an Apple
//! profile to download).
//!
//! Vacation replies, forwarding and allow/block lists come with the mail-rules work: each
//! will be one more `action` of [`post`] calling its `admin::*` function and one more
//! section of `self.html`, beside the ones here.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Serialize;

use super::auth::{self, Auth};
use super::http::{response, Form, Req, Response};
use super::ops::{self, WebError};
use super::pages::{error_page, human_size, page};
use super::render::context;
use super::Context;
use crate::address::Address;
use crate::admin;
use crate::guard::{Event, Verdict};

pub async fn route(ctx: &Arc<Context>, req: &Req) -> Response {
    let auth = match auth::require(ctx, req).await {
        Ok(a) => a,
        Err(e) => return error_page(req, None, &e),
    };
    let form = req.form();
    if req.is_post() {
        if let Err(e) = auth::check_csrf(&auth, &form) {
            return error_page(req, Some(&auth), &e);
        }
    }
    let result = match (req.is_post(), req.path.as_str()) {
        (false, "/account/" | "/account") => overview(ctx, req, &auth, None, None).await,
        (true, "/account/" | "/account") => post(ctx, req, &auth, &form).await,
        (false, "/account/setup") => setup(ctx, req, &auth),
        (false, "/account/setup/posthaste.mobileconfig") => Ok(mobileconfig(ctx, &auth)),
        _ => Err(WebError::NotFound),
    };
    result.unwrap_or_else(|e| error_page(req, Some(&auth), &e))
}

#[derive(Serialize)]
struct AppRow {
    id: String,
    name: String,
    created: String,
    last_used: String,
}

fn date(secs: i64) -> String {
    if secs == 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// What the overview shows besides the account: a message (what was just done), and
/// secrets shown once (a new app password, a pending TOTP secret, recovery codes).
#[derive(Default, Serialize)]
struct Shown {
    app_password: Option<String>,
    totp_secret: Option<String>,
    totp_uri: Option<String>,
    recovery_codes: Vec<String>,
}

async fn overview(
    ctx: &Arc<Context>,
    req: &Req,
    auth: &Auth,
    message: Option<String>,
    shown: Option<Shown>,
) -> Result<Response, WebError> {
    let addr = Address::parse(&auth.access.address).map_err(|_| WebError::Unauthorized)?;
    let account = ctx.dir.get_account(&addr).await?.ok_or(WebError::Unauthorized)?;
    let usage = ops::usage_of(ctx, std::slice::from_ref(&account)).await;
    let (bytes, messages) = usage.first().copied().unwrap_or((0, 0));
    let apps: Vec<AppRow> = admin::security::list_app_passwords(&ctx.dir, &addr)
        .await?
        .into_iter()
        .map(|p| AppRow { id: p.id, name: p.name, created: date(p.created), last_used: date(p.last_used) })
        .collect();
    let twofa = admin::security::status_2fa(&ctx.dir, &addr).await?;
    let pending = !twofa.enabled && !ctx.dir.totp_state(&auth.access.address).await?.secret.is_empty();
    let mut c = context(req.lang);
    c.insert("quota", &if account.quota == 0 { req.lang.t("unlimited") } else { human_size(account.quota) });
    c.insert("used", &human_size(bytes));
    c.insert("messages", &messages);
    c.insert(
        "percent",
        &if account.quota == 0 { 0 } else { (bytes.saturating_mul(100) / account.quota).min(100) },
    );
    c.insert("apps", &apps);
    c.insert("twofa", &twofa);
    c.insert("twofa_pending", &pending);
    c.insert("message", &message);
    c.insert("shown", &shown.unwrap_or_default());
    Ok(page(req, auth, "self.html", c, StatusCode::OK))
}

/// The account password is asked again for changes that would let a thief keep the
/// account; a wrong one counts in the guard like a failed login.
async fn confirm_password(ctx: &Context, req: &Req, auth: &Auth, password: &str) -> Result<(), WebError> {
    match ctx.dir.authenticate_web(&auth.access.address, password).await? {
        Some(_) => Ok(()),
        None => {
            tracing::info!(event = "auth_failure", protocol = "web", client = %req.client, "wrong current password in self-service");
            if ctx.guard.record(req.client, Event::AuthFailure { protocol: "web" }) != Verdict::Allow {
                ctx.sessions.remove(&auth.session.id);
                return Err(WebError::Banned);
            }
            Err(WebError::BadRequest(req.lang.t("current_password_wrong")))
        }
    }
}

async fn post(ctx: &Arc<Context>, req: &Req, auth: &Auth, form: &Form) -> Result<Response, WebError> {
    let l = req.lang;
    let me = auth.access.address.clone();
    let addr = Address::parse(&me).map_err(|_| WebError::Unauthorized)?;
    let issuer = ctx.config.hostname.clone();
    let now = crate::guard::bans::now_secs();
    match form.text("action") {
        "password" => {
            let new = form.get("new").unwrap_or("");
            if new != form.get("confirm").unwrap_or("") {
                return Err(WebError::BadRequest(l.t("passwords_differ")));
            }
            confirm_password(ctx, req, auth, form.get("current").unwrap_or("")).await?;
            let p = admin::user::Password::Plain { text: new.to_owned(), from: "the form" };
            admin::user::passwd(&ctx.dir, &addr, &p, false).await?;
            // Other browsers logged in as this account are logged out; this one stays.
            ctx.sessions.end_all_of(&me, Some(&auth.session.id));
            ops::audit_self(ctx, &me, req.client, "self.passwd", "").await;
            overview(ctx, req, auth, Some(l.t("password_changed_self")), None).await
        }
        "app_add" => {
            let n = admin::security::add_app_password(&ctx.dir, &addr, form.text("name")).await?;
            ops::audit_self(ctx, &me, req.client, "self.app_password.add", &n.app_password.name).await;
            let shown = Shown { app_password: Some(n.password), ..Default::default() };
            overview(
                ctx,
                req,
                auth,
                Some(format!("{} {}", l.t("app_password_added"), n.app_password.name)),
                Some(shown),
            )
            .await
        }
        "app_remove" => {
            let p = admin::security::remove_app_password(&ctx.dir, &addr, form.text("id")).await?;
            ops::audit_self(ctx, &me, req.client, "self.app_password.remove", &p.name).await;
            overview(ctx, req, auth, Some(format!("{} {}", l.t("app_password_removed"), p.name)), None).await
        }
        "2fa_begin" => {
            let t = admin::security::begin_2fa(&ctx.dir, &issuer, &addr).await?;
            let shown = Shown { totp_secret: Some(t.secret), totp_uri: Some(t.uri), ..Default::default() };
            overview(ctx, req, auth, None, Some(shown)).await
        }
        "2fa_confirm" => {
            let codes = admin::security::confirm_2fa(&ctx.dir, &addr, form.text("code"), now).await?;
            ops::audit_self(ctx, &me, req.client, "self.2fa.enable", "").await;
            let shown = Shown { recovery_codes: codes, ..Default::default() };
            overview(ctx, req, auth, Some(l.t("twofa_enabled")), Some(shown)).await
        }
        "2fa_disable" => {
            confirm_password(ctx, req, auth, form.get("password").unwrap_or("")).await?;
            if !admin::security::check_second_factor(&ctx.dir, &me, form.text("code"), now).await? {
                ctx.guard.record(req.client, Event::AuthFailure { protocol: "web" });
                return Err(WebError::BadRequest(l.t("code_wrong")));
            }
            admin::security::disable_2fa(&ctx.dir, &addr).await?;
            ops::audit_self(ctx, &me, req.client, "self.2fa.disable", "").await;
            overview(ctx, req, auth, Some(l.t("twofa_disabled")), None).await
        }
        "recovery_new" => {
            confirm_password(ctx, req, auth, form.get("password").unwrap_or("")).await?;
            let codes = admin::security::new_recovery_codes(&ctx.dir, &addr).await?;
            ops::audit_self(ctx, &me, req.client, "self.2fa.recovery_codes", "").await;
            let shown = Shown { recovery_codes: codes, ..Default::default() };
            overview(ctx, req, auth, Some(l.t("recovery_new_done")), Some(shown)).await
        }
        _ => Err(WebError::BadRequest("unknown action".into())),
    }
}

fn setup(ctx: &Arc<Context>, req: &Req, auth: &Auth) -> Result<Response, WebError> {
    let mut c = context(req.lang);
    let servers = super::autoconfig::servers(&ctx.config);
    let domain = auth.access.address.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
    c.insert("servers", &servers);
    c.insert("hostname", &ctx.config.hostname);
    c.insert("domain", &domain);
    Ok(page(req, auth, "setup.html", c, StatusCode::OK))
}

fn mobileconfig(ctx: &Arc<Context>, auth: &Auth) -> Response {
    let body = super::autoconfig::mobileconfig(&ctx.config, &auth.access.address);
    let mut r = response(StatusCode::OK, "application/x-apple-aspen-config", body);
    r.headers_mut().insert(
        hyper::header::CONTENT_DISPOSITION,
        hyper::header::HeaderValue::from_static("attachment; filename=\"posthaste.mobileconfig\""),
    );
    r
}
