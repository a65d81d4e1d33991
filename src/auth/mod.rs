//! Authentication: password logins with persisted lockout, signed session
//! tokens, and the grants a session's user holds.
//!
//! [`Auth`] is the service the API calls. Password hashing is argon2id and
//! deliberately slow, so its callers run it on the blocking pool.

pub mod api_token;
pub mod lockout;
pub mod password;
pub mod second_factor;
pub mod sso;
mod token;
mod unknown;

pub use token::signing_key_check;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{self, Grant, Held};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, watch};

use crate::config::PasswordSignIn;
use crate::store::{self, Actor, AuditAction, LoginFailures, Outcome, Store, User};
use linkops_reconcilers::role::Role;
pub use lockout::LockoutPolicy;
use token::Tokens;
pub use token::{Claims, IssuedToken};
use unknown::UnknownNames;

/// Longest password a login hashes; a longer one cannot be an account's (generated ones are 20).
pub const MAX_PASSWORD_BYTES: usize = 1024;

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
    #[error(
        "password sign-in is for local admin accounts alone here ([auth] password_sign_in = \"admins\"): sign in with your identity provider"
    )]
    PasswordSignInOff,
    #[error(transparent)]
    Sso(#[from] sso::Error),
    #[error(transparent)]
    SecondFactorUnreadable(#[from] second_factor::Error),
    /// A second factor refused: the message says why and what to do.
    #[error("{0}")]
    SecondFactor(String),
    #[error(
        "too many logins at once ({queued} waiting for a password check, the limit set by [auth] login_queue); try again in {} s", retry_after.as_secs().max(1)
    )]
    Busy {
        queued: usize,
        retry_after: Duration,
    },
}

/// How the login path is bounded: see [`Auth::new`].
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub lockout: LockoutPolicy,
    /// Password hashes at once.
    pub concurrent_hashes: usize,
    /// Logins waiting for a hash before the next is refused.
    pub queue: usize,
    /// Unknown names whose failures are remembered.
    pub unknown_names: usize,
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
    /// One permit per password hash in progress: argon2 takes a core and ~19 MiB.
    hashing: Arc<Semaphore>,
    /// Logins waiting for a permit, and how many may.
    waiting: Arc<AtomicUsize>,
    queue: usize,
    unknown: Arc<Mutex<UnknownNames>>,
    /// The identity providers people sign in with.
    sso: sso::Sso,
    /// Who may still sign in with a password.
    passwords: PasswordSignIn,
    /// When a malformed login was last audited, and how many came since: they
    /// cost no hash, so their audit entries are rate-limited instead.
    malformed: Arc<Mutex<(Option<std::time::Instant>, u64)>>,
}

/// What a sign-in in progress is sealed for.
const SSO_AUDIENCE: &str = "linkops:sso-pending";

/// Malformed logins are audited at most once per this.
const MALFORMED_AUDIT_INTERVAL: Duration = Duration::from_secs(1);

