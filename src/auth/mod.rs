//! Authentication: password logins with persisted lockout, and signed session tokens.
//!
//! [`Auth`] is the service the API calls. Password hashing is argon2id and
//! deliberately slow, so its callers run it on the blocking pool.

pub mod lockout;
pub mod password;
mod token;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::store::{self, Outcome, Role, Store, User};
pub use lockout::LockoutPolicy;
use token::Tokens;
pub use token::{Claims, IssuedToken};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wrong user name or password; which one is never said.
    #[error("invalid user name or password")]
    InvalidCredentials,
    #[error("account locked after repeated failed logins; try again in {} s", retry_after.as_secs().max(1))]
    Locked { retry_after: Duration },
    #[error("invalid or expired token")]
    InvalidToken,
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("invalid user name {0:?}: use letters, digits, '.', '_' or '-' (1-64 characters)")]
    InvalidName(String),
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    pub token: IssuedToken,
    pub user: User,
}

/// The authentication service: verifies logins, issues and checks tokens.
#[derive(Clone)]
pub struct Auth {
    store: Store,
    tokens: Tokens,
    lockout: LockoutPolicy,
}

impl Auth {
    pub fn new(
        store: Store,
        secret: &SecretString,
        token_lifetime: Duration,
        lockout: LockoutPolicy,
    ) -> Auth {
        Auth {
            store,
            tokens: Tokens::new(secret.expose_secret().as_bytes(), token_lifetime),
            lockout,
        }
    }

    /// Checks a login attempt and records its outcome (failure counter, audit log).
    ///
    /// Runs on the blocking pool: argon2 is slow on purpose and each outcome
    /// is a durable store commit.
    pub async fn login(&self, name: &str, password: &str) -> Result<Login, Error> {
        let (auth, name, password) = (self.clone(), name.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || auth.login_blocking(&name, &password))
            .await
            .map_err(|e| Error::Hash(e.to_string()))?
    }

