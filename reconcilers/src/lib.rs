//! The LinkOps domain model and the pure decisions made on it.
//!
//! This crate owns the vocabulary of the fleet — machines as the inventory
//! describes them (desired state), what LinkOps has seen of them (observed
//! state) — and the rules that compare the two. It performs no I/O and has no
//! async runtime, so every rule is a plain function tested in milliseconds.
//! The daemon (`src/`) reads Git, talks SSH and writes the store; it asks this
//! crate what the readings mean.

pub mod approval;
pub mod ask;
pub mod certificate;
pub mod condition;
pub mod desired;
pub mod enrollment;
pub mod facts;
#[cfg(test)]
mod fixtures;
pub mod grant;
pub mod inventory;
pub mod machine;
pub mod membership;
pub mod operation;
pub mod outbox;
pub mod picture;
pub mod plan;
pub mod retention;
pub mod role;
pub mod rollout;
pub mod run;
pub mod schedule;
pub mod script;
pub mod secret;
pub mod state;
pub mod suspension;
pub mod terminal;
pub mod trigger;
pub mod trust;

/// The first `bytes` bytes of `content`'s SHA-256, in hex: the short
/// digests records carry (a state's content, a schedule's, an approval's).
pub(crate) fn short_digest(content: &[u8], bytes: usize) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(content);
    hash.iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How a `std::time::Duration` appears in JSON (for the OpenAPI description).
#[derive(utoipa::ToSchema)]
#[schema(as = Duration)]
pub struct DurationSchema {
    pub secs: u64,
    pub nanos: u32,
}
