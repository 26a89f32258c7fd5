//! Password hashes in Dovecot's `{SCHEME}` notation. INTERFACE STUB.

/// A new `{ARGON2ID}` hash of `password`.
pub fn hash(_password: &str) -> String {
    todo!()
}

/// Does `password` match `stored` (`{ARGON2ID}`, `{ARGON2I}`, `{SHA512-CRYPT}`,
/// `{SHA256-CRYPT}`, `{BLF-CRYPT}`)?  Unknown schemes never match.
pub fn verify(_stored: &str, _password: &str) -> bool {
    todo!()
}

/// A strong random password for `user add` without one.
pub fn generate() -> String {
    todo!()
}
