//! Client autoconfiguration: Thunderbird's autoconfig file, Outlook's autodiscover (POX),
//! the MTA-STS policy (RFC 8461) and the Apple configuration profile. All describe the
//! listeners this server has, by the hostname its certificate carries.

use serde::Serialize;

use super::http::{response, Req, Response};
use crate::config::Config;
use hyper::StatusCode;

/// One way in for a mail client.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    /// `imap`, `pop3` or `smtp`.
    pub kind: &'static str,
    pub host: String,
    pub port: u16,
    /// `SSL` (implicit TLS) or `STARTTLS`, as Thunderbird spells them.
    pub security: &'static str,
}

/// The listeners a client may use, implicit TLS first (RFC 8314 §5.1 prefers it).
pub fn servers(config: &Config) -> Vec<Server> {
    let l = &config.listen;
    let host = config.hostname.clone();
    let mut out = Vec::new();
    for (kind, addrs, security) in [
        ("imap", &l.imaps, "SSL"),
        ("imap", &l.imap, "STARTTLS"),
        ("pop3", &l.pop3s, "SSL"),
        ("pop3", &l.pop3, "STARTTLS"),
        ("smtp", &l.submissions, "SSL"),
        ("smtp", &l.submission, "STARTTLS"),
    ] {
        if let Some(a) = addrs.first() {
            out.push(Server { kind, host: host.clone(), port: a.port(), security });
        }
    }
    out
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The mail domain a request asks about: `?emailaddress=` (Thunderbird sends it), else
/// the `autoconfig.`/`autodiscover.`/`mta-sts.` host name's domain.
fn domain_of_request(req: &Req) -> Option<String> {
    if let Some(e) = req.query("emailaddress") {
        return e.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    }
    ["autoconfig.", "autodiscover.", "mta-sts."]
        .iter()
        .find_map(|p| req.host.strip_prefix(p).map(str::to_owned))
}

/// `GET /.well-known/autoconfig/mail/config-v1.1.xml` and `/mail/config-v1.1.xml`: the
/// Thunderbird autoconfig format (clientConfig version 1.1).
pub async fn thunderbird(ctx: &super::Context, req: &Req) -> Response {
    let domain = match domain_of_request(req) {
        Some(d) => {
            if !ctx.dir.is_local_domain(&d).await.unwrap_or(false) {
                return response(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "not a mail domain of this server\n",
                );
            }
            d
        }
        None => ctx.config.hostname.clone(),
    };
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n");
    x += &format!("  <emailProvider id=\"{}\">\n", xml_escape(&domain));
    x += &format!("    <domain>{}</domain>\n", xml_escape(&domain));
    x += &format!("    <displayName>{}</displayName>\n", xml_escape(&domain));
    x += &format!("    <displayShortName>{}</displayShortName>\n", xml_escape(&domain));
    for s in servers(&ctx.config) {
        let (open, close) = if s.kind == "smtp" {
            ("outgoingServer type=\"smtp\"".to_owned(), "outgoingServer")
        } else {
            (format!("incomingServer type=\"{}\"", s.kind), "incomingServer")
        };
        x += &format!(
            "    <{open}>\n      <hostname>{}</hostname>\n      <port>{}</port>\n      <socketType>{}</socketType>\n      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n    </{close}>\n",
            xml_escape(&s.host),
            s.port,
            s.security
        );
    }
    x += "  </emailProvider>\n</clientConfig>\n";
    response(StatusCode::OK, "application/xml; charset=utf-8", x)
}

/// The `<EMailAddress>` of an autodiscover request (the POX schema has just that field of
/// interest; a full XML parser is not needed to read one element).
fn requested_address(body: &str) -> Option<String> {
    let start = body.find("<EMailAddress>")? + "<EMailAddress>".len();
    let end = body[start..].find("</EMailAddress>")? + start;
    let a = body[start..end].trim();
    (a.contains('@') && a.len() < 320).then(|| a.to_owned())
}

/// `POST /autodiscover/autodiscover.xml`: Outlook's Plain Old XML autodiscover, the
/// `outlook/responseschema/2006a` answer with IMAP, POP3 and SMTP settings.
pub async fn outlook(ctx: &super::Context, req: &Req) -> Response {
    let body = String::from_utf8_lossy(&req.body);
    let address = requested_address(&body).or_else(|| req.query("emailaddress").map(str::to_owned));
    let Some(address) = address else {
        return response(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "no EMailAddress in the request\n",
        );
    };
    let domain = address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
    if !ctx.dir.is_local_domain(&domain).await.unwrap_or(false) {
        return response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not a mail domain of this server\n",
        );
    }
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n");
    let mut seen = Vec::new();
    for s in servers(&ctx.config) {
        // One entry per protocol: the first (implicit TLS where there is one).
        if seen.contains(&s.kind) {
            continue;
        }
        seen.push(s.kind);
        let t = match s.kind {
            "imap" => "IMAP",
            "pop3" => "POP3",
            _ => "SMTP",
        };
        let (ssl, encryption) = if s.security == "SSL" { ("on", "SSL") } else { ("on", "TLS") };
        x += &format!(
            "      <Protocol>\n        <Type>{t}</Type>\n        <Server>{}</Server>\n        <Port>{}</Port>\n        <LoginName>{}</LoginName>\n        <SPA>off</SPA>\n        <SSL>{ssl}</SSL>\n        <Encryption>{encryption}</Encryption>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
            xml_escape(&s.host),
            s.port,
            xml_escape(&address)
        );
    }
    x += "    </Account>\n  </Response>\n</Autodiscover>\n";
    response(StatusCode::OK, "application/xml; charset=utf-8", x)
}

