//! dkimpy (Debian `python3-dkim`), an independent DKIM implementation: it verifies the
//! signatures posthaste makes and signs the mail posthaste verifies (tests/py/dkim_tool.py).

use std::path::Path;
use std::process::Command;

use super::dns::Dnsmasq;
use super::{repo_root, run, Out};

/// Debian's interpreter: python3-dkim installs into its dist-packages, which a python3 from
/// elsewhere on PATH (pyenv, a venv) does not see.
const PYTHON: &str = "/usr/bin/python3";

fn tool(args: &[&str]) -> Out {
    let probe = run(
        {
            let mut c = Command::new(PYTHON);
            c.args(["-c", "import dkim, nacl"]);
            c
        },
        None,
    );
    assert!(
        probe.success(),
        "dkimpy is missing: install the Debian packages `python3-dkim` and `python3-nacl` (tests/run.sh does):\n{}",
        probe.all()
    );
    let mut cmd = Command::new(PYTHON);
    cmd.arg(repo_root().join("tests/py/dkim_tool.py")).args(args);
    run(cmd, None)
}

/// One signature as dkimpy saw it.
#[derive(Debug, Clone)]
pub struct DkimpyResult {
    pub d: String,
    pub s: String,
    pub a: String,
    pub h: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// Verifies every DKIM-Signature of the message in `file`, with keys from `dns`.
pub fn verify(dns: &Dnsmasq, file: &Path) -> Vec<DkimpyResult> {
    let ip = dns.addr.ip().to_string();
    let port = dns.addr.port().to_string();
    let out = tool(&["verify", &ip, &port, &file.display().to_string()]);
    assert!(out.success(), "dkim_tool.py verify failed:\n{}", out.all());
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("bad JSON from dkim_tool.py ({e}): {}", out.stdout));
    v["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| DkimpyResult {
            d: s["d"].as_str().unwrap_or("").into(),
            s: s["s"].as_str().unwrap_or("").into(),
            a: s["a"].as_str().unwrap_or("").into(),
            h: s["h"].as_str().unwrap_or("").into(),
            ok: s["ok"].as_bool().unwrap_or(false),
            error: s["error"].as_str().map(String::from),
        })
        .collect()
}

/// The message in `file` with an rsa-sha256 signature by `domain`/`selector` (key: PKCS#8
/// or PKCS#1 PEM) prepended.
pub fn sign(key: &Path, domain: &str, selector: &str, file: &Path) -> Vec<u8> {
    let out = tool(&["sign", &key.display().to_string(), domain, selector, &file.display().to_string()]);
    assert!(out.success(), "dkim_tool.py sign failed:\n{}", out.all());
    out.stdout.into_bytes()
}
