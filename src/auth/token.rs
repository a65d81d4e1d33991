//! Session tokens: HS256 JWTs signed with the daemon's secret; and, with the
//! same key, what a browser carries between the steps of a sign-in (sealed
//! for one audience, so that neither passes for the other).

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::store::{User, now_ms};
use linkops_reconcilers::role::Role;

/// The claims LinkOps puts in a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User name.
    pub sub: String,
    /// Role at issue time; informative only — requests use the stored role.
    pub role: Option<Role>,
    /// Issued at, seconds (standard claim).
    pub iat: i64,
    /// Issued at, milliseconds: compared with the user's last password change.
    pub iat_ms: i64,
    /// Expires at, seconds (standard claim).
    pub exp: i64,
    /// When a second factor was last given in this session (a TOTP code, a
    /// fresh sign-in at the provider), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_factor_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: jiff::Timestamp,
}

/// A fingerprint of the signing key, for replicas to check they share it
/// (one replica's tokens are good at every other): the first 64 bits of an
/// HMAC of a fixed text, which tells nothing of the key.
pub fn signing_key_check(secret: &[u8]) -> u64 {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"linkops: the key replicas sign session tokens with");
    let digest = mac.finalize().into_bytes();
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 8 bytes"),
    )
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl Tokens {
    pub fn new(secret: &[u8], lifetime: Duration) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            lifetime,
        }
    }

    pub fn issue(&self, user: &User) -> IssuedToken {
        self.issue_for(user, self.lifetime, None)
    }

    /// A token for `user` lasting `lifetime`, and never longer than the
    /// daemon's own; a second factor given at `second_factor_at_ms`, if one.
    pub fn issue_for(
        &self,
        user: &User,
        lifetime: Duration,
        second_factor_at_ms: Option<i64>,
    ) -> IssuedToken {
        let iat_ms = now_ms();
        let lifetime = lifetime.min(self.lifetime);
        let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        let exp_ms = iat_ms.saturating_add(lifetime_ms);
        let claims = Claims {
            sub: user.name.clone(),
            role: user.role,
            iat: iat_ms / 1000,
            iat_ms,
            exp: exp_ms / 1000,
            second_factor_at_ms,
        };
        self.sign(&claims)
    }

    /// The same session, a second factor given at `at_ms`: it ends when it would have.
    pub fn stepped_up(&self, claims: Claims, at_ms: i64) -> IssuedToken {
        self.sign(&Claims {
            second_factor_at_ms: Some(at_ms),
            ..claims
        })
    }

    fn sign(&self, claims: &Claims) -> IssuedToken {
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        IssuedToken {
            token,
            expires_at: jiff::Timestamp::from_second(claims.exp).unwrap_or(jiff::Timestamp::MAX),
        }
    }

    /// The claims of a token with a valid signature that has not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }

    /// `value`, signed for `audience` and good for `lifetime`: what a browser
    /// carries between two requests without the daemon keeping it.
    pub fn seal<T: Serialize>(&self, value: &T, audience: &str, lifetime: Duration) -> String {
        let exp = (now_ms() / 1000).saturating_add(lifetime.as_secs() as i64);
        let sealed = Sealed {
            aud: audience,
            exp,
            value,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &sealed, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// What [`seal`](Self::seal) sealed for `audience`, unless forged or expired.
    pub fn open<T: serde::de::DeserializeOwned>(&self, sealed: &str, audience: &str) -> Option<T> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.set_audience(&[audience]);
        jsonwebtoken::decode::<Sealed<String, T>>(sealed, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims.value)
    }
}

/// A value [`Tokens::seal`] signed.
#[derive(Serialize, Deserialize)]
struct Sealed<A, T> {
    aud: A,
    exp: i64,
    value: T,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "ada".into(),
            role: Some(Role::Operator),
            password_hash: String::new(),
            created_at_ms: 0,
            password_changed_at_ms: 0,
            sso: None,
            disabled: false,
            second_factor: None,
        }
    }

    #[test]
    fn issued_token_verifies_with_the_same_secret_only() {
        let tokens = Tokens::new(b"secret-one", Duration::from_secs(60));
        let issued = tokens.issue(&user());
        assert_eq!(tokens.verify(&issued.token).unwrap().sub, "ada");
        let other = Tokens::new(b"secret-two", Duration::from_secs(60));
        assert!(other.verify(&issued.token).is_none());
    }

    #[test]
    fn expired_token_is_refused() {
        let tokens = Tokens::new(b"s", Duration::from_secs(60));
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: "ada".into(),
            role: Some(Role::Operator),
            iat: now - 120,
            iat_ms: 0,
            exp: now - 60,
            second_factor_at_ms: None,
        };
        let stale = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(tokens.verify(&stale).is_none());
    }

    #[test]
    fn token_with_a_swapped_payload_is_refused() {
        let ours = Tokens::new(b"ours", Duration::from_secs(60));
        let theirs = Tokens::new(b"theirs", Duration::from_secs(60));
        let mut root = user();
        root.name = "root".into();
        let genuine = ours.issue(&user()).token;
        let forged = theirs.issue(&root).token;
        let signature = genuine.rsplit('.').next().unwrap();
        let (header_and_payload, _) = forged.rsplit_once('.').unwrap();
        assert!(
            ours.verify(&format!("{header_and_payload}.{signature}"))
                .is_none()
        );
    }

    #[test]
    fn a_sealed_value_opens_for_its_audience_alone_and_is_never_a_session() {
        let tokens = Tokens::new(b"s", Duration::from_secs(60));
        let sealed = tokens.seal(&("state", 7), "linkops:sso", Duration::from_secs(60));
        assert_eq!(
            tokens.open::<(String, u32)>(&sealed, "linkops:sso"),
            Some(("state".into(), 7))
        );
        assert_eq!(tokens.open::<(String, u32)>(&sealed, "other"), None);
        assert!(
            tokens.verify(&sealed).is_none(),
            "a sealed value passed for a session"
        );
        let session = tokens.issue(&user()).token;
        assert_eq!(
            tokens
                .open::<Claims>(&session, "linkops:sso")
                .map(|c| c.sub),
            None
        );
        let other = Tokens::new(b"t", Duration::from_secs(60));
        assert_eq!(other.open::<(String, u32)>(&sealed, "linkops:sso"), None);
    }

    #[test]
    fn a_session_lasts_the_shorter_of_what_is_asked_and_the_daemon_s_own() {
        let tokens = Tokens::new(b"s", Duration::from_secs(3600));
        let lasting = |asked| {
            let claims = tokens
                .verify(&tokens.issue_for(&user(), asked, None).token)
                .unwrap();
            claims.exp - claims.iat
        };
        assert_eq!(lasting(Duration::from_secs(600)), 600);
        assert_eq!(lasting(Duration::from_secs(7200)), 3600);
    }
}
