//! Password hashes in Dovecot's `{SCHEME}` notation.
//!
//! We store hashes exactly as Dovecot writes them (`doveadm pw -s SCHEME`), so that accounts
//! can be imported from a Dovecot or iRedMail installation by copying the column, and so that
//! an admin can produce a hash with `doveadm pw` and hand it to `user add --password-hash`.
//!
//! New hashes are always `{ARGON2ID}` (RFC 9106). Older schemes are only verified, never
//! written: the caller may re-hash on a successful login if it wants to upgrade them.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::seq::SliceRandom;
use rand::RngCore;

/// Argon2id memory cost in KiB (32 MiB).
///
/// Chosen so one hash takes roughly 50–100 ms: measured 87 ms for m=32 MiB, t=2, p=1 in a
/// release build on the 2-core development machine (19 MiB/t=2, OWASP's minimum, took 49 ms;
/// Dovecot's default 64 MiB/t=3 took 245 ms, too slow for a login path that a brute-forcer can
/// trigger at will). The memory is what makes GPU cracking expensive; the daemon bounds how
/// many verifications run at once (see `directory::HASH_SLOTS`) so a login flood cannot turn
/// 32 MiB per attempt into an out-of-memory kill.
pub const ARGON2_M_COST: u32 = 32 * 1024;
/// Argon2id passes over memory.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes. 1, because the server verifies many logins in parallel already; parallel
/// lanes would only make each one compete with the others for the same cores.
pub const ARGON2_P_COST: u32 = 1;

fn argon2id() -> Argon2<'static> {
    // The constants are in the ranges Params::new accepts, so this cannot fail.
    let params = Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, None).expect("valid argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A new `{ARGON2ID}` hash of `password`.
///
/// Form: `{ARGON2ID}$argon2id$v=19$m=32768,t=2,p=1$<salt>$<hash>`, 16-byte random salt and
/// 32-byte output, both unpadded base64 — the PHC string format that Dovecot (libsodium)
/// writes and reads.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    let phc =
        argon2id().hash_password(password.as_bytes(), &salt).expect("argon2 with valid params and salt");
    format!("{{ARGON2ID}}{phc}")
}

/// A hash in the form and with the cost of [`hash`] that no password matches in practice.
///
/// `authenticate` verifies against it when the user does not exist, so that "no such user"
/// costs the same time as "wrong password" and a client cannot probe which addresses exist.
/// It is a constant (all-zero salt and output) so we do not pay for a real hash at startup.
pub fn dummy_hash() -> &'static str {
    static DUMMY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{{ARGON2ID}}$argon2id$v=19$m={ARGON2_M_COST},t={ARGON2_T_COST},p={ARGON2_P_COST}\
             $AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        )
    });
    &DUMMY
}

/// Does `password` match `stored` (`{ARGON2ID}`, `{ARGON2I}`, `{SHA512-CRYPT}`,
/// `{SHA256-CRYPT}`, `{BLF-CRYPT}`, or `{CRYPT}` holding one of those crypt(3) forms)?
/// Unknown schemes never match.
///
/// This is CPU-heavy by design (tens of milliseconds): call it from `spawn_blocking`.
pub fn verify(stored: &str, password: &str) -> bool {
    let Some((scheme, rest)) = split_scheme(stored) else {
        return false;
    };
    // Dovecot compares scheme names case-insensitively (`{blf-crypt}` works there too).
    match scheme.to_ascii_uppercase().as_str() {
        "ARGON2ID" => verify_argon2(rest, password, Algorithm::Argon2id),
        "ARGON2I" => verify_argon2(rest, password, Algorithm::Argon2i),
        "SHA512-CRYPT" => rest.starts_with("$6$") && sha_crypt::sha512_check(password, rest).is_ok(),
        "SHA256-CRYPT" => rest.starts_with("$5$") && sha_crypt::sha256_check(password, rest).is_ok(),
        "BLF-CRYPT" => verify_bcrypt(rest, password),
        // Dovecot's CRYPT scheme hands the string to crypt(3), which picks the algorithm from
        // the `$id$` prefix. Older Dovecot and iRedMail exports use it for the same strings;
        // we accept the ones we can check and refuse DES/MD5-crypt.
        "CRYPT" => {
            if rest.starts_with("$6$") {
                sha_crypt::sha512_check(password, rest).is_ok()
            } else if rest.starts_with("$5$") {
                sha_crypt::sha256_check(password, rest).is_ok()
            } else {
                verify_bcrypt(rest, password)
            }
        }
        _ => false,
    }
}

