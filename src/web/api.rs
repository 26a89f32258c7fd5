//! The JSON API, `/api/v1/`: the admin areas for scripts, with the same scope rules as the
//! pages (`ops`). Authentication: `Authorization: Bearer ph_…` from `posthaste token
//! create`, or a logged-in browser session (then every change must also send the
//! session's CSRF token in `X-CSRF-Token`). Errors are `{"kind", "message", "help"}`
//! with a status from the kind. `/api/v1/openapi.json` describes it all (no login).
//!
//! `POST /api/v1/account/password` is self-service for programs that hold the user's
//! current password (a webmail's password plugin): it authenticates with that password.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{decode_segment, json as json_resp, Req, Response};
use super::ops::{self, Actor, WebError};
use super::Context;
use crate::address::Address;
use crate::admin;
use crate::directory::{secret, Role};
use crate::guard::{Event, Verdict};

fn error(e: &WebError) -> Response {
    let (kind, message, help) = e.parts();
    json_resp(e.status(), &json!({"kind": kind, "message": message, "help": help}))
}

async fn actor(ctx: &Context, req: &Req) -> Result<Actor, WebError> {
    if let Some(auth) = req.header("authorization") {
        let token = auth.strip_prefix("Bearer ").ok_or(WebError::Unauthorized)?.trim();
        return match admin::token::authenticate(&ctx.dir, token).await? {
            Some(t) => Ok(Actor {
                name: format!("token:{}", t.id),
                role: t.role,
                domains: t.domains,
                client: req.client,
            }),
            None => {
                // A wrong token is a failed login: guessing them gets the client banned.
                ctx.guard.record(req.client, Event::AuthFailure { protocol: "web" });
                Err(WebError::Unauthorized)
            }
        };
    }
    let auth = super::auth::require(ctx, req).await?;
    if req.method != Method::GET
        && !req.header("x-csrf-token").is_some_and(|t| secret::same(t, &auth.session.csrf))
    {
        return Err(WebError::Csrf);
    }
    Ok(auth.actor)
}

fn body<T: for<'de> Deserialize<'de>>(req: &Req) -> Result<T, WebError> {
    serde_json::from_slice(&req.body)
        .map_err(|e| WebError::BadRequest(format!("the request body is not the JSON expected: {e}")))
}

fn ok<T: serde::Serialize>(v: &T) -> Result<Response, WebError> {
    Ok(json_resp(StatusCode::OK, v))
}

fn created<T: serde::Serialize>(v: &T) -> Result<Response, WebError> {
    Ok(json_resp(StatusCode::CREATED, v))
}

pub async fn route(ctx: &Arc<Context>, req: &Req) -> Response {
    if ctx.guard.check(req.client).is_banned() {
        return error(&WebError::Banned);
    }
    let rest = req.path.strip_prefix("/api/v1").unwrap_or("");
    let segments: Vec<String> = rest.split('/').filter(|s| !s.is_empty()).map(decode_segment).collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&req.method, seg.as_slice()) {
        (&Method::GET, ["openapi.json"]) => return json_resp(StatusCode::OK, &openapi(&ctx.config.hostname)),
        (&Method::POST, ["account", "password"]) => {
            return self_password(ctx, req).await.unwrap_or_else(|e| error(&e))
        }
        _ => {}
    }
    let actor = match actor(ctx, req).await {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    if actor.role == Role::User {
        return error(&WebError::Forbidden("the API is for administrators; users have /account/".into()));
    }
    dispatch(ctx, req, &actor, &seg).await.unwrap_or_else(|e| error(&e))
}

#[derive(Deserialize)]
struct NewDomain {
    name: String,
}

#[derive(Deserialize)]
struct NewAccount {
    address: String,
    /// Absent: a generated one, returned once.
    password: Option<String>,
    /// Bytes or `2G`; absent or 0 = unlimited.
    quota: Option<Value>,
}

