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
