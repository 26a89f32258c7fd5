//! Logging in (`/admin/login`, also `/account/login`), the second factor, logging out, and
//! what every page behind a login checks first.
//!
//! Failed passwords and second-factor codes count against the client in the guard as
//! `AuthFailure { protocol: "web" }`, exactly like a failed IMAP login: enough of them ban
//! the address for every listener. Only the account password logs in here, never an app
//! password (`Directory::authenticate_web`).

use hyper::StatusCode;
use tracing::info;

use super::http::{add_cookie, html, redirect, Req, Response};
use super::ops::{Actor, WebError};
use super::render::{context, render};
use super::session::{self, Session, Stage};
use super::Context;
use crate::admin;
use crate::directory::{secret, Role, WebAccess};
use crate::guard::{Event, Verdict};

/// A request from a logged-in user.
pub struct Auth {
    pub session: Session,
    pub access: WebAccess,
    pub actor: Actor,
}

/// The logged-in user of this request, with rights read afresh (a role taken away or an
/// account disabled counts from the next request).
pub async fn require(ctx: &Context, req: &Req) -> Result<Auth, WebError> {
    let id = req.cookie(session::COOKIE).ok_or(WebError::Unauthorized)?;
    let s = ctx.sessions.get(id).ok_or(WebError::Unauthorized)?;
    if s.stage != Stage::Full {
        return Err(WebError::Unauthorized);
    }
    let addr = crate::address::Address::parse(&s.account).map_err(|_| WebError::Unauthorized)?;
    let account = ctx.dir.get_account(&addr).await?;
    let access = match (account, ctx.dir.web_access(&addr).await?) {
        (Some(a), Some(access)) if a.enabled => access,
        _ => {
            ctx.sessions.remove(&s.id);
            return Err(WebError::Unauthorized);
        }
    };
    let actor = Actor::from_access(&access, req.client);
    Ok(Auth { session: s, access, actor })
}

/// Every POST behind a login must carry the session's CSRF token.
pub fn check_csrf(auth: &Auth, form: &super::http::Form) -> Result<(), WebError> {
    match form.get("csrf") {
        Some(t) if secret::same(t, &auth.session.csrf) => Ok(()),
        _ => Err(WebError::Csrf),
    }
}

/// Where to go after logging in: a local path given by the login link, else by role.
fn landing(next: Option<&str>, role: Role) -> String {
    match next {
        // Only our own paths: `//evil.example` or `/\evil` would leave the site.
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.contains("://") => {
            n.to_owned()
        }
        _ if role == Role::User => "/account/".to_owned(),
        _ => "/admin/".to_owned(),
    }
}