/// Counts a login as waiting for a hash until it has one (or gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Auth {
    pub fn new(
        store: Store,
        secret: &SecretString,
        token_lifetime: Duration,
        limits: LoginLimits,
    ) -> Auth {
        let window_ms = i64::try_from(limits.lockout.duration.as_millis()).unwrap_or(i64::MAX);
        Auth {
            store,
            tokens: Tokens::new(secret.expose_secret().as_bytes(), token_lifetime),
            lockout: limits.lockout,
            hashing: Arc::new(Semaphore::new(limits.concurrent_hashes.max(1))),
            waiting: Arc::default(),
            queue: limits.queue,
            unknown: Arc::new(Mutex::new(UnknownNames::new(
                limits.unknown_names,
                window_ms,
            ))),
            sso: sso::Sso::default(),
            passwords: PasswordSignIn::Everyone,
            malformed: Arc::default(),
        }
    }

    /// This service, people also signing in at `sso`'s providers, and with a
    /// password as `passwords` says.
    pub fn signing_in(self, sso: sso::Sso, passwords: PasswordSignIn) -> Auth {
        Auth {
            sso,
            passwords,
            ..self
        }
    }

    /// The identity providers.
    pub fn sso(&self) -> &sso::Sso {
        &self.sso
    }

    /// Starts a sign-in at `provider`: where to send the browser, and what it
    /// carries back (sealed, good for [`sso::SIGN_IN_WINDOW`]).
    pub async fn sso_start(
        &self,
        provider: &str,
        back: sso::Back,
        step_up: bool,
    ) -> Result<(String, String), Error> {
        let (url, pending) = self.sso.start(provider, back, step_up).await?;
        let sealed = self
            .tokens
            .seal(&pending, SSO_AUDIENCE, sso::SIGN_IN_WINDOW);
        Ok((url, sealed))
    }

    /// What a sign-in in progress will take the person back to, if `sealed` is one of ours.
    pub fn sso_pending(&self, sealed: &str) -> Option<sso::Pending> {
        self.tokens.open(sealed, SSO_AUDIENCE)
    }

    /// Finishes a sign-in the provider sent back: the person's account, with
    /// the groups the provider says now, and a session lasting at most the
    /// provider's `session_lifetime`. Refusals after the state checked out
    /// are audited with the provider's name.
    pub async fn sso_finish(
        &self,
        pending: sso::Pending,
        code: &str,
        state: &str,
    ) -> Result<Login, Error> {
        let provider = pending.provider.clone();
        let lifetime = self.sso.session_lifetime(&provider)?;
        let identity = match self.sso.finish(pending, code, state).await {
            Ok(identity) => identity,
            Err(sso::Error::StateMismatch) => return Err(sso::Error::StateMismatch.into()),
            Err(error) => {
                let detail = format!("provider {provider}: {error}");
                (self.store)
                    .run(move |store| {
                        let failed = Outcome::Failure;
                        store.audit(
                            &Actor::System,
                            AuditAction::AuthSso,
                            &provider,
                            failed,
                            Some(detail),
                        )
                    })
                    .await?;
                return Err(error.into());
            }
        };
        let again = identity.signed_in_again_at_ms;
        let sso = store::SsoIdentity {
            provider: identity.provider,
            subject: identity.subject,
            groups: identity.groups,
            signed_in_at_ms: store::now_ms(),
        };
        let user = (self.store)
            .run(move |store| store.sign_in_sso(&identity.username, sso))
            .await?;
        let token = self.tokens.issue_for(&user, lifetime, again);
        Ok(Login { token, user })
    }

    /// Checks a login attempt and records its outcome (failure counter, audit log).
    ///
    /// A name that cannot be an account's, or an oversized password, is refused
    /// before any hashing or counting. Otherwise the attempt waits for one of the
    /// bounded hash slots (refused with [`Error::Busy`] when too many wait), then
    /// runs on the blocking pool: argon2 is slow on purpose and each outcome is
    /// a durable store commit.
    pub async fn login(&self, name: &str, password: &str) -> Result<Login, Error> {
        if !valid_user_name(name) || password.len() > MAX_PASSWORD_BYTES {
            self.refuse_malformed(name, password.len()).await;
            return Err(Error::InvalidCredentials);
        }
        let permit = {
            let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.waiting);
            if queued >= self.queue {
                return Err(Error::Busy {
                    queued,
                    retry_after: Duration::from_secs(1),
                });
            }
            self.hashing
                .clone()
                .acquire_owned()
                .await
                .expect("the hashing semaphore is never closed")
        };
        let (auth, name, password) = (self.clone(), name.to_owned(), password.to_owned());
        crate::blocking::run(move || {
            let _permit = permit;
            auth.login_blocking(&name, &password)
        })
        .await
        .map_err(|e| Error::Hash(e.to_string()))?
    }

    /// Audits a login whose name or password cannot be an account's, bounded:
    /// the name is cut, its length said, and at most one entry a second (with
    /// the count of those not written since).
    async fn refuse_malformed(&self, name: &str, password_bytes: usize) {
        let unwritten = {
            let mut last = self.malformed.lock().expect("never poisoned");
            if last
                .0
                .is_some_and(|at| at.elapsed() < MALFORMED_AUDIT_INTERVAL)
            {
                last.1 += 1;
                return;
            }
            let unwritten = last.1;
            *last = (Some(std::time::Instant::now()), 0);
            unwritten
        };
        let shown: String = name.chars().take(64).collect();
        let detail = format!(
            "refused unchecked: a user name of {} bytes, a password of {password_bytes} bytes (names: 1-64 of letters, digits, '.', '_', '-'; passwords: at most {MAX_PASSWORD_BYTES} bytes); {unwritten} more like it not audited before this one",
            name.len()
        );
        let store = self.store.clone();
        let written = crate::blocking::run(move || {
            store.audit(
                &Actor::user(&shown),
                AuditAction::AuthLogin,
                &shown,
                Outcome::Failure,
                Some(detail),
            )
        })
        .await;
        if let Ok(Err(error)) = written {
            tracing::warn!(%error, "cannot audit a refused login");
        }
    }

    /// Whether `user` may sign in with a password ([`PasswordSignIn`]).
    fn may_use_a_password(&self, user: &User) -> bool {
        match self.passwords {
            PasswordSignIn::Everyone => true,
            PasswordSignIn::Admins => user.role == Some(Role::Admin),
        }
    }

    /// A name's failure counters: the store's for accounts, memory's for other names.
    fn failures(&self, name: &str, known: bool) -> Result<Option<LoginFailures>, Error> {
        Ok(if known {
            self.store.login_failures(name)?
        } else {
            self.unknown.lock().expect("never poisoned").get(name)
        })
    }

    /// A locked name is refused before the password is looked at, so a locked
    /// account does not reveal whether a guess was right.
    fn login_blocking(&self, name: &str, password: &str) -> Result<Login, Error> {
        let now = store::now_ms();
        let user = self.store.user(name)?;
        if let Some(retry_after) = self
            .lockout
            .locked(self.failures(name, user.is_some())?, now)
        {
            self.store.audit(
                &Actor::user(name),
                AuditAction::AuthLogin,
                name,
                Outcome::Denied,
                Some("account locked".into()),
            )?;
            return Err(Error::Locked { retry_after });
        }

        // Unknown names are checked against a dummy hash so that they take as
        // long as known ones.
        let valid = password::verify(password, user.as_ref().map(|u| u.password_hash.as_str()));
        match user {
            Some(user) if valid && (user.disabled || !self.may_use_a_password(&user)) => {
                let detail = match user.disabled {
                    true => "right password, but the user is disabled",
                    false => "right password, but password sign-in is for admins alone",
                };
                self.store.audit(
                    &Actor::user(name),
                    AuditAction::AuthLogin,
                    name,
                    Outcome::Denied,
                    Some(detail.into()),
                )?;
                match user.disabled {
                    true => Err(store::Error::Disabled(user.name).into()),
                    false => Err(Error::PasswordSignInOff),
                }
            }
            Some(user) if valid => {
                self.store.update_login_failures(
                    name,
                    |_| None,
                    |_| login_audit(name, Attempt::Succeeded),
                )?;
                let token = self.tokens.issue(&user);
                Ok(Login { token, user })
            }
            Some(_) => {
                let policy = self.lockout;
                // The count and its audit in one transaction.
                self.store.update_login_failures(
                    name,
                    |current| Some(policy.record_failure(current, now)),
                    |failures| login_audit(name, Attempt::WrongCredentials(failures)),
                )?;
                Err(Error::InvalidCredentials)
            }
            None => {
                let failures = {
                    let mut unknown = self.unknown.lock().expect("never poisoned");
                    let failures = self.lockout.record_failure(unknown.get(name), now);
                    unknown.put(name, failures, now);
                    failures
                };
                // Counted in memory: the audit entry is the only write.
                let audit = login_audit(name, Attempt::WrongCredentials(Some(&failures)));
                self.store.audit(
                    &audit.actor,
                    audit.action,
                    &audit.target,
                    audit.outcome,
                    audit.detail,
                )?;
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// Resolves a bearer token — a session's, or an API token — to who it
    /// acts for, as the store knows them now, and the session a long-lived
    /// connection re-checks ([`Auth::lost`]).
    ///
    /// The role comes from the store, not the token, so a demotion or a
    /// deleted user takes effect at once; a password change revokes older
    /// sessions; a revoked or expired API token opens nothing.
    pub async fn authenticate(&self, presented: &str) -> Result<(Signed, Session), Error> {
        let session = match api_token::parse(presented) {
            Some((id, secret)) => {
                let record = self.api_token(id).await?.ok_or(Error::InvalidToken)?;
                if !api_token::opens(&record, secret) {
                    return Err(Error::InvalidToken);
                }
                self.note_use(&record);
                Session {
                    user: record.owner.clone().unwrap_or_default(),
                    issued_at_ms: record.created_at_ms,
                    expires_at_s: record.expires_at_ms / 1000,
                    second_factor_at_ms: None,
                    api_token: Some(record.id),
                }
            }
            None => {
                let claims = self.tokens.verify(presented).ok_or(Error::InvalidToken)?;
                Session {
                    user: claims.sub,
                    issued_at_ms: claims.iat_ms,
                    expires_at_s: claims.exp,
                    second_factor_at_ms: claims.second_factor_at_ms,
                    api_token: None,
                }
            }
        };
        let signed = self.current(&session).await?.ok_or(Error::InvalidToken)?;
        Ok((signed, session))
    }

    /// An API token that has not expired.
    async fn api_token(&self, id: &str) -> Result<Option<store::ApiToken>, Error> {
        let id = id.to_owned();
        let record = self.store.run(move |store| store.api_token(&id)).await?;
        Ok(record.filter(|record| record.expires_at_ms > store::now_ms()))
    }

    /// Notes a token's use, at most once a minute each (a write per request would cost every request a commit).
    fn note_use(&self, record: &store::ApiToken) {
        let now = store::now_ms();
        if record.last_used_at_ms.is_some_and(|at| now - at < 60_000) {
            return;
        }
        let (store, id) = (self.store.clone(), record.id.clone());
        tokio::spawn(async move {
            if let Err(error) = store
                .run(move |store| store.note_api_token_use(&id, now))
                .await
            {
                tracing::warn!(%error, "cannot note an API token's use");
            }
        });
    }

    /// Who the session acts for now, if it still holds: the account exists,
    /// is not disabled and its password has not changed since; through an
    /// API token, the token is neither revoked nor expired.
    pub async fn current(&self, session: &Session) -> Result<Option<Signed>, Error> {
        let token = match &session.api_token {
            Some(id) => match self.api_token(id).await? {
                Some(token) => Some(token),
                None => return Ok(None),
            },
            None => None,
        };
        // A service token acts for nobody but itself.
        if let Some(token) = token.as_ref().filter(|token| token.owner.is_none()) {
            let user = User {
                name: format!("token:{}", token.name),
                ..service_user()
            };
            return Ok(Some(Signed {
                user,
                token: Some(token.clone()),
            }));
        }
        let (name, issued_at_ms) = (session.user.clone(), session.issued_at_ms);
        let user = self.store.run(move |store| store.user(&name)).await?;
        let user =
            user.filter(|user| issued_at_ms >= user.password_changed_at_ms && !user.disabled);
        Ok(user.map(|user| Signed { user, token }))
    }

    /// Begins enrolling a TOTP second factor for `user`: the secret and the
    /// `otpauth://` URL an authenticator app takes (a QR code of it).
    pub async fn second_factor_begin(&self, user: &User) -> Result<(String, String), Error> {
        if let Some(sso) = &user.sso {
            return Err(Error::SecondFactor(format!(
                "{} signs in at {}: a fresh sign-in there is the second factor",
                user.name, sso.provider
            )));
        }
        let secret = second_factor::new_secret();
        let url =
            second_factor::otpauth_url(&user.name, &second_factor::totp(&user.name, &secret)?)?;
        let (name, kept) = (user.name.clone(), secret.clone());
        self.store
            .run(move |store| store.begin_second_factor(&name, &kept))
            .await?;
        Ok((secret, url))
    }

    /// Confirms the second factor `user` is enrolling with a first `code`
    /// from their app: the recovery codes, shown this once.
    pub async fn second_factor_confirm(
        &self,
        user: &User,
        code: &str,
    ) -> Result<Vec<String>, Error> {
        let name = user.name.clone();
        let current = self.store.run(move |store| store.user(&name)).await?;
        let factor = current
            .and_then(|user| user.second_factor)
            .filter(|factor| factor.confirmed_at_ms.is_none())
            .ok_or_else(|| store::Error::NoSecondFactor(user.name.clone()))?;
        let totp = second_factor::totp(&user.name, &factor.secret_base32)?;
        let step = second_factor::step_of(&totp, code, now_s()).ok_or_else(|| {
            Error::SecondFactor(
                "that code is not the app's: check the phone's clock, and type the code it shows now".into(),
            )
        })?;
        let (codes, hashes) = second_factor::recovery_codes();
        let name = user.name.clone();
        self.store
            .run(move |store| store.confirm_second_factor(&name, step, hashes))
            .await?;
        Ok(codes)
    }

    /// Steps `session` up with a code of the user's app, or a recovery code:
    /// the same session, its second factor given now. A wrong code counts
    /// like a wrong password (the lockout), a code is taken once.
    pub async fn step_up(
        &self,
        session: &Session,
        user: &User,
        proof: Proof,
    ) -> Result<IssuedToken, Error> {
        let factor = user.second_factor_enrolled().ok_or_else(|| {
            Error::SecondFactor(match &user.sso {
                Some(sso) => format!(
                    "sign in at {} again: GET /api/auth/sso/{}/start?step_up=true",
                    sso.provider, sso.provider
                ),
                None => "enrol a second factor first: POST /api/auth/second-factor".into(),
            })
        })?;
        let now = store::now_ms();
        let name = user.name.clone();
        let failures = self
            .store
            .run(move |store| store.login_failures(&name))
            .await?;
        if let Some(retry_after) = self.lockout.locked(failures, now) {
            return Err(Error::Locked { retry_after });
        }
        let name = user.name.clone();
        let taken = match proof {
            Proof::Code(code) => {
                let totp = second_factor::totp(&user.name, &factor.secret_base32)?;
                match second_factor::step_of(&totp, &code, now_s()) {
                    Some(step) => {
                        self.store
                            .run(move |store| store.take_second_factor_step(&name, step))
                            .await?
                    }
                    None => false,
                }
            }
            Proof::RecoveryCode(code) => {
                let hash = second_factor::recovery_hash(&code);
                self.store
                    .run(move |store| store.take_recovery_code(&name, &hash))
                    .await?
            }
        };
        let (name, policy) = (user.name.clone(), self.lockout);
        let (outcome, detail) = match taken {
            true => (Outcome::Success, "second factor given"),
            false => (Outcome::Failure, "a wrong or used code"),
        };
        // The count and its audit in one transaction, as a login's.
        self.store
            .run(move |store| {
                store.update_login_failures(
                    &name,
                    |current| (!taken).then(|| policy.record_failure(current, now)),
                    |_| store::Audit {
                        actor: Actor::user(&name),
                        action: AuditAction::AuthStepUp,
                        target: name.clone(),
                        outcome,
                        detail: Some(detail.into()),
                    },
                )
            })
            .await?;
        if !taken {
            return Err(Error::SecondFactor(
                "that code is wrong, or was used already: type the one the app shows now (or an unused recovery code)".into(),
            ));
        }
        let claims = Claims {
            sub: session.user.clone(),
            role: user.role,
            iat: session.issued_at_ms / 1000,
            iat_ms: session.issued_at_ms,
            exp: session.expires_at_s,
            second_factor_at_ms: None,
        };
        Ok(self.tokens.stepped_up(claims, now))
    }

    /// Completes when `session` may no longer keep what it opened: its user
    /// was deleted or changed their password, or `still` no longer holds of
    /// their grants (a role changed, `access.yaml` changed). Long-lived
    /// connections (SSE, WebSocket) end on it; it re-checks after every
    /// committed account change and every new desired state, and a store
    /// error counts as lost.
    pub fn lost<Still: Fn(&Held) -> bool + Send + 'static>(
        &self,
        session: Session,
        mut desired: watch::Receiver<Option<Arc<DesiredState>>>,
        still: Still,
    ) -> impl Future<Output = ()> + Send + use<Still> {
        let auth = self.clone();
        let mut changes = self.store.user_changes();
        async move {
            loop {
                changes.mark_unchanged();
                desired.mark_unchanged();
                let kept = match auth.current(&session).await {
                    Ok(Some(signed)) => still(&signed.held(desired.borrow().as_deref())),
                    Ok(None) | Err(_) => false,
                };
                if !kept {
                    tracing::info!(user = %session.user, "a long-lived connection ends: its user may no longer keep it");
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() {
                        // The store is closing: the daemon ends its connections itself.
                        return std::future::pending().await;
                    },
                    changed = desired.changed() => if changed.is_err() {
                        return std::future::pending().await;
                    },
                }
            }
        }
    }
}

/// What a person steps up with.
pub enum Proof {
    /// A code of their authenticator app.
    Code(String),
    /// One of the recovery codes shown at enrolment.
    RecoveryCode(String),
}

fn now_s() -> u64 {
    u64::try_from(store::now_ms() / 1000).unwrap_or_default()
}

/// A signed-in session, as long as it holds: whose, since when, and through
/// which API token, if one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user it acts for (empty for a service token).
    pub user: String,
    pub issued_at_ms: i64,
    pub expires_at_s: i64,
    /// When a second factor was last given in it.
    pub second_factor_at_ms: Option<i64>,
    pub api_token: Option<String>,
}