/// The schemes [`verify`] understands, as Dovecot spells them.
pub const SCHEMES: &[&str] = &["ARGON2ID", "ARGON2I", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "CRYPT"];

/// Is `stored` in `{SCHEME}…` form with a scheme we can verify?  For checking a hash an admin
/// supplies (`user add --password-hash`) before it is stored; it does not parse the rest.
pub fn is_supported(stored: &str) -> bool {
    split_scheme(stored).is_some_and(|(scheme, rest)| {
        !rest.is_empty() && SCHEMES.iter().any(|known| known.eq_ignore_ascii_case(scheme))
    })
}

/// Why a hash an administrator supplied cannot be stored (see [`check_hash`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashProblem {
    /// A bare crypt(3) string, as `openssl passwd -6`, `mkpasswd` and /etc/shadow give it:
    /// `scheme` is the prefix it needs.
    NoScheme { scheme: &'static str },
    /// Not `{SCHEME}…` with a scheme [`verify`] understands.
    Unsupported,
    /// `{scheme}` followed by something that is not a hash of that scheme (cut short,
    /// another scheme's string, or garbage).
    Malformed { scheme: String },
}

impl HashProblem {
    /// What is wrong, naming where the hash came from (`field`: `--password-hash`, or
    /// `postmaster.password_hash` for the answers file).
    pub fn message(&self, field: &str) -> String {
        match self {
            HashProblem::NoScheme { .. } => format!("{field} has no {{SCHEME}} prefix"),
            HashProblem::Unsupported => format!("{field} is not a supported hash"),
            HashProblem::Malformed { scheme } => {
                format!("{field} says {{{scheme}}} but what follows is not a {scheme} hash")
            }
        }
    }

    /// What to do about it; `hash` is the value that was refused.
    pub fn help(&self, hash: &str) -> String {
        match self {
            HashProblem::NoScheme { scheme } => {
                format!("this looks like a {scheme} hash; pass it as '{{{scheme}}}{hash}'")
            }
            HashProblem::Unsupported | HashProblem::Malformed { .. } => format!(
                "use Dovecot's {{SCHEME}} form with one of {}, e.g. from `doveadm pw -s SHA512-CRYPT`",
                SCHEMES.join(", ")
            ),
        }
    }
}

/// The one check for a password hash that an administrator hands us (`user add
/// --password-hash`, the answers file's `password_hash`): Dovecot's `{SCHEME}` form, a
/// scheme we verify, and after it a string of that scheme's shape. A hash nobody can log
/// in with is better refused when it is given than discovered at the first login.
///
/// Only the shape is checked, never by hashing: a crafted cost (bcrypt 31, SHA-crypt
/// rounds=999999999, Argon2 with gigabytes) must not make the check itself slow.
pub fn check_hash(hash: &str) -> Result<(), HashProblem> {
    if !hash.starts_with('{') {
        if let Some(scheme) = crypt_scheme(hash) {
            return Err(HashProblem::NoScheme { scheme });
        }
    }
    if !is_supported(hash) {
        return Err(HashProblem::Unsupported);
    }
    let (scheme, rest) = split_scheme(hash).expect("is_supported checked the {SCHEME} form");
    let scheme = scheme.to_ascii_uppercase();
    let fits = match scheme.as_str() {
        "ARGON2ID" => argon2_shape(rest, Algorithm::Argon2id),
        "ARGON2I" => argon2_shape(rest, Algorithm::Argon2i),
        "CRYPT" => crypt_scheme(rest).is_some_and(|s| crypt_shape(s, rest)),
        other => crypt_scheme(rest).is_some_and(|s| s == other && crypt_shape(s, rest)),
    };
    if fits {
        Ok(())
    } else {
        Err(HashProblem::Malformed { scheme })
    }
}

