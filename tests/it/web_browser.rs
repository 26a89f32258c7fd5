//! The web pages in a real browser: Debian's chromium and chromium-driver driven by
//! Python selenium (tests/py/web_browser.py), headless, reaching the test listener by the
//! server's name (`--host-resolver-rules`). An administrator logs in, adds a domain and an
//! account, unbans an address; the new user changes its password in self-service and
//! makes an app password. Every page is saved as a screenshot in
//! `target/web-screenshots/` (docs/screenshots/ holds the set the README shows).

use crate::support::posthaste::HOSTNAME;
use crate::support::*;

#[test]
fn browser_admin_and_self_service_with_screenshots() {
    require("chromium", "chromium");
    require("chromedriver", "chromium-driver");
    let probe = python("import selenium", &[]);
    assert!(
        probe.success(),
        "Python selenium is missing: `python3 -m pip install selenium` (tests/run.sh does it)\n{}",
        probe.all()
    );
    let dir = TestDir::new("web-browser");
    let p = crate::web::web_server(&dir);
    p.cmd_ok(&["ban", "add", "192.0.2.50", "--reason", "test"]);
    let https = p.addr("https");
    let shots = repo_root().join("target/web-screenshots");
    let base = format!("https://{HOSTNAME}:{}", https.port());
    let out = python(
        "web_browser.py",
        &[
            &base,
            HOSTNAME,
            &https.ip().to_string(),
            shots.to_str().unwrap(),
            "admin@example.test",
            "correct horse battery",
            "192.0.2.50",
        ],
    );
    assert!(out.success(), "the browser run failed:\n{}\nposthaste log:\n{}", out.all(), p.log_tail(30));
    for name in [
        "login",
        "dashboard",
        "domains",
        "accounts",
        "bans",
        "self-service",
        "setup",
        "dashboard-ru",
        "dashboard-phone",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "no screenshot {name}");
    }
    assert!(!p.cmd_ok(&["ban", "list"]).stdout.contains("192.0.2.50"), "the unban reached the ban file");
    assert!(p.cmd_ok(&["user", "list", "shop.test"]).stdout.contains("bob@shop.test"));
}
