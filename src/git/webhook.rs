//! Push webhooks from Forgejo, Gitea and GitHub: signature check and payload reading.
//!
//! The webhook only asks for a sync; what is applied is decided by reading
//! the repository, never by trusting the payload.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no signature header (X-Forgejo-Signature, X-Gitea-Signature or X-Hub-Signature-256)")]
    MissingSignature,
    #[error("the signature does not match the body and the configured secret")]
    BadSignature,
    #[error("no delivery id header (X-Forgejo-Delivery, X-Gitea-Delivery or X-GitHub-Delivery)")]
    MissingDelivery,
    #[error("the delivery id is empty or longer than {MAX_DELIVERY_ID} characters")]
    BadDelivery,
}

/// Checks the HMAC-SHA256 signature of `body` in constant time.
///
/// Forgejo and Gitea send lowercase hex; GitHub sends `sha256=<hex>`.
pub fn verify_signature(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), Rejection> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let hex_signature = header("x-forgejo-signature")
        .or_else(|| header("x-gitea-signature"))
        .or_else(|| header("x-hub-signature-256").map(|v| v.strip_prefix("sha256=").unwrap_or("")))
        .ok_or(Rejection::MissingSignature)?;
    let signature = hex::decode(hex_signature.trim()).map_err(|_| Rejection::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| Rejection::BadSignature)
}

/// Longest delivery id kept (forges send a UUID).
pub const MAX_DELIVERY_ID: usize = 128;

/// The delivery id, unique per delivery (re-deliveries from the forge's UI get new ones).
pub fn delivery_id(headers: &HeaderMap) -> Result<String, Rejection> {
    let id = [
        "x-forgejo-delivery",
        "x-gitea-delivery",
        "x-github-delivery",
    ]
    .iter()
    .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
    .ok_or(Rejection::MissingDelivery)?;
    if id.is_empty() || id.len() > MAX_DELIVERY_ID {
        return Err(Rejection::BadDelivery);
    }
    Ok(id.to_owned())
}

/// The event name (`push`, `ping`, …); `push` when the forge does not say.
pub fn event(headers: &HeaderMap) -> String {
    ["x-forgejo-event", "x-gitea-event", "x-github-event"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .unwrap_or("push")
        .to_owned()
}

/// The branch a push payload names (`ref: refs/heads/<branch>`).
pub fn pushed_branch(payload: &serde_json::Value) -> Option<&str> {
    payload.get("ref")?.as_str()?.strip_prefix("refs/heads/")
}

/// Whether a push deleted its branch (Forgejo, Gitea and GitHub send
/// `deleted: true` and an `after` of zeros).
pub fn deletes_branch(payload: &serde_json::Value) -> bool {
    payload.get("deleted").and_then(|d| d.as_bool()) == Some(true)
        || pushed_head(payload)
            .is_some_and(|head| !head.is_empty() && head.bytes().all(|b| b == b'0'))
}

/// The commit a push payload says the branch now points at (`after`).
pub fn pushed_head(payload: &serde_json::Value) -> Option<&str> {
    payload.get("after")?.as_str()
}

/// The signature a forge would send for `body` (hex): for tests and tools.
pub fn sign(body: &[u8], secret: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether a pushed branch's name is one a fetch may name: 1–200 of
/// `A-Za-z0-9._/-`, no `..`, no leading `-` or `/`, no trailing `/` or `.lock`
/// (it becomes part of a refspec; `:`, `*` or a space would change its meaning).
pub fn is_branch_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !name.contains("..")
        && !name.contains("//")
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
}

#[cfg(test)]
mod tests {
    #[test]
    fn branch_names_that_could_change_a_refspec_are_refused() {
        for good in ["feature", "feature/login-form", "release-1.2", "a_b"] {
            assert!(super::is_branch_name(good), "{good}");
        }
        for bad in [
            "", "a:b", "a*", "a b", "../main", "-x", "/x", "x/", "x.lock", "a..b", "a//b", ".x",
        ] {
            assert!(!super::is_branch_name(bad), "{bad}");
        }
    }

    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

    #[test]
    fn forgejo_and_github_signatures_verify() {
        let signature = sign(BODY, b"s3cret");
        assert_eq!(
            verify_signature(
                &headers(&[("x-forgejo-signature", &signature)]),
                BODY,
                b"s3cret"
            ),
            Ok(())
        );
        assert_eq!(
            verify_signature(
                &headers(&[("x-gitea-signature", &signature)]),
                BODY,
                b"s3cret"
            ),
            Ok(())
        );
        let github = format!("sha256={signature}");
        assert_eq!(
            verify_signature(
                &headers(&[("x-hub-signature-256", &github)]),
                BODY,
                b"s3cret"
            ),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_tampered_body_and_garbage_are_refused() {
        let signature = sign(BODY, b"s3cret");
        let forgejo = headers(&[("x-forgejo-signature", &signature)]);
        assert_eq!(
            verify_signature(&forgejo, BODY, b"other"),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify_signature(&forgejo, br#"{"ref":"refs/heads/evil"}"#, b"s3cret"),
            Err(Rejection::BadSignature)
        );
        let garbage = headers(&[("x-forgejo-signature", "zz")]);
        assert_eq!(
            verify_signature(&garbage, BODY, b"s3cret"),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify_signature(&HeaderMap::new(), BODY, b"s3cret"),
            Err(Rejection::MissingSignature)
        );
    }

    #[test]
    fn payload_and_headers_are_read() {
        let payload: serde_json::Value = serde_json::from_slice(BODY).unwrap();
        assert_eq!(pushed_branch(&payload), Some("main"));
        assert_eq!(
            delivery_id(&headers(&[("x-github-delivery", "abc")])).unwrap(),
            "abc"
        );
        assert_eq!(event(&headers(&[("x-gitea-event", "ping")])), "ping");
    }
}
