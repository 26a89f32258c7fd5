//! The web listener through the binary: HTTPS (HTTP/1.1 and HTTP/2) with curl as the
//! client, the admin pages and the API, the security defaults (CSRF, cookie flags, headers,
//! scopes of domain admins, the guard on logins, the second factor, app passwords), the
//! autoconfiguration files read as the mail clients read them, and the HTTP listener's
//! redirect. The browser test is `web_browser.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::support::posthaste::HOSTNAME;
use crate::support::*;

pub const DOMAIN: &str = "example.test";

/// A posthaste with the web listeners on, a domain and an admin account.
pub fn web_server(dir: &TestDir) -> Posthaste {
    let mut p = Posthaste::builder(dir).listener("https").listener("http").listener("imaps").build();
    p.add_domain(DOMAIN);
    p.add_user("admin@example.test", "correct horse battery");
    p.cmd_ok(&["user", "set", "admin@example.test", "--role", "admin"]);
    p.start();
    p
}

/// One browser-like client: curl with its own cookie jar, trusting the test certificate,
/// reaching the listener by the server's name.
pub struct Web {
    base: String,
    resolve: String,
    ca: PathBuf,
    jar: PathBuf,
    /// curl's --interface (a source address), for tests in a network namespace.
    pub source: Option<String>,
    pub insecure: bool,
}

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, Vec<String>>,
    pub body: String,
    pub http_version: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
    /// The value of the first `name="csrf" value="…"` in the page.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Web {
    pub fn new(p: &Posthaste, dir: &TestDir, name: &str) -> Web {
        let addr = p.addr("https");
        Web {
            base: format!("https://{HOSTNAME}:{}", addr.port()),
            resolve: format!("{HOSTNAME}:{}:{}", addr.port(), addr.ip()),
            ca: p.ca().to_owned(),
            jar: dir.join(format!("{name}.cookies")),
            source: None,
            insecure: false,
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[&str],
        extra: &[&str],
    ) -> Reply {
        let curl = require("curl", "curl");
        let mut cmd = Command::new(curl);
        cmd.args(["-s", "-S", "-D", "-", "-o", "-", "--max-time", "20", "-X", method])
            .args(["--resolve", &self.resolve, "--cacert"])
            .arg(&self.ca)
            .arg("--cookie")
            .arg(&self.jar)
            .arg("--cookie-jar")
            .arg(&self.jar)
            .args(["-w", "\n%{http_version}"]);
        if let Some(src) = &self.source {
            cmd.args(["--interface", src]);
        }
        if self.insecure {
            cmd.arg("-k");
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(b) = body {
            cmd.args(["--data-binary", b]);
        }
        cmd.args(extra);
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.base) };
        cmd.arg(url);
        let out = run(cmd, None);
        assert!(out.success(), "curl {method} {path}: {}", out.all());
        parse_reply(&out.stdout)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None, &[], &[])
    }

    /// A form POST (fields URL-encoded).
    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.request("POST", path, Some(&body), &["Content-Type: application/x-www-form-urlencoded"], &[])
    }

    /// Log in through the form; returns the reply to the POST.
    pub fn login(&self, user: &str, password: &str) -> Reply {
        let form = self.get("/admin/login");
        assert_eq!(form.status, 200, "{}", form.body);
        self.post(
            "/admin/login",
            &[("csrf", &form.csrf()), ("username", user), ("password", password), ("next", "")],
        )
    }

    /// POST a form found at `page` with its CSRF token and `fields`.
    pub fn submit(&self, page: &str, fields: &[(&str, &str)]) -> Reply {
        let csrf = self.get(page).csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(page, &all)
    }
}

fn parse_reply(raw: &str) -> Reply {
    // curl -D - prints each response's head (redirects are not followed); the last line
    // is the -w output.
    let (rest, version) = raw.rsplit_once('\n').unwrap_or((raw, ""));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let mut lines = head.lines();
    let status =
        lines.next().unwrap_or("").split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.entry(k.trim().to_ascii_lowercase()).or_default().push(v.trim().to_owned());
        }
    }
    Reply { status, headers, body: body.to_owned(), http_version: version.trim().to_owned() }
}

