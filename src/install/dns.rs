//! The DNS records a mail domain needs, as zone-file lines: MX, SPF and DMARC (DKIM arrives
//! with DKIM signing). Printed at the end of an install and by `posthaste dns [DOMAIN]`.

/// Zone-file lines for every domain, with comments on what cannot be derived here.
pub fn records(hostname: &str, domains: &[String], postmaster: &str) -> String {
    let mut out = String::new();
    for d in domains {
        let rua = if postmaster.ends_with(&format!("@{d}")) {
            postmaster.to_owned()
        } else {
            format!("postmaster@{d}")
        };
        out += &format!("; {d}\n");
        // RFC 5321 §5.1: the MX names the host that accepts mail for the domain.
        out += &format!("{d}.\t3600\tIN\tMX\t10 {hostname}.\n");
        // RFC 7208: only the domain's MX hosts send its mail.
        out += &format!("{d}.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"\n");
        // RFC 7489: quarantine what fails, aggregate reports to the postmaster.
        out += &format!("_dmarc.{d}.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine; rua=mailto:{rua}\"\n");
    }
    out += &format!(
        "; {hostname} needs A (and AAAA) records with this server's public addresses, and the\n\
         ; reverse DNS (PTR) of those addresses should be {hostname} (set at your hosting provider).\n"
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mx_spf_dmarc_per_domain() {
        let r =
            super::records("mail.example.test", &["example.test".into(), "b.test".into()], "pm@example.test");
        assert!(r.contains("example.test.\t3600\tIN\tMX\t10 mail.example.test.\n"), "{r}");
        assert!(r.contains("b.test.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"\n"), "{r}");
        assert!(
            r.contains(
                "_dmarc.example.test.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine; rua=mailto:pm@example.test\""
            ),
            "{r}"
        );
        assert!(r.contains("rua=mailto:postmaster@b.test"), "{r}");
    }
}