#[derive(Deserialize)]
struct AccountChange {
    quota: Option<Value>,
    enabled: Option<bool>,
    /// A new password; `""` = a generated one, returned.
    password: Option<String>,
    role: Option<Role>,
    domains: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct NewAlias {
    source: String,
    destinations: Vec<String>,
}

#[derive(Deserialize)]
struct NewBan {
    ip: IpAddr,
    /// `30m`, `1h`, `7d`; absent = the guard's ban time.
    duration: Option<String>,
    reason: Option<String>,
}

fn quota(v: Option<&Value>) -> Result<u64, WebError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| WebError::BadRequest("quota must be a whole number of bytes".into()))
        }
        Some(Value::String(s)) => admin::user::parse_quota(s).map_err(WebError::BadRequest),
        Some(_) => Err(WebError::BadRequest("quota is a number of bytes or a size like \"2G\"".into())),
    }
}

async fn dispatch(ctx: &Arc<Context>, req: &Req, a: &Actor, seg: &[&str]) -> Result<Response, WebError> {
    let flag = |name: &str| req.query(name).is_some_and(|v| v == "true" || v == "1");
    match (&req.method, seg) {
        (&Method::GET, ["status"]) => status(ctx, a).await,
        (&Method::GET, ["domains"]) => ok(&ops::domains(ctx, a).await?),
        (&Method::POST, ["domains"]) => {
            created(&ops::domain_add(ctx, a, &body::<NewDomain>(req)?.name).await?)
        }
        (&Method::DELETE, ["domains", d]) => ok(&ops::domain_remove(ctx, a, d, flag("force")).await?),
        (&Method::GET, ["domains", d, "dns"]) => ok(&ops::domain_dns(ctx, a, d).await?),
        (&Method::GET, ["accounts"]) => {
            ok(&ops::accounts(ctx, a, req.query("domain").filter(|d| !d.is_empty())).await?)
        }
        (&Method::POST, ["accounts"]) => {
            let n: NewAccount = body(req)?;
            created(
                &ops::account_add(ctx, a, &n.address, n.password.as_deref(), quota(n.quota.as_ref())?)
                    .await?,
            )
        }
        (&Method::GET, ["accounts", addr]) => ok(&ops::account(ctx, a, addr).await?),
        (&Method::PATCH, ["accounts", addr]) => {
            let c: AccountChange = body(req)?;
            let mut generated = None;
            if let Some(p) = &c.password {
                generated = ops::account_passwd(ctx, a, addr, Some(p.as_str())).await?;
            }
            if c.quota.is_some() {
                ops::account_quota(ctx, a, addr, quota(c.quota.as_ref())?).await?;
            }
            if let Some(e) = c.enabled {
                ops::account_enabled(ctx, a, addr, e).await?;
            }
            if let Some(r) = c.role {
                ops::account_role(ctx, a, addr, r, c.domains.as_deref().unwrap_or(&[])).await?;
            }
            let view = ops::account(ctx, a, addr).await?;
            let mut v = serde_json::to_value(&view).unwrap_or_default();
            if let (Some(p), Value::Object(m)) = (generated, &mut v) {
                m.insert("password".into(), Value::String(p));
            }
            ok(&v)
        }
        (&Method::DELETE, ["accounts", addr]) => ok(&ops::account_remove(ctx, a, addr, flag("purge")).await?),
        (&Method::GET, ["aliases"]) => {
            ok(&ops::aliases(ctx, a, req.query("domain").filter(|d| !d.is_empty())).await?)
        }
        (&Method::POST, ["aliases"]) => {
            let n: NewAlias = body(req)?;
            created(&ops::alias_add(ctx, a, &n.source, &n.destinations).await?)
        }
        (&Method::DELETE, ["aliases", source]) => {
            ok(&ops::alias_remove(ctx, a, source, req.query("destination")).await?)
        }
        (&Method::GET, ["queue"]) => ok(&ops::queue(ctx, a).await?),
        (&Method::POST, ["queue", "retry"]) => ok(&ops::queue_retry(ctx, a, None).await?),
        (&Method::POST, ["queue", id, "retry"]) => ok(&ops::queue_retry(ctx, a, Some(id)).await?),
        (&Method::DELETE, ["queue", id]) => {
            ops::queue_delete(ctx, a, id).await?;
            ok(&json!({"deleted": id}))
        }
        (&Method::GET, ["bans"]) => ok(&ops::bans(ctx, a).await?),
        (&Method::POST, ["bans"]) => {
            let n: NewBan = body(req)?;
            let d = n
                .duration
                .as_deref()
                .map(crate::config::duration_str::parse)
                .transpose()
                .map_err(WebError::BadRequest)?;
            created(
                &ops::ban(
                    ctx,
                    a,
                    n.ip,
                    d,
                    n.reason.as_deref().unwrap_or("banned by the administrator (API)"),
                )
                .await?,
            )
        }
        (&Method::DELETE, ["bans", ip]) => {
            let ip: IpAddr =
                ip.parse().map_err(|_| WebError::BadRequest(format!("{ip:?} is not an IP address")))?;
            ok(&ops::unban(ctx, a, ip).await?)
        }
        (&Method::GET, ["audit"]) => {
            let limit = req.query("limit").and_then(|l| l.parse().ok()).unwrap_or(100u32).min(1000);
            ok(&ops::audit_log(ctx, a, limit).await?)
        }
        _ => Err(WebError::NotFound),
    }
}