#[test]
fn admin_logs_in_adds_a_domain_and_an_account_over_http2_and_http1() {
    let dir = TestDir::new("web-admin-flow");
    let p = web_server(&dir);
    let w = Web::new(&p, &dir, "admin");
    let r = w.login("admin@example.test", "correct horse battery");
    assert_eq!((r.status, r.header("location")), (303, Some("/admin/")), "{}", r.body);
    assert_eq!(r.http_version, "2", "ALPN must offer h2");
    let dash = w.get("/admin/");
    assert_eq!(dash.status, 200, "{}", dash.body);
    for needle in ["Dashboard", "submission", "https", "Last posthaste check"] {
        assert!(dash.body.contains(needle), "{needle} missing from the dashboard:\n{}", dash.body);
    }
    let r = w.submit("/admin/domains", &[("action", "add"), ("name", "second.test")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("second.test"));
    let zone = w.get("/admin/domains/second.test");
    assert!(zone.body.contains("_domainkey") && zone.body.contains("v=spf1 mx -all"), "{}", zone.body);
    let r =
        w.submit("/admin/accounts", &[("address", "carol@second.test"), ("password", ""), ("quota", "1G")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let at = r.body.find("id=\"secret\">").expect("a generated password is shown once") + 12;
    let generated = &r.body[at..at + r.body[at..].find('<').unwrap()];
    // The CLI sees what the web did, and the account logs in with the generated password.
    let list = p.cmd_ok(&["user", "list", "second.test", "--json"]);
    assert!(
        list.stdout.contains("carol@second.test") && list.stdout.contains("1073741824"),
        "{}",
        list.stdout
    );
    let carol = Web::new(&p, &dir, "carol");
    assert_eq!(carol.login("carol@second.test", generated).header("location"), Some("/account/"));
    // HTTP/1.1 works too.
    let old = w.request("GET", "/admin/accounts?domain=second.test", None, &[], &["--http1.1"]);
    assert_eq!((old.status, old.http_version.as_str()), (200, "1.1"));
    assert!(old.body.contains("carol@second.test"));
    // Every change is in the audit log with who and from where.
    let audit = w.get("/admin/audit");
    for needle in ["domain.add", "user.add", "carol@second.test", "admin@example.test", "127.0.0.1"] {
        assert!(audit.body.contains(needle), "{needle} missing from the audit page:\n{}", audit.body);
    }
    assert!(p.log_lines().iter().any(|l| l["event"] == "admin_change" && l["action"] == "user.add"));
}

#[test]
fn posts_without_the_csrf_token_are_refused() {
    let dir = TestDir::new("web-csrf");
    let p = web_server(&dir);
    let w = Web::new(&p, &dir, "a");
    w.login("admin@example.test", "correct horse battery");
    let r = w.post("/admin/domains", &[("action", "add"), ("name", "evil.test")]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = w.post("/admin/domains", &[("csrf", "0123"), ("action", "add"), ("name", "evil.test")]);
    assert_eq!(r.status, 403);
    assert!(!p.cmd_ok(&["domain", "list"]).stdout.contains("evil.test"), "nothing may change");
    // The login form too: its token must match the login cookie.
    let fresh = Web::new(&p, &dir, "b");
    let r = fresh.post(
        "/admin/login",
        &[("csrf", "x"), ("username", "admin@example.test"), ("password", "correct horse battery")],
    );
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none_or(|c| !c.starts_with("__Host-ph_session")));
    // The API with a session cookie needs the token in a header for changes.
    let r = w.request(
        "POST",
        "/api/v1/domains",
        Some("{\"name\":\"evil.test\"}"),
        &["Content-Type: application/json"],
        &[],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("\"kind\": \"csrf\""), "{}", r.body);
}

#[test]
fn session_cookie_flags_and_security_headers() {
    let dir = TestDir::new("web-cookies");
    let p = web_server(&dir);
    let w = Web::new(&p, &dir, "a");
    let r = w.login("admin@example.test", "correct horse battery");
    let cookies = r.headers.get("set-cookie").cloned().unwrap_or_default();
    let session = cookies.iter().find(|c| c.starts_with("__Host-ph_session=")).expect("a session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(session.split("; ").any(|f| f == flag), "{flag} missing: {session}");
    }
    assert!(!session.contains("Domain="), "host-only: {session}");
    let page = w.get("/admin/");
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && !csp.contains("unsafe-inline")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.header("strict-transport-security").unwrap().contains("max-age="));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(!page.body.contains("<script"), "no script on the pages");
    // Logging out ends the session on the server, not just in the browser.
    let id = session.split(';').next().unwrap().to_owned();
    let out = w.submit("/admin/", &[]);
    let _ = out;
    let csrf = w.get("/account/").csrf();
    assert_eq!(w.post("/logout", &[("csrf", &csrf)]).status, 303);
    let replay = w.request("GET", "/admin/", None, &[&format!("Cookie: {id}")], &[]);
    assert_eq!((replay.status, replay.header("location")), (303, Some("/admin/login?next=%2Fadmin%2F")));
}

#[test]
fn domain_admin_cannot_see_or_change_another_domain() {
    let dir = TestDir::new("web-scope");
    let p = web_server(&dir);
    p.add_domain("other.test");
    p.add_user("dana@example.test", "dana's long password");
    p.add_user("zed@other.test", "zed's long password");
    p.cmd_ok(&["user", "set", "dana@example.test", "--role", "domain-admin", "--domains", "example.test"]);
    let w = Web::new(&p, &dir, "dana");
    assert_eq!(w.login("dana@example.test", "dana's long password").header("location"), Some("/admin/"));
    let list = w.get("/admin/accounts");
    assert!(
        list.body.contains("dana@example.test") && !list.body.contains("zed@other.test"),
        "{}",
        list.body
    );
    assert!(!w.get("/admin/domains").body.contains("other.test"));
    assert_eq!(w.get("/admin/accounts/zed%40other.test").status, 403);
    assert_eq!(w.get("/admin/accounts?domain=other.test").status, 403);
    let r =
        w.submit("/admin/accounts", &[("address", "eve@other.test"), ("password", "eve's long password")]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r =
        w.submit("/admin/accounts/zed%40other.test", &[("action", "passwd"), ("password", "taken over!")]);
    assert_eq!(r.status, 403);
    // Nor an administrator of its own domain (that would be a way to the server admin's rights).
    let r = w
        .submit("/admin/accounts/admin%40example.test", &[("action", "passwd"), ("password", "taken over!")]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(w.get("/admin/queue").status, 403);
    assert_eq!(w.get("/admin/bans").status, 403);
    // In its own domain it may.
    let r = w
        .submit("/admin/accounts", &[("address", "erin@example.test"), ("password", "erin's long password")]);
    assert_eq!(r.status, 200, "{}", r.body);
    // The API with a domain-admin token: the same scope.
    let t = p.cmd_ok(&["token", "create", "--role", "domain-admin", "--domain", "example.test", "--json"]);
    let token: serde_json::Value = serde_json::from_str(&t.stdout).unwrap();
    let bearer = format!("Authorization: Bearer {}", token["secret"].as_str().unwrap());
    let api = Web::new(&p, &dir, "api");
    let r = api.request("GET", "/api/v1/accounts", None, &[&bearer], &[]);
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let got: Vec<&str> = v.as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap()).collect();
    assert!(got.contains(&"erin@example.test") && !got.iter().any(|a| a.ends_with("@other.test")), "{got:?}");
    assert_eq!(api.request("GET", "/api/v1/accounts?domain=other.test", None, &[&bearer], &[]).status, 403);
    let r = api.request("DELETE", "/api/v1/accounts/zed%40other.test", None, &[&bearer], &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = api.request(
        "POST",
        "/api/v1/domains",
        Some("{\"name\":\"new.test\"}"),
        &[&bearer, "Content-Type: application/json"],
        &[],
    );
    assert_eq!(r.status, 403);
    assert!(p.cmd_ok(&["user", "list"]).stdout.contains("zed@other.test"));
    // A revoked token stops working.
    p.cmd_ok(&["token", "revoke", token["id"].as_str().unwrap()]);
    assert_eq!(api.request("GET", "/api/v1/accounts", None, &[&bearer], &[]).status, 401);
}

#[test]
fn api_lists_and_changes_with_an_admin_token_and_openapi_describes_it() {
    let dir = TestDir::new("web-api");
    let p = web_server(&dir);
    let t = p.cmd_ok(&["token", "create", "--role", "admin", "--name", "script", "--json"]);
    let secret =
        serde_json::from_str::<serde_json::Value>(&t.stdout).unwrap()["secret"].as_str().unwrap().to_owned();
    let bearer = format!("Authorization: Bearer {secret}");
    let api = Web::new(&p, &dir, "api");
    let json = ["Content-Type: application/json"];
    let r = api.request(
        "POST",
        "/api/v1/accounts",
        Some("{\"address\":\"bob@example.test\",\"quota\":\"2G\"}"),
        &[&bearer, json[0]],
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["password"].as_str().is_some_and(|p| p.len() >= 16), "{v}");
    let r = api.request(
        "PATCH",
        "/api/v1/accounts/bob@example.test",
        Some("{\"enabled\":false}"),
        &[&bearer, json[0]],
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["enabled"], false);
    let r = api.request(
        "POST",
        "/api/v1/accounts",
        Some("{\"address\":\"bob@example.test\"}"),
        &[&bearer, json[0]],
        &[],
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e["kind"], "exists");
    let r = api.request(
        "POST",
        "/api/v1/accounts",
        Some("{\"address\":\"x@nowhere.test\"}"),
        &[&bearer, json[0]],
        &[],
    );
    let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!((r.status, e["kind"].as_str()), (404, Some("not_found")), "{e}");
    assert!(e["help"].as_str().unwrap().contains("posthaste domain add"), "{e}");
    assert_eq!(api.request("GET", "/api/v1/accounts", None, &[], &[]).status, 401);
    assert_eq!(
        api.request("GET", "/api/v1/accounts", None, &["Authorization: Bearer ph_nope_nope"], &[]).status,
        401
    );
    let doc = api.get("/api/v1/openapi.json");
    let v: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/accounts/{address}"]["patch"].is_object());
    // Self-service password change for programs holding the current password.
    let r = api.request(
        "POST",
        "/api/v1/account/password",
        Some("{\"address\":\"admin@example.test\",\"current\":\"correct horse battery\",\"new\":\"another good passphrase\"}"),
        &[json[0]],
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(Web::new(&p, &dir, "w").login("admin@example.test", "another good passphrase").status, 303);
}

#[test]
fn self_service_changes_the_password_only_with_the_current_one() {
    let dir = TestDir::new("web-self");
    let p = web_server(&dir);
    p.add_user("ann@example.test", "ann's first password");
    let w = Web::new(&p, &dir, "ann");
    assert_eq!(w.login("ann@example.test", "ann's first password").header("location"), Some("/account/"));
    assert_eq!(w.get("/admin/").header("location"), Some("/account/"), "users have no admin pages");
    let r = w.submit(
        "/account/",
        &[
            ("action", "password"),
            ("current", "wrong one!"),
            ("new", "ann's second password"),
            ("confirm", "ann's second password"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = w.submit(
        "/account/",
        &[
            ("action", "password"),
            ("current", "ann's first password"),
            ("new", "ann's second password"),
            ("confirm", "ann's second password"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let py = "import imaplib,ssl,sys\nc=imaplib.IMAP4_SSL(sys.argv[1],int(sys.argv[2]),ssl_context=ssl._create_unverified_context())\nprint(c.login(sys.argv[3],sys.argv[4])[0])";
    let imaps = p.addr("imaps");
    let out =
        python(py, &["127.0.0.1", &imaps.port().to_string(), "ann@example.test", "ann's second password"]);
    assert!(out.stdout.contains("OK"), "{}", out.all());
    // The setup page and the Apple profile.
    let setup = w.get("/account/setup");
    assert!(
        setup.body.contains(&imaps.port().to_string()) && setup.body.contains("autoconfig.example.test"),
        "{}",
        setup.body
    );
    let profile = w.get("/account/setup/posthaste.mobileconfig");
    assert_eq!(profile.header("content-type"), Some("application/x-apple-aspen-config"));
    let py = "import plistlib,sys\nd=plistlib.loads(sys.stdin.buffer.read())\np=d['PayloadContent'][0]\nprint(p['PayloadType'],p['EmailAddress'],p['IncomingMailServerHostName'],p['IncomingMailServerPortNumber'],p['OutgoingMailServerPortNumber'])";
    let mut cmd = Command::new(require("python3", "python3"));
    cmd.arg("-c").arg(py);
    let out = run(cmd, Some(profile.body.as_bytes()));
    let expect = format!(
        "com.apple.mail.managed ann@example.test {HOSTNAME} {} {}",
        imaps.port(),
        p.submissions().port()
    );
    assert_eq!(out.stdout.trim(), expect, "{}", out.all());
}

#[test]
fn second_factor_is_enforced_and_app_passwords_never_log_in_to_the_web() {
    let dir = TestDir::new("web-2fa");
    let p = web_server(&dir);
    let e = p.cmd_ok(&["user", "2fa", "enable", "admin@example.test", "--json"]);
    let t: serde_json::Value = serde_json::from_str(&e.stdout).unwrap();
    let secret = t["secret"].as_str().unwrap().to_owned();
    let recovery = t["recovery_codes"][0].as_str().unwrap().to_owned();
    let w = Web::new(&p, &dir, "a");
    let r = w.login("admin@example.test", "correct horse battery");
    assert_eq!(r.header("location"), Some("/login/2fa?next="), "{}", r.body);
    // Half logged in: nothing behind the login opens.
    assert_eq!(w.get("/admin/").status, 303);
    assert_eq!(w.get("/account/").status, 303);
    let page = w.get("/login/2fa");
    let r = w.post("/login/2fa", &[("csrf", &page.csrf()), ("code", "000000")]);
    assert_eq!(r.status, 401);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let code = ::posthaste::directory::totp::code_at(&secret, now).unwrap();
    let r = w.post("/login/2fa", &[("csrf", &page.csrf()), ("code", &code)]);
    assert_eq!((r.status, r.header("location")), (303, Some("/admin/")), "{}", r.body);
    assert_eq!(w.get("/admin/").status, 200);
    // The same code does not work twice (RFC 6238 §5.2); a recovery code works once.
    let again = Web::new(&p, &dir, "b");
    again.login("admin@example.test", "correct horse battery");
    let page = again.get("/login/2fa");
    assert_eq!(again.post("/login/2fa", &[("csrf", &page.csrf()), ("code", &code)]).status, 401);
    assert_eq!(again.post("/login/2fa", &[("csrf", &page.csrf()), ("code", &recovery)]).status, 303);
    let third = Web::new(&p, &dir, "c");
    third.login("admin@example.test", "correct horse battery");
    let page = third.get("/login/2fa");
    assert_eq!(third.post("/login/2fa", &[("csrf", &page.csrf()), ("code", &recovery)]).status, 401);

    // App passwords: IMAP yes, the web no; with 2FA on, the account password no longer
    // opens IMAP.
    let a = p.cmd_ok(&["user", "app-password", "add", "admin@example.test", "phone", "--json"]);
    let app = serde_json::from_str::<serde_json::Value>(&a.stdout).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let web = Web::new(&p, &dir, "d");
    assert_eq!(web.login("admin@example.test", &app).status, 401);
    let py = "import imaplib,ssl,sys\nc=imaplib.IMAP4_SSL(sys.argv[1],int(sys.argv[2]),ssl_context=ssl._create_unverified_context())\ntry:\n  print(c.login(sys.argv[3],sys.argv[4])[0])\nexcept imaplib.IMAP4.error as e:\n  print('NO', e)";
    let port = p.addr("imaps").port().to_string();
    let imap = |password: &str| python(py, &["127.0.0.1", &port, "admin@example.test", password]).stdout;
    assert!(imap(&app).starts_with("OK"), "the app password opens IMAP");
    assert!(imap(&app.replace('-', "").to_uppercase()).starts_with("OK"), "as typed without dashes");
    assert!(
        imap("correct horse battery").starts_with("NO"),
        "the account password alone must not skip the second factor"
    );
    let list = p.cmd_ok(&["user", "app-password", "list", "admin@example.test", "--json"]);
    assert!(list.stdout.contains("\"phone\"") && !list.stdout.contains(&app), "{}", list.stdout);
    p.cmd_ok(&["user", "app-password", "remove", "admin@example.test", "phone"]);
    assert!(imap(&app).starts_with("NO"), "a revoked app password stops working");
    p.cmd_ok(&["user", "2fa", "disable", "admin@example.test"]);
    assert!(imap("correct horse battery").starts_with("OK"));
}

#[test]
fn autoconfig_autodiscover_and_mta_sts_as_the_clients_read_them() {
    let dir = TestDir::new("web-autoconfig");
    let p = web_server(&dir);
    let port = p.addr("https").port();
    let mut w = Web::new(&p, &dir, "tb");
    w.insecure = true;
    // Thunderbird asks autoconfig.DOMAIN; read the fields it reads (comm-central's
    // readFromXML: incomingServer/outgoingServer type, hostname, port, socketType,
    // username, authentication).
    let url =
        format!("https://autoconfig.example.test:{port}/mail/config-v1.1.xml?emailaddress=u%40example.test");
    let extra = ["--resolve", &format!("autoconfig.example.test:{port}:127.0.0.1")];
    let r = w.request("GET", &url, None, &[], &extra);
    assert_eq!(r.status, 200, "{}", r.body);
    let py = r#"
import sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.read())
assert root.tag == "clientConfig" and root.get("version") == "1.1"
p = root.find("emailProvider")
print("domain", p.find("domain").text)
for s in p.findall("incomingServer") + p.findall("outgoingServer"):
    print(s.tag, s.get("type"), s.find("hostname").text, s.find("port").text, s.find("socketType").text, s.find("username").text, s.find("authentication").text)
"#;
    let mut cmd = Command::new(require("python3", "python3"));
    cmd.arg("-c").arg(py);
    let out = run(cmd, Some(r.body.as_bytes()));
    assert!(out.success(), "{}", out.all());
    let imaps = p.addr("imaps").port();
    assert!(out.stdout.contains("domain example.test"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "incomingServer imap {HOSTNAME} {imaps} SSL %EMAILADDRESS% password-cleartext"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("outgoingServer smtp {HOSTNAME} {} SSL", p.submissions().port())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("outgoingServer smtp {HOSTNAME} {} STARTTLS", p.submission().port())),
        "{}",
        out.stdout
    );
    let well_known = w.get("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=u%40nowhere.test");
    assert_eq!(well_known.status, 404, "only our domains");
    // Outlook's POX autodiscover.
    let req = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>u@example.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
    let r = w.request("POST", "/Autodiscover/Autodiscover.xml", Some(req), &["Content-Type: text/xml"], &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let py = r#"
import sys, xml.etree.ElementTree as ET
ns = {"a": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
root = ET.fromstring(sys.stdin.read())
acc = root.find("a:Response/a:Account", ns)
print(acc.find("a:Action", ns).text)
for p in acc.findall("a:Protocol", ns):
    print(p.find("a:Type", ns).text, p.find("a:Server", ns).text, p.find("a:Port", ns).text, p.find("a:SSL", ns).text, p.find("a:LoginName", ns).text)
"#;
    let mut cmd = Command::new(require("python3", "python3"));
    cmd.arg("-c").arg(py);
    let out = run(cmd, Some(r.body.as_bytes()));
    assert!(out.stdout.starts_with("settings\n"), "{}", out.all());
    assert!(out.stdout.contains(&format!("IMAP {HOSTNAME} {imaps} on u@example.test")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("SMTP {HOSTNAME} {} on", p.submissions().port())), "{}", out.stdout);
    // MTA-STS (RFC 8461 §3.2).
    let r = w.request(
        "GET",
        &format!("https://mta-sts.example.test:{port}/.well-known/mta-sts.txt"),
        None,
        &[],
        &["--resolve", &format!("mta-sts.example.test:{port}:127.0.0.1")],
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.body, format!("version: STSv1\nmode: testing\nmx: {HOSTNAME}\nmax_age: 604800\n"));
    // posthaste dns prints the names these need, for a listener others can reach (the
    // records themselves: admin::dns's unit tests).
    let dns = p.cmd_ok(&["dns", "example.test"]).stdout;
    assert!(
        dns.contains("listen.https listens on loopback only: no autoconfig, autodiscover or MTA-STS records"),
        "{dns}"
    );
}

#[test]
fn http_redirects_to_https_and_keeps_the_path() {
    let dir = TestDir::new("web-http");
    let p = web_server(&dir);
    let http = p.addr("http");
    let curl = require("curl", "curl");
    let mut cmd = Command::new(curl);
    cmd.args([
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{HOSTNAME}:{}/admin/queue?x=1", http.port()),
    ])
    .args(["--resolve", &format!("{HOSTNAME}:{}:127.0.0.1", http.port())]);
    let out = run(cmd, None);
    let r = parse_reply(&format!("{}\n", out.stdout));
    assert_eq!(r.status, 308, "{}", out.all());
    assert_eq!(
        r.header("location"),
        Some(format!("https://{HOSTNAME}:{}/admin/queue?x=1", p.addr("https").port()).as_str())
    );
    assert!(r.header("strict-transport-security").is_none(), "HSTS only over HTTPS (RFC 6797 §7.2)");
    let mut cmd = Command::new(require("curl", "curl"));
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{}/.well-known/acme-challenge/none", http.port()),
    ]);
    assert_eq!(run(cmd, None).stdout, "404");
}

/// Loopback is never banned: the server and the client get addresses of their own in a
/// network namespace of this test's thread (unshare(2); the binary is its child).
fn in_netns<T: Send>(addrs: &[&str], f: impl FnOnce() -> T + Send) -> T {
    let ip = require("ip", "iproute2");
    assert!(is_root(), "the brute-force test creates a network namespace and needs root");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall; it changes the network namespace of this thread only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            let mut steps = vec![vec!["link".to_owned(), "set".into(), "lo".into(), "up".into()]];
            for a in addrs {
                steps.push(vec!["addr".into(), "add".into(), format!("{a}/32"), "dev".into(), "lo".into()]);
            }
            for args in steps {
                let mut cmd = Command::new(&ip);
                cmd.args(&args);
                let out = run(cmd, None);
                assert!(out.success(), "ip {args:?}: {}", out.all());
            }
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn web_login_brute_force_is_banned_by_the_guard() {
    let dir = TestDir::new("web-bruteforce");
    in_netns(&["192.0.2.1", "192.0.2.9"], || {
        let port = free_port();
        let mut p = Posthaste::builder(&dir)
            .set("listen.smtp", vec![format!("192.0.2.1:{}", free_port())])
            .remove("listen.submission")
            .remove("listen.submissions")
            .set("listen.https", vec![format!("192.0.2.1:{port}")])
            .set("guard.auth_failures", 3i64)
            .build();
        p.add_domain(DOMAIN);
        p.add_user("admin@example.test", "correct horse battery");
        p.start();
        let mut w = Web::new(&p, &dir, "attacker");
        w.source = Some("192.0.2.9".into());
        for _ in 0..2 {
            assert_eq!(w.login("admin@example.test", "guess").status, 401);
        }
        let third = w.login("admin@example.test", "guess");
        assert_eq!(third.status, 403, "the third failure bans: {}", third.body);
        // From now on the client is closed at connect, on every listener, even with the
        // right password.
        let curl = require("curl", "curl");
        let mut cmd = Command::new(curl);
        cmd.args([
            "-s",
            "-k",
            "--interface",
            "192.0.2.9",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://192.0.2.1:{port}/admin/login"),
        ]);
        let out = run(cmd, None);
        assert_eq!(out.stdout, "000", "a banned client gets no answer: {}", out.all());
        let bans = p.cmd_ok(&["ban", "list", "--json"]).stdout;
        assert!(bans.contains("192.0.2.9") && bans.contains("auth failures (the last over web)"), "{bans}");
        assert!(p.log_lines().iter().any(|l| l["event"] == "auth_failure" && l["protocol"] == "web"));
    });
}