/// Who a request acts for, and the API token it came with.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The user; for a service token, `token:<name>`, with no role or account.
    pub user: User,
    pub token: Option<store::ApiToken>,
}

impl Signed {
    /// What it may do ([`held`]).
    pub fn held(&self, desired: Option<&DesiredState>) -> Held {
        held(&self.user, self.token.as_ref(), desired)
    }
}

/// What `user` may do through `token`, if one: their grants and, through a
/// personal token, only as far as the token's grant too; a service token's
/// grant alone.
pub fn held(user: &User, token: Option<&store::ApiToken>, desired: Option<&DesiredState>) -> Held {
    match token {
        Some(token) if token.owner.is_none() => Held::grants(vec![token.grant.clone()]),
        token => Held {
            grants: grants(user, desired),
            within: token.map(|token| token.grant.clone()),
        },
    }
}

/// The account a service token stands in: no role, no password, no groups.
fn service_user() -> User {
    User {
        name: String::new(),
        role: None,
        password_hash: String::new(),
        created_at_ms: 0,
        password_changed_at_ms: 0,
        sso: None,
        disabled: false,
        second_factor: None,
    }
}

/// What `user` may do where: their account's role over the whole fleet, and
/// what `access.yaml` in the desired state in force gives them and — for a
/// person signing in at an identity provider — the groups it said they were
/// in at their last sign-in.
pub fn grants(user: &User, desired: Option<&DesiredState>) -> Vec<Grant> {
    let given = desired.map_or(&[][..], |desired| &desired.grants);
    let groups = user.sso.as_ref().map_or(&[][..], |sso| &sso.groups);
    (user.role.map(Grant::fleet).into_iter())
        .chain(grant::held_by(given, &user.name, groups))
        .collect()
}