async fn status(ctx: &Arc<Context>, a: &Actor) -> Result<Response, WebError> {
    let domains = ops::domains(ctx, a).await?;
    let accounts = ops::accounts(ctx, a, None).await?;
    let mut v =
        json!({"hostname": ctx.config.hostname, "domains": domains.len(), "accounts": accounts.len()});
    if a.is_admin() {
        let queue = ops::queue(ctx, a).await?;
        v["queue"] = json!({"size": queue.len(), "oldest": queue.iter().map(|e| e.created.clone()).min()});
        v["bans"] = json!(ops::bans(ctx, a).await?.len());
        if let Some(c) = &ctx.certs {
            let i = c.info();
            v["certificate"] =
                json!({"not_after": i.not_after, "names": i.names, "self_signed": i.self_signed});
        }
    }
    ok(&v)
}

#[derive(Deserialize)]
struct PasswordChange {
    address: String,
    current: String,
    new: String,
}

/// A user's own password, authenticated by the current one (which is counted in the guard
/// when wrong, like any failed login). App passwords are not accepted here.
async fn self_password(ctx: &Arc<Context>, req: &Req) -> Result<Response, WebError> {
    let c: PasswordChange = body(req)?;
    let Some(account) = ctx.dir.authenticate_web(&c.address, &c.current).await? else {
        if ctx.guard.record(req.client, Event::AuthFailure { protocol: "web" }) != Verdict::Allow {
            return Err(WebError::Banned);
        }
        return Err(WebError::Unauthorized);
    };
    let addr = Address::parse(&account.address).map_err(admin::Error::from)?;
    let p = admin::user::Password::Plain { text: c.new, from: "the request" };
    admin::user::passwd(&ctx.dir, &addr, &p, false).await?;
    ctx.sessions.end_all_of(&account.address, None);
    ops::audit_self(ctx, &account.address, req.client, "self.passwd", "api").await;
    ok(&json!({"address": account.address, "changed": true}))
}

