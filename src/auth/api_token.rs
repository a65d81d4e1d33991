//! API tokens for automation: `lot_<id>_<secret>`, shown once when made;
//! the store keeps the id and a hash of the secret, never the secret.

use sha2::{Digest, Sha256};

use crate::store::ApiToken;
use linkops_reconcilers::grant::Grant;

/// How every API token begins: told apart from a session at a glance (and by
/// secret scanners).
pub const PREFIX: &str = "lot_";

const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A token just made: the whole token (shown this once) and its record.
pub struct Minted {
    pub token: String,
    pub record: ApiToken,
}

fn random(length: usize) -> String {
    use rand::seq::IndexedRandom;
    let mut rng = rand::rng();
    (0..length)
        .map(|_| {
            char::from(
                *ALPHABET
                    .choose(&mut rng)
                    .expect("the alphabet is not empty"),
            )
        })
        .collect()
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a token named `name` for `owner` (none: a service token) with
/// `grant`, expiring at `expires_at_ms`, made by `by`.
pub fn mint(
    name: &str,
    owner: Option<&str>,
    grant: Grant,
    by: &str,
    now_ms: i64,
    expires_at_ms: i64,
) -> Minted {
    let (id, secret) = (random(12), random(32));
    Minted {
        token: format!("{PREFIX}{id}_{secret}"),
        record: ApiToken {
            id,
            name: name.to_owned(),
            owner: owner.map(str::to_owned),
            grant,
            secret_sha256: digest(&secret),
            created_by: by.to_owned(),
            created_at_ms: now_ms,
            expires_at_ms,
            last_used_at_ms: None,
        },
    }
}

/// The id and secret of a presented API token, if it is one.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 12 && secret.len() == 32).then_some((id, secret))
}

/// Whether `secret` is the token's.
pub fn opens(record: &ApiToken, secret: &str) -> bool {
    // Hashes of a 190-bit secret: comparing them tells an attacker nothing usable.
    digest(secret) == record.secret_sha256
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkops_reconcilers::role::Role;

    #[test]
    fn a_minted_token_is_read_back_and_opens_its_record_alone() {
        let minted = mint("ci", Some("ada"), Grant::fleet(Role::Viewer), "ada", 0, 1);
        let (id, secret) = parse(&minted.token).unwrap();
        assert_eq!(id, minted.record.id);
        assert!(opens(&minted.record, secret));
        assert!(!minted.record.secret_sha256.contains(secret));
        let other = mint("ci", Some("ada"), Grant::fleet(Role::Viewer), "ada", 0, 1);
        assert!(!opens(&other.record, secret));
        for not_one in ["", "lot_", "lot_short_secret", "eyJhbGciOiJIUzI1NiJ9.x.y"] {
            assert_eq!(parse(not_one), None, "{not_one}");
        }
    }
}