    /// A locked name is refused before the password is looked at, so a locked
    /// account does not reveal whether a guess was right.
    fn login_blocking(&self, name: &str, password: &str) -> Result<Login, Error> {
        let now = store::now_ms();
        if let Some(retry_after) = self.lockout.locked(self.store.login_failures(name)?, now) {
            self.store.audit(
                name,
                "auth.login",
                name,
                Outcome::Denied,
                Some("account locked".into()),
            )?;
            return Err(Error::Locked { retry_after });
        }

        let user = self.store.user(name)?;
        // Unknown names are checked against a dummy hash so that they take as
        // long as known ones.
        let valid = password::verify(password, user.as_ref().map(|u| u.password_hash.as_str()));
        match user {
            Some(user) if valid => {
                self.store.update_login_failures(name, |_| None)?;
                self.store
                    .audit(name, "auth.login", name, Outcome::Success, None)?;
                let token = self.tokens.issue(&user);
                Ok(Login { token, user })
            }
            _ => {
                let policy = self.lockout;
                let failures = self.store.update_login_failures(name, |current| {
                    Some(policy.record_failure(current, now))
                })?;
                let locked = failures.and_then(|f| f.locked_until_ms).is_some();
                let detail = if locked {
                    "wrong credentials; account now locked"
                } else {
                    "wrong credentials"
                };
                self.store.audit(
                    name,
                    "auth.login",
                    name,
                    Outcome::Failure,
                    Some(detail.into()),
                )?;
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// Resolves a bearer token to its user, as the store knows the user now.
    ///
    /// The role comes from the store, not the token, so a demotion or a
    /// deleted user takes effect at once; a password change revokes older tokens.
    pub fn authenticate(&self, token: &str) -> Result<User, Error> {
        let claims = self.tokens.verify(token).ok_or(Error::InvalidToken)?;
        let user = self.store.user(&claims.sub)?.ok_or(Error::InvalidToken)?;
        if claims.iat_ms < user.password_changed_at_ms {
            return Err(Error::InvalidToken);
        }
        Ok(user)
    }
}

/// What the caller of [`bootstrap_admin`] must show the operator once.
pub struct GeneratedPassword {
    pub user: String,
    pub password: SecretString,
}

/// Whether a user name is acceptable: 1–64 letters, digits, `.`, `_` or `-`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Creates a user with a generated password, audited as done by `actor`.
/// Blocking (argon2).
pub fn create_user(
    store: &Store,
    actor: &str,
    name: &str,
    role: Role,
) -> Result<GeneratedPassword, Error> {
    if !valid_user_name(name) {
        return Err(Error::InvalidName(name.to_owned()));
    }
    let password = password::generate();
    store.create_user(name, role, &password::hash(&password)?)?;
    store.audit(
        actor,
        "user.create",
        name,
        Outcome::Success,
        Some(format!("role {role}")),
    )?;
    Ok(GeneratedPassword {
        user: name.to_owned(),
        password: password.into(),
    })
}

/// Replaces a user's password with a generated one (older tokens stop
/// working, a lockout is lifted), audited as done by `actor`. Blocking (argon2).
pub fn reset_password(store: &Store, actor: &str, name: &str) -> Result<GeneratedPassword, Error> {
    let password = password::generate();
    store.set_password(name, &password::hash(&password)?)?;
    store.audit(actor, "user.passwd", name, Outcome::Success, None)?;
    Ok(GeneratedPassword {
        user: name.to_owned(),
        password: password.into(),
    })
}

/// Changes a user's role, audited as done by `actor` with the old and new role.
/// A refusal (the last admin) is audited too.
pub fn change_role(store: &Store, actor: &str, name: &str, role: Role) -> Result<User, Error> {
    let changed = store.set_role(name, role);
    let detail = |(before, user): &(Role, User)| format!("{before} -> {}", user.role);
    audit_user_change(store, actor, "user.role", name, &changed, detail)?;
    Ok(changed?.1)
}

/// Deletes a user, audited as done by `actor`; their tokens stop working at once.
pub fn delete_user(store: &Store, actor: &str, name: &str) -> Result<User, Error> {
    let deleted = store.delete_user(name);
    let detail = |user: &User| format!("was {}", user.role);
    audit_user_change(store, actor, "user.delete", name, &deleted, detail)?;
    Ok(deleted?)
}

/// Audits a role change or deletion: its detail on success, the reason when refused.
fn audit_user_change<T>(
    store: &Store,
    actor: &str,
    action: &str,
    name: &str,
    result: &Result<T, store::Error>,
    detail: impl FnOnce(&T) -> String,
) -> Result<(), Error> {
    let (outcome, detail) = match result {
        Ok(changed) => (Outcome::Success, detail(changed)),
        Err(error @ store::Error::LastAdmin(_)) => (Outcome::Denied, error.to_string()),
        // Nothing changed and nothing was there to change.
        Err(_) => return Ok(()),
    };
    store.audit(actor, action, name, outcome, Some(detail))?;
    Ok(())
}

/// Creates `admin` with a random password when the store has no users.
///
/// Returns the password so it can be shown once; only its hash is stored.
/// Blocking (argon2): call from `spawn_blocking` or outside the runtime.
pub fn bootstrap_admin(store: &Store) -> Result<Option<GeneratedPassword>, Error> {
    if !store.users()?.is_empty() {
        return Ok(None);
    }
    let password = password::generate();
    let hash = password::hash(&password)?;
    match store.create_first_user("admin", Role::Admin, &hash)? {
        Some(user) => {
            store.audit(
                "system",
                "user.create",
                &user.name,
                Outcome::Success,
                Some("first admin, generated password".into()),
            )?;
            Ok(Some(GeneratedPassword {
                user: user.name,
                password: password.into(),
            }))
        }
        // Another process created the first user between our two reads.
        None => Ok(None),
    }
}
