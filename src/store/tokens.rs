//! API tokens: made and revoked with their audit entries in one
//! transaction, read back to check a request, their last use noted.

use super::audit::{self, Actor, AuditAction};
use super::engine::{Read, Write};
use super::records::{ApiToken, Outcome};
use super::schema::API_TOKENS;
use super::{Error, Result, Store};

/// Tokens one user (or all service tokens together) may hold at once.
pub const MAX_TOKENS_PER_OWNER: usize = 100;

impl Store {
    /// Records a new token, audited as `by`'s; refused when its owner has a
    /// token of that name, or [`MAX_TOKENS_PER_OWNER`] already.
    pub fn create_api_token(&self, token: &ApiToken, by: &Actor) -> Result<()> {
        let mut tx = self.write()?;
        let mut held = 0;
        for entry in tx.all(API_TOKENS, false) {
            let (_, other) = entry?;
            if other.owner == token.owner {
                held += 1;
                if other.name == token.name {
                    return Err(Error::TokenExists(token.name.clone()));
                }
            }
        }
        if held >= MAX_TOKENS_PER_OWNER {
            return Err(Error::TooManyTokens(MAX_TOKENS_PER_OWNER));
        }
        tx.insert(API_TOKENS, token.id.as_str(), token)?;
        let detail = format!(
            "{} ({}), {}{}, expires {}",
            token.name,
            token
                .owner
                .as_deref()
                .map_or("a service token".to_owned(), |owner| format!("for {owner}")),
            token.grant.role,
            scope_words(&token.grant.scope),
            jiff::Timestamp::from_millisecond(token.expires_at_ms).unwrap_or_default()
        );
        audit::append(
            &mut tx,
            by,
            AuditAction::TokenCreate,
            &token.id,
            Outcome::Success,
            Some(detail),
        )?;
        tx.commit()
    }

    pub fn api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        self.read_one(API_TOKENS, id)
    }

    /// Every token, by id.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>> {
        self.read_all(API_TOKENS)
    }

    /// Revokes a token, audited as `by`'s: it works no more.
    pub fn revoke_api_token(&self, id: &str, by: &Actor) -> Result<ApiToken> {
        let mut tx = self.write()?;
        let token = tx
            .get(API_TOKENS, id)?
            .ok_or_else(|| Error::NoSuchToken(id.to_owned()))?;
        tx.remove(API_TOKENS, id)?;
        audit::append(
            &mut tx,
            by,
            AuditAction::TokenRevoke,
            id,
            Outcome::Success,
            Some(token.name.clone()),
        )?;
        tx.commit()?;
        self.user_changed();
        Ok(token)
    }

    /// Notes a token's last use (not audited: the actions it took are).
    pub fn note_api_token_use(&self, id: &str, at_ms: i64) -> Result<()> {
        let mut tx = self.write()?;
        if let Some(mut token) = tx.get(API_TOKENS, id)? {
            token.last_used_at_ms = Some(at_ms);
            tx.insert(API_TOKENS, id, &token)?;
        }
        tx.commit()
    }
}

/// `, tags web, scripts deploy` (nothing for the whole fleet and every script).
fn scope_words(scope: &linkops_reconcilers::grant::Scope) -> String {
    let mut words = String::new();
    for (what, items) in [
        ("tags", &scope.tags),
        ("machines", &scope.machines),
        ("scripts", &scope.scripts),
    ] {
        if !items.is_empty() {
            words.push_str(&format!(", {what} {}", items.join(" ")));
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::grant::Grant;
    use linkops_reconcilers::role::Role;

    use super::*;
    use crate::store::testing;

    fn token(id: &str, name: &str, owner: Option<&str>) -> ApiToken {
        ApiToken {
            id: id.into(),
            name: name.into(),
            owner: owner.map(str::to_owned),
            grant: Grant::fleet(Role::Viewer),
            secret_sha256: "00".into(),
            created_by: "ada".into(),
            created_at_ms: 1,
            expires_at_ms: 2,
            last_used_at_ms: None,
        }
    }

    #[test]
    fn tokens_are_made_once_per_name_revoked_and_go_with_their_owner() {
        for backing in testing::backings() {
            let store = backing.open();
            let ada = Actor::user("ada");
            store.create_user("vic", None, "h", &ada).unwrap();
            store
                .create_api_token(&token("a", "ci", Some("vic")), &ada)
                .unwrap();
            let taken = store.create_api_token(&token("b", "ci", Some("vic")), &ada);
            assert!(matches!(taken, Err(Error::TokenExists(_))), "{taken:?}");
            // Another owner (here: the service tokens) may use the name.
            store
                .create_api_token(&token("c", "ci", None), &ada)
                .unwrap();
            store.note_api_token_use("a", 42).unwrap();
            assert_eq!(
                store.api_token("a").unwrap().unwrap().last_used_at_ms,
                Some(42)
            );
            assert_eq!(store.revoke_api_token("c", &ada).unwrap().name, "ci");
            assert!(store.api_token("c").unwrap().is_none());
            assert!(matches!(
                store.revoke_api_token("c", &ada),
                Err(Error::NoSuchToken(_))
            ));
            store.delete_user("vic", &ada).unwrap();
            assert!(store.api_tokens().unwrap().is_empty());
            let actions: Vec<String> = (store.audit_entries(0, 100).unwrap().into_iter())
                .map(|entry| entry.action)
                .collect();
            assert!(actions.contains(&"token.create".to_owned()), "{actions:?}");
            assert!(actions.contains(&"token.revoke".to_owned()), "{actions:?}");
        }
    }
}
