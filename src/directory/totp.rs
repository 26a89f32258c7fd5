//! TOTP (RFC 6238): the six-digit codes of authenticator apps, for the web's second factor.
//!
//! HOTP (RFC 4226 §5) over the time step: HMAC-SHA1 of the big-endian step counter,
//! dynamic truncation, modulo 10^6. The defaults every app uses: SHA-1, 6 digits, 30 s
//! steps (RFC 6238 §4, §5.2). The secret is 20 random bytes (RFC 4226 §4 asks for at least
//! 128 bits; 160 is what SHA-1 keys are), shown to the user in base32 (RFC 4648) as apps
//! expect it.

use rand::Rng;

pub const STEP_SECONDS: u64 = 30;
pub const DIGITS: u32 = 6;

/// A new secret, base32 without padding.
pub fn new_secret() -> String {
    let mut key = [0u8; 20];
    rand::rngs::OsRng.fill(&mut key);
    data_encoding::BASE32_NOPAD.encode(&key)
}

fn key_of(secret: &str) -> Option<Vec<u8>> {
    let clean: String =
        secret.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    data_encoding::BASE32_NOPAD.decode(clean.trim_end_matches('=').as_bytes()).ok()
}

/// The HOTP value for `counter` (RFC 4226 §5.3).
pub fn hotp(key: &[u8], counter: u64) -> u32 {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mac = ring::hmac::sign(&k, &counter.to_be_bytes());
    let h = mac.as_ref();
    // Dynamic truncation: the low 4 bits of the last byte pick the offset.
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[offset] & 0x7f, h[offset + 1], h[offset + 2], h[offset + 3]]);
    bin % 10u32.pow(DIGITS)
}

/// The time step of Unix time `now` (RFC 6238 §4.2, T0 = 0).
pub fn step(now: u64) -> u64 {
    now / STEP_SECONDS
}

/// The step whose code `code` is, looking one step either side of `now` (RFC 6238 §5.2
/// allows a small window for clock drift and typing time); None if it matches none. The
/// caller refuses a step that was used already (replay, §5.2).
pub fn verify(secret: &str, code: &str, now: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let wanted: u32 = code.parse().ok()?;
    let key = key_of(secret)?;
    let now_step = step(now);
    [now_step.saturating_sub(1), now_step, now_step + 1]
        .into_iter()
        .find(|&s| super::secret::same_bytes(&hotp(&key, s).to_be_bytes(), &wanted.to_be_bytes()))
}

/// The code at `now` (for tests and the enrolment check).
pub fn code_at(secret: &str, now: u64) -> Option<String> {
    Some(format!("{:06}", hotp(&key_of(secret)?, step(now))))
}

/// The `otpauth://` URI apps import (the Key Uri Format authenticator apps share).
pub fn uri(secret: &str, issuer: &str, account: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, the SHA-1 rows (8 digits there; the last 6 are ours).
    #[test]
    fn rfc6238_test_vectors() {
        let key = b"12345678901234567890";
        for (time, eight) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(format!("{:06}", hotp(key, step(time))), &eight[2..], "T={time}");
        }
        let secret = data_encoding::BASE32_NOPAD.encode(key);
        assert_eq!(verify(&secret, "287082", 59), Some(1));
        // One step either side is accepted, two are not.
        assert_eq!(verify(&secret, "287082", 59 + 30), Some(1));
        assert_eq!(verify(&secret, "287082", 59 + 60), None);
        assert_eq!(verify(&secret, "28708", 59), None);
        assert_eq!(verify(&secret, "abcdef", 59), None);
    }

    #[test]
    fn new_secrets_round_trip_through_base32() {
        let s = new_secret();
        assert_eq!(s.len(), 32);
        let code = code_at(&s, 1_700_000_000).unwrap();
        assert_eq!(verify(&s.to_lowercase(), &code, 1_700_000_000), Some(step(1_700_000_000)));
        assert!(uri(&s, "mail.example.test", "a@example.test")
            .starts_with("otpauth://totp/mail.example.test:a%40example.test?secret="));
    }
}