fn login_page(req: &Req, status: StatusCode, error: Option<String>, next: &str) -> Response {
    let token = secret::random_hex(16);
    let mut c = context(req.lang);
    c.insert("csrf", &token);
    c.insert("next", next);
    c.insert("error", &error);
    c.insert("path", &req.path);
    let mut resp = match render("login.html", &c) {
        Ok(body) => html(status, body),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    add_cookie(&mut resp, &session::login_cookie(&token));
    resp
}

fn banned(req: &Req) -> Response {
    let mut c = context(req.lang);
    c.insert("title", &req.lang.t("banned_title"));
    c.insert("error", &req.lang.t("banned_text"));
    c.insert("help", &Option::<String>::None);
    c.insert("back", &Option::<String>::None);
    c.insert("path", &req.path);
    html(StatusCode::FORBIDDEN, render("message.html", &c).unwrap_or_default())
}

/// `GET|POST /admin/login`.
pub async fn login(ctx: &Context, req: &Req) -> Response {
    if ctx.guard.check(req.client).is_banned() {
        return banned(req);
    }
    if !req.is_post() {
        return login_page(req, StatusCode::OK, None, req.query("next").unwrap_or(""));
    }
    let form = req.form();
    let next = form.text("next").to_owned();
    // The double-submit check: the form's token must be the cookie's.
    let cookie_ok = match (req.cookie(session::LOGIN_COOKIE), form.get("csrf")) {
        (Some(c), Some(f)) => secret::same(c, f),
        _ => false,
    };
    if !cookie_ok {
        return login_page(req, StatusCode::FORBIDDEN, Some(req.lang.t("csrf_error")), &next);
    }
    let user = form.text("username");
    let found = match ctx.dir.authenticate_web(user, form.get("password").unwrap_or("")).await {
        Ok(a) => a,
        Err(e) => return login_page(req, StatusCode::INTERNAL_SERVER_ERROR, Some(e.to_string()), &next),
    };
    let Some(account) = found else {
        info!(event = "auth_failure", protocol = "web", client = %req.client, "web login failed");
        if ctx.guard.record(req.client, Event::AuthFailure { protocol: "web" }) != Verdict::Allow {
            return banned(req);
        }
        return login_page(req, StatusCode::UNAUTHORIZED, Some(req.lang.t("login_failed")), &next);
    };
    let addr = crate::address::Address::parse(&account.address).expect("stored addresses parse");
    let access = match ctx.dir.web_access(&addr).await {
        Ok(Some(a)) => a,
        _ => {
            return login_page(
                req,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(req.lang.t("login_failed")),
                &next,
            )
        }
    };
    let stage = if access.totp { Stage::SecondFactor } else { Stage::Full };
    let s = ctx.sessions.create(&account.address, stage, req.client);
    let target = if stage == Stage::SecondFactor {
        format!("/login/2fa?next={}", super::http::encode(&next))
    } else {
        info!(event = "web_login", account = %account.address, client = %req.client, "web login");
        landing(Some(&next).filter(|n| !n.is_empty()).map(String::as_str), access.role)
    };
    let mut resp = redirect(&target);
    add_cookie(&mut resp, &ctx.sessions.cookie(&s));
    add_cookie(&mut resp, &session::clear_cookie(session::LOGIN_COOKIE));
    resp
}

fn factor_page(req: &Req, s: &Session, status: StatusCode, error: Option<String>, next: &str) -> Response {
    let mut c = context(req.lang);
    c.insert("csrf", &s.csrf);
    c.insert("next", next);
    c.insert("error", &error);
    c.insert("path", &req.path);
    match render("second_factor.html", &c) {
        Ok(body) => html(status, body),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET|POST /login/2fa`: the code from the app, or a recovery code.
pub async fn second_factor(ctx: &Context, req: &Req) -> Response {
    if ctx.guard.check(req.client).is_banned() {
        return banned(req);
    }
    let Some(s) = req.cookie(session::COOKIE).and_then(|id| ctx.sessions.get(id)) else {
        return redirect("/admin/login");
    };
    if s.stage == Stage::Full {
        return redirect("/account/");
    }
    if !req.is_post() {
        return factor_page(req, &s, StatusCode::OK, None, req.query("next").unwrap_or(""));
    }
    let form = req.form();
    let next = form.text("next").to_owned();
    if !form.get("csrf").is_some_and(|t| secret::same(t, &s.csrf)) {
        return factor_page(req, &s, StatusCode::FORBIDDEN, Some(req.lang.t("csrf_error")), &next);
    }
    let now = crate::guard::bans::now_secs();
    let ok = admin::security::check_second_factor(&ctx.dir, &s.account, form.text("code"), now)
        .await
        .unwrap_or(false);
    if !ok {
        info!(event = "auth_failure", protocol = "web", stage = "second factor", client = %req.client, "web second factor failed");
        let verdict = ctx.guard.record(req.client, Event::AuthFailure { protocol: "web" });
        // A session gets a few tries; then the password must be given again.
        if ctx.sessions.factor_failed(&s.id) >= 5 || verdict != Verdict::Allow {
            ctx.sessions.remove(&s.id);
            return if verdict != Verdict::Allow { banned(req) } else { redirect("/admin/login") };
        }
        return factor_page(req, &s, StatusCode::UNAUTHORIZED, Some(req.lang.t("code_wrong")), &next);
    }
    let Some(full) = ctx.sessions.promote(&s.id) else { return redirect("/admin/login") };
    let role = match crate::address::Address::parse(&full.account) {
        Ok(a) => ctx.dir.web_access(&a).await.ok().flatten().map_or(Role::User, |w| w.role),
        Err(_) => Role::User,
    };
    info!(event = "web_login", account = %full.account, client = %req.client, second_factor = true, "web login");
    let mut resp = redirect(&landing(Some(&next).filter(|n| !n.is_empty()).map(String::as_str), role));
    add_cookie(&mut resp, &ctx.sessions.cookie(&full));
    resp
}

/// `POST /logout`.
pub async fn logout(ctx: &Context, req: &Req) -> Response {
    if let Ok(auth) = require(ctx, req).await {
        if check_csrf(&auth, &req.form()).is_err() {
            return redirect("/account/");
        }
        ctx.sessions.remove(&auth.session.id);
    }
    let mut resp = redirect("/admin/login");
    add_cookie(&mut resp, &session::clear_cookie(session::COOKIE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_stays_on_this_site() {
        assert_eq!(landing(Some("/admin/queue"), Role::Admin), "/admin/queue");
        for evil in ["//evil.example/", "https://evil.example/", "/\\evil.example", "evil"] {
            assert_eq!(landing(Some(evil), Role::User), "/account/", "{evil}");
        }
        assert_eq!(landing(None, Role::DomainAdmin), "/admin/");
    }
}