/// The MTA-STS policy text (RFC 8461 §3.2): the mode from `[web] mta_sts_mode`, our
/// hostname as the one MX.
pub fn mta_sts_policy(config: &Config) -> String {
    format!(
        "version: STSv1\nmode: {}\nmx: {}\nmax_age: {}\n",
        config.web.mta_sts_mode,
        config.hostname,
        config.web.mta_sts_max_age.as_secs()
    )
}

/// `GET /.well-known/mta-sts.txt` (served on `mta-sts.DOMAIN`; RFC 8461 §3.3: over HTTPS
/// only, `text/plain`).
pub fn mta_sts(ctx: &super::Context) -> Response {
    response(StatusCode::OK, "text/plain", mta_sts_policy(&ctx.config))
}

/// An Apple configuration profile (`.mobileconfig`, a plist) with one mail account
/// payload (`com.apple.mail.managed`): IMAP in, SMTP out, both over TLS, the password left
/// for the device to ask. Unsigned: iOS shows it as "not verified" but installs it.
pub fn mobileconfig(config: &Config, address: &str) -> String {
    let all = servers(config);
    let imap = all.iter().find(|s| s.kind == "imap");
    let smtp = all.iter().find(|s| s.kind == "smtp");
    let host = xml_escape(&config.hostname);
    let a = xml_escape(address);
    let mut p = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n  <key>PayloadContent</key>\n  <array>\n    <dict>\n");
    p += "      <key>EmailAccountType</key><string>EmailTypeIMAP</string>\n";
    p += &format!("      <key>EmailAccountDescription</key><string>{a}</string>\n");
    p += &format!("      <key>EmailAddress</key><string>{a}</string>\n");
    if let Some(s) = imap {
        p += &format!("      <key>IncomingMailServerHostName</key><string>{host}</string>\n      <key>IncomingMailServerPortNumber</key><integer>{}</integer>\n      <key>IncomingMailServerUseSSL</key><{}/>\n", s.port, if s.security == "SSL" { "true" } else { "true" });
    }
    p += &format!("      <key>IncomingMailServerUsername</key><string>{a}</string>\n      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>\n");
    if let Some(s) = smtp {
        p += &format!("      <key>OutgoingMailServerHostName</key><string>{host}</string>\n      <key>OutgoingMailServerPortNumber</key><integer>{}</integer>\n      <key>OutgoingMailServerUseSSL</key><true/>\n", s.port);
    }
    p += &format!("      <key>OutgoingMailServerUsername</key><string>{a}</string>\n      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>\n      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>\n");
    p += &format!("      <key>PayloadType</key><string>com.apple.mail.managed</string>\n      <key>PayloadVersion</key><integer>1</integer>\n      <key>PayloadIdentifier</key><string>{host}.mail.{a}</string>\n      <key>PayloadUUID</key><string>{}</string>\n      <key>PayloadDisplayName</key><string>{a}</string>\n    </dict>\n  </array>\n", uuid::Uuid::new_v4());
    p += &format!("  <key>PayloadDisplayName</key><string>{host}</string>\n  <key>PayloadIdentifier</key><string>{host}.profile</string>\n  <key>PayloadType</key><string>Configuration</string>\n  <key>PayloadUUID</key><string>{}</string>\n  <key>PayloadVersion</key><integer>1</integer>\n</dict>\n</plist>\n", uuid::Uuid::new_v4());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autodiscover_request_address() {
        let body = "<?xml version=\"1.0\"?><Autodiscover xmlns=\"x\"><Request><EMailAddress> a@example.test </EMailAddress><AcceptableResponseSchema>y</AcceptableResponseSchema></Request></Autodiscover>";
        assert_eq!(requested_address(body).as_deref(), Some("a@example.test"));
        assert_eq!(requested_address("<EMailAddress>nope</EMailAddress>"), None);
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