/// The Dovecot scheme of a bare crypt(3) string (`$6$…` → SHA512-CRYPT), by its prefix.
fn crypt_scheme(s: &str) -> Option<&'static str> {
    if s.starts_with("$6$") {
        Some("SHA512-CRYPT")
    } else if s.starts_with("$5$") {
        Some("SHA256-CRYPT")
    } else if ["$2y$", "$2b$", "$2a$"].iter().any(|p| s.starts_with(p)) {
        Some("BLF-CRYPT")
    } else {
        None
    }
}

/// crypt(3)'s base-64 alphabet (`./0-9A-Za-z`), used by SHA-crypt and bcrypt.
fn crypt_b64(s: &str) -> bool {
    s.bytes().all(|b| b == b'.' || b == b'/' || b.is_ascii_alphanumeric())
}

/// Does `s` (a crypt string with a known prefix) have that algorithm's fields?
/// SHA-crypt: `$5$`/`$6$`, optional `rounds=N$`, a salt of at most 16 characters, and a
/// 43-character (SHA-256) or 86-character (SHA-512) digest. bcrypt: `$2?$NN$` with a cost
/// of 4–31 and 53 characters of salt and digest.
fn crypt_shape(scheme: &str, s: &str) -> bool {
    if scheme == "BLF-CRYPT" {
        let Some((cost, tail)) = s.get(4..).and_then(|r| r.split_once('$')) else { return false };
        let cost_ok = cost.len() == 2 && cost.parse::<u32>().is_ok_and(|c| (4..=31).contains(&c));
        return cost_ok && tail.len() == 53 && crypt_b64(tail);
    }
    let digest_len = if scheme == "SHA512-CRYPT" { 86 } else { 43 };
    let mut fields: Vec<&str> = s[3..].split('$').collect();
    if fields.first().is_some_and(|f| f.starts_with("rounds=")) {
        let rounds = fields.remove(0)["rounds=".len()..].to_owned();
        if rounds.is_empty() || !rounds.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    match fields.as_slice() {
        [salt, digest] => {
            salt.len() <= 16
                && !salt.bytes().any(|b| b.is_ascii_whitespace() || b == b':')
                && digest.len() == digest_len
                && crypt_b64(digest)
        }
        _ => false,
    }
}

/// A PHC string of the right Argon2 variant with parameters Argon2 accepts, a salt and a
/// digest.
fn argon2_shape(phc: &str, expected: Algorithm) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    parsed.algorithm == expected.ident()
        && parsed.salt.is_some()
        && parsed.hash.is_some()
        && Params::try_from(&parsed).is_ok()
}

/// Why a password is refused (see [`check_strength`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weakness {
    /// Fewer than [`MIN_LENGTH`] characters.
    TooShort,
    /// One of the passwords people pick most often, or one of them with digits or symbols
    /// around it or letters swapped for look-alike digits (`P@ssw0rd1!`).
    Common,
    /// The account's own name or its domain's, dressed up the same way (`alice2024!` for
    /// alice@…, `Example123` for …@example.org): the first thing an attacker tries.
    AccountName,
    /// The same character over and over (`aaaaaaaa`).
    Repeated,
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Weakness::TooShort => "the password is shorter than 8 characters",
            Weakness::Common => "the password is one of the most common passwords",
            Weakness::AccountName => "the password is the account's or the domain's name",
            Weakness::Repeated => "the password is one character repeated",
        })
    }
}

