//! Push webhooks from Forgejo, Gitea and GitHub: signature check and payload reading.
//!
//! The webhook only asks for a sync; what is applied is decided by reading
//! the repository, never by trusting the payload.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use linkops_reconcilers::plan::BranchWork;
use sha2::{Digest, Sha256};

use crate::store::{self, DeliveryClaim, Store};

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

/// A signed delivery, by its id and its body's digest: each is taken once,
/// so that a replayed delivery (same id, or same body) does nothing.
pub struct Delivery {
    pub id: String,
    /// SHA-256 of the body, hex.
    pub digest: String,
}

impl Delivery {
    /// The delivery `headers` name, carrying `body`.
    pub fn new(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, Rejection> {
        Ok(Delivery {
            id: delivery_id(headers)?,
            digest: hex::encode(Sha256::digest(body)),
        })
    }

    /// Takes the delivery, unless it (or its body) was taken before.
    pub async fn claim(&self, store: &Store) -> Result<DeliveryClaim, store::Error> {
        let (id, digest) = (self.id.clone(), self.digest.clone());
        store
            .run(move |store| store.claim_webhook_delivery(&id, &digest))
            .await
    }

    /// Gives back a delivery that was not acted on: the forge's redelivery
    /// must not count as a replay.
    pub async fn release(self, store: &Store) -> Result<(), store::Error> {
        store
            .run(move |store| store.release_webhook_delivery(&self.id, &self.digest))
            .await
    }
}

/// What a signed, first-seen delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// A push to the followed branch: sync.
    Sync,
    /// A push of the revision already in force: nothing changes.
    Unchanged(String),
    /// A push to (or deletion of) another branch that is planned.
    Plan { branch: String, work: BranchWork },
    /// Nothing to do; the text says what the delivery was.
    Ignored(String),
}

/// The branches a delivery is triaged against.
pub struct Followed<'a> {
    /// The branch the fleet follows.
    pub branch: &'a str,
    /// The revision in force, if any.
    pub applied: Option<&'a str>,
    /// Whether pushes to a branch are planned (`[git] plan_branches`, with a forge to post on).
    pub planned: &'a dyn Fn(&str) -> bool,
}

/// Triages a delivery by its `event` and body; an error when a push's body is not JSON.
pub fn classify(
    event: &str,
    body: &[u8],
    followed: &Followed,
) -> Result<Triage, serde_json::Error> {
    if event != "push" {
        return Ok(Triage::Ignored(format!(
            "{event} event; only pushes trigger syncs"
        )));
    }
    let payload: serde_json::Value = serde_json::from_slice(body)?;
    Ok(match pushed_branch(&payload) {
        Some(pushed) if pushed == followed.branch => match followed.applied {
            Some(revision) if pushed_head(&payload) == Some(revision) => {
                Triage::Unchanged(revision.to_owned())
            }
            _ => Triage::Sync,
        },
        Some(pushed) if (followed.planned)(pushed) && is_branch_name(pushed) => Triage::Plan {
            branch: pushed.to_owned(),
            work: match deletes_branch(&payload) {
                true => BranchWork::Forget,
                false => BranchWork::Plan,
            },
        },
        other => Triage::Ignored(format!(
            "push to {}, not to {}",
            other.unwrap_or("(no branch)"),
            followed.branch
        )),
    })
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
    fn deliveries_are_triaged_by_event_branch_and_head() {
        let planned = |branch: &str| branch.starts_with("feature/");
        let followed = Followed {
            branch: "main",
            applied: Some("abc"),
            planned: &planned,
        };
        let push = |body: &str| classify("push", body.as_bytes(), &followed).unwrap();
        let table = [
            (r#"{"ref":"refs/heads/main","after":"def"}"#, Triage::Sync),
            (
                r#"{"ref":"refs/heads/main","after":"abc"}"#,
                Triage::Unchanged("abc".into()),
            ),
            (
                r#"{"ref":"refs/heads/feature/x","after":"def"}"#,
                Triage::Plan {
                    branch: "feature/x".into(),
                    work: BranchWork::Plan,
                },
            ),
            (
                r#"{"ref":"refs/heads/feature/x","deleted":true,"after":"0000"}"#,
                Triage::Plan {
                    branch: "feature/x".into(),
                    work: BranchWork::Forget,
                },
            ),
            (
                r#"{"ref":"refs/heads/feature/a:b"}"#,
                Triage::Ignored("push to feature/a:b, not to main".into()),
            ),
            (
                r#"{"ref":"refs/heads/other"}"#,
                Triage::Ignored("push to other, not to main".into()),
            ),
            (
                r#"{"ref":"refs/tags/v1"}"#,
                Triage::Ignored("push to (no branch), not to main".into()),
            ),
        ];
        for (body, expected) in table {
            assert_eq!(push(body), expected, "{body}");
        }
        assert_eq!(
            classify("ping", b"not json", &followed).unwrap(),
            Triage::Ignored("ping event; only pushes trigger syncs".into())
        );
        assert!(classify("push", b"not json", &followed).is_err());
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
