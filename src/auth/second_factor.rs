//! A second factor for local accounts: TOTP (RFC 6238, as every
//! authenticator app has it) with recovery codes, and the codes it takes —
//! each once. The store keeps the shared secret (the app holds it too) and
//! only hashes of the recovery codes.

use sha2::{Digest, Sha256};
use totp_rs::{Secret, Totp};

/// Recovery codes made at enrolment, each good once.
pub const RECOVERY_CODES: usize = 10;

/// Lower case and digits without look-alikes: read off paper, typed in.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the stored second factor of {0:?} is unreadable: an admin removes it, and they enrol again"
    )]
    Unreadable(String),
}

/// The TOTP of `user` with `secret_base32`.
pub fn totp(user: &str, secret_base32: &str) -> Result<Totp, Error> {
    let unreadable = || Error::Unreadable(user.to_owned());
    let secret = Secret::try_from_base32(secret_base32).map_err(|_| unreadable())?;
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_account_name(user)
        .with_issuer(Some("LinkOps"))
        .build()
        .map_err(|_| unreadable())
}

/// A new secret (160 bits), base32.
pub fn new_secret() -> String {
    Secret::generate().to_base32()
}

/// `otpauth://totp/…`: what the enrolment's QR code holds.
pub fn otpauth_url(user: &str, totp: &Totp) -> Result<String, Error> {
    totp.to_url()
        .map_err(|_| Error::Unreadable(user.to_owned()))
}

/// The QR code of `text`, as SVG.
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build(),
    )
}

/// The time step `code` is right for at `now_s` (one step of clock skew either way).
pub fn step_of(totp: &Totp, code: &str, now_s: u64) -> Option<u64> {
    totp.check(code.trim(), now_s)
}

/// New recovery codes (`xxxx-xxxx-xxxx-xxxx`, 79 bits each) and their hashes.
pub fn recovery_codes() -> (Vec<String>, Vec<String>) {
    use rand::seq::IndexedRandom;
    let mut rng = rand::rng();
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let chars: Vec<char> = (0..16)
                .map(|_| char::from(*RECOVERY_ALPHABET.choose(&mut rng).expect("not empty")))
                .collect();
            chars
                .chunks(4)
                .map(String::from_iter)
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    let hashes = codes.iter().map(|code| recovery_hash(code)).collect();
    (codes, hashes)
}

/// The hash a recovery code is kept as: of its letters, however it was typed.
pub fn recovery_hash(code: &str) -> String {
    let letters: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex::encode(Sha256::digest(letters.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_right_for_its_step_and_a_step_either_way_only() {
        let totp = totp("ada", &new_secret()).unwrap();
        let now = 1_800_000_000;
        let code = totp.generate(now).to_string();
        assert_eq!(step_of(&totp, &code, now), Some(now / 30));
        assert!(step_of(&totp, &code, now + 30).is_some(), "a step of skew");
        assert_eq!(step_of(&totp, &code, now + 120), None);
        assert_eq!(step_of(&totp, "000000x", now), None);
        assert!(
            otpauth_url("ada", &totp)
                .unwrap()
                .starts_with("otpauth://totp/LinkOps:ada?")
        );
        assert!(qr_svg("otpauth://totp/x").unwrap().starts_with("<?xml"));
    }

    #[test]
    fn recovery_codes_are_kept_as_hashes_of_their_letters() {
        let (codes, hashes) = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(codes[0].len(), 19, "{}", codes[0]);
        assert_eq!(recovery_hash(&codes[0]), hashes[0]);
        assert_eq!(
            recovery_hash(&codes[0].replace('-', " ").to_uppercase()),
            hashes[0]
        );
        assert_ne!(hashes[0], hashes[1]);
    }
}