/// Passwords shorter than this are refused, always.
pub const MIN_LENGTH: usize = 8;

/// The most common passwords, one per line, lowercase.
///
/// Compiled by hand for posthaste from what published analyses of breached-password
/// corpora rank as the most used passwords — the UK NCSC's 2019 study of the top 100,000
/// passwords in Have I Been Pwned, and the yearly "most common passwords" lists of
/// password-manager vendors — together with the keyboard walks and the German, French,
/// Spanish and Italian words those rankings show. It lists which strings people pick (a
/// fact about people), not a copy of any one source. Short entries (`admin`, `qwerty`)
/// are there as roots: a password that is one of them with digits or symbols around it
/// is refused too. Brute-forcing the rest is what the guard's login bans are for.
const COMMON: &str = include_str!("common-passwords.txt");

static COMMON_SET: LazyLock<std::collections::HashSet<&'static str>> = LazyLock::new(|| {
    COMMON.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
});

/// Is `password` good enough for the account `address` (`local@domain`)? Length is a hard
/// rule; the other checks catch the passwords that password-spraying bots try first. Counted
/// in characters, so a non-ASCII password is not penalised for its bytes.
pub fn check_strength(password: &str, address: &crate::address::Address) -> Result<(), Weakness> {
    if password.chars().count() < MIN_LENGTH {
        return Err(Weakness::TooShort);
    }
    let lower = password.to_lowercase();
    let mut chars = lower.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(Weakness::Repeated);
    }
    // The forms a common password takes: as typed, without the digits and symbols around
    // it (`Summer2024!`), and with look-alike digits read as letters (`P@ssw0rd`).
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    let candidates = [lower.clone(), core.to_owned(), unleet(&lower), unleet(core)];
    let candidates: Vec<&str> = candidates
        .iter()
        .map(|c| c.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|c| !c.is_empty())
        .collect();
    if candidates.iter().any(|c| COMMON_SET.contains(c)) {
        return Err(Weakness::Common);
    }
    let local = address.local().split('+').next().unwrap_or("");
    let label = address.domain().split('.').next().unwrap_or("");
    let names: Vec<String> =
        [local.to_owned(), label.to_owned(), format!("{local}{label}"), address.to_string()]
            .into_iter()
            .filter(|n| n.chars().count() >= 3)
            .collect();
    if candidates.iter().any(|c| names.iter().any(|n| n == c)) {
        return Err(Weakness::AccountName);
    }
    Ok(())
}

/// `p@ssw0rd` → `password`: the digit-for-letter swaps people believe make a word strong.
fn unleet(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | '!' => 'i',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            other => other,
        })
        .collect()
}

/// `{SCHEME}rest` → (`SCHEME`, `rest`).
fn split_scheme(stored: &str) -> Option<(&str, &str)> {
    let rest = stored.strip_prefix('{')?;
    let (scheme, rest) = rest.split_once('}')?;
    (!scheme.is_empty()).then_some((scheme, rest))
}

/// The PHC string must name the same variant as the scheme: a `{ARGON2ID}` prefix on an
/// `$argon2i$` string is a corrupt record, not something to be lenient about.
fn verify_argon2(phc: &str, password: &str, expected: Algorithm) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != expected.ident() {
        return false;
    }
    // The verifier takes variant, version, costs and output length from the string itself.
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// `$2y$` (PHP, Dovecot), `$2b$` (OpenBSD, current libxcrypt) and `$2a$` (older) are the same
/// algorithm for the passwords anyone types; bcrypt only looks at the first 72 bytes, like
/// every other implementation.
fn verify_bcrypt(s: &str, password: &str) -> bool {
    let known = ["$2y$", "$2b$", "$2a$"].iter().any(|p| s.starts_with(p));
    known && bcrypt::verify(password, s).unwrap_or(false)
}