/// How a login attempt went, for its audit entry.
enum Attempt<'a> {
    Succeeded,
    /// A wrong password or an unknown name (said alike), with the failure
    /// count as it ends up.
    WrongCredentials(Option<&'a LoginFailures>),
}

fn login_audit(name: &str, attempt: Attempt) -> store::Audit {
    let (outcome, detail) = match attempt {
        Attempt::Succeeded => (Outcome::Success, None),
        Attempt::WrongCredentials(failures) => {
            let locked = failures.and_then(|f| f.locked_until_ms).is_some();
            let detail = if locked {
                "wrong credentials; account now locked"
            } else {
                "wrong credentials"
            };
            (Outcome::Failure, Some(detail.to_owned()))
        }
    };
    store::Audit {
        actor: Actor::user(name),
        action: AuditAction::AuthLogin,
        target: name.to_owned(),
        outcome,
        detail,
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

/// Creates a user with a generated password, audited as done `by`.
/// Blocking (argon2).
pub fn create_user(
    store: &Store,
    by: &Actor,
    name: &str,
    role: Option<Role>,
) -> Result<GeneratedPassword, Error> {
    if !valid_user_name(name) {
        return Err(Error::InvalidName(name.to_owned()));
    }
    let password = password::generate();
    store.create_user(name, role, &password::hash(&password)?, by)?;
    Ok(GeneratedPassword {
        user: name.to_owned(),
        password: password.into(),
    })
}

/// Replaces a user's password with a generated one (older tokens stop
/// working, a lockout is lifted), audited as done `by`. Blocking (argon2).
pub fn reset_password(store: &Store, by: &Actor, name: &str) -> Result<GeneratedPassword, Error> {
    let password = password::generate();
    store.set_password(name, &password::hash(&password)?, by)?;
    Ok(GeneratedPassword {
        user: name.to_owned(),
        password: password.into(),
    })
}

/// Changes a user's role, audited as done `by` with the old and new role.
/// A refusal (the last admin) is audited too.
pub fn change_role(
    store: &Store,
    by: &Actor,
    name: &str,
    role: Option<Role>,
) -> Result<User, Error> {
    let changed = store.set_role(name, role, by);
    audit_refusal(store, by, AuditAction::UserRole, name, &changed)?;
    Ok(changed?.1)
}

/// Disables (or enables again) a user, audited as done `by`: a disabled user
/// signs in nowhere, and their sessions end at once. A refusal (the last
/// admin) is audited too.
pub fn set_disabled(store: &Store, by: &Actor, name: &str, disabled: bool) -> Result<User, Error> {
    let changed = store.set_disabled(name, disabled, by);
    audit_refusal(store, by, AuditAction::UserDisable, name, &changed)?;
    Ok(changed?)
}

/// Makes an API token `name` for `owner` (none: a service token) with
/// `grant`, expiring at `expires_at_ms`, audited as `by`'s: the token itself,
/// shown once, and its record (which keeps only a hash of its secret).
pub fn create_api_token(
    store: &Store,
    by: &Actor,
    name: &str,
    owner: Option<&str>,
    grant: Grant,
    expires_at_ms: i64,
) -> Result<(String, store::ApiToken), Error> {
    if !valid_user_name(name) {
        return Err(Error::InvalidName(name.to_owned()));
    }
    let minted = api_token::mint(
        name,
        owner,
        grant,
        &by.to_string(),
        store::now_ms(),
        expires_at_ms,
    );
    store.create_api_token(&minted.record, by)?;
    Ok((minted.token, minted.record))
}

/// Revokes an API token, audited as `by`'s: it opens nothing from now on.
pub fn revoke_api_token(store: &Store, by: &Actor, id: &str) -> Result<store::ApiToken, Error> {
    Ok(store.revoke_api_token(id, by)?)
}

/// Removes a user's second factor (a lost phone), audited as `by`'s: they
/// enrol again.
pub fn remove_second_factor(store: &Store, by: &Actor, name: &str) -> Result<User, Error> {
    Ok(store.remove_second_factor(name, by)?)
}

/// Deletes a user, audited as done `by`; their tokens stop working at once.
/// The name is retired and the user's workspaces deleted (see [`Store::delete_user`]).
pub fn delete_user(store: &Store, by: &Actor, name: &str) -> Result<store::DeletedUser, Error> {
    let deleted = store.delete_user(name, by);
    audit_refusal(store, by, AuditAction::UserDelete, name, &deleted)?;
    Ok(deleted?)
}

/// Audits a role change or deletion refused (the last admin): nothing changed,
/// so it has a transaction of its own. A change is audited by the store with it.
fn audit_refusal<T>(
    store: &Store,
    by: &Actor,
    action: AuditAction,
    name: &str,
    result: &Result<T, store::Error>,
) -> Result<(), Error> {
    if let Err(error @ store::Error::LastAdmin(_)) = result {
        store.audit(by, action, name, Outcome::Denied, Some(error.to_string()))?;
    }
    Ok(())
}

/// Creates `admin` with a random password when the store has no users.
///
/// Returns the password so it can be shown once; only its hash is stored.
/// Blocking (argon2): call from `blocking::run` or outside the runtime.
pub fn bootstrap_admin(store: &Store) -> Result<Option<GeneratedPassword>, Error> {
    if !store.users()?.is_empty() {
        return Ok(None);
    }
    let password = password::generate();
    let hash = password::hash(&password)?;
    match store.create_first_user("admin", Some(Role::Admin), &hash)? {
        Some(user) => Ok(Some(GeneratedPassword {
            user: user.name,
            password: password.into(),
        })),
        // Another process created the first user between our two reads.
        None => Ok(None),
    }
}
