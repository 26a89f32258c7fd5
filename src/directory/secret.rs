//! Random secrets the web side hands out (session ids, CSRF tokens, API tokens, app
//! passwords, recovery codes) and the digests the directory keeps of them instead.
//!
//! Why SHA-256 and not Argon2 like account passwords: these secrets are generated here
//! with 80 bits or more of randomness, so no guessing can find one from its digest, and a
//! digest can be looked up in one indexed query (an app password is tried on every IMAP
//! login; Argon2 per stored app password would cost 0.1 s each).

use rand::Rng;

/// Lower-case letters and digits without the ones people confuse (0/o, 1/l/i): 32 symbols,
/// 5 bits each.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// `n` random symbols of [`ALPHABET`].
pub fn random_symbols(n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..n).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// A URL- and cookie-safe random token of `bytes` random bytes (hex).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill(&mut buf[..]);
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest kept of a secret: SHA-256 over a purpose label and the secret, hex. The label
/// keeps a token's digest from matching an app password's.
pub fn digest(purpose: &str, secret: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(purpose.as_bytes());
    ctx.update(&[0]);
    ctx.update(secret.as_bytes());
    hex(ctx.finish().as_ref())
}

/// A new app password: 16 symbols (80 bits) shown in groups of four, `abcd-efgh-jkmn-pqrs`.
pub fn new_app_password() -> String {
    group(&random_symbols(16))
}

/// A new recovery code: 10 symbols (50 bits; single use, and the guard bans guessing),
/// shown as `abcde-fghjk`.
pub fn new_recovery_code() -> String {
    let s = random_symbols(10);
    format!("{}-{}", &s[..5], &s[5..])
}

fn group(s: &str) -> String {
    s.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// What is compared: the symbols without the dashes and spaces they are shown with, lower
/// case (a user may type them either way).
pub fn normalize_app_password(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '-' | ' ')).flat_map(char::to_lowercase).collect()
}

/// Constant-time equality for secrets compared in memory (CSRF tokens).
pub fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Every byte is looked at whatever the first difference, so the time taken does not tell
/// how much of a guess was right. (The lengths are not secret.)
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_passwords_are_grouped_and_compared_without_their_dashes() {
        let p = new_app_password();
        assert_eq!(p.len(), 19, "{p}");
        assert_eq!(p.matches('-').count(), 3);
        assert_eq!(normalize_app_password(&p.to_uppercase().replace('-', " ")), p.replace('-', ""));
        assert_ne!(new_app_password(), p);
        let r = new_recovery_code();
        assert_eq!((r.len(), &r[5..6]), (11, "-"));
    }

    #[test]
    fn digests_depend_on_the_purpose() {
        assert_eq!(digest("a", "x"), digest("a", "x"));
        assert_ne!(digest("a", "x"), digest("b", "x"));
        assert_eq!(digest("a", "x").len(), 64);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