/// The alphabet of generated passwords: letters and digits without the look-alikes
/// 0/O/o, 1/l/I, so a password read aloud or off a screen is typed right the first time.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";

/// Length of generated passwords: 24 characters from 55 symbols ≈ 138 bits of entropy.
const GENERATED_LEN: usize = 24;

/// A strong random password for `user add` without one.
pub fn generate() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..GENERATED_LEN).map(|_| *ALPHABET.choose(&mut rng).expect("non-empty alphabet") as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every fixture below hashes the password "correct horse" unless noted, and was produced
    // by an independent tool on the development machine (Debian 12, dovecot-core 2.3.19).

    /// `doveadm pw -s ARGON2ID -p 'correct horse'` (Dovecot default cost m=64MiB, t=3).
    const DOVE_ARGON2ID: &str = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$IP2H1MNOClFawmfRrIW+mg$EQX7cV1SVJqNLSkBRHlE1LnMvV0JTesIlNzAy/zaoB0";
    /// `doveadm pw -s ARGON2I -p 'correct horse'`.
    const DOVE_ARGON2I: &str = "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$lAHQQTbKj1/eQ2d1IM3kmg$ST05UV0xgrqiYMrMF/bWW9zhfykgd8ob2eA+Dtftfp8";
    /// `doveadm pw -s SHA512-CRYPT -p 'correct horse'`.
    const DOVE_SHA512: &str = "{SHA512-CRYPT}$6$JGC.pXmYaqJw.9Hi$zyBZ0G1jc4vIEgZArMQTv4TSK1erBik5Gli.dRC05O2Erskvwaj5pQP6MXwXIaucBQZAu.EKRtAnwPq.p1DFS/";
    /// `doveadm pw -s SHA256-CRYPT -p 'correct horse'`.
    const DOVE_SHA256: &str = "{SHA256-CRYPT}$5$xBF.kC5BANWPXlsO$MfnZ.yuOWTAqTy5E6a/Ben4oYMf9CnfC5znDVRGzCy6";
    /// `doveadm pw -s BLF-CRYPT -p 'correct horse'` (cost 5, `$2y$`).
    const DOVE_BLF: &str = "{BLF-CRYPT}$2y$05$8ZXHjq1mfKDw.VGhIdbXjedQP9TKmVQ8QYOVjA9czpNdzWD.jHydW";
    /// `openssl passwd -6 -salt saltsalt 'correct horse'` (OpenSSL 3.0), prefixed by hand.
    const OPENSSL_SHA512: &str = "{SHA512-CRYPT}$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
    /// `openssl passwd -5 -salt pepper 'correct horse'`, prefixed by hand.
    const OPENSSL_SHA256: &str = "{SHA256-CRYPT}$5$pepper$I4JtT7ItqoiFALROk4x2EglL0RlsbnhesIq3gG3GPF.";
    /// Python 3.11 `crypt.crypt("correct horse", crypt.mksalt(crypt.METHOD_SHA512, rounds=10000))`
    /// (glibc/libxcrypt), prefixed by hand: exercises the `rounds=` field.
    const PY_SHA512_ROUNDS: &str = "{SHA512-CRYPT}$6$rounds=10000$8zX072/GWeQGjSGZ$BWA60c2O5STk6DdYDJMJ4OySQAgTcmhhMIpwvytYv9Rx3viyN1CVi6hWil5iwkH35UgVktj7BXtbRq8QiDt5T1";
    /// Python `crypt.crypt("correct horse", crypt.mksalt(crypt.METHOD_SHA256, rounds=6000))`.
    const PY_SHA256_ROUNDS: &str =
        "{SHA256-CRYPT}$5$rounds=6000$UVWW5ftCurAbJNAA$9Lb9dgeKZxeEVMGmkSaKPleRSn6f/6i1R8YbLWbTeo2";
    /// Python `crypt.crypt("correct horse", "$2b$04$abcdefghijklmnopqrstuu")` (libxcrypt);
    /// `doveadm pw -t` confirmed it as `{BLF-CRYPT}`.
    const PY_BLF_2B: &str = "{BLF-CRYPT}$2b$04$abcdefghijklmnopqrstuujydOTSfIH/d5oUHpsygqV5X9xJLQc6e";
    /// The same with the `$2a$` prefix, from Python `crypt.crypt(…, "$2a$04$…")`.
    const PY_BLF_2A: &str = "{BLF-CRYPT}$2a$04$abcdefghijklmnopqrstuujydOTSfIH/d5oUHpsygqV5X9xJLQc6e";
    /// `doveadm pw -s ARGON2ID -p 'pässwörd ünicode'`: non-ASCII passwords are hashed as UTF-8.
    const DOVE_ARGON2ID_UTF8: &str = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$Z3LLYfNGixOQMxtIh1xj8w$6btTOkaxG3HNHP9UNDVyxt+zcwZMQlZbz3J3M9YmeH8";
    /// `doveadm pw -s SHA512-CRYPT -p ''`: the empty password.
    const DOVE_SHA512_EMPTY: &str = "{SHA512-CRYPT}$6$ESR9sAqs67z1aaXQ$GQScYZHk5I.cXOxboWyW43GD2bkeC1Ka5zer1vasHpMNTTEYWr8sBOhPlv6m8fKlwv14KbwjOqa3b5GylK72P/";

    #[test]
    fn crypt_family_from_dovecot_openssl_python() {
        for stored in [
            DOVE_SHA512,
            DOVE_SHA256,
            DOVE_BLF,
            OPENSSL_SHA512,
            OPENSSL_SHA256,
            PY_SHA512_ROUNDS,
            PY_SHA256_ROUNDS,
            PY_BLF_2B,
            PY_BLF_2A,
        ] {
            assert!(verify(stored, "correct horse"), "{stored} should match");
            assert!(!verify(stored, "correct horsE"), "{stored} matched a wrong password");
            assert!(!verify(stored, ""), "{stored} matched the empty password");
        }
        assert!(verify(DOVE_SHA512_EMPTY, ""));
        assert!(!verify(DOVE_SHA512_EMPTY, " "));
    }

    #[test]
    fn argon2_from_dovecot() {
        // Argon2 is slow in unoptimised test builds, hence one right and one wrong each.
        assert!(verify(DOVE_ARGON2ID, "correct horse"));
        assert!(!verify(DOVE_ARGON2ID, "correct horse "));
        assert!(verify(DOVE_ARGON2I, "correct horse"));
        assert!(verify(DOVE_ARGON2ID_UTF8, "pässwörd ünicode"));
    }

    #[test]
    fn scheme_must_match_the_string() {
        // Right password, wrong label: a corrupt or hand-edited record never authenticates.
        let swapped = DOVE_ARGON2I.replace("{ARGON2I}", "{ARGON2ID}");
        assert!(!verify(&swapped, "correct horse"));
        let sha_as_blf = DOVE_SHA512.replace("{SHA512-CRYPT}", "{BLF-CRYPT}");
        assert!(!verify(&sha_as_blf, "correct horse"));
        let sha256_as_512 = DOVE_SHA256.replace("{SHA256-CRYPT}", "{SHA512-CRYPT}");
        assert!(!verify(&sha256_as_512, "correct horse"));
    }

    #[test]
    fn scheme_name_is_case_insensitive_and_crypt_dispatches() {
        assert!(verify(&DOVE_BLF.replace("{BLF-CRYPT}", "{blf-crypt}"), "correct horse"));
        assert!(verify(&DOVE_SHA512.replace("{SHA512-CRYPT}", "{CRYPT}"), "correct horse"));
        assert!(verify(&DOVE_SHA256.replace("{SHA256-CRYPT}", "{CRYPT}"), "correct horse"));
        assert!(verify(&DOVE_BLF.replace("{BLF-CRYPT}", "{CRYPT}"), "correct horse"));
    }

    #[test]
    fn unknown_or_malformed_never_matches() {
        for stored in [
            "",
            "correct horse",
            "{PLAIN}correct horse",
            "{CLEAR}correct horse",
            "{SSHA512}abc",
            "{}correct horse",
            "{SHA512-CRYPT}",
            "{SHA512-CRYPT}$6$",
            "{ARGON2ID}",
            "{ARGON2ID}$argon2id$v=19$garbage",
            "{BLF-CRYPT}$2y$05$short",
            // No `{SCHEME}`: Dovecot would fall back to default_pass_scheme; we refuse to guess.
            "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0",
            "{CRYPT}$1$saltsalt$abcdefghijklmnopqrstuv",
        ] {
            assert!(!verify(stored, "correct horse"), "{stored:?} matched");
        }
    }

    #[test]
    fn hash_has_dovecot_form_and_roundtrips() {
        let h = hash("s3cret pass");
        let prefix =
            format!("{{ARGON2ID}}$argon2id$v=19$m={ARGON2_M_COST},t={ARGON2_T_COST},p={ARGON2_P_COST}$");
        assert!(h.starts_with(&prefix), "{h}");
        // salt (16 bytes → 22 chars) and output (32 bytes → 43 chars), unpadded base64.
        let tail: Vec<&str> = h[prefix.len()..].split('$').collect();
        assert_eq!(tail.len(), 2, "{h}");
        assert_eq!((tail[0].len(), tail[1].len()), (22, 43), "{h}");
        assert!(verify(&h, "s3cret pass"));
        assert!(!verify(&h, "s3cret pasS"));
    }

    #[test]
    fn dummy_hash_parses_and_matches_nothing() {
        let d = dummy_hash();
        assert!(PasswordHash::new(split_scheme(d).unwrap().1).is_ok(), "{d}");
        assert!(!verify(d, ""));
    }

    #[test]
    fn supported_schemes() {
        assert!(is_supported(DOVE_ARGON2ID));
        assert!(is_supported(DOVE_BLF));
        assert!(is_supported("{sha512-crypt}$6$x$y"));
        assert!(!is_supported("{PLAIN}secret"));
        assert!(!is_supported("{ARGON2ID}"));
        assert!(!is_supported("$6$saltsalt$abc"));
    }

    #[test]
    fn admin_supplied_hashes_are_checked_by_shape() {
        for good in [
            DOVE_ARGON2ID,
            DOVE_ARGON2I,
            DOVE_SHA512,
            DOVE_SHA256,
            DOVE_BLF,
            OPENSSL_SHA512,
            OPENSSL_SHA256,
            PY_SHA512_ROUNDS,
            PY_SHA256_ROUNDS,
            PY_BLF_2B,
            PY_BLF_2A,
            DOVE_ARGON2ID_UTF8,
            DOVE_SHA512_EMPTY,
        ] {
            assert_eq!(check_hash(good), Ok(()), "{good}");
        }
        assert_eq!(check_hash(&DOVE_SHA512.replace("{SHA512-CRYPT}", "{CRYPT}")), Ok(()));
        assert_eq!(check_hash(&DOVE_BLF.replace("{BLF-CRYPT}", "{blf-crypt}")), Ok(()));
        let malformed = |scheme: &str| Err(HashProblem::Malformed { scheme: scheme.into() });
        for (bad, scheme) in [
            ("{ARGON2ID}garbage", "ARGON2ID"),
            ("{ARGON2ID}$argon2id$v=19$garbage", "ARGON2ID"),
            ("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$IP2H1MNOClFawmfRrIW+mg", "ARGON2ID"),
            ("{ARGON2I}$argon2id$v=19$a$b", "ARGON2I"),
            ("{SHA512-CRYPT}$5$salt$abc", "SHA512-CRYPT"),
            ("{SHA512-CRYPT}$6$salt$abc", "SHA512-CRYPT"),
            ("{SHA512-CRYPT}$6$rounds=x$saltsalt$abc", "SHA512-CRYPT"),
            ("{SHA256-CRYPT}$5$pepper$I4JtT7ItqoiFALROk4x2EglL0Rls", "SHA256-CRYPT"),
            ("{BLF-CRYPT}$2y$05$short", "BLF-CRYPT"),
            ("{BLF-CRYPT}$2y$99$8ZXHjq1mfKDw.VGhIdbXjedQP9TKmVQ8QYOVjA9czpNdzWD.jHydW", "BLF-CRYPT"),
            ("{CRYPT}$1$saltsalt$abcdefghijklmnopqrstuv", "CRYPT"),
        ] {
            assert_eq!(check_hash(bad), malformed(scheme), "{bad}");
        }
        for bad in ["{MD5}abc", "{PLAIN}secret", "{SHA512-CRYPT}", "nohash", ""] {
            assert_eq!(check_hash(bad), Err(HashProblem::Unsupported), "{bad}");
        }
        let bare = "$6$salt$abc";
        let problem = check_hash(bare).unwrap_err();
        assert_eq!(problem, HashProblem::NoScheme { scheme: "SHA512-CRYPT" });
        assert_eq!(problem.message("--password-hash"), "--password-hash has no {SCHEME} prefix");
        assert!(problem.help(bare).contains("'{SHA512-CRYPT}$6$salt$abc'"), "{}", problem.help(bare));
        let field = HashProblem::Malformed { scheme: "ARGON2ID".into() }.message("postmaster.password_hash");
        assert_eq!(field, "postmaster.password_hash says {ARGON2ID} but what follows is not a ARGON2ID hash");
    }

    #[test]
    fn the_common_password_list_is_clean() {
        let entries: Vec<&str> = COMMON.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        assert!(entries.len() >= 300, "{}", entries.len());
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            assert_eq!(*e, e.trim(), "{e:?}");
            assert_eq!(*e, e.to_lowercase(), "{e:?}: lowercase, it is compared lowercased");
            assert!(seen.insert(*e), "{e} twice");
        }
    }

    #[test]
    fn weak_passwords() {
        let alice = crate::address::Address::parse("alice@example.test").unwrap();
        for (password, why) in [
            ("short7!", Weakness::TooShort),
            ("ñññññ", Weakness::TooShort),
            ("password", Weakness::Common),
            ("PASSWORD", Weakness::Common),
            ("12345678", Weakness::Common),
            ("Password1!", Weakness::Common),
            ("P@ssw0rd", Weakness::Common),
            ("!!Welcome2024", Weakness::Common),
            ("qwertyuiop", Weakness::Common),
            ("Summer2024!", Weakness::Common),
            ("admin12345", Weakness::Common),
            ("Alice2024!", Weakness::AccountName),
            ("example123", Weakness::AccountName),
            ("aliceexample", Weakness::AccountName),
            ("aaaaaaaaaa", Weakness::Repeated),
        ] {
            assert_eq!(check_strength(password, &alice), Err(why), "{password}");
        }
        for ok in [
            "correct horse battery",
            "Secret-Passw0rd!",
            "New-Passw0rd-2",
            "ñññññññ8",
            "kettle-orbit-spruce",
            "Tr0ub4dor&3x",
            "bob-2024-garden",
        ] {
            assert_eq!(check_strength(ok, &alice), Ok(()), "{ok}");
        }
    }

    #[test]
    fn generated_passwords() {
        let a = generate();
        let b = generate();
        assert!(a.len() >= 20);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)), "{a}");
        for ambiguous in b"0Oo1lI" {
            assert!(!ALPHABET.contains(ambiguous));
        }
    }
}