/// The OpenAPI 3.1 description of this API.
pub fn openapi(hostname: &str) -> Value {
    let err = json!({"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let op = |summary: &str, tag: &str| json!({"summary": summary, "tags": [tag], "responses": {"200": {"description": "OK"}, "default": err.clone()}});
    let with_body = |summary: &str, tag: &str, schema: &str| {
        let mut o = op(summary, tag);
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        o
    };
    let path_param =
        |name: &str| json!([{"name": name, "in": "path", "required": true, "schema": {"type": "string"}}]);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "posthaste admin API", "version": "1", "description": "Domains, accounts, aliases, the queue, bans and the audit log. Authenticate with `Authorization: Bearer TOKEN` (`posthaste token create`)."},
        "servers": [{"url": format!("https://{hostname}/api/v1")}],
        "security": [{"bearer": []}],
        "paths": {
            "/status": {"get": op("Counts, the queue, bans and the certificate", "status")},
            "/domains": {"get": op("List domains", "domains"), "post": with_body("Add a domain (server admins)", "domains", "NewDomain")},
            "/domains/{name}": {"parameters": path_param("name"), "delete": op("Remove a domain (?force=true with its accounts and aliases)", "domains")},
            "/domains/{name}/dns": {"parameters": path_param("name"), "get": op("The DNS records to publish", "domains")},
            "/accounts": {"get": op("List accounts (?domain=)", "accounts"), "post": with_body("Add an account", "accounts", "NewAccount")},
            "/accounts/{address}": {"parameters": path_param("address"), "get": op("An account with usage, role and aliases", "accounts"), "patch": with_body("Change quota, enabled, password, role", "accounts", "AccountChange"), "delete": op("Remove an account (?purge=true deletes its mail)", "accounts")},
            "/aliases": {"get": op("List aliases (?domain=)", "aliases"), "post": with_body("Add alias destinations", "aliases", "NewAlias")},
            "/aliases/{source}": {"parameters": path_param("source"), "delete": op("Remove an alias (?destination= one of them)", "aliases")},
            "/queue": {"get": op("The outbound queue (server admins)", "queue")},
            "/queue/retry": {"post": op("Retry every queued message now", "queue")},
            "/queue/{id}/retry": {"parameters": path_param("id"), "post": op("Retry one message now", "queue")},
            "/queue/{id}": {"parameters": path_param("id"), "delete": op("Delete a message (not delivered, no bounce)", "queue")},
            "/bans": {"get": op("Active bans (server admins)", "bans"), "post": with_body("Ban an address", "bans", "NewBan")},
            "/bans/{ip}": {"parameters": path_param("ip"), "delete": op("Lift a ban", "bans")},
            "/audit": {"get": op("Admin changes, newest first (?limit=)", "audit")},
            "/account/password": {"post": {"summary": "Change one's own password with the current one (no token)", "tags": ["self-service"], "security": [], "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PasswordChange"}}}}, "responses": {"200": {"description": "changed"}, "default": err.clone()}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"kind": {"type": "string", "enum": ["invalid", "not_found", "exists", "refused", "failed", "forbidden", "unauthorized", "csrf", "banned"]}, "message": {"type": "string"}, "help": {"type": ["string", "null"]}}, "required": ["kind", "message"]},
                "NewDomain": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                "NewAccount": {"type": "object", "properties": {"address": {"type": "string"}, "password": {"type": "string", "description": "absent: generated and returned once"}, "quota": {"description": "bytes, or a size like \"2G\"; 0 = unlimited"}}, "required": ["address"]},
                "AccountChange": {"type": "object", "properties": {"quota": {}, "enabled": {"type": "boolean"}, "password": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "domain-admin", "user"]}, "domains": {"type": "array", "items": {"type": "string"}}}},
                "NewAlias": {"type": "object", "properties": {"source": {"type": "string"}, "destinations": {"type": "array", "items": {"type": "string"}}}, "required": ["source", "destinations"]},
                "NewBan": {"type": "object", "properties": {"ip": {"type": "string"}, "duration": {"type": "string"}, "reason": {"type": "string"}}, "required": ["ip"]},
                "PasswordChange": {"type": "object", "properties": {"address": {"type": "string"}, "current": {"type": "string"}, "new": {"type": "string"}}, "required": ["address", "current", "new"]}
            }
        }
    })
}
