//! Password hashing (argon2id, PHC strings) and generation.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use super::Error;

/// Hashes a password with argon2id and a random salt. CPU-heavy: not on the async runtime.
pub fn hash(password: &str) -> Result<String, Error> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// Checks a password against a stored hash; `None` (unknown user) is checked
/// against a fixed dummy hash so that both paths cost the same, and fails.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: LazyLock<String> =
        LazyLock::new(|| hash("linkops-dummy-password").expect("argon2 hashes a constant"));
    let (phc, real) = match stored {
        Some(stored) => (stored, true),
        None => (DUMMY.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // argon2's verify compares the digests in constant time.
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    matches && real
}

/// A random password for generated accounts: 20 characters from a 56-symbol
/// alphabet without look-alikes (about 116 bits).
pub fn generate() -> String {
    use rand::seq::IndexedRandom;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(*ALPHABET.choose(&mut rng).expect("alphabet is not empty")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_right_password() {
        let hash = hash("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify("correct horse", Some(&hash)));
        assert!(!verify("correct hors", Some(&hash)));
    }

    #[test]
    fn unknown_user_never_verifies() {
        assert!(!verify("linkops-dummy-password", None));
    }

    #[test]
    fn generated_passwords_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
